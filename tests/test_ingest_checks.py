"""The schemas compiled to SQL say what pandera says: same failing rows, columns and checks.

Typed rows full of boundary values go through pandera's own lazy validation and through the
compiled DuckDB checks; both must flag exactly the same (row, column, check) triples, so pandera
stays the declaration and the SQL only its faster execution.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pytest
from pandera.errors import SchemaErrors
from pandera.typing.pandas import Series

from schemas.sources import TABLES, TableSpec
from tasks.data.checks import CHECKED, CHUNK, BatchRules, compile_table
from tasks.data.mapping import TableMapping

ROWS = 400
NEVER = BatchRules(not_after=pd.Timestamp("2200-01-01"), earliest=pd.Timestamp("1800-01-01"),
                   promise_latest=pd.Timestamp("2200-01-01"), batch_time=pd.Timestamp("2026-06-01"))


def boundary_frame(table: str, seed: int) -> pd.DataFrame:
    """Values on and around every declared bound, allowed and unknown codes, missing values."""
    rng = np.random.default_rng(seed)
    schema = TABLES[table].model.to_schema()
    data = {}
    for name, column in schema.columns.items():
        kind = str(column.dtype).lower()
        allowed = [v for c in column.checks if c.name == "isin" for v in c.statistics["allowed_values"]]
        bounds = [v for c in column.checks for k, v in (c.statistics or {}).items()
                  if k in ("min_value", "max_value") and isinstance(v, int | float)]
        if "datetime" in kind:
            base = pd.Timestamp("2026-01-01")
            values = [base + pd.Timedelta(hours=int(h)) for h in rng.integers(-72, 72, ROWS)]
        elif "bool" in kind:
            values = list(rng.choice([True, False], ROWS))
        elif "int" in kind or "float" in kind:
            pool = [*(allowed or [0, 1, 2]), *bounds, *(b - 1 for b in bounds), *(b + 1 for b in bounds), -3, 7]
            values = [pool[i] for i in rng.integers(0, len(pool), ROWS)]
        else:
            pool = [*allowed, "zz", "other code"] if allowed else ["a", "b", "id-7"]
            values = [pool[i] for i in rng.integers(0, len(pool), ROWS)]
        missing = rng.random(ROWS) < 0.08
        if "int" in kind or (TABLES[table].derived_key and name in TABLES[table].key):
            missing[:] = False  # a missing int is a dtype question; a missing derived key is filled first
        series = pd.Series(values, dtype="object").mask(missing, None)
        if "datetime" in kind:
            series = pd.to_datetime(series)
        elif "bool" in kind:
            series = series.astype("boolean")
        elif "int" in kind:
            series = series.astype("int64")
        elif "float" in kind:
            series = series.astype("float64")
        else:
            series = series.astype("string")
        data[name] = series
    return pd.DataFrame(data)


def pandera_failures(table: str, frame: pd.DataFrame) -> set[tuple[int, str, str]]:
    try:
        TABLES[table].model.to_schema().validate(frame, lazy=True)
        return set()
    except SchemaErrors as exc:
        cases = exc.failure_cases
    frame_level = cases["schema_context"].eq("DataFrameSchema")
    named = cases["column"].astype(str) == cases["check"].astype(str).str.split(" ").str[0]
    cases = cases[~frame_level | named]
    return {(int(i), str(c), str(k)) for i, c, k in zip(cases["index"], cases["column"], cases["check"],
                                                          strict=True)}


def sql_failures(table: str, frame: pd.DataFrame) -> set[tuple[int, str, str]]:
    con = duckdb.connect()
    chunk = pa.Table.from_pandas(frame.assign(_source_row=np.arange(len(frame))), preserve_index=False)
    con.register(CHUNK, chunk)
    raw_types = {r[0]: r[1] for r in con.execute(f"DESCRIBE {CHUNK}").fetchall() if r[0] != "_source_row"}
    compiled = compile_table(TABLES[table], TableMapping(), raw_types, NEVER)
    con.execute("CREATE TABLE _stage_quarantine (batch_id VARCHAR, table_name VARCHAR, source_file VARCHAR, "
                "file_hash VARCHAR, source_row BIGINT, column_name VARCHAR, check_name VARCHAR, failure_value VARCHAR, "
                "reason VARCHAR, row_json VARCHAR, quarantined_at TIMESTAMP, action VARCHAR)")
    con.execute(compiled.checked_sql)  # the production statements, as ingestion runs them
    con.execute(compiled.quarantine_sql, {"batch": "b", "table": table, "file": "f", "hash": "h"})
    found = {(int(r), c, k) for r, c, k in con.execute(
        "SELECT source_row, column_name, check_name FROM _stage_quarantine").fetchall()}
    flagged = con.execute(f"SELECT count(*) FROM {CHECKED} WHERE _any").fetchall()[0][0]
    assert flagged == len({r for r, _, _ in found}), "every flagged row is in quarantine with its checks"
    con.close()
    return found


@pytest.mark.parametrize("table", list(TABLES))
@pytest.mark.parametrize("seed", [1, 2])
def test_compiled_checks_flag_what_pandera_flags(table: str, seed: int) -> None:
    frame = boundary_frame(table, seed)
    expected = pandera_failures(table, frame)
    got = sql_failures(table, frame)
    assert expected, "the frame must contain failures, or the comparison proves nothing"
    assert got == expected, {"only pandera": sorted(expected - got)[:5], "only sql": sorted(got - expected)[:5]}


class Odd(pandera.DataFrameModel):
    code: Series[str] = pandera.Field(unique_values_eq=["a"])


def test_an_undeclared_kind_of_check_is_refused_not_skipped() -> None:
    with pytest.raises(NotImplementedError, match="no SQL form"):
        compile_table(TableSpec("odd", Odd, ("code",), ("code",)), TableMapping(), {"code": "VARCHAR"}, NEVER)
