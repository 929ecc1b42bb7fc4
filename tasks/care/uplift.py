"""Did the care tasks help? Treated vs control per risk and per action, once outcome windows closed.

The unit is the customer: each customer counts once per risk, at their first assignment in the
range read (their first task led by that risk, or their first control row led by it that would
have fit its queue), so a customer who recurs every two weeks with overlapping windows is not
counted as many independent trials. The bad outcome is the thing the task tried to prevent,
looked up in the warehouse after that first day:

- ``return``: a return requested on the task's order within ``return_window_days``;
- ``negative_review``: a review scored at or below ``negative_review_max_score`` on the order
  within ``review_window_days``;
- ``late_delivery``: such a bad review, or a delivery ticket about the order, within
  ``review_window_days`` (what a late parcel costs);
- ``churn``: no order by the customer within ``churn_horizon_days``.

A unit counts only once its window has closed (the data, per the label clocks of
``tasks/models/labels.py``, reaches first day + window); the others are pending. Intervals come
from statsmodels (``confint_proportions_2indep``): the absolute difference (treated - control,
negative = fewer bad outcomes) with Newcombe's hybrid score interval, the relative effect
(1 - risk ratio: the share of bad outcomes a contact prevents, the playbook's ``effect``) with the
log-adjusted ratio interval. The minimum detectable effect at the current volume and the weeks
until the playbook's expected effect becomes detectable use statsmodels' power solver
(``NormalIndPower`` on Cohen's h).

Analysis is by intention to treat: a control customer who was contacted anyway stays in control
(that dilutes the difference towards zero). Every contact of a held-out customer inside their
hold, from the task list or from recorded outcomes, is listed (``contamination``) and the
difference without those control units is shown beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_effectsize

from schemas.settings import Settings, get_settings
from schemas.tasks import ALL_RISKS, ASSIGNMENT_TABLE, CONTROL_TABLE, RISKS, TASK_TABLE, ControlGroup, TaskList
from tasks.care.interventions import EFFECTS_COLUMNS, as_run_date, outcome_windows
from tasks.care.playbook import load_playbook
from tasks.data.warehouse import Warehouse, open_warehouse
from tasks.models.labels import data_end
from tasks.templates import markdown_table

METHOD = ("statsmodels confint_proportions_2indep: Newcombe hybrid score (difference), "
          "log-adjusted (risk ratio)")
TREATED, CONTROL = "treated", "control"
# the label clock that tells whether a risk's outcome window has closed
CLOCK_MODEL = {"return": "return", "negative_review": "negative_review", "late_delivery": "negative_review",
               "churn": "churn"}
UPLIFT_COLUMNS = [
    "risk", "action_id", "n_treated", "n_control", "events_treated", "events_control", "rate_treated",
    "rate_control", "difference", "ci_low", "ci_high", "effect", "effect_low", "effect_high", "verdict",
    "pending", "reached_share", "resolved_share", "control_contacted", "difference_clean", "mde", "mde_effect",
    "expected_effect", "needed_per_arm", "weekly_treated", "weeks_to_detect",
]
# effects-table columns of pre-formatted numbers ("12.0%", weeks), right-aligned like the counts
SHOWN_AS_NUMBERS = ("treated rate", "control rate", "difference", "effect", "MDE", "expected", "weeks", "reached")
CONTAMINATION_SHOWN = 50  # contacts listed in the report; the contamination file has them all
CONTAMINATION_COLUMNS = ["customer_id", "held_for", "assigned_on", "window_end", "source", "at", "task_id",
                         "about", "outcome", "kind"]


# ---- statistics ------------------------------------------------------------------------------
def verdict(n_control: int, low: float, high: float) -> str:
    if n_control == 0:
        return "no control yet"
    if high < 0:
        return "fewer bad outcomes with contact"
    if low > 0:
        return "more bad outcomes with contact"
    return "no clear difference yet"


def two_arms(kt: int, nt: int, kc: int, nc: int, confidence: float) -> dict[str, float]:
    """Rates, difference (Newcombe) and relative effect 1 - RR (log-adjusted) with intervals."""
    nan = math.nan
    out = {"rate_treated": kt / nt if nt else nan, "rate_control": kc / nc if nc else nan,
           "difference": nan, "ci_low": nan, "ci_high": nan, "effect": nan, "effect_low": nan, "effect_high": nan}
    if nt <= 0 or nc <= 0:
        return out
    alpha = 1 - confidence
    low, high = confint_proportions_2indep(kt, nt, kc, nc, method="newcomb", compare="diff", alpha=alpha)
    out.update(difference=kt / nt - kc / nc, ci_low=float(low), ci_high=float(high))
    if kc > 0:
        r_low, r_high = confint_proportions_2indep(kt, nt, kc, nc, method="log-adjusted", compare="ratio",
                                                   alpha=alpha)
        out.update(effect=1 - (kt / nt) / (kc / nc), effect_low=1 - float(r_high), effect_high=1 - float(r_low))
    return out


def minimum_detectable(p_control: float, n_treated: int, n_control: int, confidence: float,
                       power: float) -> float:
    """Smallest drop in the bad-outcome rate (absolute) detectable at these arm sizes and this control rate."""
    if not (n_treated > 0 and n_control > 0 and 0 < p_control < 1):
        return math.nan
    h = NormalIndPower().solve_power(effect_size=None, nobs1=n_treated, alpha=1 - confidence, power=power,
                                     ratio=n_control / n_treated)
    # invert Cohen's h = 2 asin(sqrt(p_c)) - 2 asin(sqrt(p_t)) for p_t
    p_treated = math.sin(max(0.0, math.asin(math.sqrt(p_control)) - float(h) / 2)) ** 2
    return p_control - p_treated


def units_needed(p_control: float, effect: float, ratio: float, confidence: float, power: float) -> float:
    """Treated units needed to detect a relative ``effect`` at this control rate (control = ratio x that)."""
    if not (0 < p_control < 1 and effect > 0 and ratio > 0):
        return math.nan
    h = abs(proportion_effectsize(p_control, p_control * (1 - effect)))
    return float(NormalIndPower().solve_power(effect_size=h, nobs1=None, alpha=1 - confidence, power=power,
                                              ratio=ratio))


def standard_error_of_effect(row: pd.Series, confidence: float) -> float:
    """The relative effect's standard error, read back from its (log-scale) interval."""
    if not (np.isfinite(row["effect_low"]) and np.isfinite(row["effect_high"])):
        return math.nan
    ratio_low, ratio_high = 1 - row["effect_high"], 1 - row["effect_low"]
    if ratio_low <= 0 or ratio_high <= 0:
        return math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    ratio = 1 - row["effect"]
    return float(max(ratio, 1e-9) * (math.log(ratio_high) - math.log(ratio_low)) / (2 * z))


