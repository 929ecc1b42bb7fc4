"""After-sales journeys: each delivered order's path, the common paths, slow stages, and a model
of what comes next.

A journey is the time-ordered steps of one delivered order: delivered, ticket opened, escalated,
return requested, refunded, good or bad review — ending when the customer orders again or goes
quiet (no order within ``quiet_days`` of delivery). Steps of the order that happen after its end
belong to no journey (a review written after the next order is that order's news). Steps before
delivery (a "where is my parcel" ticket, an angry review of a late parcel) stay in time order.
Every step is dated and only what was known at the as-of time is used.

The model is a Markov chain with durations: from the current state (the last ``markov_order``
steps, backing off to fewer when a state was seen fewer than ``min_context_count`` times) it
predicts the next step, the time to it (median of that state's transitions) and, from the
first-order chain, the probability that a bad outcome (``bad_steps``: bad review, return, going
quiet) lies ahead. It is judged on a LATER window: fitted on what was known at ``train_until``,
scored on the transitions of orders delivered afterwards, next to the naive baseline (always the
most frequent next step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from schemas.analytics import (
    JOURNEY_EVALUATION_TABLE,
    JOURNEY_PATHS_TABLE,
    JOURNEY_PREDICTIONS_TABLE,
    JOURNEY_STAGES_TABLE,
    JOURNEY_STEPS,
    JOURNEY_TRANSITIONS_TABLE,
    TERMINAL_STEPS,
    JourneyEvaluation,
    JourneyPaths,
    JourneyPredictions,
    JourneyStageTimes,
    JourneyTransitions,
)
from schemas.settings import Settings
from tasks.data.warehouse import Warehouse
from tasks.insight.segments import embedded_png, figure
from tasks.models.features import as_timestamp, run_sql
from tasks.templates import markdown_table

START = "start"  # the virtual state before the first step (the order was placed)
STEP_RANK = {s: i for i, s in enumerate(JOURNEY_STEPS)}
STEP_LABELS: dict[str, dict[str, str]] = {
    "en": {"delivered": "Delivered", "ticket_opened": "Ticket opened", "escalated": "Escalated",
           "return_requested": "Return requested", "refunded": "Refunded", "review_good": "Good review",
           "review_bad": "Bad review", "next_order": "Ordered again", "gone_quiet": "Gone quiet",
           START: "Ordered"},
    "zh": {"delivered": "已签收", "ticket_opened": "发起工单", "escalated": "工单升级", "return_requested": "申请退货",
           "refunded": "已退款", "review_good": "好评", "review_bad": "差评", "next_order": "再次购买",
           "gone_quiet": "沉默流失", START: "下单"},
}
SEP = ">"
HOURS_PER_DAY = 24.0


def label(step: str, language: str = "en") -> str:
    return STEP_LABELS.get(language, STEP_LABELS["en"]).get(step, step.replace("_", " "))


def path_text(steps: list[str] | tuple[str, ...], language: str = "en") -> str:
    return " > ".join(label(s, language) for s in steps)


# ---- steps as known at a time ---------------------------------------------------------------------------
def _steps_sql(quiet_days: int, max_tickets: int) -> str:
    """One row per step of every order delivered by ``$asof``: order, customer, step, time, channel, category."""
    quiet = f"INTERVAL {int(quiet_days)} DAY"
    return f"""
    WITH o AS (SELECT order_id, customer_id, ordered_at, delivered_at FROM orders
               WHERE delivered_at IS NOT NULL AND delivered_at <= $asof AND ordered_at <= $asof),
    cat AS (
        SELECT order_id, first(category ORDER BY v DESC, category) AS category FROM (
            SELECT i.order_id, coalesce(p.category, 'unknown') AS category, sum(i.quantity * i.unit_price) AS v
            FROM order_items i JOIN o ON o.order_id = i.order_id
            LEFT JOIN products p ON p.product_id = i.product_id GROUP BY ALL)
        GROUP BY order_id),
    later AS (SELECT customer_id, ordered_at FROM orders WHERE ordered_at <= $asof),
    nxt AS (SELECT o.order_id, l.ordered_at AS next_at
            FROM o ASOF LEFT JOIN later l ON l.customer_id = o.customer_id AND l.ordered_at > o.delivered_at),
    tk AS (
        SELECT t.order_id, t.opened_at, t.channel,
               CASE WHEN t.escalated AND coalesce(t.updated_at, t.resolved_at, t.opened_at) <= $asof
                    THEN greatest(t.opened_at, coalesce(t.first_response_at, t.opened_at)) END AS escalated_at,
               row_number() OVER (PARTITION BY t.order_id ORDER BY t.opened_at, t.ticket_id) AS k
        FROM tickets t JOIN o ON o.order_id = t.order_id WHERE t.opened_at <= $asof),
    rt AS (SELECT r.order_id, min(r.requested_at) AS requested_at,
                  min(r.refunded_at) FILTER (WHERE r.refunded_at <= $asof) AS refunded_at
           FROM returns r JOIN o ON o.order_id = r.order_id WHERE r.requested_at <= $asof GROUP BY 1),
    rv AS (SELECT r.order_id, first(r.score ORDER BY r.created_at) AS score, min(r.created_at) AS created_at
           FROM reviews r JOIN o ON o.order_id = r.order_id WHERE r.created_at <= $asof GROUP BY 1),
    steps AS (
        SELECT order_id, 'delivered' AS step, delivered_at AS at, NULL AS channel FROM o
        UNION ALL SELECT order_id, 'ticket_opened', opened_at, channel FROM tk WHERE k <= {int(max_tickets)}
        UNION ALL SELECT order_id, 'escalated', escalated_at, channel FROM tk
                  WHERE k <= {int(max_tickets)} AND escalated_at IS NOT NULL AND escalated_at <= $asof
        UNION ALL SELECT order_id, 'return_requested', requested_at, NULL FROM rt
        UNION ALL SELECT order_id, 'refunded', refunded_at, NULL FROM rt WHERE refunded_at IS NOT NULL
        UNION ALL SELECT order_id, CASE WHEN score <= $bad THEN 'review_bad' ELSE 'review_good' END, created_at, NULL
                  FROM rv
        UNION ALL SELECT o.order_id, 'next_order', n.next_at, NULL FROM o JOIN nxt n ON n.order_id = o.order_id
                  WHERE n.next_at IS NOT NULL AND n.next_at <= o.delivered_at + {quiet}
        UNION ALL SELECT o.order_id, 'gone_quiet', o.delivered_at + {quiet}, NULL FROM o
                  LEFT JOIN nxt n ON n.order_id = o.order_id
                  WHERE o.delivered_at + {quiet} <= $asof
                    AND (n.next_at IS NULL OR n.next_at > o.delivered_at + {quiet}))
    SELECT s.order_id, o.customer_id, o.delivered_at, s.step, s.at, s.channel,
           coalesce(c.category, 'unknown') AS category
    FROM steps s JOIN o ON o.order_id = s.order_id LEFT JOIN cat c ON c.order_id = s.order_id"""


def journey_steps(wh: Warehouse, as_of: Any, settings: Settings) -> pd.DataFrame:
    """Every journey's steps as known at ``as_of``, in order, cut at the journey's end.

    Columns: order_id, customer_id, delivered_at, step, at, channel, category, pos (0-based).
    """
    cfg = settings.analytics.journeys
    raw = run_sql(wh, _steps_sql(cfg.quiet_days, cfg.max_tickets_per_order),
                  {"asof": as_timestamp(as_of), "bad": settings.labels.negative_review_max_score})
    return order_steps(raw)


def order_steps(raw: pd.DataFrame) -> pd.DataFrame:
    """Sort steps in time (ties in the natural order of steps) and drop what follows the end."""
    df = raw.assign(_rank=raw["step"].map(STEP_RANK)).sort_values(["order_id", "at", "_rank"], kind="stable")
    terminal = df["step"].isin(TERMINAL_STEPS)
    ends = df.loc[terminal].groupby("order_id")["at"].min()
    end_at = pd.Series(ends.reindex(df["order_id"].to_numpy()).to_numpy(), index=df.index)
    df = df[end_at.isna() | (df["at"] < end_at) | ((df["at"] == end_at) & terminal)]
    terminal = df["step"].isin(TERMINAL_STEPS)
    first_end = ~df.loc[terminal].duplicated("order_id")
    df = df[~terminal | first_end.reindex(df.index, fill_value=False)]
    df = df.drop(columns="_rank").reset_index(drop=True)
    df["pos"] = df.groupby("order_id").cumcount()
    return df


def seen_counts(steps: pd.DataFrame) -> pd.DataFrame:
    """How often each step has happened in the order's journey up to and including each row."""
    onehot = pd.get_dummies(steps["step"]).reindex(columns=list(JOURNEY_STEPS), fill_value=0).astype(np.int16)
    return onehot.groupby(steps["order_id"].to_numpy(), sort=False).cumsum().set_index(steps.index)


