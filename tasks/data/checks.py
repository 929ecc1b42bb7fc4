"""Pandera schemas compiled to DuckDB SQL: parse, check and sort every row where the data is.

``schemas/sources.py`` stays the declaration. :func:`compile_table` turns a table's model (dtypes,
nullability, ``ge``/``le``/``isin``/``str_length``/... checks, the ``not_before`` time order) plus
the batch's own rules (no timestamps after the batch, no placeholder dates, settings limits) and
the mapping (renames, code maps, null markers, number and timestamp formats, time zone) into SQL
over a chunk of raw rows. Every check is row-level:

- a failure in a required (non-nullable) column rejects the row;
- a failure in an optional column clears that value and keeps the row;
- either way the failure is recorded with row, column, check, original value and reason.

``tests/test_ingest_checks.py`` proves the compiled checks agree with pandera's own validation.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from schemas.sources import TableSpec
from tasks.data.mapping import TableMapping, quote_literal

CHUNK = "_chunk"
CHECKED = "_checked"
LOCAL_TO_UTC = "_aftersales_local_to_utc"
TRUE_WORDS = ("true", "t", "1", "yes", "y", "是", "1.0")
FALSE_WORDS = ("false", "f", "0", "no", "n", "否", "0.0")
CURRENCY_NOISE = r"[\s$€£¥￥]|USD|EUR|GBP|CNY|RMB"
PLAIN_NUMBER = r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
GROUPED_NUMBER = r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?"
COMMA_NUMBER = r"[+-]?(\d{1,3}(\.\d{3})+|\d+)(,\d+)?([eE][+-]?\d+)?"
NOT_FINITE = r"[+-]?(inf|infinity|nan)"
TIME_OFFSET = r"\d:\d\d(:\d\d(\.\d+)?)?\s*(Z|z|[+-]\d\d(:?\d\d)?|UTC|GMT)$"
NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "REAL")
AMBIGUOUS = {"earliest": "earliest", "latest": "latest"}
NONEXISTENT = {"shift_forward": "latest", "shift_backward": "earliest"}


@dataclass(frozen=True)
class BatchRules:
    """What the batch itself adds to the schema: its clock and the settings' limits."""

    not_after: pd.Timestamp  # batch time + allowed skew
    earliest: pd.Timestamp  # earlier timestamps are placeholders
    promise_latest: pd.Timestamp  # future-allowed columns may not lie later than this
    batch_time: pd.Timestamp  # version of rows without updated_at
    upper_limits: dict[str, tuple[float, str]] = field(default_factory=dict)  # column -> (max, setting)
    ambiguous_time: str = "earliest"
    nonexistent_time: str = "shift_forward"


@dataclass(frozen=True)
class Rule:
    """One compiled check: where it fails, what it is called, and what a failure costs."""

    id: int
    column: str
    check: str
    reason: str
    condition: str  # SQL over the parsed values; TRUE where the row fails
    rejects_row: bool


@dataclass
class CompiledTable:
    spec: TableSpec
    rules: list[Rule]
    checked_sql: str  # CREATE TEMP TABLE _checked from _chunk
    stage_sql: str  # INSERT the kept rows; parameter: the file's order
    quarantine_sql: str  # INSERT every failure of _chunk; run on the failing rows only; parameters: batch,
    # table, file label, hash
    stats_sql: str
    raw_columns: list[str]
    timestamp_columns: list[str]


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: Any) -> str:
    """A Python value as a DuckDB literal (strings quoted, never spliced)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return f"'{value}'::DOUBLE"
        return repr(value)
    if isinstance(value, pd.Timestamp):
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    return quote_literal(str(value))


def text_literal(value: Any) -> str:
    """A mapped code as text ('true' for YAML true), so the column's own parser reads it."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "'true'" if value else "'false'"
    return quote_literal(str(value))


def kind_of(dtype: Any) -> str:
    text = str(dtype).lower()
    if "datetime" in text:
        return "datetime"
    if "bool" in text:
        return "bool"
    if "int" in text:
        return "int"
    if "float" in text:
        return "float"
    return "string"


def check_label(dtype: Any) -> str:
    """``parse_datetime64``, ``parse_boolean``, ``parse_int64``, ``parse_float64`` as before."""
    return f"parse_{str(dtype).lower().split('[')[0]}"


