"""One bad row, value or line never costs the batch, and nothing loads wrong without a word.

Each test builds a small export in a real layout (the shop's canonical CSVs, or the Olist
marketplace files of ``tests/data/olist``) with one kind of defect and checks what a user needs:
the row kept or quarantined with a true reason, the value kept as it was, nothing lost.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_ingest import AS_OF, DATA, GOOD, MAPPINGS, good_batch, write_tables

from schemas.settings import Settings
from tasks.data.ingest import ingest_batch, validation_report
from tasks.data.warehouse import Warehouse


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    yield warehouse
    warehouse.close()


def quarantine(wh: Warehouse, table: str) -> pd.DataFrame:
    return wh.query("SELECT * FROM quarantine WHERE table_name = ? ORDER BY source_row, column_name", [table])


# ---- 1. cross-column and time checks are row-level -------------------------------------------


def test_marketplace_hand_over_before_purchase_keeps_the_order_its_items_and_reviews(
        tmp_path: Path, wh: Warehouse) -> None:
    """Olist layout: the carrier hand-over lies before the purchase (a real export's quirk)."""
    folder = tmp_path / "olist"
    shutil.copytree(DATA / "olist", folder)
    orders = pd.read_csv(folder / "olist_orders_dataset.csv", dtype=str)
    first = orders.index[orders["order_id"] == "0b96e5f95ad618889b529aa62951c0bc"][0]
    orders.loc[first, "order_delivered_carrier_date"] = "2017-09-30 08:00:00"  # purchase: 2017-10-02 10:56
    orders.to_csv(folder / "olist_orders_dataset.csv", index=False)

    result = ingest_batch(folder, wh, Settings(), MAPPINGS / "olist.yaml", as_of=AS_OF)

    stored = wh.query("SELECT * FROM orders WHERE order_id = '0b96e5f95ad618889b529aa62951c0bc'")
    assert len(stored) == 1, "the order is kept"
    assert pd.isna(stored.iloc[0]["shipped_at"]), "the impossible hand-over time is cleared"
    assert stored.iloc[0]["delivered_at"] == pd.Timestamp("2017-10-11 00:25:13"), "the rest of the row is intact"
    cleared = quarantine(wh, "orders")
    assert len(cleared) == 1
    record = cleared.iloc[0]
    assert (record["column_name"], record["check_name"], record["action"]) == \
        ("shipped_at", "shipped_at before ordered_at", "value cleared")
    assert record["failure_value"].startswith("2017-09-30 08:00"), "the original value is kept"
    assert record["source_file"] == "sql:orders" and record["source_row"] >= 1
    items = wh.scalar("SELECT count(*) FROM order_items WHERE order_id = '0b96e5f95ad618889b529aa62951c0bc'")
    reviews = wh.scalar("SELECT count(*) FROM reviews WHERE order_id = '0b96e5f95ad618889b529aa62951c0bc'")
    assert items == 1 and reviews >= 1, "no orphaned items or reviews"
    assert wh.scalar("SELECT count(*) FROM quarantine WHERE check_name = 'orphan'") == 0
    assert result.values_cleared == 1 and result.rows_in == result.rows_valid + result.rows_quarantined


def test_placeholder_and_future_dates_clear_optional_values_and_reject_required_ones(
        tmp_path: Path, wh: Warehouse) -> None:
    tables = good_batch()
    tables["orders"] = [
        dict(GOOD["orders"], order_id="o1", delivered_at="9999-12-31", promised_at="9999-12-31",
             shipped_at="0001-01-01", updated_at="2031-01-01"),
        dict(GOOD["orders"], order_id="o2", ordered_at="0001-01-01"),
        dict(GOOD["orders"], order_id="o3", ordered_at="1970-01-01 00:00:00"),
    ]
    tables["order_items"] = [dict(GOOD["order_items"], order_id="o1")]
    ingest_batch(write_tables(tmp_path / "in", tables), wh, Settings(), as_of=AS_OF)

    o1 = wh.query("SELECT * FROM orders WHERE order_id = 'o1'").iloc[0]
    for column in ("delivered_at", "promised_at", "shipped_at", "updated_at"):
        assert pd.isna(o1[column]), column
    assert o1["total_amount"] == 19.5
    assert set(wh.table("orders")["order_id"]) == {"o1"}, "a placeholder in a required column rejects the row"
    found = quarantine(wh, "orders")

    def about(row: int, column: str, field: str) -> str:
        hits = found[(found["source_row"] == row) & (found["column_name"] == column)]
        return " | ".join(hits[field])

    assert about(1, "delivered_at", "check_name").startswith("in the future")
    assert "placeholder" in about(1, "promised_at", "reason")
    assert "placeholder" in about(1, "shipped_at", "reason")
    assert about(1, "updated_at", "action") == "value cleared"
    for row in (2, 3):
        assert about(row, "ordered_at", "action") == "row quarantined"
        assert "before 1990-01-01" in about(row, "ordered_at", "reason")


# ---- 2. one malformed line never refuses the file --------------------------------------------


def test_truncated_last_line_and_unclosed_quote_are_set_aside_with_their_line(tmp_path: Path,
                                                                              wh: Warehouse) -> None:
    folder = write_tables(tmp_path / "in", {"customers": [GOOD["customers"]], "orders": [GOOD["orders"]]})
    (folder / "reviews.csv").write_text(
        "review_id,order_id,score,created_at,text\n"
        "v1,o1,5,2026-01-08,fine\n"
        'v2,o1,4,2026-01-09,"she said ""great"" and left\n'  # the quote is never closed
        "v3,o1,3,2026-01-10,\"two\nlines\"\n"
        "v4,o1,2,2026-01-11,ok\n"
        "v5,o1,1,2026-01-1",  # the export was cut off
        encoding="utf-8")
    result = ingest_batch(folder, wh, Settings(), as_of=AS_OF)

    assert set(wh.table("reviews")["review_id"]) == {"v1", "v3", "v4"}
    assert wh.scalar("SELECT text FROM reviews WHERE review_id = 'v3'") == "two\nlines"
    bad = quarantine(wh, "reviews")
    assert list(bad["check_name"]) == ["malformed_line", "malformed_line"]
    assert list(bad["action"]) == ["row quarantined"] * 2
    unclosed, cut = bad.iloc[0], bad.iloc[1]
    assert unclosed["source_row"] == 2 and "line 3" in unclosed["reason"] and "quote" in unclosed["reason"]
    assert unclosed["failure_value"].startswith('v2,o1,4,2026-01-09,"she said')
    assert cut["failure_value"] == "v5,o1,1,2026-01-1" and "expected 5 fields, found 4" in cut["reason"]
    reviews = next(f for f in result.files if f.table == "reviews")
    assert reviews.rows_in == 5 and reviews.rows_valid == 3 and reviews.rows_quarantined == 2
    assert any("line by line" in note for note in result.notes)


def test_a_truncated_last_line_alone_needs_no_slow_reader(tmp_path: Path, wh: Warehouse) -> None:
    folder = write_tables(tmp_path / "in", {"customers": [GOOD["customers"]]})
    with (folder / "customers.csv").open("a") as handle:
        handle.write("c2,2025-02-01,south,en\nc3,2025-03")
    result = ingest_batch(folder, wh, Settings(), as_of=AS_OF)
    assert set(wh.table("customers")["customer_id"]) == {"c1", "c2"}
    bad = quarantine(wh, "customers").iloc[0]
    assert (bad["source_row"], bad["failure_value"]) == (3, "c3,2025-03")
    assert not any("line by line" in n for n in result.notes), "the fast reader sets a short line aside itself"


@pytest.mark.parametrize("block", [None, 1 << 20], ids=["default block", "block grows"])
def test_a_10_mb_field_in_row_one_loads_whole(tmp_path: Path, wh: Warehouse, block: int | None) -> None:
    folder = write_tables(tmp_path / "in", {"customers": [GOOD["customers"]], "orders": [GOOD["orders"]]})
    essay = "long review " * 900_000  # 10.8 MB in one field
    pd.DataFrame([dict(GOOD["reviews"], text=essay), dict(GOOD["reviews"], review_id="v2", text="short")]
                 ).to_csv(folder / "reviews.csv", index=False)
    settings = Settings(ingest={"csv_block_bytes": block} if block else {})
    result = ingest_batch(folder, wh, settings, as_of=AS_OF)
    assert result.rows_quarantined == 0
    assert wh.scalar("SELECT length(text) FROM reviews WHERE review_id = 'v1'") == len(essay.strip())
    assert wh.row_count("reviews") == 2


# ---- 3. only declared null markers mean missing ----------------------------------------------


def test_na_and_null_are_text_unless_the_mapping_declares_them(tmp_path: Path, wh: Warehouse) -> None:
    tables = good_batch()
    tables["customers"] = [dict(GOOD["customers"], region="NA")]
    tables["reviews"] = [dict(GOOD["reviews"], text="null"), dict(GOOD["reviews"], review_id="v2", text="N/A")]
    folder = write_tables(tmp_path / "in", tables)
    ingest_batch(folder, wh, Settings(), as_of=AS_OF)
    assert wh.scalar("SELECT region FROM customers") == "NA", "North America is a region, not a gap"
    assert sorted(wh.table("reviews")["text"]) == ["N/A", "null"]

    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("null_values: ['NA']\ntables:\n  reviews:\n    null_values: ['null', 'N/A']\n")
    other = Warehouse(tmp_path / "other.duckdb")
    ingest_batch(folder, other, Settings(), mapping, as_of=AS_OF)
    assert other.scalar("SELECT region FROM customers") is None
    assert other.table("reviews")["text"].isna().all()
    assert other.row_count("quarantine") == 0
    other.close()


# ---- 5. personal data never in reports or errors ---------------------------------------------


def test_personal_values_stay_in_the_warehouse_only(tmp_path: Path, wh: Warehouse) -> None:
    folder = write_tables(tmp_path / "in", {"orders": [GOOD["orders"]]})
    (folder / "customers.csv").write_text(
        "customer_id,signup_at,region,email,phone\n"
        "c1,2025-01-01,north,ok@example.com,+49 30 1234567\n"
        "c2,2025-01-02,south,jane.doe@example.com,+49 170 7654321,EXTRA\n",  # one field too many
        encoding="utf-8")
    tables = {"reviews": [dict(GOOD["reviews"], text="call me on +49 170 7654321", score="9")]}
    write_tables(folder, tables)
    result = ingest_batch(folder, wh, Settings(), as_of=AS_OF)
    report = validation_report(result, examples=5)
    messages = "\n".join([report, *result.warnings, *result.notes])
    for secret in ("jane.doe@example.com", "7654321"):
        assert secret not in messages
    assert "customers.csv:2" in report and "malformed_line" in report, "the report names file and row"
    kept = wh.query("SELECT row_json FROM quarantine WHERE table_name = 'customers'")
    assert "jane.doe@example.com" in kept.iloc[0]["row_json"], "the quarantine keeps the original line"
    review = wh.query("SELECT * FROM quarantine WHERE table_name = 'reviews'").iloc[0]
    assert review["column_name"] == "score" and "7654321" in review["row_json"]


def test_mapping_sql_errors_do_not_echo_values(tmp_path: Path, wh: Warehouse) -> None:
    from tasks.data.ingest import IngestError
    from tasks.data.mapping import MappingError

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "people.csv").write_text("id,email\n1,jane.doe@example.com\n", encoding="utf-8")
    mapping = tmp_path / "m.yaml"
    mapping.write_text("tables:\n  customers:\n    sql: |\n      SELECT CAST(email AS INTEGER) AS customer_id\n"
                       "      FROM read_csv('{data_dir}/people.csv', all_varchar = true)\n")
    with pytest.raises((IngestError, MappingError)) as caught:
        ingest_batch(folder, wh, Settings(), mapping, as_of=AS_OF)
    assert "customers" in str(caught.value) and "jane.doe" not in str(caught.value)


