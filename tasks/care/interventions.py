"""From scored rows to the care team's daily task list (and the control group held out from it).

The steps, each a small pure function over DataFrames:

1. keep rows at or above ``min_probability``; pick each row's action with the playbook;
   expected value = probability x value at stake - action cost;
2. one task per customer and day: the customer's highest-expected-value risk leads (its action,
   queue, order and expected value), the other risks and every reason ride along in words;
   customers whose leading expected value is not positive are dropped (a contact that costs more
   than it can save);
3. cool-down: a customer with a task in the last ``cooldown_days`` is skipped unless their peak
   probability rose by more than ``cooldown_override_increase`` since that task;
4. control group: a seeded random ``control_share`` of the eligible customers is held out BEFORE
   capacity, so treated and control come from the same population; each control row records
   whether it would have fit its queue (``within_capacity``) for a fair comparison;
5. capacity: each queue keeps its ``queue_capacity`` highest-expected-value tasks.

``write_task_list`` stores a day idempotently (re-running a date replaces that day) and writes the
CSV/Parquet hand-out; ``task_list_summary`` is the markdown the scoring flow posts as an artifact.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.settings import ScoringSettings, Settings
from schemas.tasks import (
    CONTROL_TABLE,
    PHRASE_SEPARATOR,
    RISKS,
    TASK_TABLE,
    ControlGroup,
    ScoredRows,
    TaskList,
)
from tasks.care.export import write_handout
from tasks.care.playbook import (
    ACTION_COST,
    ACTION_ID,
    CHANNEL,
    QUEUE,
    RULE,
    SLA_HOURS,
    Playbook,
    apply_playbook,
    load_playbook,
)
from tasks.data.warehouse import Warehouse, open_warehouse
from tasks.models.explain import Language, ReasonCatalogue, default_catalogue, load_reason_catalogue, reason_phrases

EXPECTED_VALUE = TaskList.expected_value
PEAK = TaskList.peak_probability
DEFAULT_QUEUE = "default"  # key of ScoringSettings.queue_capacity used for queues it does not list
_RISK_ORDER = {r: i for i, r in enumerate(RISKS)}


# ---- small helpers ---------------------------------------------------------------------------
def scoring_settings(settings: Settings | ScoringSettings) -> ScoringSettings:
    return settings.scoring if isinstance(settings, Settings) else settings


def as_run_date(value: Any) -> pd.Timestamp:
    """The list's day as a naive midnight timestamp (what the warehouse partitions by)."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.normalize().as_unit("us")


def make_task_id(run_date: Any, customer_id: str) -> str:
    """Stable id: the same customer on the same day always gets the same task id."""
    return hashlib.sha1(f"{as_run_date(run_date):%Y-%m-%d}|{customer_id}".encode()).hexdigest()[:16]


def control_seed(seed: int, run_date: Any) -> list[int]:
    """Seed of the day's control draw: settings seed + run date."""
    return [int(seed), int(f"{as_run_date(run_date):%Y%m%d}")]


def priority_order(df: pd.DataFrame) -> pd.DataFrame:
    """Highest expected value first; ties by probability, then customer id (deterministic)."""
    return df.sort_values([EXPECTED_VALUE, ScoredRows.probability, ScoredRows.customer_id],
                          ascending=[False, False, True], kind="mergesort")


def capacity_of(queues: pd.Series, capacity: Mapping[str, int]) -> pd.Series:
    """Each row's queue capacity (the ``default`` entry for unlisted queues)."""
    missing = sorted(set(queues) - set(capacity)) if DEFAULT_QUEUE not in capacity else []
    if missing:
        raise ValueError(f"queues {missing} have no capacity and queue_capacity has no {DEFAULT_QUEUE!r} entry")
    return queues.map(lambda q: capacity.get(q, capacity.get(DEFAULT_QUEUE, 0))).astype("int64")


