"""Service-quality scores per agent, team, channel, product category and week.

The scoring system lives in ``schemas/defaults/service_scores.yaml``: dimensions (first response,
resolution time, first-contact resolution, repeat complaints, escalations, satisfaction), their
weights, standards (target = 100, worst = 0) and scoring curves. Each ticket is measured as known
at the run date; tickets younger than ``settle_days`` are left out because their facts are still
arriving (an unanswered ticket of an hour ago would look fast).

Why shrinkage: a team with three tickets that went well is not the best team, it is a team we know
little about. Per dimension and grouping, each group's mean is pulled toward the overall mean with
the weight of ``k = sigma^2 / tau^2`` pseudo-tickets (within-group variance over between-group
variance, estimated by the method of moments — empirical Bayes; at least ``min_prior_strength``),
and carries an interval from the posterior spread. Groups with fewer than ``min_tickets`` tickets
are shown but never ranked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, Field, model_validator
from scipy.stats import norm

from schemas.analytics import (
    SERVICE_DIMENSIONS_TABLE,
    SERVICE_GROUPINGS,
    SERVICE_SCORES_TABLE,
    ServiceScoreDimensions,
    ServiceScores,
)
from schemas.settings import DEFAULTS_DIR, ServiceScoreSettings, Settings
from tasks.data.warehouse import Warehouse
from tasks.insight.segments import embedded_png, figure
from tasks.insight.tags import Words
from tasks.models.features import as_timestamp, hours_between, run_sql
from tasks.templates import markdown_table

DEFAULT_SCORES_FILE = DEFAULTS_DIR / "service_scores.yaml"
Measure = Literal["first_response_hours", "resolution_hours", "first_contact_resolved", "repeat_complaint",
                  "escalated", "satisfaction"]
GROUP_COLUMNS = {"overall": "overall", "team": "team", "agent": "agent", "channel": "channel",
                 "product_category": "product_category"}
UNKNOWN = "unknown"
MIN_HOURS = 0.05  # 3 minutes: the floor of a time before taking its log
GROUPING_LABELS = {"overall": "whole service", "team": "team", "agent": "agent", "channel": "channel",
                   "product_category": "product category"}


class ServiceScoreError(ValueError):
    """The scoring file cannot be used; the message names the entry."""


class Dimension(BaseModel):
    label: Words
    measure: Measure
    unit: str = ""
    weight: float = Field(ge=0, le=1)
    target: float
    worst: float
    curve: Literal["linear", "logistic"] = "linear"
    scale: Literal["linear", "log"] = "linear"

    @model_validator(mode="after")
    def distinct_standards(self) -> Dimension:
        if self.target == self.worst:
            raise ValueError("target and worst must differ")
        if self.scale == "log" and min(self.target, self.worst) <= 0:
            raise ValueError("a log scale needs positive target and worst")
        return self

    def to_scale(self, x: Any) -> Any:
        return np.log(np.maximum(x, MIN_HOURS)) if self.scale == "log" else x

    def from_scale(self, x: Any) -> Any:
        return np.exp(x) if self.scale == "log" else x

    def score_scaled(self, x: Any) -> np.ndarray:
        """0-100 for values already on the dimension's scale."""
        x = np.asarray(x, dtype=float)
        target, worst = self.to_scale(self.target), self.to_scale(self.worst)
        if self.curve == "linear":
            return np.clip(100.0 * (x - worst) / (target - worst), 0.0, 100.0)
        mid, half = (target + worst) / 2, (target - worst) / 2
        return 100.0 / (1.0 + np.exp(-np.log(19.0) * (x - mid) / half))

    def score(self, x: Any) -> np.ndarray:
        """0-100 for values in the dimension's unit (hours, share, rating)."""
        return self.score_scaled(self.to_scale(np.asarray(x, dtype=float)))


class ScoreBook(BaseModel):
    dimensions: dict[str, Dimension]

    @model_validator(mode="after")
    def weights_add_up(self) -> ScoreBook:
        total = sum(d.weight for d in self.dimensions.values())
        if not self.dimensions or abs(total - 1.0) > 1e-6:
            raise ValueError(f"dimension weights must add up to 1, not {total:g}")
        return self


