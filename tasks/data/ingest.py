"""Validated, idempotent ingestion of a batch of source files into the warehouse.

The path of a batch: discover files → preflight (every file readable, every table known, every
required column present — or stop before writing anything) → per file, in chunks: rename and
map codes, parse types, validate with pandera (lazy: all failures at once) → stage valid rows →
whole-batch checks (duplicate keys, orphans) → merge into the warehouse by key, in one
transaction. Every rejected row lands in ``quarantine`` with file, row, column, check, value and
the whole original row; the ``ingest_ledger`` records hashes, counts and timings per file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
import pyarrow as pyarrow_lib
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from pandera.errors import SchemaError, SchemaErrors

from schemas.settings import Settings
from schemas.sources import TABLES, TableSpec
from tasks.data.mapping import Mapping, TableMapping, apply_renames_and_values, load_mapping, mapping_fingerprint
from tasks.data.warehouse import Warehouse

DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".tsv")
BATCH_MANIFEST = "_batch.json"
QUARANTINE_TABLE = "quarantine"
QUARANTINE_STAGE = "_stage_quarantine"  # this batch's rejects until the final transaction
LEDGER_TABLE = "ingest_ledger"
TRUE_WORDS = {"true", "t", "1", "yes", "y", "是", "1.0"}
FALSE_WORDS = {"false", "f", "0", "no", "n", "否", "0.0"}
CURRENCY_NOISE = re.compile(r"[\s$€£¥￥]|USD|EUR|GBP|CNY|RMB")
THOUSANDS_GROUPED = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")


class IngestError(RuntimeError):
    """A batch that cannot be ingested at all; nothing was written."""


@dataclass
class SourceFile:
    table: str
    path: Path | None  # None for SQL-mapped tables
    label: str  # what reports call it: the file name or "sql:<table>"
    file_hash: str
    columns: list[str] = field(default_factory=list)


@dataclass
class FileResult:
    table: str
    source: str
    file_hash: str
    rows_in: int = 0
    rows_valid: int = 0
    rows_quarantined: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    seconds: float = 0.0


@dataclass
class BatchResult:
    batch_id: str
    as_of: pd.Timestamp
    files: list[FileResult]
    failures: pd.DataFrame  # one row per (row, check) in quarantine from this batch
    warnings: list[str]
    seconds: float

    @property
    def rows_in(self) -> int:
        return sum(f.rows_in for f in self.files)

    @property
    def rows_valid(self) -> int:
        return sum(f.rows_valid for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files)


# ---- discovery and preflight ---------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def table_for_file(path: Path) -> str | None:
    """``orders.csv``, ``orders_2026-11.parquet`` or ``orders/part-1.parquet`` → ``orders``."""
    name = path.name
    for suffix in DATA_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for candidate in (name, path.parent.name):
        if candidate in TABLES:
            return candidate
        base = re.split(r"[_\-.](?=\d)", candidate, maxsplit=1)[0]
        if base in TABLES:
            return base
    return None


def discover_files(data_dir: Path, mapping: Mapping) -> list[tuple[str, Path]]:
    """Files in the batch with their table; names that fit no table stop the batch."""
    if not data_dir.exists():
        raise IngestError(f"data folder {data_dir} does not exist")
    claimed: dict[Path, str] = {}
    for table, tm in mapping.tables.items():
        for pattern in tm.files:
            for hit in sorted(glob.glob(str(data_dir / pattern), recursive=True)):
                claimed[Path(hit)] = table
    ignored = {Path(hit) for pattern in mapping.ignore for hit in glob.glob(str(data_dir / pattern), recursive=True)}
    ignored |= set(sql_input_files(data_dir, mapping))
    sql_tables = {t for t, tm in mapping.tables.items() if tm.sql}
    found: list[tuple[str, Path]] = []
    for path in sorted(data_dir.rglob("*")):
        if not path.is_file() or path.name.startswith((".", "_")) or not path.name.endswith(DATA_SUFFIXES):
            continue
        if path in ignored or (path not in claimed and table_for_file(path) in sql_tables):
            continue
        table = claimed.get(path) or table_for_file(path)
        if table is None:
            raise IngestError(
                f"{path}: unknown table name {path.name!r}; name files after a table "
                f"({', '.join(TABLES)}) or claim them in the mapping file"
            )
        found.append((table, path))
    return found


SQL_INPUT = re.compile(r"\{data_dir\}/([^'\"]+)")


def sql_input_files(data_dir: Path, mapping: Mapping) -> list[Path]:
    """Files that the mapping's SQL reads (``'{data_dir}/name*.csv'``): inputs, not tables."""
    texts = [*mapping.setup, *(tm.sql for tm in mapping.tables.values() if tm.sql)]
    patterns = {m for text in texts for m in SQL_INPUT.findall(text)}
    return sorted({Path(hit) for p in patterns for hit in glob.glob(str(data_dir / p), recursive=True)})