def feasible(seen: pd.DataFrame, max_tickets: int) -> np.ndarray:
    """Which next steps are still possible after a journey's steps so far (rows x JOURNEY_STEPS).

    An order is delivered, returned, refunded (after a return) and reviewed once; a ticket can only
    be escalated once; tickets are capped like the journeys are.
    """
    n = {step: seen[step].to_numpy() for step in JOURNEY_STEPS}
    allowed = {
        "delivered": n["delivered"] == 0,
        "ticket_opened": n["ticket_opened"] < max_tickets,
        "escalated": n["escalated"] < n["ticket_opened"],
        "return_requested": n["return_requested"] == 0,
        "refunded": (n["return_requested"] > 0) & (n["refunded"] == 0),
        "review_good": (n["review_good"] + n["review_bad"]) == 0,
        "review_bad": (n["review_good"] + n["review_bad"]) == 0,
        "next_order": np.ones(len(seen), bool),
        "gone_quiet": np.ones(len(seen), bool),
    }
    return np.column_stack([allowed[step] for step in JOURNEY_STEPS])


def transitions(steps: pd.DataFrame, order: int) -> pd.DataFrame:
    """One row per observed move: context of the last ``order`` steps (``start`` padded), next step, hours.

    Columns: order_id, pos, ctx1..ctx<order> (ctx1 = the current step), next, hours, channel, category,
    delivered_at, and the journey's step counts before the move (one column per step).
    """
    s = steps
    g = s.groupby("order_id", sort=False)
    out = pd.DataFrame({"order_id": s["order_id"], "pos": s["pos"] - 1, "next": s["step"],
                        "hours": (s["at"] - g["at"].shift(1)).dt.total_seconds() / 3600.0,
                        "channel": g["channel"].shift(1), "category": s["category"],
                        "delivered_at": s["delivered_at"]})
    for k in range(1, order + 1):
        out[f"ctx{k}"] = g["step"].shift(k).fillna(START)
    before = seen_counts(s).groupby(s["order_id"].to_numpy(), sort=False).shift(1).fillna(0).astype(np.int16)
    out = pd.concat([out, before], axis=1)
    out = out[s["pos"].to_numpy() > 0].copy()
    out["hours"] = out["hours"].clip(lower=0.0)
    return out.reset_index(drop=True)