# ---- 6. numbers that do not parse under the declared format ----------------------------------


def test_decimal_comma_refuses_dot_decimals_and_non_finite_numbers_are_quarantined(
        tmp_path: Path, wh: Warehouse) -> None:
    folder = write_tables(tmp_path / "in", {"customers": [GOOD["customers"]]})
    rows = [("ok", "1.234,50", "0,5"), ("dot", "59.99", ""), ("inf", "inf", ""), ("ninf", "-inf", ""),
            ("nan", "nan", ""), ("huge", "1e309", ""), ("optional", "12,00", "inf"), ("thousand", "1.234", "")]
    pd.DataFrame([dict(GOOD["orders"], order_id=k, total_amount=a, discount_amount=d) for k, a, d in rows]
                 ).to_csv(folder / "orders.csv", index=False, sep=";")
    mapping = tmp_path / "m.yaml"
    mapping.write_text("tables:\n  orders:\n    csv_delimiter: ';'\n    decimal_comma: true\n")
    ingest_batch(folder, wh, Settings(), mapping, as_of=AS_OF)

    amounts = wh.table("orders").set_index("order_id")
    assert set(amounts.index) == {"ok", "optional", "thousand"}
    assert amounts.loc["ok", "total_amount"] == 1234.5 and amounts.loc["ok", "discount_amount"] == 0.5
    assert amounts.loc["thousand", "total_amount"] == 1234.0, "with decimal_comma a dot groups thousands"
    assert amounts.loc["optional", "total_amount"] == 12.0 and pd.isna(amounts.loc["optional", "discount_amount"])
    bad = quarantine(wh, "orders").set_index("row_json")
    by_value = {row["failure_value"]: row for _, row in bad.iterrows()}
    assert by_value["59.99"]["check_name"] == "parse_float64"
    assert "decimal comma" in by_value["59.99"]["reason"], "the reason names the declared format"
    for value in ("inf", "-inf", "nan", "1e309"):
        assert by_value[value]["check_name"] == "not_finite", value
    assert by_value["inf"]["action"] in ("row quarantined", "value cleared")
    assert (bad[bad["column_name"] == "discount_amount"]["action"] == "value cleared").all()


