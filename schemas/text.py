"""Contracts of the text-derived tables: per-text insights, customer text features, weekly product
statistics and product alerts.

``text_insights`` holds one row per review, ticket and return text with its negative-sentiment
probability and complaint reason as they could have been known when the text was written
(cross-fitted: from models of earlier texts only); ``text_features`` (tasks/insight/text.py)
aggregates it per customer as of a cutoff. ``product_week_stats`` and ``product_alerts`` are
written by the early-warning flow (tasks/insight/alerts.py) and read by the KPI report.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing.pandas import Series

from schemas.sources import LANGUAGES

COMPLAINT_REASONS = [
    "size_fit",
    "quality_defect",
    "not_as_described",
    "logistics_late",
    "damaged_packaging",
    "service_attitude",
    "price_value",
    "food_taste",
    "other",
]
COMPLAINTS = [c for c in COMPLAINT_REASONS if c != "other"]  # "other" is not a complaint reason
NO_COMPLAINT = "none"
TEXT_SOURCES = ["review", "ticket", "return"]
METHODS = ["model", "lexicon", "score"]
METRICS = ["return_rate", "negative_review_rate"]
COMPARISONS = ["history", "category", "history+category"]
LEVELS = ["product", "category"]

TEXT_INSIGHTS_TABLE = "text_insights"
WEEK_STATS_TABLE = "product_week_stats"
ALERTS_TABLE = "product_alerts"


def complaint_column(category: str) -> str:
    """Name of the count column of one complaint reason (features and weekly stats)."""
    return f"complaint_{category}_count"


class _Table(pa.DataFrameModel):
    class Config:
        coerce = True
        strict = True
        ordered = True


class TextInsights(_Table):
    """One row per non-empty review, ticket or return text, scored by the current text models."""

    class Config:
        add_missing_columns = True  # frames written before ``trained_until`` existed still validate

    source: Series[str] = pa.Field(isin=TEXT_SOURCES)
    source_id: Series[str] = pa.Field(str_length={"min_value": 1}, description="review_id / ticket_id / return_id")
    customer_id: Series[str] = pa.Field(nullable=True)
    order_id: Series[str] = pa.Field(nullable=True)
    product_id: Series[str] = pa.Field(nullable=True)
    created_at: Series[pd.Timestamp] = pa.Field(description="when the text became known (created/opened/requested)")
    language: Series[str] = pa.Field(isin=LANGUAGES)
    negative_probability: Series[float] = pa.Field(
        nullable=True, ge=0, le=1,
        description="P(negative) as known when the text was written: its fold's sentiment model, before any "
                    "model a review's own score (1 bad, 0 good), else NaN (unknown)")
    negative: Series[bool] = pa.Field(description="negative_probability >= text.negative_threshold (NaN: False)")
    complaint: Series[str] = pa.Field(isin=COMPLAINT_REASONS)
    complaint_confidence: Series[float] = pa.Field(ge=0, le=1)
    method: Series[str] = pa.Field(isin=METHODS, description="who decided the complaint reason")
    weak_label: Series[str] = pa.Field(nullable=True, isin=COMPLAINT_REASONS,
                                       description="the code-given reason known when the text was written")
    trained_until: Series[pd.Timestamp] = pa.Field(
        nullable=True, description="the models that scored this text learnt only from texts created before this "
                                   "(NaT: no model yet, or cross-fitting off)")
    model_run_id: Series[str] = pa.Field(nullable=True, description="MLflow run of the text models")


class TextFeatures(_Table):
    """Per customer: what their texts said, counting only texts created by the cutoff."""

    customer_id: Series[str] = pa.Field(str_length={"min_value": 1}, unique=True)
    text_count: Series[float] = pa.Field(ge=0, description="texts written (reviews, tickets, returns)")
    negative_text_count: Series[float] = pa.Field(ge=0, description="texts the sentiment model finds negative")
    negative_text_share: Series[float] = pa.Field(ge=0, le=1)
    days_since_negative_text: Series[float] = pa.Field(nullable=True, ge=0, description="NaN: none yet")
    complaint_size_fit_count: Series[float] = pa.Field(ge=0)
    complaint_quality_defect_count: Series[float] = pa.Field(ge=0)
    complaint_not_as_described_count: Series[float] = pa.Field(ge=0)
    complaint_logistics_late_count: Series[float] = pa.Field(ge=0)
    complaint_damaged_packaging_count: Series[float] = pa.Field(ge=0)
    complaint_service_attitude_count: Series[float] = pa.Field(ge=0)
    complaint_price_value_count: Series[float] = pa.Field(ge=0)
    complaint_food_taste_count: Series[float] = pa.Field(ge=0)
    dominant_complaint: Series[str] = pa.Field(isin=[*COMPLAINTS, NO_COMPLAINT])


class ProductWeekStats(_Table):
    """Weekly after-sales rates per product and per category (weeks start on Monday, UTC)."""

    level: Series[str] = pa.Field(isin=LEVELS)
    key: Series[str] = pa.Field(description="product_id or category")
    category: Series[str] = pa.Field(nullable=True)
    week_start: Series[pd.Timestamp]
    units: Series[float] = pa.Field(ge=0, description="order lines delivered in the week")
    returns: Series[float] = pa.Field(ge=0, description="returns requested in the week")
    return_rate: Series[float] = pa.Field(nullable=True, ge=0, description="returns / units (NaN: no units)")
    reviews: Series[float] = pa.Field(ge=0)
    negative_reviews: Series[float] = pa.Field(ge=0)
    negative_review_rate: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    complaint_size_fit_count: Series[float] = pa.Field(ge=0)
    complaint_quality_defect_count: Series[float] = pa.Field(ge=0)
    complaint_not_as_described_count: Series[float] = pa.Field(ge=0)
    complaint_logistics_late_count: Series[float] = pa.Field(ge=0)
    complaint_damaged_packaging_count: Series[float] = pa.Field(ge=0)
    complaint_service_attitude_count: Series[float] = pa.Field(ge=0)
    complaint_price_value_count: Series[float] = pa.Field(ge=0)
    complaint_food_taste_count: Series[float] = pa.Field(ge=0)


class ProductAlerts(_Table):
    """One row per product, week and metric whose rise is significant after FDR control."""

    alert_id: Series[str] = pa.Field(str_length={"min_value": 1}, unique=True)
    week_start: Series[pd.Timestamp]
    product_id: Series[str] = pa.Field(str_length={"min_value": 1})
    product_name: Series[str] = pa.Field(nullable=True)
    category: Series[str] = pa.Field(nullable=True)
    metric: Series[str] = pa.Field(isin=METRICS)
    comparison: Series[str] = pa.Field(isin=COMPARISONS, description="what the week is significantly above")
    events: Series[float] = pa.Field(ge=0, description="returns or negative reviews in the week")
    volume: Series[float] = pa.Field(ge=0, description="units delivered or reviews in the week")
    rate: Series[float] = pa.Field(ge=0)
    baseline_history: Series[float] = pa.Field(nullable=True, ge=0, description="own recent weeks, shrunk")
    baseline_category: Series[float] = pa.Field(nullable=True, ge=0, description="rest of the category, same week")
    p_history: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    q_history: Series[float] = pa.Field(nullable=True, ge=0, le=1, description="Benjamini-Hochberg adjusted")
    p_category: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    q_category: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    main_complaints: Series[str] = pa.Field(nullable=True, description="top complaint reasons with counts")
    quotes: Series[str] = pa.Field(nullable=True, description="JSON list of quoted customer texts")
    forecast_negative_review_rate: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    forecast_low: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    forecast_high: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    as_of: Series[pd.Timestamp] = pa.Field(description="data time of the run that raised the alert")
