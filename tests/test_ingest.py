"""Ingestion: every kind of bad row is quarantined with its reason, nothing is lost, re-runs change nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from schemas.settings import Settings
from schemas.sources import TABLES
from tasks.data.ingest import IngestError, ingest_batch, validation_report
from tasks.data.mapping import MappingError, load_mapping
from tasks.data.warehouse import Warehouse
from tests.md_tables import row_starting

DATA = Path(__file__).parent / "data"
MAPPINGS = Path(__file__).parents[1] / "schemas" / "defaults" / "mappings"
AS_OF = "2026-06-01"

GOOD = {
    "customers": {"customer_id": "c1", "signup_at": "2025-01-01", "region": "north", "language": "en"},
    "products": {"product_id": "p1", "category": "apparel", "size_sensitive": "true", "list_price": "20"},
    "orders": {"order_id": "o1", "customer_id": "c1", "ordered_at": "2026-01-01 10:00",
               "promised_at": "2026-01-04", "delivered_at": "2026-01-03", "status": "delivered",
               "total_amount": "19.5", "discount_amount": "0.5", "payment_type": "card", "carrier": "dhl"},
    "order_items": {"order_id": "o1", "line_no": "1", "product_id": "p1", "quantity": "1", "unit_price": "20"},
    "returns": {"return_id": "r1", "order_id": "o1", "requested_at": "2026-01-10", "reason_code": "size_fit",
                "refund_amount": "19.5"},
    "tickets": {"ticket_id": "t1", "customer_id": "c1", "channel": "chat", "category": "delivery",
                "opened_at": "2026-01-05 09:00", "first_response_at": "2026-01-05 10:00",
                "resolved_at": "2026-01-06", "escalated": "no", "satisfaction": "4"},
    "reviews": {"review_id": "v1", "order_id": "o1", "score": "5", "created_at": "2026-01-08", "text": "great"},
    "events": {"event_id": "e1", "customer_id": "c1", "event_type": "product_view", "product_id": "p1",
               "occurred_at": "2025-12-31 20:00"},
}

# table -> (column, bad value, check the quarantine must name)
BAD_VALUES = [
    ("customers", "customer_id", "", "not_nullable"),
    ("customers", "signup_at", "yesterday-ish", "parse_datetime64"),
    ("customers", "signup_at", "2027-01-01", "in the future"),
    ("customers", "language", "klingon", "isin"),
    ("products", "list_price", "-3", "greater_than_or_equal_to"),
    ("products", "list_price", "twelve", "parse_float64"),
    ("products", "size_sensitive", "maybe", "parse_bool"),
    ("orders", "total_amount", "-1", "greater_than_or_equal_to"),
    ("orders", "total_amount", "abc", "parse_float64"),
    ("orders", "discount_amount", "-2", "greater_than_or_equal_to"),
    ("orders", "ordered_at", "2030-01-01", "in the future"),
    ("orders", "delivered_at", "2025-12-01", "delivered_at before ordered_at"),
    ("orders", "status", "teleported", "isin"),
    ("orders", "payment_type", "seashells", "isin"),
    ("order_items", "quantity", "0", "greater_than_or_equal_to"),
    ("order_items", "quantity", "1.5", "parse_int64"),
    ("order_items", "unit_price", "-5", "greater_than_or_equal_to"),
    ("returns", "reason_code", "bored", "isin"),
    ("returns", "refund_amount", "-1", "greater_than_or_equal_to"),
    ("returns", "requested_at", "", "not_nullable"),
    ("tickets", "resolved_at", "2026-01-01", "resolved_at before opened_at"),
    ("tickets", "satisfaction", "9", "isin"),
    ("tickets", "channel", "pigeon", "isin"),
    ("reviews", "score", "7", "less_than_or_equal_to"),
    ("reviews", "score", "0", "greater_than_or_equal_to"),
    ("reviews", "created_at", "2031-05-05", "in the future"),
    ("events", "event_type", "teleport", "isin"),
    ("events", "occurred_at", "not a time", "parse_datetime64"),
]


def write_tables(folder: Path, tables: dict[str, list[dict[str, str]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for table, rows in tables.items():
        pd.DataFrame(rows).to_csv(folder / f"{table}.csv", index=False)
    return folder


def good_batch() -> dict[str, list[dict[str, str]]]:
    return {table: [dict(row)] for table, row in GOOD.items()}


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    yield warehouse
    warehouse.close()


def test_a_clean_batch_loads_every_table(tmp_path: Path, wh: Warehouse) -> None:
    result = ingest_batch(write_tables(tmp_path / "in", good_batch()), wh, Settings(), as_of=AS_OF)
    assert result.rows_quarantined == 0
    for table in GOOD:
        assert wh.row_count(table) == 1, table
    order = wh.table("orders").iloc[0]
    assert order["total_amount"] == 19.5 and order["delivered_at"] == pd.Timestamp("2026-01-03")
    assert bool(wh.table("tickets").iloc[0]["escalated"]) is False


@pytest.mark.parametrize(("table", "column", "bad", "check"), BAD_VALUES,
                         ids=[f"{t}.{c}={v or 'empty'}" for t, c, v, _ in BAD_VALUES])
def test_each_schema_rejects_each_kind_of_bad_row(tmp_path: Path, wh: Warehouse, table: str, column: str,
                                                  bad: str, check: str) -> None:
    """A bad required value quarantines its row; a bad optional value is cleared and its row kept."""
    tables = good_batch()
    bad_row = dict(GOOD[table])
    key = next(iter(bad_row))
    bad_row[key] = bad_row[key] + "_bad" if column != key else bad
    bad_row[column] = bad
    tables[table].append(bad_row)
    result = ingest_batch(write_tables(tmp_path / "in", tables), wh, Settings(), as_of=AS_OF)

    quarantined = wh.query("SELECT * FROM quarantine WHERE table_name = ?", [table])
    assert len(quarantined) >= 1
    row = quarantined[quarantined["column_name"] == column]
    assert not row.empty, quarantined[["column_name", "check_name"]]
    assert row["check_name"].str.contains(check, regex=False).any(), row["check_name"].tolist()
    assert (row["source_row"] == 2).all(), "the bad row is the file's second data row"
    assert row["source_file"].str.endswith(f"{table}.csv").all()
    assert row["row_json"].str.contains(column).all(), "the whole original row is kept"
    assert (row["failure_value"].fillna("") == bad).all(), "the original value is kept"
    file_result = next(f for f in result.files if f.table == table)
    required = not TABLES[table].model.to_schema().columns[column].nullable
    if required:
        assert (row["action"] == "row quarantined").all()
        assert wh.row_count(table) == 1, "the good row still loads"
        assert file_result.rows_quarantined == 1 and file_result.values_cleared == 0
    else:
        assert (row["action"] == "value cleared").all()
        assert wh.row_count(table) == 2, "a bad optional value never costs its row"
        kept = wh.query(f'SELECT "{column}" FROM "{table}" WHERE "{key}" = ?', [bad_row[key]])
        assert kept[column].isna().all(), "the bad value is stored empty"
        assert file_result.rows_quarantined == 0 and file_result.values_cleared == 1
    assert file_result.rows_in == file_result.rows_valid + file_result.rows_quarantined == 2


def test_counts_reconcile_and_rerun_changes_nothing(tmp_path: Path, wh: Warehouse) -> None:
    tables = good_batch()
    tables["orders"] += [dict(GOOD["orders"], order_id=f"o{i}", total_amount=str(10 + i)) for i in range(2, 30)]
    tables["orders"].append(dict(GOOD["orders"], order_id="neg", total_amount="-4"))
    tables["orders"].append(dict(GOOD["orders"]))  # an exact duplicate of o1
    folder = write_tables(tmp_path / "in", tables)

    first = ingest_batch(folder, wh, Settings(), as_of=AS_OF)
    assert first.rows_in == first.rows_valid + first.rows_quarantined
    assert wh.scalar("SELECT count(DISTINCT (source_file, source_row)) FROM quarantine "
                     "WHERE action = 'row quarantined'") == first.rows_quarantined
    snapshot = {t: wh.query(f'SELECT * EXCLUDE (_loaded_at) FROM "{t}" ORDER BY ALL') for t in GOOD}
    quarantine_rows = wh.row_count("quarantine")

    second = ingest_batch(folder, wh, Settings(), as_of=AS_OF, force=True)  # re-validate and re-merge
    assert second.batch_id == first.batch_id
    assert sum(f.inserted + f.updated for f in second.files) == 0
    assert sum(f.unchanged for f in second.files) == first.rows_valid
    for table, before in snapshot.items():
        after = wh.query(f'SELECT * EXCLUDE (_loaded_at) FROM "{table}" ORDER BY ALL')
        pd.testing.assert_frame_equal(before, after)
    assert wh.row_count("quarantine") == quarantine_rows, "re-running never duplicates quarantine rows"
    assert wh.row_count("ingest_ledger") == 2 * len(first.files), "the ledger records every run"

    third = ingest_batch(folder, wh, Settings(), as_of=AS_OF)  # same bytes, mapping, clock: not read again
    assert [(f.rows_in, f.rows_valid, f.rows_quarantined, f.unchanged) for f in third.files] == \
        [(f.rows_in, f.rows_valid, f.rows_quarantined, f.rows_valid) for f in first.files]
    assert sum(f.inserted + f.updated for f in third.files) == 0
    assert all("not read again" in w for w in third.warnings)
    assert wh.row_count("quarantine") == quarantine_rows
    changed_clock = ingest_batch(folder, wh, Settings(), as_of="2026-06-02")  # another clock: read again
    assert not any("not read again" in w for w in changed_clock.warnings)


def test_duplicates_across_chunks_keep_the_newest_version(tmp_path: Path, wh: Warehouse) -> None:
    tables = good_batch()
    rows = [dict(GOOD["orders"], order_id=f"o{i}") for i in range(2, 12)]
    rows.append(dict(GOOD["orders"], status="shipped", updated_at="2026-01-01 12:00"))
    rows.append(dict(GOOD["orders"], status="delivered", updated_at="2026-01-03 12:00"))
    rows.append(dict(GOOD["orders"], status="placed", updated_at="2026-01-01 11:00"))
    tables["orders"] += rows
    settings = Settings(ingest={"chunk_rows": 4})  # duplicates straddle chunks
    ingest_batch(write_tables(tmp_path / "in", tables), wh, settings, as_of=AS_OF)
    o1 = wh.query("SELECT status, updated_at FROM orders WHERE order_id = 'o1'")
    assert len(o1) == 1 and o1.iloc[0]["status"] == "delivered"
    dup = wh.query("SELECT * FROM quarantine WHERE check_name LIKE 'duplicate%'")
    assert len(dup) == 3 and dup["reason"].str.contains("kept").all()


def test_newer_version_in_a_later_batch_replaces_and_older_does_not(tmp_path: Path, wh: Warehouse) -> None:
    first = good_batch()
    first["orders"][0].update(status="shipped", delivered_at="", updated_at="2026-01-02")
    ingest_batch(write_tables(tmp_path / "b1", first), wh, Settings(), as_of=AS_OF)
    newer = {"orders": [dict(GOOD["orders"], status="delivered", updated_at="2026-01-03")]}
    result = ingest_batch(write_tables(tmp_path / "b2", newer), wh, Settings(), as_of=AS_OF)
    assert result.files[0].updated == 1
    assert wh.scalar("SELECT status FROM orders WHERE order_id = 'o1'") == "delivered"
    older = {"orders": [dict(GOOD["orders"], status="placed", updated_at="2026-01-01")]}
    result = ingest_batch(write_tables(tmp_path / "b3", older), wh, Settings(), as_of=AS_OF)
    assert result.files[0].stale == 1
    assert wh.scalar("SELECT status FROM orders WHERE order_id = 'o1'") == "delivered"


def test_orphans_are_quarantined_with_their_parent_named(tmp_path: Path, wh: Warehouse) -> None:
    tables = good_batch()
    tables["order_items"].append(dict(GOOD["order_items"], order_id="ghost"))
    tables["reviews"].append(dict(GOOD["reviews"], review_id="v2", order_id="ghost"))
    tables["orders"].append(dict(GOOD["orders"], order_id="o2", customer_id="nobody"))
    ingest_batch(write_tables(tmp_path / "in", tables), wh, Settings(), as_of=AS_OF)
    orphans = wh.query("SELECT table_name, failure_value, reason FROM quarantine WHERE check_name = 'orphan'")
    assert set(orphans["table_name"]) == {"order_items", "reviews", "orders"}
    assert orphans["reason"].str.contains("no such").all()
    assert wh.row_count("order_items") == 1 and wh.row_count("orders") == 1


def test_only_orders_and_customers_is_enough(tmp_path: Path, wh: Warehouse) -> None:
    tables = {"customers": [GOOD["customers"]], "orders": [GOOD["orders"]]}
    result = ingest_batch(write_tables(tmp_path / "in", tables), wh, Settings(), as_of=AS_OF)
    assert result.rows_valid == 2 and result.rows_quarantined == 0
    assert wh.row_count("events") == 0 and wh.row_count("tickets") == 0


def test_events_without_ids_get_a_stable_content_key(tmp_path: Path, wh: Warehouse) -> None:
    event = {k: v for k, v in GOOD["events"].items() if k != "event_id"}
    tables = {"events": [event, dict(event, event_type="add_to_cart")]}
    folder = write_tables(tmp_path / "in", tables)
    ingest_batch(folder, wh, Settings(), as_of=AS_OF)
    ids = set(wh.table("events")["event_id"])
    ingest_batch(folder, wh, Settings(), as_of=AS_OF)
    assert len(ids) == 2 and set(wh.table("events")["event_id"]) == ids


def _assert_nothing_written(wh: Warehouse) -> None:
    assert all(wh.row_count(t) == 0 for t in GOOD)
    assert wh.row_count("ingest_ledger") == 0 and wh.row_count("quarantine") == 0


def test_missing_required_column_stops_naming_file_and_column(tmp_path: Path, wh: Warehouse) -> None:
    tables = good_batch()
    tables["orders"] = [{k: v for k, v in GOOD["orders"].items() if k != "total_amount"}]
    with pytest.raises(IngestError, match=r"orders\.csv.*total_amount"):
        ingest_batch(write_tables(tmp_path / "in", tables), wh, Settings(), as_of=AS_OF)
    _assert_nothing_written(wh)


def test_unknown_table_and_unreadable_file_stop_before_writing(tmp_path: Path, wh: Warehouse) -> None:
    folder = write_tables(tmp_path / "in", good_batch())
    (folder / "invoices.csv").write_text("a,b\n1,2\n")
    with pytest.raises(IngestError, match=r"invoices\.csv.*unknown table"):
        ingest_batch(folder, wh, Settings(), as_of=AS_OF)
    (folder / "invoices.csv").unlink()
    (folder / "reviews.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(IngestError, match=r"reviews\.parquet.*cannot be read"):
        ingest_batch(folder, wh, Settings(), as_of=AS_OF)
    _assert_nothing_written(wh)


def test_mapping_with_renames_codes_and_formats(tmp_path: Path, wh: Warehouse) -> None:
    folder = tmp_path / "shop"
    folder.mkdir()
    pd.DataFrame({"Kunde": ["k1"], "Land": ["DE"]}).to_csv(folder / "kunden.csv", index=False)
    pd.DataFrame({"Bestellnr": ["b1", "b2"], "Kunde": ["k1", "k1"], "Datum": ["03.01.2026 14:00", "04.01.2026"],
                  "Betrag": ["1.234,50", "12,00"], "Status": ["geliefert", "storniert"]}
                 ).to_csv(folder / "bestellungen.csv", index=False, sep=";")
    mapping_file = tmp_path / "mapping.yaml"
    mapping_file.write_text("""