def context_key(frame: pd.DataFrame, length: int) -> pd.Series:
    """``'ctx<length>>...>ctx1'`` (oldest first), the state name of that many last steps."""
    cols = [f"ctx{k}" for k in range(length, 0, -1)]
    key = frame[cols[0]].astype(str)
    return key.str.cat([frame[c].astype(str) for c in cols[1:]], sep=SEP) if length > 1 else key


# ---- the model ------------------------------------------------------------------------------------------
@dataclass
class NextStepModel:
    """Markov chain with durations and back-off; ``table``: state, length, next, n, probability, median_hours."""

    order: int
    min_count: int
    table: pd.DataFrame
    fallback_step: str
    fallback_hours: float
    bad_ahead: pd.Series  # index: step (first-order state); P(a bad step lies ahead)
    bad_steps: tuple[str, ...]

    @classmethod
    def fit(cls, trans: pd.DataFrame, order: int, min_count: int, bad_steps: tuple[str, ...]) -> NextStepModel:
        parts = []
        for length in range(1, order + 1):
            t = trans.assign(state=context_key(trans, length))
            agg = t.groupby(["state", "next"]).agg(n=("hours", "size"), median_hours=("hours", "median")).reset_index()
            totals = agg.groupby("state")["n"].transform("sum")
            state_hours = t.groupby("state")["hours"].median()
            agg["probability"] = agg["n"] / totals
            agg["state_n"] = totals
            agg["state_hours"] = agg["state"].map(state_hours)
            agg["length"] = length
            parts.append(agg)
        table = pd.concat(parts, ignore_index=True)
        counts = trans["next"].value_counts()
        fallback = str(counts.index[0]) if len(counts) else JOURNEY_STEPS[-1]
        hours = float(trans["hours"].median()) if len(trans) else 0.0
        bad = bad_outcome_probabilities(table[table["length"] == 1], bad_steps)
        return cls(order, min_count, table, fallback, hours, bad, bad_steps)

    def _distributions(self) -> tuple[pd.Index, np.ndarray, np.ndarray, pd.Series]:
        """States, next-step probabilities and median hours (states x JOURNEY_STEPS), state counts."""
        t = self.table
        steps = list(JOURNEY_STEPS)
        wide = t.pivot_table(index="state", columns="next", values="probability", aggfunc="sum", fill_value=0.0)
        wide = wide.reindex(columns=steps, fill_value=0.0)
        hours = t.pivot_table(index="state", columns="next", values="median_hours", aggfunc="first")
        hours = hours.reindex(index=wide.index, columns=steps)
        hours = hours.apply(lambda col: col.fillna(t.drop_duplicates("state").set_index("state")["state_hours"]
                                                   .reindex(wide.index)))
        state_n = t.drop_duplicates("state").set_index("state")["state_n"].reindex(wide.index)
        return wide.index, wide.to_numpy(), hours.fillna(self.fallback_hours).to_numpy(), state_n

    def predict(self, contexts: pd.DataFrame, seen: pd.DataFrame | None = None,
                max_tickets: int | None = None) -> pd.DataFrame:
        """For rows with ctx1..ctx<order>: next step, its probability, hours to it, state used.

        The longest context seen at least ``min_count`` times is used (the last step alone always
        is). With ``seen`` (step counts so far) steps that can no longer happen are ruled out and the
        rest renormalised.
        """
        states, probs, hours, state_n = self._distributions()
        pos = pd.Series(np.arange(len(states)), index=states)
        n = len(contexts)
        row_state = np.full(n, -1)
        for length in range(1, self.order + 1):  # longer contexts override when seen often enough
            keys = context_key(contexts, length).to_numpy()
            idx = pos.reindex(keys).to_numpy()
            known = ~np.isnan(idx)
            counts = state_n.reindex(keys).fillna(0).to_numpy()
            take = known & (counts >= (self.min_count if length > 1 else 1))
            row_state[take] = idx[take].astype(int)
        overall = self.table[self.table["length"] == 1].groupby("next")["n"].sum()
        overall = overall.reindex(list(JOURNEY_STEPS), fill_value=0).to_numpy(float)
        dist = np.where(row_state[:, None] >= 0, probs[np.maximum(row_state, 0)], overall / max(overall.sum(), 1))
        if seen is not None:
            dist = dist * feasible(seen, max_tickets or np.iinfo(np.int16).max)
        total = dist.sum(axis=1)
        best = dist.argmax(axis=1)
        steps = np.asarray(JOURNEY_STEPS, dtype=object)
        has = total > 0
        return pd.DataFrame({
            "next_step": np.where(has, steps[best], self.fallback_step),
            "probability": np.where(has, dist[np.arange(n), best] / np.where(has, total, 1), 0.0),
            "hours": np.where(row_state >= 0, hours[np.maximum(row_state, 0), best], self.fallback_hours),
            "state": np.where(row_state >= 0, np.asarray(states, dtype=object)[np.maximum(row_state, 0)], ""),
        }, index=contexts.index)

    def bad_probability(self, current: pd.Series) -> np.ndarray:
        return current.map(self.bad_ahead).fillna(float(self.bad_ahead.mean()) if len(self.bad_ahead) else 0.0
                                                 ).to_numpy(float)