# ---- units and outcomes ----------------------------------------------------------------------
def arm_rows(wh: Warehouse, since: Any = None, until: Any = None,
             include_outside_capacity: bool = False) -> pd.DataFrame:
    """Every task and fair control row: arm, task_id, run_date, customer_id, order_id, risk_code, action_id."""
    cols = [TaskList.task_id, TaskList.run_date, TaskList.customer_id, TaskList.order_id, TaskList.risk_code,
            TaskList.action_id]
    select = ", ".join(f'"{c}"' for c in cols)
    parts: list[str] = []
    params: list[Any] = []
    date_filter = ""
    for bound, op in ((since, ">="), (until, "<=")):
        if bound is not None:
            date_filter += f' AND "{TaskList.run_date}" {op} ?'
    bounds = [as_run_date(b).to_pydatetime() for b in (since, until) if b is not None]
    if wh.has_table(TASK_TABLE):
        parts.append(f"SELECT '{TREATED}' AS arm, {select} FROM \"{TASK_TABLE}\" WHERE TRUE{date_filter}")
        params += bounds
    if wh.has_table(CONTROL_TABLE):
        fair = "" if include_outside_capacity else f' AND "{ControlGroup.within_capacity}"'
        parts.append(f"SELECT '{CONTROL}' AS arm, {select} FROM \"{CONTROL_TABLE}\" WHERE TRUE{fair}{date_filter}")
        params += bounds
    if not parts:
        return pd.DataFrame(columns=["arm", *cols])
    return wh.query(" UNION ALL ".join(parts), params)


