"""One generated, ingested shop shared by the analytics tests (built once per session, copied per module)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from schemas.settings import Settings
from tasks.data.ingest import ingest_batch
from tasks.data.synthetic import generate_shop
from tasks.data.warehouse import Warehouse

SHOP_CUSTOMERS, SHOP_SEED = 2_000, 5
RUN = pd.Timestamp("2026-11-02")  # the synthetic shop's history ends on 2026-11-01


def shop_copy(factory: pytest.TempPathFactory, name: str) -> tuple[Path, Path]:
    """A private copy of the session's shop: (warehouse file, data folder)."""
    base = factory.getbasetemp() / f"analytics-shop-{SHOP_CUSTOMERS}-{SHOP_SEED}"
    source = base / "warehouse.duckdb"
    if not source.exists():
        base.mkdir(exist_ok=True)
        generate_shop(base / "data", customers=SHOP_CUSTOMERS, seed=SHOP_SEED, dirty_share=0.0)
        wh = Warehouse(base / "building.duckdb")
        ingest_batch(base / "data", wh, Settings())
        wh.close()
        (base / "building.duckdb").rename(source)
    target = factory.mktemp(name) / "warehouse.duckdb"
    shutil.copy(source, target)
    return target, base / "data"