def bad_outcome_probabilities(first_order: pd.DataFrame, bad_steps: tuple[str, ...]) -> pd.Series:
    """P(a bad step lies ahead) from each state of the first-order chain (absorbing-chain solve).

    Entering a bad step counts as the bad outcome; ``next_order`` ends the journey well.
    """
    states = sorted(set(first_order["state"]) - {START})
    if not states:
        return pd.Series(dtype=float)
    idx = {s: i for i, s in enumerate(states)}
    n = len(states)
    Q = np.zeros((n, n))
    r = np.zeros(n)
    for row in first_order.itertuples():
        if row.state not in idx:
            continue
        i = idx[row.state]
        if row.next in bad_steps:
            r[i] += row.probability
        elif row.next in idx and row.next not in TERMINAL_STEPS:
            Q[i, idx[row.next]] += row.probability
    h = np.linalg.lstsq(np.eye(n) - Q, r, rcond=None)[0]
    return pd.Series(np.clip(h, 0.0, 1.0), index=states)


def bad_ahead_labels(steps: pd.DataFrame, bad_steps: tuple[str, ...]) -> pd.DataFrame:
    """For closed journeys: each non-terminal state occurrence and whether a bad step followed."""
    if steps.empty:  # no order delivered in the window (a shop without delivery dates, a quiet spell)
        return pd.DataFrame({"order_id": pd.Series(dtype=str), "state": pd.Series(dtype=str),
                             "y": pd.Series(dtype=int)})
    s = steps.copy()
    closed = s.groupby("order_id")["step"].transform(lambda x: x.iloc[-1] in TERMINAL_STEPS).astype(bool)
    s = s[closed.to_numpy()]
    bad = s["step"].isin(bad_steps).astype(int)
    # bad steps strictly after each position: reverse cumulative max within the order, shifted
    later = bad[::-1].groupby(s["order_id"][::-1]).cummax()[::-1]
    after = later.groupby(s["order_id"]).shift(-1).fillna(0).astype(int)
    out = pd.DataFrame({"order_id": s["order_id"], "state": s["step"], "y": after})
    return out[~out["state"].isin(TERMINAL_STEPS)].reset_index(drop=True)