# ---- steps -----------------------------------------------------------------------------------
def prepare_scored(scored: pd.DataFrame, run_date: Any | None = None) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Validated scored rows of one run date, with tags/segment present, in a fixed order."""
    rows = ScoredRows.validate(scored, lazy=True).copy()
    for col in (ScoredRows.tags, ScoredRows.segment):
        if col not in rows:
            rows[col] = pd.Series(None, index=rows.index, dtype="str")
    dates = rows[ScoredRows.run_date].dt.normalize().unique()
    if run_date is None:
        if len(dates) != 1:
            raise ValueError(f"scored rows span {len(dates)} run dates; pass run_date")
        run_date = dates[0]
    day = as_run_date(run_date)
    other = [str(d)[:10] for d in dates if as_run_date(d) != day]
    if other:
        raise ValueError(f"scored rows for {other} passed to the list of {day:%Y-%m-%d}")
    rows[ScoredRows.run_date] = day
    rows = rows.sort_values([ScoredRows.customer_id, ScoredRows.risk, ScoredRows.order_id],
                            kind="mergesort", na_position="first")
    return rows.reset_index(drop=True), day


def add_expected_value(rows: pd.DataFrame) -> pd.DataFrame:
    """probability x value at stake - action cost (rows already carry their playbook action)."""
    out = rows.copy()
    out[EXPECTED_VALUE] = out[ScoredRows.probability] * out[ScoredRows.value_at_stake] - out[ACTION_COST]
    return out


def order_within_customer(rows: pd.DataFrame) -> pd.DataFrame:
    """Each customer's rows, highest expected value first (the first row leads the task)."""
    risk_rank = rows[ScoredRows.risk].map(_RISK_ORDER)
    return (rows.assign(_risk_rank=risk_rank)
            .sort_values([ScoredRows.customer_id, EXPECTED_VALUE, ScoredRows.probability, "_risk_rank",
                          ScoredRows.order_id],
                         ascending=[True, False, False, True, True], kind="mergesort", na_position="last")
            .drop(columns="_risk_rank").reset_index(drop=True))


def lead_rows(ordered: pd.DataFrame) -> pd.DataFrame:
    """One row per customer: the leading risk, plus the customer's peak probability."""
    leads = ordered.drop_duplicates(ScoredRows.customer_id, keep="first").copy()
    peak = ordered.groupby(ScoredRows.customer_id)[ScoredRows.probability].max()
    leads[PEAK] = leads[ScoredRows.customer_id].map(peak).to_numpy(float)
    return leads.reset_index(drop=True)


def last_recent(history: pd.DataFrame | None, run_date: pd.Timestamp, days: int) -> pd.Series:
    """Peak probability at each customer's latest listing in the ``days`` before ``run_date``.

    A listing exactly ``days`` ago is out of the window (the cool-down has run out); listings on
    or after ``run_date`` are ignored, so re-running a day never cools a customer down by itself.
    """
    if history is None or history.empty or days <= 0:
        return pd.Series(dtype=float)
    level = PEAK if PEAK in history else ScoredRows.probability
    h = history[[TaskList.customer_id, TaskList.run_date, level]].copy()
    h[TaskList.run_date] = pd.to_datetime(h[TaskList.run_date]).dt.normalize()
    recent = h[(h[TaskList.run_date] < run_date) & (h[TaskList.run_date] > run_date - pd.Timedelta(days=days))]
    recent = recent.sort_values([TaskList.customer_id, TaskList.run_date], kind="mergesort")
    return recent.groupby(TaskList.customer_id)[level].last().astype(float)


def cooling_mask(leads: pd.DataFrame, history: pd.DataFrame | None, run_date: pd.Timestamp,
                 cfg: ScoringSettings) -> np.ndarray:
    """True for customers listed within ``cooldown_days`` whose risk has not risen enough since."""
    last = last_recent(history, run_date, cfg.cooldown_days)
    before = leads[ScoredRows.customer_id].map(last).astype(float)
    rose = (leads[PEAK] - before) > cfg.cooldown_override_increase
    return (before.notna() & ~rose).to_numpy(bool)


def draw_control(customer_ids: pd.Series, share: float, seed: list[int]) -> np.ndarray:
    """Hold out round(share x n) of the customers, chosen at random with a fixed seed."""
    ids = np.sort(customer_ids.unique().astype(str))
    n_control = min(len(ids), math.floor(share * len(ids) + 0.5))
    if n_control <= 0:
        return np.zeros(len(customer_ids), dtype=bool)
    picked = np.random.default_rng(seed).choice(len(ids), size=n_control, replace=False)
    return customer_ids.isin(set(ids[picked])).to_numpy(bool)