def load_score_book(path: Path | str | None = None) -> ScoreBook:
    path = Path(path or DEFAULT_SCORES_FILE)
    try:
        return ScoreBook.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (ValueError, yaml.YAMLError) as exc:
        raise ServiceScoreError(f"{path}: {exc}") from exc


# ---- what each ticket measured ----------------------------------------------------------------------------
def _measures_sql(repeat_days: int) -> str:
    """One row per ticket opened by ``$asof``: its groups and measures, as known at ``$asof``."""
    known = "coalesce(t.updated_at, t.resolved_at, t.opened_at) <= $asof"
    return f"""
    WITH t AS (SELECT * FROM tickets WHERE opened_at <= $asof),
    cat AS (
        SELECT order_id, first(category ORDER BY v DESC, category) AS category FROM (
            SELECT i.order_id, coalesce(p.category, '{UNKNOWN}') AS category, sum(i.quantity * i.unit_price) AS v
            FROM order_items i LEFT JOIN products p ON p.product_id = i.product_id
            WHERE i.order_id IN (SELECT order_id FROM t) GROUP BY ALL)
        GROUP BY order_id),
    nxt AS (SELECT t.ticket_id, n.opened_at AS next_at FROM t
            ASOF LEFT JOIN t n ON n.customer_id = t.customer_id AND n.opened_at > t.opened_at)
    SELECT t.ticket_id, t.opened_at,
        coalesce(t.team, '{UNKNOWN}') AS team, coalesce(t.agent_id, '{UNKNOWN}') AS agent,
        coalesce(t.channel, '{UNKNOWN}') AS channel, coalesce(c.category, '{UNKNOWN}') AS product_category,
        {hours_between("t.opened_at", "least(coalesce(t.first_response_at, $asof), $asof)")} AS first_response_hours,
        {hours_between("t.opened_at", "least(coalesce(t.resolved_at, $asof), $asof)")} AS resolution_hours,
        coalesce(t.resolved_at <= $asof, FALSE) AS resolved,
        coalesce(t.escalated AND {known}, FALSE) AS escalated,
        coalesce(t.reopened AND {known}, FALSE) AS reopened,
        coalesce(n.next_at <= t.opened_at + INTERVAL {int(repeat_days)} DAY, FALSE) AS repeat_ticket,
        CASE WHEN t.resolved_at <= $asof AND {known} THEN t.satisfaction END AS satisfaction
    FROM t LEFT JOIN cat c ON c.order_id = t.order_id LEFT JOIN nxt n ON n.ticket_id = t.ticket_id
    ORDER BY t.opened_at, t.ticket_id"""


def ticket_measures(wh: Warehouse, as_of: Any, cfg: ServiceScoreSettings) -> pd.DataFrame:
    """Every ticket opened by ``as_of`` with its groups and the six measures (floats)."""
    raw = run_sql(wh, _measures_sql(cfg.repeat_days), {"asof": as_timestamp(as_of)})
    flags = raw[["resolved", "escalated", "reopened", "repeat_ticket"]].astype(bool)
    out = raw[["ticket_id", "opened_at", "team", "agent", "channel", "product_category"]].copy()
    out["overall"] = "all"
    out["first_response_hours"] = raw["first_response_hours"].astype(float).clip(lower=0)
    out["resolution_hours"] = raw["resolution_hours"].astype(float).clip(lower=0)
    out["escalated"] = flags["escalated"].astype(float)
    out["repeat_complaint"] = (flags["reopened"] | flags["repeat_ticket"]).astype(float)
    out["first_contact_resolved"] = (flags["resolved"] & ~flags["escalated"] & ~flags["reopened"]
                                     & ~flags["repeat_ticket"]).astype(float)
    out["satisfaction"] = pd.to_numeric(raw["satisfaction"], errors="coerce").astype(float)
    return out


# ---- shrinkage -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prior:
    """Per dimension and grouping: overall mean and within variance (scaled), pseudo-ticket weight."""

    mean: float
    within_var: float
    strength: float