# ---- evaluation on a later window ------------------------------------------------------------------------
@dataclass
class Evaluation:
    train_until: pd.Timestamp
    test_from: pd.Timestamp
    test_until: pd.Timestamp
    table: pd.DataFrame  # model, transitions, accuracy, mae_days, bad_outcome_brier


def evaluate_models(wh: Warehouse, as_of: Any, settings: Settings) -> Evaluation:
    """Fit on what was known at ``train_until``, score the transitions of orders delivered in
    ``(train_until, test_until]`` as known at ``as_of``; the baseline always says the most frequent step.

    ``test_until = as_of - quiet_days`` so that every test order had time to end its journey.
    """
    cfg = settings.analytics.journeys
    day = as_timestamp(as_of)
    test_until = day - pd.Timedelta(days=cfg.quiet_days)
    train_until = test_until - pd.Timedelta(days=cfg.test_window_days)
    bad = tuple(cfg.bad_steps)
    train = transitions(journey_steps(wh, train_until, settings), cfg.markov_order)
    train = train[train["ctx1"] != START]
    now_steps = journey_steps(wh, day, settings)
    window = (now_steps["delivered_at"] > train_until) & (now_steps["delivered_at"] <= test_until)
    test_steps = now_steps[window]
    test = transitions(test_steps, cfg.markov_order)
    test = test[test["ctx1"] != START].reset_index(drop=True)
    labels = bad_ahead_labels(test_steps, bad)
    train_labels = bad_ahead_labels(journey_steps(wh, train_until, settings), bad)
    base_rate = float(train_labels["y"].mean()) if len(train_labels) else 0.0
    rows = []
    if len(train):
        models = {"Markov chain, last step": NextStepModel.fit(train, 1, cfg.min_context_count, bad),
                  f"Markov chain, last {cfg.markov_order} steps with back-off":
                      NextStepModel.fit(train, cfg.markov_order, cfg.min_context_count, bad)}
        naive = NextStepModel.fit(train, 1, cfg.min_context_count, bad)
        rows.append(_scores("most frequent next step (baseline)", test,
                            pd.Series(naive.fallback_step, index=test.index),
                            pd.Series(naive.fallback_hours, index=test.index), labels, np.full(len(labels), base_rate)))
        for name, model in models.items():
            pred = model.predict(test, test[list(JOURNEY_STEPS)], cfg.max_tickets_per_order)
            rows.append(_scores(name, test, pred["next_step"], pred["hours"], labels,
                                model.bad_probability(labels["state"])))
    table = pd.DataFrame(rows, columns=["model", "transitions", "accuracy", "mae_days", "bad_outcome_brier"])
    return Evaluation(train_until, train_until, test_until, table)


def _scores(name: str, test: pd.DataFrame, next_step: pd.Series, hours: pd.Series, labels: pd.DataFrame,
            p_bad: np.ndarray) -> dict[str, Any]:
    n = len(test)
    accuracy = float((next_step.to_numpy() == test["next"].to_numpy()).mean()) if n else 0.0
    mae = float(np.abs(hours.to_numpy() - test["hours"].to_numpy()).mean() / HOURS_PER_DAY) if n else None
    brier = float(np.mean((p_bad - labels["y"].to_numpy()) ** 2)) if len(labels) else None
    return {"model": name, "transitions": n, "accuracy": accuracy, "mae_days": mae, "bad_outcome_brier": brier}


