"""Derived tables take their column types from their contract, never from the first frame written."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pandas as pd
import pytest

import schemas
from schemas.tables import DERIVED_TABLES, SCORES_TABLE
from tasks.data.warehouse import Warehouse


@pytest.fixture
def wh(tmp_path: Path):
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    yield warehouse
    warehouse.close()


def types(wh: Warehouse, table: str) -> dict[str, str]:
    return {r[0]: r[1] for r in wh.con.execute(f'DESCRIBE "{table}"').fetchall()}


def scores(risk: str, order_id: str | None, day: str) -> pd.DataFrame:
    return pd.DataFrame({"run_date": [pd.Timestamp(day)], "risk": [risk], "model_version": ["m v1"],
                         "customer_id": ["c1"], "order_id": [order_id], "probability": [0.5],
                         "value_at_stake": [10.0]})


def test_a_churn_only_first_run_does_not_break_later_order_scores(wh: Warehouse) -> None:
    """Issue 11.1: only churn scored first (order_id all missing), then an order model scored."""
    wh.replace_partition(SCORES_TABLE, scores("churn", None, "2026-11-01"), where={"run_date": "2026-11-01"})
    assert types(wh, SCORES_TABLE)["order_id"] == "VARCHAR"
    wh.replace_partition(SCORES_TABLE, scores("return", "o1", "2026-11-02"), where={"run_date": "2026-11-02"})
    assert wh.scalar(f"SELECT order_id FROM {SCORES_TABLE} WHERE risk = 'return'") == "o1"


def test_a_table_an_older_version_created_with_a_null_column_is_repaired(wh: Warehouse) -> None:
    wh.register("old", scores("churn", None, "2026-11-01"))
    wh.con.execute(f"CREATE TABLE {SCORES_TABLE} AS SELECT * FROM old")  # what the old code did
    assert types(wh, SCORES_TABLE)["order_id"] == '"NULL"'
    wh.replace_partition(SCORES_TABLE, scores("return", "o1", "2026-11-02"), where={"run_date": "2026-11-02"})
    assert types(wh, SCORES_TABLE)["order_id"] == "VARCHAR"
    assert wh.row_count(SCORES_TABLE) == 2


def test_declared_types_win_over_the_frame_and_undeclared_tables_never_get_null(wh: Warehouse) -> None:
    frame = scores("churn", None, "2026-11-01").astype({"probability": "object"})
    wh.append(SCORES_TABLE, frame)
    assert types(wh, SCORES_TABLE)["probability"] == "DOUBLE"
    wh.replace_table("scratch", pd.DataFrame({"a": [1, 2], "b": [None, None]}))
    assert types(wh, "scratch") == {"a": "BIGINT", "b": "VARCHAR"}
    wh.append("scratch", pd.DataFrame({"a": [3], "b": ["x"], "c": [1.5]}))  # a new column is added, typed
    assert types(wh, "scratch") == {"a": "BIGINT", "b": "VARCHAR", "c": "DOUBLE"}


def test_replace_table_inside_a_transaction_rolls_back_with_it(wh: Warehouse) -> None:
    wh.replace_table("scratch", pd.DataFrame({"a": [1]}))
    with pytest.raises(RuntimeError), wh.transaction():
        wh.replace_table("scratch", pd.DataFrame({"a": [2, 3]}))
        raise RuntimeError("boom")
    assert wh.scalar("SELECT list(a) FROM scratch") == [1]


def test_every_derived_table_of_the_schemas_has_a_declared_contract() -> None:
    """A flow adding a ``*_TABLE`` to schemas/ must declare its types in schemas/tables.py."""
    own_ddl = {"board_claims", "board_audit"}  # created with their own DDL (schemas/board.py: a primary key)
    names = set()
    for info in pkgutil.iter_modules(schemas.__path__):
        module = importlib.import_module(f"schemas.{info.name}")
        names |= {v for k, v in vars(module).items() if k.endswith("_TABLE") and isinstance(v, str)}
    missing = sorted(names - set(DERIVED_TABLES) - own_ddl)
    assert not missing, f"derived tables without a contract in schemas/tables.py: {missing}"
