"""Product early warning: weekly return and negative-review rates per product, tested for spikes.

Each week (Monday to Sunday, UTC) and product, two rates:

* return rate = returns requested in the week / order lines delivered in the week. Returns can
  exceed deliveries in a quiet week, so the count is tested as Poisson with the deliveries as
  exposure: P(X >= k | mu = baseline x units) (exact, fine on small counts).
* negative-review rate = reviews scoring <= ``labels.negative_review_max_score`` / reviews in the
  week, tested as binomial: P(X >= k | n, baseline) (exact).

Each rate is compared with two baselines: the product's own previous ``history_weeks`` weeks,
shrunk towards its category's rate by ``prior_strength`` pseudo-units (a thin history does not
make a noisy baseline), and the rest of its category in the same week. All tests of a week
(products x metrics x baselines, only those with the minimum volume) are corrected together with
Benjamini-Hochberg; an alert needs q <= ``fdr_alpha``, at least ``min_events`` events and a rate
``min_rate_ratio`` times the baseline. Each alert carries its counts, baselines, the main
complaint reasons of the week's texts, a few quoted texts and a forecast of next week's
negative-review rate: an exponentially weighted beta-binomial (weights halve every
``forecast_half_life_weeks``; prior: the category's rate worth ``forecast_prior_strength`` reviews).
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from scipy import stats

from schemas.settings import AlertSettings, Settings
from schemas.text import (
    ALERTS_TABLE,
    COMPLAINTS,
    TEXT_INSIGHTS_TABLE,
    WEEK_STATS_TABLE,
    ProductAlerts,
    ProductWeekStats,
    complaint_column,
)
from tasks.data.warehouse import Warehouse

WEEK = pd.Timedelta(days=7)
COMPLAINT_COLUMNS = [complaint_column(c) for c in COMPLAINTS]
METRIC_WORDS = {"return_rate": "return rate", "negative_review_rate": "negative-review rate"}


# ---- the data's clock ----------------------------------------------------------------------------
SOURCE_TIME = {"orders": "ordered_at", "reviews": "created_at", "returns": "requested_at", "tickets": "opened_at"}
SOURCE_WORDS = {"orders": "orders", "reviews": "reviews", "returns": "returns", "tickets": "support tickets",
                "deliveries": "deliveries"}  # deliveries: the orders' delivery dates, not a table of its own


@dataclass(frozen=True)
class SourceEnd:
    """Where one source's data ends: its last row, and the last day with a normal day's volume."""

    source: str
    rows: int
    last: pd.Timestamp | None  # the latest timestamp of any row
    end: pd.Timestamp | None  # midnight after the last day with a normal volume (robust to stray rows)

    def sentence(self) -> str:
        words = SOURCE_WORDS[self.source]
        if not self.rows:
            return f"{words.capitalize()}: no data."
        line = f"{words.capitalize()}: {self.rows:,} rows, up to {self.end - pd.Timedelta(days=1):%d %b %Y}"
        if self.last is not None and self.last >= self.end:
            stray = self.last.normalize() - (self.end - pd.Timedelta(days=1))
            days = f"{stray.days} day{'' if stray.days == 1 else 's'}"
            line += f" (a few stray rows up to {self.last:%d %b %Y}, {days} later, are left out)"
        return line + "."


def source_ends(wh: Warehouse, day_share: float = 0.25, lookback_days: int = 56) -> dict[str, SourceEnd]:
    """Per source: the last day whose row count reaches ``day_share`` of a typical day (the median
    of the active days in the ``lookback_days`` before its last row). One cancelled order three
    weeks after the last review does not move the shop's clock."""
    out = {}
    for table, column in SOURCE_TIME.items():
        if not wh.has_table(table):
            out[table] = SourceEnd(table, 0, None, None)
            continue
        days = wh.query(f"""SELECT date_trunc('day', "{column}") AS day, count(*) AS n FROM "{table}"
                            WHERE "{column}" IS NOT NULL GROUP BY 1 ORDER BY 1""")
        if days.empty:
            out[table] = SourceEnd(table, 0, None, None)
            continue
        days["day"] = pd.to_datetime(days["day"])
        last = pd.Timestamp(wh.scalar(f'SELECT max("{column}") FROM "{table}"'))
        recent = days[days["day"] > days["day"].max() - pd.Timedelta(days=lookback_days)]
        typical = float(recent["n"].median())
        normal = days[days["n"] >= max(1.0, day_share * typical)]
        end_day = normal["day"].max() if len(normal) else days["day"].max()
        out[table] = SourceEnd(table, int(days["n"].sum()), last, end_day + pd.Timedelta(days=1))
    return out