def estimate_prior(values: pd.Series, groups: pd.Series, cap: float, floor: float = 0.0) -> Prior:
    """Empirical Bayes by the method of moments: tau^2 = var(group means) - mean(sigma^2 / n).

    The pseudo-ticket weight ``sigma^2 / tau^2`` is kept within ``[floor, cap]``: one outlying group
    inflates tau^2, and then three tickets would count as proof without the floor.
    """
    v = values.dropna()
    if v.empty:
        return Prior(float("nan"), float("nan"), cap)
    g = groups.loc[v.index]
    mean = float(v.mean())
    within = float(v.groupby(g).var(ddof=1).dropna().mean()) if g.nunique() > 1 else float(v.var(ddof=1))
    within = within if np.isfinite(within) and within > 0 else float(v.var(ddof=0) or 1e-9)
    stats = v.groupby(g).agg(["mean", "size"])
    stats = stats[stats["size"] >= 2]
    if len(stats) < 2:
        return Prior(mean, within, cap)
    tau2 = float(stats["mean"].var(ddof=1) - (within / stats["size"]).mean())
    strength = cap if tau2 <= 0 else min(within / tau2, cap)
    return Prior(mean, within, max(strength, min(floor, cap)))


def shrink(values: pd.Series, groups: pd.Series, prior: Prior, z: float) -> pd.DataFrame:
    """Per group: observations, raw mean, shrunk mean and its interval (all on the dimension's scale)."""
    v = values.dropna()
    stats = v.groupby(groups.loc[v.index]).agg(["size", "mean"]).rename(columns={"size": "n", "mean": "raw"})
    n = stats["n"].astype(float)
    k = prior.strength
    stats["shrunk"] = (n * stats["raw"] + k * prior.mean) / (n + k)
    sd = np.sqrt(prior.within_var / (n + k))
    stats["low"], stats["high"] = stats["shrunk"] - z * sd, stats["shrunk"] + z * sd
    return stats


# ---- scoring --------------------------------------------------------------------------------------------
@dataclass
class ServiceRun:
    run_date: pd.Timestamp
    window_start: pd.Timestamp
    window_end: pd.Timestamp
    scores: pd.DataFrame  # ServiceScores
    dimensions: pd.DataFrame  # ServiceScoreDimensions
    tickets: int