def read_header(path: Path, tm: TableMapping) -> list[str]:
    try:
        if path.name.endswith((".parquet", ".pq")):
            return list(pq.ParquetFile(path).schema_arrow.names)
        reader = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=1 << 16),
                                 parse_options=_parse_options(path, tm))
        return list(reader.schema.names)
    except (OSError, pyarrow_lib.ArrowException, ValueError) as exc:
        raise IngestError(f"{path}: cannot be read as {path.suffix.lstrip('.')}: {exc}") from exc


def _parse_options(path: Path, tm: TableMapping) -> pa_csv.ParseOptions:
    delimiter = tm.csv_delimiter or ("\t" if path.name.endswith(".tsv") else ",")
    return pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True)


def check_required_columns(spec: TableSpec, canonical_columns: set[str], label: str) -> None:
    required = set(spec.required)
    if spec.derived_key:
        required -= set(spec.key)
    missing = sorted(required - canonical_columns)
    if missing:
        raise IngestError(
            f"{label}: required column(s) {missing} of table {spec.name!r} are missing "
            f"(columns found after mapping: {sorted(canonical_columns)})"
        )


def preflight(data_dir: Path, mapping: Mapping, wh: Warehouse) -> list[SourceFile]:
    """Everything that can stop a batch is checked here, before any write."""
    sources: list[SourceFile] = []
    for table, path in discover_files(data_dir, mapping):
        tm = mapping.for_table(table)
        if tm.sql:
            continue
        header = read_header(path, tm)
        canonical = {tm.rename.get(c, c) for c in header} | set(tm.defaults)
        check_required_columns(TABLES[table], canonical, str(path))
        sources.append(SourceFile(table, path, str(path), file_sha256(path), header))
    for table, tm in mapping.tables.items():
        if not tm.sql:
            continue
        sql = tm.sql.replace("{data_dir}", str(data_dir))
        try:
            columns = [d[0] for d in wh.con.execute(f"DESCRIBE ({sql})").fetchall()]
        except Exception as exc:  # duckdb raises many kinds; all mean the same to the user
            raise IngestError(f"mapping sql for table {table!r} failed: {exc}") from exc
        check_required_columns(TABLES[table], set(columns), f"sql:{table}")
        digest = hashlib.sha256("\n".join([*mapping.setup, sql]).encode())
        for path in sql_input_files(data_dir, mapping):  # same query over changed files is a new batch
            digest.update(file_sha256(path).encode())
        digest = digest.hexdigest()
        sources.append(SourceFile(table, None, f"sql:{table}", digest, columns))
    if not sources:
        raise IngestError(f"{data_dir}: no data files found (expected e.g. orders.csv or orders.parquet)")
    return sources


# ---- reading and parsing -------------------------------------------------------------------


def iter_chunks(source: SourceFile, tm: TableMapping, wh: Warehouse, chunk_rows: int,
                data_dir: Path) -> Iterator[pd.DataFrame]:
    """Raw chunks with the file's own columns; index = 1-based data row number in the source."""
    offset = 0
    for batch in _iter_arrow(source, tm, wh, chunk_rows, data_dir):
        frame = batch.to_pandas()
        frame.index = pd.RangeIndex(offset + 1, offset + 1 + len(frame))
        offset += len(frame)
        yield frame


def _iter_arrow(source: SourceFile, tm: TableMapping, wh: Warehouse, chunk_rows: int,
                data_dir: Path) -> Iterator[pyarrow_lib.RecordBatch]:
    if source.path is None:
        sql = (tm.sql or "").replace("{data_dir}", str(data_dir))
        # materialised (frees the connection) in a fixed order, so row numbers repeat across runs
        wh.con.execute(f"CREATE OR REPLACE TEMP TABLE _sql_source AS SELECT * FROM ({sql}) ORDER BY ALL")
        total = int(wh.scalar("SELECT count(*) FROM _sql_source"))
        for start in range(0, total, chunk_rows):
            yield from wh.con.sql(
                f"SELECT * FROM _sql_source ORDER BY rowid LIMIT {chunk_rows} OFFSET {start}"
            ).to_arrow_table().to_batches(max_chunksize=chunk_rows)
        wh.con.execute("DROP TABLE _sql_source")
        return
    path = source.path
    if path.name.endswith((".parquet", ".pq")):
        yield from pq.ParquetFile(path).iter_batches(batch_size=chunk_rows)
        return
    convert = pa_csv.ConvertOptions(
        column_types={c: pyarrow_lib.string() for c in source.columns},
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    read = pa_csv.ReadOptions(block_size=64 << 20, encoding=tm.encoding or "utf8")
    try:
        reader = pa_csv.open_csv(path, read_options=read, parse_options=_parse_options(path, tm),
                                 convert_options=convert)
        yield from reader
    except pyarrow_lib.ArrowInvalid as exc:
        raise IngestError(f"{path}: unreadable CSV: {exc}") from exc


def _parse_timestamps(raw: pd.Series, fmt: str | None, timezone: str | None) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = raw
    else:
        text = raw.astype("string").str.strip()
        if fmt:
            parsed = pd.to_datetime(text, format=fmt, errors="coerce")
        else:
            # ISO 8601 only: guessing "03.01.2026" would silently swap days and months
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=timezone is None)
    if getattr(parsed.dt, "tz", None) is not None:
        return parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    if timezone:
        return parsed.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert(
            "UTC").dt.tz_localize(None)
    return parsed