def humane_reason(column: str, check: str) -> str:
    """Pandera's check names in words an analyst reads without the docs."""
    patterns = [
        (r"^not_nullable$", "required value is missing"),
        (r"^greater_than_or_equal_to\((.*)\)$", r"must be at least \1"),
        (r"^less_than_or_equal_to\((.*)\)$", r"must be at most \1"),
        (r"^greater_than\((.*)\)$", r"must be more than \1"),
        (r"^less_than\((.*)\)$", r"must be less than \1"),
        (r"^in_range\((.*), (.*)\)$", r"must be between \1 and \2"),
        (r"^isin\((.*)\)$", r"not one of the allowed codes \1"),
        (r"^notin\((.*)\)$", r"one of the forbidden codes \1"),
        (r"^str_length\(.*\)$", "has the wrong length"),
        (r"^str_matches\((.*)\)$", r"does not match \1"),
    ]
    for pattern, words in patterns:
        if re.match(pattern, check):
            return f"{column}: {re.sub(pattern, words, check)}"
    return f"{column}: {check}"


def pandera_condition(check: Any, value: str) -> str:
    """A pandera column check as SQL that is TRUE where the value fails (NULL passes)."""
    name, stats = check.name, check.statistics
    conditions = {
        "greater_than_or_equal_to": lambda: f"{value} >= {literal(stats['min_value'])}",
        "greater_than": lambda: f"{value} > {literal(stats['min_value'])}",
        "less_than_or_equal_to": lambda: f"{value} <= {literal(stats['max_value'])}",
        "less_than": lambda: f"{value} < {literal(stats['max_value'])}",
        "equal_to": lambda: f"{value} = {literal(stats['value'])}",
        "not_equal_to": lambda: f"{value} <> {literal(stats['value'])}",
        "isin": lambda: f"{value} IN ({', '.join(literal(v) for v in stats['allowed_values'])})",
        "notin": lambda: f"{value} NOT IN ({', '.join(literal(v) for v in stats['forbidden_values'])})",
        "str_matches": lambda: f"regexp_matches({value}, {literal('^(?:' + str(stats['pattern']) + ')')})",
        "str_contains": lambda: f"regexp_matches({value}, {literal(str(stats['pattern']))})",
        "str_startswith": lambda: f"starts_with({value}, {literal(stats['string'])})",
        "str_endswith": lambda: f"ends_with({value}, {literal(stats['string'])})",
    }
    if name == "in_range":
        low = ">=" if stats.get("include_min", True) else ">"
        high = "<=" if stats.get("include_max", True) else "<"
        passes = f"{value} {low} {literal(stats['min_value'])} AND {value} {high} {literal(stats['max_value'])}"
    elif name == "str_length":
        parts = []
        if stats.get("exact_value") is not None:
            parts.append(f"length({value}) = {stats['exact_value']}")
        if stats.get("min_value") is not None:
            parts.append(f"length({value}) >= {stats['min_value']}")
        if stats.get("max_value") is not None:
            parts.append(f"length({value}) <= {stats['max_value']}")
        passes = " AND ".join(parts) or "TRUE"
    elif name in conditions:
        passes = conditions[name]()
    else:
        raise NotImplementedError(f"check {name!r} has no SQL form yet; add it to tasks/data/checks.py")
    return f"{value} IS NOT NULL AND NOT ({passes})"


def register_local_to_utc(con) -> None:
    """``_aftersales_local_to_utc(ts, zone, ambiguous, nonexistent)``: local wall time to UTC.

    Arrow's ``assume_timezone`` resolves a time that occurs twice (DST ends) to its earliest or
    latest instant and a time that does not exist (DST starts) to the end or start of the gap.
    """
    from duckdb.sqltypes import TIMESTAMP, VARCHAR

    def to_utc(values: pa.Array, zone: pa.Array, ambiguous: pa.Array, nonexistent: pa.Array) -> pa.Array:
        if len(values) == 0:
            return values.cast(pa.timestamp("us"))
        out = pc.assume_timezone(values.cast(pa.timestamp("us")), zone[0].as_py(),
                                 ambiguous=ambiguous[0].as_py(), nonexistent=nonexistent[0].as_py())
        return out.cast(pa.timestamp("us"))

    with contextlib.suppress(duckdb.Error):  # not registered yet
        con.remove_function(LOCAL_TO_UTC)
    con.create_function(LOCAL_TO_UTC, to_utc, [TIMESTAMP, VARCHAR, VARCHAR, VARCHAR], TIMESTAMP,
                        type="arrow", null_handling="special", side_effects=False)


