"""The after-sales KPI report: one self-contained HTML file for people who never saw the data.

Rendered with Jinja2 from ``schemas/defaults/templates/report.html.j2`` (autoescaped): this module
only computes figures and hands the template plain values, tables of formatted strings and charts.

Sections: headline figures of the last ``report.recent_days`` against the window before, what
stands out, trends, customer service, returns, product quality, reviews and complaint reasons,
delivery partners, early warnings, and how each figure is defined. Every chart is a matplotlib
PNG embedded as base64, so the file can be mailed or opened offline; every label is in words,
never a column name. Figures are as of the data's clock (``tasks.insight.alerts.data_clock``: where
the sources end, stray late rows left out) unless a date is given; nothing after it is counted. A
source the shop does not export says "no ... data" instead of a zero, and a figure resting on fewer
than ``report.min_count`` rows says so and is not compared with the period before.
"""

from __future__ import annotations

import base64
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

from schemas.settings import DEFAULTS_DIR, Settings
from schemas.text import ALERTS_TABLE, COMPLAINTS, TEXT_INSIGHTS_TABLE
from tasks.data.warehouse import Warehouse
from tasks.insight.alerts import SOURCE_WORDS, WEEK, SourceEnd, last_complete_week, source_ends

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
TEMPLATES_DIR = DEFAULTS_DIR / "templates"
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


def figure_png(fig: plt.Figure) -> dict[str, str]:
    """A figure as a chart block: its title and an inline base64 PNG; the figure is closed."""
    title = fig.axes[0].get_title(loc="left") if fig.axes else ""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return {"kind": "chart", "alt": title or "chart",
            "src": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")}


def bar_chart(labels: list[str], values: list[float], title: str, percent: bool = True,
              highlight: list[bool] | None = None, xlabel: str = "") -> str:
    """Horizontal bars, largest on top, values written at the bar ends."""
    n = len(labels)
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * n + 1.0))
    colors = [RED if (highlight and highlight[i]) else BLUE for i in range(n)]
    ax.barh(range(n)[::-1], values, color=colors)
    ax.set_yticks(range(n)[::-1], labels)
    ax.set_title(title, loc="left", fontsize=11)
    top = max([v for v in values if np.isfinite(v)] or [1.0]) or 1.0
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


def table_block(frame: pd.DataFrame, formats: dict[str, Callable[[Any], str]] | None = None,
                numeric: tuple[str, ...] = (), title: str | None = None) -> dict[str, Any]:
    """A table block for the template: headers, rows of display strings, which columns are numeric;
    the frame's column names are already the words shown."""
    formats = formats or {}
    rows = [[formats[c](row[c]) if c in formats else ("" if row[c] is None else str(row[c])) for c in frame.columns]
            for _, row in frame.iterrows()]
    return {"kind": "table", "title": title, "headers": list(frame.columns),
            "numeric": [c in numeric for c in frame.columns], "rows": rows}


def empty_block(text: str) -> dict[str, str]:
    return {"kind": "empty", "text": text}


def note_block(text: str) -> dict[str, str]:
    return {"kind": "note", "text": text}


def grid(*charts: dict[str, str]) -> dict[str, Any]:
    return {"kind": "grid", "items": [c for c in charts if c]}


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
            (SELECT count(*) FROM ret WHERE reason_code = 'quality_defect') AS quality_returns,
            (SELECT count(*) FROM r) AS n_reviews,
            (SELECT count(*) FROM t) AS n_tickets,
            (SELECT count(*) FROM tickets WHERE resolved_at >= $s AND resolved_at < $e) AS n_resolved
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
    sources: dict[str, SourceEnd] = field(default_factory=dict)
    delivered_orders: int | None = None  # orders with a delivery date, ever (None: not counted)

    def has(self, source: str) -> bool:
        """The shop exports this source (it has rows at all; deliveries: orders with a delivery date)."""
        if source == "deliveries":
            return self.delivered_orders is None or self.delivered_orders > 0
        end = self.sources.get(source)
        return end is None or end.rows > 0


