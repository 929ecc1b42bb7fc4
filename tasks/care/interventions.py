"""From scored rows to the care team's daily task list (and the control group held out from it).

The steps, each a small pure function over DataFrames:

1. keep rows at or above ``min_probability``; pick each row's action with the playbook;
   expected value = probability x value at stake x effect - action cost, where the value at stake
   is capped at ``value_cap_multiple`` x the day's median (a low-probability big spender cannot
   outrank a likely loss on value alone) and the effect is the action's prior from the playbook,
   shrunk towards the measured uplift of that risk and action once there is one (``effect_used``).
   A risk with no value at stake anywhere in the day (an export without amounts) is ranked by
   probability x effect instead, its action cost unweighed: a cost in money cannot be set against
   a value nobody knows, and the list must not go empty for want of prices;
2. one task per customer and day: the customer's highest-expected-value risk leads (its action,
   queue, order and expected value), the other risks and every reason ride along in words;
   customers whose leading expected value is not positive are dropped (a contact that costs more
   than it can save, or an action measured to backfire);
3. cool-down: a customer with a task in the last ``cooldown_days`` is skipped unless their peak
   probability rose by more than ``cooldown_override_increase`` since that task;
4. control group, held for the whole outcome window: a customer already held out for the leading
   risk (``control_assignments``; with ``holdout = universal`` for any risk) stays out; otherwise a
   seeded hash of (seed, customer, risk, assignment period) below ``control_share`` holds them out
   now, until run date + that risk's outcome window (a customer listed for the risk within its
   window is not drawn: they are already treated). The draw comes BEFORE capacity, so treated and
   control come from the same population; each control row records whether it would have fit its
   queue (``within_capacity``). A treated customer's task never mentions a risk they are held out for;
5. capacity: each queue keeps its ``queue_capacity`` highest-expected-value tasks.

``write_task_list`` stores a day idempotently (re-running a date replaces that day) and writes the
CSV/Parquet hand-out; ``task_list_summary`` is the markdown the scoring flow posts as an artifact.
"""

from __future__ import annotations

import hashlib
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

from schemas.settings import CareSettings, LabelSettings, ScoringSettings, Settings
from schemas.tasks import (
    ALL_RISKS,
    ASSIGNMENT_TABLE,
    CONTROL_TABLE,
    PHRASE_SEPARATOR,
    RISKS,
    TASK_TABLE,
    ControlAssignments,
    ControlGroup,
    ScoredRows,
    TaskList,
)
from tasks.care.export import write_handout
from tasks.care.playbook import (
    ACTION_COST,
    ACTION_ID,
    CHANNEL,
    EFFECT_PRIOR,
    EFFECT_PRIOR_SD,
    QUEUE,
    RULE,
    SLA_HOURS,
    Playbook,
    apply_playbook,
    load_playbook,
)
from tasks.data.warehouse import Warehouse, open_warehouse
from tasks.models.explain import Language, ReasonCatalogue, default_catalogue, load_reason_catalogue, reason_phrases
from tasks.templates import markdown_table

EXPECTED_VALUE = TaskList.expected_value
PEAK = TaskList.peak_probability
DEFAULT_QUEUE = "default"  # key of ScoringSettings.queue_capacity used for queues it does not list
_RISK_ORDER = {r: i for i, r in enumerate(RISKS)}
VALUE_RAW = "value_raw"  # the scored value at stake before the cap
EFFECTS_COLUMNS = ["risk", "action_id", "effect", "se", "n_treated", "n_control", "measured_at"]


# ---- small helpers ---------------------------------------------------------------------------
def scoring_settings(settings: Settings | ScoringSettings) -> ScoringSettings:
    return settings.scoring if isinstance(settings, Settings) else settings


def label_settings(settings: Settings | ScoringSettings) -> LabelSettings:
    return settings.labels if isinstance(settings, Settings) else LabelSettings()


def outcome_windows(labels: LabelSettings) -> dict[str, int]:
    """Days after a contact within which each risk's bad outcome is looked for (and control is held)."""
    return {"return": labels.return_window_days, "negative_review": labels.review_window_days,
            "late_delivery": labels.review_window_days, "churn": labels.churn_horizon_days}