def _family(duck_type: str) -> str:
    upper = duck_type.upper()
    if upper == "VARCHAR" or upper.startswith("VARCHAR"):
        return "text"
    if upper == "BOOLEAN":
        return "bool"
    if upper.startswith(NUMERIC_TYPES):
        return "number"
    if upper in ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"):
        return "tstz"
    if upper.startswith("TIMESTAMP"):
        return "ts"
    if upper == "DATE":
        return "date"
    return "other"


@dataclass
class _Column:
    name: str
    kind: str
    nullable: bool
    mapped: str  # SQL of the mapped raw value (text, or the source's own type)
    family: str  # of the mapped value
    source: str | None  # raw column it comes from


def _mapped_columns(spec: TableSpec, tm: TableMapping, raw_types: dict[str, str]) -> list[_Column]:
    schema = spec.model.to_schema()
    inverse = {target: src for src, target in tm.rename.items()}
    markers = [m for m in (tm.null_values or []) if m.strip()]
    columns = []
    for name, col in schema.columns.items():
        source = inverse.get(name) or (name if name in raw_types and name not in tm.rename else None)
        if source is not None and source not in raw_types:
            source = None
        if source is None:
            value = tm.defaults.get(name)
            expr, family = (text_literal(value), "text") if value is not None else ("NULL::VARCHAR", "text")
        else:
            family = _family(raw_types[source])
            expr = ident(source)
            if family == "text":  # spaces around a value are dropped; trim only where there are any
                expr = (f"CASE WHEN starts_with({expr}, ' ') OR ends_with({expr}, ' ') THEN nullif(trim({expr}), '') "
                        f"ELSE nullif({expr}, '') END")
                if markers:
                    expr = f"CASE WHEN {expr} IN ({', '.join(literal(m) for m in markers)}) THEN NULL ELSE {expr} END"
        if name in tm.values:
            text = expr if family == "text" else f"CAST({expr} AS VARCHAR)"
            cases = " ".join(f"WHEN {literal(str(k))} THEN {text_literal(v)}" for k, v in tm.values[name].items())
            expr, family = f"CASE {text} {cases} ELSE {text} END", "text"
        columns.append(_Column(name, kind_of(col.dtype), bool(col.nullable), expr, family, source))
    return columns


def _number(col: _Column, decimal_comma: bool) -> tuple[str, str]:
    """(SQL of the number, possibly inf/nan; NULL where it does not parse) and the format's words.

    Values that already look like a number take one regex and one cast; only the others are
    cleaned of currency signs and spaces and tried again, or recognised as inf/nan.
    """
    m = ident(f"m__{col.name}")
    if col.family in ("number", "bool"):
        return f"TRY_CAST({m} AS DOUBLE)", ""
    if decimal_comma:
        pattern, words = COMMA_NUMBER, "decimal comma, e.g. 1.234,50 (a dot must be followed by three digits)"

        def cast(text: str) -> str:
            return f"TRY_CAST(replace(replace({text}, '.', ''), ',', '.') AS DOUBLE)"
    else:
        pattern, words = f"{PLAIN_NUMBER}|{GROUPED_NUMBER}", "decimal point, e.g. 1,234.50"

        def cast(text: str) -> str:
            return f"TRY_CAST(replace({text}, ',', '') AS DOUBLE)"
    text = f"CAST({m} AS VARCHAR)"
    clean = f"regexp_replace({text}, {literal(CURRENCY_NOISE)}, '', 'g')"
    number = (f"CASE WHEN regexp_full_match({text}, {literal(pattern)}) THEN {cast(text)} "
              f"WHEN regexp_full_match({clean}, {literal(pattern)}) THEN {cast(clean)} "
              f"WHEN regexp_full_match(lower({clean}), {literal(NOT_FINITE)}) THEN 'nan'::DOUBLE END")
    return number, words


