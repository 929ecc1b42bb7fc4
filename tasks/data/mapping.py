"""Mapping files: how a shop's own export becomes the canonical tables.

A mapping is YAML. Per canonical table it may say which files hold it, how columns are renamed,
how codes map onto the canonical enums, which timestamp format and time zone the export uses,
which markers mean "missing" and which constant columns to add; or, where renames cannot express
the reshaping (sales and returns as signed invoice lines, orders aggregated from lines), a DuckDB
SQL query over the user's files or attached databases. Every key is documented, with an example,
in ``schemas/defaults/mapping.example.yaml``.

Mapping SQL never runs on the warehouse: :func:`open_sandbox` gives it its own in-memory DuckDB
connection that can read only the data folder and the declared attachments (read-only), and
whose configuration is locked before the first user statement runs. ``{data_dir}`` is only
accepted inside quoted strings and is substituted as a properly escaped literal.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import duckdb
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.sources import TABLES

EXAMPLE = Path(__file__).parents[2] / "schemas" / "defaults" / "mapping.example.yaml"
DATA_DIR = "{data_dir}"
AmbiguousRule = Literal["earliest", "latest"]
NonexistentRule = Literal["shift_forward", "shift_backward"]
# statements the mapping's `setup` may run: they only change the sandbox's own memory
SETUP_STATEMENTS = {"SELECT", "CREATE", "INSERT", "UPDATE", "DELETE", "DROP"}
EXTENSION_FOR = {"sqlite": "sqlite", "postgres": "postgres", "mysql": "mysql"}


class MappingError(ValueError):
    """A mapping file that cannot be used; the message names the file and the entry."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Attachment(_Strict):
    """A database the mapping's SQL may read, attached read-only in the sandbox."""

    path: str = Field(description="file relative to the data folder (or absolute); for postgres/mysql the "
                                  "connection string")
    name: str = Field(description="the name the SQL uses, e.g. shop in shop.orders")
    type: Literal["duckdb", "sqlite", "postgres", "mysql"] = "duckdb"

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"attachment name {value!r} must be a plain identifier (letters, digits, _)")
        return value

    @property
    def is_file(self) -> bool:
        return self.type in ("duckdb", "sqlite")


class TableMapping(_Strict):
    files: list[str] = Field(default_factory=list, description="glob patterns relative to the data dir")
    rename: dict[str, str] = Field(default_factory=dict, description="source column -> canonical column")
    values: dict[str, dict[str, Any]] = Field(default_factory=dict, description="column -> {code: canonical}")
    timestamp_formats: dict[str, str] = Field(default_factory=dict, description="column -> strptime format")
    timezone: str | None = Field(None, description="time zone of naive timestamps; stored as UTC")
    ambiguous_time: AmbiguousRule | None = Field(
        None, description="a local time that occurs twice (DST ends): the earliest or latest instant")
    nonexistent_time: NonexistentRule | None = Field(
        None, description="a local time skipped when DST starts: moved to the end (forward) or start of the gap")
    date_only: list[str] = Field(default_factory=list,
                                 description="timestamp columns holding dates only: stored as the end of the day")
    null_values: list[str] | None = Field(None, description="markers that mean missing, besides the empty field")
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


class Mapping(_Strict):
    attach: list[Attachment] = Field(default_factory=list, description="databases the SQL reads, read-only")
    setup: list[str] = Field(
        default_factory=list, description="SQL run once before the tables' queries (e.g. shared views)"
    )
    ignore: list[str] = Field(default_factory=list, description="glob patterns of files that are not tables")
    timezone: str | None = None
    ambiguous_time: AmbiguousRule | None = None
    nonexistent_time: NonexistentRule | None = None
    date_only: list[str] = Field(default_factory=list, description="date-only columns in every table that has them")
    null_values: list[str] = Field(default_factory=list, description="missing-value markers for every table")
    tables: dict[str, TableMapping] = Field(default_factory=dict)

    @field_validator("attach", mode="before")
    @classmethod
    def _no_raw_attach(cls, value: Any) -> Any:
        for entry in value or []:
            if isinstance(entry, str):
                raise ValueError(
                    f"attach entry {entry!r} is raw SQL; write it as {{path: shop.sqlite, name: shop, type: sqlite}}")
        return value

    def for_table(self, table: str) -> TableMapping:
        """The table's own entries, with the mapping-wide ones filled in where it says nothing."""
        mapping = self.tables.get(table, TableMapping())
        columns = set(TABLES[table].columns) if table in TABLES else set()
        update: dict[str, Any] = {}
        for key in ("timezone", "ambiguous_time", "nonexistent_time"):
            if getattr(mapping, key) is None and getattr(self, key) is not None:
                update[key] = getattr(self, key)
        if mapping.null_values is None:
            update["null_values"] = list(self.null_values)
        extra_dates = [c for c in self.date_only if c in columns and c not in mapping.date_only]
        if extra_dates:
            update["date_only"] = [*mapping.date_only, *extra_dates]
        return mapping.model_copy(update=update) if update else mapping


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The mapping model an error location points into, to suggest its keys."""
    if len(loc) == 1:
        return Mapping
    if loc[0] == "tables" and len(loc) == 3:
        return TableMapping
    if loc[0] == "attach" and len(loc) == 3:
        return Attachment
    return None


def _describe(errors: list[dict]) -> str:
    """Pydantic's errors in the words of a mapping file: the entry, the key, a suggestion."""
    lines = []
    for err in errors:
        loc = tuple(err["loc"])
        where = " → ".join(str(p) for p in loc[:-1]) or "top level"
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            model = _model_at(loc)
            known = _field_names(model) if model else []
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known)}"
            lines.append(f"{where}: unknown key {key!r} ({key}: {hint})")
        else:
            lines.append(f"{' → '.join(str(p) for p in loc) or 'top level'}: {err['msg']}")
    return "; ".join(lines)