def collect(wh: Warehouse, settings: Settings, as_of: Any = None) -> ReportData:
    """Every figure of the report, as of ``as_of`` (default: where the sources end)."""
    from tasks.insight.text import load_lexicon

    cfg = settings.report
    ends = source_ends(wh, cfg.data_end_day_share, cfg.data_end_lookback_days)
    if as_of is None:
        known = [e.end for e in ends.values() if e.end is not None]
        if not known:
            raise ValueError("the warehouse holds no orders, reviews, returns or tickets yet")
        as_of = max(known)
    as_of = pd.Timestamp(as_of)
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
        sources=ends,
        delivered_orders=int(wh.scalar("SELECT count(delivered_at) FROM orders")),
    )


# ---- rendering ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kpi:
    key: str
    title: str
    fmt: Callable[[Any], str]
    better: str  # "up" or "down"
    explain: str
    sources: tuple[str, ...]  # what it counts; none of them exported: "no ... data", not a zero
    basis: str  # the count it rests on (too thin below report.min_count)
    basis_words: str

    def missing(self) -> str:
        """The sources it counts, in words, for "no ... data" (none of them is exported)."""
        return " or ".join(SOURCE_WORDS[source] for source in self.sources)


KPIS = [
    Kpi("satisfaction", "Service satisfaction", lambda v: num(v, 2, " / 5"), "up",
        "average rating customers gave their support contact", ("tickets",), "n_tickets", "tickets"),
    Kpi("review_score", "Average review", lambda v: num(v, 2, " / 5"), "up", "average product review score",
        ("reviews",), "n_reviews", "reviews"),
    Kpi("complaint_rate", "Complaints per 100 orders", lambda v: num(v, 1), "down",
        "complaint tickets plus 1-2 star reviews, per 100 orders placed", ("tickets", "reviews"), "orders", "orders"),
    Kpi("first_response_hours", "First response time", lambda v: num(v, 1, " h"), "down",
        "median hours until a customer's ticket first got an answer", ("tickets",), "n_tickets", "tickets"),
    Kpi("response_target_share", "Answered within target", lambda v: pct(v, 0), "up",
        "share of tickets answered within the response target", ("tickets",), "n_tickets", "tickets"),
    Kpi("handling_hours", "Time to resolve", lambda v: num(v, 1, " h"), "down",
        "median hours from opening a ticket to solving it", ("tickets",), "n_resolved", "solved tickets"),
    Kpi("first_contact_resolution", "Solved without escalation", lambda v: pct(v, 0), "up",
        "solved tickets that were neither escalated nor reopened", ("tickets",), "n_resolved", "solved tickets"),
    Kpi("return_rate", "Return rate", lambda v: pct(v, 1), "down", "returns per item delivered", ("returns",), "units",
        "items delivered"),
    Kpi("failure_rate", "Product failure rate", lambda v: pct(v, 1), "down",
        "items returned as faulty, per item delivered", ("returns",), "units", "items delivered"),
    Kpi("negative_review_rate", "Negative reviews", lambda v: pct(v, 1), "down", "share of reviews with 1-2 stars",
        ("reviews",), "n_reviews", "reviews"),
]


def _change(kpi: Kpi, now: float, before: float) -> tuple[str, str]:
    """(css class, words) of the change against the period before."""
    if math.isnan(now) or math.isnan(before) or before == 0:
        return "flat", "no earlier figure"
    rel = now / before - 1
    if abs(rel) < 0.02:
        return "flat", "about the same as before"
    good = (rel > 0) == (kpi.better == "up")
    return ("good" if good else "bad"), f"{'▲' if rel > 0 else '▼'} {abs(rel):.0%} vs previous period"


