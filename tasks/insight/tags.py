"""Behaviour tags: editable rules over each customer's point-in-time features, with a history.

Why rules and not a model: a tag is a promise to the care team ("high value" gets the VIP desk),
so it must be explainable in one line and editable without code — the rules live in
``schemas/defaults/tags.yaml``. Each run re-evaluates every rule on the features as of the run date
(``tasks.models.features.customer_features`` plus a few behaviour features computed here) and the history
table records when a customer gained and lost each tag, so tags follow behaviour.

The history is rewritten as a whole: spells that started on or after the run date are dropped and
spells lost on or after it are reopened before the run's changes are applied, so re-running a date
(or back-filling an earlier one) gives the same history as running it the first time.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, Field, model_validator

from schemas.analytics import CUSTOMER_TAGS_TABLE, TAG_HISTORY_TABLE, TAG_NAME, CustomerTags, TagHistory
from schemas.settings import DEFAULTS_DIR, Settings
from schemas.tasks import TAG_SEPARATOR, TASK_TABLE, ScoredRows, TaskList
from tasks.data.warehouse import Warehouse
from tasks.models.features import as_timestamp, customer_features, run_sql

DEFAULT_TAGS_FILE = DEFAULTS_DIR / "tags.yaml"
CUSTOMER = CustomerTags.customer_id
TAG = TagHistory.tag
GAINED, LOST = TagHistory.gained_at, TagHistory.lost_at
CHURN_PROBABILITY = "churn_probability"
OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
Language = Literal["en", "zh"]


class TagBookError(ValueError):
    """The tag file cannot be used; the message names the entry."""


# ---- the editable file -----------------------------------------------------------------------------
class Words(BaseModel):
    en: str
    zh: str

    def __call__(self, language: Language = "en") -> str:
        return getattr(self, language)


class Condition(BaseModel):
    feature: str
    op: Literal[">=", ">", "<=", "<", "=="]
    value: float | None = None
    quantile: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def one_threshold(self) -> Condition:
        if (self.value is None) == (self.quantile is None):
            raise ValueError(f"condition on {self.feature}: give exactly one of value or quantile")
        return self


class TagRule(BaseModel):
    name: str = Field(pattern=TAG_NAME)
    label: Words
    service: Words | None = None
    all: list[Condition] = []
    any: list[Condition] = []

    @model_validator(mode="after")
    def has_conditions(self) -> TagRule:
        if not (self.all or self.any):
            raise ValueError(f"tag {self.name} has no conditions")
        return self

    @property
    def features(self) -> set[str]:
        return {c.feature for c in [*self.all, *self.any]}


class SegmentFeature(BaseModel):
    feature: str
    transform: Literal["log", "none"] = "none"
    label: Words
    high: Words
    low: Words


class SegmentName(BaseModel):
    en: str
    zh: str
    when: dict[str, Literal["high", "low"]]


class TagBook(BaseModel):
    """The parsed tag file: tag rules, the clustering space and the segment names."""

    tags: list[TagRule]
    segment_features: list[SegmentFeature]
    segment_names: list[SegmentName] = []

    @model_validator(mode="after")
    def consistent(self) -> TagBook:
        names = [t.name for t in self.tags]
        if len(set(names)) != len(names):
            raise ValueError("tag names must be unique")
        space = {f.feature for f in self.segment_features}
        for pattern in self.segment_names:
            unknown = set(pattern.when) - space
            if unknown:
                raise ValueError(f"segment name {pattern.en!r} uses {sorted(unknown)}, not in segment_features")
        return self

    def label(self, tag: str, language: Language = "en") -> str:
        return next((t.label(language) for t in self.tags if t.name == tag), tag.replace("_", " "))

    def segment_label(self, name: str, language: Language = "en") -> str:
        """A segment named from ``segment_names`` in the reader's language; names made of traits stay."""
        return next((getattr(p, language) for p in self.segment_names if name in (p.en, p.zh)), name)

    def feature_label(self, feature: str, language: Language = "en") -> str:
        return next((f.label(language) for f in self.segment_features if f.feature == feature),
                    feature.replace("_", " "))