def load_mapping(path: Path | None) -> Mapping:
    """Read and check a mapping file; no file means the export already uses canonical names."""
    if path is None:
        return Mapping()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MappingError(f"mapping file {path}: cannot be read: {exc}") from exc
    if not isinstance(raw, dict):
        raise MappingError(f"mapping file {path}: expected keys such as `tables:`, found {type(raw).__name__}")
    try:
        mapping = Mapping.model_validate(raw)
    except ValidationError as exc:
        raise MappingError(f"mapping file {path}: {_describe(exc.errors())}") from None
    check_mapping(mapping, str(path))
    return mapping


def check_mapping(mapping: Mapping, label: str) -> None:
    """Everything about a mapping that can be known without the data: names, columns, SQL shape."""
    unknown = sorted(set(mapping.tables) - set(TABLES))
    if unknown:
        raise MappingError(f"mapping file {label}: unknown table name(s) {unknown}; known tables: {sorted(TABLES)}")
    all_timestamps = {c for spec in TABLES.values() for c in spec.timestamp_columns}
    bad_global = sorted(set(mapping.date_only) - all_timestamps)
    if bad_global:
        raise MappingError(f"mapping file {label}: date_only names {bad_global}, which are not timestamp columns "
                           f"of any table ({', '.join(sorted(all_timestamps))})")
    for table, tm in mapping.tables.items():
        spec = TABLES[table]
        columns = set(spec.columns)
        bad = sorted({c for c in tm.rename.values() if c not in columns})
        bad += sorted(c for c in [*tm.values, *tm.timestamp_formats, *tm.defaults] if c not in columns)
        if bad:
            raise MappingError(
                f"mapping file {label}: table {table!r} maps to unknown column(s) {bad}; "
                f"canonical columns: {sorted(columns)}"
            )
        targets = list(tm.rename.values())
        twice = sorted({c for c in targets if targets.count(c) > 1})
        if twice:
            raise MappingError(f"mapping file {label}: table {table!r} renames several columns to {twice}")
        not_ts = sorted(c for c in [*tm.date_only, *tm.timestamp_formats] if c not in spec.timestamp_columns)
        if not_ts:
            raise MappingError(f"mapping file {label}: table {table!r}: {not_ts} are not timestamp columns "
                               f"({', '.join(spec.timestamp_columns)})")
        if tm.sql:
            check_select(tm.sql, f"mapping file {label}: table {table!r} sql")
    for number, statement in enumerate(mapping.setup, 1):
        check_setup(statement, f"mapping file {label}: setup statement {number}")


def mapping_fingerprint(mapping: Mapping) -> str:
    return hashlib.sha256(mapping.model_dump_json().encode()).hexdigest()[:16]


# ---- SQL: shape checks, {data_dir} as a literal, the sandbox ---------------------------------


def _statements(sql: str, label: str) -> list:
    try:
        return duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise MappingError(f"{label}: not valid SQL: {redact(str(exc))}") from None


def check_select(sql: str, label: str) -> None:
    """A table's query is one SELECT: it can read, never write or attach."""
    statements = _statements(_with_placeholder(sql, label), label)
    kinds = [s.type.name for s in statements]
    if kinds != ["SELECT"]:
        raise MappingError(f"{label}: must be a single SELECT query (found {', '.join(kinds) or 'nothing'})")


def check_setup(sql: str, label: str) -> None:
    """Setup may build views, macros and scratch tables in the sandbox; nothing that reaches out."""
    for statement in _statements(_with_placeholder(sql, label), label):
        kind = statement.type.name
        if kind not in SETUP_STATEMENTS:
            hint = " (declare read-only inputs under `attach:`)" if kind == "ATTACH" else ""
            raise MappingError(f"{label}: {kind} statements are not allowed in a mapping{hint}")


def _with_placeholder(sql: str, label: str) -> str:
    """The SQL with {data_dir} replaced by a harmless path, after checking where it stands."""
    return substitute_data_dir(sql, Path("/data"), label)