def kpi_cards(data: ReportData, settings: Settings) -> list[dict[str, str]]:
    """One card per headline figure; an absent source or a thin basis says so in words."""
    cards = []
    floor = settings.report.min_count
    for kpi in KPIS:
        now, before = data.recent.get(kpi.key, math.nan), data.previous.get(kpi.key, math.nan)
        n_now, n_before = data.recent.get(kpi.basis, 0.0), data.previous.get(kpi.basis, 0.0)
        explain = kpi.explain.replace("the response target", f"{settings.report.response_target_hours:g} hours")
        card = {"title": kpi.title, "explain": explain}
        if not any(data.has(source) for source in kpi.sources):
            card |= {"value": f"no {kpi.missing()} data", "change_class": "flat",
                     "change": f"the shop exports no {kpi.missing()}", "before": ""}
        elif _num(n_now) < floor:
            card |= {"value": kpi.fmt(now) if _num(n_now) > 0 else "–", "change_class": "thin",
                     "change": f"too thin: only {_num(n_now):,.0f} {kpi.basis_words} (fewer than {floor})",
                     "before": ""}
        else:
            cls, words = _change(kpi, now, before) if _num(n_before) >= floor else \
                ("flat", f"no comparison: only {_num(n_before):,.0f} {kpi.basis_words} before")
            card |= {"value": kpi.fmt(now), "change_class": cls, "change": words, "before": kpi.fmt(before)}
        cards.append(card)
    return cards


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
            out.append(f"{_product_label(row.product_name, row.product_id)}: "
                       f"{METRIC_WORDS[row.metric].lower()} of {pct(row.rate, 0)} in the week of "
                       f"{pd.Timestamp(row.week_start):%d %b %Y}, against {_baselines(row)}.")
    products = data.returns["product"]
    big = products[products["units"] >= settings.report.min_product_units].copy()
    if len(big) and data.has("returns"):
        cat_fail = data.returns["category"].set_index("category")["failure_rate"].astype(float)
        big["ratio"] = big["failure_rate"].astype(float) / big["category"].map(cat_fail).astype(float)
        worst = big[big["quality_returns"] >= 3].sort_values("ratio", ascending=False).head(1)
        for row in worst.itertuples(index=False):
            if row.ratio >= 1.5:
                out.append(f"{row.name} fails {row.ratio:.1f} times as often as other "
                           f"{row.category} products ({pct(row.failure_rate)} of items returned as faulty).")
    carriers = data.carriers[data.carriers["delivered"] >= settings.report.min_product_units]
    if len(carriers) > 1:
        top = carriers.sort_values("late_rate", ascending=False).iloc[0]
        rest = carriers[carriers["carrier"] != top["carrier"]]
        rest_rate = rest["late"].sum() / max(rest["delivered"].sum(), 1)
        if top["late"] >= 5 and top["late_rate"] >= 2 * rest_rate:
            out.append(f"{top['carrier']} delivered {pct(top['late_rate'], 0)} of its parcels late, "
                       f"against {pct(rest_rate, 0)} for the other carriers; it accounts for "
                       f"{pct(top['share_of_late'], 0)} of all late deliveries.")
    teams = data.teams[data.teams["tickets"] >= 20]
    if len(teams) > 1:
        slow = teams.sort_values("first_response_hours", ascending=False).iloc[0]
        others = teams[teams["team"] != slow["team"]]["first_response_hours"].median()
        if slow["first_response_hours"] >= 2 * others:
            out.append(f"{slow['team']} takes a median {num(slow['first_response_hours'])} hours to "
                       f"answer a ticket, against {num(others)} hours for the other teams; its customers rate "
                       f"the service {num(slow['satisfaction'], 1)} / 5.")
    if data.complaints is not None and len(data.complaints["reason"]):
        reasons = data.complaints["reason"]
        first = reasons.iloc[0]
        total = reasons["texts"].sum()
        if total >= settings.report.min_count:
            out.append(f"The most common complaint is {data.complaint_words.get(first['complaint'])}: "
                       f"{pct(first['texts'] / total, 0)} of complaints in the last "
                       f"{settings.report.breakdown_days} days.")
    return out


def _no_source(source: str) -> dict[str, str]:
    return empty_block(f"This shop exports no {SOURCE_WORDS[source]}, so there is no figure here "
                       f"(no {SOURCE_WORDS[source]} data, which is not the same as zero).")


def trends_blocks(data: ReportData) -> list[dict[str, Any]]:
    t = data.trends
    if t.empty or t["orders"].sum() == 0:
        return [empty_block("No orders in the period.")]
    rates = {}
    if data.has("returns"):
        rates["return rate"] = t["return_rate"]
    if data.has("reviews"):
        rates["share of 1-2 star reviews"] = t["negative_review_rate"]
    charts = [line_chart(t["week"], {"orders": t["orders"]}, "Orders per week")]
    if rates:
        charts.append(line_chart(t["week"], rates, "Return rate and share of negative reviews" if len(rates) > 1
                                 else next(iter(rates)).capitalize(), percent=True))
    if data.has("tickets") and t["satisfaction"].notna().any():
        charts.append(line_chart(t["week"], {"service satisfaction (1-5)": t["satisfaction"]},
                                 "Service satisfaction (1 to 5)"))
        charts.append(line_chart(t["week"], {"first response (hours)": t["first_response_hours"]},
                                 "Median hours to first response"))
    return [grid(*charts)]