def data_clock(wh: Warehouse, day_share: float = 0.25, lookback_days: int = 56) -> pd.Timestamp:
    """Midnight after the latest source's last normal day (orders, reviews, returns, tickets):
    "now" as far as the data knows (a run never reads the wall clock, and a stray late row does
    not count)."""
    ends = [e.end for e in source_ends(wh, day_share, lookback_days).values() if e.end is not None]
    if not ends:
        raise ValueError("the warehouse holds no orders, reviews, returns or tickets yet")
    return max(ends)


def week_start(ts: pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    return (ts - pd.Timedelta(days=ts.weekday())).normalize()


def last_complete_week(as_of: pd.Timestamp) -> pd.Timestamp:
    """Start of the latest week that ended by ``as_of``."""
    start = week_start(as_of)
    return start if start + WEEK <= as_of else start - WEEK


# ---- weekly statistics -----------------------------------------------------------------------------
def _complaints_sql(wh: Warehouse, weak_maps: dict[str, dict[str, str]]) -> str:
    """Complaint reasons per product and week: from ``text_insights`` when the text flow has run,
    else from return reason codes and ticket categories (the lexicon file's weak-label maps)."""
    cols = ", ".join(f"count(*) FILTER (WHERE complaint = '{c}')::DOUBLE AS {complaint_column(c)}"
                     for c in COMPLAINTS)
    if wh.has_table(TEXT_INSIGHTS_TABLE):
        return f"""SELECT product_id, date_trunc('week', created_at) AS week_start, {cols}
            FROM "{TEXT_INSIGHTS_TABLE}" WHERE created_at < $until AND product_id IS NOT NULL GROUP BY ALL"""

    def case(column: str, mapping: dict[str, str]) -> str:
        whens = " ".join(f"WHEN '{code}' THEN '{cat}'" for code, cat in mapping.items())
        return f"CASE {column} {whens} END" if whens else "NULL"

    return f"""SELECT product_id, date_trunc('week', t) AS week_start, {cols} FROM (
            SELECT product_id, requested_at AS t, {case('reason_code', weak_maps.get('returns', {}))} AS complaint
            FROM returns WHERE product_id IS NOT NULL
        ) WHERE t < $until GROUP BY ALL"""


def weekly_product_stats(wh: Warehouse, until: pd.Timestamp, negative_max_score: int,
                         weak_maps: dict[str, dict[str, str]] | None = None) -> pd.DataFrame:
    """One row per product and week (every week from the product's first delivery to the week
    before ``until``): units delivered, returns, reviews, negative reviews, complaint counts."""
    until_py = pd.Timestamp(until).to_pydatetime()
    base = wh.query("""
        WITH units AS (
            SELECT i.product_id, date_trunc('week', o.delivered_at) AS week_start, count(*)::DOUBLE AS units
            FROM order_items i JOIN orders o USING (order_id)
            WHERE o.delivered_at < $until AND coalesce(o.status, '') <> 'cancelled' GROUP BY ALL),
        rets AS (
            SELECT product_id, date_trunc('week', requested_at) AS week_start, count(*)::DOUBLE AS returns
            FROM returns WHERE requested_at < $until AND product_id IS NOT NULL GROUP BY ALL),
        revs AS (
            SELECT product_id, date_trunc('week', created_at) AS week_start, count(*)::DOUBLE AS reviews,
                   count(*) FILTER (WHERE score <= $bad)::DOUBLE AS negative_reviews
            FROM reviews WHERE created_at < $until AND product_id IS NOT NULL GROUP BY ALL)
        SELECT product_id, week_start, coalesce(u.units, 0) AS units, coalesce(r.returns, 0) AS returns,
               coalesce(v.reviews, 0) AS reviews, coalesce(v.negative_reviews, 0) AS negative_reviews
        FROM units u FULL JOIN rets r USING (product_id, week_start) FULL JOIN revs v USING (product_id, week_start)
        """, {"until": until_py, "bad": negative_max_score})
    complaints = wh.query(_complaints_sql(wh, weak_maps or {}), {"until": until_py})
    products = wh.query("SELECT product_id, name AS product_name, category FROM products")
    if base.empty:
        return pd.DataFrame(columns=["product_id", "week_start", "units", "returns", "reviews", "negative_reviews",
                                     *COMPLAINT_COLUMNS, "product_name", "category"])
    base["week_start"] = pd.to_datetime(base["week_start"])
    complaints["week_start"] = pd.to_datetime(complaints["week_start"])
    # a dense grid: a week without deliveries is a week of history too
    first = base.groupby("product_id")["week_start"].min()
    last_week = week_start(pd.Timestamp(until) - pd.Timedelta(microseconds=1))
    grid = pd.concat([pd.DataFrame({"product_id": pid, "week_start": pd.date_range(start, last_week, freq="7D")})
                      for pid, start in first.items()], ignore_index=True)
    frame = grid.merge(base, on=["product_id", "week_start"], how="left").merge(
        complaints, on=["product_id", "week_start"], how="left")
    frame[["units", "returns", "reviews", "negative_reviews", *COMPLAINT_COLUMNS]] = frame[
        ["units", "returns", "reviews", "negative_reviews", *COMPLAINT_COLUMNS]].fillna(0.0).astype(float)
    frame = frame.merge(products, on="product_id", how="left")
    frame["category"] = frame["category"].fillna("unknown")
    return frame.sort_values(["product_id", "week_start"], ignore_index=True)


def _rates(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["return_rate"] = np.where(out["units"] > 0, out["returns"] / out["units"].where(out["units"] > 0), np.nan)
    out["negative_review_rate"] = np.where(out["reviews"] > 0,
                                           out["negative_reviews"] / out["reviews"].where(out["reviews"] > 0), np.nan)
    return out


def week_stats_table(weekly: pd.DataFrame) -> pd.DataFrame:
    """``product_week_stats``: the product rows plus their category totals."""
    sums = ["units", "returns", "reviews", "negative_reviews", *COMPLAINT_COLUMNS]
    products = weekly.assign(level="product", key=weekly["product_id"])
    categories = weekly.groupby(["category", "week_start"], as_index=False)[sums].sum().assign(level="category")
    categories["key"] = categories["category"]
    both = _rates(pd.concat([products, categories], ignore_index=True))
    both["return_rate"] = both["return_rate"].clip(lower=0)
    return ProductWeekStats.validate(both[list(ProductWeekStats.to_schema().columns)])


# ---- tests -------------------------------------------------------------------------------------------
def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted q-values (NaN stays NaN)."""
    q = np.full(len(p_values), np.nan)
    ok = ~np.isnan(p_values)
    if ok.any():
        q[ok] = stats.false_discovery_control(p_values[ok], method="bh")
    return q


def _history(frame: pd.DataFrame, column: str, weeks: int) -> pd.Series:
    """Sum of ``column`` over the product's previous ``weeks`` weeks (not the current one)."""
    return frame.groupby("product_id")[column].transform(
        lambda s: s.shift(1).rolling(weeks, min_periods=1).sum()).fillna(0.0)


def exposure(frame: pd.DataFrame, weeks: int) -> pd.Series:
    """Units at risk of a return requested this week: the mean weekly deliveries of this and the
    previous ``weeks - 1`` weeks (a return comes days to weeks after its delivery)."""
    return frame.groupby("product_id")["units"].transform(lambda s: s.rolling(weeks, min_periods=1).mean())


def score_weeks(weekly: pd.DataFrame, cfg: AlertSettings) -> pd.DataFrame:
    """Baselines, exact p-values and per-week BH q-values for every product and week."""
    df = weekly.sort_values(["product_id", "week_start"], ignore_index=True).copy()
    df["deliveries"] = df["units"]
    df["units"] = exposure(df, cfg.exposure_weeks)
    h = cfg.history_weeks
    for col in ("units", "returns", "reviews", "negative_reviews"):
        df[f"hist_{col}"] = _history(df, col, h)
    cat = df.groupby(["category", "week_start"])[["units", "returns", "reviews", "negative_reviews"]].transform("sum")
    cat_hist = df.groupby(["category", "week_start"])[["hist_units", "hist_returns", "hist_reviews",
                                                       "hist_negative_reviews"]].transform("sum")
    m = cfg.prior_strength
    cat_ret_rate = cat_hist["hist_returns"] / cat_hist["hist_units"].where(cat_hist["hist_units"] > 0)
    cat_neg_rate = cat_hist["hist_negative_reviews"] / cat_hist["hist_reviews"].where(cat_hist["hist_reviews"] > 0)
    df["baseline_history_return"] = (df["hist_returns"] + m * cat_ret_rate) / (df["hist_units"] + m)
    df["baseline_history_negative"] = (df["hist_negative_reviews"] + m * cat_neg_rate) / (df["hist_reviews"] + m)
    rest_units = cat["units"] - df["units"]
    rest_reviews = cat["reviews"] - df["reviews"]
    df["baseline_category_return"] = ((cat["returns"] - df["returns"]) / rest_units).where(rest_units >= cfg.min_units)
    df["baseline_category_negative"] = ((cat["negative_reviews"] - df["negative_reviews"]) / rest_reviews).where(
        rest_reviews >= cfg.min_reviews)

    ret_ok = df["units"] >= cfg.min_units
    rev_ok = df["reviews"] >= cfg.min_reviews
    thin_units, thin_reviews = df["hist_units"] < cfg.min_history_units, df["hist_reviews"] < cfg.min_history_reviews
    df.loc[thin_units, "baseline_history_return"] = np.nan  # too little history to speak of a spike
    df.loc[thin_reviews, "baseline_history_negative"] = np.nan
    k_ret, k_neg = df["returns"].to_numpy(), df["negative_reviews"].to_numpy()

    def poisson_p(baseline: pd.Series) -> np.ndarray:
        mu = (baseline * df["units"]).to_numpy()
        p = stats.poisson.sf(k_ret - 1, np.maximum(mu, 1e-12))
        return np.where(ret_ok & baseline.notna() & (baseline > 0), p, np.nan)

    def binom_p(baseline: pd.Series) -> np.ndarray:
        p0 = baseline.clip(1e-9, 1 - 1e-9).to_numpy()
        p = stats.binom.sf(k_neg - 1, df["reviews"].to_numpy().astype(int), p0)
        return np.where(rev_ok & baseline.notna() & (baseline > 0), p, np.nan)

    df["p_history_return"] = poisson_p(df["baseline_history_return"])
    df["p_category_return"] = poisson_p(df["baseline_category_return"])
    df["p_history_negative"] = binom_p(df["baseline_history_negative"])
    df["p_category_negative"] = binom_p(df["baseline_category_negative"])
    p_cols = ["p_history_return", "p_category_return", "p_history_negative", "p_category_negative"]
    for _, idx in df.groupby("week_start").groups.items():  # one BH family per week
        block = df.loc[idx, p_cols].to_numpy()
        q = benjamini_hochberg(block.ravel()).reshape(block.shape)
        df.loc[idx, [c.replace("p_", "q_", 1) for c in p_cols]] = q
    return _rates(df)


def flag_alerts(scored: pd.DataFrame, weeks: list[pd.Timestamp], cfg: AlertSettings) -> pd.DataFrame:
    """One row per product, week and metric significantly above a baseline."""
    rows = []
    part = scored[scored["week_start"].isin(weeks)]
    for metric, suffix, events, volume in (("return_rate", "return", "returns", "units"),
                                           ("negative_review_rate", "negative", "negative_reviews", "reviews")):
        rate = part[metric]
        flags = {}
        for comp in ("history", "category"):
            baseline = part[f"baseline_{comp}_{suffix}"]
            flags[comp] = ((part[f"q_{comp}_{suffix}"] <= cfg.fdr_alpha) & (part[events] >= cfg.min_events)
                           & (rate >= cfg.min_rate_ratio * baseline)).fillna(False)
        hit = flags["history"] | flags["category"]
        if not hit.any():
            continue
        sel = part[hit]
        comparison = np.where(flags["history"][hit] & flags["category"][hit], "history+category",
                              np.where(flags["history"][hit], "history", "category"))
        rows.append(pd.DataFrame({
            "week_start": sel["week_start"], "product_id": sel["product_id"], "product_name": sel["product_name"],
            "category": sel["category"], "metric": metric, "comparison": comparison, "events": sel[events],
            "volume": sel[volume], "rate": sel[metric], "baseline_history": sel[f"baseline_history_{suffix}"],
            "baseline_category": sel[f"baseline_category_{suffix}"], "p_history": sel[f"p_history_{suffix}"],
            "q_history": sel[f"q_history_{suffix}"], "p_category": sel[f"p_category_{suffix}"],
            "q_category": sel[f"q_category_{suffix}"],
            **{c: sel[c] for c in COMPLAINT_COLUMNS},
        }))
    if not rows:
        return pd.DataFrame()
    return pd.concat(rows, ignore_index=True).sort_values(["week_start", "product_id", "metric"], ignore_index=True)


# ---- evidence and forecast ---------------------------------------------------------------------------
def _text(value: Any) -> str:
    """A possibly missing text cell as a string ("" when missing)."""
    return value if isinstance(value, str) else ""


def main_complaints(row: pd.Series, top: int) -> str | None:
    """``quality_defect:5; logistics_late:1`` — the week's most frequent complaint reasons."""
    counts = sorted(((row[complaint_column(c)], c) for c in COMPLAINTS if row[complaint_column(c)] > 0), reverse=True)
    return "; ".join(f"{c}:{int(n)}" for n, c in counts[:top]) or None


def forecast_negative_rate(history: pd.DataFrame, prior_rate: float, cfg: AlertSettings) -> tuple[float, float, float]:
    """Next week's negative-review rate (mean, low, high) by an exponentially weighted beta-binomial:
    past weeks' reviews count with weight 0.5 ** (age / half-life), on top of a Beta prior centred on
    ``prior_rate`` worth ``forecast_prior_strength`` reviews."""
    age = np.arange(len(history))[::-1]
    w = 0.5 ** (age / cfg.forecast_half_life_weeks)
    k = float((w * history["negative_reviews"].to_numpy()).sum())
    n = float((w * history["reviews"].to_numpy()).sum())
    prior = min(max(prior_rate if np.isfinite(prior_rate) else 0.1, 1e-3), 1 - 1e-3)
    a = cfg.forecast_prior_strength * prior + k
    b = cfg.forecast_prior_strength * (1 - prior) + (n - k)
    tail = (1 - cfg.forecast_interval) / 2
    return float(a / (a + b)), float(stats.beta.ppf(tail, a, b)), float(stats.beta.ppf(1 - tail, a, b))


def quotes_for(wh: Warehouse, flagged: pd.DataFrame, negative_max_score: int, cfg: AlertSettings) -> dict[
        tuple[str, pd.Timestamp, str], list[str]]:
    """A few texts per alert: the week's bad reviews (negative-review alerts) or return reasons
    (return alerts) of the product, those of the week's main complaint reason first."""
    if flagged.empty:
        return {}
    keys = flagged[["product_id", "week_start"]].drop_duplicates()
    wh.register("_alert_keys", keys)
    try:
        has_insights = wh.has_table(TEXT_INSIGHTS_TABLE)
        complaint = "ti.complaint" if has_insights else "NULL::VARCHAR"
        join = (f'LEFT JOIN "{TEXT_INSIGHTS_TABLE}" ti ON ti.source = t.source AND ti.source_id = t.source_id'
                if has_insights else "")
        texts = wh.query(f"""
            WITH t AS (
                SELECT 'review' AS source, review_id AS source_id, product_id, created_at AS at, text,
                       'negative_review_rate' AS metric
                FROM reviews WHERE score <= $bad AND trim(coalesce(text, '')) <> ''
                UNION ALL
                SELECT 'return', return_id, product_id, requested_at, reason_text, 'return_rate'
                FROM returns WHERE trim(coalesce(reason_text, '')) <> '')
            SELECT k.product_id, k.week_start, t.metric, t.text, {complaint} AS complaint, t.at
            FROM _alert_keys k JOIN t ON t.product_id = k.product_id
                 AND t.at >= k.week_start AND t.at < k.week_start + INTERVAL 7 DAY
            {join}
            ORDER BY k.product_id, k.week_start, t.at""", {"bad": negative_max_score})
    finally:
        wh.unregister("_alert_keys")
    texts["week_start"] = pd.to_datetime(texts["week_start"])
    out: dict[tuple[str, pd.Timestamp, str], list[str]] = {}
    for row in flagged.itertuples(index=False):
        pool = texts[(texts["product_id"] == row.product_id) & (texts["week_start"] == row.week_start)
                     & (texts["metric"] == row.metric)]
        top = _text(row.main_complaints).split(":")[0]
        rank = np.where(pool["complaint"] == top, 0, np.where(pool["complaint"] == "other", 2, 1))
        pool = pool.assign(_rank=rank).sort_values(["_rank", "at"], kind="stable")
        picked = []
        for text in pool["text"]:
            text = " ".join(str(text).split())
            cut = text if len(text) <= cfg.quote_chars else text[: cfg.quote_chars - 1].rstrip() + "…"
            if cut not in picked:
                picked.append(cut)
            if len(picked) == cfg.quotes:
                break
        out[(row.product_id, row.week_start, row.metric)] = picked
    return out


@dataclass
class AlertRun:
    as_of: pd.Timestamp
    weeks: list[pd.Timestamp]
    stats: pd.DataFrame
    alerts: pd.DataFrame
    testable: dict[str, float] = field(default_factory=dict)  # share of active product-weeks testable
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"as_of": str(self.as_of), "weeks": [str(w.date()) for w in self.weeks],
                "alerts": len(self.alerts),
                "products": sorted(self.alerts["product_id"].unique().tolist()) if len(self.alerts) else [],
                "testable": self.testable, "notes": self.notes}


def testable_shares(scored: pd.DataFrame, weeks: list[pd.Timestamp], cfg: AlertSettings) -> dict[str, float]:
    """Of the product-weeks checked that had any delivery or review, the share with enough units to
    test the return rate and with enough reviews to test the negative-review rate."""
    part = scored[scored["week_start"].isin(weeks)] if len(scored) else scored
    active = part[(part["units"] > 0) | (part["reviews"] > 0)] if len(part) else part
    if active.empty:
        return {"return_rate": 0.0, "negative_review_rate": 0.0, "product_weeks": 0.0}
    return {"return_rate": float((active["units"] >= cfg.min_units).mean()),
            "negative_review_rate": float((active["reviews"] >= cfg.min_reviews).mean()),
            "product_weeks": float(len(active))}


def testable_notes(shares: dict[str, float], has_returns: bool, cfg: AlertSettings) -> list[str]:
    """One line per metric that almost never had the volume to be tested (instead of silently
    finding nothing)."""
    n = int(shares.get("product_weeks", 0))
    if n == 0:
        return ["no product had deliveries or reviews in the weeks checked: nothing could be tested"]
    notes = []
    if not has_returns:
        notes.append("no returns data: return rates were not tested")
    elif shares["return_rate"] < cfg.min_testable_share:
        notes.append(f"only {shares['return_rate']:.0%} of {n:,} active product-weeks had the {cfg.min_units} units "
                     f"a week needed to test the return rate (alerts.min_units)")
    if shares["negative_review_rate"] < cfg.min_testable_share:
        notes.append(f"only {shares['negative_review_rate']:.0%} of {n:,} active product-weeks had the "
                     f"{cfg.min_reviews} reviews a week needed to test the negative-review rate (alerts.min_reviews)")
    return notes


def evaluated_weeks(weekly: pd.DataFrame, as_of: pd.Timestamp, n_weeks: int) -> list[pd.Timestamp]:
    """The latest ``n_weeks`` complete weeks (0: every complete week after the first)."""
    last = last_complete_week(as_of)
    all_weeks = sorted(w for w in weekly["week_start"].unique() if w <= last)
    weeks = all_weeks[1:] if n_weeks == 0 else all_weeks[-n_weeks:]
    return [pd.Timestamp(w) for w in weeks]


def detect_alerts(wh: Warehouse, settings: Settings, as_of: Any = None, weeks: int | None = None) -> AlertRun:
    """Weekly statistics, tests and evidence as of ``as_of`` (default: the data's clock)."""
    from tasks.insight.text import load_lexicon

    cfg = settings.alerts
    as_of = pd.Timestamp(as_of) if as_of is not None else data_clock(
        wh, settings.report.data_end_day_share, settings.report.data_end_lookback_days)
    if as_of.tzinfo is not None:
        as_of = as_of.tz_convert("UTC").tz_localize(None)
    neg_max = settings.labels.negative_review_max_score
    weak_maps = load_lexicon(settings.text.lexicon_file).weak_labels
    weekly = weekly_product_stats(wh, last_complete_week(as_of) + WEEK, neg_max, weak_maps)
    n_weeks = cfg.weeks if weeks is None else weeks
    chosen = evaluated_weeks(weekly, as_of, n_weeks) if len(weekly) else []
    scored = score_weeks(weekly, cfg) if len(weekly) else weekly
    flagged = flag_alerts(scored, chosen, cfg) if len(weekly) else pd.DataFrame()
    alerts = _finish_alerts(wh, flagged, scored, as_of, neg_max, cfg)
    shares = testable_shares(scored, chosen, cfg) if len(weekly) else testable_shares(pd.DataFrame(), [], cfg)
    has_returns = wh.has_table("returns") and bool(wh.scalar("SELECT count(*) FROM returns"))
    return AlertRun(as_of, chosen, week_stats_table(weekly) if len(weekly) else _empty(ProductWeekStats), alerts,
                    shares, testable_notes(shares, has_returns, cfg))


def _empty(model: type) -> pd.DataFrame:
    return model.validate(pd.DataFrame({c: pd.Series(dtype=object) for c in model.to_schema().columns}))


def _finish_alerts(wh: Warehouse, flagged: pd.DataFrame, scored: pd.DataFrame, as_of: pd.Timestamp,
                   neg_max: int, cfg: AlertSettings) -> pd.DataFrame:
    if flagged.empty:
        return _empty(ProductAlerts)
    flagged = flagged.copy()
    flagged["main_complaints"] = flagged.apply(main_complaints, axis=1, top=cfg.top_complaints)
    quotes = quotes_for(wh, flagged, neg_max, cfg)
    flagged["quotes"] = [json.dumps(quotes.get((r.product_id, r.week_start, r.metric), []), ensure_ascii=False)
                         for r in flagged.itertuples(index=False)]
    forecasts = []
    for row in flagged.itertuples(index=False):
        history = scored[(scored["product_id"] == row.product_id) & (scored["week_start"] <= row.week_start)]
        history = history.tail(max(int(4 * cfg.forecast_half_life_weeks), 4) * 2)
        cat = scored[(scored["category"] == row.category) & (scored["week_start"] <= row.week_start)
                     & (scored["week_start"] > row.week_start - cfg.history_weeks * WEEK)]
        prior = cat["negative_reviews"].sum() / max(cat["reviews"].sum(), 1.0)
        forecasts.append(forecast_negative_rate(history, prior, cfg))
    flagged[["forecast_negative_review_rate", "forecast_low", "forecast_high"]] = forecasts
    flagged["as_of"] = as_of
    flagged["alert_id"] = [
        hashlib.sha1(f"{r.product_id}|{r.week_start:%Y-%m-%d}|{r.metric}".encode()).hexdigest()[:16]
        for r in flagged.itertuples(index=False)]
    return ProductAlerts.validate(flagged[list(ProductAlerts.to_schema().columns)])


# ---- outputs ---------------------------------------------------------------------------------------
def store_alerts(wh: Warehouse, run: AlertRun) -> None:
    """Replace the weekly statistics and, week by week, the alerts of the evaluated weeks
    (re-running the same weeks replaces their alerts instead of adding copies)."""
    wh.replace_table(WEEK_STATS_TABLE, run.stats)
    for week in run.weeks:
        part = run.alerts[run.alerts["week_start"] == week]
        wh.replace_partition(ALERTS_TABLE, part, {"week_start": week.to_pydatetime()})
    if not run.weeks and not wh.has_table(ALERTS_TABLE):
        wh.replace_table(ALERTS_TABLE, run.alerts)


def describe_alert(row: Any) -> str:
    """One plain sentence per alert."""
    name = row.product_name or row.product_id
    base = {"history": f"its usual {row.baseline_history:.0%}",
            "category": f"{row.baseline_category:.0%} for similar {row.category} products",
            "history+category": f"its usual {row.baseline_history:.0%} and {row.baseline_category:.0%} for "
                                f"similar {row.category} products"}[row.comparison]
    if row.metric == "return_rate":
        counts = f"{row.events:.0f} returns, about {row.volume:.0f} units delivered a week lately"
    else:
        counts = f"{row.events:.0f} of {row.volume:.0f} reviews with 1-2 stars"
    return (f"{name}: {METRIC_WORDS[row.metric]} {row.rate:.0%} in the week of {row.week_start:%d %b %Y} "
            f"({counts}), against {base}.")


def alerts_markdown(run: AlertRun, labels: dict[str, str] | None = None) -> str:
    """The alert file and Prefect artifact: one section per alert with its evidence."""
    labels = labels or {}
    last_day = run.weeks[-1] + WEEK - pd.Timedelta(days=1) if run.weeks else None
    weeks = f"{run.weeks[0]:%d %b %Y} to {last_day:%d %b %Y}" if run.weeks else "none"
    lines = [f"# Product early warning, data as of {run.as_of:%Y-%m-%d}", "",
             f"Weeks checked: {weeks}. Alerts: {len(run.alerts)}.", "",
             *(f"- Note: {note}." for note in run.notes), *([""] if run.notes else [])]
    for row in run.alerts.itertuples(index=False):
        complaints = ", ".join(f"{labels.get(c.split(':')[0], c.split(':')[0])} ({c.split(':')[1]})"
                               for c in _text(row.main_complaints).split("; ") if ":" in c)
        lines += [f"## {row.product_name or row.product_id} ({row.product_id}), week of {row.week_start:%Y-%m-%d}",
                  "", describe_alert(row), "",
                  f"- significance: q = {row.q_history if row.comparison != 'category' else row.q_category:.2g} "
                  f"(Benjamini-Hochberg across the week's products)",
                  f"- main complaints: {complaints or 'no texts'}",
                  f"- next week's negative-review rate: {row.forecast_negative_review_rate:.0%} "
                  f"(likely {row.forecast_low:.0%}-{row.forecast_high:.0%})"]
        lines += [f"- \"{q}\"" for q in json.loads(_text(row.quotes) or "[]")]
        lines.append("")
    return "\n".join(lines)


def write_alert_files(run: AlertRun, out_dir: Path, labels: dict[str, str] | None = None) -> Path:
    """``product_alerts_<date>.md`` (for people) and ``.csv`` (for tools) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"product_alerts_{run.as_of:%Y-%m-%d}.md"
    path.write_text(alerts_markdown(run, labels), encoding="utf-8")
    run.alerts.to_csv(path.with_suffix(".csv"), index=False)
    return path


def alerts_payload(run: AlertRun) -> dict[str, Any]:
    records = json.loads(run.alerts.to_json(orient="records", date_format="iso"))
    for record in records:
        record["quotes"] = json.loads(_text(record.get("quotes")) or "[]")
    return {"source": "aftersales", "kind": "product_alerts", "as_of": run.as_of.isoformat(),
            "weeks": [w.date().isoformat() for w in run.weeks], "alerts": records}


def post_webhook(url: str, payload: dict[str, Any], timeout: float) -> tuple[bool, str]:
    """POST the alerts as JSON; never raises (a dead webhook must not lose the alerts)."""
    request = urllib.request.Request(url, data=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return 200 <= response.status < 300, f"HTTP {response.status}"
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        return False, f"webhook failed: {exc}"


# ---- Prefect tasks -----------------------------------------------------------------------------------
@task(name="detect-product-alerts", cache_policy=NO_CACHE)
def detect_alerts_task(settings: Settings, as_of: Any = None, weeks: int | None = None) -> AlertRun:
    from tasks.data.warehouse import open_warehouse

    with open_warehouse(settings, read_only=True) as wh:
        return detect_alerts(wh, settings, as_of, weeks)


@task(name="store-product-alerts", cache_policy=NO_CACHE)
def store_alerts_task(run: AlertRun, settings: Settings) -> int:
    from tasks.data.warehouse import open_warehouse

    with open_warehouse(settings) as wh:
        store_alerts(wh, run)
    return len(run.alerts)