def test_numbers_without_a_declared_format(tmp_path: Path, wh: Warehouse) -> None:
    tables = good_batch()
    tables["orders"] = [dict(GOOD["orders"], order_id=k, total_amount=a) for k, a in
                        [("grouped", "1,234.50"), ("currency", "€ 12.00"), ("comma", "1,5"), ("inf", "Infinity")]]
    ingest_batch(write_tables(tmp_path / "in", tables), wh, Settings(), as_of=AS_OF)
    amounts = wh.table("orders").set_index("order_id")["total_amount"]
    assert amounts.to_dict() == {"grouped": 1234.5, "currency": 12.0}
    checks = dict(zip(quarantine(wh, "orders")["failure_value"], quarantine(wh, "orders")["check_name"],
                      strict=True))
    assert checks == {"1,5": "parse_float64", "Infinity": "not_finite"}


# ---- 9. local times that occur twice or never -------------------------------------------------


def _sao_paulo_orders(tmp_path: Path, mapping_extra: str = "") -> tuple[Path, Path]:
    tables = {"customers": [GOOD["customers"]],
              "orders": [dict(GOOD["orders"], order_id="twice", ordered_at="2018-02-17 23:33:56", delivered_at="",
                              promised_at=""),
                         dict(GOOD["orders"], order_id="never", ordered_at="2018-11-04 00:30:00", delivered_at="",
                              promised_at="")]}
    folder = write_tables(tmp_path / "in", tables)
    mapping = tmp_path / "m.yaml"
    mapping.write_text(f"timezone: America/Sao_Paulo\n{mapping_extra}")
    return folder, mapping