timezone: Europe/Berlin
tables:
  customers:
    files: [kunden.csv]
    rename: {Kunde: customer_id, Land: region}
  orders:
    files: [bestellungen.csv]
    csv_delimiter: ";"
    rename: {Bestellnr: order_id, Kunde: customer_id, Datum: ordered_at, Betrag: total_amount, Status: status}
    values:
      status: {geliefert: delivered, storniert: cancelled}
""")
    ingest_batch(folder, wh, Settings(), mapping_file, as_of=AS_OF)
    bad = wh.query("SELECT source_row, column_name, check_name FROM quarantine")
    assert {"ordered_at", "total_amount"} <= set(bad["column_name"]), "no guessing of day/month or decimals"
    assert wh.row_count("orders") == 0
    mapping_file.write_text(mapping_file.read_text().replace(
        "    values:", "    decimal_comma: true\n    timestamp_formats: {ordered_at: '%d.%m.%Y %H:%M'}\n    values:"))
    result = ingest_batch(folder, wh, Settings(), mapping_file, as_of=AS_OF)
    orders = wh.table("orders").set_index("order_id")
    assert orders.loc["b1", "status"] == "delivered"
    assert orders.loc["b1", "total_amount"] == pytest.approx(1234.5)
    assert orders.loc["b1", "ordered_at"] == pd.Timestamp("2026-01-03 13:00"), "Berlin time stored as UTC"
    assert "b2" not in orders.index
    kept = result.failures[result.failures["table_name"] == "orders"]
    assert kept["row_json"].str.contains("b2").all() and (kept["column_name"] == "ordered_at").all()


def test_mapping_file_errors_are_clear(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("tables:\n  invoices:\n    rename: {a: b}\n")
    with pytest.raises(MappingError, match=r"unknown table name.*invoices"):
        load_mapping(path)
    path.write_text("tables:\n  orders:\n    rename: {Amount: amount_total}\n")
    with pytest.raises(MappingError, match="amount_total"):
        load_mapping(path)


def test_online_retail_signed_invoice_lines_via_sql_mapping(wh: Warehouse) -> None:
    result = ingest_batch(DATA / "online_retail", wh, Settings(), MAPPINGS / "online_retail_ii.yaml", as_of=AS_OF)
    assert wh.row_count("orders") == 4, "four invoices with a customer; the guest invoice is quarantined"
    guest = wh.query("SELECT * FROM quarantine WHERE table_name = 'orders'")
    assert guest["row_json"].str.contains("700104").all()
    returns = wh.table("returns").set_index("return_id")
    assert returns.loc["C700111-P700-1", "order_id"] == "700110", "cancellation linked to the earlier sale"
    assert returns.loc["C700112-L100-1", "refund_amount"] == pytest.approx(14.5)
    assert result.rows_in == result.rows_valid + result.rows_quarantined


def test_olist_export_via_mixed_mapping(wh: Warehouse) -> None:
    ingest_batch(DATA / "olist", wh, Settings(), MAPPINGS / "olist.yaml", as_of=AS_OF)
    orders = wh.table("orders").set_index("order_id")
    first = orders.loc["0b96e5f95ad618889b529aa62951c0bc"]
    assert first["customer_id"] == "a4c1ff27958e7918f720fd44367de86e", "the person, not Olist's per-order id"
    assert first["total_amount"] == pytest.approx(38.71)
    assert first["ordered_at"] == pd.Timestamp("2017-10-02 13:56:33"), "Sao Paulo time stored as UTC"
    assert orders.loc["56675ee071aa2c247ca7be85ab161e22", "status"] == "cancelled"
    assert wh.row_count("reviews") == 3, "repeated review ids are made unique per order"
    assert wh.scalar("SELECT category FROM products WHERE product_id = '2f26514c653ec522a288eccdbe5dc464'") == "beauty"
    assert wh.row_count("tickets") == 0 and wh.row_count("events") == 0


def test_report_names_file_row_and_check(tmp_path: Path, wh: Warehouse) -> None:
    tables = good_batch()
    tables["reviews"].append(dict(GOOD["reviews"], review_id="v9", score="11"))
    result = ingest_batch(write_tables(tmp_path / "in", tables), wh, Settings(), as_of=AS_OF)
    report = validation_report(result, examples=5)
    assert row_starting(report, "reviews", "score")[-1] == "reviews.csv:2 = 11"


def test_a_delivery_promise_may_lie_after_the_batch(tmp_path: Path, wh: Warehouse) -> None:
    tables = good_batch()
    tables["orders"] = [dict(GOOD["orders"], ordered_at="2026-05-31 20:00", promised_at="2026-06-05",
                             delivered_at="", status="shipped")]
    result = ingest_batch(write_tables(tmp_path / "in", tables), wh, Settings(), as_of=AS_OF)
    assert result.rows_quarantined == 0
    assert wh.scalar("SELECT promised_at FROM orders") == pd.Timestamp("2026-06-05")