def _score_period(tickets: pd.DataFrame, grouping: str, book: ScoreBook, priors: dict[str, Prior],
                  z: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Composite and per-dimension scores of every group of ``grouping`` among ``tickets``."""
    groups = tickets[GROUP_COLUMNS[grouping]].astype(str)
    counts = groups.value_counts()
    dims, parts = [], {}
    for name, dim in book.dimensions.items():
        scaled = pd.Series(dim.to_scale(tickets[dim.measure].to_numpy(float)), index=tickets.index)
        stats = shrink(scaled, groups, priors[name], z).reindex(counts.index)
        score = pd.Series(dim.score_scaled(stats["shrunk"]), index=stats.index).where(stats["n"] > 0)
        ends = np.column_stack([dim.score_scaled(stats["low"]), dim.score_scaled(stats["high"])])
        parts[name] = pd.DataFrame({"score": score, "low": ends.min(axis=1), "high": ends.max(axis=1),
                                    "raw": dim.score_scaled(stats["raw"]), "n": stats["n"].fillna(0)},
                                   index=stats.index)
        dims.append(pd.DataFrame({
            "group_value": stats.index, "dimension": name, "label": dim.label("en"), "weight": dim.weight,
            "observations": stats["n"].fillna(0).astype(int).to_numpy(),
            "measured": dim.from_scale(stats["raw"]).to_numpy(float),
            "shrunk": dim.from_scale(stats["shrunk"]).to_numpy(float), "score": score.to_numpy(float)}))
    weights = pd.DataFrame({n: np.where(parts[n]["n"] > 0, book.dimensions[n].weight, 0.0) for n in parts},
                           index=counts.index)
    total = weights.sum(axis=1).replace(0, np.nan)

    def combine(col: str) -> pd.Series:
        values = pd.DataFrame({n: parts[n][col] for n in parts}).fillna(0.0)
        return (values * weights).sum(axis=1) / total

    composite = pd.DataFrame({"group_value": counts.index, "tickets": counts.to_numpy(),
                              "score": combine("score").to_numpy(), "score_low": combine("low").to_numpy(),
                              "score_high": combine("high").to_numpy(), "raw_score": combine("raw").to_numpy()})
    return composite, pd.concat(dims, ignore_index=True)


def rank_groups(scores: pd.DataFrame, min_tickets: int) -> pd.DataFrame:
    """Rank (1 = best) the groups with enough tickets within each period and grouping."""
    out = scores.copy()
    out["ranked"] = (out["tickets"] >= min_tickets) & (out["group_value"] != UNKNOWN) & (out["grouping"] != "overall")
    keys = ["period", "period_start", "grouping"]
    ranks = out[out["ranked"]].groupby(keys)["score"].rank(ascending=False, method="min")
    out["rank"] = pd.array(ranks.reindex(out.index), dtype="Int64")
    return out


def service_scores(wh: Warehouse, run_date: Any, settings: Settings, book: ScoreBook | None = None) -> ServiceRun:
    """Score the window and each of its last ``trend_weeks`` weeks, for every grouping."""
    cfg = settings.analytics.service
    book = book or load_score_book(cfg.scores_file)
    day = as_timestamp(run_date).normalize()
    end = day - pd.Timedelta(days=cfg.settle_days)
    start = end - pd.Timedelta(days=cfg.window_days)
    measured = ticket_measures(wh, day, cfg)
    window = measured[(measured["opened_at"] > start) & (measured["opened_at"] <= end)]
    z = float(norm.ppf(0.5 + cfg.confidence / 2))
    weeks = window["opened_at"].dt.normalize() - pd.to_timedelta(window["opened_at"].dt.weekday, unit="D")
    last = end - pd.Timedelta(microseconds=1)  # the week holding the window's last moment
    first_week = (last.normalize() - pd.Timedelta(days=last.weekday())) - pd.Timedelta(weeks=cfg.trend_weeks - 1)
    score_parts, dim_parts = [], []
    for grouping in SERVICE_GROUPINGS:
        groups = window[GROUP_COLUMNS[grouping]].astype(str)
        priors = {}
        for name, dim in book.dimensions.items():
            scaled = pd.Series(dim.to_scale(window[dim.measure].to_numpy(float)), index=window.index)
            cap = 0.0 if grouping == "overall" else cfg.max_prior_strength
            priors[name] = estimate_prior(scaled, groups, cap, cfg.min_prior_strength)
        if window.empty:
            continue
        composite, dims = _score_period(window, grouping, book, priors, z)
        score_parts.append(composite.assign(period="window", period_start=start, grouping=grouping))
        dim_parts.append(dims.assign(grouping=grouping))
        for week, chunk in window[weeks >= first_week].groupby(weeks[weeks >= first_week]):
            composite, _ = _score_period(chunk, grouping, book, priors, z)
            score_parts.append(composite.assign(period="week", period_start=week, grouping=grouping))
    columns = list(ServiceScores.to_schema().columns)
    if score_parts:
        scores = rank_groups(pd.concat(score_parts, ignore_index=True), cfg.min_tickets)
        dims = pd.concat(dim_parts, ignore_index=True)
    else:
        scores = pd.DataFrame({c: [] for c in columns if c != "run_date"})
        dims = pd.DataFrame({c: [] for c in ServiceScoreDimensions.to_schema().columns if c != "run_date"})
    for col in ("score", "score_low", "score_high", "raw_score"):
        scores[col] = scores[col].astype(float).clip(0, 100)
    scores = scores.assign(run_date=day)[columns]
    dims = dims.assign(run_date=day)[list(ServiceScoreDimensions.to_schema().columns)]
    scores = ServiceScores.validate(scores, lazy=True).astype({"run_date": "datetime64[us]",
                                                                "period_start": "datetime64[us]"})
    dims = ServiceScoreDimensions.validate(dims, lazy=True).astype({"run_date": "datetime64[us]"})
    sort = ["period", "grouping", "period_start", "rank", "group_value"]
    return ServiceRun(day, start, end, scores.sort_values(sort, na_position="last").reset_index(drop=True),
                      dims, len(window))


def write_service_scores(wh: Warehouse, run: ServiceRun) -> None:
    where = {"run_date": run.run_date.to_pydatetime()}
    wh.replace_partition(SERVICE_DIMENSIONS_TABLE, run.dimensions, where)
    wh.replace_partition(SERVICE_SCORES_TABLE, run.scores, where)


# ---- the report -----------------------------------------------------------------------------------------
def service_report(run: ServiceRun, book: ScoreBook, settings: Settings, images: bool = True) -> str:
    """Markdown for people: the scoring system, rankings per grouping with intervals, weekly trend."""
    cfg = settings.analytics.service
    language = settings.scoring.language
    lines = [f"# Service quality — {run.run_date:%Y-%m-%d}", "",
             f"{run.tickets:,} tickets opened {run.window_start:%Y-%m-%d} – {run.window_end:%Y-%m-%d} (tickets of the "
             f"last {cfg.settle_days} days are not scored yet). Scores run from 0 to 100; each group is pulled "
             f"toward the overall mean the fewer tickets it has, and shown with a {cfg.confidence:.0%} interval. "
             f"Groups with fewer than {cfg.min_tickets} tickets are not ranked.", "", "## The scoring system", ""]
    lines.append(markdown_table(pd.DataFrame([
        {"dimension": d.label(language), "weight": f"{d.weight:.0%}", "standard (100)": f"{d.target:g} {d.unit}",
         "zero at": f"{d.worst:g} {d.unit}", "curve": d.curve + (", log scale" if d.scale == "log" else "")}
        for d in book.dimensions.values()])))
    window = run.scores[run.scores["period"] == "window"]
    overall = window[window["grouping"] == "overall"]
    if len(overall):
        lines.append(f"\nWhole service: **{overall['score'].iloc[0]:.1f}**.\n")
    dims = run.dimensions
    labels = {n: d.label(language) for n, d in book.dimensions.items()}
    for grouping in SERVICE_GROUPINGS[1:]:
        part = window[window["grouping"] == grouping].sort_values(["rank", "score"], ascending=[True, False],
                                                                  na_position="last")
        if part.empty:
            continue
        lines += ["", f"## By {GROUPING_LABELS[grouping]}", ""]
        wide = (dims[dims["grouping"] == grouping].pivot(index="group_value", columns="dimension", values="score")
                .reindex(columns=list(book.dimensions)).rename(columns=labels))
        show = pd.DataFrame({
            "rank": part["rank"].astype("object").where(part["ranked"], "not ranked"),
            GROUPING_LABELS[grouping]: part["group_value"], "tickets": part["tickets"],
            "score": part["score"].round(1),
            "interval": [f"{lo:.0f}–{hi:.0f}" for lo, hi in zip(part["score_low"], part["score_high"], strict=True)],
            "before shrinkage": part["raw_score"].round(1)})
        show = show.join(wide.round(0), on=GROUPING_LABELS[grouping])
        limit = 25 if grouping == "agent" else len(show)
        lines.append(markdown_table(show.head(limit), floatfmt=",.1f"))
        if limit < len(show):
            lines.append(f"\n({len(show) - limit} more agents in the table `service_scores`.)\n")
    weekly = run.scores[(run.scores["period"] == "week") & (run.scores["grouping"] == "team")]
    if images and len(weekly):
        fig, ax = figure(8, 3.6)
        for team, grp in weekly.groupby("group_value"):
            ax.plot(grp["period_start"], grp["score"], marker="o", label=team)
        ax.set_ylabel("score (0-100)")
        ax.set_title("Weekly score by team")
        ax.legend(fontsize=7)
        fig.autofmt_xdate()
        lines += ["", "## Trend", "", embedded_png(fig, "weekly score by team")]
    return "\n".join(lines) + "\n"
