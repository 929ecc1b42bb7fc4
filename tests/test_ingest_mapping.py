"""Mapping files: every key documented and checked, and mapping SQL that cannot be steered.

Mapping SQL runs in its own locked, read-only, in-memory DuckDB; a folder name is data, never
SQL; every refusal leaves the warehouse exactly as it was.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml
from test_ingest import AS_OF, DATA, GOOD, MAPPINGS, good_batch, write_tables

from schemas.settings import Settings
from tasks.data.ingest import IngestError, ingest_batch, validation_report
from tasks.data.mapping import EXAMPLE, Attachment, Mapping, MappingError, TableMapping, load_mapping
from tasks.data.warehouse import Warehouse

HOSTILE_NAMES = ["x'; DROP TABLE reviews; --", "shop's \"export\" [2026] *"]


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    yield warehouse
    warehouse.close()


def snapshot(wh: Warehouse) -> dict[str, pd.DataFrame]:
    tables = [r[0] for r in wh.con.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema = 'main' ORDER BY 1").fetchall()]
    return {t: wh.query(f'SELECT * FROM "{t}" ORDER BY ALL') for t in tables}


def assert_unchanged(wh: Warehouse, before: dict[str, pd.DataFrame]) -> None:
    after = snapshot(wh)
    assert set(after) == set(before), "no table created or dropped"
    for table, frame in before.items():
        pd.testing.assert_frame_equal(frame, after[table], obj=table)


@pytest.fixture
def loaded(tmp_path: Path, wh: Warehouse) -> Warehouse:
    """A warehouse with one good batch in it, so that damage would show."""
    ingest_batch(write_tables(tmp_path / "first", good_batch()), wh, Settings(), as_of=AS_OF)
    assert wh.row_count("reviews") == 1
    return wh


# ---- 12. the example mapping documents every key ----------------------------------------------


def _keys(node: object, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            here = (*path, "*") if path == ("tables",) else (*path, str(key))
            found.add(here)
            found |= _keys(value, here)
    elif isinstance(node, list):
        for item in node:
            found |= _keys(item, (*path, "[]"))
    return found


def test_the_example_mapping_loads_and_shows_every_key() -> None:
    mapping = load_mapping(EXAMPLE)
    assert mapping.tables["orders"].decimal_comma and mapping.attach[0].name == "returns_db"
    written = _keys(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")))
    shown = {path[-1] for path in written if len(path) == 1}
    shown_table = {path[-1] for path in written if path[:2] == ("tables", "*") and len(path) == 3}
    shown_attach = {path[-1] for path in written if path[:2] == ("attach", "[]")}
    assert set(Mapping.model_fields) <= shown, set(Mapping.model_fields) - shown
    assert set(TableMapping.model_fields) <= shown_table, set(TableMapping.model_fields) - shown_table
    assert set(Attachment.model_fields) <= shown_attach


def test_an_export_in_the_example_layout_loads(tmp_path: Path, wh: Warehouse) -> None:
    """The example's German shop, built file by file (a DuckDB file stands in for the SQLite one)."""
    folder = tmp_path / "export"
    (folder / "klicks").mkdir(parents=True)
    (folder / "kunden_2026.csv").write_text("Kundennr;Land\nk1;DE\nk2;AT\n", encoding="utf-8")
    (folder / "bestellungen_2026-05.csv").write_text(
        "Bestellnr;Kundennr;Datum;Zugestellt;Betrag;Status\n"
        "b1;k1;03.05.2026 14:00;06.05.2026;1.234,50;geliefert\n"
        "b2;k2;04.05.2026 09:30;-;12,00;versandt\n", encoding="latin-1")
    (folder / "alt_readme.csv").write_text("not,a,table\n", encoding="utf-8")
    con = duckdb.connect(str(folder / "returns.duckdb"))
    con.execute("CREATE TABLE returns AS SELECT 'r1' AS id, 'b1' AS bestellnr, "
                "TIMESTAMP '2026-05-10 08:00' AS angelegt, 'zu groß' AS grund")
    con.close()
    pd.DataFrame({"ts": pd.to_datetime(["2026-05-03 13:00"]), "typ": ["product_view"], "kunde": ["k1"]}
                 ).to_parquet(folder / "klicks" / "part-1.parquet")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(EXAMPLE.read_text(encoding="utf-8").replace(
        "path: returns.sqlite", "path: returns.duckdb").replace("type: sqlite ", "type: duckdb "))

    result = ingest_batch(folder, wh, Settings(), mapping, as_of=AS_OF)
    assert result.rows_quarantined == 0, result.failures[["column_name", "reason"]]
    orders = wh.table("orders").set_index("order_id")
    assert orders.loc["b1", "total_amount"] == 1234.5 and orders.loc["b1", "status"] == "delivered"
    assert orders.loc["b1", "ordered_at"] == pd.Timestamp("2026-05-03 12:00"), "Berlin summer time as UTC"
    assert orders.loc["b1", "delivered_at"] == pd.Timestamp("2026-05-06 21:59:59.999999"), "end of the local day"
    assert pd.isna(orders.loc["b2", "delivered_at"]) and orders.loc["b2", "payment_type"] == "other"
    assert set(wh.table("customers")["region"]) == {"DE", "AT"}
    assert wh.scalar("SELECT reason_text FROM returns") == "zu groß"
    assert wh.scalar("SELECT event_type FROM events") == "product_view"