@pytest.mark.parametrize(("extra", "settings", "twice", "never"), [
    ("", {}, "2018-02-18 01:33:56", "2018-11-04 03:00:00"),
    ("ambiguous_time: latest\nnonexistent_time: shift_backward\n", {},
     "2018-02-18 02:33:56", "2018-11-04 02:59:59.999999"),
    ("", {"ambiguous_time": "latest"}, "2018-02-18 02:33:56", "2018-11-04 03:00:00"),
], ids=["defaults", "mapping rules", "settings rule"])
def test_dst_times_resolve_by_the_declared_rule(tmp_path: Path, wh: Warehouse, extra: str, settings: dict,
                                                twice: str, never: str) -> None:
    folder, mapping = _sao_paulo_orders(tmp_path, extra)
    result = ingest_batch(folder, wh, Settings(ingest=settings), mapping, as_of=AS_OF)
    assert result.rows_quarantined == 0 and wh.row_count("quarantine") == 0
    stored = wh.table("orders").set_index("order_id")["ordered_at"]
    assert stored["twice"] == pd.Timestamp(twice) and stored["never"] == pd.Timestamp(never)


# ---- 10. limits are settings --------------------------------------------------------------------


def test_wholesale_quantities_load_and_the_limit_is_a_setting(tmp_path: Path, wh: Warehouse) -> None:
    tables = good_batch()
    tables["order_items"] = [dict(GOOD["order_items"], line_no=str(n), quantity=q)
                             for n, q in enumerate(["1824", "2880", "1000001"], 1)]
    folder = write_tables(tmp_path / "in", tables)
    ingest_batch(folder, wh, Settings(), as_of=AS_OF)
    assert sorted(wh.table("order_items")["quantity"]) == [1824, 2880]
    reason = quarantine(wh, "order_items").iloc[0]["reason"]
    assert "1,000,000" in reason and "ingest.max_line_quantity" in reason

    small = Warehouse(tmp_path / "small.duckdb")
    ingest_batch(folder, small, Settings(ingest={"max_line_quantity": 2000}), as_of=AS_OF)
    assert sorted(small.table("order_items")["quantity"]) == [1824]
    assert "2,000" in small.query("SELECT reason FROM quarantine WHERE source_row = 2").iloc[0]["reason"]
    small.close()