# ---- summaries ---------------------------------------------------------------------------------------------
def common_paths(steps: pd.DataFrame, as_of: Any, settings: Settings) -> pd.DataFrame:
    """The most common paths of journeys that had time to end (delivered ``quiet_days`` before ``as_of``)."""
    cfg = settings.analytics.journeys
    language = settings.scoring.language
    limit = as_timestamp(as_of) - pd.Timedelta(days=cfg.quiet_days)
    s = steps[steps["delivered_at"] <= limit]
    if s.empty:
        return pd.DataFrame(columns=[c for c in JourneyPaths.to_schema().columns if c != "run_date"])
    g = s.groupby("order_id", sort=False)
    per = pd.DataFrame({
        "codes": g["step"].agg(tuple),
        "days": (g["at"].max() - g["delivered_at"].first()).dt.total_seconds() / 86_400,
    })
    per["returned"] = per["codes"].map(lambda c: "return_requested" in c)
    per["bad_review"] = per["codes"].map(lambda c: "review_bad" in c)
    per["quiet"] = per["codes"].map(lambda c: c[-1] == "gone_quiet")
    agg = per.groupby("codes").agg(orders=("days", "size"), return_rate=("returned", "mean"),
                                   bad_review_rate=("bad_review", "mean"), gone_quiet_rate=("quiet", "mean"),
                                   median_days=("days", "median"))
    agg["share"] = agg["orders"] / len(per)
    agg = agg.sort_values(["orders"], ascending=False, kind="stable").head(cfg.top_paths).reset_index()
    agg["path"] = agg["codes"].map(lambda c: path_text(c, language))
    agg["rank"] = np.arange(1, len(agg) + 1)
    agg["median_days"] = agg["median_days"].clip(lower=0)
    return agg[["rank", "path", "orders", "share", "return_rate", "bad_review_rate", "gone_quiet_rate", "median_days"]]