def service_blocks(data: ReportData, settings: Settings) -> list[dict[str, Any]]:
    if not data.has("tickets"):
        return [_no_source("tickets")]
    teams = data.teams
    if teams.empty:
        return [empty_block("No support tickets in the period.")]
    target = f"Answered within {settings.report.response_target_hours:g} h"
    shown = pd.DataFrame({
        "Team": teams["team"], "Tickets": teams["tickets"],
        "Median first response": teams["first_response_hours"], target: teams["response_target_share"],
        "Median time to resolve": teams["handling_hours"], "Still open": teams["unresolved_share"],
        "Escalated": teams["escalation_rate"], "Satisfaction (1-5)": teams["satisfaction"]})
    hours = lambda v: num(v, 1, " h")  # noqa: E731
    blocks: list[dict[str, Any]] = [table_block(
        shown, {"Tickets": lambda v: num(v, 0), "Median first response": hours, target: pct,
                "Median time to resolve": hours, "Still open": pct, "Escalated": pct,
                "Satisfaction (1-5)": lambda v: num(v, 2)}, numeric=tuple(shown.columns[1:]))]
    thin = teams[teams["tickets"] < settings.report.min_count]["team"].tolist()
    if thin:
        blocks.append(note_block(f"Too thin to compare (fewer than {settings.report.min_count} tickets): "
                                 f"{', '.join(map(str, thin))}."))
    blocks.append(bar_chart(teams["team"].tolist(), teams["first_response_hours"].tolist(),
                            "Median hours to first response, by team", percent=False,
                            highlight=(teams["first_response_hours"] >= 2 * teams["first_response_hours"].median())
                            .tolist()))
    return blocks


def returns_blocks(data: ReportData, settings: Settings) -> list[dict[str, Any]]:
    if not data.has("returns"):
        return [_no_source("returns")]
    r = data.returns
    if r["reason"].empty and r["product"]["units"].sum() == 0:
        return [empty_block("No deliveries or returns in the period.")]
    reasons = r["reason"]
    total = max(reasons["returns"].sum(), 1)
    charts = [bar_chart([RETURN_REASON_WORDS.get(c, str(c)) for c in reasons["reason_code"]],
                        (reasons["returns"] / total).tolist(), "Why customers return (share of returns)")]
    cat = r["category"][r["category"]["units"] > 0].sort_values("return_rate", ascending=False)
    charts.append(bar_chart(cat["category"].str.capitalize().tolist(), cat["return_rate"].astype(float).tolist(),
                            "Return rate by product category"))
    reg = r["region"][r["region"]["units"] >= settings.report.min_product_units].sort_values("return_rate",
                                                                                               ascending=False)
    if len(reg):
        charts.append(bar_chart(reg["region"].tolist(), reg["return_rate"].astype(float).tolist(),
                                "Return rate by region"))
    blocks: list[dict[str, Any]] = [grid(*charts)]
    prod = r["product"][(r["product"]["units"] >= settings.report.min_product_units) & (r["product"]["returns"] > 0)]
    top = prod.sort_values("return_rate", ascending=False).head(settings.report.top_products)
    cat_rate = r["category"].set_index("category")["return_rate"].astype(float)
    if len(top):
        shown = pd.DataFrame({
            "Product": top["name"].fillna(top["product_id"]), "Category": top["category"].str.capitalize(),
            "Items delivered": top["units"], "Returned": top["returns"], "Return rate": top["return_rate"],
            "Category average": top["category"].map(cat_rate),
            "Main reason": [RETURN_REASON_WORDS.get(c, str(c)) for c in top["main_reason"]]})
        blocks.append(table_block(
            shown, {"Items delivered": lambda v: num(v, 0), "Returned": lambda v: num(v, 0), "Return rate": pct,
                    "Category average": pct},
            numeric=("Items delivered", "Returned", "Return rate", "Category average"),
            title=f"Products returned most often (at least {settings.report.min_product_units} items delivered)"))
    else:
        blocks.append(note_block(f"No product reached {settings.report.min_product_units} delivered items with a "
                                 f"return in the last {settings.report.breakdown_days} days, so none is ranked."))
    return blocks