def _parse_numbers(raw: pd.Series, decimal_comma: bool = False) -> pd.Series:
    """Numbers as exports write them: currency signs, spaces and thousands groups allowed."""
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        return raw.astype("float64")
    text = raw.astype("string").str.replace(CURRENCY_NOISE, "", regex=True)
    if decimal_comma:
        text = text.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    else:  # "1,234.50" is a thousands group; "1,5" is ambiguous and stays a failure
        grouped = text.str.fullmatch(THOUSANDS_GROUPED).fillna(False)
        text = text.where(~grouped, text.str.replace(",", "", regex=False))
    return pd.to_numeric(text, errors="coerce").astype("float64")


def _parse_booleans(raw: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(raw):
        return raw.astype("boolean")
    text = raw.astype("string").str.strip().str.lower()
    out = pd.Series(pd.NA, index=raw.index, dtype="boolean")
    out[text.isin(TRUE_WORDS)] = True
    out[text.isin(FALSE_WORDS)] = False
    return out


def parse_types(frame: pd.DataFrame, spec: TableSpec, tm: TableMapping) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse every canonical column; values that do not parse become failures, not silent NaN."""
    schema = spec.model.to_schema()
    parsed: dict[str, pd.Series] = {}
    failures: list[pd.DataFrame] = []
    for name, column in schema.columns.items():
        kind = str(column.dtype).lower()
        if name not in frame.columns:
            parsed[name] = empty_column(kind, frame.index)
            continue
        raw = frame[name]
        raw_missing = raw.isna() | raw.astype("string").str.strip().eq("").fillna(False)
        if "datetime" in kind:
            value = _parse_timestamps(raw, tm.timestamp_formats.get(name), tm.timezone)
        elif "bool" in kind:
            value = _parse_booleans(raw)
        elif "int" in kind:
            number = _parse_numbers(raw, tm.decimal_comma)
            integral = number.isna() | (number == number.round())
            value = number.where(integral)
        elif "float" in kind:
            value = _parse_numbers(raw, tm.decimal_comma)
        else:
            value = raw.astype("string").str.strip().astype("str")
            value = value.where(~raw_missing, None)
        bad = value.isna() & ~raw_missing
        if bad.any():
            failures.append(pd.DataFrame({
                "row": frame.index[bad], "column": name, "check": f"parse_{kind.split('[')[0]}",
                "value": raw[bad].astype("string").to_numpy(),
                "reason": f"{name}: value is not a valid {kind.split('[')[0]}",
            }))
        parsed[name] = value
    typed = pd.DataFrame(parsed, index=frame.index)
    if spec.derived_key:
        typed = _derive_key(typed, spec)
    return typed, _concat_failures(failures)


def empty_column(kind: str, index: pd.Index) -> pd.Series:
    """A missing optional column: all-null, but already of its canonical type."""
    if "datetime" in kind:
        return pd.Series(pd.NaT, index=index, dtype="datetime64[us]")
    if "bool" in kind:
        return pd.Series(pd.NA, index=index, dtype="boolean")
    if "int" in kind or "float" in kind:
        return pd.Series(float("nan"), index=index, dtype="float64")
    return pd.Series(None, index=index, dtype="str")


def humane_reason(column: str, check: str) -> str:
    """Pandera's check names in words an analyst reads without the docs."""
    patterns = [
        (r"^not_nullable$", "required value is missing"),
        (r"^greater_than_or_equal_to\((.*)\)$", r"must be at least \1"),
        (r"^less_than_or_equal_to\((.*)\)$", r"must be at most \1"),
        (r"^in_range\((.*), (.*)\)$", r"must be between \1 and \2"),
        (r"^isin\((.*)\)$", r"not one of the allowed codes \1"),
        (r"^str_length\(.*\)$", "must not be empty"),
    ]
    for pattern, words in patterns:
        if re.match(pattern, check):
            return f"{column}: {re.sub(pattern, words, check)}"
    return f"{column}: {check}"


def _derive_key(typed: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Exports without an id (e.g. click logs) get one from the row's content."""
    key = spec.key[0]
    missing = typed[key].isna()
    if missing.any():
        content = [c for c in typed.columns if c != key]
        hashed = pd.util.hash_pandas_object(typed.loc[missing, content], index=False)
        typed.loc[missing, key] = "h" + hashed.astype("uint64").map("{:016x}".format)
    return typed


def _concat_failures(parts: list[pd.DataFrame]) -> pd.DataFrame:
    columns = ["row", "column", "check", "value", "reason"]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def batch_schema(spec: TableSpec, not_after: pd.Timestamp) -> pa.DataFrameSchema:
    """The table's pandera schema plus the batch's own check: no timestamps in its future."""
    schema = spec.model.to_schema()
    updates = {}
    for name in spec.timestamp_columns:
        if name in spec.future_allowed:
            continue
        column = schema.columns[name]
        updates[name] = {"checks": [*column.checks, pa.Check.le(
            not_after, error=f"in the future of the batch (after {not_after:%Y-%m-%d %H:%M})")]}
    return schema.update_columns(updates)


def validate_chunk(typed: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """All pandera failures of a chunk, one row per (row, column, check)."""
    try:
        schema.validate(typed, lazy=True)
        return _concat_failures([])
    except (SchemaErrors, SchemaError) as exc:
        cases = exc.failure_cases
        cases = cases if isinstance(cases, pd.DataFrame) else pd.DataFrame(cases)
    if "index" not in cases.columns or cases["index"].isna().any():
        raise IngestError(f"schema-level failure: {cases.to_string(max_rows=10)}")
    is_frame_check = cases["schema_context"].eq("DataFrameSchema")
    frame_cases = cases[is_frame_check]
    named = frame_cases["column"].astype(str) == frame_cases["check"].astype(str).str.split(" ").str[0]
    frame_cases = frame_cases[named].drop_duplicates(["index", "check"])
    cases = pd.concat([cases[~is_frame_check], frame_cases])
    return pd.DataFrame({
        "row": cases["index"].astype("int64").to_numpy(),
        "column": cases["column"].astype(str).to_numpy(),
        "check": cases["check"].astype(str).to_numpy(),
        "value": cases["failure_case"].astype("string").to_numpy(),
        "reason": [humane_reason(c, k) for c, k in zip(cases["column"].astype(str),
                                                          cases["check"].astype(str), strict=True)],
    })


# ---- staging, whole-batch checks, merge ------------------------------------------------------


def merge_failures(parse_failures: pd.DataFrame, check_failures: pd.DataFrame) -> pd.DataFrame:
    """A value that did not parse is reported once, not again as 'missing' or 'wrong dtype'."""
    if len(parse_failures) and len(check_failures):
        unparsed = set(zip(parse_failures["row"], parse_failures["column"], strict=True))
        echo = [(r, c) in unparsed for r, c in zip(check_failures["row"], check_failures["column"], strict=True)]
        check_failures = check_failures[~pd.Series(echo, index=check_failures.index)]
    return pd.concat([parse_failures, check_failures], ignore_index=True)


def _stage_name(table: str) -> str:
    return f"_stage_{table}"


def _ensure_quarantine(wh: Warehouse) -> None:
    wh.con.execute(f"""CREATE TABLE IF NOT EXISTS {QUARANTINE_TABLE} (
        batch_id VARCHAR, table_name VARCHAR, source_file VARCHAR, file_hash VARCHAR,
        source_row BIGINT, column_name VARCHAR, check_name VARCHAR, failure_value VARCHAR,
        reason VARCHAR, row_json VARCHAR, quarantined_at TIMESTAMP)""")
    wh.con.execute(f"""CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
        run_id VARCHAR, batch_id VARCHAR, run_at TIMESTAMP, as_of TIMESTAMP, table_name VARCHAR,
        source_file VARCHAR, file_hash VARCHAR, rows_in BIGINT, rows_valid BIGINT,
        rows_quarantined BIGINT, inserted BIGINT, updated BIGINT, unchanged BIGINT, stale BIGINT,
        seconds DOUBLE, source_fingerprint VARCHAR, status VARCHAR)""")


def _quarantine_rows(failures: pd.DataFrame, raw: pd.DataFrame, spec: TableSpec, source: SourceFile,
                     batch_id: str) -> pd.DataFrame:
    """Failures joined to the whole original row, so nothing rejected is lost."""
    rows = failures["row"].astype("int64")
    originals = raw.loc[rows.unique()]
    as_json = {idx: json.dumps({k: (None if pd.isna(v) else str(v)) for k, v in rec.items()},
                               ensure_ascii=False)
               for idx, rec in originals.to_dict(orient="index").items()}
    return pd.DataFrame({
        "batch_id": batch_id, "table_name": spec.name, "source_file": source.label,
        "file_hash": source.file_hash, "source_row": rows.to_numpy(),
        "column_name": failures["column"].to_numpy(), "check_name": failures["check"].to_numpy(),
        "failure_value": failures["value"].astype("string").to_numpy(),
        "reason": failures["reason"].to_numpy(), "row_json": rows.map(as_json).to_numpy(),
        "quarantined_at": pd.Timestamp.now("UTC").tz_localize(None),
    })


def stage_file(wh: Warehouse, source: SourceFile, tm: TableMapping, settings: Settings, batch_id: str,
               not_after: pd.Timestamp, file_order: int, data_dir: Path, progress=None) -> FileResult:
    """Parse and validate one file chunk by chunk; valid rows to staging, the rest to quarantine."""
    spec = TABLES[source.table]
    schema = batch_schema(spec, not_after)
    result = FileResult(spec.name, source.label, source.file_hash)
    started = time.perf_counter()
    stage = _stage_name(spec.name)
    for raw in iter_chunks(source, tm, wh, settings.ingest.chunk_rows, data_dir):
        mapped = apply_renames_and_values(raw.copy(), tm)
        typed, parse_failures = parse_types(mapped, spec, tm)
        failures = merge_failures(parse_failures, validate_chunk(typed, schema))
        bad_rows = failures["row"].unique() if len(failures) else []
        valid = typed.drop(index=bad_rows)
        result.rows_in += len(raw)
        result.rows_valid += len(valid)
        result.rows_quarantined += len(bad_rows)
        if len(failures):
            wh.append(QUARANTINE_STAGE, _quarantine_rows(failures, raw, spec, source, batch_id))
        staged = valid.assign(_source_file=source.label, _file_hash=source.file_hash,
                              _source_row=valid.index.astype("int64"), _file_order=file_order)
        wh.append(stage, staged.reset_index(drop=True))
        if progress is not None:
            progress(len(raw))
    result.seconds = time.perf_counter() - started
    return result


def _ident(column: str) -> str:
    return f'"{column}"'


def move_to_quarantine(wh: Warehouse, spec: TableSpec, rejected: str, batch_id: str, column: str,
                       check_sql: str, value_sql: str, reason_sql: str, params: list | None = None) -> dict[str, int]:
    """Move staged rows (``rejected``: a relation with ``_rid`` and the staged columns) to the
    quarantine stage with their check, value and reason; returns rows moved per source file."""
    row_json = f"to_json(struct_pack({', '.join(f'{_ident(c)} := {_ident(c)}' for c in spec.columns)}))"
    wh.con.execute(f"""INSERT INTO {QUARANTINE_STAGE}
        SELECT ?, ?, _source_file, _file_hash, _source_row, ?, {check_sql}, {value_sql}, {reason_sql},
               {row_json}::VARCHAR, now()::TIMESTAMP
        FROM {rejected}""", [batch_id, spec.name, column, *(params or [])])
    counts = dict(wh.con.execute(f"SELECT _source_file, count(*) FROM {rejected} GROUP BY 1").fetchall())
    wh.con.execute(f"DELETE FROM {_stage_name(spec.name)} WHERE rowid IN (SELECT _rid FROM {rejected})")
    return counts


def quarantine_duplicate_keys(wh: Warehouse, spec: TableSpec, batch_id: str) -> dict[str, int]:
    """Keep the newest copy of each key in the batch; quarantine the others with the reason."""
    stage = _stage_name(spec.name)
    keys = ", ".join(f'"{k}"' for k in spec.key)
    version = f'"{spec.version_column}" DESC NULLS LAST, ' if spec.version_column else ""
    data_cols = [c for c in spec.columns if c not in spec.key]
    same_content = " AND ".join(f'"{c}" IS NOT DISTINCT FROM first_value("{c}") OVER w' for c in data_cols)
    wh.con.execute(f"""CREATE OR REPLACE TEMP TABLE _dups AS
        WITH dup_keys AS (SELECT {keys} FROM {stage} GROUP BY {keys} HAVING count(*) > 1)
        SELECT * FROM (
            SELECT s.rowid AS _rid, s.*, row_number() OVER w AS _rank,
                   first_value(_source_row) OVER w AS _kept_row, first_value(_source_file) OVER w AS _kept_file,
                   ({same_content or 'TRUE'}) AS _identical
            FROM {stage} s SEMI JOIN dup_keys USING ({keys})
            WINDOW w AS (PARTITION BY {keys} ORDER BY {version}_file_order DESC, _source_row DESC))
        WHERE _rank > 1""")
    counts = move_to_quarantine(
        wh, spec, "_dups", batch_id, "+".join(spec.key),
        check_sql="CASE WHEN _identical THEN 'duplicate_row' ELSE 'duplicate_key' END",
        value_sql=f"concat_ws('|', {keys})",
        reason_sql="CASE WHEN _identical THEN 'exact copy of row ' || _kept_row || ' of ' || _kept_file "
                   "ELSE 'key appears again; kept the newer row ' || _kept_row || ' of ' || _kept_file END")
    wh.con.execute("DROP TABLE _dups")
    return counts


def quarantine_orphans(wh: Warehouse, spec: TableSpec, batch_id: str, staged_tables: set[str],
                       warnings: list[str]) -> dict[str, int]:
    """Cross-table integrity: a child row whose parent exists neither in the batch nor the warehouse."""
    stage = _stage_name(spec.name)
    counts: dict[str, int] = {}
    for fk in spec.foreign_keys:
        parent_sources = []
        if wh.has_rows(fk.parent):
            parent_sources.append(f'SELECT {", ".join(fk.parent_columns)} FROM "{fk.parent}"')
        if fk.parent in staged_tables:
            parent_sources.append(f"SELECT {', '.join(fk.parent_columns)} FROM {_stage_name(fk.parent)}")
        if not parent_sources:
            warnings.append(f"{spec.name}.{'+'.join(fk.columns)}: table {fk.parent!r} has no rows; "
                            "integrity not checked")
            continue
        join = " AND ".join(f's."{c}" = p."{pc}"' for c, pc in zip(fk.columns, fk.parent_columns, strict=True))
        not_null = " AND ".join(f's."{c}" IS NOT NULL' for c in fk.columns)
        wh.con.execute(f"""CREATE OR REPLACE TEMP TABLE _orphans AS
            SELECT s.rowid AS _rid, s.* FROM {stage} s
            WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM ({' UNION ALL '.join(parent_sources)}) p WHERE {join})""")
        column = "+".join(fk.columns)
        moved = move_to_quarantine(
            wh, spec, "_orphans", batch_id, column, check_sql="'orphan'",
            value_sql=f"concat_ws('|', {', '.join(_ident(c) for c in fk.columns)})",
            reason_sql="?", params=[f"{column}: no such {fk.parent} ({fk.parent_columns[0]})"])
        for file, n in moved.items():
            counts[file] = counts.get(file, 0) + n
        wh.con.execute("DROP TABLE _orphans")
    return counts


def prepare_sql_sources(wh: Warehouse, mapping: Mapping, data_dir: Path) -> None:
    """Attach the user's databases and create the shared views SQL mappings read from."""
    for attach in mapping.attach:
        wh.con.execute(f"ATTACH IF NOT EXISTS {attach.replace('{data_dir}', str(data_dir))}")
    for statement in mapping.setup:
        try:
            wh.con.execute(statement.replace("{data_dir}", str(data_dir)))
        except Exception as exc:  # duckdb raises many kinds; all mean the same to the user
            raise IngestError(f"mapping setup sql failed: {exc}\n{statement.strip()[:300]}") from exc


def batch_identity(sources: list[SourceFile], mapping: Mapping) -> str:
    digest = hashlib.sha256(mapping_fingerprint(mapping).encode())
    for source in sorted(sources, key=lambda s: (s.table, s.file_hash)):
        digest.update(f"{source.table}:{source.file_hash}".encode())
    return digest.hexdigest()[:16]


def read_batch_time(data_dir: Path, as_of: datetime | str | None) -> pd.Timestamp:
    """The batch's own clock: the caller's, else the export's manifest, else now."""
    if as_of is None and (data_dir / BATCH_MANIFEST).exists():
        as_of = json.loads((data_dir / BATCH_MANIFEST).read_text()).get("exported_at")
    stamp = pd.Timestamp(as_of) if as_of is not None else pd.Timestamp.now("UTC")
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp


TABLE_ORDER = list(TABLES)  # parents before children


def create_staging(wh: Warehouse, tables: set[str]) -> None:
    """Staging tables shaped like the targets, plus where each row came from.

    Ordinary tables, not TEMP ones, and outside the final transaction: DuckDB then writes large
    staged batches to disk instead of holding them in memory until commit.
    """
    drop_staging(wh, tables)
    wh.con.execute(f"CREATE TABLE {QUARANTINE_STAGE} AS SELECT * FROM {QUARANTINE_TABLE} LIMIT 0")
    for table in tables:
        stage = _stage_name(table)
        wh.con.execute(f'CREATE TABLE {stage} AS SELECT * EXCLUDE (_batch_id, _loaded_at) FROM "{table}" LIMIT 0')
        for col, kind in [("_source_file", "VARCHAR"), ("_file_hash", "VARCHAR"),
                          ("_source_row", "BIGINT"), ("_file_order", "BIGINT")]:
            wh.con.execute(f"ALTER TABLE {stage} ADD COLUMN {col} {kind}")


def drop_staging(wh: Warehouse, tables: set[str]) -> None:
    for name in [QUARANTINE_STAGE, *(_stage_name(t) for t in tables)]:
        wh.con.execute(f"DROP TABLE IF EXISTS {name}")


def publish_quarantine(wh: Warehouse, sources: list[SourceFile]) -> None:
    """This batch's rejects replace those of earlier runs over the same files: never duplicated."""
    if sources:
        wh.con.execute(f"DELETE FROM {QUARANTINE_TABLE} WHERE file_hash IN "
                       f"({', '.join('?' for _ in sources)})", [s.file_hash for s in sources])
    wh.con.execute(f"INSERT INTO {QUARANTINE_TABLE} SELECT * FROM {QUARANTINE_STAGE}")


def ledger_rows(results: list[FileResult], run_id: str, batch_id: str, batch_time: pd.Timestamp,
                fingerprints: dict[str, str], skipped: set[str]) -> pd.DataFrame:
    now = pd.Timestamp.now("UTC").tz_localize(None)
    return pd.DataFrame([{
        "run_id": run_id, "batch_id": batch_id, "run_at": now, "as_of": batch_time, "table_name": r.table,
        "source_file": r.source, "file_hash": r.file_hash, "rows_in": r.rows_in, "rows_valid": r.rows_valid,
        "rows_quarantined": r.rows_quarantined, "inserted": r.inserted, "updated": r.updated,
        "unchanged": r.unchanged, "stale": r.stale, "seconds": r.seconds,
        "source_fingerprint": fingerprints[r.source], "status": "skipped" if r.source in skipped else "loaded",
    } for r in results])


def source_fingerprint(source: SourceFile, mapping: Mapping, batch_time: pd.Timestamp) -> str:
    """What decides a file's outcome: its bytes, its table's mapping and the batch clock."""
    text = f"{source.table}|{source.file_hash}|{mapping.for_table(source.table).model_dump_json()}|{batch_time}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def already_loaded(wh: Warehouse, fingerprints: list[str]) -> dict[str, dict]:
    """Ledger rows of sources loaded before with the same fingerprint (their counts stand)."""
    if not fingerprints:
        return {}
    rows = wh.query(f"SELECT * FROM {LEDGER_TABLE} WHERE status = 'loaded' AND source_fingerprint IN "
                    f"({', '.join('?' for _ in fingerprints)})", fingerprints)
    return {r["source_fingerprint"]: r for r in rows.drop_duplicates("source_fingerprint").to_dict("records")}


def skipped_result(source: SourceFile, earlier: dict) -> FileResult:
    valid = int(earlier["rows_valid"])
    return FileResult(source.table, source.label, source.file_hash, rows_in=int(earlier["rows_in"]),
                      rows_valid=valid, rows_quarantined=int(earlier["rows_quarantined"]), unchanged=valid)


def ingest_batch(data_dir: Path, wh: Warehouse, settings: Settings, mapping_file: Path | None = None,
                 as_of: datetime | str | None = None, progress=None, force: bool = False) -> BatchResult:
    """Ingest every file of a folder (or mapped SQL) in one transaction.

    A file already loaded with the same bytes, mapping and batch time is not read again (its
    earlier counts are reported as unchanged); ``force`` re-validates and re-merges it, which
    changes nothing either, only slower.
    """
    started = time.perf_counter()
    data_dir = Path(data_dir)
    mapping = load_mapping(mapping_file)
    prepare_sql_sources(wh, mapping, data_dir)
    sources = preflight(data_dir, mapping, wh)
    batch_time = read_batch_time(data_dir, as_of)
    not_after = batch_time + pd.Timedelta(hours=settings.ingest.max_future_skew_hours)
    batch_id = batch_identity(sources, mapping)
    run_id = f"{batch_id}-{int(time.time() * 1000)}"
    warnings: list[str] = []
    _ensure_quarantine(wh)
    sources.sort(key=lambda s: (TABLE_ORDER.index(s.table), s.label))
    fingerprints = {s.label: source_fingerprint(s, mapping, batch_time) for s in sources}
    earlier = {} if force else already_loaded(wh, list(fingerprints.values()))
    skipped = [s for s in sources if fingerprints[s.label] in earlier]
    sources = [s for s in sources if fingerprints[s.label] not in earlier]
    results: list[FileResult] = [skipped_result(s, earlier[fingerprints[s.label]]) for s in skipped]
    for s in skipped:
        warnings.append(f"{s.label}: already loaded with the same content and mapping; not read again")
    staged_tables = {s.table for s in sources}
    try:  # staging and whole-batch checks touch only staging tables ...
        create_staging(wh, staged_tables)
        for order, source in enumerate(sources):
            results.append(stage_file(wh, source, mapping.for_table(source.table), settings, batch_id,
                                      not_after, order, data_dir, progress))
        by_label = {r.source: r for r in results}
        for table in (t for t in TABLE_ORDER if t in staged_tables):
            moved = quarantine_duplicate_keys(wh, TABLES[table], batch_id)
            for label, n in quarantine_orphans(wh, TABLES[table], batch_id, staged_tables, warnings).items():
                moved[label] = moved.get(label, 0) + n
            for label, n in moved.items():
                by_label[label].rows_valid -= n
                by_label[label].rows_quarantined += n
        with wh.transaction():  # ... and the real tables change in one transaction at the end
            publish_quarantine(wh, sources)
            loaded = {s.label for s in sources}
            for table in (t for t in TABLE_ORDER if t in staged_tables):
                for result in (r for r in results if r.table == table and r.source in loaded):
                    label = result.source.replace("'", "''")
                    wh.con.execute(f"CREATE OR REPLACE TEMP VIEW _stage_one AS SELECT * FROM {_stage_name(table)} "
                                   f"WHERE _source_file = '{label}'")
                    counts = wh.merge_by_key(TABLES[table], "_stage_one", batch_id)
                    result.inserted, result.updated = counts.inserted, counts.updated
                    result.unchanged, result.stale = counts.unchanged, counts.stale
            wh.con.execute("DROP VIEW IF EXISTS _stage_one")
            wh.append(LEDGER_TABLE, ledger_rows(results, run_id, batch_id, batch_time, fingerprints,
                                                {s.label for s in skipped}))
    finally:
        drop_staging(wh, staged_tables)
    failures = wh.query(f"SELECT * FROM {QUARANTINE_TABLE} WHERE batch_id = ?", [batch_id])
    return BatchResult(batch_id, batch_time, results, failures, warnings, time.perf_counter() - started)


# ---- the report people read ----------------------------------------------------------------


def validation_report(result: BatchResult, examples: int) -> str:
    """Markdown: counts per file, then each failed check with a few examples."""
    lines = [
        f"# Ingestion report, batch `{result.batch_id}`",
        "",
        f"Batch time (no timestamp may be later): {result.as_of:%Y-%m-%d %H:%M} UTC. "
        f"Rows in: {result.rows_in:,}; valid: {result.rows_valid:,}; quarantined: {result.rows_quarantined:,}; "
        f"took {result.seconds:.1f} s.",
        "",
        "| table | file | rows in | valid | quarantined | new | updated | unchanged | older (kept stored) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.files:
        lines.append(f"| {r.table} | {Path(r.source).name} | {r.rows_in:,} | {r.rows_valid:,} | "
                     f"{r.rows_quarantined:,} | {r.inserted:,} | {r.updated:,} | {r.unchanged:,} | {r.stale:,} |")
    if result.warnings:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in result.warnings]]
    failures = result.failures
    if len(failures):
        lines += ["", "## Quarantined rows by check", "",
                  "| table | column | check | rows | examples (file:row = value) |", "|---|---|---|---:|---|"]
        grouped = failures.groupby(["table_name", "column_name", "check_name"], sort=False)
        for (table, column, check), group in sorted(grouped, key=lambda g: -len(g[1])):
            sample = group.head(min(examples, 3))
            shown = "; ".join(f"{Path(str(f)).name}:{r} = {v!s:.40}" for f, r, v in
                              zip(sample["source_file"], sample["source_row"], sample["failure_value"], strict=True))
            lines.append(f"| {table} | {column} | {check} | {group['source_row'].nunique():,} | {shown} |")
        lines += ["", "Every quarantined row is kept whole in the warehouse table `quarantine` "
                  "(column `row_json`), with its file, row number and reasons."]
    return "\n".join(lines) + "\n"
