"""Which contract types each derived table the flows write: table name -> pandera model.

The warehouse creates a derived table with the column types declared here, never the types DuckDB
guesses from the first frame written (a first frame whose ``order_id`` was all missing once made
``scores.order_id`` a column of type NULL, and every later write failed). A table not listed gets
its types from the frame's dtypes, with an all-missing column stored as VARCHAR, never NULL.

A flow that adds a derived table adds it here; ``tests/test_warehouse.py`` checks that every
``*_TABLE`` constant of ``schemas/`` is either listed or a table with its own DDL.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing.pandas import Series

from schemas import analytics, board, monitoring, tasks, text

SCORES_TABLE = "scores"


class Scores(pa.DataFrameModel):
    """Every scored row of a run (not only the listed ones): monitoring and realised performance read it."""

    run_date: Series[pd.Timestamp]
    risk: Series[str]
    model_version: Series[str] = pa.Field(description="e.g. aftersales-return v3")
    customer_id: Series[str]
    order_id: Series[str] = pa.Field(nullable=True, description="empty for churn")
    probability: Series[float] = pa.Field(ge=0, le=1)
    value_at_stake: Series[float] = pa.Field(ge=0)

    class Config:
        coerce = True
        strict = True
        ordered = True


DERIVED_TABLES: dict[str, type[pa.DataFrameModel]] = {
    SCORES_TABLE: Scores,
    tasks.TASK_TABLE: tasks.TaskList,
    tasks.CONTROL_TABLE: tasks.ControlGroup,
    tasks.ASSIGNMENT_TABLE: tasks.ControlAssignments,
    board.TASK_RISKS_TABLE: board.TaskRisks,
    monitoring.DRIFT_TABLE: monitoring.DriftChecks,
    monitoring.DRIFT_RUNS_TABLE: monitoring.DriftRuns,
    monitoring.GATE_TABLE: monitoring.DriftGate,
    monitoring.PERFORMANCE_TABLE: monitoring.RealisedPerformance,
    monitoring.LABELLED_TABLE: monitoring.LabelledRows,
    monitoring.DECISIONS_TABLE: monitoring.RetrainDecisions,
    analytics.CUSTOMER_TAGS_TABLE: analytics.CustomerTags,
    analytics.TAG_HISTORY_TABLE: analytics.TagHistory,
    analytics.SEGMENT_PROFILES_TABLE: analytics.SegmentProfiles,
    analytics.SEGMENT_CENTROIDS_TABLE: analytics.SegmentCentroids,
    analytics.JOURNEY_PATHS_TABLE: analytics.JourneyPaths,
    analytics.JOURNEY_STAGES_TABLE: analytics.JourneyStageTimes,
    analytics.JOURNEY_TRANSITIONS_TABLE: analytics.JourneyTransitions,
    analytics.JOURNEY_PREDICTIONS_TABLE: analytics.JourneyPredictions,
    analytics.JOURNEY_EVALUATION_TABLE: analytics.JourneyEvaluation,
    analytics.SERVICE_SCORES_TABLE: analytics.ServiceScores,
    analytics.SERVICE_DIMENSIONS_TABLE: analytics.ServiceScoreDimensions,
    text.TEXT_INSIGHTS_TABLE: text.TextInsights,
    text.WEEK_STATS_TABLE: text.ProductWeekStats,
    text.ALERTS_TABLE: text.ProductAlerts,
}


def table_schema(name: str) -> type[pa.DataFrameModel] | None:
    """The declared contract of a derived table, or None for tables only the frame describes."""
    return DERIVED_TABLES.get(name)