def quality_blocks(data: ReportData, settings: Settings) -> list[dict[str, Any]]:
    if not data.has("returns"):
        return [_no_source("returns")]
    r = data.returns
    cat = r["category"][r["category"]["units"] > 0].sort_values("failure_rate", ascending=False)
    if cat.empty:
        return [empty_block("No deliveries in the period.")]
    blocks: list[dict[str, Any]] = [bar_chart(cat["category"].str.capitalize().tolist(),
                                              cat["failure_rate"].astype(float).tolist(),
                                              "Items returned as faulty, by category")]
    prod = r["product"][(r["product"]["units"] >= settings.report.min_product_units)].copy()
    prod["peers"] = prod["category"].map(cat.set_index("category")["failure_rate"]).astype(float)
    prod["ratio"] = prod["failure_rate"].astype(float) / prod["peers"].where(prod["peers"] > 0)
    top = prod[prod["quality_returns"] >= 3].sort_values("ratio", ascending=False).head(settings.report.top_products)
    if len(top):
        shown = pd.DataFrame({"Product": top["name"].fillna(top["product_id"]),
                              "Category": top["category"].str.capitalize(), "Items delivered": top["units"],
                              "Returned as faulty": top["quality_returns"], "Failure rate": top["failure_rate"],
                              "Category average": top["peers"], "Compared with peers": top["ratio"]})
        blocks.append(table_block(
            shown, {"Items delivered": lambda v: num(v, 0), "Returned as faulty": lambda v: num(v, 0),
                    "Failure rate": pct, "Category average": pct,
                    "Compared with peers": lambda v: "–" if math.isnan(_num(v)) else f"{v:.1f}×"},
            numeric=("Items delivered", "Returned as faulty", "Failure rate", "Category average",
                     "Compared with peers"),
            title="Products failing more often than similar products (at least 3 returned as faulty)"))
    elif prod.empty:
        blocks.append(note_block(f"No product reached {settings.report.min_product_units} delivered items in the last "
                                 f"{settings.report.breakdown_days} days, so none is compared with its peers."))
    return blocks


def reviews_blocks(data: ReportData, settings: Settings) -> list[dict[str, Any]]:
    if not data.has("reviews"):
        return [_no_source("reviews")]
    charts = []
    rev = data.reviews[data.reviews["reviews"] > 0]
    if len(rev):
        charts.append(bar_chart(rev["category"].str.capitalize().tolist(),
                                rev["negative_review_rate"].astype(float).tolist(),
                                "Share of 1-2 star reviews, by product category"))
    c = data.complaints
    if c is None:
        return [grid(*charts), empty_block("Complaint reasons appear here once the shop's review and ticket texts "
                                           "have been analysed (text analysis has not run yet).")]
    blocks: list[dict[str, Any]] = []
    total = c["reason"]["texts"].sum() if len(c["reason"]) else 0
    if len(c["reason"]):
        charts.append(bar_chart([data.complaint_words.get(x, x) for x in c["reason"]["complaint"]],
                                (c["reason"]["texts"] / total).tolist(),
                                "What customers complain about (share of complaint texts)"))
    blocks.append(grid(*charts))
    if 0 < total < settings.report.min_count:
        blocks.append(note_block(f"Too thin to rank reasons: only {total:,.0f} complaint texts in the period."))
    hot = c["hotspots"]
    if len(hot):
        shown = pd.DataFrame({"Product": hot["name"].fillna(hot["product_id"]),
                              "Category": hot["category"].str.capitalize(),
                              "Complaint": [data.complaint_words.get(x, x) for x in hot["complaint"]],
                              "Texts": hot["texts"], "Share of the product's complaints": hot["share_of_product"]})
        blocks.append(table_block(shown, {"Texts": lambda v: num(v, 0), "Share of the product's complaints": pct},
                                  numeric=("Texts", "Share of the product's complaints"),
                                  title="Where complaints concentrate: product and reason"))
    return blocks


