"""Row versions: every version kept at ingestion, any table readable as of a cutoff.

Rows edited after a cutoff (an order's carrier, amount and cancellation; a ticket's category; a
customer's region) must read as they were at the cutoff; tables without ``updated_at`` take the
batch clock as their version, so an older export sent again never reverts newer rows.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_ingest import GOOD, write_tables

from schemas.settings import Settings
from tasks.data.ingest import ingest_batch
from tasks.data.warehouse import TABLES, Warehouse, as_of_changes_sql, as_of_sql, version_intervals_sql
from tasks.models.features import table_as_of_sql

FIRST, SECOND = "2026-03-01", "2026-04-01"


def first_export() -> dict[str, list[dict[str, str]]]:
    return {
        "customers": [dict(GOOD["customers"], region="north", updated_at="2026-01-15")],
        "products": [GOOD["products"]],
        "orders": [dict(GOOD["orders"], carrier="dhl", total_amount="50", status="delivered",
                        updated_at="2026-02-01")],
        "order_items": [dict(GOOD["order_items"], quantity="1")],
        "tickets": [dict(GOOD["tickets"], category="delivery", updated_at="2026-02-02")],
    }


def second_export() -> dict[str, list[dict[str, str]]]:
    return {
        "customers": [dict(GOOD["customers"], region="south", updated_at="2026-03-10")],
        "orders": [dict(GOOD["orders"], carrier="ups", total_amount="40", status="cancelled",
                        updated_at="2026-03-15"),
                   dict(GOOD["orders"], order_id="o2", ordered_at="2026-03-20", promised_at="", delivered_at="",
                        status="placed", updated_at="2026-03-20")],
        "order_items": [dict(GOOD["order_items"], quantity="2")],
        "tickets": [dict(GOOD["tickets"], category="payment", updated_at="2026-03-16")],
    }


@pytest.fixture
def history(tmp_path: Path) -> Warehouse:
    wh = Warehouse(tmp_path / "warehouse.duckdb")
    ingest_batch(write_tables(tmp_path / "b1", first_export()), wh, Settings(), as_of=FIRST)
    ingest_batch(write_tables(tmp_path / "b2", second_export()), wh, Settings(), as_of=SECOND)
    yield wh
    wh.close()


def as_of(wh: Warehouse, table: str, cutoff: str) -> pd.DataFrame:
    key = {"order_items": "order_id"}.get(table, f"{table.rstrip('s')}_id")
    return wh.query(f"SELECT * FROM ({as_of_sql(table)}) ORDER BY ALL", {"cutoff": pd.Timestamp(cutoff)}
                    ).set_index(key)


def test_edits_after_the_cutoff_are_invisible_at_the_cutoff(history: Warehouse) -> None:
    old = as_of(history, "orders", "2026-03-01")
    assert (old.loc["o1", "carrier"], old.loc["o1", "total_amount"], old.loc["o1", "status"]) == \
        ("dhl", 50.0, "delivered")
    assert as_of(history, "tickets", "2026-03-01").loc["t1", "category"] == "delivery"
    assert as_of(history, "customers", "2026-03-01").loc["c1", "region"] == "north"
    assert as_of(history, "order_items", "2026-03-01").loc["o1", "quantity"] == 1

    new = as_of(history, "orders", "2026-04-01")
    assert (new.loc["o1", "carrier"], new.loc["o1", "total_amount"], new.loc["o1", "status"]) == \
        ("ups", 40.0, "cancelled")
    assert as_of(history, "tickets", "2026-04-01").loc["t1", "category"] == "payment"
    assert as_of(history, "customers", "2026-04-01").loc["c1", "region"] == "south"
    assert as_of(history, "order_items", "2026-04-01").loc["o1", "quantity"] == 2

    between = "2026-03-12"  # the region changed on 03-10, the order on 03-15
    assert as_of(history, "customers", between).loc["c1", "region"] == "south"
    assert as_of(history, "orders", between).loc["o1", "carrier"] == "dhl"


def test_a_key_first_seen_after_the_cutoff_shows_its_first_version(history: Warehouse) -> None:
    """Its own event time masks it in features; the as-of relation must not drop it."""
    assert as_of(history, "orders", "2026-03-01").loc["o2", "status"] == "placed"
    assert len(as_of(history, "orders", "2026-03-01")) == 2


def test_many_cutoffs_at_once_through_the_intervals(history: Warehouse) -> None:
    cutoffs = pd.DataFrame({"cutoff": pd.to_datetime(["2026-03-01", "2026-03-12", "2026-04-01"])})
    history.register("cutoffs", cutoffs)
    got = history.query(f"""SELECT c.cutoff, v.carrier FROM cutoffs c JOIN ({version_intervals_sql('orders')}) v
                             ON v.valid_from <= c.cutoff AND c.cutoff < v.valid_to WHERE v.order_id = 'o1'
                             ORDER BY c.cutoff""")
    assert list(got["carrier"]) == ["dhl", "dhl", "ups"]


def test_rerunning_and_resending_an_older_export_change_nothing(tmp_path: Path, history: Warehouse) -> None:
    versions = {t: history.row_count(f"{t}_history") for t in ("orders", "order_items", "customers", "tickets")}
    assert versions == {"orders": 1, "order_items": 1, "customers": 1, "tickets": 1}, "one earlier version each"
    current = {t: history.query(f'SELECT * EXCLUDE (_loaded_at, _batch_id) FROM "{t}" ORDER BY ALL')
               for t in versions}

    ingest_batch(write_tables(tmp_path / "again", second_export()), history, Settings(), as_of=SECOND, force=True)
    older = ingest_batch(write_tables(tmp_path / "old", first_export()), history, Settings(), as_of=FIRST,
                         force=True)  # read again, not skipped as already loaded

    stale = {f.table: f.stale for f in older.files}
    assert stale["order_items"] == 1, "the batch clock is the version of a line without updated_at"
    assert stale["orders"] == stale["customers"] == stale["tickets"] == 1
    for table, before in current.items():
        after = history.query(f'SELECT * EXCLUDE (_loaded_at, _batch_id) FROM "{table}" ORDER BY ALL')
        pd.testing.assert_frame_equal(before, after, obj=table)
        assert history.row_count(f"{table}_history") == versions[table], f"{table}: no duplicate versions"
    assert history.scalar("SELECT quantity FROM order_items") == 2


def test_a_late_older_export_fills_in_history_without_reverting(tmp_path: Path, history: Warehouse) -> None:
    late = {"order_items": [dict(GOOD["order_items"], quantity="3")]}
    result = ingest_batch(write_tables(tmp_path / "late", late), history, Settings(), as_of="2026-03-05")
    assert result.files[0].stale == 1 and history.scalar("SELECT quantity FROM order_items") == 2
    assert [as_of(history, "order_items", day).loc["o1", "quantity"] for day in
            ("2026-03-02", "2026-03-06", "2026-04-02")] == [1, 3, 2]


def test_rows_written_without_ingestion_are_their_own_only_version(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.append("reviews", pd.DataFrame({"review_id": ["r1"], "order_id": ["o1"], "score": [2],
                                       "created_at": [pd.Timestamp("2026-01-01")]}))
    assert as_of(wh, "reviews", "2025-01-01").loc["r1", "score"] == 2
    wh.close()


def test_an_older_warehouse_gets_valid_from_and_a_history(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "old.duckdb")
    ingest_batch(write_tables(tmp_path / "b1", first_export()), wh, Settings(), as_of=FIRST)
    wh.con.execute("DROP TABLE orders_history")
    wh.con.execute("ALTER TABLE orders DROP COLUMN _valid_from")
    wh.con.execute("ALTER TABLE order_items DROP COLUMN _valid_from")
    wh.close()
    wh = Warehouse(tmp_path / "old.duckdb")  # opening migrates
    assert wh.scalar("SELECT _valid_from FROM orders") == pd.Timestamp("2026-02-01"), "its updated_at"
    assert wh.scalar("SELECT _valid_from FROM order_items") == pd.Timestamp(FIRST), "its batch's clock"
    assert wh.has_table("orders_history")
    ingest_batch(write_tables(tmp_path / "b2", second_export()), wh, Settings(), as_of=SECOND)
    assert as_of(wh, "orders", "2026-03-01").loc["o1", "carrier"] == "dhl"
    wh.close()


def test_reading_only_the_keys_edited_after_the_cutoff_gives_the_full_as_of_view(
    tmp_path: Path, history: Warehouse
) -> None:
    """Issue 15: the shortcut equals ``as_of_sql`` at every day, and a table none of whose keys was
    edited after the cutoff is read as stored (no version SQL at all)."""
    late = {"order_items": [dict(GOOD["order_items"], quantity="3")]}  # a version between two others
    ingest_batch(write_tables(tmp_path / "late", late), history, Settings(), as_of="2026-03-05")
    read_as_stored, read_through_versions = set(), set()
    for day in pd.date_range("2026-01-10", "2026-04-20", freq="D"):
        for table in TABLES:
            if not history.has_rows(f"{table}_history"):
                continue
            cols = ", ".join(f'"{c}"' for c in TABLES[table].columns)
            full = history.query(f"SELECT {cols} FROM ({as_of_sql(table)}) ORDER BY ALL", {"cutoff": day})
            shortcut = table_as_of_sql(history, table, day)
            sql = shortcut or f'SELECT {cols} FROM "{table}"'
            got = history.query(f"SELECT {cols} FROM ({sql}) ORDER BY ALL", {"cutoff": day} if shortcut else None)
            pd.testing.assert_frame_equal(got, full, obj=f"{table} at {day:%Y-%m-%d}")
            changes = history.query(f"SELECT {cols} FROM ({as_of_changes_sql(table)}) ORDER BY ALL",
                                    {"cutoff": day})
            pd.testing.assert_frame_equal(changes, full, obj=f"{table} at {day:%Y-%m-%d}, versions read")
            (read_through_versions if shortcut else read_as_stored).add((table, day))
    assert ("orders", pd.Timestamp("2026-03-13")) in read_through_versions  # edited 03-15
    assert ("orders", pd.Timestamp("2026-04-17")) in read_as_stored  # nothing edited since
    assert ("order_items", pd.Timestamp("2026-03-07")) in read_through_versions  # the batch of 04-01