def load_tag_book(path: Path | str | None = None) -> TagBook:
    """Read and check the tag file; a wrong entry fails here, with its name, not mid-run."""
    path = Path(path or DEFAULT_TAGS_FILE)
    try:
        return TagBook.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (ValueError, yaml.YAMLError) as exc:
        raise TagBookError(f"{path}: {exc}") from exc


# ---- behaviour features ------------------------------------------------------------------------------
def _extra_features_sql(new_product_days: int, window_days: int) -> str:
    """Purchase mix (new launches, favourite brand) over all history; abandoned carts in the window."""
    return f"""
    WITH ord AS (SELECT order_id, customer_id, ordered_at FROM orders WHERE ordered_at <= $cutoff),
    lines AS (
        SELECT o.customer_id, p.brand,
               coalesce(o.ordered_at >= p.launched_at
                        AND o.ordered_at <= p.launched_at + INTERVAL {int(new_product_days)} DAY, FALSE)::INTEGER
                   AS fresh
        FROM ord o JOIN order_items i ON i.order_id = o.order_id
        JOIN products p ON p.product_id = i.product_id),
    mix AS (SELECT customer_id, count(*) AS lines_total, avg(fresh) AS new_product_share
            FROM lines GROUP BY customer_id),
    brand AS (
        SELECT customer_id, max(n) / sum(n) AS top_brand_share FROM (
            SELECT customer_id, brand, count(*) AS n FROM lines WHERE brand IS NOT NULL GROUP BY ALL)
        GROUP BY customer_id),
    abandoned AS (
        SELECT customer_id, count(*) AS abandoned_carts_recent FROM (
            SELECT customer_id, session_id FROM events
            WHERE occurred_at <= $cutoff AND occurred_at > $cutoff - INTERVAL {int(window_days)} DAY
              AND customer_id IS NOT NULL AND session_id IS NOT NULL
            GROUP BY ALL HAVING bool_or(event_type = 'add_to_cart') AND NOT bool_or(event_type = 'checkout'))
        GROUP BY customer_id),
    who AS (SELECT customer_id FROM mix UNION SELECT customer_id FROM abandoned)
    SELECT w.customer_id, CAST(m.new_product_share AS DOUBLE) AS new_product_share,
           CAST(b.top_brand_share AS DOUBLE) AS top_brand_share,
           CAST(coalesce(m.lines_total, 0) AS DOUBLE) AS lines_total,
           CAST(coalesce(a.abandoned_carts_recent, 0) AS DOUBLE) AS abandoned_carts_recent
    FROM who w LEFT JOIN mix m ON m.customer_id = w.customer_id
    LEFT JOIN brand b ON b.customer_id = w.customer_id
    LEFT JOIN abandoned a ON a.customer_id = w.customer_id
    ORDER BY 1"""


def churn_scores(wh: Warehouse, cutoff: Any, settings: Settings) -> pd.DataFrame:
    """The latest churn probability per customer from the scoring flow's tables, if any exist.

    Looks in ``analytics.tags.churn_score_tables`` (rows with ``risk = 'churn'``), then in the task
    list (tasks whose leading risk is churn); scores older than ``churn_score_max_age_days`` or
    dated after the cutoff are ignored. Empty frame when nothing qualifies.
    """
    cfg = settings.analytics.tags
    cutoff = as_timestamp(cutoff)
    params = {"cutoff": cutoff, "oldest": cutoff - pd.Timedelta(days=cfg.churn_score_max_age_days)}
    empty = pd.DataFrame({CUSTOMER: pd.Series(dtype=str), CHURN_PROBABILITY: pd.Series(dtype=float)})
    sources = [(t, ScoredRows.risk, ScoredRows.probability) for t in cfg.churn_score_tables]
    sources.append((TASK_TABLE, TaskList.risk_code, TaskList.probability))
    for table, risk, probability in sources:
        if not wh.has_table(table):
            continue
        needed = {ScoredRows.run_date, ScoredRows.customer_id, risk, probability}
        if not needed <= set(wh.columns(table)):
            continue
        sql = f"""
        WITH s AS (SELECT * FROM "{table}" WHERE "{risk}" = 'churn'
                   AND "{ScoredRows.run_date}" <= $cutoff AND "{ScoredRows.run_date}" >= $oldest)
        SELECT "{ScoredRows.customer_id}" AS {CUSTOMER}, CAST(max("{probability}") AS DOUBLE) AS {CHURN_PROBABILITY}
        FROM s WHERE "{ScoredRows.run_date}" = (SELECT max("{ScoredRows.run_date}") FROM s) GROUP BY 1"""
        found = run_sql(wh, sql, params)
        if len(found):
            return found
    return empty