def carriers_blocks(data: ReportData, settings: Settings) -> list[dict[str, Any]]:
    if not data.has("deliveries"):  # a receipt log: "no deliveries in the period" would read as zero
        return [_no_source("deliveries")]
    car = data.carriers[data.carriers["delivered"] > 0]
    if car.empty:
        return [empty_block("No deliveries in the period.")]
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
    chart = bar_chart(rate["carrier"].tolist(), rate["late_rate"].astype(float).tolist(),
                      "Share of parcels delivered late",
                      highlight=(rate["late_rate"] >= 2 * rate["late_rate"].median()).tolist())
    return [table_block(shown, formats, numeric=tuple(shown.columns[1:])), chart]


def alert_cards(data: ReportData) -> list[dict[str, Any]]:
    """One card per flagged product: its latest alert with the evidence, and the other weeks it was flagged."""
    cards = []
    ordered = data.alerts.sort_values(["week_start"], ascending=False)
    for _, group in ordered.groupby("product_id", sort=False):
        a = next(group.itertuples(index=False))
        complaints = ", ".join(
            f"{data.complaint_words.get(c.split(':')[0], c.split(':')[0])} ({c.split(':')[1]})"
            for c in (a.main_complaints if isinstance(a.main_complaints, str) else "").split("; ") if ":" in c)
        if a.metric == "return_rate":
            counts = f"{num(a.events, 0)} returns, while about {num(a.volume, 0)} items a week were delivered lately"
        else:
            counts = f"{num(a.events, 0)} of {num(a.volume, 0)} reviews had 1-2 stars"
        others = sorted({pd.Timestamp(w) for w in group["week_start"]} - {pd.Timestamp(a.week_start)}, reverse=True)
        cards.append({
            "product": _product_label(a.product_name, a.product_id), "category": str(a.category).capitalize(),
            "week": f"{pd.Timestamp(a.week_start):%d %b %Y}", "metric": METRIC_WORDS[a.metric],
            "rate": pct(a.rate, 0), "counts": counts, "baselines": _baselines(a),
            "complaints": complaints or "no texts",
            "forecast": f"{pct(a.forecast_negative_review_rate, 0)} (likely between {pct(a.forecast_low, 0)} and "
                        f"{pct(a.forecast_high, 0)})",
            "also": f"Also flagged in the weeks of {', '.join(f'{w:%d %b}' for w in others)}." if others else "",
            "quotes": json.loads(a.quotes if isinstance(a.quotes, str) else "[]")})
    return cards


def alerts_blocks(data: ReportData, settings: Settings) -> list[dict[str, Any]]:
    if data.alerts is None:
        return [empty_block("The weekly product check has not run yet, so there are no early warnings to show.")]
    if data.alerts.empty:
        return [empty_block("No product stood out in the weeks checked: every weekly return and negative-review "
                            "rate that had enough volume to test was in line with the product's own history and "
                            "with similar products.")]
    return [{"kind": "alerts", "cards": alert_cards(data)}]


def definitions(settings: Settings) -> list[tuple[str, str]]:
    return [
        ("Period", f"Headline figures cover the last {settings.report.recent_days} days, compared with the "
                   f"{settings.report.recent_days} days before. Breakdowns cover the last "
                   f"{settings.report.breakdown_days} days; trends show complete weeks (Monday to Sunday)."),
        ("Where the data ends", "Each source ends on its last day with a normal day's volume; a few stray rows "
                                "after that (say one cancelled order weeks later) do not move the report's date."),
        ("Too thin", f"A figure resting on fewer than {settings.report.min_count} reviews, tickets, items or orders "
                     "is marked as such and not compared with the period before."),
        ("Return rate", "Returns requested in the period divided by items delivered in the period."),
        ("Product failure rate", "Items returned as faulty divided by items delivered."),
        ("Negative review", f"A review with {settings.labels.negative_review_max_score} stars or fewer."),
        ("Complaint", "A support ticket about delivery, a faulty product, size or the service, or a negative "
                      "review."),
        ("Complaint reason", "Read from the customer's own words (reviews, tickets, return notes, in English and "
                             "Chinese) by a model trained on the shop's earlier texts, with a keyword list as "
                             "fallback."),
        ("Early warning", "A product whose weekly return or negative-review rate is clearly above its own recent "
                          "weeks or above similar products, after allowing for chance across all products "
                          f"checked (false discovery rate {settings.alerts.fdr_alpha:.0%}); small numbers are not "
                          "flagged."),
        ("Forecast", "Next week's share of negative reviews, weighting recent weeks most and starting from the "
                     "category's usual share; the range covers the likely values "
                     f"({settings.alerts.forecast_interval:.0%})."),
    ]