def apply_capacity(leads: pd.DataFrame, capacity: Mapping[str, int]) -> pd.DataFrame:
    """Each queue's ``capacity`` highest-expected-value tasks."""
    ordered = priority_order(leads)
    position = ordered.groupby(QUEUE, sort=False).cumcount()
    return ordered[(position < capacity_of(ordered[QUEUE], capacity)).to_numpy()]


def within_capacity(control: pd.DataFrame, tasks: pd.DataFrame, capacity: Mapping[str, int]) -> np.ndarray:
    """Would each held-out customer have made their queue's cut? (queue not full, or EV >= its last task)."""
    if control.empty:
        return np.zeros(0, dtype=bool)
    counts = tasks.groupby(QUEUE).size()
    cutoff = tasks.groupby(QUEUE)[EXPECTED_VALUE].min()
    queue = control[QUEUE]
    full = queue.map(counts).fillna(0).to_numpy() >= capacity_of(queue, capacity).to_numpy()
    above = (control[EXPECTED_VALUE] >= queue.map(cutoff)).fillna(False).to_numpy(bool)
    return ~full | above


# ---- the people-facing rows ------------------------------------------------------------------
def describe(leads: pd.DataFrame, ordered: pd.DataFrame, playbook: Playbook, catalogue: ReasonCatalogue,
             language: Language) -> pd.DataFrame:
    """TaskList rows for the given leads (in their order): words, ranks, due dates, merged risks."""
    columns = list(TaskList.to_schema().columns)
    if leads.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    chosen = ordered[ordered[ScoredRows.customer_id].isin(set(leads[ScoredRows.customer_id]))].reset_index(drop=True)
    merged = merge_customers(chosen, catalogue, language)
    out = leads.reset_index(drop=True)
    ids = out[ScoredRows.customer_id]
    day = as_run_date(out[ScoredRows.run_date].iloc[0])
    frame = pd.DataFrame({
        TaskList.task_id: [make_task_id(day, c) for c in ids],
        TaskList.run_date: out[ScoredRows.run_date],
        TaskList.rank: np.arange(1, len(out) + 1),
        TaskList.queue: out[QUEUE],
        TaskList.queue_rank: out.groupby(QUEUE, sort=False).cumcount().to_numpy() + 1,
        TaskList.action: [playbook.action_text(a, language) for a in out[ACTION_ID]],
        TaskList.channel: out[CHANNEL],
        TaskList.due_by: out[ScoredRows.run_date] + pd.to_timedelta(out[SLA_HOURS], unit="h"),
        TaskList.customer_id: ids,
        TaskList.order_id: out[ScoredRows.order_id],
        TaskList.risk: [catalogue.risks[r].text(language) for r in out[ScoredRows.risk]],
        TaskList.probability: out[ScoredRows.probability].round(2),
        TaskList.value_at_stake: out[ScoredRows.value_at_stake].round(2),
        TaskList.expected_value: out[EXPECTED_VALUE].round(2),
        **{col: [merged[c][col] for c in ids] for col in (TaskList.why, TaskList.other_risks,
                                                          TaskList.related_orders, TaskList.model_versions,
                                                          TaskList.risks)},
        TaskList.tags: out[ScoredRows.tags],
        TaskList.segment: out[ScoredRows.segment],
        TaskList.risk_code: out[ScoredRows.risk],
        TaskList.action_id: out[ACTION_ID],
        TaskList.rule: out[RULE],
        TaskList.action_cost: out[ACTION_COST],
        TaskList.peak_probability: out[PEAK],
    })
    return frame[columns]