def behaviour_features(wh: Warehouse, cutoff: Any, settings: Settings) -> pd.DataFrame:
    """Everything the tag rules and the segments read, one row per customer, as of ``cutoff``.

    Customers with an order get the catalogue's customer features; customers who only browse
    (abandoned carts, no order) get a row too, with the order features empty.
    """
    cutoff = as_timestamp(cutoff)
    cfg = settings.analytics.tags
    base = customer_features(wh, cutoff, settings=settings)
    categorical = [c for c in base.columns if isinstance(base[c].dtype, pd.CategoricalDtype)]
    base = base.astype(dict.fromkeys(categorical, str))
    extra = run_sql(wh, _extra_features_sql(cfg.new_product_days, cfg.behaviour_window_days), {"cutoff": cutoff})
    out = base.merge(extra, on=CUSTOMER, how="outer")
    out = out.merge(churn_scores(wh, cutoff, settings), on=CUSTOMER, how="left")
    out["complaints_per_order"] = out["complaints_total"] / out["orders_total"].where(out["orders_total"] > 0)
    out["has_orders"] = out[CUSTOMER].isin(base[CUSTOMER])
    return out.sort_values(CUSTOMER).reset_index(drop=True)


# ---- evaluating the rules ------------------------------------------------------------------------------
def _condition_mask(features: pd.DataFrame, cond: Condition) -> np.ndarray:
    values = pd.to_numeric(features[cond.feature], errors="coerce")
    threshold = cond.value if cond.value is not None else values.quantile(cond.quantile)
    return OPS[cond.op](values, threshold).fillna(False).to_numpy(bool)


def evaluate_tags(features: pd.DataFrame, book: TagBook) -> tuple[pd.DataFrame, dict[str, str]]:
    """Long frame ``[customer_id, tag]`` of every tag that holds, and the tags skipped with why.

    A tag is skipped when one of its features is missing or unknown for every customer (e.g.
    ``churn_risk`` before any churn scores exist): its customers are not guessed.
    """
    parts, skipped = [], {}
    n = len(features)
    for rule in book.tags:
        missing = sorted(f for f in rule.features if f not in features or features[f].isna().all())
        if missing:
            skipped[rule.name] = f"no data for {', '.join(m.replace('_', ' ') for m in missing)}"
            continue
        mask = np.ones(n, bool)
        for cond in rule.all:
            mask &= _condition_mask(features, cond)
        if rule.any:
            mask &= np.logical_or.reduce([_condition_mask(features, c) for c in rule.any])
        parts.append(pd.DataFrame({CUSTOMER: features.loc[mask, CUSTOMER].to_numpy(), TAG: rule.name}))
    long = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({CUSTOMER: [], TAG: []})
    return long.astype({CUSTOMER: str, TAG: str}), skipped


def tag_strings(long: pd.DataFrame, customers: pd.Series, book: TagBook) -> pd.Series:
    """Comma-separated tag names per customer in the file's order (None for no tag), indexed like ``customers``."""
    order = {t.name: i for i, t in enumerate(book.tags)}
    ranked = long.assign(_o=long[TAG].map(order)).sort_values([CUSTOMER, "_o"])
    joined = ranked.groupby(CUSTOMER)[TAG].agg(TAG_SEPARATOR.join)
    return customers.map(joined).astype(object).where(customers.isin(joined.index), None)


