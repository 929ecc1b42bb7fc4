"""What agents did, back from a helpdesk export: ``aftersales outcomes import FILE [--mapping M]``.

The export goes through the same mapping-file mechanism as every source (``tasks/data/mapping.py``:
renames, code maps, timestamp formats and zones; ``tables: outcomes:`` in the mapping) and the same
parsing and pandera validation as ingestion (``tasks/data/ingest.py``). Then each row is tied to a
task: by ``task_id`` (which must exist in the task list or the control group), or by
``customer_id`` + ``recorded_at`` (the customer's latest task or control row in the
``care.match_days`` before). Rows that cannot be tied, do not parse or break a check go to the
warehouse ``quarantine`` table with file, row, column, check, value and the reason in words (and the
whole original row); a task with the same outcome twice in one file keeps the latest. Valid rows are
merged into ``outcomes`` by (task_id, outcome), so re-importing the same file changes nothing, and its
quarantined rows replace those of the earlier import of that file. A row tied to a control row is
imported (it happened) and reported: the uplift report flags it as contamination.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors

from schemas.settings import Settings
from schemas.sources import TABLES, TableSpec
from schemas.tasks import CONTROL_TABLE, TASK_TABLE, OutcomeImport
from tasks.care.interventions import ensure_columns
from tasks.data.checks import humane_reason
from tasks.data.ingest import file_sha256
from tasks.data.mapping import MappingError, TableMapping, load_mapping
from tasks.data.warehouse import MergeCounts, Warehouse
from tasks.templates import markdown_table

TABLE = "outcomes"
QUARANTINE_TABLE = "quarantine"
IMPORT_SPEC = TableSpec(TABLE, OutcomeImport, ("task_id", "outcome"), ("outcome", "recorded_at"))
FAILURE_COLUMNS = ["row", "column", "check", "value", "reason"]


class OutcomeImportError(ValueError):
    """The file cannot be imported at all (unreadable, required columns missing); nothing was written."""


@dataclass
class ImportResult:
    file: str
    file_hash: str
    rows_in: int = 0
    valid: int = 0
    quarantined: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    matched_by_customer: int = 0
    control_contacts: int = 0
    failures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FAILURE_COLUMNS))

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "failures"}


def apply_table_mapping(df: pd.DataFrame, tm: TableMapping) -> pd.DataFrame:
    """Rename columns, translate codes and add constants; unmapped codes pass through to the checks."""
    if tm.rename:
        df = df.rename(columns=tm.rename)
    for column, value_map in tm.values.items():
        if column in df.columns:
            lookup = {str(k): v for k, v in value_map.items()}
            mapped = df[column].astype("string").str.strip().map(lookup)
            df[column] = mapped.where(mapped.notna(), df[column])
    for column, value in tm.defaults.items():
        if column not in df.columns:
            df[column] = value
    return df


def read_export(path: Path, mapping_file: Path | None) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    """(raw rows as text, the same after the mapping's renames and code maps, the table mapping).

    Only an empty field is missing: "NA" or "null" in a note stays text. Row numbers start at 1.
    """
    mapping = load_mapping(mapping_file)
    tm = mapping.for_table(TABLE)
    if not path.exists():
        raise OutcomeImportError(f"{path}: no such file")
    try:
        if path.name.endswith((".parquet", ".pq")):
            raw = pd.read_parquet(path).astype("string")
        else:
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=["", *(tm.null_values or [])],
                              sep=tm.csv_delimiter or ",",
                              encoding=tm.encoding or "utf-8-sig")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise OutcomeImportError(f"{path}: cannot be read: {exc}") from exc
    raw.index = pd.RangeIndex(1, len(raw) + 1)
    mapped = apply_table_mapping(raw.copy(), tm)
    missing = [c for c in ("outcome", "recorded_at") if c not in mapped.columns]
    if not {"task_id", "customer_id"} & set(mapped.columns):
        missing.append("task_id or customer_id")
    if missing:
        raise OutcomeImportError(f"{path}: required column(s) {missing} missing after the mapping "
                                 f"(columns found: {sorted(mapped.columns)})")
    return raw, mapped, tm


def _failures(rows: pd.Index, column: str, check: str, values: pd.Series, reason: str) -> pd.DataFrame:
    return pd.DataFrame({"row": rows.to_numpy(), "column": column, "check": check,
                         "value": values.astype("string").to_numpy(), "reason": reason})


def tasks_known(wh: Warehouse) -> pd.DataFrame:
    """Every task and control row: task_id, customer_id, run_date, arm."""
    parts = [f"SELECT task_id, customer_id, run_date, '{arm}' AS arm FROM \"{table}\""
             for table, arm in ((TASK_TABLE, "treated"), (CONTROL_TABLE, "control")) if wh.has_table(table)]
    if not parts:
        return pd.DataFrame(columns=["task_id", "customer_id", "run_date", "arm"])
    return wh.query(" UNION ALL ".join(parts))


def resolve_tasks(typed: pd.DataFrame, known: pd.DataFrame, match_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tie each row to a task; returns (rows with task_id, customer_id, arm, matched) and the failures."""
    out = typed.copy()
    out["arm"] = None
    out["matched_by_customer"] = False
    failures = []
    by_id = known.drop_duplicates("task_id").set_index("task_id")
    neither = out["task_id"].isna() & out["customer_id"].isna()
    if neither.any():
        failures.append(_failures(out.index[neither], "task_id", "names_a_task", out.loc[neither, "task_id"],
                                  "task_id or customer_id: one of them is required to tie the outcome to a task"))
    with_id = out["task_id"].notna()
    unknown = with_id & ~out["task_id"].isin(by_id.index)
    if unknown.any():
        failures.append(_failures(out.index[unknown], "task_id", "unknown_task", out.loc[unknown, "task_id"],
                                  "task_id: no such task in the task list or control group"))
    known_rows = with_id & ~unknown
    owner = out.loc[known_rows, "task_id"].map(by_id["customer_id"])
    clash = out.loc[known_rows, "customer_id"].notna() & (out.loc[known_rows, "customer_id"] != owner)
    if clash.any():
        idx = clash[clash].index
        failures.append(_failures(idx, "customer_id", "task_customer", out.loc[idx, "customer_id"],
                                  "customer_id: differs from the customer of the task"))
    out.loc[known_rows, "customer_id"] = owner
    out.loc[known_rows, "arm"] = out.loc[known_rows, "task_id"].map(by_id["arm"])
    by_customer = out["task_id"].isna() & out["customer_id"].notna()
    if by_customer.any():
        found = match_by_customer(out[by_customer], known, match_days)
        hit = found["task_id"].notna()
        out.loc[found.index[hit], "task_id"] = found.loc[hit, "task_id"]
        out.loc[found.index[hit], "arm"] = found.loc[hit, "arm"]
        out.loc[found.index[hit], "matched_by_customer"] = True
        miss = found.index[~hit]
        if len(miss):
            failures.append(_failures(miss, "customer_id", "no_task", out.loc[miss, "customer_id"],
                                      f"customer_id: no task or control row for this customer in the {match_days} "
                                      "days before recorded_at"))
    return out, pd.concat(failures, ignore_index=True) if failures else pd.DataFrame(columns=FAILURE_COLUMNS)


def match_by_customer(rows: pd.DataFrame, known: pd.DataFrame, match_days: int) -> pd.DataFrame:
    """The customer's latest task or control row on or before the day of ``recorded_at``, within ``match_days``."""
    out = pd.DataFrame({"task_id": pd.Series(None, index=rows.index, dtype="object"),
                        "arm": pd.Series(None, index=rows.index, dtype="object")})
    if known.empty:
        return out
    candidates = known.assign(run_date=pd.to_datetime(known["run_date"])).sort_values("run_date")
    groups = {c: g for c, g in candidates.groupby("customer_id", sort=False)}
    for idx, customer, at in zip(rows.index, rows["customer_id"], pd.to_datetime(rows["recorded_at"]), strict=True):
        g = groups.get(customer)
        if g is None or pd.isna(at):
            continue
        day = at.normalize()
        eligible = g[(g["run_date"] <= day) & (g["run_date"] > day - pd.Timedelta(days=match_days))]
        if len(eligible):
            out.loc[idx, ["task_id", "arm"]] = eligible.iloc[-1][["task_id", "arm"]].to_numpy()
    return out


def duplicates(rows: pd.DataFrame) -> pd.DataFrame:
    """A task with the same outcome twice in one file: the latest stays, the others are failures."""
    ordered = rows.sort_values(["recorded_at"], kind="mergesort")
    dup = ordered.duplicated(["task_id", "outcome"], keep="last")
    idx = ordered.index[dup]
    return _failures(idx, "task_id+outcome", "duplicate_key", rows.loc[idx, "task_id"],
                     "the same task and outcome appear again later in the file; kept the latest")



# ---- parsing and checks of a helpdesk export (a small file: pandas + pandera, as declared) -------------


def _all_failures(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True)[FAILURE_COLUMNS] if parts else pd.DataFrame(columns=FAILURE_COLUMNS)


def _local_to_utc(parsed: pd.Series, timezone: str | None, ambiguous: str, nonexistent: str) -> pd.Series:
    """Naive local times to naive UTC; a time that occurs twice or never resolves by the declared rule."""
    if getattr(parsed.dt, "tz", None) is not None:
        return parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    if not timezone:
        return parsed
    earliest = pd.Series(True, index=parsed.index) if ambiguous == "earliest" else pd.Series(False, index=parsed.index)
    localized = parsed.dt.tz_localize(timezone, ambiguous=earliest.to_numpy(), nonexistent=nonexistent)
    return localized.dt.tz_convert("UTC").dt.tz_localize(None)


def parse_export(frame: pd.DataFrame, tm: TableMapping, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every column of the contract typed; a value that does not parse is a failure, never a silent NaN."""
    schema = OutcomeImport.to_schema()
    parsed: dict[str, pd.Series] = {}
    failures: list[pd.DataFrame] = []
    ambiguous = tm.ambiguous_time or settings.ingest.ambiguous_time
    nonexistent = tm.nonexistent_time or settings.ingest.nonexistent_time
    for name, column in schema.columns.items():
        kind = str(column.dtype).lower()
        if name not in frame.columns:
            parsed[name] = (pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us]") if "datetime" in kind
                            else pd.Series(None, index=frame.index, dtype="str"))
            continue
        raw = frame[name]
        raw_missing = raw.isna() | raw.astype("string").str.strip().eq("").fillna(False)
        if "datetime" in kind:
            text = raw.astype("string").str.strip()
            fmt = tm.timestamp_formats.get(name)
            value = (pd.to_datetime(text, format=fmt, errors="coerce") if fmt else
                     pd.to_datetime(text, format="ISO8601", errors="coerce", utc=tm.timezone is None))
            value = _local_to_utc(value, tm.timezone, ambiguous, nonexistent)
        else:
            value = raw.astype("string").str.strip().astype("str").where(~raw_missing, None)
        bad = value.isna() & ~raw_missing
        if bad.any():
            failures.append(pd.DataFrame({
                "row": frame.index[bad], "column": name, "check": f"parse_{kind.split('[')[0]}",
                "value": raw[bad].astype("string").to_numpy(),
                "reason": f"{name}: value is not a valid {kind.split('[')[0]}"}))
        parsed[name] = value
    return pd.DataFrame(parsed, index=frame.index), _all_failures(failures)


def check_export(typed: pd.DataFrame, not_after: pd.Timestamp) -> pd.DataFrame:
    """All pandera failures of the contract plus 'not in the future of the import', one row per (row, column, check)."""
    schema = OutcomeImport.to_schema()
    column = schema.columns["recorded_at"]
    schema = schema.update_columns({"recorded_at": {"checks": [*column.checks, pa.Check.le(
        not_after, error=f"in the future of the import (after {not_after:%Y-%m-%d %H:%M})")]}})
    try:
        schema.validate(typed, lazy=True)
        return _all_failures([])
    except (SchemaErrors, SchemaError) as exc:
        cases = exc.failure_cases if isinstance(exc.failure_cases, pd.DataFrame) else pd.DataFrame(exc.failure_cases)
    cases = cases[cases["index"].notna()]
    return pd.DataFrame({
        "row": cases["index"].astype("int64").to_numpy(), "column": cases["column"].astype(str).to_numpy(),
        "check": cases["check"].astype(str).to_numpy(), "value": cases["failure_case"].astype("string").to_numpy(),
        "reason": [humane_reason(c, k) for c, k in zip(cases["column"].astype(str), cases["check"].astype(str),
                                                        strict=True)]})


def without_echoes(parse_failures: pd.DataFrame, check_failures: pd.DataFrame) -> pd.DataFrame:
    """A value that did not parse is reported once, not again as 'missing'."""
    if len(parse_failures) and len(check_failures):
        unparsed = set(zip(parse_failures["row"], parse_failures["column"], strict=True))
        echo = [(r, c) in unparsed for r, c in zip(check_failures["row"], check_failures["column"], strict=True)]
        check_failures = check_failures[~pd.Series(echo, index=check_failures.index)]
    return _all_failures([parse_failures, check_failures])


def quarantine_rows(failures: pd.DataFrame, raw: pd.DataFrame, path: Path, file_hash: str,
                    batch_id: str) -> pd.DataFrame:
    """Failures with the whole original row, in the columns of the ingestion quarantine."""
    originals = {int(i): json.dumps({k: (None if pd.isna(v) else str(v)) for k, v in raw.loc[i].items()},
                                    ensure_ascii=False) for i in failures["row"].unique()}
    return pd.DataFrame({
        "batch_id": batch_id, "table_name": TABLE, "source_file": str(path), "file_hash": file_hash,
        "source_row": failures["row"].astype("int64").to_numpy(), "column_name": failures["column"].to_numpy(),
        "check_name": failures["check"].to_numpy(), "failure_value": failures["value"].astype("string").to_numpy(),
        "reason": failures["reason"].to_numpy(), "row_json": failures["row"].map(originals).to_numpy(),
        "quarantined_at": pd.Timestamp.now("UTC").tz_localize(None).as_unit("us"),
    })


def import_outcomes(wh: Warehouse, path: Path | str, settings: Settings,
                    mapping_file: Path | None = None, as_of: Any = None) -> ImportResult:
    """Validate, tie to tasks, quarantine and merge one helpdesk export (idempotent per file)."""
    path = Path(path)
    try:
        raw, mapped, tm = read_export(path, mapping_file)
    except MappingError as exc:
        raise OutcomeImportError(str(exc)) from exc
    file_hash = file_sha256(path)
    batch_id = "outcomes-" + hashlib.sha256(f"{file_hash}|{mapping_file}".encode()).hexdigest()[:12]
    result = ImportResult(str(path), file_hash, rows_in=len(raw))
    typed, parse_failures = parse_export(mapped, tm, settings)
    now = pd.Timestamp(as_of) if as_of is not None else pd.Timestamp.now("UTC").tz_localize(None)
    not_after = now + pd.Timedelta(hours=settings.ingest.max_future_skew_hours)
    failures = without_echoes(parse_failures, check_export(typed, not_after))
    valid = typed.drop(index=failures["row"].unique() if len(failures) else [])
    resolved, tie_failures = resolve_tasks(valid, tasks_known(wh), settings.care.match_days)
    resolved = resolved.drop(index=tie_failures["row"].unique() if len(tie_failures) else [])
    dup_failures = duplicates(resolved)
    resolved = resolved.drop(index=dup_failures["row"])
    failures = pd.concat([f for f in (failures, tie_failures, dup_failures) if len(f)] or
                         [pd.DataFrame(columns=FAILURE_COLUMNS)], ignore_index=True)
    result.failures = failures
    result.quarantined = int(failures["row"].nunique()) if len(failures) else 0
    result.valid = len(resolved)
    result.matched_by_customer = int(resolved["matched_by_customer"].sum())
    result.control_contacts = int((resolved["arm"] == "control").sum())
    spec = TABLES[TABLE]
    stored = resolved[spec.columns].astype({"recorded_at": "datetime64[us]"}).reset_index(drop=True)
    quarantined = quarantine_rows(failures, raw, path, file_hash, batch_id) if len(failures) else None
    with wh.transaction():
        ensure_columns(wh, TABLE, stored)
        if wh.has_table(QUARANTINE_TABLE):
            wh.con.execute(f"DELETE FROM {QUARANTINE_TABLE} WHERE file_hash = ?", [file_hash])
        if quarantined is not None:
            wh.append(QUARANTINE_TABLE, quarantined)
        # the import's clock is the version (outcomes have no updated_at): a newer export of a task wins
        wh.register("_outcome_frame", stored.assign(_valid_from=now.as_unit("us"), _file_order=0))
        try:
            wh.con.execute("CREATE OR REPLACE TEMP TABLE _outcome_stage AS SELECT * FROM _outcome_frame")
        finally:
            wh.unregister("_outcome_frame")
        counts = wh.merge_by_key(spec, "_outcome_stage", batch_id).get(0, MergeCounts())
        wh.con.execute("DROP TABLE _outcome_stage")
    result.inserted, result.updated, result.unchanged = counts.inserted, counts.updated, counts.unchanged
    return result


def import_report(result: ImportResult) -> str:
    """Markdown for the console, the report file and the Prefect artifact."""
    lines = [f"# Outcomes import: {Path(result.file).name}", "",
             f"{result.rows_in} rows in: {result.valid} valid ({result.inserted} new, {result.updated} updated, "
             f"{result.unchanged} unchanged), {result.quarantined} quarantined. "
             f"{result.matched_by_customer} tied to a task by customer and date."]
    if result.control_contacts:
        lines += ["", f"**Warning:** {result.control_contacts} outcomes belong to held-out (control) customers: "
                  "they were contacted although they must not be. `aftersales uplift` lists them as contamination."]
    if len(result.failures):
        lines += ["", markdown_table(result.failures.sort_values("row").head(50)[FAILURE_COLUMNS], right=["row"]),
                  "Every quarantined row is kept whole in the warehouse table `quarantine` (column `row_json`)."]
    return "\n".join(lines) + "\n"