def _timestamp(col: _Column, tm: TableMapping, rules: BatchRules) -> tuple[str, str, str]:
    """(UTC value, local naive value before any date-only shift, words of the expected format)."""
    m = ident(f"m__{col.name}")
    fmt = tm.timestamp_formats.get(col.name)
    zone = tm.timezone
    date_only = col.name in tm.date_only or col.family == "date"
    aware, local = "NULL::TIMESTAMP", "NULL::TIMESTAMP"
    if col.family == "text":
        if fmt:
            parsed = f"try_strptime({m}, {literal(fmt)})"
            if "%z" in fmt or "%Z" in fmt:
                aware = f"timezone('UTC', CAST({parsed} AS TIMESTAMPTZ))"
            else:
                local = f"CAST({parsed} AS TIMESTAMP)"
            words = f"the format {fmt}"
        elif zone or date_only:  # naive values are local time: tell them from values with an offset
            with_offset = f"regexp_matches({m}, {literal(TIME_OFFSET)})"
            aware = f"CASE WHEN {with_offset} THEN timezone('UTC', TRY_CAST({m} AS TIMESTAMPTZ)) END"
            local = f"CASE WHEN NOT {with_offset} THEN TRY_CAST({m} AS TIMESTAMP) END"
            words = "ISO 8601 such as 2026-01-31 14:05, or a timestamp_formats entry"
        else:  # naive values are UTC, as the session: one cast reads both kinds
            local = f"timezone('UTC', TRY_CAST({m} AS TIMESTAMPTZ))"
            words = "ISO 8601 such as 2026-01-31 14:05, or a timestamp_formats entry"
    elif col.family == "tstz":
        aware, words = f"timezone('UTC', {m})", "a timestamp"
    elif col.family in ("ts", "date"):
        local, words = f"CAST({m} AS TIMESTAMP)", "a timestamp"
    else:
        local, words = f"TRY_CAST(CAST({m} AS VARCHAR) AS TIMESTAMP)", "a timestamp"
    shown_local = local
    if date_only:
        if aware != "NULL::TIMESTAMP":  # an instant in a date column: its local date counts
            local = f"coalesce({local}, timezone({literal(zone or 'UTC')}, timezone('UTC', {aware})))"
            aware = "NULL::TIMESTAMP"
        local = f"(date_trunc('day', {local}) + INTERVAL 1 DAY - INTERVAL 1 MICROSECOND)"
    if zone:
        utc = (f"{LOCAL_TO_UTC}({local}, {literal(zone)}, {literal(AMBIGUOUS[rules.ambiguous_time])}, "
               f"{literal(NONEXISTENT[rules.nonexistent_time])})")
    else:
        utc = local
    return f"coalesce({aware}, {utc})", shown_local, words


