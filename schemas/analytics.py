"""Contracts of the analytics tables: behaviour tags, segments, journeys and service scores.

The segments, journeys and service-scores flows write these tables (``replace_partition`` by
``run_date``; the tag history is rewritten as a whole). Every column name of this layer is declared
here once; code refers to ``CustomerTags.segment`` etc. Columns meant for people (names, labels,
paths) never show an identifier with underscores.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing.pandas import Series

CUSTOMER_TAGS_TABLE = "customer_tags"
TAG_HISTORY_TABLE = "customer_tag_history"
SEGMENT_PROFILES_TABLE = "segment_profiles"
SEGMENT_CENTROIDS_TABLE = "segment_centroids"
JOURNEY_PATHS_TABLE = "journey_paths"
JOURNEY_STAGES_TABLE = "journey_stage_times"
JOURNEY_TRANSITIONS_TABLE = "journey_transitions"
JOURNEY_PREDICTIONS_TABLE = "journey_predictions"
JOURNEY_EVALUATION_TABLE = "journey_evaluation"
SERVICE_SCORES_TABLE = "service_scores"
SERVICE_DIMENSIONS_TABLE = "service_score_dimensions"

NO_UNDERSCORE = r"^[^_]*$"  # people-facing text never shows an identifier
TAG_NAME = r"^[a-z][a-z0-9_]*$"
SERVICE_GROUPINGS = ("overall", "team", "agent", "channel", "product_category")
JOURNEY_STEPS = (
    "delivered",
    "ticket_opened",
    "escalated",
    "return_requested",
    "refunded",
    "review_good",
    "review_bad",
    "next_order",
    "gone_quiet",
)
TERMINAL_STEPS = ("next_order", "gone_quiet")


class _Table(pa.DataFrameModel):
    class Config:
        coerce = True
        strict = True
        ordered = True


# ---- tags and segments ---------------------------------------------------------------------------
class CustomerTags(_Table):
    """Each customer's tags and segment as of a run date (what the scoring flow joins onto tasks)."""

    run_date: Series[pd.Timestamp]
    customer_id: Series[str] = pa.Field(str_length={"min_value": 1})
    tags: Series[str] = pa.Field(nullable=True, description="comma-separated tag names; empty when none")
    segment: Series[str] = pa.Field(nullable=True, description="stable segment id (S1, S2, ...); empty "
                                    "for customers without an order")
    segment_name: Series[str] = pa.Field(nullable=True, str_matches=NO_UNDERSCORE)

    @pa.dataframe_check(error="one row per customer and run date")
    def one_row_per_customer(cls, df: pd.DataFrame) -> pd.Series:
        return ~df.duplicated(["run_date", "customer_id"], keep=False)


class TagHistory(_Table):
    """When each customer gained and lost each tag; ``lost_at`` empty while the tag holds."""

    customer_id: Series[str] = pa.Field(str_length={"min_value": 1})
    tag: Series[str] = pa.Field(str_matches=TAG_NAME)
    gained_at: Series[pd.Timestamp]
    lost_at: Series[pd.Timestamp] = pa.Field(nullable=True)

    @pa.dataframe_check(error="lost_at before gained_at")
    def lost_after_gained(cls, df: pd.DataFrame) -> pd.Series:
        return ~(df["lost_at"] < df["gained_at"]).fillna(False)

    @pa.dataframe_check(error="at most one open spell per customer and tag")
    def one_open_spell(cls, df: pd.DataFrame) -> pd.Series:
        return ~(df["lost_at"].isna() & df.duplicated(["customer_id", "tag", "lost_at"], keep=False))


class SegmentProfiles(_Table):
    """One row per segment of a run: size, value, what defines it, its tags and a readable name."""

    run_date: Series[pd.Timestamp]
    segment: Series[str] = pa.Field(str_matches=r"^S\d+$")
    segment_name: Series[str] = pa.Field(str_matches=NO_UNDERSCORE)
    customers: Series[int] = pa.Field(ge=1)
    customer_share: Series[float] = pa.Field(ge=0, le=1)
    value_share: Series[float] = pa.Field(ge=0, le=1, description="share of the last year's revenue")
    avg_value_365d: Series[float] = pa.Field(ge=0)
    avg_orders_365d: Series[float] = pa.Field(ge=0)
    avg_recency_days: Series[float] = pa.Field(ge=0)
    defining_features: Series[str] = pa.Field(str_matches=NO_UNDERSCORE,
                                              description="features furthest from the average, in words")
    dominant_tags: Series[str] = pa.Field(str_matches=NO_UNDERSCORE, description="tag labels over-represented")
    k: Series[int] = pa.Field(ge=1)
    silhouette: Series[float] = pa.Field(nullable=True, ge=-1, le=1)

    @pa.dataframe_check(error="one row per segment and run date")
    def one_row_per_segment(cls, df: pd.DataFrame) -> pd.Series:
        return ~df.duplicated(["run_date", "segment"], keep=False)


class SegmentCentroids(_Table):
    """Centroids in the clustering space (before scaling), kept to match the next run's segments."""

    run_date: Series[pd.Timestamp]
    segment: Series[str] = pa.Field(str_matches=r"^S\d+$")
    feature: Series[str]
    value: Series[float]