def first_units(rows: pd.DataFrame) -> pd.DataFrame:
    """One unit per customer and risk: the earliest assignment (the customer, not the day, is the unit)."""
    if rows.empty:
        return rows.copy()
    ordered = rows.sort_values([TaskList.run_date, "arm", TaskList.task_id], kind="mergesort")
    return ordered.drop_duplicates([TaskList.customer_id, TaskList.risk_code]).reset_index(drop=True)


def arm_units(wh: Warehouse, since: Any = None, until: Any = None,
              include_outside_capacity: bool = False) -> pd.DataFrame:
    """The units of analysis: each customer's first treated or control row per risk."""
    return first_units(arm_rows(wh, since, until, include_outside_capacity))


def _outcome_sql(settings: Settings) -> str:
    """Per unit (view ``_units``): bad_outcome, reached, resolved."""
    w = outcome_windows(settings.labels)
    bad = int(settings.labels.negative_review_max_score)

    def within(col: str, risk: str) -> str:
        return f"{col} > u.run_date AND {col} <= u.run_date + INTERVAL {int(w[risk])} DAY"

    def bad_review(risk: str) -> str:
        return (f"EXISTS (SELECT 1 FROM reviews v WHERE v.order_id = u.order_id AND v.score <= {bad} "
                f"AND {within('v.created_at', risk)})")

    reached = ", ".join(f"'{o}'" for o in settings.care.contact_outcomes)
    return f"""
    SELECT u.*,
      CASE u.risk_code
        WHEN 'return' THEN EXISTS (SELECT 1 FROM returns r WHERE r.order_id = u.order_id
                                   AND {within('r.requested_at', 'return')})
        WHEN 'negative_review' THEN {bad_review('negative_review')}
        WHEN 'late_delivery' THEN {bad_review('late_delivery')}
             OR EXISTS (SELECT 1 FROM tickets t WHERE t.order_id = u.order_id AND t.category = 'delivery'
                        AND {within('t.opened_at', 'late_delivery')})
        WHEN 'churn' THEN NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = u.customer_id
                                      AND {within('o.ordered_at', 'churn')})
      END AS bad_outcome,
      EXISTS (SELECT 1 FROM outcomes x WHERE x.task_id = u.task_id AND x.outcome IN ({reached})) AS reached,
      EXISTS (SELECT 1 FROM outcomes x WHERE x.task_id = u.task_id AND x.outcome = 'resolved') AS resolved
    FROM _units u"""