# ---- history ----------------------------------------------------------------------------------------------
def empty_history() -> pd.DataFrame:
    return pd.DataFrame({CUSTOMER: pd.Series(dtype=str), TAG: pd.Series(dtype=str),
                         GAINED: pd.Series(dtype="datetime64[us]"), LOST: pd.Series(dtype="datetime64[us]")})


def update_tag_history(history: pd.DataFrame, current: pd.DataFrame, as_of: Any) -> pd.DataFrame:
    """The history after a run at ``as_of`` found the tags ``current`` (long ``[customer_id, tag]``).

    Open spells no longer found are closed at ``as_of``; tags found without an open spell start one.
    What earlier runs recorded on or after ``as_of`` is rewound first, so reruns are idempotent.
    """
    day = as_timestamp(as_of)
    h = history[[CUSTOMER, TAG, GAINED, LOST]].copy() if len(history) else empty_history()
    h = h[h[GAINED] < day].copy()
    h.loc[h[LOST] >= day, LOST] = pd.NaT
    keys = current[[CUSTOMER, TAG]].drop_duplicates()
    found = pd.MultiIndex.from_frame(keys)
    pairs = pd.MultiIndex.from_frame(h[[CUSTOMER, TAG]])
    open_ = h[LOST].isna().to_numpy()
    h.loc[open_ & ~pairs.isin(found), LOST] = day
    new = keys[~found.isin(pairs[open_])]
    started = pd.DataFrame({CUSTOMER: new[CUSTOMER].to_numpy(), TAG: new[TAG].to_numpy(), GAINED: day, LOST: pd.NaT})
    out = pd.concat([h, started], ignore_index=True) if len(started) else h
    out = out.astype({GAINED: "datetime64[us]", LOST: "datetime64[us]"})
    return TagHistory.validate(out.sort_values([CUSTOMER, TAG, GAINED]).reset_index(drop=True), lazy=True)


def load_tag_history(wh: Warehouse) -> pd.DataFrame:
    if not wh.has_table(TAG_HISTORY_TABLE):
        return empty_history()
    return wh.table(TAG_HISTORY_TABLE, [CUSTOMER, TAG, GAINED, LOST])


def tag_changes(history: pd.DataFrame, as_of: Any) -> pd.DataFrame:
    """Tags gained and lost at ``as_of``, per tag: ``[tag, gained, lost, holding]``."""
    day = as_timestamp(as_of)
    gained = history[history[GAINED] == day].groupby(TAG).size()
    lost = history[history[LOST] == day].groupby(TAG).size()
    holding = history[history[LOST].isna()].groupby(TAG).size()
    out = pd.DataFrame({"gained": gained, "lost": lost, "holding": holding}).fillna(0).astype(int)
    return out.rename_axis(TAG).reset_index()


# ---- what the scoring flow joins onto tasks --------------------------------------------------------------
def current_tags(wh: Warehouse, as_of: Any | None = None) -> pd.DataFrame:
    """``[customer_id, tags, segment, segment_name]`` of the latest segments run (on or before ``as_of``).

    Empty (with those columns) before the first run, so the scoring flow can always left-join it.
    """
    columns = [CUSTOMER, CustomerTags.tags, CustomerTags.segment, CustomerTags.segment_name]
    if not wh.has_table(CUSTOMER_TAGS_TABLE):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    day = CustomerTags.run_date
    if as_of is None:
        where, params = "", []
    else:
        where, params = f'WHERE "{day}" <= ?', [as_timestamp(as_of).to_pydatetime()]
    cols = ", ".join(f'"{c}"' for c in columns)
    return wh.query(f'SELECT {cols} FROM "{CUSTOMER_TAGS_TABLE}" WHERE "{day}" = '
                    f'(SELECT max("{day}") FROM "{CUSTOMER_TAGS_TABLE}" {where}) ORDER BY 1', params)