def merge_customers(chosen: pd.DataFrame, catalogue: ReasonCatalogue, language: Language) -> dict[str, dict[str, Any]]:
    """Each customer's rows (sorted by customer, lead first) folded into the task's merged text columns.

    Plain Python over column lists: one pass, no per-group DataFrame (thousands of customers a day).
    """
    phrases_per_row = reason_phrases(chosen, catalogue, language)
    cols = [chosen[c].tolist() for c in (ScoredRows.customer_id, ScoredRows.risk, ScoredRows.probability,
                                          ScoredRows.order_id, ScoredRows.model_version)]
    acc: dict[str, dict[str, Any]] = {}
    for (cid, risk, prob, order, version), texts in zip(zip(*cols, strict=True), phrases_per_row, strict=True):
        order = None if pd.isna(order) else order
        entry = acc.get(cid)
        if entry is None:  # the lead row
            entry = acc[cid] = {"why": {}, "others": {}, "orders": {}, "versions": {}, "risks": {}, "lead": order}
        else:
            entry["others"][f"{catalogue.risks[risk].text(language)} {prob:.0%}"] = None
            if order is not None and order != entry["lead"]:
                entry["orders"][order] = None
        entry["why"].update(dict.fromkeys(texts))
        entry["versions"][f"{risk}={version}"] = None
        entry["risks"][risk] = None
    return {cid: {
        TaskList.why: PHRASE_SEPARATOR.join(e["why"]) or catalogue.no_reason.text(language),
        TaskList.other_risks: PHRASE_SEPARATOR.join(e["others"]) or None,
        TaskList.related_orders: ", ".join(e["orders"]) or None,
        TaskList.model_versions: ", ".join(e["versions"]),
        TaskList.risks: ",".join(e["risks"]),
    } for cid, e in acc.items()}


