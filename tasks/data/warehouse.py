"""The only module that reads and writes the warehouse.

DuckDB in one local file is the embedded default. Everything else talks to a ``Warehouse``: SQL
in, DataFrames out, and a few write verbs (merge by key, replace a partition, append), so that a
later backend (partitioned Parquet on object storage read by Dask) can sit beside this one.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from schemas.settings import Settings, get_settings
from schemas.sources import TABLES, TableSpec

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
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def register(self, name: str, df: pd.DataFrame) -> None:
        self.con.register(name, df)

    def unregister(self, name: str) -> None:
        self.con.unregister(name)

    def append(self, table: str, df: pd.DataFrame) -> None:
        """Append a frame; the table is created from the frame the first time."""
        view = f"_append_{table}"
        self.con.register(view, df)
        try:
            if self.has_table(table):
                cols = ", ".join(f'"{c}"' for c in df.columns)
                self.con.execute(f'INSERT INTO "{table}" ({cols}) SELECT {cols} FROM "{view}"')
            else:
                self.con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM "{view}"')
        finally:
            self.con.unregister(view)

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
        view = f"_replace_{table}"
        self.con.register(view, df)
        try:
            self.con.execute(f'CREATE OR REPLACE TABLE "{table}" AS SELECT * FROM "{view}"')
        finally:
            self.con.unregister(view)

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


@contextmanager
def open_warehouse(settings: Settings | None = None, read_only: bool = False) -> Iterator[Warehouse]:
    """Open the configured warehouse for the length of a block."""
    settings = settings or get_settings()
    wh = Warehouse(settings.warehouse_path, read_only=read_only, memory_limit=settings.warehouse.memory_limit,
                   threads=settings.warehouse.threads)
    try:
        yield wh
    finally:
        wh.close()


@contextmanager
def run_lock(settings: Settings, key: str) -> Iterator[None]:
    """An exclusive lock per key (e.g. one scoring date) beside the warehouse: a second run waits.

    On a Prefect server the deployments' concurrency limit does the same across machines.
    """
    folder = settings.warehouse_path.parent / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{key}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