def stage_times(trans: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Median and 90th-percentile hours of each stage, overall and by ticket channel / product category.

    Channel applies to stages leaving a ticket step (the ticket's channel). A channel or category is
    slow when its median is ``slow_stage_factor`` times the stage's overall median or more.
    """
    cfg = settings.analytics.journeys
    language = settings.scoring.language
    t = trans[trans["ctx1"] != START].rename(columns={"ctx1": "from_step", "next": "to_step"})
    parts = []
    overall = t.groupby(["from_step", "to_step"])["hours"]
    base = pd.DataFrame({"transitions": overall.size(), "median_hours": overall.median(),
                         "p90_hours": overall.quantile(0.9)}).reset_index()
    parts.append(base.assign(dimension="all", value="all"))
    for dim, col in (("channel", "channel"), ("category", "category")):
        sub = t.dropna(subset=[col])
        if dim == "channel":
            sub = sub[sub["from_step"].isin(["ticket_opened", "escalated"])]
        grp = sub.groupby(["from_step", "to_step", col])["hours"]
        part = pd.DataFrame({"transitions": grp.size(), "median_hours": grp.median(),
                             "p90_hours": grp.quantile(0.9)}).reset_index().rename(columns={col: "value"})
        parts.append(part.assign(dimension=dim))
    out = pd.concat(parts, ignore_index=True)
    out = out[out["transitions"] >= cfg.min_stage_count].copy()
    ref = out[out["dimension"] == "all"].set_index(["from_step", "to_step"])["median_hours"]
    stage_median = pd.Series(list(zip(out["from_step"], out["to_step"], strict=True))).map(ref).to_numpy()
    out["slow"] = (out["dimension"] != "all") & (out["median_hours"] >= cfg.slow_stage_factor * stage_median)
    out["stage"] = [f"{label(a, language)} > {label(b, language)}" for a, b in zip(out["from_step"], out["to_step"],
                                                                                 strict=True)]
    out["value"] = out["value"].astype(str)
    cols = ["stage", "from_step", "to_step", "dimension", "value", "transitions", "median_hours", "p90_hours", "slow"]
    return out[cols].sort_values(["from_step", "to_step", "dimension", "value"]).reset_index(drop=True)


def _days_from(pred: pd.DataFrame, g: Any, orders: pd.Index, run_date: pd.Timestamp, settings: Settings) -> np.ndarray:
    """Days from the run date to the predicted step: its typical delay minus the time already waited
    since the last step (going quiet has a fixed date: delivery + ``quiet_days``)."""
    last_at = g["at"].max().reindex(orders)
    delivered = g["delivered_at"].first().reindex(orders)
    due = last_at + pd.to_timedelta(pred["hours"].to_numpy(), unit="h")
    quiet = delivered + pd.Timedelta(days=settings.analytics.journeys.quiet_days)
    due = due.where(pred["next_step"].to_numpy() != "gone_quiet", quiet)
    return ((due - run_date).dt.total_seconds() / 86_400).clip(lower=0).to_numpy(float)


def open_journeys(steps: pd.DataFrame, model: NextStepModel, settings: Settings, run_date: Any) -> pd.DataFrame:
    """Journeys not yet ended: where they stand, what comes next, in how many days from ``run_date``,
    and the chance of a bad outcome."""
    run_date = as_timestamp(run_date)
    language = settings.scoring.language
    bad = tuple(settings.analytics.journeys.bad_steps)
    last = steps.groupby("order_id", sort=False).tail(1)
    last = last[~last["step"].isin(TERMINAL_STEPS)]
    s = steps[steps["order_id"].isin(last["order_id"])]
    if s.empty:
        return pd.DataFrame(columns=[c for c in JourneyPredictions.to_schema().columns if c != "run_date"])
    g = s.groupby("order_id", sort=False)
    tail = s.groupby("order_id", sort=False).tail(model.order)
    back = tail.groupby("order_id", sort=False).cumcount(ascending=False) + 1
    wide = tail.assign(k=back).pivot(index="order_id", columns="k", values="step").reindex(g.size().index)
    ctx = pd.DataFrame({f"ctx{k}": (wide[k] if k in wide else pd.Series(index=wide.index, dtype=object))
                        .fillna(START).to_numpy() for k in range(1, model.order + 1)}, index=wide.index)
    seen = seen_counts(s).groupby(s["order_id"].to_numpy(), sort=False).tail(1)
    seen.index = s.loc[seen.index, "order_id"].to_numpy()
    pred = model.predict(ctx, seen.reindex(ctx.index), settings.analytics.journeys.max_tickets_per_order)
    out = pd.DataFrame({
        "order_id": ctx.index.astype(str),
        "customer_id": g["customer_id"].first().reindex(ctx.index).to_numpy(),
        "current_step": ctx["ctx1"].to_numpy(),
        "path_so_far": g["step"].agg(lambda x: path_text(list(x), language)).reindex(ctx.index).to_numpy(),
        "next_step": pred["next_step"].to_numpy(),
        "next_step_probability": pred["probability"].to_numpy(),
        "expected_days_to_next": _days_from(pred, g, ctx.index, run_date, settings),
        "bad_outcome_probability": model.bad_probability(ctx["ctx1"]),
        "bad_so_far": g["step"].agg(lambda x: bool(set(x) & set(bad))).reindex(ctx.index).to_numpy(),
    })
    out.insert(5, "next_step_label", out["next_step"].map(lambda x: label(x, language)))
    return out.sort_values("bad_outcome_probability", ascending=False, kind="stable").reset_index(drop=True)


# ---- one run ------------------------------------------------------------------------------------------------
@dataclass
class JourneyRun:
    run_date: pd.Timestamp
    paths: pd.DataFrame
    stages: pd.DataFrame
    model_table: pd.DataFrame
    predictions: pd.DataFrame
    evaluation: pd.DataFrame
    journeys: int
    closed: int


def _dated(model: Any, df: pd.DataFrame, day: pd.Timestamp) -> pd.DataFrame:
    out = df.copy()
    out.insert(0, "run_date", day)
    out = model.validate(out, lazy=True)
    stamps = [c for c, col in model.to_schema().columns.items() if "datetime" in str(col.dtype)]
    return out.astype(dict.fromkeys(stamps, "datetime64[us]"))


class NoJourneys(ValueError):
    """Nothing was delivered: there is no journey to analyse (said in words, not a KeyError)."""


def analyse_journeys(wh: Warehouse, run_date: Any, settings: Settings) -> JourneyRun:
    """Paths, stage times, the fitted model, open-journey predictions and the later-window evaluation."""
    cfg = settings.analytics.journeys
    day = as_timestamp(run_date).normalize()
    steps = journey_steps(wh, day, settings)
    if steps.empty:
        raise NoJourneys(f"no order delivered by {day:%Y-%m-%d}: a journey starts at delivery, and this shop's "
                         "orders carry no delivery date (map delivered_at to analyse journeys)")
    trans = transitions(steps, cfg.markov_order)
    real = trans[trans["ctx1"] != START]
    model = NextStepModel.fit(real, cfg.markov_order, cfg.min_context_count, tuple(cfg.bad_steps))
    table = model.table[model.table["state_n"] >= np.where(model.table["length"] > 1, cfg.min_context_count, 1)]
    table = table.rename(columns={"next": "next_step", "n": "transitions"})
    table = table[["state", "next_step", "transitions", "probability", "median_hours"]]
    ev = evaluate_models(wh, day, settings)
    evaluation = ev.table.assign(train_until=ev.train_until, test_from=ev.test_from, test_until=ev.test_until)
    evaluation = evaluation[["model", "train_until", "test_from", "test_until", "transitions", "accuracy", "mae_days",
                             "bad_outcome_brier"]]
    n_orders = steps["order_id"].nunique()
    closed = int(steps.groupby("order_id")["step"].last().isin(TERMINAL_STEPS).sum()) if n_orders else 0
    return JourneyRun(
        day,
        _dated(JourneyPaths, common_paths(steps, day, settings), day),
        _dated(JourneyStageTimes, stage_times(trans, settings), day),
        _dated(JourneyTransitions, table.reset_index(drop=True), day),
        _dated(JourneyPredictions, open_journeys(steps, model, settings, day), day),
        _dated(JourneyEvaluation, evaluation, day),
        n_orders, closed,
    )


def write_journeys(wh: Warehouse, run: JourneyRun) -> None:
    """Store a run's tables; re-running a date replaces that date."""
    where = {"run_date": run.run_date.to_pydatetime()}
    for table, df in ((JOURNEY_PATHS_TABLE, run.paths), (JOURNEY_STAGES_TABLE, run.stages),
                      (JOURNEY_TRANSITIONS_TABLE, run.model_table), (JOURNEY_PREDICTIONS_TABLE, run.predictions),
                      (JOURNEY_EVALUATION_TABLE, run.evaluation)):
        wh.replace_partition(table, df, where)


def journeys_report(run: JourneyRun, settings: Settings, images: bool = True) -> str:
    """Markdown for people: common paths and outcomes, slow stages, model vs baseline, open journeys at risk."""
    cfg = settings.analytics.journeys
    lines = [f"# After-sales journeys — {run.run_date:%Y-%m-%d}", "",
             f"{run.journeys:,} delivered orders; {run.closed:,} journeys ended (ordered again, or no order within "
             f"{cfg.quiet_days} days of delivery).", "", "## Most common paths", "",
             "Journeys delivered at least " f"{cfg.quiet_days} days ago, so every one of them has ended.", ""]
    p = run.paths
    show = pd.DataFrame({"path": p["path"], "orders": p["orders"], "share": p["share"].map("{:.1%}".format),
                         "returned": p["return_rate"].map("{:.0%}".format),
                         "bad review": p["bad_review_rate"].map("{:.0%}".format),
                         "gone quiet": p["gone_quiet_rate"].map("{:.0%}".format),
                         "median days": p["median_days"].round(1)})
    lines.append(markdown_table(show, floatfmt=",.1f"))
    lines += ["", "## Slow stages", "",
              f"Channels and categories whose median time is at least {cfg.slow_stage_factor:g}× the stage's overall "
              "median.", ""]
    st = run.stages
    slow = st[st["slow"]].copy()
    overall = st[st["dimension"] == "all"].set_index("stage")["median_hours"]
    slow_show = pd.DataFrame({"stage": slow["stage"], "by": slow["dimension"], "which": slow["value"],
                              "transitions": slow["transitions"], "median hours": slow["median_hours"].round(1),
                              "stage median hours": slow["stage"].map(overall).round(1)})
    lines.append(markdown_table(slow_show.sort_values("median hours", ascending=False).head(15), floatfmt=",.1f"))
    ev = run.evaluation
    lines += ["", "## What comes next: model against the naive baseline", ""]
    if len(ev):
        e0 = ev.iloc[0]
        lines.append(f"Fitted on what was known on {e0['train_until']:%Y-%m-%d}; scored on the "
                     f"{int(e0['transitions']):,} transitions of orders delivered {e0['test_from']:%Y-%m-%d} – "
                     f"{e0['test_until']:%Y-%m-%d}.")
        lines.append("")
        lines.append(markdown_table(pd.DataFrame({
            "model": ev["model"], "next-step accuracy": ev["accuracy"].map("{:.1%}".format),
            "time-to-next error (days)": ev["mae_days"].round(1),
            "bad-outcome Brier": ev["bad_outcome_brier"].round(3)}), floatfmt=",.3f"))
    pr = run.predictions[~run.predictions["bad_so_far"]]
    lines += ["", "## Open journeys most at risk", "",
              f"{len(run.predictions):,} journeys are open, {len(pr):,} of them without a bad review or return so far; "
              "the 10 of those with the highest chance of a bad review, a return or the customer going quiet:", ""]
    lines.append(markdown_table(pd.DataFrame({
        "order": pr["order_id"], "customer": pr["customer_id"], "so far": pr["path_so_far"],
        "likely next": pr["next_step_label"], "in days": pr["expected_days_to_next"].round(1),
        "bad outcome chance": pr["bad_outcome_probability"].map("{:.0%}".format)}).head(10), floatfmt=",.1f"))
    if images and len(st):
        base = st[st["dimension"] == "all"].sort_values("median_hours").tail(12)
        fig, ax = figure(7, 0.35 * len(base) + 1)
        ax.barh(base["stage"], base["median_hours"] / HOURS_PER_DAY, color="#55a868")
        ax.set_xlabel("median days between steps")
        lines.append(embedded_png(fig, "median time between steps"))
    return "\n".join(lines) + "\n"