# ---- the whole step --------------------------------------------------------------------------
def build_task_list(
    scored: pd.DataFrame,
    playbook: Playbook,
    settings: Settings | ScoringSettings,
    history: pd.DataFrame | None = None,
    run_date: Any | None = None,
    *,
    catalogue: ReasonCatalogue | None = None,
    held_out: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The day's ``TaskList`` and ``ControlGroup`` from ``ScoredRows``.

    ``history``: earlier task lists (at least customer_id, run_date, peak_probability or
    probability) for the cool-down. ``held_out``: earlier control groups, optional; a customer
    held out within ``cooldown_days`` sits the same cool-down as a contacted one, so yesterday's
    control is not contacted today and the comparison stays clean.
    """
    cfg = scoring_settings(settings)
    catalogue = catalogue or default_catalogue()
    language: Language = cfg.language
    rows, day = prepare_scored(scored, run_date)
    rows = rows[rows[ScoredRows.probability] >= cfg.min_probability]
    rows = add_expected_value(apply_playbook(rows, playbook, catalogue))
    ordered = order_within_customer(rows)
    leads = lead_rows(ordered)
    leads = leads[leads[EXPECTED_VALUE] > 0]
    leads = leads[~cooling_mask(leads, history, day, cfg) & ~cooling_mask(leads, held_out, day, cfg)]
    is_control = draw_control(leads[ScoredRows.customer_id], cfg.control_share, control_seed(cfg.seed, day))
    treated = apply_capacity(leads[~is_control], cfg.queue_capacity)
    control = priority_order(leads[is_control])
    control_flag = within_capacity(control, treated, cfg.queue_capacity)
    tasks = TaskList.validate(describe(treated, ordered, playbook, catalogue, language), lazy=True)
    held = describe(control, ordered, playbook, catalogue, language)
    held[ControlGroup.within_capacity] = control_flag
    return tasks.reset_index(drop=True), ControlGroup.validate(held, lazy=True).reset_index(drop=True)


# ---- storing ---------------------------------------------------------------------------------
def load_history(wh: Warehouse, run_date: Any,
                 settings: Settings | ScoringSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Task lists and control groups of the ``cooldown_days`` before ``run_date``."""
    cfg = scoring_settings(settings)
    day = as_run_date(run_date)
    start = (day - pd.Timedelta(days=cfg.cooldown_days)).to_pydatetime()
    out = []
    for table in (TASK_TABLE, CONTROL_TABLE):
        if not wh.has_table(table):
            out.append(pd.DataFrame(columns=[TaskList.customer_id, TaskList.run_date, PEAK]))
            continue
        out.append(wh.query(f'SELECT * FROM "{table}" WHERE "{TaskList.run_date}" > ? AND "{TaskList.run_date}" < ?',
                            [start, day.to_pydatetime()]))
    return out[0], out[1]


def _validated(model: type[pa.DataFrameModel], df: pd.DataFrame, day: pd.Timestamp) -> pd.DataFrame:
    """Validated, dated ``day``, timestamps in microseconds (the warehouse's TIMESTAMP)."""
    out = model.validate(df, lazy=True)
    wrong = out[out[TaskList.run_date].dt.normalize() != day]
    if len(wrong):
        raise ValueError(f"{len(wrong)} rows of {model.__name__} are not dated {day:%Y-%m-%d}")
    return out.astype({TaskList.run_date: "datetime64[us]", TaskList.due_by: "datetime64[us]"})


def _write_atomically(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_task_list(wh: Warehouse, tasks: pd.DataFrame, control: pd.DataFrame, run_date: Any,
                    out_dir: Path | str) -> dict[str, Path]:
    """Store the day's list and control group (re-running a date replaces it) and write the hand-out.

    Returns the paths of ``<out_dir>/<run_date>/tasks.csv`` (UTF-8 with BOM, so spreadsheet tools
    show Chinese correctly) and ``tasks.parquet``. The control group is only stored in the
    warehouse: it must never reach an agent.
    """
    day = as_run_date(run_date)
    tasks = _validated(TaskList, tasks, day)
    control = _validated(ControlGroup, control, day)
    where = {TaskList.run_date: day.to_pydatetime()}
    wh.replace_partition(TASK_TABLE, tasks, where=where)
    wh.replace_partition(CONTROL_TABLE, control, where=where)
    folder = Path(out_dir) / f"{day:%Y-%m-%d}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": folder / "tasks.parquet", **write_handout(wh, tasks, folder)}  # agent + analysts' CSV
    _write_atomically(paths["parquet"], lambda p: tasks.to_parquet(p, index=False))
    return paths


def task_list_summary(tasks: pd.DataFrame, control: pd.DataFrame | None = None) -> str:
    """Markdown: tasks and expected value per queue, and per queue and action."""
    if tasks.empty:
        held = "" if control is None else f" {len(control)} customers held out as control."
        return f"## Care tasks\n\nNo tasks today.{held}\n"
    day = as_run_date(tasks[TaskList.run_date].iloc[0])
    lines = [f"## Care tasks for {day:%Y-%m-%d}", "",
             f"**{len(tasks)} tasks** in {tasks[TaskList.queue].nunique()} queues, "
             f"expected value {tasks[TaskList.expected_value].sum():,.0f}."]
    if control is not None:
        fair = int(control[ControlGroup.within_capacity].sum()) if len(control) else 0
        lines[-1] += f" {len(control)} customers held out as control ({fair} within capacity)."
    by_queue = tasks.groupby(TaskList.queue).agg(tasks=(TaskList.task_id, "size"),
                                                 expected_value=(TaskList.expected_value, "sum"))
    lines += ["", "| queue | tasks | expected value |", "|---|---:|---:|"]
    lines += [f"| {r.Index} | {r.tasks} | {r.expected_value:,.0f} |" for r in by_queue.itertuples()]
    by_action = (tasks.groupby([TaskList.queue, TaskList.action, TaskList.channel]).size()
                 .rename("tasks").reset_index().sort_values([TaskList.queue, "tasks"], ascending=[True, False]))
    lines += ["", "| queue | action | channel | tasks |", "|---|---|---|---:|"]
    lines += [f"| {r.queue} | {r.action} | {r.channel} | {r.tasks} |" for r in by_action.itertuples()]
    return "\n".join(lines) + "\n"


# ---- Prefect tasks ---------------------------------------------------------------------------
@task(name="build-task-list", cache_policy=NO_CACHE)
def build_task_list_task(scored: pd.DataFrame, settings: Settings, run_date: date | datetime | str,
                         history: pd.DataFrame | None = None,
                         held_out: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    catalogue = load_reason_catalogue(settings.reason_phrases_file)
    playbook = load_playbook(settings.playbook_file, catalogue)
    return build_task_list(scored, playbook, settings, history, run_date, catalogue=catalogue, held_out=held_out)


@task(name="write-task-list", cache_policy=NO_CACHE)
def write_task_list_task(settings: Settings, tasks: pd.DataFrame, control: pd.DataFrame,
                         run_date: date | datetime | str, out_dir: Path | None = None) -> dict[str, Path]:
    with open_warehouse(settings) as wh:
        return write_task_list(wh, tasks, control, run_date, out_dir or settings.reports_dir / "tasks")