def compile_table(spec: TableSpec, tm: TableMapping, raw_types: dict[str, str], rules: BatchRules) -> CompiledTable:
    """SQL that parses and checks one chunk of ``spec``'s rows as described in the module doc."""
    schema = spec.model.to_schema()
    tm = tm.model_copy(update={
        "ambiguous_time": tm.ambiguous_time or rules.ambiguous_time,
        "nonexistent_time": tm.nonexistent_time or rules.nonexistent_time,
    })
    rules = BatchRules(**{**rules.__dict__, "ambiguous_time": tm.ambiguous_time,
                          "nonexistent_time": tm.nonexistent_time})
    columns = _mapped_columns(spec, tm, raw_types)
    by_name = {c.name: c for c in columns}
    level1 = [f"{ident(CHUNK)}._source_row"] + [f"{c.mapped} AS {ident('m__' + c.name)}" for c in columns]
    if spec.derived_key:
        key = spec.key[0]
        content = ", ".join(f"coalesce(CAST({ident('m__' + c.name)} AS VARCHAR), '∅')" for c in columns
                            if c.name != key)
        level1_key = (f"coalesce({ident('m__' + key)}, 'h' || left(md5(concat_ws(chr(31), {content})), 16)) "
                      f"AS {ident('k__' + key)}")
    level2, level3, out_rules = [], [], []  # parsed values; values derived from them; the rules
    value_of: dict[str, str] = {}
    midnight: list[str] = []

    def add(column: str, check: str, reason: str, condition: str) -> None:
        out_rules.append(Rule(len(out_rules), column, check, reason, condition, not by_name[column].nullable))

    for col in columns:
        m = ident("m__" + col.name)
        if spec.derived_key and col.name == spec.key[0]:
            m = ident("k__" + col.name)
        v = ident("v__" + col.name)
        value_of[col.name] = v
        label = check_label(schema.columns[col.name].dtype)
        if col.kind == "string":
            level2.append(f"CAST({m} AS VARCHAR) AS {v}")
        elif col.kind == "bool":
            if col.family == "bool":
                expr = m
            elif col.family == "number":
                expr = f"CASE WHEN {m} = 1 THEN TRUE WHEN {m} = 0 THEN FALSE END"
            else:
                words = f"lower(CAST({m} AS VARCHAR))"
                expr = (f"CASE WHEN {words} IN ({', '.join(map(literal, TRUE_WORDS))}) THEN TRUE "
                        f"WHEN {words} IN ({', '.join(map(literal, FALSE_WORDS))}) THEN FALSE END")
            level2.append(f"{expr} AS {v}")
            add(col.name, label, f"{col.name}: not a yes/no value (true/false, yes/no, 1/0)",
                f"{m} IS NOT NULL AND {v} IS NULL")
        elif col.kind in ("int", "float"):
            x = ident("x__" + col.name)
            number, words = _number(col, tm.decimal_comma)
            level2.append(f"{number} AS {x}")
            if col.kind == "int":
                level3.append(f"CASE WHEN isfinite({x}) AND {x} = round({x}) AND abs({x}) < 9e18 "
                              f"THEN CAST({x} AS BIGINT) END AS {v}")
            else:
                level3.append(f"CASE WHEN isfinite({x}) THEN {x} END AS {v}")
            shown = f" ({words})" if words else ""
            add(col.name, label, f"{col.name}: not a number in the declared format{shown}",
                f"{m} IS NOT NULL AND {x} IS NULL")
            add(col.name, "not_finite", f"{col.name}: not a finite number (inf, nan or too large)",
                f"{x} IS NOT NULL AND NOT isfinite({x})")
            if col.kind == "int":
                add(col.name, label, f"{col.name}: not a whole number",
                    f"isfinite({x}) AND NOT ({x} = round({x}) AND abs({x}) < 9e18)")
        elif col.kind == "datetime":
            utc, local, words = _timestamp(col, tm, rules)
            level2.append(f"{utc} AS {v}")
            if local != "NULL::TIMESTAMP":
                mid = ident("mid__" + col.name)
                level2.append(f"{local} = date_trunc('day', {local}) AS {mid}")
                midnight.append(col.name)
            add(col.name, label, f"{col.name}: not a valid datetime64 (expected {words})",
                f"{m} IS NOT NULL AND {v} IS NULL")
        if not col.nullable:
            add(col.name, "not_nullable", humane_reason(col.name, "not_nullable"), f"{m} IS NULL")
        for check in schema.columns[col.name].checks:
            name = check.error or check.name
            add(col.name, name, humane_reason(col.name, name), pandera_condition(check, v))
        if col.kind == "datetime":
            if col.name not in spec.future_allowed:
                after = f"in the future of the batch (after {rules.not_after:%Y-%m-%d %H:%M})"
                add(col.name, after, f"{col.name}: {after} UTC", f"{v} > {literal(rules.not_after)}")
            else:
                days = (rules.promise_latest - rules.batch_time).days
                add(col.name, f"more than {days} days after the batch",
                    f"{col.name}: more than {days} days after the batch: a placeholder date (such as 9999-12-31)",
                    f"{v} > {literal(rules.promise_latest)}")
            add(col.name, f"before {rules.earliest:%Y-%m-%d}",
                f"{col.name}: before {rules.earliest:%Y-%m-%d}: a placeholder date (such as 0001-01-01 or "
                "1970-01-01), not a real time", f"{v} < {literal(rules.earliest)}")
        if col.name in rules.upper_limits:
            limit, setting = rules.upper_limits[col.name]
            limit_text = f"{limit:,.0f}" if float(limit).is_integer() else f"{limit:,}"
            add(col.name, f"less_than_or_equal_to({limit:g})",
                f"{col.name}: more than {limit_text} (setting ingest.{setting})", f"{v} > {literal(limit)}")
    for check in schema.checks:
        order = check.statistics or {}
        if set(order) != {"later", "earlier"}:
            raise NotImplementedError(f"dataframe check {check.name!r} has no SQL form; declare it with not_before")
        later, earlier = order["later"], order["earlier"]
        add(later, check.error, check.error, f"{value_of[later]} < {value_of[earlier]}")

    checked = [c for c in columns if any(r.column == c.name for r in out_rules)]
    bad = {c.name: ident("_bad__" + c.name) for c in checked}
    select1 = ", ".join(level1) + (f", {level1_key}" if spec.derived_key else "")

    def checked_query(where: str = "", flags: bool = False) -> str:
        """The chunk mapped, parsed and checked; with ``flags`` every rule's own column too."""
        per_column = [f"coalesce({' OR '.join(f'({r.condition})' for r in out_rules if r.column == c.name)}, "
                      f"FALSE) AS {bad[c.name]}" for c in checked]
        per_rule = [f"coalesce({r.condition}, FALSE) AS _f{r.id}" for r in out_rules] if flags else []
        reject = " OR ".join(bad[c.name] for c in checked if not c.nullable) or "FALSE"
        any_fail = " OR ".join(bad.values()) or "FALSE"
        return f"""WITH l1 AS (SELECT {select1} FROM {CHUNK}{where}),
             l2 AS (SELECT *, {', '.join(level2)} FROM l1),
             l3 AS (SELECT *{''.join(', ' + e for e in level3)} FROM l2),
             l4 AS (SELECT *, {', '.join([*per_column, *per_rule]) or 'FALSE AS _nothing'} FROM l3)
        SELECT *, ({reject}) AS _reject, ({any_fail}) AS _any FROM l4"""

    keep = ["_source_row", *value_of.values(), *bad.values(), *(ident("mid__" + n) for n in midnight),
            "_reject", "_any"]
    checked_sql = f"CREATE OR REPLACE TEMP TABLE {CHECKED} AS SELECT {', '.join(keep)} FROM ({checked_query()})"
    final = {c.name: (f"CASE WHEN {bad[c.name]} THEN NULL ELSE {value_of[c.name]} END"
                      if c.name in bad and c.nullable else value_of[c.name]) for c in columns}
    valid_from = (f"coalesce({final[spec.version_column]}, {literal(rules.batch_time)})"
                  if spec.version_column else literal(rules.batch_time))
    names = ", ".join(ident(c.name) for c in columns)
    stage_sql = f"""INSERT INTO {ident('_stage_' + spec.name)} ({names}, _valid_from, _source_row, _file_order)
        SELECT {', '.join(final[c.name] for c in columns)}, {valid_from}, _source_row, $order
        FROM {CHECKED} WHERE NOT _reject"""
    raw_columns = list(raw_types)
    row_json = "to_json(struct_pack(" + ", ".join(f"{ident(c)} := {ident(c)}" for c in raw_columns) + "))"
    shown = "[" + ", ".join(f"CAST({ident('m__' + c.name)} AS VARCHAR)" for c in columns) + "]"
    position = {c.name: i + 1 for i, c in enumerate(columns)}
    rules_values = ", ".join(
        f"({r.id}, {literal(r.column)}, {literal(r.check)}, {literal(r.reason)}, {position[r.column]})"
        for r in out_rules) or "(-1, '', '', '', 1)"
    failing = ", ".join(f"CASE WHEN _f{r.id} THEN {r.id} END" for r in out_rules) or "NULL"
    quarantine_sql = f"""INSERT INTO _stage_quarantine BY NAME
        SELECT $batch AS batch_id, $table AS table_name, $file AS source_file, $hash AS file_hash,
               q._source_row AS source_row, r.column_name, r.check_name, q._shown[r.position] AS failure_value,
               r.reason, raw.row_json, now()::TIMESTAMP AS quarantined_at,
               CASE WHEN q._reject THEN 'row quarantined' ELSE 'value cleared' END AS action
        FROM (SELECT _source_row, _reject, {shown} AS _shown,
                     unnest(list_filter([{failing}], lambda x: x IS NOT NULL)) AS rule
              FROM ({checked_query(flags=True)}) WHERE _any) q
        JOIN (VALUES {rules_values}) r(rule, column_name, check_name, reason, position) USING (rule)
        JOIN (SELECT _source_row, {row_json} AS row_json FROM {CHUNK}) raw USING (_source_row)"""
    stats = ["count(*) AS rows", "count_if(_reject) AS rejected", "count_if(_any) AS failing"]
    for col in columns:
        if col.nullable and col.name in bad:
            stats.append(f"count_if(NOT _reject AND {bad[col.name]}) AS {ident('cleared__' + col.name)}")
        stats.append(f"count_if(NOT _reject AND ({final[col.name]}) IS NOT NULL) AS {ident('filled__' + col.name)}")
    for name in midnight:
        stats.append(f"count_if({ident('mid__' + name)}) AS {ident('midnight__' + name)}")
        stats.append(f"count_if({ident('mid__' + name)} IS NOT NULL) AS {ident('local__' + name)}")
    stats_sql = f"SELECT {', '.join(stats)} FROM {CHECKED}"
    return CompiledTable(spec, out_rules, checked_sql, stage_sql, quarantine_sql, stats_sql, raw_columns,
                         [c.name for c in columns if c.kind == "datetime"])
