"""The only module that reads and writes the warehouse.

DuckDB in one local file is the embedded default. Everything else talks to a ``Warehouse``: SQL
in, DataFrames out, and a few write verbs (merge by key, replace a partition, append), so that a
later backend (partitioned Parquet on object storage read by Dask) can sit beside this one.
"""

from __future__ import annotations

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

LINEAGE_COLUMNS = {"_batch_id": "VARCHAR", "_loaded_at": "TIMESTAMP"}


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


@dataclass
class MergeCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0


class Warehouse:
    """A DuckDB connection with the project's write verbs."""

    def __init__(self, path: Path | str, read_only: bool = False, threads: int | None = None,
                 memory_limit: str | None = None):
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
        if not read_only:
            self.ensure_source_tables()

    # ---- reading -------------------------------------------------------------------------
    def has_table(self, name: str) -> bool:
        rows = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
        ).fetchall()
        return bool(rows and rows[0][0])

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
        for spec in TABLES.values():
            self.con.execute(source_table_ddl(spec))

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

    def merge_by_key(self, spec: TableSpec, staged: str, batch_id: str) -> MergeCounts:
        """Upsert a staged relation (one row per key) into a source table.

        A staged row replaces the stored one only when its content differs and its version
        column (if any) is not older, so re-running a batch changes nothing. New keys are
        appended with an anti-join, so no copy of the staged rows is materialised.
        """
        data_cols = spec.columns
        cols = ", ".join(f'"{c}"' for c in data_cols)
        keys = ", ".join(f'"{k}"' for k in spec.key)
        key_match = " AND ".join(f's."{k}" = t."{k}"' for k in spec.key)
        differs = " OR ".join(f's."{c}" IS DISTINCT FROM t."{c}"' for c in data_cols if c not in spec.key)
        version = spec.version_column
        not_older = (
            f'(s."{version}" IS NULL OR t."{version}" IS NULL OR s."{version}" >= t."{version}")'
            if version
            else "TRUE"
        )
        con = self.con
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _merge_changed AS
            SELECT s.*, {not_older} AS _newer
            FROM "{staged}" s JOIN "{spec.name}" t ON {key_match}
            WHERE {differs or 'FALSE'}"""
        )
        matched = int(self.scalar(f'SELECT count(*) FROM "{staged}" s SEMI JOIN "{spec.name}" t ON {key_match}'))
        updated = int(self.scalar("SELECT count(*) FROM _merge_changed WHERE _newer"))
        stale = int(self.scalar("SELECT count(*) FROM _merge_changed WHERE NOT _newer"))
        if updated:
            con.execute(
                f'DELETE FROM "{spec.name}" WHERE ({keys}) IN (SELECT ({keys}) FROM _merge_changed WHERE _newer)'
            )
            con.execute(
                f'INSERT INTO "{spec.name}" ({cols}, _batch_id, _loaded_at) '
                f"SELECT {cols}, ?, now()::TIMESTAMP FROM _merge_changed WHERE _newer",
                [batch_id],
            )
        before = self.row_count(spec.name)
        con.execute(
            f'INSERT INTO "{spec.name}" ({cols}, _batch_id, _loaded_at) '
            f'SELECT {cols}, ?, now()::TIMESTAMP FROM "{staged}" s ANTI JOIN "{spec.name}" t ON {key_match}',
            [batch_id],
        )
        inserted = self.row_count(spec.name) - before
        con.execute("DROP TABLE _merge_changed")
        return MergeCounts(inserted=inserted, updated=updated, unchanged=matched - updated - stale, stale=stale)

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