def hold_days(risk: str, labels: LabelSettings, scope: str) -> int:
    """How long a held-out customer stays uncontacted: the risk's window, the longest for a universal hold."""
    windows = outcome_windows(labels)
    return max(windows.values()) if scope == "universal" else windows[risk]


def assignment_period(run_date: Any, days: int) -> int:
    return int((as_run_date(run_date) - pd.Timestamp("1970-01-01")).days // max(1, int(days)))


def hash_uniform(seed: int, customer_id: str, key: str, period: int) -> float:
    """A stable number in [0, 1): the same customer, risk and period always draw the same."""
    digest = hashlib.sha256(f"{int(seed)}|{customer_id}|{key}|{period}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def as_run_date(value: Any) -> pd.Timestamp:
    """The list's day as a naive midnight timestamp (what the warehouse partitions by)."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.normalize().as_unit("us")


def make_task_id(run_date: Any, customer_id: str) -> str:
    """Stable id: the same customer on the same day always gets the same task id."""
    return hashlib.sha1(f"{as_run_date(run_date):%Y-%m-%d}|{customer_id}".encode()).hexdigest()[:16]


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


def cap_values(values: pd.Series, multiple: float) -> pd.Series:
    """Values above ``multiple`` x the median positive value are cut back to it (0 or less: no cap)."""
    positive = values[values > 0]
    if multiple <= 0 or positive.empty:
        return values.astype(float)
    return values.clip(upper=float(multiple * positive.median())).astype(float)


def shrink_effects(prior: pd.Series, prior_sd: pd.Series, measured: pd.Series,
                   se: pd.Series) -> pd.Series:
    """Normal-normal shrinkage: precision-weighted mean of the prior and the measured effect.

    With no measurement (NaN) the prior stands; a measurement as precise as the prior gets half
    the weight; thousands of customers outweigh any prior.
    """
    w_prior = 1.0 / prior_sd.astype(float) ** 2
    w_data = (1.0 / se.astype(float) ** 2).where(measured.notna() & (se > 0), 0.0)
    mixed = (w_prior * prior + w_data * measured.fillna(0.0)) / (w_prior + w_data)
    return mixed.clip(-1.0, 1.0)


def effect_used(rows: pd.DataFrame, effects: pd.DataFrame | None) -> tuple[pd.Series, pd.Series]:
    """Each row's effect (prior, or prior shrunk to the measured uplift of its risk and action) and its source."""
    prior, prior_sd = rows[EFFECT_PRIOR].astype(float), rows[EFFECT_PRIOR_SD].astype(float)
    if effects is None or effects.empty:
        return prior, prior.map(lambda e: f"playbook prior {e:.0%}")
    measured = rows[[ScoredRows.risk, ACTION_ID]].merge(
        effects.rename(columns={"risk": ScoredRows.risk, "action_id": ACTION_ID}), how="left",
        on=[ScoredRows.risk, ACTION_ID])
    measured.index = rows.index
    used = shrink_effects(prior, prior_sd, measured["effect"], measured["se"])
    source = [f"playbook prior {p:.0%}" if pd.isna(m) or not s > 0 else
              f"prior {p:.0%}, measured {m:.0%} (se {s:.0%}, {int(n):,} customers) -> {u:.0%}"
              for p, m, s, n, u in zip(prior, measured["effect"], measured["se"].fillna(0),
                                       measured["n_treated"].fillna(0) + measured["n_control"].fillna(0),
                                       used, strict=True)]
    return used, pd.Series(source, index=rows.index, dtype="str")


def value_unknown(rows: pd.DataFrame) -> pd.Series:
    """True for the rows of a risk none of whose rows that day has a value at stake (no amounts in the data)."""
    known = rows[ScoredRows.value_at_stake].astype(float).gt(0).groupby(rows[ScoredRows.risk]).transform("any")
    return ~known.astype(bool)


def add_expected_value(rows: pd.DataFrame, cfg: ScoringSettings | None = None,
                       effects: pd.DataFrame | None = None) -> pd.DataFrame:
    """probability x value at stake (capped) x effect - action cost (rows carry their playbook action).

    Without any value at stake for a risk that day, probability x effect (see the module's step 1).
    """
    cfg = cfg or ScoringSettings()
    out = rows.copy()
    out[VALUE_RAW] = out[ScoredRows.value_at_stake].astype(float)
    out[ScoredRows.value_at_stake] = cap_values(out[VALUE_RAW], cfg.value_cap_multiple)
    out[TaskList.effect], out[TaskList.effect_source] = effect_used(out, effects)
    saved_share = out[ScoredRows.probability] * out[TaskList.effect]
    out[EXPECTED_VALUE] = (saved_share * out[ScoredRows.value_at_stake] - out[ACTION_COST]).where(
        ~value_unknown(out), saved_share)
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


def active_holds(assignments: pd.DataFrame | None, run_date: pd.Timestamp) -> pd.DataFrame:
    """Assignments that hold on ``run_date`` (assigned before it, window not over), earliest per customer/risk."""
    cols = list(ControlAssignments.to_schema().columns)
    if assignments is None or assignments.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    a = assignments.copy()
    a["assigned_on"] = pd.to_datetime(a["assigned_on"]).dt.normalize()
    a["window_end"] = pd.to_datetime(a["window_end"])
    a = a[(a["assigned_on"] < run_date) & (a["window_end"] > run_date)]
    return a.sort_values("assigned_on", kind="mergesort").drop_duplicates(["customer_id", "risk"])


def held_mask(customers: pd.Series, risks: pd.Series, holds: pd.DataFrame) -> np.ndarray:
    """True where the customer is held out for that risk, or for everything."""
    if holds.empty:
        return np.zeros(len(customers), dtype=bool)
    pairs = set(zip(holds["customer_id"].astype(str), holds["risk"].astype(str), strict=True))
    return np.fromiter(((c, r) in pairs or (c, ALL_RISKS) in pairs
                        for c, r in zip(customers.astype(str), risks.astype(str), strict=True)),
                       dtype=bool, count=len(customers))


def recently_treated(history: pd.DataFrame | None, leads: pd.DataFrame, run_date: pd.Timestamp,
                     labels: LabelSettings) -> np.ndarray:
    """True for leads listed for the same risk within that risk's outcome window: already treated, no draw."""
    if history is None or history.empty or TaskList.risk_code not in history:
        return np.zeros(len(leads), dtype=bool)
    h = history[[TaskList.customer_id, TaskList.run_date, TaskList.risk_code]].copy()
    h[TaskList.run_date] = pd.to_datetime(h[TaskList.run_date]).dt.normalize()
    windows = outcome_windows(labels)
    since = run_date - pd.to_timedelta(h[TaskList.risk_code].map(windows).fillna(0), unit="D")
    h = h[(h[TaskList.run_date] < run_date) & (h[TaskList.run_date] >= since)]
    pairs = set(zip(h[TaskList.customer_id].astype(str), h[TaskList.risk_code].astype(str), strict=True))
    return np.fromiter(((c, r) in pairs for c, r in zip(leads[ScoredRows.customer_id].astype(str),
                                                         leads[ScoredRows.risk].astype(str), strict=True)),
                       dtype=bool, count=len(leads))


def draw_control(leads: pd.DataFrame, cfg: ScoringSettings, run_date: pd.Timestamp) -> np.ndarray:
    """Seeded hash of (seed, customer, risk or ``all``, period) below ``control_share``: held out."""
    if cfg.control_share <= 0 or leads.empty:
        return np.zeros(len(leads), dtype=bool)
    period = assignment_period(run_date, cfg.assignment_period_days)
    keys = (leads[ScoredRows.risk].astype(str) if cfg.holdout == "per_risk"
            else pd.Series(ALL_RISKS, index=leads.index))
    draws = [hash_uniform(cfg.seed, c, k, period) for c, k in zip(leads[ScoredRows.customer_id].astype(str), keys,
                                                                    strict=True)]
    return np.asarray(draws) < cfg.control_share


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
        TaskList.effect: out[TaskList.effect].astype(float).round(4),
        TaskList.effect_source: out[TaskList.effect_source],
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
    assignments: pd.DataFrame | None = None,
    effects: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The day's ``TaskList`` and ``ControlGroup`` from ``ScoredRows``.

    ``history``: earlier task lists (at least customer_id, run_date, peak_probability or
    probability; ``risk_code`` to know who is already treated) for the cool-down. ``held_out``:
    earlier control groups, optional; a customer held out within ``cooldown_days`` sits the same
    cool-down as a contacted one. ``assignments``: stored ``ControlAssignments``; a customer held
    out for a risk stays out until its ``window_end``. ``effects``: measured uplift per risk and
    action (``EFFECTS_COLUMNS``) that the playbook's prior effects are shrunk towards.
    """
    cfg = scoring_settings(settings)
    labels = label_settings(settings)
    catalogue = catalogue or default_catalogue()
    language: Language = cfg.language
    rows, day = prepare_scored(scored, run_date)
    rows = rows[rows[ScoredRows.probability] >= cfg.min_probability]
    rows = add_expected_value(apply_playbook(rows, playbook, catalogue), cfg, effects)
    ordered = order_within_customer(rows)
    leads = lead_rows(ordered)
    funnel = {"above the floor": len(leads)}
    leads = leads[leads[EXPECTED_VALUE] > 0]
    funnel["with a positive expected value"] = len(leads)
    leads = leads[~cooling_mask(leads, history, day, cfg) & ~cooling_mask(leads, held_out, day, cfg)]
    funnel["not cooling down"] = len(leads)
    holds = active_holds(assignments, day)
    already_held = held_mask(leads[ScoredRows.customer_id], leads[ScoredRows.risk], holds)
    drawn = ~already_held & ~recently_treated(history, leads, day, labels) & draw_control(leads, cfg, day)
    is_control = already_held | drawn
    treated = apply_capacity(leads[~is_control], cfg.queue_capacity)
    # a treated customer's task never mentions (nor acts on) a risk they are held out for
    ordered = ordered[~held_mask(ordered[ScoredRows.customer_id], ordered[ScoredRows.risk], holds)
                      | ordered[ScoredRows.customer_id].isin(set(leads.loc[is_control, ScoredRows.customer_id]))]
    control = priority_order(leads[is_control])
    control_flag = within_capacity(control, treated, cfg.queue_capacity)
    tasks = TaskList.validate(describe(treated, ordered, playbook, catalogue, language), lazy=True)
    held = describe(control, ordered, playbook, catalogue, language)
    held[ControlGroup.within_capacity] = control_flag
    held = add_hold_columns(held, control, holds, drawn[is_control], day, cfg, labels)
    tasks = tasks.reset_index(drop=True)
    # where the day's customers went, step by step (the CLI says it: "4 tasks" of 2,417 scored needs a why)
    tasks.attrs["funnel"] = funnel | {"held out as control": len(control), "tasks within capacity": len(tasks)}
    return tasks, ControlGroup.validate(held, lazy=True).reset_index(drop=True)


def add_hold_columns(held: pd.DataFrame, control: pd.DataFrame, holds: pd.DataFrame, new: np.ndarray,
                     day: pd.Timestamp, cfg: ScoringSettings, labels: LabelSettings) -> pd.DataFrame:
    """held_for, assigned_on, held_until of each control row: today's new draws, or the hold they sit in."""
    out = held.copy()
    if out.empty:
        for col, dtype in ((ControlGroup.held_for, "str"), (ControlGroup.assigned_on, "datetime64[us]"),
                           (ControlGroup.held_until, "datetime64[us]")):
            out[col] = pd.Series(dtype=dtype)
        return out
    key = (control[ScoredRows.risk].astype(str).to_numpy() if cfg.holdout == "per_risk"
           else np.full(len(control), ALL_RISKS))
    lookup = {(c, r): (a, w) for c, r, a, w in zip(holds.get("customer_id", []), holds.get("risk", []),
                                                      holds.get("assigned_on", []), holds.get("window_end", []),
                                                      strict=True)}
    held_for, since, until = [], [], []
    for customer, risk, k, is_new in zip(control[ScoredRows.customer_id].astype(str),
                                         control[ScoredRows.risk].astype(str), key, new, strict=True):
        existing = lookup.get((customer, risk)) or lookup.get((customer, ALL_RISKS))
        if is_new or existing is None:
            held_for.append(str(k))
            since.append(day)
            until.append(day + pd.Timedelta(days=hold_days(risk, labels, cfg.holdout)))
        else:
            held_for.append(risk if (customer, risk) in lookup else ALL_RISKS)
            since.append(pd.Timestamp(existing[0]))
            until.append(pd.Timestamp(existing[1]))
    out[ControlGroup.held_for] = held_for
    out[ControlGroup.assigned_on] = pd.to_datetime(pd.Series(since, index=out.index)).astype("datetime64[us]")
    out[ControlGroup.held_until] = pd.to_datetime(pd.Series(until, index=out.index)).astype("datetime64[us]")
    return out


def new_assignments(control: pd.DataFrame, run_date: Any, cfg: ScoringSettings) -> pd.DataFrame:
    """``ControlAssignments`` rows of the customers first held out on ``run_date``."""
    day = as_run_date(run_date)
    fresh = control
    if len(control):
        fresh = control[pd.to_datetime(control[ControlGroup.assigned_on]).dt.normalize() == day]
    frame = pd.DataFrame({
        "customer_id": fresh[ControlGroup.customer_id].astype(str),
        "risk": fresh[ControlGroup.held_for].astype(str),
        "period": assignment_period(day, cfg.assignment_period_days),
        "assigned_on": day,
        "window_end": pd.to_datetime(fresh[ControlGroup.held_until]),
        "scope": cfg.holdout,
        "task_id": fresh[ControlGroup.task_id].astype(str),
    }, columns=list(ControlAssignments.to_schema().columns))
    frame = frame.drop_duplicates(["customer_id", "risk"]).reset_index(drop=True)
    return ControlAssignments.validate(frame, lazy=True).astype(
        {"assigned_on": "datetime64[us]", "window_end": "datetime64[us]"})


# ---- storing ---------------------------------------------------------------------------------
def load_history(wh: Warehouse, run_date: Any,
                 settings: Settings | ScoringSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Task lists and control groups before ``run_date``: the cool-down or the longest outcome window.

    The cool-down reads the last ``cooldown_days``; the control draw reads whether a customer was
    already listed for a risk within that risk's outcome window.
    """
    cfg = scoring_settings(settings)
    day = as_run_date(run_date)
    days = max(cfg.cooldown_days, *outcome_windows(label_settings(settings)).values())
    start = (day - pd.Timedelta(days=days)).to_pydatetime()
    out = []
    for table in (TASK_TABLE, CONTROL_TABLE):
        if not wh.has_table(table):
            out.append(pd.DataFrame(columns=[TaskList.customer_id, TaskList.run_date, PEAK]))
            continue
        out.append(wh.query(f'SELECT * FROM "{table}" WHERE "{TaskList.run_date}" > ? AND "{TaskList.run_date}" < ?',
                            [start, day.to_pydatetime()]))
    return out[0], out[1]


def load_assignments(wh: Warehouse, run_date: Any) -> pd.DataFrame:
    """Stored control assignments whose hold has not ended by ``run_date``."""
    if not wh.has_table(ASSIGNMENT_TABLE):
        return pd.DataFrame(columns=list(ControlAssignments.to_schema().columns))
    return wh.query(f'SELECT * FROM "{ASSIGNMENT_TABLE}" WHERE window_end > ? AND assigned_on < ?',
                    [as_run_date(run_date).to_pydatetime()] * 2)


def load_effects(wh: Warehouse, care: CareSettings | None = None) -> pd.DataFrame:
    """The latest measured effect per risk and action (written by the uplift flow), or an empty frame."""
    table = (care or CareSettings()).effects_table
    if not wh.has_table(table):
        return pd.DataFrame(columns=EFFECTS_COLUMNS)
    return wh.query(f'SELECT * FROM "{table}"')


def ensure_columns(wh: Warehouse, table: str, frame: pd.DataFrame) -> None:
    """Add columns a newer contract has to a table an older version created (never drops or renames)."""
    if not wh.has_table(table):
        return
    present = set(wh.columns(table))
    for column, dtype in frame.dtypes.items():
        if column not in present:
            kind = ("TIMESTAMP" if "datetime" in str(dtype) else "BOOLEAN" if "bool" in str(dtype)
                    else "DOUBLE" if "float" in str(dtype) else "BIGINT" if "int" in str(dtype) else "VARCHAR")
            wh.con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {kind}')


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
                    out_dir: Path | str, settings: Settings | ScoringSettings | None = None) -> dict[str, Path]:
    """Store the day's list, control group and new control assignments (re-running a date replaces
    them) and write the hand-out.

    Returns the paths of ``<out_dir>/<run_date>/tasks.csv`` (UTF-8 with BOM, so spreadsheet tools
    show Chinese correctly) and ``tasks.parquet``. The control group is only stored in the
    warehouse: it must never reach an agent.
    """
    day = as_run_date(run_date)
    cfg = scoring_settings(settings) if settings is not None else ScoringSettings()
    tasks = _validated(TaskList, tasks, day)
    control = _validated(ControlGroup, control, day).astype(
        {ControlGroup.assigned_on: "datetime64[us]", ControlGroup.held_until: "datetime64[us]"})
    assignments = new_assignments(control, day, cfg)
    where = {TaskList.run_date: day.to_pydatetime()}
    for table, frame in ((TASK_TABLE, tasks), (CONTROL_TABLE, control), (ASSIGNMENT_TABLE, assignments)):
        ensure_columns(wh, table, frame)
    wh.replace_partition(TASK_TABLE, tasks, where=where)
    wh.replace_partition(CONTROL_TABLE, control, where=where)
    wh.replace_partition(ASSIGNMENT_TABLE, assignments, where={"assigned_on": day.to_pydatetime()})
    folder = Path(out_dir) / f"{day:%Y-%m-%d}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": folder / "tasks.parquet", **write_handout(wh, tasks, folder)}  # agent + analysts' CSV
    _write_atomically(paths["parquet"], lambda p: tasks.to_parquet(p, index=False))
    return paths


def unpriced_risks(tasks: pd.DataFrame) -> set[str]:
    """Risks listed with no value at stake (only a day without amounts lists those: see add_expected_value)."""
    if tasks.empty or TaskList.risk_code not in tasks:
        return set()
    zero = tasks[TaskList.value_at_stake].astype(float).le(0).groupby(tasks[TaskList.risk_code]).all()
    return set(zero[zero].index.astype(str))


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
    if TaskList.effect_source in tasks:
        measured = int(tasks[TaskList.effect_source].str.contains("measured", regex=False).sum())
        lines[-1] += (f" Expected value = probability x value at stake x effect - cost; the effect is the "
                      f"playbook's prior for {len(tasks) - measured} tasks and the prior pulled towards measured "
                      f"uplift for {measured} (column effect_source).")
    unpriced = sorted(unpriced_risks(tasks))
    if unpriced:
        lines[-1] += (f" The data carries no amounts for {', '.join(unpriced)}: those tasks are ranked by "
                      f"probability x effect, and the action's cost is not weighed against them.")
    by_queue = tasks.groupby(TaskList.queue, as_index=False).agg(
        tasks=(TaskList.task_id, "size"), **{"expected value": (TaskList.expected_value, "sum")})
    by_action = (tasks.groupby([TaskList.queue, TaskList.action, TaskList.channel]).size()
                 .rename("tasks").reset_index().sort_values([TaskList.queue, "tasks"], ascending=[True, False]))
    lines += ["", markdown_table(by_queue, floatfmt=",.0f"), markdown_table(by_action)]
    return "\n".join(lines)


# ---- Prefect tasks ---------------------------------------------------------------------------
@task(name="build-task-list", cache_policy=NO_CACHE)
def build_task_list_task(scored: pd.DataFrame, settings: Settings, run_date: date | datetime | str,
                         history: pd.DataFrame | None = None,
                         held_out: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The day's list; reads the holds that still run and the measured effects from the warehouse."""
    catalogue = load_reason_catalogue(settings.reason_phrases_file)
    playbook = load_playbook(settings.playbook_file, catalogue)
    with open_warehouse(settings) as wh:
        assignments, effects = load_assignments(wh, run_date), load_effects(wh, settings.care)
    return build_task_list(scored, playbook, settings, history, run_date, catalogue=catalogue, held_out=held_out,
                           assignments=assignments, effects=effects)


@task(name="write-task-list", cache_policy=NO_CACHE)
def write_task_list_task(settings: Settings, tasks: pd.DataFrame, control: pd.DataFrame,
                         run_date: date | datetime | str, out_dir: Path | None = None) -> dict[str, Path]:
    with open_warehouse(settings) as wh:
        return write_task_list(wh, tasks, control, run_date, out_dir or settings.reports_dir / "tasks", settings)
