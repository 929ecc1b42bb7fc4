"""Did the care tasks help? Treated vs control, per risk, once the outcome windows have closed.

Each task and each held-out control row is one unit, analysed on the risk that led it
(``risk_code``: the risk its action targeted). The bad outcome is the thing the task tried to
prevent, looked up in the warehouse after the run date:

- ``return``: a return requested on the task's order within ``return_window_days``;
- ``negative_review``: a review scored at or below ``negative_review_max_score`` on the order
  within ``review_window_days``;
- ``late_delivery``: such a bad review, or a delivery ticket about the order, within
  ``review_window_days`` (what a late parcel costs);
- ``churn``: no order by the customer within ``churn_horizon_days``.

A unit counts only once its window has closed (the data, per the label clocks of
``tasks/models/labels.py``, reaches run date + window); the others are reported as pending. By default
the control arm keeps only customers who would have fit their queue's capacity, so both arms
face the same expected-value cut. The difference is treated minus control (negative = fewer bad
outcomes with a contact) with a 95% Newcombe hybrid score interval (Wilson score interval per
arm; Newcombe 1998, method 10), which keeps its coverage with small arms and rare outcomes,
where the normal approximation does not. Contact results from the ``outcomes`` table (reached,
resolved) are reported for the treated arm, and control units with a recorded contact are
flagged (a control customer must never be contacted).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.settings import LabelSettings, Settings, get_settings
from schemas.tasks import CONTROL_TABLE, RISKS, TASK_TABLE, ControlGroup, TaskList
from tasks.care.interventions import as_run_date
from tasks.data.warehouse import Warehouse, open_warehouse
from tasks.models.labels import data_end

METHOD = "Newcombe hybrid score interval (Wilson score per arm), 95%"
REACHED = ("contacted", "resolved", "returned_anyway")
TREATED, CONTROL = "treated", "control"
# the label clock that tells whether a risk's outcome window has closed
CLOCK_MODEL = {"return": "return", "negative_review": "negative_review", "late_delivery": "negative_review",
               "churn": "churn"}
UPLIFT_COLUMNS = [
    "risk", "n_treated", "n_control", "events_treated", "events_control", "rate_treated", "rate_control",
    "difference", "ci_low", "ci_high", "verdict", "pending", "reached_share", "resolved_share",
    "control_contacted",
]


# ---- intervals -------------------------------------------------------------------------------
def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (NaN without observations)."""
    if n <= 0:
        return math.nan, math.nan
    z = _z(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_difference(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """p1 - p2 and its Newcombe hybrid score interval (method 10)."""
    if n1 <= 0 or n2 <= 0:
        return math.nan, math.nan, math.nan
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    diff = p1 - p2
    return diff, diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def verdict(n_control: int, low: float, high: float) -> str:
    if n_control == 0:
        return "no control yet"
    if high < 0:
        return "fewer bad outcomes with contact"
    if low > 0:
        return "more bad outcomes with contact"
    return "no clear difference yet"


# ---- units and outcomes ----------------------------------------------------------------------
def outcome_windows(labels: LabelSettings) -> dict[str, int]:
    return {"return": labels.return_window_days, "negative_review": labels.review_window_days,
            "late_delivery": labels.review_window_days, "churn": labels.churn_horizon_days}


def arm_units(wh: Warehouse, since: Any = None, until: Any = None,
              include_outside_capacity: bool = False) -> pd.DataFrame:
    """Treated and control units: arm, task_id, run_date, customer_id, order_id, risk_code."""
    cols = [TaskList.task_id, TaskList.run_date, TaskList.customer_id, TaskList.order_id, TaskList.risk_code]
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


def _outcome_sql(settings: Settings) -> str:
    """Per unit (view ``_units``): bad_outcome, reached, resolved."""
    w = outcome_windows(settings.labels)
    bad = int(settings.labels.negative_review_max_score)

    def within(col: str, risk: str) -> str:
        return f"{col} > u.run_date AND {col} <= u.run_date + INTERVAL {int(w[risk])} DAY"

    def bad_review(risk: str) -> str:
        return (f"EXISTS (SELECT 1 FROM reviews v WHERE v.order_id = u.order_id AND v.score <= {bad} "
                f"AND {within('v.created_at', risk)})")

    reached = ", ".join(f"'{o}'" for o in REACHED)
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
    """Units plus ``matured``, ``bad_outcome``, ``reached`` and ``resolved``."""
    if units.empty:
        return units.assign(matured=pd.Series(dtype=bool), bad_outcome=pd.Series(dtype=bool),
                            reached=pd.Series(dtype=bool), resolved=pd.Series(dtype=bool))
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


def summarise(outcomes: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One row per risk with units in either arm: rates, difference, CI, pending and contact results."""
    rows = []
    for risk in RISKS:
        mine = outcomes[outcomes[TaskList.risk_code] == risk]
        if mine.empty:
            continue
        done = mine[mine["matured"]]
        t, c = done[done["arm"] == TREATED], done[done["arm"] == CONTROL]
        kt, kc = int(t["bad_outcome"].sum()), int(c["bad_outcome"].sum())
        diff, low, high = newcombe_difference(kt, len(t), kc, len(c), confidence)
        rows.append({
            "risk": risk, "n_treated": len(t), "n_control": len(c), "events_treated": kt, "events_control": kc,
            "rate_treated": kt / len(t) if len(t) else math.nan, "rate_control": kc / len(c) if len(c) else math.nan,
            "difference": diff, "ci_low": low, "ci_high": high, "verdict": verdict(len(c), low, high),
            "pending": int((~mine["matured"]).sum()),
            "reached_share": float(t["reached"].mean()) if len(t) else math.nan,
            "resolved_share": float(t["resolved"].mean()) if len(t) else math.nan,
            "control_contacted": int(mine.loc[mine["arm"] == CONTROL, "reached"].sum()),
        })
    return pd.DataFrame(rows, columns=UPLIFT_COLUMNS)


# ---- report ----------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.1%}" if x < 0 else f"{x:.1%}"


def uplift_markdown(table: pd.DataFrame, outcomes: pd.DataFrame) -> str:
    """The report for people: a table per risk, or a plain sentence saying why there is none."""
    head = ["## Uplift of care tasks", ""]
    n_control = int((outcomes["arm"] == CONTROL).sum()) if len(outcomes) else 0
    if n_control == 0:
        return "\n".join([*head, "No control group recorded yet, so the effect of the care tasks cannot be "
                          "measured. Keep `control_share` above 0; a readout is possible once the first "
                          "held-out customers' outcome windows have closed."]) + "\n"
    if int(table["n_control"].sum()) == 0:
        first = outcomes.loc[outcomes["arm"] == CONTROL, "window_closes"].min()
        return "\n".join([*head, f"{n_control} control units recorded, but no outcome window has closed yet "
                          f"(earliest readout {first:%Y-%m-%d}, once the data reaches it)."]) + "\n"
    lines = [*head, f"Bad-outcome rate with a task (treated) vs held out (control); difference = treated - "
             f"control, negative means fewer bad outcomes. 95% CI: {METHOD}.", "",
             "| risk | treated n | control n | treated rate | control rate | difference | 95% CI | verdict "
             "| pending | reached |", "|---|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for r in table.itertuples():
        ci = "n/a" if math.isnan(r.ci_low) else f"{_pct(r.ci_low)} to {_pct(r.ci_high)}"
        lines.append(f"| {r.risk} | {r.n_treated} | {r.n_control} | {_pct(r.rate_treated)} | {_pct(r.rate_control)} "
                     f"| {_pct(r.difference)} | {ci} | {r.verdict} | {r.pending} | {_pct(r.reached_share)} |")
    contacted = int(table["control_contacted"].sum())
    if contacted:
        lines += ["", f"**Warning:** {contacted} control units have a recorded contact; the control group "
                  "was not kept apart and the difference is diluted."]
    return "\n".join(lines) + "\n"


def uplift_report(wh: Warehouse, settings: Settings | None = None, since: Any = None, until: Any = None,
                  include_outside_capacity: bool = False, confidence: float = 0.95) -> tuple[pd.DataFrame, str]:
    """Per-risk uplift table (``UPLIFT_COLUMNS``) and its markdown, from the stored lists."""
    settings = settings or get_settings()
    units = arm_units(wh, since, until, include_outside_capacity)
    outcomes = realised_outcomes(wh, units, settings)
    table = summarise(outcomes, confidence)
    return table, uplift_markdown(table, outcomes)


@task(name="uplift-report", cache_policy=NO_CACHE)
def uplift_report_task(settings: Settings, since: Any = None, until: Any = None) -> tuple[pd.DataFrame, str]:
    with open_warehouse(settings) as wh:
        return uplift_report(wh, settings, since, until)