# ---- 7. mapping keys are checked --------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("tables:\n  orders:\n    renam: {Datum: ordered_at}\n", r"unknown key 'renam' \(renam: did you mean rename\?\)"),
    ("tabels:\n  orders: {}\n", r"unknown key 'tabels' \(tabels: did you mean tables\?\)"),
    ("attach:\n  - \"'shop.sqlite' AS shop (TYPE sqlite)\"\n", r"raw SQL; write it as \{path: shop.sqlite"),
    ("attach:\n  - {path: a.duckdb, name: 'x; DROP'}\n", r"plain identifier"),
    ("tables:\n  orders:\n    date_only: [status]\n", r"\['status'\] are not timestamp columns"),
], ids=["table key", "top-level key", "raw attach", "attach name", "date_only column"])
def test_unknown_or_wrong_mapping_keys_are_refused_by_name(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(MappingError, match=expected):
        load_mapping(path)


def test_a_rename_whose_source_is_absent_names_both_columns(tmp_path: Path, loaded: Warehouse) -> None:
    before = snapshot(loaded)
    folder = write_tables(tmp_path / "in", {"orders": [GOOD["orders"]]})
    mapping = tmp_path / "m.yaml"
    mapping.write_text("tables:\n  orders:\n    rename: {Lieferdatum: delivered_at}\n")
    with pytest.raises(IngestError, match=r"orders\.csv.*'Lieferdatum' → delivered_at"):
        ingest_batch(folder, loaded, Settings(), mapping, as_of=AS_OF)
    assert_unchanged(loaded, before)


@pytest.mark.parametrize("renamed", [True, False], ids=["column renamed in the export", "column left empty"])
def test_an_optional_column_that_vanishes_is_reported(tmp_path: Path, wh: Warehouse, renamed: bool) -> None:
    customers = [GOOD["customers"]]
    history = [dict(GOOD["orders"], order_id=f"h{i}") for i in range(20)]
    ingest_batch(write_tables(tmp_path / "b1", {"customers": customers, "orders": history}), wh, Settings(),
                 as_of=AS_OF)
    fresh = []
    for i in range(10):
        row = dict(GOOD["orders"], order_id=f"n{i}")
        value = row.pop("delivered_at")
        if renamed:
            row["deliveredAt"] = value
        else:
            row["delivered_at"] = ""
        fresh.append(row)
    result = ingest_batch(write_tables(tmp_path / "b2", {"orders": fresh}), wh, Settings(), as_of=AS_OF)
    state = "is not in this file" if renamed else "is empty in every row"
    warning = [w for w in result.warnings if "delivered_at" in w]
    assert len(warning) == 1 and state in warning[0] and "100% of the stored orders" in warning[0]
    assert "delivered_at" in validation_report(result, 5)
    assert wh.scalar("SELECT count(*) FROM orders WHERE order_id LIKE 'n%' AND delivered_at IS NULL") == 10
    assert not [w for w in result.warnings if "promised_at" in w or "carrier" in w], "only what vanished"


# ---- 4. mapping SQL cannot reach the warehouse, folder names are data --------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_folder_names_are_only_names(tmp_path: Path, loaded: Warehouse, name: str) -> None:
    folder = tmp_path / name
    shutil.copytree(DATA / "olist", folder)
    result = ingest_batch(folder, loaded, Settings(), MAPPINGS / "olist.yaml", as_of=AS_OF)
    assert result.rows_quarantined == 0
    assert loaded.row_count("reviews") == 1 + 3, "reviews still there, the export's added"
    assert loaded.scalar("SELECT count(*) FROM orders WHERE order_id = '0b96e5f95ad618889b529aa62951c0bc'") == 1
    plain = tmp_path / f"plain {name}"
    write_tables(plain, {"customers": [dict(GOOD["customers"], customer_id="c9")]})
    ingest_batch(plain, loaded, Settings(), as_of=AS_OF)
    assert loaded.scalar("SELECT count(*) FROM customers WHERE customer_id = 'c9'") == 1


def _mapping(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    return path


CUSTOMERS_SQL = ("tables:\n  customers:\n    sql: |\n      SELECT customer_id FROM "
                 "read_csv('{data_dir}/people.csv', all_varchar = true)\n")


def _people(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    (folder / "people.csv").write_text("customer_id\nz1\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize(("setup", "expected"), [
    ("ATTACH '{warehouse}' AS w", r"ATTACH statements are not allowed"),
    ("COPY (SELECT 1 AS x) TO '{data_dir}/written.csv'", r"COPY statements are not allowed"),
    ("SET enable_external_access = true", r"SET statements are not allowed"),
    ("INSTALL httpfs", r"statements are not allowed"),
    ("CREATE VIEW v AS SELECT * FROM {data_dir}", r"only appear inside a quoted path"),
    ("CREATE VIEW v AS SELECT * FROM read_csv('{warehouse_dir}/secret.csv')",
     r"setup statement 1 failed: Permission Error"),
], ids=["attach warehouse", "copy to a file", "reopen access", "install", "unquoted data_dir", "read outside"])
def test_mapping_setup_that_reaches_out_is_refused_and_nothing_is_written(
        tmp_path: Path, loaded: Warehouse, setup: str, expected: str) -> None:
    (tmp_path / "secret.csv").write_text("a\n1\n")
    before = snapshot(loaded)
    folder = _people(tmp_path)
    statement = setup.replace("{warehouse}", str(loaded.path)).replace("{warehouse_dir}", str(tmp_path))
    mapping = _mapping(tmp_path, f"setup:\n  - \"{statement}\"\n" + CUSTOMERS_SQL)
    with pytest.raises((MappingError, IngestError), match=expected):
        ingest_batch(folder, loaded, Settings(), mapping, as_of=AS_OF)
    assert not (folder / "written.csv").exists()
    assert_unchanged(loaded, before)


def test_a_table_query_must_be_one_select(tmp_path: Path, loaded: Warehouse) -> None:
    before = snapshot(loaded)
    mapping = _mapping(tmp_path, "tables:\n  reviews:\n    sql: \"CREATE TABLE reviews AS SELECT 'x' AS review_id\"\n")
    with pytest.raises(MappingError, match="single SELECT"):
        ingest_batch(_people(tmp_path), loaded, Settings(), mapping, as_of=AS_OF)
    mapping = _mapping(tmp_path, "tables:\n  customers:\n    sql: \"SELECT 'a' AS customer_id; DROP TABLE reviews\"\n")
    with pytest.raises(MappingError, match="single SELECT"):
        ingest_batch(_people(tmp_path), loaded, Settings(), mapping, as_of=AS_OF)
    assert_unchanged(loaded, before)


def test_attaching_the_warehouse_is_refused(tmp_path: Path, loaded: Warehouse) -> None:
    before = snapshot(loaded)
    mapping = _mapping(tmp_path, f"attach:\n  - {{path: '{loaded.path}', name: w}}\n" + CUSTOMERS_SQL)
    with pytest.raises(MappingError, match="the warehouse itself"):
        ingest_batch(_people(tmp_path), loaded, Settings(), mapping, as_of=AS_OF)
    assert_unchanged(loaded, before)


def test_scratch_tables_of_a_mapping_live_in_its_sandbox(tmp_path: Path, loaded: Warehouse) -> None:
    """A setup CREATE TABLE named like a warehouse table runs in the sandbox's memory only."""
    folder = _people(tmp_path)
    mapping = _mapping(tmp_path, "setup:\n  - \"CREATE TABLE reviews AS SELECT 'evil' AS review_id\"\n"
                                 "  - \"DROP TABLE IF EXISTS orders\"\n" + CUSTOMERS_SQL)
    ingest_batch(folder, loaded, Settings(), mapping, as_of=AS_OF)
    assert list(loaded.table("reviews")["review_id"]) == ["v1"]
    assert loaded.row_count("orders") == 1
    assert loaded.scalar("SELECT count(*) FROM customers WHERE customer_id = 'z1'") == 1


def test_attachments_are_read_only(tmp_path: Path, loaded: Warehouse) -> None:
    folder = tmp_path / "crm"
    folder.mkdir()
    con = duckdb.connect(str(folder / "crm.duckdb"))
    con.execute("CREATE TABLE people AS SELECT 'z2' AS customer_id")
    con.close()
    attach = "attach:\n  - {path: crm.duckdb, name: crm}\n"
    reading = "tables:\n  customers:\n    sql: SELECT customer_id FROM crm.people\n"
    ingest_batch(folder, loaded, Settings(), _mapping(tmp_path, attach + reading), as_of=AS_OF)
    assert loaded.scalar("SELECT count(*) FROM customers WHERE customer_id = 'z2'") == 1
    before = snapshot(loaded)
    writing = attach + "setup:\n  - \"INSERT INTO crm.people VALUES ('intruder')\"\n" + reading
    with pytest.raises(MappingError, match="read-only"):
        ingest_batch(folder, loaded, Settings(), _mapping(tmp_path, writing), as_of=AS_OF)
    assert_unchanged(loaded, before)
    assert duckdb.connect(str(folder / "crm.duckdb"), read_only=True).execute(
        "SELECT count(*) FROM people").fetchall()[0][0] == 1


def test_setup_never_runs_before_the_files_pass_preflight(tmp_path: Path, loaded: Warehouse) -> None:
    before = snapshot(loaded)
    folder = write_tables(tmp_path / "in", {"orders": [{k: v for k, v in GOOD["orders"].items()
                                                        if k != "total_amount"}]})
    marker = tmp_path / "setup-ran.csv"
    mapping = _mapping(tmp_path, f"setup:\n  - \"SELECT * FROM read_csv('{marker}')\"\n")
    with pytest.raises(IngestError, match=r"orders\.csv.*total_amount"):  # not the setup's missing file
        ingest_batch(folder, loaded, Settings(), mapping, as_of=AS_OF)
    assert_unchanged(loaded, before)


# ---- a file can be a table and another table's SQL input at once ------------------------------


def test_a_claimed_file_that_sql_also_reads_is_loaded(tmp_path: Path, wh: Warehouse) -> None:
    """An export with only orders: customers derived from orders.csv by SQL, orders.csv claimed as orders.

    (The claim was dropped as a mere SQL input: the batch loaded its customers and no order, silently.)
    """
    folder = write_tables(tmp_path / "in", {"orders": [{**GOOD["orders"], "order_id": f"o{i}"} for i in range(3)]})
    mapping = _mapping(tmp_path, "tables:\n  customers:\n    sql: |\n      SELECT DISTINCT customer_id FROM "
                                 "read_csv('{data_dir}/orders.csv', all_varchar = true)\n"
                                 "  orders:\n    files: [orders.csv]\n")
    result = ingest_batch(folder, wh, Settings(), mapping, as_of=AS_OF)
    assert wh.row_count("customers") == 1 and wh.row_count("orders") == 3
    assert result.rows_valid == 4 and not result.warnings


def test_a_file_claimed_and_ignored_is_refused_by_name(tmp_path: Path, wh: Warehouse) -> None:
    folder = write_tables(tmp_path / "in", good_batch())
    mapping = _mapping(tmp_path, "ignore: [orders.csv]\ntables:\n  orders:\n    files: [orders.csv]\n")
    before = snapshot(wh)
    with pytest.raises(IngestError, match=r"orders\.csv: the mapping both claims it for table 'orders'"):
        ingest_batch(folder, wh, Settings(), mapping, as_of=AS_OF)
    assert_unchanged(wh, before)


def test_a_files_pattern_that_matches_nothing_is_a_warning(tmp_path: Path, wh: Warehouse) -> None:
    folder = write_tables(tmp_path / "in", good_batch())
    mapping = _mapping(tmp_path, "tables:\n  returns:\n    files: [retouren*.csv]\n")
    result = ingest_batch(folder, wh, Settings(), mapping, as_of=AS_OF)
    assert any("returns: files pattern 'retouren*.csv' matches no file" in w for w in result.warnings)
    assert "matches no file" in validation_report(result, 3)