def substitute_data_dir(sql: str, data_dir: Path, label: str = "mapping sql") -> str:
    """Put the data folder into the SQL as part of quoted string literals, never as raw text.

    ``{data_dir}`` must stand inside a single-quoted string (``'{data_dir}/orders.csv'``); each
    occurrence is replaced by the folder with its quotes doubled, so a folder named
    ``x'; DROP TABLE reviews; --`` stays a file name.
    """
    if DATA_DIR not in sql:
        return sql
    literal = str(data_dir).replace("'", "''")
    # an identifier of the same length keeps the tokenizer's positions valid for the original text
    tokens = duckdb.tokenize(sql.replace(DATA_DIR, "_data_dir_"))
    ends = [start for start, _ in tokens[1:]] + [len(sql)]
    out, position = [], 0
    for (start, kind), end in zip(tokens, ends, strict=True):
        text = sql[start:end]
        if DATA_DIR not in text or kind == duckdb.token_type.comment:
            continue
        if kind != duckdb.token_type.string_const or text[:1] in "eE":
            raise MappingError(f"{label}: {DATA_DIR} may only appear inside a quoted path such as "
                               f"'{DATA_DIR}/orders.csv'")
        out += [sql[position:start], text.replace(DATA_DIR, literal)]
        position = end
    out.append(sql[position:])
    return "".join(out)


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def redact(message: str) -> str:
    """DuckDB quotes data values in its messages ('a@b.com'); keep them out of logs."""
    return re.sub(r"'[^']*'", "'…'", message).splitlines()[0][:300]


def resolve_attachment(attachment: Attachment, data_dir: Path) -> str:
    if not attachment.is_file:
        return attachment.path
    raw = attachment.path.replace(DATA_DIR + "/", "").replace(DATA_DIR, "")
    path = Path(raw)
    return str((path if path.is_absolute() else data_dir / path).resolve())


@contextmanager
def open_sandbox(mapping: Mapping, data_dir: Path, *, forbidden: list[Path] = (),
                 memory_limit: str | None = None, threads: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection for mapping SQL that cannot reach the warehouse.

    It reads the data folder and the declared attachments only (read-only), cannot load
    extensions, write files or change its own configuration: it is locked before the mapping's
    setup runs. ``forbidden`` are files (the warehouse) that may never be attached.
    """
    data_dir = Path(data_dir).resolve()
    spill = Path(tempfile.mkdtemp(prefix="aftersales-sandbox-"))
    config: dict[str, Any] = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                              "temp_directory": str(spill)}
    if memory_limit:
        config["memory_limit"] = memory_limit
    if threads:
        config["threads"] = int(threads)
    con = duckdb.connect(":memory:", config=config)
    try:
        files = []
        for attachment in mapping.attach:
            target = resolve_attachment(attachment, data_dir)
            if attachment.is_file:
                if any(Path(target) == Path(f).resolve() for f in forbidden):
                    raise MappingError(f"attach {attachment.name!r}: {target} is the warehouse itself; "
                                       "mapping SQL may not read or write it")
                if not Path(target).exists():
                    raise MappingError(f"attach {attachment.name!r}: file {target} does not exist")
                files.append(target)
            extension = EXTENSION_FOR.get(attachment.type)
            if extension:
                try:
                    con.execute(f"LOAD {extension}")
                except duckdb.Error:
                    raise MappingError(
                        f"attach {attachment.name!r}: DuckDB's {extension} extension is not installed; install it "
                        f"once with: python -c \"import duckdb; duckdb.sql('INSTALL {extension}')\"") from None
        con.execute("SET allowed_directories = ?", [[str(data_dir) + "/", str(spill) + "/"]])
        con.execute("SET allowed_paths = ?", [files])
        for attachment in mapping.attach:
            target = resolve_attachment(attachment, data_dir)
            kind = "" if attachment.type == "duckdb" else f"TYPE {attachment.type}, "
            try:
                con.execute(f'ATTACH {quote_literal(target)} AS "{attachment.name}" ({kind}READ_ONLY)')
            except duckdb.Error as exc:
                raise MappingError(f"attach {attachment.name!r}: cannot attach {target}: "
                                   f"{redact(str(exc))}") from None
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        for number, statement in enumerate(mapping.setup, 1):
            label = f"mapping setup statement {number}"
            check_setup(statement, label)
            try:
                con.execute(substitute_data_dir(statement, data_dir, label))
            except duckdb.Error as exc:
                raise MappingError(f"{label} failed: {redact(str(exc))}\n{statement.strip()[:300]}") from None
        yield con
    finally:
        con.close()
        for leftover in spill.glob("*"):
            leftover.unlink(missing_ok=True)
        spill.rmdir() if spill.exists() and not any(spill.iterdir()) else None


def table_query(tm: TableMapping, data_dir: Path, table: str) -> str:
    """The table's mapping SQL, ready for the sandbox."""
    label = f"mapping sql for table {table!r}"
    check_select(tm.sql or "", label)
    return substitute_data_dir(tm.sql or "", Path(data_dir).resolve(), label)


def describe_query(con: duckdb.DuckDBPyConnection, sql: str, table: str) -> list[str]:
    try:
        return [row[0] for row in con.execute(f"DESCRIBE ({sql})").fetchall()]
    except duckdb.Error as exc:
        raise MappingError(f"mapping sql for table {table!r} failed: {redact(str(exc))}") from None
