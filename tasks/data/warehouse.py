"""The only module that reads and writes the warehouse.

DuckDB in one local file is the embedded default. Everything else talks to a ``Warehouse``: SQL
in, DataFrames out, and a few write verbs (merge by key, replace a partition, append), so that a
later backend (partitioned Parquet on object storage read by Dask) can sit beside this one.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from schemas.settings import Settings, get_settings
from schemas.sources import TABLES, TableSpec
from tasks.locks import hold

notice = logging.getLogger("aftersales.notice")  # the CLI prints these lines; a run logs them too

LINEAGE_COLUMNS = {"_batch_id": "VARCHAR", "_loaded_at": "TIMESTAMP", "_valid_from": "TIMESTAMP"}
STAGE_PREFIX = "_stage_"
HISTORY_SUFFIX = "_history"


def duckdb_type(dtype: Any) -> str:
    """DuckDB column type for a pandera/pandas dtype."""
    text = str(dtype).lower()
    if "datetime" in text or "timestamp" in text:
        return "TIMESTAMP"
    if "bool" in text:
        return "BOOLEAN"
    if "int" in text:
        return "BIGINT"
    if "float" in text or "double" in text:
        return "DOUBLE"
    return "VARCHAR"


def source_table_ddl(spec: TableSpec) -> str:
    columns = [f'"{name}" {duckdb_type(col.dtype)}' for name, col in spec.model.to_schema().columns.items()]
    columns += [f"{name} {kind}" for name, kind in LINEAGE_COLUMNS.items()]
    return f'CREATE TABLE IF NOT EXISTS "{spec.name}" ({", ".join(columns)})'


def history_table(table: str) -> str:
    return f"{table}{HISTORY_SUFFIX}"


def history_ddl(spec: TableSpec) -> str:
    """Earlier versions of rows: their values and the moment each became true (``valid_from``).

    The current version of a row is the row in the table itself (``_valid_from``); together they
    are every version ingestion has seen. A first load writes no history at all.
    """
    columns = [f'"{name}" {duckdb_type(col.dtype)}' for name, col in spec.model.to_schema().columns.items()]
    columns += ["valid_from TIMESTAMP", "_batch_id VARCHAR", "_loaded_at TIMESTAMP"]
    return f'CREATE TABLE IF NOT EXISTS "{history_table(spec.name)}" ({", ".join(columns)})'


def _keys(spec: TableSpec, alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(f'{prefix}"{k}"' for k in spec.key)


def _key_match(spec: TableSpec, left: str, right: str) -> str:
    return " AND ".join(f'{left}."{k}" = {right}."{k}"' for k in spec.key)


def _differs(spec: TableSpec, left: str, right: str) -> str:
    return " OR ".join(f'{left}."{c}" IS DISTINCT FROM {right}."{c}"' for c in spec.columns if c not in spec.key) \
        or "FALSE"


def version_intervals_sql(table: str) -> str:
    """Every version of ``table``'s rows with the interval it describes: ``[valid_from, valid_to)``.

    A key's first version reaches back to ``-infinity``: the row existed since its own event time
    (features mask facts after the cutoff by their own timestamps), only later changes are
    versions. Join on ``v.valid_from <= c.cutoff AND c.cutoff < v.valid_to`` to read many cutoffs
    at once.
    """
    spec = TABLES[table]
    cols = ", ".join(f'"{c}"' for c in spec.columns)
    return f"""SELECT {cols},
            CASE WHEN row_number() OVER w = 1 THEN '-infinity'::TIMESTAMP ELSE _from END AS valid_from,
            coalesce(lead(_from) OVER w, 'infinity'::TIMESTAMP) AS valid_to
        FROM (SELECT {cols}, valid_from AS _from FROM "{history_table(table)}"
              UNION ALL
              SELECT {cols}, coalesce(_valid_from, '-infinity'::TIMESTAMP) FROM "{table}")
        WINDOW w AS (PARTITION BY {_keys(spec)} ORDER BY _from)"""


def as_of_sql(table: str, cutoff: str = "$cutoff") -> str:
    """SQL of ``table`` as it was known at ``cutoff`` (an SQL expression, by default ``$cutoff``).

    Per key: the latest version with ``valid_from <= cutoff``; a key whose first version came
    later than the cutoff shows that first version. An order edited after the cutoff (carrier,
    amount, cancelled) reads as it was; ``SELECT * FROM ({as_of_sql('orders')})`` with
    ``{"cutoff": ts}`` replaces ``SELECT * FROM orders`` in point-in-time feature SQL.
    """
    cols = ", ".join(f'"{c}"' for c in TABLES[table].columns)
    return (f"SELECT {cols} FROM ({version_intervals_sql(table)}) "
            f"WHERE valid_from <= {cutoff} AND {cutoff} < valid_to")


def unsettled_keys_sql(table: str, cutoff: str = "$cutoff") -> str:
    """Keys of ``table`` whose stored row may not be their version as of ``cutoff``: they have earlier
    versions and the stored one is dated after the cutoff (or undated, or older than one of them,
    or gone). Every other key reads as stored at that cutoff."""
    spec = TABLES[table]
    keys = ", ".join(f'h."{k}"' for k in spec.key)
    missing = " OR ".join(f't."{k}" IS NULL' for k in spec.key)
    return f"""SELECT DISTINCT {keys} FROM "{history_table(table)}" h
        LEFT JOIN "{table}" t ON {_key_match(spec, 'h', 't')}
        WHERE {missing} OR t._valid_from IS NULL OR t._valid_from > {cutoff} OR h.valid_from > t._valid_from"""


def as_of_changes_sql(table: str, cutoff: str = "$cutoff") -> str:
    """``as_of_sql`` computed only where it can differ: the stored rows of every settled key, and
    the version intervals of the ``unsettled_keys_sql`` ones (few, when a cutoff is recent).

    Why: the intervals sort every version of every row; on a shop with daily deltas most keys
    are settled at a recent cutoff, and the morning's scoring run reads each table as stored.
    """
    spec = TABLES[table]
    cols = ", ".join(f'"{c}"' for c in spec.columns)
    unsettled = f"_unsettled_{table}"
    return f"""WITH {unsettled} AS ({unsettled_keys_sql(table, cutoff)})
        SELECT {cols} FROM "{table}" t
        WHERE NOT EXISTS (SELECT 1 FROM {unsettled} u WHERE {_key_match(spec, 'u', 't')})
        UNION ALL
        SELECT {cols} FROM ({version_intervals_sql(table)}) v
        WHERE v.valid_from <= {cutoff} AND {cutoff} < v.valid_to
          AND EXISTS (SELECT 1 FROM {unsettled} u WHERE {_key_match(spec, 'u', 'v')})"""


@dataclass
class MergeCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0


class Warehouse:
    """A DuckDB connection with the project's write verbs."""

    def __init__(self, path: Path | str, read_only: bool = False, threads: int | None = None,
                 memory_limit: str | None = None, ensure_tables: bool = True):
        self.path = Path(path)
        self._in_transaction = False
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        config = {"preserve_insertion_order": "false", "temp_directory": str(self.path.parent / "duckdb-spill")}
        if memory_limit:
            config["memory_limit"] = memory_limit
        if threads:
            config["threads"] = str(int(threads))
        self.con = duckdb.connect(str(self.path), read_only=read_only, config=config)
        if not read_only and ensure_tables:  # ~30 statements: a caller that knows they exist skips them
            self.ensure_source_tables()

    # ---- reading -------------------------------------------------------------------------
    def has_table(self, name: str) -> bool:
        return name in self.table_names()

    def table_names(self) -> set[str]:
        """Every table and view, in one catalog read (for a caller that would ask ``has_table`` often)."""
        sql = ("SELECT table_name FROM duckdb_tables() "  # information_schema.tables: the same names, 2x slower
               "UNION ALL SELECT view_name FROM duckdb_views() WHERE NOT internal")
        return {r[0] for r in self.con.execute(sql).fetchall()}

    def row_count(self, name: str) -> int:
        if not self.has_table(name):
            return 0
        return int(self.con.execute(f'SELECT count(*) FROM "{name}"').fetchall()[0][0])

    def has_rows(self, name: str) -> bool:
        return self.row_count(name) > 0

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pd.DataFrame:
        return self.con.execute(sql, params or []).df()

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        rows = self.con.execute(sql, params or []).fetchall()  # drain: duckdb 2 refuses open results
        return rows[0][0] if rows else None

    def table(self, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        return self.query(f'SELECT {cols} FROM "{name}"')

    def columns(self, name: str) -> list[str]:
        return [r[0] for r in self.con.execute(f'DESCRIBE "{name}"').fetchall()]

    # ---- writing -------------------------------------------------------------------------
    def ensure_source_tables(self) -> None:
        """Create the source tables and their version tables; bring older warehouses up to date."""
        existing = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        for spec in TABLES.values():
            self.con.execute(source_table_ddl(spec))
            if spec.name in existing and "_valid_from" not in self.columns(spec.name):
                self._add_valid_from(spec)
            self.con.execute(history_ddl(spec))

    def _add_valid_from(self, spec: TableSpec) -> None:
        """``_valid_from`` of rows loaded before it existed: their ``updated_at``, else their batch's clock."""
        self.con.execute(f'ALTER TABLE "{spec.name}" ADD COLUMN _valid_from TIMESTAMP')
        batch_clock = ("(SELECT max(l.as_of) FROM ingest_ledger l WHERE l.batch_id = t._batch_id)"
                       if self.has_table("ingest_ledger") else "NULL")
        version = f't."{spec.version_column}", ' if spec.version_column else ""
        self.con.execute(f'UPDATE "{spec.name}" t SET _valid_from = coalesce({version}{batch_clock}, t._loaded_at)')

    def drop_stale_stages(self) -> list[str]:
        """Staging tables a killed ingestion left behind (they hold no data anyone reads)."""
        found = self.con.execute(
            "SELECT table_catalog, table_name FROM information_schema.tables WHERE starts_with(table_name, ?) "
            "AND table_schema = 'main' AND table_catalog = current_database()", [STAGE_PREFIX]).fetchall()
        for catalog, name in found:
            self.con.execute(f'DROP TABLE IF EXISTS "{catalog}".main."{name}"')
        return [name for _, name in found]

    @contextmanager
    def transaction(self) -> Iterator[Warehouse]:
        """One transaction; a nested block joins the outer one (it commits or rolls back with it)."""
        if self._in_transaction:
            yield self
            return
        self.con.execute("BEGIN TRANSACTION")
        self._in_transaction = True
        try:
            yield self
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        else:
            self.con.execute("COMMIT")
        finally:
            self._in_transaction = False

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    def cursor(self) -> Warehouse:
        """Another connection to the same database, for one thread (a DuckDB connection serves one at a
        time). It does not see an open transaction's rows; close it when done."""
        twin = copy.copy(self)
        twin.con = self.con.cursor()
        twin._in_transaction = False
        return twin

    def register(self, name: str, df: pd.DataFrame) -> None:
        self.con.register(name, df)

    def unregister(self, name: str) -> None:
        self.con.unregister(name)

    def append(self, table: str, df: pd.DataFrame) -> None:
        """Append a frame. A new table gets its column types from its declared contract
        (``schemas/tables.py``), else from the frame's dtypes: never DuckDB's guess from the values,
        which makes an all-missing column type NULL and every later write fail."""
        view = f"_append_{table}"
        self.con.register(view, df)
        try:
            types = self._column_types(table, view, list(df.columns))
            if self.has_table(table):
                self._conform(table, types)
            else:
                cols = ", ".join(f'"{c}" {t}' for c, t in types.items())
                self.con.execute(f'CREATE TABLE "{table}" ({cols})')
            cols = ", ".join(f'"{c}"' for c in df.columns)
            self.con.execute(f'INSERT INTO "{table}" ({cols}) SELECT {cols} FROM "{view}"')
        finally:
            self.con.unregister(view)

    def _column_types(self, table: str, view: str, columns: list[str]) -> dict[str, str]:
        """Column -> DuckDB type: the contract's, else the frame's (an all-missing column: VARCHAR)."""
        from schemas.tables import table_schema

        model = table_schema(table)
        declared = model.to_schema().columns if model is not None else {}
        framed = {r[0]: r[1] for r in self.con.execute(f'DESCRIBE SELECT * FROM "{view}"').fetchall()}
        types = {}
        for column in columns:
            if column in declared:
                types[column] = duckdb_type(declared[column].dtype)
            else:
                found = framed.get(column, "VARCHAR")
                types[column] = "VARCHAR" if found in ("NULL", '"NULL"') else found
        return types

    def _conform(self, table: str, types: dict[str, str]) -> None:
        """Add columns the table lacks; repair columns an older version created with type NULL."""
        existing = {r[0]: r[1] for r in self.con.execute(f'DESCRIBE "{table}"').fetchall()}
        for column, kind in types.items():
            if column not in existing:
                self.con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {kind}')
            elif existing[column] in ("NULL", '"NULL"'):
                self.con.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE {kind}')

    def replace_partition(self, table: str, df: pd.DataFrame, where: dict[str, Any]) -> None:
        """Idempotent write of a derived table: delete the partition, then insert it."""
        with self.transaction():
            exists = self.has_table(table)
            if exists:
                clause = " AND ".join(f'"{k}" = ?' for k in where) or "TRUE"
                self.con.execute(f'DELETE FROM "{table}" WHERE {clause}', list(where.values()))
            if len(df) or not exists:  # an empty first write still creates the table
                self.append(table, df)

    def replace_table(self, table: str, df: pd.DataFrame) -> None:
        """The whole table replaced by the frame, typed like ``append``, in one transaction."""
        with self.transaction():
            self.con.execute(f'DROP TABLE IF EXISTS "{table}"')
            self.append(table, df)

    def merge_by_key(self, spec: TableSpec, staged: str, batch_id: str) -> dict[int, MergeCounts]:
        """Upsert a staged table (one row per key, with ``_valid_from`` and ``_file_order``).

        A staged row replaces the stored one only when its content differs and its version
        (``_valid_from``: ``updated_at``, else the batch clock) is not older, so re-running a
        batch changes nothing and re-sending an older export never reverts newer rows. Every
        version is kept: a replaced row moves to ``<table>_history``, and so does a staged row
        older than the stored one (history that arrives late). Counts per ``_file_order``.
        """
        names = [*spec.columns, "_valid_from"]
        cols = ", ".join(f'"{c}"' for c in names)
        key_match = _key_match(spec, "s", "t")
        history = history_table(spec.name)

        def data(alias: str) -> str:
            return ", ".join(f'{alias}."{c}"' for c in spec.columns)

        con = self.con
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _merge_plan AS
            SELECT s.rowid AS _rid, s._file_order, ({_differs(spec, 's', 't')}) AS _differs,
                   (s._valid_from IS NULL OR t._valid_from IS NULL OR s._valid_from >= t._valid_from) AS _newer,
                   coalesce(s._valid_from < t._valid_from, FALSE) AS _older,
                   coalesce(t._valid_from < s._valid_from, FALSE) AS _supersedes
            FROM "{staged}" s JOIN "{spec.name}" t ON {key_match}""")
        # history that arrives late: staged versions older than the stored one, once each
        con.execute(f"""DELETE FROM "{history}" h USING "{staged}" s, _merge_plan p
            WHERE p._rid = s.rowid AND p._older AND {_key_match(spec, 's', 'h')} AND h.valid_from = s._valid_from
              AND ({_differs(spec, 's', 'h')})""")
        con.execute(f"""INSERT INTO "{history}" SELECT {data('s')}, s._valid_from, ?, now()::TIMESTAMP
            FROM "{staged}" s JOIN _merge_plan p ON p._rid = s.rowid WHERE p._older
              AND NOT EXISTS (SELECT 1 FROM "{history}" h WHERE {_key_match(spec, 's', 'h')}
                              AND h.valid_from = s._valid_from)""", [batch_id])
        # the stored version a newer one replaces becomes history
        con.execute(f"""INSERT INTO "{history}" SELECT {data('t')}, t._valid_from, t._batch_id, now()::TIMESTAMP
            FROM "{spec.name}" t JOIN "{staged}" s ON {key_match} JOIN _merge_plan p ON p._rid = s.rowid
            WHERE p._differs AND p._newer AND p._supersedes""")
        con.execute(f"""DELETE FROM "{spec.name}" t USING "{staged}" s, _merge_plan p
            WHERE p._rid = s.rowid AND p._differs AND p._newer AND {key_match}""")
        con.execute(f"""INSERT INTO "{spec.name}" ({cols}, _batch_id, _loaded_at)
            SELECT {', '.join(f's."{c}"' for c in names)}, ?, now()::TIMESTAMP
            FROM "{staged}" s ANTI JOIN "{spec.name}" t ON {key_match}""", [batch_id])
        counts: dict[int, MergeCounts] = {}
        for order, staged_rows in con.execute(f'SELECT _file_order, count(*) FROM "{staged}" GROUP BY 1').fetchall():
            counts[int(order)] = MergeCounts(inserted=int(staged_rows))
        for order, updated, stale, unchanged in con.execute(
                "SELECT _file_order, count_if(_differs AND _newer), count_if(_differs AND NOT _newer), "
                "count_if(NOT _differs) FROM _merge_plan GROUP BY 1").fetchall():
            merged = counts[int(order)]
            merged.updated, merged.stale, merged.unchanged = int(updated), int(stale), int(unchanged)
            merged.inserted -= merged.updated + merged.stale + merged.unchanged
        con.execute("DROP TABLE _merge_plan")
        return counts

    def close(self) -> None:
        self.con.close()


class WarehouseBusyError(RuntimeError):
    """Another program (not an aftersales run, which would have waited its turn) holds the DuckDB file."""


def _connect(settings: Settings, read_only: bool) -> Warehouse:
    """Open the file; a lock held by another program is retried with back-off, then named in words."""
    cfg = settings.warehouse
    path = settings.warehouse_path
    for attempt in range(cfg.open_retries + 1):
        try:
            return Warehouse(path, read_only=read_only, memory_limit=cfg.memory_limit, threads=cfg.threads)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            problem = str(exc).splitlines()[0]
            if attempt == cfg.open_retries:
                raise WarehouseBusyError(f"the warehouse {path} is locked by another program after "
                                         f"{cfg.open_retries + 1} tries: {problem}") from exc
            wait = cfg.open_retry_seconds * 2**attempt
            notice.warning("the warehouse is locked by another program; trying again in %.0f s", wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


@contextmanager
def open_warehouse(settings: Settings | None = None, read_only: bool = False) -> Iterator[Warehouse]:
    """Open the configured warehouse for the length of a block, in turn with every other run.

    Writers hold the warehouse guard alone and readers share it (``tasks/locks.py``: a lock file on
    this machine, a Prefect global concurrency limit on a server), so overlapping runs wait for each
    other instead of failing with DuckDB's "Could not set lock on file".
    """
    settings = settings or get_settings()
    with hold(settings, "warehouse", shared=read_only, label="the warehouse"):
        wh = _connect(settings, read_only)
        try:
            yield wh
        finally:
            wh.close()


@contextmanager
def run_lock(settings: Settings, key: str) -> Iterator[None]:
    """One run per key at a time (e.g. one scoring date): a second run waits for the first.

    The guard of ``tasks/locks.py``: a lock file here, a Prefect concurrency limit on a server.
    """
    with hold(settings, f"run-{key}", label=f"the {key} run", limit=None):
        yield