def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape(["html", "j2"]),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def anchor(title: str) -> str:
    return title.lower().replace(" ", "-")


def render_html(data: ReportData, settings: Settings, generated_at: datetime | None = None) -> str:
    """The whole report as one HTML string (template ``report.html.j2``)."""
    w = data.win
    last_day = w.as_of - pd.Timedelta(days=1)
    days = settings.report.breakdown_days
    recent = settings.report.recent_days
    sections = [
        (SECTIONS[0], f"The last {recent} days ({w.recent_start:%d %b %Y} to {last_day:%d %b %Y}) compared with "
                      f"the {recent} days before. Green means better, red worse.",
         [{"kind": "cards", "cards": kpi_cards(data, settings)}]),
        (SECTIONS[1], "Findings worth a look, with the evidence behind them.",
         [{"kind": "list", "items": highlights(data, settings)}] if highlights(data, settings)
         else [empty_block("Nothing unusual this period.")]),
        (SECTIONS[2], f"Week by week over the last {settings.report.trend_weeks} complete weeks.",
         trends_blocks(data)),
        (SECTIONS[3], f"How fast and how well each support team answered tickets opened in the last {days} days.",
         service_blocks(data, settings)),
        (SECTIONS[4], f"What comes back, from where and why (last {days} days).", returns_blocks(data, settings)),
        (SECTIONS[5], f"Items returned as faulty, and the products that fail more than similar products "
                      f"(last {days} days).", quality_blocks(data, settings)),
        (SECTIONS[6], f"What customers write about (last {days} days): negative reviews by category and the "
                      "reasons behind complaints.", reviews_blocks(data, settings)),
        (SECTIONS[7], f"Late deliveries by delivery company (last {days} days).", carriers_blocks(data, settings)),
        (SECTIONS[8], "Products whose weekly return or negative-review rate jumped, with what customers said and "
                      "next week's expected share of negative reviews.", alerts_blocks(data, settings)),
        (SECTIONS[9], "What each figure means.", [{"kind": "definitions", "items": definitions(settings)}]),
    ]
    template = _environment().get_template("report.html.j2")
    return template.render(
        title=f"After-sales report, {w.as_of:%d %b %Y}", last_day=f"{last_day:%d %B %Y}",
        sources=source_lines(data), nav=[(anchor(t), t) for t in SECTIONS],
        sections=[{"anchor": anchor(t), "title": t, "intro": intro, "blocks": blocks} for t, intro, blocks in sections],
        stamp=(generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC"))


def source_lines(data: ReportData) -> list[str]:
    """Where each source ends, in words (the report's first lines and the CLI's)."""
    return [end.sentence() for end in data.sources.values()]


def build_report(wh: Warehouse, settings: Settings, as_of: Any = None, out: Path | None = None) -> tuple[Path, dict]:
    """Collect, render and write the report; returns its path and the headline figures."""
    data = collect(wh, settings, as_of)
    path = Path(out) if out else settings.reports_dir / "kpi" / f"aftersales_report_{data.win.as_of:%Y-%m-%d}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(data, settings), encoding="utf-8")
    headline = {k.key: (data.recent.get(k.key) if any(data.has(s) for s in k.sources) else None) for k in KPIS}
    return path, {"as_of": str(data.win.as_of), "headline": headline,
                  "alerts": 0 if data.alerts is None else len(data.alerts), "highlights": highlights(data, settings),
                  "sources": source_lines(data)}


@task(name="build-kpi-report", cache_policy=NO_CACHE)
def build_report_task(settings: Settings, as_of: Any = None, out: Path | None = None) -> tuple[Path, dict]:
    from tasks.data.warehouse import open_warehouse

    with open_warehouse(settings, read_only=True) as wh:
        return build_report(wh, settings, as_of, out)
