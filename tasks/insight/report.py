"""The after-sales KPI report: one self-contained HTML file for people who never saw the data.

Sections: headline figures of the last ``report.recent_days`` against the window before, what
stands out, trends, customer service, returns, product quality, reviews and complaint reasons,
delivery partners, early warnings, and how each figure is defined. Every chart is a matplotlib
PNG embedded as base64, so the file can be mailed or opened offline; every label is in words,
never a column name. Figures are as of the data's clock (``tasks.insight.alerts.data_clock``) unless a
date is given; nothing after it is counted.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, PercentFormatter
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.settings import Settings
from schemas.text import ALERTS_TABLE, COMPLAINTS, TEXT_INSIGHTS_TABLE
from tasks.data.warehouse import Warehouse
from tasks.insight.alerts import WEEK, data_clock, last_complete_week

COMPLAINT_TICKETS = ("delivery", "product_defect", "size_fit", "complaint_service")
RETURN_REASON_WORDS = {
    "size_fit": "size or fit", "quality_defect": "faulty product", "not_as_described": "not as described",
    "damaged_in_transit": "damaged in transit", "late_delivery": "arrived too late",
    "changed_mind": "changed their mind", "other": "other reason", None: "no reason given",
}
COMPARISON_WORDS = {"history": "its own recent weeks", "category": "similar products that week",
                    "history+category": "its own recent weeks and similar products"}
METRIC_WORDS = {"return_rate": "Return rate", "negative_review_rate": "Negative-review rate"}
SECTIONS = ("Headline figures", "What stands out", "Trends over time", "Customer service", "Returns",
            "Product quality", "Reviews and complaints", "Delivery partners", "Early warnings",
            "How these figures are defined")
BLUE, GREY, RED, GREEN = "#2f6db5", "#9aa5b1", "#c0392b", "#2e8b57"


# ---- small helpers ------------------------------------------------------------------------------
def _py(ts: pd.Timestamp) -> datetime:
    return pd.Timestamp(ts).to_pydatetime()


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def pct(value: Any, digits: int = 1) -> str:
    v = _num(value)
    return "–" if math.isnan(v) else f"{v:.{digits}%}"


def num(value: Any, digits: int = 1, unit: str = "") -> str:
    v = _num(value)
    return "–" if math.isnan(v) else f"{v:,.{digits}f}{unit}"


def esc(text: Any) -> str:
    return html.escape("" if text is None else str(text))


def figure_png(fig: plt.Figure) -> str:
    """A figure as an inline ``<img>`` (base64 PNG); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="chart" alt="chart" src="data:image/png;base64,{data}">'


def bar_chart(labels: list[str], values: list[float], title: str, percent: bool = True,
              highlight: list[bool] | None = None, xlabel: str = "") -> str:
    """Horizontal bars, largest on top, values written at the bar ends."""
    n = len(labels)
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * n + 1.0))
    colors = [RED if (highlight and highlight[i]) else BLUE for i in range(n)]
    ax.barh(range(n)[::-1], values, color=colors)
    ax.set_yticks(range(n)[::-1], labels)
    ax.set_title(title, loc="left", fontsize=11)
    top = max([v for v in values if np.isfinite(v)] or [1.0])
    for i, v in enumerate(values):
        if np.isfinite(v):
            ax.text(v + top * 0.01, n - 1 - i, f"{v:.1%}" if percent else f"{v:,.1f}", va="center", fontsize=9)
    if percent:
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlim(0, top * 1.18)
    ax.set_xlabel(xlabel)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", alpha=0.25)
    return figure_png(fig)


def line_chart(weeks: pd.Series, series: dict[str, pd.Series], title: str, percent: bool = False,
               ylabel: str = "") -> str:
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    for i, (name, values) in enumerate(series.items()):
        ax.plot(weeks, values, color=[BLUE, RED, GREEN, GREY][i % 4], linewidth=1.8, label=name)
    ax.set_title(title, loc="left", fontsize=11)
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v) >= 10 or v == 0 else f"{v:,.1f}"))
    ax.set_ylabel(ylabel)
    top = max((float(np.nanmax(v)) for v in series.values() if np.isfinite(v).any()), default=1.0)
    ax.set_ylim(0, top * (1.35 if len(series) > 1 else 1.1))
    if len(series) > 1:
        ax.legend(frameon=False, fontsize=8, loc="upper left", ncols=len(series))
    fig.autofmt_xdate()
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.25)
    return figure_png(fig)