# ---- journeys --------------------------------------------------------------------------------------
class JourneyPaths(_Table):
    """The most common after-sales paths of finished journeys, with their outcomes."""

    run_date: Series[pd.Timestamp]
    rank: Series[int] = pa.Field(ge=1)
    path: Series[str] = pa.Field(str_matches=NO_UNDERSCORE, description="steps in words, ' > '-separated")
    orders: Series[int] = pa.Field(ge=1)
    share: Series[float] = pa.Field(ge=0, le=1)
    return_rate: Series[float] = pa.Field(ge=0, le=1)
    bad_review_rate: Series[float] = pa.Field(ge=0, le=1)
    gone_quiet_rate: Series[float] = pa.Field(ge=0, le=1)
    median_days: Series[float] = pa.Field(ge=0, description="delivery to the last step")


class JourneyStageTimes(_Table):
    """Time between two consecutive steps, by ticket channel or product category."""

    run_date: Series[pd.Timestamp]
    stage: Series[str] = pa.Field(str_matches=NO_UNDERSCORE, description="'from step > to step' in words")
    from_step: Series[str] = pa.Field(isin=JOURNEY_STEPS)
    to_step: Series[str] = pa.Field(isin=JOURNEY_STEPS)
    dimension: Series[str] = pa.Field(isin=["all", "channel", "category"])
    value: Series[str]
    transitions: Series[int] = pa.Field(ge=1)
    median_hours: Series[float] = pa.Field(ge=0)
    p90_hours: Series[float] = pa.Field(ge=0)
    slow: Series[bool] = pa.Field(description="median well above the stage's overall median")


class JourneyTransitions(_Table):
    """The fitted model: from a state (the last steps) to the next step, with time to it."""

    run_date: Series[pd.Timestamp]
    state: Series[str] = pa.Field(description="last steps, '>'-separated step codes")
    next_step: Series[str] = pa.Field(isin=JOURNEY_STEPS)
    transitions: Series[int] = pa.Field(ge=1)
    probability: Series[float] = pa.Field(ge=0, le=1)
    median_hours: Series[float] = pa.Field(ge=0)


class JourneyPredictions(_Table):
    """Open journeys (delivered, not yet ordered again or gone quiet): what comes next and the risk."""

    run_date: Series[pd.Timestamp]
    order_id: Series[str] = pa.Field(str_length={"min_value": 1}, unique=True)
    customer_id: Series[str] = pa.Field(str_length={"min_value": 1})
    current_step: Series[str] = pa.Field(isin=JOURNEY_STEPS)
    path_so_far: Series[str] = pa.Field(str_matches=NO_UNDERSCORE)
    next_step: Series[str] = pa.Field(isin=JOURNEY_STEPS)
    next_step_label: Series[str] = pa.Field(str_matches=NO_UNDERSCORE)
    next_step_probability: Series[float] = pa.Field(ge=0, le=1)
    expected_days_to_next: Series[float] = pa.Field(ge=0)
    bad_outcome_probability: Series[float] = pa.Field(
        ge=0, le=1, description="chance that a bad review, a return or going quiet lies ahead")
    bad_so_far: Series[bool]


class JourneyEvaluation(_Table):
    """Next-step models against the naive baseline on a later window of orders."""

    run_date: Series[pd.Timestamp]
    model: Series[str]
    train_until: Series[pd.Timestamp]
    test_from: Series[pd.Timestamp]
    test_until: Series[pd.Timestamp]
    transitions: Series[int] = pa.Field(ge=0)
    accuracy: Series[float] = pa.Field(ge=0, le=1)
    mae_days: Series[float] = pa.Field(nullable=True, ge=0, description="time-to-next-step error")
    bad_outcome_brier: Series[float] = pa.Field(nullable=True, ge=0, le=1)


# ---- service quality --------------------------------------------------------------------------------
class ServiceScores(_Table):
    """Composite service-quality score per group and period, shrunk toward the overall mean."""

    run_date: Series[pd.Timestamp]
    period_start: Series[pd.Timestamp] = pa.Field(description="window start, or the week's Monday")
    period: Series[str] = pa.Field(isin=["window", "week"])
    grouping: Series[str] = pa.Field(isin=list(SERVICE_GROUPINGS))
    group_value: Series[str]
    tickets: Series[int] = pa.Field(ge=0)
    score: Series[float] = pa.Field(ge=0, le=100, description="weighted score after shrinkage")
    score_low: Series[float] = pa.Field(ge=0, le=100)
    score_high: Series[float] = pa.Field(ge=0, le=100)
    raw_score: Series[float] = pa.Field(nullable=True, ge=0, le=100, description="before shrinkage")
    ranked: Series[bool] = pa.Field(description="enough tickets to be ranked")
    rank: Series[pd.Int64Dtype] = pa.Field(nullable=True, ge=1, description="1 = best; empty when not ranked")

    @pa.dataframe_check(error="one row per run date, period, grouping and group")
    def one_row_per_group(cls, df: pd.DataFrame) -> pd.Series:
        return ~df.duplicated(["run_date", "period", "period_start", "grouping", "group_value"], keep=False)


class ServiceScoreDimensions(_Table):
    """Each dimension of the score per group of the window: measured, shrunk, scored."""

    run_date: Series[pd.Timestamp]
    grouping: Series[str] = pa.Field(isin=list(SERVICE_GROUPINGS))
    group_value: Series[str]
    dimension: Series[str]
    label: Series[str] = pa.Field(str_matches=NO_UNDERSCORE)
    weight: Series[float] = pa.Field(ge=0, le=1)
    observations: Series[int] = pa.Field(ge=0)
    measured: Series[float] = pa.Field(nullable=True, description="group value in the dimension's unit")
    shrunk: Series[float] = pa.Field(nullable=True, description="after empirical-Bayes shrinkage")
    score: Series[float] = pa.Field(nullable=True, ge=0, le=100)