def realised_outcomes(wh: Warehouse, units: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Units plus ``matured``, ``window_closes``, ``bad_outcome``, ``reached`` and ``resolved``."""
    if units.empty:
        return units.assign(matured=pd.Series(dtype=bool), bad_outcome=pd.Series(dtype=bool),
                            reached=pd.Series(dtype=bool), resolved=pd.Series(dtype=bool),
                            window_closes=pd.Series(dtype="datetime64[us]"))
    frame = units.astype({TaskList.run_date: "datetime64[us]"})
    wh.register("_units", frame)
    try:
        out = wh.query(_outcome_sql(settings))
    finally:
        wh.unregister("_units")
    windows = outcome_windows(settings.labels)
    ends = {risk: data_end(wh, CLOCK_MODEL[risk]) for risk in RISKS}  # type: ignore[arg-type]
    run_dates = pd.to_datetime(out[TaskList.run_date])
    close = run_dates + pd.to_timedelta(out[TaskList.risk_code].map(windows), unit="D")
    end = pd.to_datetime(out[TaskList.risk_code].map(ends))
    out["matured"] = (close <= end).fillna(False).astype(bool)
    out["window_closes"] = close
    return out


# ---- contamination ---------------------------------------------------------------------------
def holds(wh: Warehouse, settings: Settings) -> pd.DataFrame:
    """Every hold: stored assignments, plus one per control row (lists written before assignments existed)."""
    cols = ["customer_id", "held_for", "assigned_on", "window_end"]
    parts = []
    if wh.has_table(ASSIGNMENT_TABLE):
        a = wh.query(f'SELECT customer_id, risk AS held_for, assigned_on, window_end FROM "{ASSIGNMENT_TABLE}"')
        parts.append(a)
    if wh.has_table(CONTROL_TABLE):
        c = wh.query(f'SELECT * FROM "{CONTROL_TABLE}"')
        if len(c):
            windows = outcome_windows(settings.labels)
            run = pd.to_datetime(c[TaskList.run_date])
            held_for = c.get(ControlGroup.held_for, pd.Series(None, index=c.index)).fillna(c[TaskList.risk_code])
            since = pd.to_datetime(c.get(ControlGroup.assigned_on, pd.Series(pd.NaT, index=c.index))).fillna(run)
            fallback = run + pd.to_timedelta(c[TaskList.risk_code].map(windows), unit="D")
            until = pd.to_datetime(c.get(ControlGroup.held_until, pd.Series(pd.NaT, index=c.index))).fillna(fallback)
            parts.append(pd.DataFrame({"customer_id": c[TaskList.customer_id], "held_for": held_for,
                                       "assigned_on": since, "window_end": until}))
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)
    out["assigned_on"] = pd.to_datetime(out["assigned_on"]).dt.normalize().astype("datetime64[us]")
    out["window_end"] = pd.to_datetime(out["window_end"]).astype("datetime64[us]")
    return out.drop_duplicates(["customer_id", "held_for", "assigned_on"]).reset_index(drop=True)[cols]


def contamination(wh: Warehouse, settings: Settings) -> pd.DataFrame:
    """Every contact of a held-out customer inside their hold: listed in a task, or a recorded outcome.

    ``kind`` is ``contamination`` when the contact was about the held risk (any risk for a universal
    hold, an unknown topic, or the control row's own task id), ``other-risk contact`` when it was a
    task about another risk (allowed by a per-risk holdout, and shown so the shop can judge it).
    """
    held = holds(wh, settings)
    if held.empty:
        return pd.DataFrame(columns=CONTAMINATION_COLUMNS)
    wh.register("_holds", held)
    parts = []
    try:
        if wh.has_table(TASK_TABLE):
            parts.append(wh.query(f"""
                SELECT h.*, 'task list' AS source, t.run_date AS at, t.task_id, t.risks AS about,
                       NULL::VARCHAR AS outcome, FALSE AS control_row
                FROM _holds h JOIN "{TASK_TABLE}" t ON t.customer_id = h.customer_id
                 AND t.run_date >= h.assigned_on AND t.run_date < h.window_end"""))
        if wh.has_rows("outcomes"):
            task_join = (f'LEFT JOIN "{TASK_TABLE}" t ON t.task_id = x.task_id' if wh.has_table(TASK_TABLE)
                         else "LEFT JOIN (SELECT NULL::VARCHAR AS task_id, NULL::VARCHAR AS customer_id, "
                              "NULL::VARCHAR AS risks) t ON FALSE")
            ctrl_join = (f'LEFT JOIN "{CONTROL_TABLE}" c ON c.task_id = x.task_id' if wh.has_table(CONTROL_TABLE)
                         else "LEFT JOIN (SELECT NULL::VARCHAR AS task_id, NULL::VARCHAR AS customer_id, "
                              "NULL::VARCHAR AS risks) c ON FALSE")
            parts.append(wh.query(f"""
                WITH x AS (SELECT x.task_id, x.outcome, x.recorded_at,
                                  coalesce(t.customer_id, c.customer_id, x.customer_id) AS customer_id,
                                  coalesce(t.risks, c.risks) AS about, c.task_id IS NOT NULL AS control_row
                           FROM outcomes x {task_join} {ctrl_join})
                SELECT h.*, 'outcome' AS source, x.recorded_at AS at, x.task_id, x.about, x.outcome, x.control_row
                FROM _holds h JOIN x ON x.customer_id = h.customer_id
                 AND x.recorded_at >= h.assigned_on AND x.recorded_at < h.window_end"""))
    finally:
        wh.unregister("_holds")
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=CONTAMINATION_COLUMNS)
    found = pd.concat(parts, ignore_index=True)
    about = found["about"].fillna("")
    on_topic = [h == ALL_RISKS or not a or h in a.split(",") or bool(c)
                for h, a, c in zip(found["held_for"], about, found["control_row"], strict=True)]
    found["kind"] = np.where(on_topic, "contamination", "other-risk contact")
    return (found.sort_values(["customer_id", "at", "source", "kind"], kind="mergesort")
            .drop_duplicates(["customer_id", "source", "at", "task_id"])  # one contact, one row
            .reset_index(drop=True)[CONTAMINATION_COLUMNS])


def flag_contaminated(outcomes: pd.DataFrame, flagged: pd.DataFrame) -> pd.Series:
    """Control units with a contamination of their risk inside their own outcome window."""
    out = pd.Series(False, index=outcomes.index)
    bad = flagged[flagged["kind"] == "contamination"] if len(flagged) else flagged
    if outcomes.empty or bad.empty:
        return out
    control = outcomes[outcomes["arm"] == CONTROL]
    merged = control.reset_index().merge(bad[["customer_id", "held_for", "at"]], on="customer_id")
    merged = merged[(merged["held_for"].isin([ALL_RISKS])) | (merged["held_for"] == merged[TaskList.risk_code])]
    merged = merged[(pd.to_datetime(merged["at"]) >= pd.to_datetime(merged[TaskList.run_date]))
                    & (pd.to_datetime(merged["at"]) < pd.to_datetime(merged["window_closes"]))]
    out[out.index.isin(merged["index"])] = True
    return out


# ---- the tables ------------------------------------------------------------------------------
def _weekly_treated(units: pd.DataFrame, weeks: int) -> float:
    """Treated units per week over the latest ``weeks`` weeks of assignments (matured or not)."""
    if units.empty:
        return math.nan
    dates = pd.to_datetime(units[TaskList.run_date])
    recent = units[dates > dates.max() - pd.Timedelta(weeks=weeks)]
    span = max(1.0, min(float(weeks), ((dates.max() - dates.min()).days + 1) / 7))
    return float((recent["arm"] == TREATED).sum()) / span


def summarise(outcomes: pd.DataFrame, settings: Settings, priors: dict[str, float] | None = None,
              by_action: bool = False) -> pd.DataFrame:
    """One row per risk (or risk and action) with units in either arm: effect, intervals, power."""
    care = settings.care
    priors = priors or {}
    windows = outcome_windows(settings.labels)
    keys = [TaskList.risk_code, TaskList.action_id] if by_action else [TaskList.risk_code]
    rows = []
    if outcomes.empty:
        return pd.DataFrame(columns=UPLIFT_COLUMNS)
    for key, mine in outcomes.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        risk, action = key[0], (key[1] if by_action else None)
        done = mine[mine["matured"]]
        t, c = done[done["arm"] == TREATED], done[done["arm"] == CONTROL]
        kt, kc = int(t["bad_outcome"].sum()), int(c["bad_outcome"].sum())
        stats = two_arms(kt, len(t), kc, len(c), care.confidence)
        clean = c[~c["contaminated"]]
        clean_diff = two_arms(kt, len(t), int(clean["bad_outcome"].sum()), len(clean), care.confidence)["difference"]
        expected = float(np.mean([priors.get(a, math.nan) for a in mine[TaskList.action_id]])) if priors else math.nan
        p_c = stats["rate_control"]
        ratio = len(c) / len(t) if len(t) and len(c) else settings.scoring.control_share / (
            1 - settings.scoring.control_share)
        needed = units_needed(p_c, expected, ratio, care.confidence, care.power)
        weekly = _weekly_treated(mine, care.volume_weeks)
        mde = minimum_detectable(p_c, len(t), len(c), care.confidence, care.power)
        rows.append({
            "risk": risk, "action_id": action, "n_treated": len(t), "n_control": len(c), "events_treated": kt,
            "events_control": kc, **stats, "verdict": verdict(len(c), stats["ci_low"], stats["ci_high"]),
            "pending": int((~mine["matured"]).sum()),
            "reached_share": float(t["reached"].mean()) if len(t) else math.nan,
            "resolved_share": float(t["resolved"].mean()) if len(t) else math.nan,
            "control_contacted": int(mine.loc[mine["arm"] == CONTROL, "contaminated"].sum()),
            "difference_clean": clean_diff,
            "mde": mde, "mde_effect": mde / p_c if p_c and np.isfinite(mde) else math.nan,
            "expected_effect": expected, "needed_per_arm": needed, "weekly_treated": weekly,
            "weeks_to_detect": weeks_to_detect(needed, len(t), int((mine["arm"] == TREATED).sum()), weekly,
                                               windows[risk]),
        })
    return pd.DataFrame(rows, columns=UPLIFT_COLUMNS)


def weeks_to_detect(needed: float, matured_treated: int, all_treated: int, weekly: float, window_days: int) -> float:
    """Weeks until enough treated units have matured to detect the expected effect (0: already)."""
    if not np.isfinite(needed):
        return math.nan
    if matured_treated >= needed:
        return 0.0
    more = max(0.0, needed - all_treated)
    if more > 0 and not (weekly and weekly > 0):
        return math.inf
    return (more / weekly if more > 0 else 0.0) + window_days / 7


def measured_effects(by_action: pd.DataFrame, confidence: float, at: Any = None) -> pd.DataFrame:
    """Per risk and action with an estimable ratio: the relative effect and its standard error (for EV)."""
    if by_action.empty:
        return pd.DataFrame(columns=EFFECTS_COLUMNS)
    rows = by_action[np.isfinite(by_action["effect"].astype(float))].copy()
    rows["se"] = [standard_error_of_effect(r, confidence) for _, r in rows.iterrows()]
    rows = rows[np.isfinite(rows["se"].astype(float)) & (rows["se"] > 0)]
    stamp = as_run_date(at) if at is not None else pd.Timestamp.now("UTC").tz_localize(None).normalize()
    return pd.DataFrame({"risk": rows["risk"], "action_id": rows["action_id"], "effect": rows["effect"].astype(float),
                         "se": rows["se"].astype(float), "n_treated": rows["n_treated"].astype("int64"),
                         "n_control": rows["n_control"].astype("int64"),
                         "measured_at": stamp}, columns=EFFECTS_COLUMNS).reset_index(drop=True)


# ---- report ----------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:+.1%}" if x < 0 else f"{x:.1%}"


def _weeks(x: float) -> str:
    if not np.isfinite(x):
        return "never at this volume" if x == math.inf else "n/a"
    return "reached" if x == 0 else f"{x:.0f}"


@dataclass
class UpliftAnalysis:
    by_risk: pd.DataFrame
    by_action: pd.DataFrame
    contamination: pd.DataFrame
    outcomes: pd.DataFrame
    effects: pd.DataFrame
    markdown: str = ""
    notes: list[str] = field(default_factory=list)


def uplift_markdown(analysis: UpliftAnalysis, confidence: float) -> str:
    """The report for people: tables per risk and action, contamination, or a sentence saying why none."""
    head = ["## Uplift of care tasks", ""]
    outcomes, by_risk = analysis.outcomes, analysis.by_risk
    n_control = int((outcomes["arm"] == CONTROL).sum()) if len(outcomes) else 0
    if n_control == 0:
        return "\n".join([*head, "No control group recorded yet, so the effect of the care tasks cannot be "
                          "measured. Keep `control_share` above 0; a readout is possible once the first "
                          "held-out customers' outcome windows have closed."]) + "\n"
    if int(by_risk["n_control"].sum()) == 0:
        first = outcomes.loc[outcomes["arm"] == CONTROL, "window_closes"].min()
        return "\n".join([*head, f"{n_control} control units recorded, but no outcome window has closed yet "
                          f"(earliest readout {first:%Y-%m-%d}, once the data reaches it)."]) + "\n"
    level = f"{confidence:.0%}"
    lines = [*head,
             f"One unit per customer and risk (their first assignment); only outcome windows that have closed. "
             f"Difference = treated - control bad-outcome rate (negative: fewer bad outcomes with a contact); "
             f"effect = 1 - risk ratio, the share of bad outcomes a contact prevents. {level} intervals: {METHOD}. "
             f"MDE: the smallest effect detectable now ({analysis.notes[0] if analysis.notes else ''} power); "
             "expected: the playbook's prior effect; weeks: until that is detectable at the current volume.", "",
             markdown_table(pd.DataFrame([_cells(r, "risk", r.risk, level) for r in by_risk.itertuples()]),
                            right=SHOWN_AS_NUMBERS)]
    if len(analysis.by_action):
        lines += ["", "Per action (the action of the customer's first task, or the one a control customer would "
                  "have had):", "",
                  markdown_table(pd.DataFrame([_cells(r, "risk / action", f"{r.risk} / {r.action_id}", level)
                                               for r in analysis.by_action.itertuples()]), right=SHOWN_AS_NUMBERS)]
    lines += ["", *contamination_lines(analysis.contamination, by_risk)]
    return "\n".join(lines) + "\n"


def terminal_rows(analysis: UpliftAnalysis, confidence: float) -> list[dict[str, str]]:
    """The effects cut to what fits a terminal, per risk then per risk and action (the report has the rest);
    ``reached``: the share of contacted customers agents recorded as reached (an effect is diluted by the rest)."""
    if analysis.by_risk.empty or int(analysis.by_risk["n_control"].sum()) == 0:
        return []
    level = f"{confidence:.0%}"
    rows = [_cells(r, "risk", r.risk, level) for r in analysis.by_risk.itertuples()]
    rows += [_cells(r, "risk", f"{r.risk} / {r.action_id}", level) for r in analysis.by_action.itertuples()]
    return [{"risk / action": row["risk"],
             "contacted": f"{row['treated rate']} of {row['treated n']:,}",
             "control": f"{row['control rate']} of {row['control n']:,}",
             f"effect ({level} CI)": f"{row['effect']} ({row['effect CI']})",
             "verdict": row["verdict"], "reached": row["reached"]} for row in rows]


def _cells(r: Any, heading: str, label: str, level: str) -> dict[str, Any]:
    """One row of an effects table, numbers as the report shows them (percentages, "n/a", weeks)."""
    ci = "n/a" if not math.isfinite(r.ci_low) else f"{_pct(r.ci_low)} to {_pct(r.ci_high)}"
    eci = "n/a" if not math.isfinite(r.effect_low) else f"{_pct(r.effect_low)} to {_pct(r.effect_high)}"
    return {heading: label, "treated n": r.n_treated, "control n": r.n_control,
            "treated rate": _pct(r.rate_treated), "control rate": _pct(r.rate_control),
            "difference": _pct(r.difference), f"{level} CI": ci, "effect": _pct(r.effect), "effect CI": eci,
            "verdict": r.verdict, "MDE": _pct(r.mde_effect), "expected": _pct(r.expected_effect),
            "weeks": _weeks(r.weeks_to_detect), "pending": r.pending, "reached": _pct(r.reached_share)}


def contamination_lines(flagged: pd.DataFrame, by_risk: pd.DataFrame) -> list[str]:
    bad = flagged[flagged["kind"] == "contamination"] if len(flagged) else flagged
    other = flagged[flagged["kind"] != "contamination"] if len(flagged) else flagged
    if bad.empty and other.empty:
        return ["No held-out customer was contacted inside their hold."]
    lines = []
    if len(bad):
        units = int(by_risk["control_contacted"].sum())
        lines += [f"**Warning: {len(bad)} contacts of held-out customers inside their hold** "
                  f"({bad['customer_id'].nunique()} customers; {units} control units affected). They stay in "
                  "control (intention to treat), which pulls the difference towards zero; the difference "
                  "without them: " + ", ".join(f"{r.risk} {_pct(r.difference_clean)}" for r in by_risk.itertuples()
                                               if r.control_contacted) + ".", "",
                  markdown_table(pd.DataFrame([
                      {"customer": r.customer_id, "held for": r.held_for,
                       "hold": f"{pd.Timestamp(r.assigned_on):%Y-%m-%d} to {pd.Timestamp(r.window_end):%Y-%m-%d}",
                       "source": r.source, "when": f"{pd.Timestamp(r.at):%Y-%m-%d}", "task": r.task_id,
                       "about": r.about or "unknown", "outcome": r.outcome}
                      for r in bad.head(CONTAMINATION_SHOWN).fillna({"about": "", "outcome": ""}).itertuples()]))]
        if len(bad) > CONTAMINATION_SHOWN:
            lines.append(f"... {len(bad) - CONTAMINATION_SHOWN} more in the contamination file.")
    if len(other):
        lines += ["", f"{len(other)} contacts of held-out customers were about another risk (a per-risk holdout "
                  "allows them; set `scoring.holdout = \"universal\"` to hold customers out of all contact)."]
    return lines


def uplift_analysis(wh: Warehouse, settings: Settings | None = None, since: Any = None, until: Any = None,
                    include_outside_capacity: bool = False) -> UpliftAnalysis:
    """Per-risk and per-action uplift, contamination and the measured effects, from the stored lists."""
    settings = settings or get_settings()
    units = arm_units(wh, since, until, include_outside_capacity)
    outcomes = realised_outcomes(wh, units, settings)
    flagged = contamination(wh, settings)
    outcomes["contaminated"] = flag_contaminated(outcomes, flagged).to_numpy(bool)
    try:
        priors = {a: act.effect for a, act in load_playbook(settings.playbook_file).actions.items()}
    except (OSError, ValueError):
        priors = {}
    by_risk = summarise(outcomes, settings, priors)
    by_risk["action_id"] = None
    by_action = summarise(outcomes, settings, priors, by_action=True)
    order = {r: i for i, r in enumerate(RISKS)}
    by_risk = by_risk.sort_values("risk", key=lambda s: s.map(order), kind="mergesort").reset_index(drop=True)
    by_action = by_action.sort_values(["risk", "action_id"], key=lambda s: s.map(order) if s.name == "risk" else s,
                                      kind="mergesort").reset_index(drop=True)
    latest = until if until is not None else (outcomes[TaskList.run_date].max() if len(outcomes) else None)
    analysis = UpliftAnalysis(by_risk, by_action, flagged, outcomes,
                              measured_effects(by_action, settings.care.confidence, latest),
                              notes=[f"{settings.care.power:.0%}"])
    analysis.markdown = uplift_markdown(analysis, settings.care.confidence)
    return analysis


def uplift_report(wh: Warehouse, settings: Settings | None = None, since: Any = None, until: Any = None,
                  include_outside_capacity: bool = False) -> tuple[pd.DataFrame, str]:
    """Per-risk uplift table (``UPLIFT_COLUMNS``) and the markdown report."""
    analysis = uplift_analysis(wh, settings, since, until, include_outside_capacity)
    return analysis.by_risk, analysis.markdown


def store_effects(wh: Warehouse, settings: Settings, effects: pd.DataFrame) -> None:
    """The measured effects the next scoring run shrinks the playbook's priors towards."""
    wh.replace_table(settings.care.effects_table, effects)


@task(name="uplift-report", cache_policy=NO_CACHE)
def uplift_report_task(settings: Settings, since: Any = None, until: Any = None) -> UpliftAnalysis:
    """The analysis; measured effects are stored only for a full-range report (no date filter)."""
    with open_warehouse(settings) as wh:
        analysis = uplift_analysis(wh, settings, since, until)
        if since is None and until is None:
            store_effects(wh, settings, analysis.effects)
    return analysis
