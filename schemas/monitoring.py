"""Contracts of the monitoring tables: drift checks, the drift gate, realised performance, retrain decisions.

The scoring flow's drift gate and the ``monitor`` flow write these tables (``replace_partition`` by
run date and model, so re-running a day replaces it); ``retrain_decisions`` is append-only: it is
the audit trail of why a retrain happened or did not. Every column name is declared here once.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing.pandas import Series

DRIFT_TABLE = "monitoring_drift"
DRIFT_RUNS_TABLE = "monitoring_runs"
GATE_TABLE = "drift_gate"
PERFORMANCE_TABLE = "monitoring_performance"
LABELLED_TABLE = "monitoring_labelled"
DECISIONS_TABLE = "retrain_decisions"

FEATURE_KINDS = ("numeric", "categorical", "score")
FEATURE_STATUSES = ("ok", "warn", "drift", "not_judged")
GATE_ACTIONS = ("none", "flag", "hold", "off", "unavailable")
DECISIONS = ("retrain", "none", "cooldown", "disabled", "failed")
SCORE_FEATURE = "probability"  # the row of the score distribution among the feature rows


class _Table(pa.DataFrameModel):
    class Config:
        coerce = True
        strict = True
        ordered = True


class DriftChecks(_Table):
    """One row per run date, model and feature (plus the score): the scored population vs the reference."""

    run_date: Series[pd.Timestamp]
    model: Series[str]
    model_version: Series[str] = pa.Field(description="label of the version that scored, e.g. aftersales-return v3")
    feature: Series[str] = pa.Field(description=f"feature name, or {SCORE_FEATURE!r} for the score distribution")
    kind: Series[str] = pa.Field(isin=FEATURE_KINDS)
    test: Series[str] = pa.Field(isin=("ks", "chi2"))
    psi: Series[float] = pa.Field(nullable=True, ge=0)
    statistic: Series[float] = pa.Field(nullable=True, description="KS D or chi-square statistic")
    p_value: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    reference_missing: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    current_missing: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    unseen_share: Series[float] = pa.Field(nullable=True, ge=0, le=1,
                                           description="rows whose category the reference never had")
    unseen_values: Series[str] = pa.Field(nullable=True)
    reference_rows: Series[int] = pa.Field(ge=0)
    current_rows: Series[int] = pa.Field(ge=0)
    status: Series[str] = pa.Field(isin=FEATURE_STATUSES)
    reason: Series[str] = pa.Field(nullable=True, description="why the status, in words")
    checked_at: Series[pd.Timestamp]


class DriftRuns(_Table):
    """One row per run date and model: the verdict over all its features and its scores."""

    run_date: Series[pd.Timestamp]
    model: Series[str]
    model_version: Series[str] = pa.Field(nullable=True)
    current_rows: Series[int] = pa.Field(ge=0)
    reference_rows: Series[int] = pa.Field(ge=0)
    drifted_features: Series[str] = pa.Field(nullable=True, description="comma-separated")
    n_drifted: Series[int] = pa.Field(ge=0)
    n_warn: Series[int] = pa.Field(ge=0)
    score_psi: Series[float] = pa.Field(nullable=True, ge=0)
    score_drift: Series[bool]
    severe: Series[bool]
    status: Series[str] = pa.Field(description="checked, not_scored, too_few_rows or the error in words")
    source: Series[str] = pa.Field(isin=("score", "monitor"), description="the scoring run's gate or the monitor")
    checked_at: Series[pd.Timestamp]


class DriftGate(_Table):
    """One row per scoring run date: did severe drift hold or flag the day's task list."""

    run_date: Series[pd.Timestamp]
    severe: Series[bool]
    action: Series[str] = pa.Field(isin=GATE_ACTIONS)
    flagged: Series[bool] = pa.Field(description="the day's list shipped with a drift warning")
    held: Series[bool] = pa.Field(description="the day's list was held back (written empty)")
    models: Series[str] = pa.Field(nullable=True, description="models with severe drift, comma-separated")
    reason: Series[str]
    flow_run_id: Series[str] = pa.Field(nullable=True)
    checked_at: Series[pd.Timestamp]


class RealisedPerformance(_Table):
    """One row per past scoring run and model whose labels have matured: how the scores did."""

    run_date: Series[pd.Timestamp]
    model: Series[str]
    model_version: Series[str]
    scored_rows: Series[int] = pa.Field(ge=0)
    n: Series[int] = pa.Field(ge=0, description="untreated scored rows with a label (the evaluated rows)")
    positives: Series[int] = pa.Field(ge=0)
    base_rate: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    roc_auc: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    pr_auc: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    brier: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    ece: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    log_loss: Series[float] = pa.Field(nullable=True, ge=0)
    precision_at_k: Series[float] = pa.Field(nullable=True, ge=0, le=1, description="top training.top_k by score")
    k: Series[int] = pa.Field(ge=0)
    listed: Series[int] = pa.Field(ge=0, description="task-list rows led by this model's risks")
    listed_positives: Series[int] = pa.Field(ge=0)
    listed_precision: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    listed_precision_at_k: Series[str] = pa.Field(description="JSON {k: precision of the first k listed}")
    reliability: Series[str] = pa.Field(description="JSON rows of the reliability curve (equal-frequency bins)")
    expected_roc_auc: Series[float] = pa.Field(nullable=True, description="the version's test-window ROC-AUC")
    expected_pr_auc: Series[float] = pa.Field(nullable=True, description="the version's test-window PR-AUC")
    label_end: Series[pd.Timestamp] = pa.Field(description="how far the data reached for the labels")
    evaluated_at: Series[pd.Timestamp]


class LabelledRows(_Table):
    """One row per matured scored entity: its probability, its label and whether care touched it.

    Realised-performance triggers pool these rows over runs (untreated rows only), so they are
    judged on the pooled sample size rather than by averaging per-run metrics.
    """

    run_date: Series[pd.Timestamp]
    model: Series[str]
    model_version: Series[str]
    entity_id: Series[str] = pa.Field(description="order_id or customer_id, per the model")
    customer_id: Series[str]
    probability: Series[float] = pa.Field(ge=0, le=1)
    label: Series[int] = pa.Field(isin=[0, 1])
    treated: Series[bool] = pa.Field(description="listed or contacted in a way that may have changed the label")


class RetrainDecisions(_Table):
    """Append-only: every trigger decision with its evidence, retrain or not."""

    decided_at: Series[pd.Timestamp]
    run_date: Series[pd.Timestamp]
    model: Series[str]
    model_version: Series[str] = pa.Field(nullable=True)
    checks: Series[str] = pa.Field(description="JSON list of {check, value, threshold, crossed, detail}")
    crossed: Series[str] = pa.Field(nullable=True, description="names of the checks that crossed, comma-separated")
    decision: Series[str] = pa.Field(isin=DECISIONS)
    reason: Series[str]
    trigger: Series[str] = pa.Field(nullable=True, description="subflow or deployment")
    flow_run_id: Series[str] = pa.Field(nullable=True, description="the triggered retrain flow run")
    monitor_flow_run_id: Series[str] = pa.Field(nullable=True)
