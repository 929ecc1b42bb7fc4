"""Mapping files: how a shop's own export becomes the canonical tables.

A mapping is YAML. Per canonical table it may say which files hold it, how columns are renamed,
how codes map onto the canonical enums, which timestamp format and time zone the export uses and
which constant columns to add; or, where renames cannot express the reshaping (sales and returns
as signed invoice lines, orders aggregated from lines), a DuckDB SQL query over the user's files
or attached databases. See ``schemas/defaults/mapping.example.yaml``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from schemas.sources import TABLES


class MappingError(ValueError):
    """A mapping file that cannot be used; the message names the file and the entry."""


class TableMapping(BaseModel):
    files: list[str] = Field(default_factory=list, description="glob patterns relative to the data dir")
    rename: dict[str, str] = Field(default_factory=dict, description="source column -> canonical column")
    values: dict[str, dict[str, Any]] = Field(default_factory=dict, description="column -> {code: canonical}")
    timestamp_formats: dict[str, str] = Field(default_factory=dict, description="column -> strptime format")
    timezone: str | None = Field(None, description="time zone of naive timestamps; stored as UTC")
    defaults: dict[str, Any] = Field(default_factory=dict, description="constant for a missing column")
    sql: str | None = Field(None, description="DuckDB query producing canonical columns")
    csv_delimiter: str | None = None
    decimal_comma: bool = Field(False, description="numbers written 1.234,50")
    encoding: str | None = None

    @model_validator(mode="after")
    def _sql_or_files(self) -> TableMapping:
        if self.sql and (self.files or self.rename):
            raise ValueError("give either `sql` or `files`/`rename`, not both")
        return self


class Mapping(BaseModel):
    attach: list[str] = Field(
        default_factory=list,
        description="DuckDB ATTACH targets, e.g. \"'shop.sqlite' AS shop (TYPE sqlite)\"",
    )
    setup: list[str] = Field(
        default_factory=list, description="SQL run once before the tables' queries (e.g. shared views)"
    )
    ignore: list[str] = Field(default_factory=list, description="glob patterns of files that are not tables")
    timezone: str | None = None
    tables: dict[str, TableMapping] = Field(default_factory=dict)

    def for_table(self, table: str) -> TableMapping:
        mapping = self.tables.get(table, TableMapping())
        if mapping.timezone is None and self.timezone:
            mapping = mapping.model_copy(update={"timezone": self.timezone})
        return mapping


def load_mapping(path: Path | None) -> Mapping:
    """Read and check a mapping file; no file means the export already uses canonical names."""
    if path is None:
        return Mapping()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MappingError(f"mapping file {path}: cannot be read: {exc}") from exc
    try:
        mapping = Mapping.model_validate(raw)
    except ValidationError as exc:
        raise MappingError(f"mapping file {path}: {exc}") from exc
    unknown = sorted(set(mapping.tables) - set(TABLES))
    if unknown:
        raise MappingError(
            f"mapping file {path}: unknown table name(s) {unknown}; known tables: {sorted(TABLES)}"
        )
    for table, tm in mapping.tables.items():
        columns = set(TABLES[table].columns)
        bad = sorted({c for c in tm.rename.values() if c not in columns})
        bad += sorted(c for c in [*tm.values, *tm.timestamp_formats, *tm.defaults] if c not in columns)
        if bad:
            raise MappingError(
                f"mapping file {path}: table {table!r} maps to unknown column(s) {bad}; "
                f"canonical columns: {sorted(columns)}"
            )
    return mapping


def mapping_fingerprint(mapping: Mapping) -> str:
    return hashlib.sha256(mapping.model_dump_json().encode()).hexdigest()[:16]


def apply_renames_and_values(df: pd.DataFrame, tm: TableMapping) -> pd.DataFrame:
    """Rename columns, translate codes and add constants; unmapped codes pass through to validation."""
    if tm.rename:
        df = df.rename(columns=tm.rename)
    for column, value_map in tm.values.items():
        if column in df.columns:
            as_text = df[column].astype("string").str.strip()
            lookup = {str(k): v for k, v in value_map.items()}
            mapped = as_text.map(lookup)
            df[column] = mapped.where(mapped.notna(), df[column])
    for column, value in tm.defaults.items():
        if column not in df.columns:
            df[column] = value
    return df
