"""Validated, idempotent ingestion of a batch of source files into the warehouse.

The path of a batch: discover files → preflight (every file readable, every table known, every
required and renamed column present, every mapping query valid in its sandbox — or stop before
writing anything) → per file, in chunks, inside DuckDB: rename and map codes, parse types, run the
schema's checks compiled to SQL (``tasks/data/checks.py``) → stage kept rows → whole-batch checks
(duplicate keys, orphans) → merge into the warehouse by key and keep every row version, in one
transaction. Nothing about one row can refuse the batch: a bad value in a required column
quarantines its row, in an optional column it is cleared and the row kept, a malformed line is set
aside with its number. Every failure lands in ``quarantine`` with file, row, column, check, value,
reason, what was done (``action``) and the whole original row; the ``ingest_ledger`` records
hashes, counts and timings per file. Values of personal columns never reach logs or reports.
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

import duckdb
import pandas as pd
import pyarrow as pyarrow_lib
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.settings import Settings
from schemas.sources import TABLES, TableSpec
from tasks.data.checks import CHECKED, CHUNK, BatchRules, CompiledTable, compile_table, register_local_to_utc
from tasks.data.mapping import (
    DATA_DIR,
    Mapping,
    MappingError,
    TableMapping,
    describe_query,
    load_mapping,
    mapping_fingerprint,
    open_sandbox,
    redact,
    table_query,
)
from tasks.data.readers import (
    ROW,
    MalformedLine,
    ReadError,
    ReadPlan,
    RetryRead,
    csv_delimiter,
    iter_csv,
    iter_parquet,
    iter_query,
    read_csv_header,
)
from tasks.data.warehouse import STAGE_PREFIX, Warehouse
from tasks.templates import markdown_table

DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".tsv")
BATCH_MANIFEST = "_batch.json"
QUARANTINE_TABLE = "quarantine"
QUARANTINE_STAGE = "_stage_quarantine"  # this batch's rejects until the final transaction
STAGE_FILES = "_stage_files"  # this batch's files by number
LEDGER_TABLE = "ingest_ledger"
ROW_QUARANTINED, VALUE_CLEARED = "row quarantined", "value cleared"
MALFORMED = "malformed_line"


class IngestError(RuntimeError):
    """A batch that cannot be ingested at all; nothing was written."""


@dataclass
class SourceFile:
    table: str
    path: Path | None  # None for SQL-mapped tables
    label: str  # what reports call it: the file name or "sql:<table>"
    file_hash: str
    columns: list[str] = field(default_factory=list)
    sql: str | None = None


@dataclass
class FileResult:
    table: str
    source: str
    file_hash: str
    rows_in: int = 0
    rows_valid: int = 0
    rows_quarantined: int = 0
    values_cleared: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    seconds: float = 0.0
    filled: dict[str, int] = field(default_factory=dict)  # non-empty kept values per column
    midnight: dict[str, tuple[int, int]] = field(default_factory=dict)  # column -> (at midnight, local values)
    present: set[str] = field(default_factory=set)  # canonical columns the source has


@dataclass
class BatchResult:
    batch_id: str
    as_of: pd.Timestamp
    files: list[FileResult]
    failures: pd.DataFrame  # one row per (row, check) in quarantine from this batch
    warnings: list[str]
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def rows_in(self) -> int:
        return sum(f.rows_in for f in self.files)

    @property
    def rows_valid(self) -> int:
        return sum(f.rows_valid for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files)

    @property
    def values_cleared(self) -> int:
        return sum(f.values_cleared for f in self.files)


# ---- discovery and preflight ---------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def table_for_file(path: Path, data_dir: Path | None = None) -> str | None:
    """``orders.csv``, ``orders_2026-11.parquet`` or ``orders/part-1.parquet`` → ``orders``.

    A sub-folder may name the table; the data folder's own name never does.
    """
    name = path.name
    for suffix in DATA_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    candidates = [name]
    if data_dir is None or path.parent.resolve() != Path(data_dir).resolve():
        candidates.append(path.parent.name)
    for candidate in candidates:
        if candidate in TABLES:
            return candidate
        base = re.split(r"[_\-.](?=\d)", candidate, maxsplit=1)[0]
        if base in TABLES:
            return base
    return None


def _glob(data_dir: Path, pattern: str) -> list[Path]:
    """Files matching a pattern relative to the data folder (the folder's name is not a pattern)."""
    return [data_dir / hit for hit in sorted(glob.glob(pattern, root_dir=data_dir, recursive=True))]


def discover_files(data_dir: Path, mapping: Mapping) -> list[tuple[str, Path]]:
    """Files in the batch with their table; names that fit no table stop the batch."""
    if not data_dir.is_dir():
        raise IngestError(f"data folder {data_dir} does not exist")
    claimed: dict[Path, str] = {}
    for table, tm in mapping.tables.items():
        for pattern in tm.files:
            for hit in _glob(data_dir, pattern):
                claimed[hit] = table
    ignored = {hit for pattern in mapping.ignore for hit in _glob(data_dir, pattern)}
    both = sorted(path for path in ignored if path in claimed)
    if both:
        raise IngestError(f"{both[0]}: the mapping both claims it for table {claimed[both[0]]!r} (files) and "
                          "ignores it (ignore); remove one of the two")
    # a file another table's SQL reads is an input, not a table, unless the mapping claims it too
    # (orders.csv loaded as orders and read again to derive customers): then it is both
    ignored |= {path for path in sql_input_files(data_dir, mapping) if path not in claimed}
    sql_tables = {t for t, tm in mapping.tables.items() if tm.sql}
    found: list[tuple[str, Path]] = []
    for path in sorted(data_dir.rglob("*")):
        if not path.is_file() or path.name.startswith((".", "_")) or not path.name.endswith(DATA_SUFFIXES):
            continue
        if path in ignored or (path not in claimed and table_for_file(path, data_dir) in sql_tables):
            continue
        table = claimed.get(path) or table_for_file(path, data_dir)
        if table is None:
            raise IngestError(
                f"{path}: unknown table name {path.name!r}; name files after a table "
                f"({', '.join(TABLES)}) or claim them in the mapping file"
            )
        found.append((table, path))
    return found


def unmatched_patterns(data_dir: Path, mapping: Mapping) -> list[str]:
    """The mapping's ``files`` patterns that match nothing in this folder: said, never silent."""
    return [f"{table}: files pattern {pattern!r} matches no file in {data_dir}; table {table!r} is not "
            "loaded from this batch"
            for table, tm in mapping.tables.items() for pattern in tm.files if not _glob(data_dir, pattern)]


SQL_INPUT = re.compile(re.escape(DATA_DIR) + r"/([^'\"]+)")


def sql_input_files(data_dir: Path, mapping: Mapping) -> list[Path]:
    """Files that the mapping's SQL reads (``'{data_dir}/name*.csv'``): inputs, not tables."""
    texts = [*mapping.setup, *(tm.sql for tm in mapping.tables.values() if tm.sql)]
    patterns = {m for text in texts for m in SQL_INPUT.findall(text)}
    return sorted({hit for p in patterns for hit in _glob(data_dir, p)})


def read_header(path: Path, tm: TableMapping) -> list[str]:
    try:
        if path.name.endswith((".parquet", ".pq")):
            try:
                return list(pq.ParquetFile(path).schema_arrow.names)
            except (OSError, pyarrow_lib.ArrowException):
                raise ReadError(f"{path}: cannot be read as parquet") from None
        return read_csv_header(path, csv_delimiter(path, tm.csv_delimiter), tm.encoding)
    except ReadError as exc:
        raise IngestError(str(exc)) from None


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


def check_renames(tm: TableMapping, header: list[str], label: str) -> None:
    """A rename whose source column is not in the file would silently leave its target empty."""
    absent = [(source, target) for source, target in tm.rename.items() if source not in header]
    if absent:
        pairs = "; ".join(f"{source!r} → {target}" for source, target in absent)
        raise IngestError(f"{label}: the mapping renames column(s) that the file does not have: {pairs} "
                          f"(the file's columns: {', '.join(header)})")


def preflight_files(data_dir: Path, mapping: Mapping) -> list[SourceFile]:
    """Checks of the files themselves, before any SQL of the mapping runs."""
    sources: list[SourceFile] = []
    for table, path in discover_files(data_dir, mapping):
        tm = mapping.for_table(table)
        if tm.sql:
            continue
        header = read_header(path, tm)
        check_renames(tm, header, str(path))
        canonical = {tm.rename.get(c, c) for c in header} | set(tm.defaults)
        check_required_columns(TABLES[table], canonical, str(path))
        sources.append(SourceFile(table, path, str(path), file_sha256(path), header))
    return sources


def preflight_sql(data_dir: Path, mapping: Mapping, sandbox: duckdb.DuckDBPyConnection) -> list[SourceFile]:
    """Each mapping query runs (DESCRIBE) in the sandbox and yields the required columns."""
    sources: list[SourceFile] = []
    for table, tm in mapping.tables.items():
        if not tm.sql:
            continue
        sql = table_query(tm, data_dir, table)
        columns = describe_query(sandbox, sql, table)
        check_required_columns(TABLES[table], set(columns), f"sql:{table}")
        digest = hashlib.sha256("\n".join([*mapping.setup, tm.sql]).encode())
        for path in sql_input_files(data_dir, mapping):  # same query over changed files is a new batch
            digest.update(file_sha256(path).encode())
        sources.append(SourceFile(table, None, f"sql:{table}", digest.hexdigest(), columns, sql))
    return sources


# ---- reading, checking, staging --------------------------------------------------------------


def iter_source(source: SourceFile, tm: TableMapping, plan: ReadPlan, chunk_rows: int,
                malformed: list[MalformedLine], sandbox: duckdb.DuckDBPyConnection | None
                ) -> Iterator[pyarrow_lib.RecordBatch]:
    """Raw batches with the source's own columns and ``_source_row`` (1-based data row)."""
    if source.path is None:
        try:
            yield from iter_query(sandbox, source.sql or "", chunk_rows)
        except duckdb.Error as exc:
            raise IngestError(f"mapping sql for table {source.table!r} failed: {redact(str(exc))}") from None
        return
    path = source.path
    try:
        if path.name.endswith((".parquet", ".pq")):
            yield from iter_parquet(path, chunk_rows)
            return
        yield from iter_csv(path, source.columns, csv_delimiter(path, tm.csv_delimiter), tm.encoding, chunk_rows,
                            plan, malformed)
    except ReadError as exc:
        raise IngestError(str(exc)) from None


def batch_rules(settings: Settings, batch_time: pd.Timestamp, spec: TableSpec) -> BatchRules:
    ingest = settings.ingest
    return BatchRules(
        not_after=batch_time + pd.Timedelta(hours=ingest.max_future_skew_hours),
        earliest=pd.Timestamp(ingest.earliest_timestamp),
        promise_latest=batch_time + pd.Timedelta(days=ingest.max_promise_days),
        batch_time=batch_time,
        upper_limits={column: (float(getattr(ingest, setting)), setting) for column, setting in spec.upper_limits},
        ambiguous_time=ingest.ambiguous_time,
        nonexistent_time=ingest.nonexistent_time,
    )


def _raw_types(wh: Warehouse) -> dict[str, str]:
    return {row[0]: row[1] for row in wh.con.execute(f"DESCRIBE {CHUNK}").fetchall() if row[0] != "_source_row"}


def _purge_file(wh: Warehouse, source: SourceFile, file_order: int) -> None:
    wh.con.execute(f'DELETE FROM "{_stage_name(source.table)}" WHERE _file_order = ?', [file_order])
    wh.con.execute(f"DELETE FROM {QUARANTINE_STAGE} WHERE source_file = ?", [source.label])


def _check_chunk(wh: Warehouse, compiled: CompiledTable, batch: pyarrow_lib.RecordBatch, source: SourceFile,
                 batch_id: str, file_order: int, result: FileResult) -> None:
    """Parse, check, stage and quarantine one chunk, all inside DuckDB."""
    con = wh.con
    con.register(CHUNK, pyarrow_lib.Table.from_batches([batch]))
    try:
        con.execute(compiled.checked_sql)
        cursor = con.execute(compiled.stats_sql)
        stats = {d[0]: int(v or 0) for d, v in zip(cursor.description, cursor.fetchall()[0], strict=True)}
        con.execute(compiled.stage_sql, {"order": file_order})
        if stats["failing"]:  # the failing rows alone are checked again, rule by rule, for the quarantine
            failing = con.sql(f"SELECT _source_row FROM {CHECKED} WHERE _any").to_arrow_table().column(0)
            con.unregister(CHUNK)
            con.register(CHUNK, pyarrow_lib.Table.from_batches([batch.filter(pc.is_in(batch[ROW], failing))]))
            con.execute(compiled.quarantine_sql, {"batch": batch_id, "table": source.table, "file": source.label,
                                                  "hash": source.file_hash})
    except duckdb.Error as exc:
        raise IngestError(f"{source.label}: cannot be checked: {redact(str(exc))}") from None
    finally:
        con.unregister(CHUNK)
    rows, rejected = stats["rows"], stats["rejected"]
    result.rows_in += rows
    result.rows_valid += rows - rejected
    result.rows_quarantined += rejected
    for name, value in stats.items():
        kind, _, column = str(name).partition("__")
        if kind == "cleared":
            result.values_cleared += value
        elif kind == "filled":
            result.filled[column] = result.filled.get(column, 0) + value
        elif kind in ("midnight", "local"):
            at, of = result.midnight.get(column, (0, 0))
            result.midnight[column] = (at + value, of) if kind == "midnight" else (at, of + value)


def _quarantine_malformed(wh: Warehouse, malformed: list[MalformedLine], source: SourceFile, batch_id: str) -> None:
    if not malformed:
        return
    frame = pd.DataFrame({
        "batch_id": batch_id, "table_name": source.table, "source_file": source.label,
        "file_hash": source.file_hash, "source_row": [m.row for m in malformed], "column_name": "*",
        "check_name": MALFORMED, "failure_value": [m.text for m in malformed],
        "reason": [f"row {m.row}: {m.reason}; the line is kept here, not loaded" for m in malformed],
        "row_json": [json.dumps({"line": m.line, "text": m.text}, ensure_ascii=False) for m in malformed],
        "quarantined_at": pd.Timestamp.now("UTC").tz_localize(None), "action": ROW_QUARANTINED,
    })
    wh.con.register("_malformed", frame)
    try:
        wh.con.execute(f"INSERT INTO {QUARANTINE_STAGE} BY NAME SELECT * FROM _malformed")
    finally:
        wh.con.unregister("_malformed")


def stage_file(wh: Warehouse, source: SourceFile, tm: TableMapping, settings: Settings, batch_id: str,
               batch_time: pd.Timestamp, file_order: int, sandbox: duckdb.DuckDBPyConnection | None = None,
               progress=None, notes: list[str] | None = None) -> FileResult:
    """Check one source chunk by chunk; kept rows to staging, failures to the quarantine stage.

    A file whose reading must start over (a field larger than the read block, an unclosed
    quote) has what was staged of it discarded and is read again with the reader's new plan.
    """
    spec = TABLES[source.table]
    rules = batch_rules(settings, batch_time, spec)
    plan = ReadPlan(settings.ingest.csv_block_bytes, settings.ingest.max_csv_block_bytes)
    started = time.perf_counter()
    while True:
        result = FileResult(spec.name, source.label, source.file_hash)
        malformed: list[MalformedLine] = []
        compiled: dict[str, CompiledTable] = {}
        try:
            for batch in iter_source(source, tm, plan, settings.ingest.chunk_rows, malformed, sandbox):
                schema_key = str(batch.schema)
                if schema_key not in compiled:
                    wh.con.register(CHUNK, pyarrow_lib.Table.from_batches([batch.slice(0, 0)]))
                    raw_types = _raw_types(wh)
                    wh.con.unregister(CHUNK)
                    compiled[schema_key] = compile_table(spec, tm, raw_types, rules)
                    result.present = _present_columns(spec, tm, raw_types)
                _check_chunk(wh, compiled[schema_key], batch, source, batch_id, file_order, result)
                if progress is not None:
                    progress(batch.num_rows)
            break
        except RetryRead as retry:
            _purge_file(wh, source, file_order)
            plan = retry.plan
            if notes is not None and retry.plan.line_by_line:
                notes.append(f"{source.label}: read line by line because {retry.why}; bad lines are set aside")
    _quarantine_malformed(wh, malformed, source, batch_id)
    result.rows_in += len(malformed)
    result.rows_quarantined += len(malformed)
    wh.con.execute(f"DROP TABLE IF EXISTS {CHECKED}")
    result.seconds = time.perf_counter() - started
    return result


def _present_columns(spec: TableSpec, tm: TableMapping, raw_types: dict[str, str]) -> set[str]:
    renamed = {target for source, target in tm.rename.items() if source in raw_types}
    direct = {c for c in raw_types if c in spec.columns and c not in tm.rename}
    return renamed | direct | set(tm.defaults)


def _stage_name(table: str) -> str:
    return f"{STAGE_PREFIX}{table}"


def _ensure_quarantine(wh: Warehouse) -> None:
    wh.con.execute(f"""CREATE TABLE IF NOT EXISTS {QUARANTINE_TABLE} (
        batch_id VARCHAR, table_name VARCHAR, source_file VARCHAR, file_hash VARCHAR,
        source_row BIGINT, column_name VARCHAR, check_name VARCHAR, failure_value VARCHAR,
        reason VARCHAR, row_json VARCHAR, quarantined_at TIMESTAMP, action VARCHAR)""")
    wh.con.execute(f"ALTER TABLE {QUARANTINE_TABLE} ADD COLUMN IF NOT EXISTS action VARCHAR")
    wh.con.execute(f"""CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
        run_id VARCHAR, batch_id VARCHAR, run_at TIMESTAMP, as_of TIMESTAMP, table_name VARCHAR,
        source_file VARCHAR, file_hash VARCHAR, rows_in BIGINT, rows_valid BIGINT,
        rows_quarantined BIGINT, inserted BIGINT, updated BIGINT, unchanged BIGINT, stale BIGINT,
        seconds DOUBLE, source_fingerprint VARCHAR, status VARCHAR, values_cleared BIGINT)""")
    wh.con.execute(f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS values_cleared BIGINT")


# ---- whole-batch checks, merge -----------------------------------------------------------------


def _ident(column: str) -> str:
    return f'"{column}"'


def move_to_quarantine(wh: Warehouse, spec: TableSpec, rejected: str, batch_id: str, column: str,
                       check_sql: str, value_sql: str, reason_sql: str, params: list | None = None) -> dict[str, int]:
    """Move staged rows (``rejected``: a relation with ``_rid`` and the staged columns) to the
    quarantine stage with their check, value and reason; returns rows moved per source file."""
    row_json = f"to_json(struct_pack({', '.join(f'{_ident(c)} := {_ident(c)}' for c in spec.columns)}))"
    wh.con.execute(f"""INSERT INTO {QUARANTINE_STAGE} (batch_id, table_name, source_file, file_hash, source_row,
            column_name, check_name, failure_value, reason, row_json, quarantined_at, action)
        SELECT ?, ?, f.source_file, f.file_hash, _source_row, ?, {check_sql}, {value_sql}, {reason_sql},
               {row_json}::VARCHAR, now()::TIMESTAMP, '{ROW_QUARANTINED}'
        FROM {rejected} JOIN {STAGE_FILES} f USING (_file_order)""", [batch_id, spec.name, column, *(params or [])])
    counts = dict(wh.con.execute(f"SELECT f.source_file, count(*) FROM {rejected} JOIN {STAGE_FILES} f "
                                 "USING (_file_order) GROUP BY 1").fetchall())
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
        SELECT d.*, k.source_file AS _kept_file FROM (
            SELECT s.rowid AS _rid, s.*, row_number() OVER w AS _rank,
                   first_value(_source_row) OVER w AS _kept_row, first_value(_file_order) OVER w AS _kept_order,
                   ({same_content or 'TRUE'}) AS _identical
            FROM {stage} s SEMI JOIN dup_keys USING ({keys})
            WINDOW w AS (PARTITION BY {keys} ORDER BY {version}_file_order DESC, _source_row DESC)) d
        JOIN {STAGE_FILES} k ON k._file_order = d._kept_order
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


def create_staging(wh: Warehouse, tables: set[str], sources: list[SourceFile]) -> None:
    """Staging tables shaped like the targets, plus where each row came from (file and row).

    TEMP tables outside the final transaction: never written to the warehouse file, and
    DuckDB offloads them to its spill folder when a batch outgrows the memory limit. A file is
    a small number here (``_file_order``); ``_stage_files`` names it.
    """
    drop_staging(wh, tables)
    wh.con.execute(f"CREATE TEMP TABLE {QUARANTINE_STAGE} AS SELECT * FROM {QUARANTINE_TABLE} LIMIT 0")
    wh.con.execute(f"CREATE TEMP TABLE {STAGE_FILES} (_file_order INTEGER, source_file VARCHAR, file_hash VARCHAR)")
    for order, source in enumerate(sources):
        wh.con.execute(f"INSERT INTO {STAGE_FILES} VALUES (?, ?, ?)", [order, source.label, source.file_hash])
    for table in tables:
        stage = _stage_name(table)
        wh.con.execute(f'CREATE TEMP TABLE {stage} AS SELECT * EXCLUDE (_batch_id, _loaded_at) FROM "{table}" '
                       "LIMIT 0")
        for col, kind in [("_source_row", "BIGINT"), ("_file_order", "INTEGER")]:
            wh.con.execute(f"ALTER TABLE {stage} ADD COLUMN {col} {kind}")


def drop_staging(wh: Warehouse, tables: set[str]) -> None:
    for name in [QUARANTINE_STAGE, STAGE_FILES, *(_stage_name(t) for t in tables)]:
        wh.con.execute(f"DROP TABLE IF EXISTS {name}")


def publish_quarantine(wh: Warehouse, sources: list[SourceFile]) -> None:
    """This batch's rejects replace those of earlier runs over the same files: never duplicated."""
    if sources:
        wh.con.execute(f"DELETE FROM {QUARANTINE_TABLE} WHERE file_hash IN "
                       f"({', '.join('?' for _ in sources)})", [s.file_hash for s in sources])
    wh.con.execute(f"INSERT INTO {QUARANTINE_TABLE} BY NAME SELECT * FROM {QUARANTINE_STAGE}")


def ledger_rows(results: list[FileResult], run_id: str, batch_id: str, batch_time: pd.Timestamp,
                fingerprints: dict[str, str], skipped: set[str]) -> pd.DataFrame:
    now = pd.Timestamp.now("UTC").tz_localize(None)
    return pd.DataFrame([{
        "run_id": run_id, "batch_id": batch_id, "run_at": now, "as_of": batch_time, "table_name": r.table,
        "source_file": r.source, "file_hash": r.file_hash, "rows_in": r.rows_in, "rows_valid": r.rows_valid,
        "rows_quarantined": r.rows_quarantined, "inserted": r.inserted, "updated": r.updated,
        "unchanged": r.unchanged, "stale": r.stale, "seconds": r.seconds,
        "source_fingerprint": fingerprints[r.source], "status": "skipped" if r.source in skipped else "loaded",
        "values_cleared": r.values_cleared,
    } for r in results])


def source_fingerprint(source: SourceFile, mapping: Mapping, batch_time: pd.Timestamp, settings: Settings) -> str:
    """What decides a file's outcome: its bytes, its table's mapping, the batch clock and the rules."""
    text = (f"{source.table}|{source.file_hash}|{mapping.for_table(source.table).model_dump_json()}|{batch_time}|"
            f"{settings.ingest.model_dump_json(exclude={'chunk_rows', 'report_examples'})}")
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
    cleared = earlier.get("values_cleared")
    return FileResult(source.table, source.label, source.file_hash, rows_in=int(earlier["rows_in"]),
                      rows_valid=valid, rows_quarantined=int(earlier["rows_quarantined"]), unchanged=valid,
                      values_cleared=0 if cleared is None or pd.isna(cleared) else int(cleared))


def column_warnings(wh: Warehouse, results: list[FileResult], min_expected: float) -> list[str]:
    """Optional columns a file lacks (or leaves empty) although the stored table has them filled.

    An export that renames ``deliveredAt`` leaves every ``delivered_at`` empty without a single
    failed check; the stored rows tell that values were expected.
    """
    warnings = []
    shares: dict[str, dict[str, float]] = {}
    for result in results:
        spec = TABLES[result.table]
        kept = result.rows_valid
        if kept == 0 or not result.filled:
            continue
        if result.table not in shares:
            optional = [c for c, col in spec.model.to_schema().columns.items() if col.nullable]
            row = wh.con.execute(f'SELECT count(*), {", ".join(f"count({_ident(c)})" for c in optional)} '
                                 f'FROM "{result.table}"').fetchone()
            shares[result.table] = {c: (n / row[0] if row[0] else 0.0) for c, n in zip(optional, row[1:],
                                                                                         strict=True)}
        for column, share in shares[result.table].items():
            if result.filled.get(column, 0) == 0 and share * kept >= min_expected:
                state = "is not in this file" if column not in result.present else "is empty in every row"
                warnings.append(f"{Path(result.source).name}: column {column} {state}, but {share:.0%} of the "
                                f"stored {result.table} have it; renamed in the export? (mapping: rename)")
    return warnings


def date_only_notes(results: list[FileResult], mapping: Mapping) -> list[str]:
    notes = []
    for result in results:
        declared = set(mapping.for_table(result.table).date_only)
        for column, (at_midnight, values) in result.midnight.items():
            if values and at_midnight == values and column not in declared:
                count = f"{values:,} value{'s' if values != 1 else ''}"
                notes.append(f"{Path(result.source).name}: every {column} ({count}) is at local midnight: "
                             f"a date-only column? Declare `date_only: [{column}]` in the mapping so that a day's "
                             "rows count from the end of that day (no look-ahead at a midnight cutoff)")
    return notes


def ingest_batch(data_dir: Path, wh: Warehouse, settings: Settings, mapping_file: Path | None = None,
                 as_of: datetime | str | None = None, progress=None, force: bool = False) -> BatchResult:
    """Ingest every file of a folder (or mapped SQL) in one transaction.

    A file already loaded with the same bytes, mapping, batch time and rules is not read again
    (its earlier counts are reported as unchanged); ``force`` re-validates and re-merges it, which
    changes nothing either, only slower.
    """
    started = time.perf_counter()
    data_dir = Path(data_dir)
    mapping = load_mapping(mapping_file)
    stale = wh.drop_stale_stages()
    sources = preflight_files(data_dir, mapping)
    with open_sandbox(mapping, data_dir, forbidden=[wh.path], memory_limit=settings.warehouse.memory_limit,
                      threads=settings.warehouse.threads) as sandbox:
        sources += preflight_sql(data_dir, mapping, sandbox)
        if not sources:
            raise IngestError(f"{data_dir}: no data files found (expected e.g. orders.csv or orders.parquet)")
        result = _ingest_sources(data_dir, wh, settings, mapping, sources, sandbox, as_of, progress, force)
    result.warnings[:0] = unmatched_patterns(data_dir, mapping)
    if stale:
        result.notes.append(f"dropped {len(stale)} staging table(s) an interrupted ingestion left behind")
    result.seconds = time.perf_counter() - started
    return result


def _ingest_sources(data_dir: Path, wh: Warehouse, settings: Settings, mapping: Mapping,
                    sources: list[SourceFile], sandbox: duckdb.DuckDBPyConnection, as_of, progress,
                    force: bool) -> BatchResult:
    batch_time = read_batch_time(data_dir, as_of)
    batch_id = batch_identity(sources, mapping)
    run_id = f"{batch_id}-{int(time.time() * 1000)}"
    warnings: list[str] = []
    notes: list[str] = []
    _ensure_quarantine(wh)
    register_local_to_utc(wh.con)
    sources.sort(key=lambda s: (TABLE_ORDER.index(s.table), s.label))
    fingerprints = {s.label: source_fingerprint(s, mapping, batch_time, settings) for s in sources}
    earlier = {} if force else already_loaded(wh, list(fingerprints.values()))
    skipped = [s for s in sources if fingerprints[s.label] in earlier]
    sources = [s for s in sources if fingerprints[s.label] not in earlier]
    results: list[FileResult] = [skipped_result(s, earlier[fingerprints[s.label]]) for s in skipped]
    for s in skipped:
        warnings.append(f"{s.label}: already loaded with the same content and mapping; not read again")
    staged_tables = {s.table for s in sources}
    try:  # staging and whole-batch checks touch only staging tables ...
        create_staging(wh, staged_tables, sources)
        fresh = []
        for order, source in enumerate(sources):
            fresh.append(stage_file(wh, source, mapping.for_table(source.table), settings, batch_id, batch_time,
                                    order, sandbox, progress, notes))
        results += fresh
        warnings += column_warnings(wh, fresh, settings.ingest.empty_column_min_expected)
        notes += date_only_notes(fresh, mapping)
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
            for table in (t for t in TABLE_ORDER if t in staged_tables):
                for order, merged in wh.merge_by_key(TABLES[table], _stage_name(table), batch_id).items():
                    result = by_label[sources[order].label]
                    result.inserted, result.updated = merged.inserted, merged.updated
                    result.unchanged, result.stale = merged.unchanged, merged.stale
            wh.append(LEDGER_TABLE, ledger_rows(results, run_id, batch_id, batch_time, fingerprints,
                                                {s.label for s in skipped}))
    finally:
        drop_staging(wh, staged_tables)
    failures = wh.query(f"SELECT * FROM {QUARANTINE_TABLE} WHERE batch_id = ?", [batch_id])
    return BatchResult(batch_id, batch_time, results, failures, warnings, 0.0, notes)


# ---- the report people read ----------------------------------------------------------------


def shown_value(table: str, column: str, check: str, value: object) -> str:
    """A failure's value as a report may show it: never one of a personal column or a raw line."""
    spec = TABLES.get(table)
    if check == MALFORMED or (spec is not None and column in spec.personal_columns):
        return "(personal data, see quarantine)"
    return f"{value!s:.40}"


def validation_report(result: BatchResult, examples: int) -> str:
    """Markdown: counts per file, then each failed check with a few examples."""
    lines = [
        f"# Ingestion report, batch `{result.batch_id}`",
        "",
        f"Batch time (no timestamp may be later): {result.as_of:%Y-%m-%d %H:%M} UTC. "
        f"Rows in: {result.rows_in:,}; valid: {result.rows_valid:,}; quarantined: {result.rows_quarantined:,}; "
        f"values cleared in kept rows: {result.values_cleared:,}; took {result.seconds:.1f} s.",
        "",
        markdown_table(pd.DataFrame(
            [{"table": r.table, "file": Path(r.source).name, "rows in": r.rows_in, "valid": r.rows_valid,
              "quarantined": r.rows_quarantined, "values cleared": r.values_cleared, "new": r.inserted,
              "updated": r.updated, "unchanged": r.unchanged, "older (kept stored)": r.stale}
             for r in result.files]), intfmt=","),
    ]
    if result.warnings:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in result.warnings]]
    if result.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in result.notes]]
    failures = result.failures
    if len(failures):
        action = failures["action"].fillna(ROW_QUARANTINED) if "action" in failures else ROW_QUARANTINED
        failures = failures.assign(action=action)
        rows = []
        grouped = failures.groupby(["table_name", "column_name", "check_name", "action"], sort=False)
        for (table, column, check, action), group in sorted(grouped, key=lambda g: -len(g[1])):
            sample = group.head(min(examples, 3))
            shown = "; ".join(f"{Path(str(f)).name}:{r} = {shown_value(table, column, check, v)}" for f, r, v in
                              zip(sample["source_file"], sample["source_row"], sample["failure_value"], strict=True))
            rows.append({"table": table, "column": column, "check": check, "action": action,
                         "rows": group["source_row"].nunique(), "examples (file:row = value)": shown})
        lines += ["", "## Quarantined rows and cleared values by check", "",
                  markdown_table(pd.DataFrame(rows), intfmt=",")]
        lines += ["", "Every failure is kept in the warehouse table `quarantine` (column `row_json` holds the "
                  "whole original row), with its file, row number, reason and action: a quarantined row was not "
                  "loaded; a cleared value was stored empty and the rest of its row loaded."]
    return "\n".join(lines) + "\n"


__all__ = ["BatchResult", "FileResult", "IngestError", "MappingError", "ingest_batch", "validation_report"]