def table_html(frame: pd.DataFrame, formats: dict[str, Callable[[Any], str]] | None = None,
               numeric: tuple[str, ...] = ()) -> str:
    """A plain table; the frame's column names are already the words shown."""
    formats = formats or {}
    head = "".join(f'<th class="{"num" if c in numeric else ""}">{esc(c)}</th>' for c in frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = "".join(
            f'<td class="{"num" if c in numeric else ""}">{formats[c](row[c]) if c in formats else esc(row[c])}</td>'
            for c in frame.columns)
        rows.append(f"<tr>{cells}</tr>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


# ---- data -------------------------------------------------------------------------------------------
@dataclass
class Windows:
    as_of: pd.Timestamp
    recent_start: pd.Timestamp
    previous_start: pd.Timestamp
    breakdown_start: pd.Timestamp
    trend_start: pd.Timestamp
    trend_end: pd.Timestamp  # exclusive: the end of the last complete week


def windows(as_of: pd.Timestamp, settings: Settings) -> Windows:
    cfg = settings.report
    recent = pd.Timedelta(days=cfg.recent_days)
    trend_end = last_complete_week(as_of) + WEEK
    return Windows(as_of, as_of - recent, as_of - 2 * recent, as_of - pd.Timedelta(days=cfg.breakdown_days),
                   trend_end - cfg.trend_weeks * WEEK, trend_end)


def window_kpis(wh: Warehouse, start: pd.Timestamp, end: pd.Timestamp, settings: Settings) -> dict[str, float]:
    """The headline figures of one window [start, end)."""
    cats = ", ".join(f"'{c}'" for c in COMPLAINT_TICKETS)
    row = wh.query(f"""
        WITH t AS (SELECT * FROM tickets WHERE opened_at >= $s AND opened_at < $e),
             r AS (SELECT * FROM reviews WHERE created_at >= $s AND created_at < $e),
             lines AS (SELECT count(*) AS n FROM order_items i JOIN orders o USING (order_id)
                       WHERE o.delivered_at >= $s AND o.delivered_at < $e AND coalesce(o.status, '') <> 'cancelled'),
             ret AS (SELECT * FROM returns WHERE requested_at >= $s AND requested_at < $e)
        SELECT
            (SELECT avg(satisfaction) FROM t) AS satisfaction,
            (SELECT avg(score) FROM r) AS review_score,
            (SELECT avg(CASE WHEN score <= $bad THEN 1.0 ELSE 0.0 END) FROM r) AS negative_review_rate,
            (SELECT count(*) FROM orders WHERE ordered_at >= $s AND ordered_at < $e) AS orders,
            ((SELECT count(*) FROM t WHERE category IN ({cats})) + (SELECT count(*) FROM r WHERE score <= $bad))
                AS complaints,
            (SELECT median(date_diff('second', opened_at, first_response_at)) / 3600.0 FROM t
             WHERE first_response_at IS NOT NULL AND first_response_at < $e) AS first_response_hours,
            (SELECT avg(CASE WHEN first_response_at IS NOT NULL AND first_response_at < $e
                             AND date_diff('second', opened_at, first_response_at) <= $target * 3600 THEN 1.0
                             ELSE 0.0 END) FROM t
             WHERE opened_at < $e - to_seconds(CAST($target * 3600 AS BIGINT))) AS response_target_share,
            (SELECT median(date_diff('second', opened_at, resolved_at)) / 3600.0 FROM tickets
             WHERE resolved_at >= $s AND resolved_at < $e) AS handling_hours,
            (SELECT avg(CASE WHEN NOT coalesce(reopened, FALSE) AND NOT coalesce(escalated, FALSE) THEN 1.0
                        ELSE 0.0 END) FROM tickets WHERE resolved_at >= $s AND resolved_at < $e)
                AS first_contact_resolution,
            (SELECT n FROM lines) AS units,
            (SELECT count(*) FROM ret) AS returns,
            (SELECT count(*) FROM ret WHERE reason_code = 'quality_defect') AS quality_returns
        """, {"s": _py(start), "e": _py(end), "bad": settings.labels.negative_review_max_score,
              "target": float(settings.report.response_target_hours)}).iloc[0]
    out = {k: _num(v) for k, v in row.items()}
    out["complaint_rate"] = 100 * out["complaints"] / out["orders"] if out["orders"] else math.nan
    out["return_rate"] = out["returns"] / out["units"] if out["units"] else math.nan
    out["failure_rate"] = out["quality_returns"] / out["units"] if out["units"] else math.nan
    return out


def weekly_trends(wh: Warehouse, start: pd.Timestamp, end: pd.Timestamp, settings: Settings) -> pd.DataFrame:
    """Per complete week: orders, return rate, negative-review rate, satisfaction, response time."""
    frame = wh.query("""
        WITH weeks AS (SELECT unnest(generate_series($s, $e - INTERVAL 7 DAY, INTERVAL 7 DAY)) AS week),
        o AS (SELECT date_trunc('week', ordered_at) AS week, count(*) AS orders FROM orders
              WHERE ordered_at >= $s AND ordered_at < $e GROUP BY 1),
        u AS (SELECT date_trunc('week', o.delivered_at) AS week, count(*) AS units
              FROM order_items i JOIN orders o USING (order_id)
              WHERE o.delivered_at >= $s AND o.delivered_at < $e AND coalesce(o.status, '') <> 'cancelled' GROUP BY 1),
        x AS (SELECT date_trunc('week', requested_at) AS week, count(*) AS returns FROM returns
              WHERE requested_at >= $s AND requested_at < $e GROUP BY 1),
        r AS (SELECT date_trunc('week', created_at) AS week, count(*) AS reviews,
                     avg(CASE WHEN score <= $bad THEN 1.0 ELSE 0.0 END) AS negative_review_rate
              FROM reviews WHERE created_at >= $s AND created_at < $e GROUP BY 1),
        t AS (SELECT date_trunc('week', opened_at) AS week, avg(satisfaction) AS satisfaction,
                     median(date_diff('second', opened_at, first_response_at)) / 3600.0 AS first_response_hours
              FROM tickets WHERE opened_at >= $s AND opened_at < $e GROUP BY 1)
        SELECT weeks.week, coalesce(orders, 0) AS orders, coalesce(units, 0) AS units, coalesce(returns, 0) AS returns,
               reviews, negative_review_rate, satisfaction, first_response_hours
        FROM weeks LEFT JOIN o USING (week) LEFT JOIN u USING (week) LEFT JOIN x USING (week)
             LEFT JOIN r USING (week) LEFT JOIN t USING (week) ORDER BY 1
        """, {"s": _py(start), "e": _py(end), "bad": settings.labels.negative_review_max_score})
    frame["week"] = pd.to_datetime(frame["week"])
    units = frame["units"].astype(float)
    frame["return_rate"] = (frame["returns"] / units.where(units > 0)).astype(float)
    return frame


def _lines_sql() -> str:
    return """SELECT i.order_id, i.product_id, o.region, o.carrier, o.delivered_at, o.promised_at
              FROM order_items i JOIN orders o USING (order_id)
              WHERE o.delivered_at >= $s AND o.delivered_at < $e AND coalesce(o.status, '') <> 'cancelled'"""


def return_breakdowns(wh: Warehouse, start: pd.Timestamp, end: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """Return rate by category, region and product, and returns by reason, for [start, end)."""
    params = {"s": _py(start), "e": _py(end)}
    by_reason = wh.query("""SELECT reason_code, count(*) AS returns FROM returns
                            WHERE requested_at >= $s AND requested_at < $e GROUP BY 1 ORDER BY 2 DESC""", params)
    per_product = wh.query(f"""
        WITH lines AS ({_lines_sql()}),
        u AS (SELECT product_id, count(*) AS units FROM lines GROUP BY 1),
        x AS (SELECT r.product_id, count(*) AS returns,
                     count(*) FILTER (WHERE r.reason_code = 'quality_defect') AS quality_returns,
                     mode(r.reason_code) AS main_reason
              FROM returns r WHERE r.requested_at >= $s AND r.requested_at < $e GROUP BY 1)
        SELECT p.product_id, p.name, coalesce(p.category, 'unknown') AS category, coalesce(u.units, 0) AS units,
               coalesce(x.returns, 0) AS returns, coalesce(x.quality_returns, 0) AS quality_returns, x.main_reason
        FROM products p LEFT JOIN u USING (product_id) LEFT JOIN x USING (product_id)
        WHERE coalesce(u.units, 0) > 0 OR coalesce(x.returns, 0) > 0""", params)
    by_region = wh.query(f"""
        WITH lines AS ({_lines_sql()}),
        u AS (SELECT coalesce(region, 'unknown') AS region, count(*) AS units FROM lines GROUP BY 1),
        x AS (SELECT coalesce(o.region, 'unknown') AS region, count(*) AS returns
              FROM returns r JOIN orders o USING (order_id)
              WHERE r.requested_at >= $s AND r.requested_at < $e GROUP BY 1)
        SELECT region, coalesce(units, 0) AS units, coalesce(returns, 0) AS returns
        FROM u FULL JOIN x USING (region)""", params)
    by_category = per_product.groupby("category", as_index=False)[["units", "returns", "quality_returns"]].sum()
    for frame in (per_product, by_category, by_region):
        units = frame["units"].astype(float)
        frame["return_rate"] = frame["returns"] / units.where(units > 0)
    for frame in (per_product, by_category):
        units = frame["units"].astype(float)
        frame["failure_rate"] = frame["quality_returns"] / units.where(units > 0)
    return {"reason": by_reason, "product": per_product, "category": by_category, "region": by_region}


def review_breakdowns(wh: Warehouse, start: pd.Timestamp, end: pd.Timestamp, settings: Settings) -> pd.DataFrame:
    return wh.query("""
        SELECT coalesce(p.category, 'unknown') AS category, count(*) AS reviews,
               avg(CASE WHEN r.score <= $bad THEN 1.0 ELSE 0.0 END) AS negative_review_rate, avg(r.score) AS score
        FROM reviews r LEFT JOIN products p USING (product_id)
        WHERE r.created_at >= $s AND r.created_at < $e GROUP BY 1 ORDER BY 3 DESC""",
                    {"s": _py(start), "e": _py(end), "bad": settings.labels.negative_review_max_score})


def complaint_breakdowns(wh: Warehouse, start: pd.Timestamp, end: pd.Timestamp) -> dict[str, pd.DataFrame] | None:
    """Complaint reasons of the window's texts (None until the text flow has run)."""
    if not wh.has_table(TEXT_INSIGHTS_TABLE):
        return None
    params = {"s": _py(start), "e": _py(end)}
    by_reason = wh.query(f"""SELECT complaint, count(*) AS texts FROM "{TEXT_INSIGHTS_TABLE}"
        WHERE created_at >= $s AND created_at < $e AND complaint <> 'other' GROUP BY 1 ORDER BY 2 DESC""", params)
    hotspots = wh.query(f"""
        WITH c AS (SELECT product_id, complaint, count(*) AS texts FROM "{TEXT_INSIGHTS_TABLE}"
                   WHERE created_at >= $s AND created_at < $e AND complaint <> 'other' AND product_id IS NOT NULL
                   GROUP BY 1, 2)
        SELECT c.product_id, p.name, coalesce(p.category, 'unknown') AS category, c.complaint, c.texts,
               c.texts / sum(c.texts) OVER (PARTITION BY c.product_id) AS share_of_product
        FROM c LEFT JOIN products p USING (product_id) ORDER BY c.texts DESC LIMIT 10""", params)
    by_carrier = wh.query(f"""
        SELECT coalesce(o.carrier, 'unknown') AS carrier, count(*) AS texts FROM "{TEXT_INSIGHTS_TABLE}" ti
        JOIN orders o USING (order_id)
        WHERE ti.created_at >= $s AND ti.created_at < $e AND ti.complaint = 'logistics_late' GROUP BY 1""", params)
    negative = wh.query(f"""SELECT source, avg(CASE WHEN negative THEN 1.0 ELSE 0.0 END) AS negative_share,
        count(*) AS texts FROM "{TEXT_INSIGHTS_TABLE}" WHERE created_at >= $s AND created_at < $e GROUP BY 1""", params)
    return {"reason": by_reason, "hotspots": hotspots, "carrier": by_carrier, "negative": negative}


def carrier_breakdown(wh: Warehouse, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    frame = wh.query("""
        SELECT coalesce(carrier, 'unknown') AS carrier, count(*) AS delivered,
               count(*) FILTER (WHERE promised_at IS NOT NULL AND delivered_at > promised_at) AS late,
               median(date_diff('second', ordered_at, delivered_at)) / 86400.0 AS days_to_deliver
        FROM orders WHERE delivered_at >= $s AND delivered_at < $e AND coalesce(status, '') <> 'cancelled'
        GROUP BY 1 ORDER BY 2 DESC""", {"s": _py(start), "e": _py(end)})
    frame["late_rate"] = frame["late"] / frame["delivered"].where(frame["delivered"] > 0)
    total_late = frame["late"].sum()
    frame["share_of_late"] = frame["late"] / total_late if total_late else np.nan
    return frame


def team_breakdown(wh: Warehouse, start: pd.Timestamp, end: pd.Timestamp, settings: Settings) -> pd.DataFrame:
    return wh.query("""
        SELECT coalesce(team, 'unassigned') AS team, count(*) AS tickets,
               median(date_diff('second', opened_at, first_response_at)) / 3600.0 AS first_response_hours,
               avg(CASE WHEN first_response_at IS NOT NULL
                        AND date_diff('second', opened_at, first_response_at) <= $target * 3600 THEN 1.0 ELSE 0.0 END)
                   AS response_target_share,
               median(date_diff('second', opened_at, resolved_at)) / 3600.0 AS handling_hours,
               avg(CASE WHEN resolved_at IS NULL OR resolved_at >= $e THEN 1.0 ELSE 0.0 END) AS unresolved_share,
               avg(CASE WHEN coalesce(escalated, FALSE) THEN 1.0 ELSE 0.0 END) AS escalation_rate,
               avg(satisfaction) AS satisfaction
        FROM tickets WHERE opened_at >= $s AND opened_at < $e GROUP BY 1 ORDER BY 1""",
                    {"s": _py(start), "e": _py(end), "target": float(settings.report.response_target_hours)})


def recent_alerts(wh: Warehouse, as_of: pd.Timestamp, limit: int) -> pd.DataFrame | None:
    """The newest alerts up to ``as_of`` (None until the alerts flow has run)."""
    if not wh.has_table(ALERTS_TABLE):
        return None
    return wh.query(f"""SELECT * FROM "{ALERTS_TABLE}" WHERE week_start < $e
        ORDER BY week_start DESC, coalesce(q_history, q_category) ASC LIMIT {int(limit)}""", {"e": _py(as_of)})


@dataclass
class ReportData:
    win: Windows
    recent: dict[str, float]
    previous: dict[str, float]
    trends: pd.DataFrame
    returns: dict[str, pd.DataFrame]
    reviews: pd.DataFrame
    complaints: dict[str, pd.DataFrame] | None
    carriers: pd.DataFrame
    teams: pd.DataFrame
    alerts: pd.DataFrame | None
    complaint_words: dict[str, str] = field(default_factory=dict)


def collect(wh: Warehouse, settings: Settings, as_of: Any = None) -> ReportData:
    """Every figure of the report, as of ``as_of`` (default: the data's clock)."""
    from tasks.insight.text import load_lexicon

    as_of = pd.Timestamp(as_of) if as_of is not None else data_clock(wh)
    if as_of.tzinfo is not None:
        as_of = as_of.tz_convert("UTC").tz_localize(None)
    w = windows(as_of, settings)
    lexicon = load_lexicon(settings.text.lexicon_file)
    return ReportData(
        win=w,
        recent=window_kpis(wh, w.recent_start, as_of, settings),
        previous=window_kpis(wh, w.previous_start, w.recent_start, settings),
        trends=weekly_trends(wh, w.trend_start, w.trend_end, settings),
        returns=return_breakdowns(wh, w.breakdown_start, as_of),
        reviews=review_breakdowns(wh, w.breakdown_start, as_of, settings),
        complaints=complaint_breakdowns(wh, w.breakdown_start, as_of),
        carriers=carrier_breakdown(wh, w.breakdown_start, as_of),
        teams=team_breakdown(wh, w.breakdown_start, as_of, settings),
        alerts=recent_alerts(wh, as_of, settings.report.max_alerts),
        complaint_words={c: lexicon.label(c) for c in [*COMPLAINTS, "other"]},
    )


# ---- rendering ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kpi:
    key: str
    title: str
    fmt: Callable[[Any], str]
    better: str  # "up" or "down"
    explain: str


KPIS = [
    Kpi("satisfaction", "Service satisfaction", lambda v: num(v, 2, " / 5"), "up",
        "average rating customers gave their support contact"),
    Kpi("review_score", "Average review", lambda v: num(v, 2, " / 5"), "up", "average product review score"),
    Kpi("complaint_rate", "Complaints per 100 orders", lambda v: num(v, 1), "down",
        "complaint tickets plus 1-2 star reviews, per 100 orders placed"),
    Kpi("first_response_hours", "First response time", lambda v: num(v, 1, " h"), "down",
        "median hours until a customer's ticket first got an answer"),
    Kpi("response_target_share", "Answered within target", lambda v: pct(v, 0), "up",
        "share of tickets answered within the response target"),
    Kpi("handling_hours", "Time to resolve", lambda v: num(v, 1, " h"), "down",
        "median hours from opening a ticket to solving it"),
    Kpi("first_contact_resolution", "Solved without escalation", lambda v: pct(v, 0), "up",
        "solved tickets that were neither escalated nor reopened"),
    Kpi("return_rate", "Return rate", lambda v: pct(v, 1), "down", "returns per item delivered"),
    Kpi("failure_rate", "Product failure rate", lambda v: pct(v, 1), "down",
        "items returned as faulty, per item delivered"),
    Kpi("negative_review_rate", "Negative reviews", lambda v: pct(v, 1), "down", "share of reviews with 1-2 stars"),
]


def _change(kpi: Kpi, now: float, before: float) -> str:
    if math.isnan(now) or math.isnan(before) or before == 0:
        return '<span class="flat">no earlier figure</span>'
    rel = now / before - 1
    if abs(rel) < 0.02:
        return '<span class="flat">about the same as before</span>'
    good = (rel > 0) == (kpi.better == "up")
    arrow = "▲" if rel > 0 else "▼"
    return f'<span class="{"good" if good else "bad"}">{arrow} {abs(rel):.0%} vs previous period</span>'


def headline_html(data: ReportData, settings: Settings) -> str:
    cards = []
    for kpi in KPIS:
        now, before = data.recent.get(kpi.key, math.nan), data.previous.get(kpi.key, math.nan)
        explain = kpi.explain.replace("the response target",
                                      f"{settings.report.response_target_hours:g} hours")
        cards.append(f'<div class="card"><div class="label">{esc(kpi.title)}</div>'
                     f'<div class="value">{kpi.fmt(now)}</div><div class="change">{_change(kpi, now, before)}</div>'
                     f'<div class="explain">{esc(explain)}; before: {kpi.fmt(before)}</div></div>')
    return f'<div class="cards">{"".join(cards)}</div>'


def _baselines(row: Any) -> str:
    """"12% in its recent weeks and 7% for similar products" — whichever the alert beat."""
    parts = [f"{pct(row.baseline_history, 0)} in its recent weeks" if row.comparison != "category" else "",
             f"{pct(row.baseline_category, 0)} for similar products" if row.comparison != "history" else ""]
    return " and ".join(p for p in parts if p)


def _product_label(name: Any, pid: Any) -> str:
    return str(name) if isinstance(name, str) and name else str(pid)


def highlights(data: ReportData, settings: Settings) -> list[str]:
    """Plain sentences on what stands out, strongest evidence first."""
    out: list[str] = []
    if data.alerts is not None and len(data.alerts):
        latest = data.alerts.sort_values("week_start").groupby("product_id").tail(1)
        for row in latest.sort_values("week_start", ascending=False).head(3).itertuples(index=False):
            out.append(f"<b>{esc(_product_label(row.product_name, row.product_id))}</b>: "
                       f"{METRIC_WORDS[row.metric].lower()} of {pct(row.rate, 0)} in the week of "
                       f"{pd.Timestamp(row.week_start):%d %b %Y}, against {_baselines(row)}.")
    products = data.returns["product"]
    big = products[products["units"] >= settings.report.min_product_units].copy()
    if len(big):
        cat_fail = data.returns["category"].set_index("category")["failure_rate"]
        big["ratio"] = big["failure_rate"] / big["category"].map(cat_fail)
        worst = big[big["quality_returns"] >= 3].sort_values("ratio", ascending=False).head(1)
        for row in worst.itertuples(index=False):
            if row.ratio >= 1.5:
                out.append(f"<b>{esc(row.name)}</b> fails {row.ratio:.1f} times as often as other "
                           f"{esc(row.category)} products ({pct(row.failure_rate)} of items returned as faulty).")
    carriers = data.carriers[data.carriers["delivered"] >= settings.report.min_product_units]
    if len(carriers) > 1:
        top = carriers.sort_values("late_rate", ascending=False).iloc[0]
        rest = carriers[carriers["carrier"] != top["carrier"]]
        rest_rate = rest["late"].sum() / max(rest["delivered"].sum(), 1)
        if top["late_rate"] >= 2 * rest_rate:
            out.append(f"<b>{esc(top['carrier'])}</b> delivered {pct(top['late_rate'], 0)} of its parcels late, "
                       f"against {pct(rest_rate, 0)} for the other carriers; it accounts for "
                       f"{pct(top['share_of_late'], 0)} of all late deliveries.")
    teams = data.teams[data.teams["tickets"] >= 20]
    if len(teams) > 1:
        slow = teams.sort_values("first_response_hours", ascending=False).iloc[0]
        others = teams[teams["team"] != slow["team"]]["first_response_hours"].median()
        if slow["first_response_hours"] >= 2 * others:
            out.append(f"<b>{esc(slow['team'])}</b> takes a median {num(slow['first_response_hours'])} hours to "
                       f"answer a ticket, against {num(others)} hours for the other teams; its customers rate "
                       f"the service {num(slow['satisfaction'], 1)} / 5.")
    if data.complaints is not None and len(data.complaints["reason"]):
        reasons = data.complaints["reason"]
        first = reasons.iloc[0]
        out.append(f"The most common complaint is <b>{esc(data.complaint_words.get(first['complaint']))}</b>: "
                   f"{pct(first['texts'] / reasons['texts'].sum(), 0)} of complaints in the last "
                   f"{settings.report.breakdown_days} days.")
    return out


def _section(title: str, intro: str, body: str) -> str:
    anchor = title.lower().replace(" ", "-")
    return f'<section id="{anchor}"><h2>{esc(title)}</h2><p class="intro">{intro}</p>{body}</section>'


def _empty(text: str) -> str:
    return f'<p class="empty">{esc(text)}</p>'


def trends_html(data: ReportData) -> str:
    t = data.trends
    if t.empty or t["orders"].sum() == 0:
        return _empty("No orders in the period.")
    charts = [
        line_chart(t["week"], {"orders": t["orders"]}, "Orders per week"),
        line_chart(t["week"], {"return rate": t["return_rate"], "share of 1-2 star reviews":
                               t["negative_review_rate"]}, "Return rate and share of negative reviews", percent=True),
        line_chart(t["week"], {"service satisfaction (1-5)": t["satisfaction"]}, "Service satisfaction (1 to 5)"),
        line_chart(t["week"], {"first response (hours)": t["first_response_hours"]},
                   "Median hours to first response"),
    ]
    return f'<div class="grid">{"".join(charts)}</div>'


def service_html(data: ReportData, settings: Settings) -> str:
    teams = data.teams
    if teams.empty:
        return _empty("No support tickets in the period.")
    target = f"Answered within {settings.report.response_target_hours:g} h"
    shown = pd.DataFrame({
        "Team": teams["team"], "Tickets": teams["tickets"],
        "Median first response": teams["first_response_hours"], target: teams["response_target_share"],
        "Median time to resolve": teams["handling_hours"], "Still open": teams["unresolved_share"],
        "Escalated": teams["escalation_rate"], "Satisfaction (1-5)": teams["satisfaction"]})
    hours = lambda v: num(v, 1, " h")  # noqa: E731
    table = table_html(shown, {"Tickets": lambda v: num(v, 0), "Median first response": hours, target: pct,
                               "Median time to resolve": hours, "Still open": pct, "Escalated": pct,
                               "Satisfaction (1-5)": lambda v: num(v, 2)},
                       numeric=tuple(shown.columns[1:]))
    chart = bar_chart(teams["team"].tolist(), teams["first_response_hours"].tolist(),
                      "Median hours to first response, by team", percent=False,
                      highlight=(teams["first_response_hours"] >= 2 * teams["first_response_hours"].median()).tolist())
    return table + chart


def returns_html(data: ReportData, settings: Settings) -> str:
    r = data.returns
    if r["reason"].empty and r["product"]["units"].sum() == 0:
        return _empty("No deliveries or returns in the period.")
    reasons = r["reason"]
    total = max(reasons["returns"].sum(), 1)
    parts = [bar_chart([RETURN_REASON_WORDS.get(c, str(c)) for c in reasons["reason_code"]],
                       (reasons["returns"] / total).tolist(), "Why customers return (share of returns)")]
    cat = r["category"][r["category"]["units"] > 0].sort_values("return_rate", ascending=False)
    parts.append(bar_chart(cat["category"].str.capitalize().tolist(), cat["return_rate"].tolist(),
                           "Return rate by product category"))
    reg = r["region"][r["region"]["units"] >= settings.report.min_product_units].sort_values("return_rate",
                                                                                               ascending=False)
    if len(reg):
        parts.append(bar_chart(reg["region"].tolist(), reg["return_rate"].tolist(), "Return rate by region"))
    prod = r["product"][r["product"]["units"] >= settings.report.min_product_units]
    top = prod.sort_values("return_rate", ascending=False).head(settings.report.top_products)
    cat_rate = r["category"].set_index("category")["return_rate"]
    shown = pd.DataFrame({
        "Product": top["name"].fillna(top["product_id"]), "Category": top["category"].str.capitalize(),
        "Items delivered": top["units"], "Returned": top["returns"], "Return rate": top["return_rate"],
        "Category average": top["category"].map(cat_rate),
        "Main reason": [RETURN_REASON_WORDS.get(c, str(c)) for c in top["main_reason"]]})
    body = f'<div class="grid">{"".join(parts)}</div>'
    if len(shown):
        body += (f"<h3>Products returned most often (at least {settings.report.min_product_units} items delivered)</h3>"
                 + table_html(shown, {"Items delivered": lambda v: num(v, 0), "Returned": lambda v: num(v, 0),
                                      "Return rate": pct, "Category average": pct},
                              numeric=("Items delivered", "Returned", "Return rate", "Category average")))
    return body


def quality_html(data: ReportData, settings: Settings) -> str:
    r = data.returns
    cat = r["category"][r["category"]["units"] > 0].sort_values("failure_rate", ascending=False)
    if cat.empty:
        return _empty("No deliveries in the period.")
    chart = bar_chart(cat["category"].str.capitalize().tolist(), cat["failure_rate"].tolist(),
                      "Items returned as faulty, by category")
    prod = r["product"][(r["product"]["units"] >= settings.report.min_product_units)].copy()
    prod["peers"] = prod["category"].map(cat.set_index("category")["failure_rate"])
    prod["ratio"] = prod["failure_rate"] / prod["peers"].where(prod["peers"] > 0)
    top = prod[prod["quality_returns"] >= 3].sort_values("ratio", ascending=False).head(settings.report.top_products)
    shown = pd.DataFrame({"Product": top["name"].fillna(top["product_id"]),
                          "Category": top["category"].str.capitalize(), "Items delivered": top["units"],
                          "Returned as faulty": top["quality_returns"], "Failure rate": top["failure_rate"],
                          "Category average": top["peers"], "Compared with peers": top["ratio"]})
    table = table_html(shown, {"Items delivered": lambda v: num(v, 0), "Returned as faulty": lambda v: num(v, 0),
                               "Failure rate": pct, "Category average": pct,
                               "Compared with peers": lambda v: "–" if math.isnan(_num(v)) else f"{v:.1f}×"},
                       numeric=("Items delivered", "Returned as faulty", "Failure rate", "Category average",
                                "Compared with peers"))
    return chart + ("<h3>Products failing more often than similar products (at least 3 returned as faulty)</h3>"
                    + table if len(shown) else "")


def reviews_html(data: ReportData, settings: Settings) -> str:
    parts = []
    rev = data.reviews[data.reviews["reviews"] > 0]
    if len(rev):
        parts.append(bar_chart(rev["category"].str.capitalize().tolist(), rev["negative_review_rate"].tolist(),
                               "Share of 1-2 star reviews, by product category"))
    c = data.complaints
    if c is None:
        parts.append(_empty("Complaint reasons appear here once the shop's review and ticket texts have been "
                            "analysed (text analysis has not run yet)."))
        return f'<div class="grid">{"".join(parts)}</div>'
    if len(c["reason"]):
        total = c["reason"]["texts"].sum()
        parts.append(bar_chart([data.complaint_words.get(x, x) for x in c["reason"]["complaint"]],
                               (c["reason"]["texts"] / total).tolist(),
                               "What customers complain about (share of complaint texts)"))
    body = f'<div class="grid">{"".join(parts)}</div>'
    hot = c["hotspots"]
    if len(hot):
        shown = pd.DataFrame({"Product": hot["name"].fillna(hot["product_id"]),
                              "Category": hot["category"].str.capitalize(),
                              "Complaint": [data.complaint_words.get(x, x) for x in hot["complaint"]],
                              "Texts": hot["texts"], "Share of the product's complaints": hot["share_of_product"]})
        body += ("<h3>Where complaints concentrate: product and reason</h3>"
                 + table_html(shown, {"Texts": lambda v: num(v, 0), "Share of the product's complaints": pct},
                              numeric=("Texts", "Share of the product's complaints")))
    return body


def carriers_html(data: ReportData, settings: Settings) -> str:
    car = data.carriers[data.carriers["delivered"] > 0]
    if car.empty:
        return _empty("No deliveries in the period.")
    complaints = None
    if data.complaints is not None and len(data.complaints["carrier"]):
        by = data.complaints["carrier"].set_index("carrier")["texts"]
        complaints = car["carrier"].map(by).fillna(0) / max(by.sum(), 1)
    shown = pd.DataFrame({"Carrier": car["carrier"], "Orders delivered": car["delivered"],
                          "Delivered late": car["late_rate"], "Share of all late deliveries": car["share_of_late"],
                          "Median days to deliver": car["days_to_deliver"]})
    formats = {"Orders delivered": lambda v: num(v, 0), "Delivered late": pct, "Share of all late deliveries": pct,
               "Median days to deliver": lambda v: num(v, 1)}
    if complaints is not None:
        shown["Share of delivery complaints"] = complaints.to_numpy()
        formats["Share of delivery complaints"] = pct
    rate = car.sort_values("late_rate", ascending=False)
    chart = bar_chart(rate["carrier"].tolist(), rate["late_rate"].tolist(), "Share of parcels delivered late",
                      highlight=(rate["late_rate"] >= 2 * rate["late_rate"].median()).tolist())
    return table_html(shown, formats, numeric=tuple(shown.columns[1:])) + chart


def alerts_html(data: ReportData, settings: Settings) -> str:
    """One card per flagged product: its latest alert with the evidence, and the other weeks it was flagged."""
    if data.alerts is None:
        return _empty("The weekly product check has not run yet, so there are no early warnings to show.")
    if data.alerts.empty:
        return _empty("No product stood out in the weeks checked: every weekly return and negative-review rate "
                      "was in line with the product's own history and with similar products.")
    cards = []
    ordered = data.alerts.sort_values(["week_start"], ascending=False)
    for _, group in ordered.groupby("product_id", sort=False):
        a = next(group.itertuples(index=False))
        complaints = ", ".join(
            f"{esc(data.complaint_words.get(c.split(':')[0], c.split(':')[0]))} ({c.split(':')[1]})"
            for c in (a.main_complaints if isinstance(a.main_complaints, str) else "").split("; ") if ":" in c)
        quotes = "".join(f"<q>{esc(q)}</q>" for q in json.loads(a.quotes if isinstance(a.quotes, str) else "[]"))
        if a.metric == "return_rate":
            counts = f"{num(a.events, 0)} returns, while about {num(a.volume, 0)} items a week were delivered lately"
        else:
            counts = f"{num(a.events, 0)} of {num(a.volume, 0)} reviews had 1-2 stars"
        others = sorted({pd.Timestamp(w) for w in group["week_start"]} - {pd.Timestamp(a.week_start)}, reverse=True)
        also = (f"Also flagged in the weeks of {', '.join(f'{w:%d %b}' for w in others)}." if others else "")
        forecast = (f"{pct(a.forecast_negative_review_rate, 0)} (likely between {pct(a.forecast_low, 0)} and "
                    f"{pct(a.forecast_high, 0)})")
        cards.append(
            f'<div class="alert"><div class="alert-head"><b>{esc(_product_label(a.product_name, a.product_id))}</b>'
            f' <span class="muted">{esc(str(a.category).capitalize())} · week of '
            f'{pd.Timestamp(a.week_start):%d %b %Y}</span></div>'
            f'<div>{METRIC_WORDS[a.metric]} <b>{pct(a.rate, 0)}</b> ({counts}), against {_baselines(a)}.</div>'
            f'<div class="muted">Main complaints that week: {complaints or "no texts"}. Expected share of '
            f'negative reviews next week: {forecast}. {also}</div>'
            f'<div class="quotes">{quotes}</div></div>')
    return "".join(cards)


def definitions_html(settings: Settings) -> str:
    items = [
        ("Period", f"Headline figures cover the last {settings.report.recent_days} days, compared with the "
                   f"{settings.report.recent_days} days before. Breakdowns cover the last "
                   f"{settings.report.breakdown_days} days; trends show complete weeks (Monday to Sunday)."),
        ("Return rate", "Returns requested in the period divided by items delivered in the period."),
        ("Product failure rate", "Items returned as faulty divided by items delivered."),
        ("Negative review", f"A review with {settings.labels.negative_review_max_score} stars or fewer."),
        ("Complaint", "A support ticket about delivery, a faulty product, size or the service, or a negative "
                      "review."),
        ("Complaint reason", "Read from the customer's own words (reviews, tickets, return notes, in English and "
                             "Chinese) by a model trained on the shop's texts, with a keyword list as fallback."),
        ("Early warning", "A product whose weekly return or negative-review rate is clearly above its own recent "
                          "weeks or above similar products, after allowing for chance across all products "
                          "checked (false discovery rate "
                          f"{settings.alerts.fdr_alpha:.0%}); small numbers are not flagged."),
        ("Forecast", "Next week's share of negative reviews, weighting recent weeks most and starting from the "
                     "category's usual share; the range covers the likely values "
                     f"({settings.alerts.forecast_interval:.0%})."),
    ]
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK SC","Microsoft YaHei",sans-serif;
  color:#1f2933;margin:0;background:#f5f7fa}
main{max-width:1120px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:36px 0 4px;border-bottom:2px solid #e4e7eb;
  padding-bottom:4px} h3{font-size:15px;margin:20px 0 8px}
.sub{color:#52606d;margin:0 0 12px} .intro{color:#52606d;margin:4px 0 14px}
nav a{color:#2f6db5;margin-right:12px;font-size:13px;text-decoration:none}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:10px}
.card{border:1px solid #e4e7eb;border-radius:8px;padding:10px 12px}
.card .label{font-size:12px;color:#52606d} .card .value{font-size:22px;font-weight:600;margin:2px 0}
.card .change{font-size:12px} .card .explain{font-size:11px;color:#7b8794;margin-top:4px}
.good{color:#2e8b57} .bad{color:#c0392b} .flat{color:#7b8794}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px;align-items:start}
img.chart{max-width:100%}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0 14px}
th{text-align:left;background:#f0f4f8;padding:6px 8px;font-weight:600}
td{padding:5px 8px;border-bottom:1px solid #eef1f4} .num{text-align:right}
ul.highlights li{margin:6px 0}
.alert{border-left:4px solid #c0392b;background:#fdf6f5;padding:10px 14px;margin:10px 0;border-radius:4px}
.alert-head{font-size:15px;margin-bottom:4px} .muted{color:#52606d;font-size:13px}
.quotes q{display:block;font-style:italic;color:#3e4c59;font-size:13px;margin:4px 0 0 10px}
.empty{color:#7b8794;font-style:italic} dt{font-weight:600;margin-top:8px} dd{margin:2px 0 0 0;color:#3e4c59}
footer{color:#9aa5b1;font-size:11px;margin-top:30px}
"""


def render_html(data: ReportData, settings: Settings, generated_at: datetime | None = None) -> str:
    """The whole report as one HTML string."""
    w = data.win
    last_day = w.as_of - pd.Timedelta(days=1)
    period = f"{w.recent_start:%d %b %Y} to {last_day:%d %b %Y}"
    points = highlights(data, settings)
    stand_out = ("<ul class='highlights'>" + "".join(f"<li>{p}</li>" for p in points) + "</ul>") if points else \
        _empty("Nothing unusual this period.")
    nav = "".join(f'<a href="#{t.lower().replace(" ", "-")}">{esc(t)}</a>' for t in SECTIONS)
    days = settings.report.breakdown_days
    body = [
        _section(SECTIONS[0], f"The last {settings.report.recent_days} days ({period}) compared with the "
                              f"{settings.report.recent_days} days before. Green means better, red worse.",
                 headline_html(data, settings)),
        _section(SECTIONS[1], "Findings worth a look, with the evidence behind them.", stand_out),
        _section(SECTIONS[2], f"Week by week over the last {settings.report.trend_weeks} complete weeks.",
                 trends_html(data)),
        _section(SECTIONS[3], f"How fast and how well each support team answered tickets opened in the last "
                              f"{days} days.", service_html(data, settings)),
        _section(SECTIONS[4], f"What comes back, from where and why (last {days} days).", returns_html(data, settings)),
        _section(SECTIONS[5], f"Items returned as faulty, and the products that fail more than similar products "
                              f"(last {days} days).", quality_html(data, settings)),
        _section(SECTIONS[6], f"What customers write about (last {days} days): negative reviews by category and "
                              "the reasons behind complaints.", reviews_html(data, settings)),
        _section(SECTIONS[7], f"Late deliveries by delivery company (last {days} days).",
                 carriers_html(data, settings)),
        _section(SECTIONS[8], "Products whose weekly return or negative-review rate jumped, with what customers "
                              "said and next week's expected share of negative reviews.", alerts_html(data, settings)),
        _section(SECTIONS[9], "What each figure means.", definitions_html(settings)),
    ]
    stamp = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>After-sales report, {w.as_of:%d %b %Y}</title><style>{CSS}</style></head><body><main>"
            f"<h1>After-sales report</h1><p class='sub'>Data up to {last_day:%d %B %Y}. "
            f"Returns, reviews, support and delivery in one place.</p><nav>{nav}</nav>{''.join(body)}"
            f"<footer>Generated {stamp} by aftersales.</footer></main></body></html>")


def build_report(wh: Warehouse, settings: Settings, as_of: Any = None, out: Path | None = None) -> tuple[Path, dict]:
    """Collect, render and write the report; returns its path and the headline figures."""
    data = collect(wh, settings, as_of)
    path = Path(out) if out else settings.reports_dir / "kpi" / f"aftersales_report_{data.win.as_of:%Y-%m-%d}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(data, settings), encoding="utf-8")
    headline = {k.key: data.recent.get(k.key) for k in KPIS}
    return path, {"as_of": str(data.win.as_of), "headline": headline,
                  "alerts": 0 if data.alerts is None else len(data.alerts), "highlights": highlights(data, settings)}


@task(name="build-kpi-report", cache_policy=NO_CACHE)
def build_report_task(settings: Settings, as_of: Any = None, out: Path | None = None) -> tuple[Path, dict]:
    from tasks.data.warehouse import open_warehouse

    with open_warehouse(settings, read_only=True) as wh:
        return build_report(wh, settings, as_of, out)
