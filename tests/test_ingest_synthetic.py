"""The synthetic shop through real ingestion: every planted dirty row is caught, nothing else is."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from schemas.settings import Settings
from tasks.data.ingest import ingest_batch
from tasks.data.synthetic import generate_shop
from tasks.data.warehouse import Warehouse


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shop")
    generate_shop(out, customers=1_200, seed=5, file_format="csv")
    return out


def test_quarantine_holds_exactly_the_planted_dirty_rows(shop: Path, tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    result = ingest_batch(shop, wh, Settings(ingest={"chunk_rows": 2_000}))
    planted = pd.read_csv(shop / "_dirty_manifest.csv")[["table", "source_row"]].drop_duplicates()
    caught = wh.query("SELECT DISTINCT table_name AS \"table\", source_row FROM quarantine")
    both = planted.merge(caught, how="outer", indicator=True)
    assert (both["_merge"] == "both").all(), both[both["_merge"] != "both"].head(20)
    assert result.rows_in == result.rows_valid + result.rows_quarantined
    for file in result.files:
        assert wh.row_count(file.table) >= file.inserted


def test_csv_and_parquet_exports_load_the_same_rows(shop: Path, tmp_path: Path) -> None:
    parquet = tmp_path / "pq"
    generate_shop(parquet, customers=1_200, seed=5, file_format="parquet")
    counts = []
    for folder in (shop, parquet):
        wh = Warehouse(tmp_path / f"{folder.name}.duckdb")
        ingest_batch(folder, wh, Settings())
        counts.append({t: wh.row_count(t) for t in ("customers", "orders", "order_items", "events", "reviews")})
        wh.close()
    assert counts[0] == counts[1]