# ---- 11. date-only exports ----------------------------------------------------------------------


def test_date_only_columns_count_from_the_end_of_their_local_day(tmp_path: Path, wh: Warehouse) -> None:
    tables = good_batch()
    tables["orders"] = [dict(GOOD["orders"], ordered_at="2026-01-03", promised_at="", delivered_at="2026-01-05")]
    tables["reviews"] = [dict(GOOD["reviews"], created_at="2026-01-08")]
    folder = write_tables(tmp_path / "in", tables)
    mapping = tmp_path / "m.yaml"
    mapping.write_text("timezone: Europe/Berlin\ndate_only: [ordered_at, created_at]\n")
    result = ingest_batch(folder, wh, Settings(), mapping, as_of=AS_OF)

    ordered = wh.scalar("SELECT ordered_at FROM orders")
    assert ordered == pd.Timestamp("2026-01-03 22:59:59.999999"), "23:59:59.999999 in Berlin, stored as UTC"
    assert wh.scalar("SELECT created_at FROM reviews") == pd.Timestamp("2026-01-08 22:59:59.999999")
    midnight_cutoff = pd.Timestamp("2026-01-03")
    assert not ordered <= midnight_cutoff, "a cutoff at the day's start does not see the day's order"
    assert ordered <= pd.Timestamp("2026-01-04"), "a cutoff at its end does"
    notes = " ".join(result.notes)
    assert "every delivered_at" in notes and "date_only" in notes, "an undeclared date-only column is named"
    assert "every ordered_at" not in notes, "declared columns are not reported"


# ---- 13. staging left by a killed ingestion ----------------------------------------------------


def test_stale_staging_tables_are_dropped_at_the_next_start(tmp_path: Path, wh: Warehouse) -> None:
    wh.con.execute("CREATE TABLE _stage_orders AS SELECT 'left over' AS order_id")
    wh.con.execute("CREATE TABLE _stage_quarantine AS SELECT 1 AS x")
    result = ingest_batch(write_tables(tmp_path / "in", good_batch()), wh, Settings(), as_of=AS_OF)
    assert not wh.has_table("_stage_orders") and not wh.has_table("_stage_quarantine")
    assert "left over" not in set(wh.table("orders")["order_id"])
    assert any("interrupted" in note for note in result.notes)


def test_the_ingest_flow_logs_and_reports_no_personal_values(tmp_path: Path, settings, prefect_api,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The Prefect run: warnings logged one per line, the report file clean, the rows in quarantine."""
    import logging

    from flows.ingest import ingest_flow

    folder = write_tables(tmp_path / "export", {"orders": [GOOD["orders"]]})
    (folder / "customers.csv").write_text(
        "customer_id,signup_at,region,email,phone\n"
        "c1,2025-01-01,north,ok@example.com,+49 30 1234567\n"
        '"c2,2025-01-02,south,jane.doe@example.com,+49 170 7654321\n', encoding="utf-8")  # unclosed quote
    logging.getLogger("prefect").addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="prefect"):
            summary = ingest_flow(folder, as_of=AS_OF)
    finally:
        logging.getLogger("prefect").removeHandler(caplog.handler)
    report = Path(summary["report"]).read_text(encoding="utf-8")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "1 quarantined" in logged, "the run's own log lines were captured"
    for secret in ("jane.doe", "7654321"):
        assert secret not in logged and secret not in report and secret not in str(summary)
    assert summary["rows_quarantined"] == 1 and "customers.csv:2" in report
