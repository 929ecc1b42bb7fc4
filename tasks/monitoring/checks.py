"""Model monitoring: drift of the scored population, realised performance, the drift gate, retrain triggers.

Drift compares what a scoring run scored with the training reference of the version that scored it
(``reference/reference_sample.parquet`` of that version's MLflow run). The scored features are not
stored: ``scoring_frame`` recomputes exactly the point-in-time features of that date. Per feature:

- numeric: population stability index (PSI) over equal-frequency bins of the reference, plus a
  missing bin, and a two-sample Kolmogorov-Smirnov test on the present values;
- categorical: PSI over the levels and a chi-square test of the 2 x levels table;
- the share of missing values (reference vs now), and the share of rows in categories the
  reference never had (a new carrier);
- the score itself: PSI of the served probabilities vs the version's probabilities on the reference.

A feature has *drifted* when its PSI says the shape moved materially and its test says that is not
chance (both: PSI alone is noisy on a few hundred rows, a test alone flags trivial shifts on many),
or when its missing or unseen share moved past its threshold. Smoothed group rates (a carrier's late
rate, a category's return rate) take a handful of values that move a hair from one day to the next;
bin edges are kept clear of such point masses (``reference_edges``), so only a real move changes bins.
A model's drift is *severe* when ``severe_features`` features drifted or its scores did.

Realised performance: once a past scoring run's label window has passed (``label_matured``), its
scored rows are joined with their labels and judged with the same metrics as training
(``classification_metrics``), plus the precision of the rows that made the task list. Only
untreated rows count (``tasks/care/treatment.py``: control and never-listed customers): a contact
changes the outcome the model predicts, so a care team that works would otherwise look like a
decaying model. The labelled rows are kept (``monitoring_labelled``) and the retrain triggers pool
them over the latest runs: ROC-AUC / PR-AUC with a customer-clustered bootstrap bound, calibration
as ECE against its null (a perfectly calibrated model at the same probabilities and n), never a
per-run ECE against a fixed number.

Everything here is a pure function of frames, or a thin step that reads/writes the warehouse,
MLflow, or both; the Prefect wiring lives in ``flows/monitor.py`` and the scoring flow's gate.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from uuid import UUID

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from scipy import stats

from schemas.monitoring import (
    DECISIONS_TABLE,
    DRIFT_RUNS_TABLE,
    DRIFT_TABLE,
    GATE_TABLE,
    LABELLED_TABLE,
    PERFORMANCE_TABLE,
    SCORE_FEATURE,
    DriftChecks,
    DriftGate,
    DriftRuns,
    LabelledRows,
    RealisedPerformance,
    RetrainDecisions,
)
from schemas.settings import MonitoringSettings, Settings
from schemas.tasks import TASK_TABLE, ControlGroup, TaskList
from tasks.care.treatment import treatment_mask
from tasks.data.warehouse import Warehouse, open_warehouse
from tasks.models.datasets import categorical_columns, feature_columns, scoring_frame, scoring_frames
from tasks.models.evaluation import calibration_bins, classification_metrics, reliability_table
from tasks.models.labels import data_end, entity_key, key_columns, label_matured, labels
from tasks.models.registry import configure, ensure_experiment
from tasks.templates import markdown_table

SCORES_TABLE = "scores"  # written by the scoring run (tasks/models/scoring.py)
RISKS_OF_MODEL: dict[str, tuple[str, ...]] = {
    "return": ("return",),
    "negative_review": ("negative_review", "late_delivery"),
    "churn": ("churn",),
}
MODEL_OF_RISK = {risk: model for model, risks in RISKS_OF_MODEL.items() for risk in risks}
REFERENCE_ARTIFACT = "reference/reference_sample.parquet"
MONITORING_TAG = "aftersales_monitoring"
SMOOTHING = 0.5  # pseudo-count per bin: an empty bin is rare, not impossible (PSI stays finite)
ATOM_SHARE = 0.005  # a reference value holding this share of rows is a point mass bin edges avoid
# realised-performance metrics in the markdown report, and that table's headings
PERFORMANCE_METRICS = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "brier": "Brier", "ece": "ECE",
                       "listed_precision": "listed precision"}
PERFORMANCE_HEADINGS = {"run_date": "run date", "model": "model", "n": "n", **PERFORMANCE_METRICS}


def _now() -> pd.Timestamp:
    return pd.Timestamp.now("UTC").tz_localize(None).as_unit("us")


def _day(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.normalize().as_unit("us")


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# =============================================================================== statistics (pure)


def smoothed_shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=float)
    return (counts + SMOOTHING) / (counts.sum() + SMOOTHING * counts.size)


def psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Population stability index: sum (cur - ref) * ln(cur / ref) over bins of smoothed shares."""
    ref, cur = smoothed_shares(reference_counts), smoothed_shares(current_counts)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def reference_edges(values: np.ndarray, n_bins: int, resolution: float) -> np.ndarray:
    """Inner bin edges: reference quantiles, moved off the reference's point masses.

    An edge within ``resolution`` x (1-99% range) of a value that holds at least ``ATOM_SHARE`` of
    the reference is moved to the nearer end of that keep-out zone (or dropped outside the data):
    a smoothed rate that takes a few values, each moving a hair per day, then never changes bins.
    Continuous features have no point masses and keep plain equal-frequency edges.
    """
    v = np.sort(values[np.isfinite(values)])
    if v.size == 0:
        return np.empty(0)
    edges = np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1]))
    lo, hi = np.quantile(v, [0.01, 0.99])
    span = (hi - lo) or (v[-1] - v[0]) or max(abs(v[-1]), 1.0)
    tol = resolution * span
    distinct, counts = np.unique(v, return_counts=True)
    atoms = distinct[counts >= max(2, ATOM_SHARE * v.size)]
    if atoms.size:
        zones = _merge_intervals(atoms - tol, atoms + tol)
        moved = []
        for edge in edges:
            inside = [(a, b) for a, b in zones if a <= edge <= b]
            if not inside:
                moved.append(edge)
                continue
            a, b = inside[0]
            moved.append(a if edge - a < b - edge else b)
        edges = np.unique(np.asarray(moved, dtype=float))
    return edges[(edges >= v[0]) & (edges < v[-1])]


def _merge_intervals(starts: np.ndarray, ends: np.ndarray) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for a, b in sorted(zip(starts.tolist(), ends.tolist(), strict=True)):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def binned_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin (-inf, e1], (e1, e2], ..., (ek, inf), then one bin of missing values."""
    missing = ~np.isfinite(values)
    idx = np.searchsorted(edges, values[~missing], side="left")
    return np.append(np.bincount(idx, minlength=edges.size + 1), missing.sum())


@dataclass
class FeatureDrift:
    """The statistics of one feature (or of the score): reference vs current."""

    feature: str
    kind: str
    test: str
    psi: float | None
    statistic: float | None
    p_value: float | None
    reference_missing: float | None
    current_missing: float | None
    unseen_share: float | None
    unseen_values: str | None
    reference_rows: int
    current_rows: int
    status: str = "ok"
    reason: str | None = None


def numeric_drift(feature: str, reference: pd.Series, current: pd.Series, cfg: MonitoringSettings,
                  kind: str = "numeric") -> FeatureDrift:
    """PSI over reference bins (+ missing bin), KS on the present values, missing shares."""
    ref = pd.to_numeric(reference, errors="coerce").to_numpy(dtype=float)
    cur = pd.to_numeric(current, errors="coerce").to_numpy(dtype=float)
    edges = reference_edges(ref, cfg.psi_bins, cfg.resolution)
    value = psi(binned_counts(ref, edges), binned_counts(cur, edges)) if ref.size and cur.size else None
    a, b = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    statistic = p_value = None
    if a.size and b.size:
        exact = max(a.size, b.size) <= cfg.ks_exact_max_rows
        result = stats.ks_2samp(a, b, method="exact" if exact else "asymp")
        statistic, p_value = float(result.statistic), float(result.pvalue)
    return FeatureDrift(feature, kind, "ks", value, statistic, p_value,
                        float(np.mean(~np.isfinite(ref))) if ref.size else None,
                        float(np.mean(~np.isfinite(cur))) if cur.size else None,
                        None, None, int(ref.size), int(cur.size))


def _levels(values: pd.Series) -> pd.Series:
    return values.astype("string").fillna("unknown").value_counts()


def categorical_drift(feature: str, reference: pd.Series, current: pd.Series,
                      trained: Sequence[str] | None = None) -> FeatureDrift:
    """PSI over levels, chi-square of the 2 x levels table, unseen levels and the unknown share.

    Unseen: levels the model was never trained with (``trained``, scored as ``unknown``), else
    levels the reference sample lacks.
    """
    ref, cur = _levels(reference), _levels(current)
    levels = sorted(set(ref.index) | set(cur.index))
    rc = ref.reindex(levels, fill_value=0).to_numpy(dtype=float)
    cc = cur.reindex(levels, fill_value=0).to_numpy(dtype=float)
    value = psi(rc, cc) if rc.sum() and cc.sum() else None
    statistic = p_value = None
    if rc.sum() and cc.sum():
        used = (rc + cc) > 0
        if used.sum() >= 2:
            result = stats.chi2_contingency(np.vstack([rc[used], cc[used]]))
            statistic, p_value = float(result.statistic), float(result.pvalue)
        else:
            statistic, p_value = 0.0, 1.0
    known = set(trained) if trained is not None else None
    unseen = [(level, int(n)) for level, n, r in zip(levels, cc, rc, strict=True)
              if n > 0 and (level not in known if known is not None else r == 0)]
    unknown_ref = float(ref.get("unknown", 0) / rc.sum()) if rc.sum() else None
    unknown_cur = float(cur.get("unknown", 0) / cc.sum()) if cc.sum() else None
    return FeatureDrift(feature, "categorical", "chi2", value, statistic, p_value, unknown_ref, unknown_cur,
                        float(sum(n for _, n in unseen) / cc.sum()) if cc.sum() else None,
                        ", ".join(f"{level} ({n})" for level, n in sorted(unseen, key=lambda x: -x[1])) or None,
                        int(rc.sum()), int(cc.sum()))


def judge(check: FeatureDrift, cfg: MonitoringSettings) -> FeatureDrift:
    """Status and reason in words: drift needs PSI and its test to agree, or a missing/unseen jump."""
    if check.current_rows < cfg.min_rows:
        check.status, check.reason = "not_judged", f"{check.current_rows} rows < {cfg.min_rows}"
        return check
    reasons, drift = [], False
    significant = check.p_value is not None and check.p_value < cfg.p_value
    psi_limit = cfg.score_psi_drift if check.kind == "score" else cfg.psi_drift
    name = "KS" if check.test == "ks" else "chi-square"
    if check.psi is not None and check.psi >= psi_limit and significant:
        drift = True
        reasons.append(f"PSI {check.psi:.2f} >= {psi_limit:g} and {name} p {check.p_value:.1e} < {cfg.p_value:g}")
    if check.reference_missing is not None and check.current_missing is not None:
        delta = check.current_missing - check.reference_missing
        if abs(delta) >= cfg.missing_delta and missing_p_value(check) < cfg.p_value:
            drift = True
            reasons.append(f"missing {check.current_missing:.0%} vs {check.reference_missing:.0%} in the reference")
    if check.unseen_share is not None and check.unseen_share >= cfg.unseen_share:
        drift = True
        reasons.append(f"{check.unseen_share:.0%} of rows in categories the reference never had: "
                       f"{check.unseen_values}")
    if drift:
        check.status = "drift"
    elif check.psi is not None and check.psi >= cfg.psi_warn and significant:
        check.status = "warn"
        reasons.append(f"PSI {check.psi:.2f} >= {cfg.psi_warn:g} (warn) and {name} p {check.p_value:.1e}")
    check.reason = "; ".join(reasons) or None
    return check


def missing_p_value(check: FeatureDrift) -> float:
    """Fisher's exact test of the missing shares (reference vs now): a small day moves them by chance."""
    if check.reference_missing is None or check.current_missing is None:
        return 1.0
    ref_missing = round(check.reference_missing * check.reference_rows)
    cur_missing = round(check.current_missing * check.current_rows)
    table = [[ref_missing, check.reference_rows - ref_missing], [cur_missing, check.current_rows - cur_missing]]
    return float(stats.fisher_exact(table).pvalue)


def comparable_features(reference: pd.DataFrame, current: pd.DataFrame,
                        trained: Sequence[str] | None = None) -> list[str]:
    """The features a version's drift is judged on, in its order.

    Only the version's own inputs (``trained``; else its reference columns): a feature added to the
    code since is not its drift. And not a feature entirely missing in the reference: the version
    learned nothing from it (text features before ``aftersales text`` first ran), so its values
    appearing later is no shift of what the model relies on.
    """
    names = list(trained) if trained is not None else list(reference.columns)
    return [f for f in names if f in reference.columns and f in current.columns and reference[f].notna().any()]


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame, features: Sequence[str],
                  categorical: Iterable[str], cfg: MonitoringSettings,
                  levels: Mapping[str, Sequence[str]] | None = None) -> list[FeatureDrift]:
    """Every feature of ``features`` judged, in the model's feature order (``levels``: trained levels)."""
    categorical = set(categorical)
    out = []
    for feature in features:
        if feature in categorical:
            check = categorical_drift(feature, reference[feature], current[feature], (levels or {}).get(feature))
        else:
            check = numeric_drift(feature, reference[feature], current[feature], cfg)
        out.append(judge(check, cfg))
    return out


def score_drift(reference_probabilities: np.ndarray, probabilities: np.ndarray,
                cfg: MonitoringSettings) -> FeatureDrift:
    """The score distribution as one more 'feature': served probabilities vs the reference's."""
    check = numeric_drift(SCORE_FEATURE, pd.Series(reference_probabilities), pd.Series(probabilities), cfg,
                          kind="score")
    return judge(check, cfg)


@dataclass
class ModelDrift:
    """The verdict of one model on one run date."""

    model: str
    model_version: str | None
    checks: list[FeatureDrift] = field(default_factory=list)
    status: str = "checked"
    reference_rows: int = 0
    current_rows: int = 0

    @property
    def drifted(self) -> list[str]:
        return [c.feature for c in self.checks if c.status == "drift" and c.kind != "score"]

    @property
    def warned(self) -> list[str]:
        return [c.feature for c in self.checks if c.status == "warn" and c.kind != "score"]

    @property
    def score(self) -> FeatureDrift | None:
        return next((c for c in self.checks if c.kind == "score"), None)

    @property
    def score_drift(self) -> bool:
        return self.score is not None and self.score.status == "drift"

    def severe(self, cfg: MonitoringSettings) -> bool:
        return self.status == "checked" and (len(self.drifted) >= cfg.severe_features or self.score_drift)

    def summary(self, cfg: MonitoringSettings) -> str:
        if self.status != "checked":
            return f"{self.model}: not checked ({self.status})"
        score = self.score
        psi_text = f"score PSI {score.psi:.2f}" if score and score.psi is not None else "no score PSI"
        drifted = ", ".join(self.drifted) or "none"
        return (f"{self.model} ({self.model_version}): {'SEVERE drift' if self.severe(cfg) else 'no severe drift'}"
                f" - {len(self.drifted)} drifted feature(s): {drifted}; {psi_text}")


# ====================================================================== reference and scored rows


def version_of_label(label: str) -> tuple[str, str]:
    """``"aftersales-return v3"`` -> ``("aftersales-return", "3")``."""
    name, _, version = str(label).rpartition(" v")
    if not name or not version:
        raise ValueError(f"not a model version label: {label!r}")
    return name, version


@dataclass(frozen=True)
class Reference:
    frame: pd.DataFrame
    probabilities: np.ndarray
    run_id: str
    expected: dict[str, float]  # the version's test-window metrics (tags test_*)
    scorer: Any = None  # the version itself: its features, trained category levels, predict_proba

    @property
    def features(self) -> list[str] | None:
        return list(self.scorer.features) if getattr(self.scorer, "features", None) is not None else None

    @property
    def levels(self) -> dict[str, list[str]] | None:
        return getattr(self.scorer, "categories", None)


def load_reference(settings: Settings, model: str, version: str, scorer: Any = None) -> Reference:
    """The version's training sample and its predicted probabilities (cached: artifacts never change).

    ``scorer`` (the loaded champion of a scoring run) saves loading the model a second time.
    """
    registry_uri = settings.mlflow.registry_uri or settings.tracking_uri
    name = settings.registered_model_name(model)
    frame, run_id, expected = _reference_frame(settings.tracking_uri, registry_uri, name, str(version))
    if scorer is None:
        scorer = _version_scorer(settings.tracking_uri, registry_uri, name, str(version))
        probabilities = _reference_probabilities(settings.tracking_uri, registry_uri, name, str(version))
    else:
        probabilities = _predict(scorer, frame)
    return Reference(frame, probabilities, run_id, expected, scorer)


def _predict(scorer: Any, frame: pd.DataFrame) -> np.ndarray:
    """The version's probabilities on its own training sample (the model picks its own features)."""
    return np.clip(np.asarray(scorer.predict_proba(frame), dtype=float), 0.0, 1.0)


@lru_cache(maxsize=16)
def _reference_frame(tracking_uri: str, registry_uri: str, name: str,
                     version: str) -> tuple[pd.DataFrame, str, dict[str, float]]:
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    mv = client.get_model_version(name, version)
    if not mv.run_id:
        raise LookupError(f"{name} v{version} has no training run")
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(mv.run_id, REFERENCE_ARTIFACT, folder)
        except (MlflowException, OSError) as exc:
            raise LookupError(f"{name} v{version} has no {REFERENCE_ARTIFACT}") from exc
        frame = pd.read_parquet(path)
    return frame, mv.run_id, version_metrics(mv.tags)


@lru_cache(maxsize=16)
def _version_scorer(tracking_uri: str, registry_uri: str, name: str, version: str) -> Any:
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()


@lru_cache(maxsize=16)
def _reference_probabilities(tracking_uri: str, registry_uri: str, name: str, version: str) -> np.ndarray:
    frame, _, _ = _reference_frame(tracking_uri, registry_uri, name, version)
    return _predict(_version_scorer(tracking_uri, registry_uri, name, version), frame)


def version_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    """The test-window metrics a version was registered with (tags ``test_*``)."""
    return {k.removeprefix("test_"): float(v) for k, v in tags.items()
            if k.startswith("test_") and _finite(v) is not None}


def scores_of_day(wh: Warehouse, run_date: Any, model: str | None = None) -> pd.DataFrame:
    """The scores table's rows of one run date (optionally of one model), with a ``model`` column."""
    if not wh.has_table(SCORES_TABLE):
        return pd.DataFrame(columns=["run_date", "risk", "model_version", "customer_id", "order_id",
                                     "probability", "value_at_stake", "model"])
    frame = wh.query(f'SELECT * FROM "{SCORES_TABLE}" WHERE run_date = ?', [_day(run_date).to_pydatetime()])
    frame["model"] = frame["risk"].map(MODEL_OF_RISK)
    return frame[frame["model"] == model].reset_index(drop=True) if model else frame


def population_columns(model: str) -> list[str]:
    return [*key_columns(model), *feature_columns(model)]


def population_path(settings: Settings, model: str, day: pd.Timestamp) -> Path:
    warehouse = hashlib.sha1(str(Path(settings.warehouse_path).resolve()).encode()).hexdigest()[:12]
    return settings.reports_dir / "monitoring" / "populations" / warehouse / model / f"{day:%Y-%m-%d}.parquet"


def population_kept(settings: Settings, model: str, day: pd.Timestamp) -> bool:
    """A kept frame with other columns than the code's features (a feature added since) does not count."""
    path = population_path(settings, model, day)
    return path.exists() and pq.read_schema(path).names == population_columns(model)


def earlier_pool_days(run_date: Any, cfg: MonitoringSettings) -> list[pd.Timestamp]:
    """The run dates before ``run_date`` whose order populations the drift pool adds to the day's."""
    day = _day(run_date)
    return [day - pd.Timedelta(days=back) for back in range(1, cfg.drift_pool_days)]


def order_models_of(models: Iterable[str]) -> list[str]:
    return [m for m in models if entity_key(m) == "order_id"]


def fill_population_pools(wh: Warehouse, settings: Settings, run_date: Any, models: Sequence[str]) -> int:
    """The pooled days no run has kept yet, both order models' frames from one feature pass a day.

    Why: the first morning (or the first after the kept frames were removed) has no earlier days kept,
    and computing them model by model reads each day's history twice (on a 1M-customer shop the
    gate's first morning spent 280 s there). Returns the number of days computed.
    """
    order_models, filled = order_models_of(models), 0
    for earlier in earlier_pool_days(run_date, settings.monitoring):
        missing = [m for m in order_models if not population_kept(settings, m, earlier)]
        if len(missing) < 2:  # one model alone computes its own in population_frame
            continue
        for model, frame in scoring_frames(wh, missing, earlier, settings).items():
            population_frame(wh, settings, model, earlier, frame)
        filled += 1
    return filled


def population_frame(wh: Warehouse, settings: Settings, model: str, day: pd.Timestamp,
                     current: pd.DataFrame | None = None) -> pd.DataFrame:
    """The model's scored population of ``day`` (keys and features), computed once and kept per warehouse.

    The scoring run's own frame (``current``) is kept as is; a day computed here is the same point-in-time
    frame. A kept frame with other columns than the code's features (a feature added since) is recomputed.
    """
    columns = population_columns(model)
    path = population_path(settings, model, day)
    if current is None and population_kept(settings, model, day):
        return pd.read_parquet(path)
    frame = (current if current is not None else scoring_frame(wh, model, day, settings))[columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return frame


def recent_population(wh: Warehouse, settings: Settings, run_date: Any, model: str,
                      current: pd.DataFrame | None = None) -> tuple[pd.DataFrame, int]:
    """The population judged for drift on ``run_date``, and how many days it pools.

    Order models: the populations of the ``drift_pool_days`` run dates up to this one. An order is
    scored once per moment, so a day holds only the orders shipped, delivered or overdue that day,
    and its mix follows the weekday (fewer deliveries after a Sunday): a week of days is what the
    reference (many days of the same populations) can be compared with, on a small shop and a large
    one alike. Each day's frame is kept (``population_frame``), so a day's features are computed once.
    Churn: the day's population (every active customer, nearly the same from one day to the next).
    """
    day = _day(run_date)
    frames = [population_frame(wh, settings, model, day, current)]
    if entity_key(model) == "order_id":
        frames += [population_frame(wh, settings, model, earlier)
                   for earlier in earlier_pool_days(day, settings.monitoring)]
    filled = [f for f in frames if len(f)]
    return (pd.concat(filled, ignore_index=True) if len(filled) > 1 else frames[0]), len(frames)


def scoring_version(scores: pd.DataFrame) -> str | None:
    """The label of the version that scored a model's rows of the day (None: not scored)."""
    return str(scores["model_version"].mode().iloc[0]) if len(scores) else None


def pooled_status(rows: int, cfg: MonitoringSettings) -> str:
    """A model's drift status from the size of its (pooled) population: too few rows are not judged."""
    return "too_few_rows" if rows < cfg.min_rows else "checked"


def model_drift(wh: Warehouse, settings: Settings, run_date: Any, model: str, scores: pd.DataFrame,
                scorer: Any = None, current: pd.DataFrame | None = None) -> ModelDrift:
    """The day's population (pooled with the days before while small) against the scoring version's
    reference: every feature the version was trained with, and its scores."""
    cfg = settings.monitoring
    label = scoring_version(scores)
    if label is None:
        return ModelDrift(model, None, status="not_scored")
    try:
        reference = load_reference(settings, model, version_of_label(label)[1], scorer)
    except (LookupError, MlflowException, OSError, ValueError) as exc:
        return ModelDrift(model, label, status=f"no reference: {str(exc).splitlines()[0][:200]}")
    pooled, days = recent_population(wh, settings, run_date, model, current)
    result = ModelDrift(model, label, status=pooled_status(len(pooled), cfg), reference_rows=len(reference.frame),
                        current_rows=len(pooled))
    features = comparable_features(reference.frame, pooled, reference.features)
    result.checks = feature_drift(reference.frame, pooled, features, categorical_columns(model), cfg,
                                  reference.levels)
    if days > 1 and reference.scorer is not None:  # the pooled days scored by this version, as served today
        probabilities = _predict(reference.scorer, pooled)
    else:
        probabilities = scores["probability"].to_numpy(dtype=float)
    result.checks.append(score_drift(reference.probabilities, probabilities, cfg))
    return result


def drift_for_day(wh: Warehouse, settings: Settings, run_date: Any, scorers: Mapping[str, Any] | None = None,
                  frames: Mapping[str, pd.DataFrame] | None = None) -> dict[str, ModelDrift]:
    """Every configured model's drift on the day's scoring run (models without scores: ``not_scored``)."""
    scores = scores_of_day(wh, run_date)
    fill_population_pools(wh, settings, run_date, [m for m in settings.training.models if (scores["model"] == m).any()])
    out = {}
    for model in settings.training.models:
        rows = scores[scores["model"] == model]
        out[model] = model_drift(wh, settings, run_date, model, rows, (scorers or {}).get(model),
                                 (frames or {}).get(model))
    return out


def drift_tables(results: Mapping[str, ModelDrift], run_date: Any, cfg: MonitoringSettings,
                 source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(``DriftChecks`` rows, ``DriftRuns`` rows) of one day."""
    now, day = _now(), _day(run_date)
    checks = [{"run_date": day, "model": r.model, "model_version": r.model_version, **vars(c), "checked_at": now}
              for r in results.values() for c in r.checks]
    check_columns = list(DriftChecks.to_schema().columns)
    checks_frame = pd.DataFrame(checks, columns=check_columns)
    runs = [{
        "run_date": day, "model": r.model, "model_version": r.model_version, "current_rows": r.current_rows,
        "reference_rows": r.reference_rows, "drifted_features": ",".join(r.drifted) or None,
        "n_drifted": len(r.drifted), "n_warn": len(r.warned),
        "score_psi": r.score.psi if r.score else None, "score_drift": r.score_drift,
        "severe": r.severe(cfg), "status": r.status, "source": source, "checked_at": now,
    } for r in results.values()]
    runs_frame = pd.DataFrame(runs, columns=list(DriftRuns.to_schema().columns))
    return DriftChecks.validate(checks_frame, lazy=True), DriftRuns.validate(runs_frame, lazy=True)


def write_drift(wh: Warehouse, checks: pd.DataFrame, runs: pd.DataFrame, run_date: Any) -> None:
    """Replace the day's rows (re-running a day, or the monitor after the gate, replaces them)."""
    where = {"run_date": _day(run_date).to_pydatetime()}
    wh.replace_partition(DRIFT_TABLE, checks, where=where)
    wh.replace_partition(DRIFT_RUNS_TABLE, runs, where=where)


STORED_STATISTICS = ("psi", "statistic", "p_value", "reference_missing", "current_missing", "unseen_share")


def _stored_check(row: Mapping[str, Any], cfg: MonitoringSettings) -> FeatureDrift:
    """A stored check's statistics (NULL read back as NaN becomes None again), judged under today's thresholds."""
    unseen = row["unseen_values"]
    check = FeatureDrift(str(row["feature"]), str(row["kind"]), str(row["test"]),
                         *(_finite(row[name]) for name in STORED_STATISTICS),
                         unseen if isinstance(unseen, str) else None,
                         int(row["reference_rows"]), int(row["current_rows"]))
    return judge(check, cfg)


def stored_gate_drift(wh: Warehouse, settings: Settings, run_date: Any) -> dict[str, ModelDrift] | None:
    """The scoring run's own drift of the day, when it still describes the day's scores; else None.

    The gate already compared the day's population with each scoring version's reference: the same
    statistics the monitor would compute again (and the reference load from MLflow is most of the
    cost). Only the verdicts are redone, under today's thresholds. Used only when every model's row
    was written by the gate and names the version that scored the day's rows as they stand now.
    """
    if not (wh.has_table(DRIFT_RUNS_TABLE) and wh.has_table(DRIFT_TABLE)):
        return None
    day = _day(run_date).to_pydatetime()
    runs = wh.query(f'SELECT * FROM "{DRIFT_RUNS_TABLE}" WHERE run_date = ?', [day])
    scores = scores_of_day(wh, run_date)
    models = list(settings.training.models)
    if set(runs["model"]) != set(models) or (runs["source"] != "score").any():  # one row per model and day
        return None
    checks = wh.query(f'SELECT * FROM "{DRIFT_TABLE}" WHERE run_date = ? ORDER BY rowid', [day])
    cfg, out = settings.monitoring, {}
    for run in runs.to_dict("records"):
        model = run["model"]
        rows = scores[scores["model"] == model]
        version = run["model_version"] if isinstance(run["model_version"], str) else None
        if version != scoring_version(rows):
            return None
        status = run["status"]
        if status not in ("checked", "too_few_rows", "not_scored"):  # the gate could not judge: try again
            return None
        if status != "not_scored":
            status = pooled_status(int(run["current_rows"]), cfg)
        out[model] = ModelDrift(model, version,
                                [_stored_check(c, cfg) for c in checks[checks["model"] == model].to_dict("records")],
                                status, int(run["reference_rows"]), int(run["current_rows"]))
    return {m: out[m] for m in models}


def forget_gate_drift(wh: Warehouse, run_date: Any) -> None:
    """A scoring run without a gate leaves no verdict of an earlier run about scores it replaced."""
    day = _day(run_date).to_pydatetime()
    with wh.transaction():
        for table in (DRIFT_TABLE, DRIFT_RUNS_TABLE):
            if wh.has_table(table):
                wh.con.execute(f'DELETE FROM "{table}" WHERE run_date = ?', [day])


# =========================================================================================== gate


@dataclass
class GateDecision:
    """What the drift gate did to the day's task list."""

    run_date: pd.Timestamp
    severe: bool
    action: str  # none | flag | hold | off | unavailable
    models: list[str]
    reason: str
    details: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return self.action == "hold"

    @property
    def flagged(self) -> bool:
        return self.action == "flag"

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "severe": self.severe, "models": self.models, "reason": self.reason}

    def banner(self) -> str:
        """Markdown put above the day's task-list summary; empty when nothing is wrong."""
        if self.action == "hold":
            head = "> **Task list held: severe drift.** The scores were written; no tasks were issued today."
        elif self.action == "flag":
            head = "> **Drift warning:** severe drift in the scored population; check the list before working it."
        elif self.action == "unavailable":
            return f"> Drift gate unavailable: {self.reason}\n\n"
        else:
            return ""
        return head + "\n>\n" + "\n".join(f"> - {line}" for line in self.details) + "\n\n"


def gate_decision(results: Mapping[str, ModelDrift], run_date: Any, cfg: MonitoringSettings) -> GateDecision:
    """Severe drift in any model holds or flags the whole list, per ``monitoring.gate``."""
    severe = [r for r in results.values() if r.severe(cfg)]
    details = [r.summary(cfg) for r in severe]
    if not severe:
        return GateDecision(_day(run_date), False, "none", [], "no severe drift", [r.summary(cfg) for r in
                                                                                  results.values()])
    action = cfg.gate
    reason = "severe drift: " + " | ".join(details)
    return GateDecision(_day(run_date), True, action, [r.model for r in severe], reason, details)


def empty_task_lists() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A valid empty task list and control group: what a held day stores and hands out."""
    def empty(model: type[TaskList]) -> pd.DataFrame:
        return model.validate(pd.DataFrame({c: pd.Series(dtype=object) for c in model.to_schema().columns}))

    return empty(TaskList), empty(ControlGroup)


def gate_table(decision: GateDecision, flow_run_id: str | None) -> pd.DataFrame:
    row = {"run_date": decision.run_date, "severe": decision.severe, "action": decision.action,
           "flagged": decision.flagged, "held": decision.held, "models": ",".join(decision.models) or None,
           "reason": decision.reason, "flow_run_id": flow_run_id, "checked_at": _now()}
    return DriftGate.validate(pd.DataFrame([row], columns=list(DriftGate.to_schema().columns)), lazy=True)


NOTICE_FILES = {"hold": "HELD.md", "flag": "DRIFT_WARNING.md"}


def write_notice(decision: GateDecision, tasks_dir: Path) -> Path | None:
    """A note beside the day's (empty or flagged) hand-out saying why; a re-run without drift removes it."""
    folder = tasks_dir / f"{decision.run_date:%Y-%m-%d}"
    for name in NOTICE_FILES.values():
        (folder / name).unlink(missing_ok=True)
    if decision.action not in NOTICE_FILES:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NOTICE_FILES[decision.action]
    path.write_text(f"# {decision.run_date:%Y-%m-%d}: {'task list held' if decision.held else 'drift warning'}\n\n"
                    + "\n".join(f"- {line}" for line in decision.details) + "\n", encoding="utf-8")
    return path


def run_gate(settings: Settings, run_date: Any, scorers: Mapping[str, Any] | None = None,
             flow_run_id: str | None = None, frames: Mapping[str, pd.DataFrame] | None = None) -> GateDecision:
    """The scoring run's gate: drift of the day's scores, recorded, and what to do with the list."""
    cfg = settings.monitoring
    if cfg.gate == "off":
        with open_warehouse(settings) as wh:
            forget_gate_drift(wh, run_date)
        return GateDecision(_day(run_date), False, "off", [], "drift gate is off (monitoring.gate)")
    with open_warehouse(settings) as wh:
        results = drift_for_day(wh, settings, run_date, scorers, frames)
        checks, runs = drift_tables(results, run_date, cfg, source="score")
        decision = gate_decision(results, run_date, cfg)
        write_drift(wh, checks, runs, run_date)
        wh.replace_partition(GATE_TABLE, gate_table(decision, flow_run_id),
                             where={"run_date": decision.run_date.to_pydatetime()})
    write_notice(decision, settings.reports_dir / "tasks")
    return decision


# ========================================================================== realised performance


def evaluated_runs(wh: Warehouse) -> set[tuple[pd.Timestamp, str]]:
    if not wh.has_table(PERFORMANCE_TABLE):
        return set()
    done = wh.query(f'SELECT DISTINCT run_date, model FROM "{PERFORMANCE_TABLE}"')
    return {(_day(d), m) for d, m in zip(done["run_date"], done["model"], strict=True)}


def pending_runs(wh: Warehouse, settings: Settings, until: Any | None = None) -> list[tuple[pd.Timestamp, str]]:
    """(run date, model) of past scoring runs whose labels have matured and that are not evaluated yet."""
    if not wh.has_table(SCORES_TABLE):
        return []
    runs = wh.query(f'SELECT DISTINCT run_date, risk FROM "{SCORES_TABLE}"')
    runs["model"] = runs["risk"].map(MODEL_OF_RISK)
    pairs = sorted({(_day(d), m) for d, m in zip(runs["run_date"], runs["model"], strict=True)
                    if m in settings.training.models})
    if until is not None:
        pairs = [(d, m) for d, m in pairs if d <= _day(until)]
    done = evaluated_runs(wh)
    return [(d, m) for d, m in pairs if (d, m) not in done and label_matured(wh, m, d, settings)]


def listed_rows(wh: Warehouse, run_date: Any, model: str) -> pd.DataFrame:
    """The day's task-list rows led by one of the model's risks, in rank order, keyed like its scores."""
    if not wh.has_table(TASK_TABLE):
        return pd.DataFrame(columns=[entity_key(model), "rank"])
    risks = RISKS_OF_MODEL[model]
    key = entity_key(model)
    marks = ", ".join("?" for _ in risks)
    return wh.query(f'SELECT "{key}", "rank" FROM "{TASK_TABLE}" WHERE run_date = ? AND risk_code IN ({marks}) '
                    f'ORDER BY "rank"', [_day(run_date).to_pydatetime(), *risks])


def listed_precision(listed: pd.DataFrame, labelled: pd.DataFrame, key: str,
                     top_k: Sequence[int]) -> tuple[int, int, float | None, dict[str, float | None]]:
    """Positives among the listed rows (in rank order): overall and among the first k (None if fewer)."""
    joined = listed.merge(labelled[[key, "label"]], on=key, how="inner").sort_values("rank", kind="stable")
    y = joined["label"].to_numpy(dtype=float)
    at_k = {str(k): (float(y[:k].mean()) if y.size >= k else None) for k in top_k}
    return int(y.size), int(y.sum()), (float(y.mean()) if y.size else None), at_k


def labelled_scores(wh: Warehouse, settings: Settings, run_date: Any, model: str) -> pd.DataFrame:
    """The run's scored rows of one model joined with the labels that have since matured."""
    key = entity_key(model)
    scores = scores_of_day(wh, run_date, model)
    truth = labels(wh, model, run_date, settings)[[key, "label"]]
    scores = scores.drop_duplicates(key)
    joined = scores.merge(truth, on=key, how="inner", validate="1:1")
    return joined.sort_values(key, kind="stable").reset_index(drop=True)  # ties in top-k broken by key


def evaluate_run(wh: Warehouse, settings: Settings, run_date: Any, model: str) -> dict[str, Any]:
    """One ``RealisedPerformance`` row: the run's untreated scores against their matured labels.

    The row's ``labelled`` entry holds the ``LabelledRows`` of the run (treated ones marked), which
    ``performance_table`` leaves out and ``write_performance`` stores.
    """
    key = entity_key(model)
    scored = scores_of_day(wh, run_date, model)
    everyone = labelled_scores(wh, settings, run_date, model)
    treated = treatment_mask(wh, everyone.assign(run_date=_day(run_date)), model, settings, cutoff_column="run_date")
    joined = everyone[~treated].reset_index(drop=True)
    y, p = joined["label"].to_numpy(dtype=float), joined["probability"].to_numpy(dtype=float)
    metrics = classification_metrics(y, p, settings.training.top_k)
    listed, listed_pos, listed_prec, at_k = listed_precision(listed_rows(wh, run_date, model), everyone, key,
                                                             settings.monitoring.top_k)
    label = scored["model_version"].mode().iloc[0]
    expected: dict[str, float] = {}
    try:
        name, version = version_of_label(label)
        expected = version_metrics(configure(settings).get_model_version(name, version).tags)
    except (MlflowException, ValueError):
        pass
    reliability = reliability_table(y, p) if y.size else pd.DataFrame()
    return {
        "run_date": _day(run_date), "model": model, "model_version": label, "scored_rows": len(scored),
        "n": int(y.size), "positives": int(y.sum()), "base_rate": _finite(metrics["base_rate"]),
        **{m: _finite(metrics[m]) for m in ("roc_auc", "pr_auc", "brier", "ece", "log_loss", "precision_at_k")},
        "k": int(metrics["k"]) if _finite(metrics["k"]) is not None else 0,
        "listed": listed, "listed_positives": listed_pos, "listed_precision": listed_prec,
        "listed_precision_at_k": json.dumps(at_k),
        "reliability": reliability.to_json(orient="records"),
        "expected_roc_auc": expected.get("roc_auc"), "expected_pr_auc": expected.get("pr_auc"),
        "label_end": pd.Timestamp(data_end(wh, model)).as_unit("us"), "evaluated_at": _now(),
        "labelled": labelled_table(everyone, treated, run_date, model, label),
    }


def labelled_table(joined: pd.DataFrame, treated: np.ndarray, run_date: Any, model: str, label: str) -> pd.DataFrame:
    frame = pd.DataFrame({
        "run_date": _day(run_date), "model": model, "model_version": label,
        "entity_id": joined[entity_key(model)].astype(str), "customer_id": joined["customer_id"].astype(str),
        "probability": joined["probability"].astype(float), "label": joined["label"].astype("int64"),
        "treated": np.asarray(treated, dtype=bool)}, columns=list(LabelledRows.to_schema().columns))
    return LabelledRows.validate(frame, lazy=True)


def performance_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "labelled"} for r in rows],
                         columns=list(RealisedPerformance.to_schema().columns))
    return RealisedPerformance.validate(frame, lazy=True)


def labelled_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    parts = [r["labelled"] for r in rows if "labelled" in r and len(r["labelled"])]
    return pd.concat(parts, ignore_index=True) if parts else LabelledRows.validate(
        pd.DataFrame(columns=list(LabelledRows.to_schema().columns)))


def write_performance(wh: Warehouse, frame: pd.DataFrame, labelled: pd.DataFrame | None = None) -> None:
    """Each (run date, model) replaced on its own: evaluating a run twice keeps one row (and its labelled rows)."""
    for (day, model), part in frame.groupby(["run_date", "model"], sort=True):
        where = {"run_date": pd.Timestamp(day).to_pydatetime(), "model": model}
        wh.replace_partition(PERFORMANCE_TABLE, part, where=where)
        if labelled is not None:
            rows = labelled[(labelled["run_date"] == pd.Timestamp(day)) & (labelled["model"] == model)]
            wh.replace_partition(LABELLED_TABLE, rows.astype({"run_date": "datetime64[us]"}), where=where)


def pooled_rows(wh: Warehouse, model: str, label: str | None, cfg: MonitoringSettings) -> pd.DataFrame:
    """Untreated labelled rows of the version's latest ``performance_runs`` matured runs."""
    if label is None or not wh.has_table(LABELLED_TABLE):
        return pd.DataFrame(columns=list(LabelledRows.to_schema().columns))
    return wh.query(f"""
        SELECT * FROM "{LABELLED_TABLE}" WHERE model = ? AND model_version = ? AND NOT treated
          AND run_date IN (SELECT DISTINCT run_date FROM "{LABELLED_TABLE}" WHERE model = ? AND model_version = ?
                           ORDER BY run_date DESC LIMIT {int(cfg.performance_runs)})""", [model, label, model, label])


def performance_history(wh: Warehouse) -> pd.DataFrame:
    if not wh.has_table(PERFORMANCE_TABLE):
        return performance_table([])
    return wh.query(f'SELECT * FROM "{PERFORMANCE_TABLE}" ORDER BY model, run_date')


# --------------------------------------------------------------------------------- MLflow logging


def _step(day: pd.Timestamp) -> int:
    """Days since 1970-01-01: MLflow's step axis then reads as calendar time."""
    return int((_day(day) - pd.Timestamp("1970-01-01")).days)


def monitoring_run_id(client: mlflow.MlflowClient, settings: Settings, model: str, label: str) -> str:
    """The one MLflow run per model version that collects its monitoring metrics (created once)."""
    name, version = version_of_label(label)
    experiment_id = ensure_experiment(client, settings, model)
    found = client.search_runs([experiment_id], filter_string=(
        f"tags.{MONITORING_TAG} = 'true' and tags.registered_model = '{name}' and tags.model_version = '{version}'"),
        max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"monitoring {name} v{version}", tags={
        MONITORING_TAG: "true", "registered_model": name, "model_version": version, "aftersales_model": model,
        "mlflow.note.content": f"Realised performance and drift of {name} v{version} by scoring run date "
                               "(step = days since 1970-01-01, timestamp = the run date)."})
    client.set_terminated(run.info.run_id)
    with contextlib.suppress(MlflowException):  # a breadcrumb in the registry UI; the run stands on its own
        client.set_model_version_tag(name, version, "monitoring_run_id", run.info.run_id)
    return run.info.run_id


def log_monitoring_metrics(settings: Settings, model: str, label: str, day: pd.Timestamp,
                           values: Mapping[str, float | None]) -> str:
    """Metrics of one scoring run date against the version that produced its scores."""
    client = configure(settings)
    run_id = monitoring_run_id(client, settings, model, label)
    stamp = int(_day(day).timestamp() * 1000)
    metrics = [Metric(key, float(v), stamp, _step(day)) for key, v in values.items() if _finite(v) is not None]
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    return run_id


def log_performance(settings: Settings, frame: pd.DataFrame) -> None:
    for row in frame.itertuples(index=False):
        values = {f"realised_{m}": getattr(row, m) for m in ("roc_auc", "pr_auc", "brier", "ece", "precision_at_k",
                                                              "base_rate", "listed_precision")}
        values["realised_n"] = row.n
        log_monitoring_metrics(settings, row.model, row.model_version, row.run_date, values)


def log_drift(settings: Settings, results: Mapping[str, ModelDrift], run_date: Any) -> None:
    for r in results.values():
        if r.status == "checked" and r.model_version:
            log_monitoring_metrics(settings, r.model, r.model_version, _day(run_date), {
                "drift_features": len(r.drifted), "drift_score_psi": r.score.psi if r.score else None,
                "drift_max_feature_psi": max((c.psi or 0.0 for c in r.checks if c.kind != "score"), default=None)})


# ====================================================================================== decisions


@dataclass
class Check:
    """One trigger check with its evidence."""

    check: str
    value: float | None
    threshold: float | None
    crossed: bool
    detail: str = ""


def drift_checks(result: ModelDrift | None, cfg: MonitoringSettings) -> list[Check]:
    if result is None or result.status != "checked":
        return [Check("drift", None, None, False, "not checked" if result is None else result.status)]
    score = result.score
    return [
        Check("drifted_features", float(len(result.drifted)), float(cfg.severe_features),
              len(result.drifted) >= cfg.severe_features, ", ".join(result.drifted)),
        Check("score_psi", score.psi if score else None, cfg.score_psi_drift, result.score_drift,
              (score.reason or "") if score else "no scores"),
    ]


def ece_null(p: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """ECE of a perfectly calibrated model at these probabilities: labels drawn from them, same bins."""
    ids = calibration_bins(p)
    bins = [np.flatnonzero(ids == b) for b in np.unique(ids)]
    y = rng.uniform(size=(draws, p.size)) < p
    gaps = [np.abs(y[:, b].mean(axis=1) - p[b].mean()) * b.size for b in bins]
    return np.sum(gaps, axis=0) / p.size


def calibration_check(y: np.ndarray, p: np.ndarray, cfg: MonitoringSettings, rng: np.random.Generator,
                      window: str) -> Check:
    """Pooled ECE against its null at the pooled n: crossed only when unlikely under calibration and material."""
    observed = float(classification_metrics(y, p, 1)["ece"])
    null = ece_null(p, cfg.bootstrap_draws, rng)
    p_value = float((1 + np.sum(null >= observed)) / (1 + null.size))
    limit = float(null.mean() + cfg.ece_excess)
    crossed = p_value < cfg.calibration_alpha and observed > limit
    return Check("calibration", observed, limit, crossed,
                 f"{window}; ECE {observed:.3f} vs {null.mean():.3f} expected of a calibrated model at n={p.size} "
                 f"(p={p_value:.3f}, alpha {cfg.calibration_alpha:g}, material above {limit:.3f})")


def clustered_bootstrap(y: np.ndarray, p: np.ndarray, groups: np.ndarray, metrics: Sequence[str], draws: int,
                        rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each metric over ``draws`` resamples of whole customers (a customer's rows stay together)."""
    codes, index = np.unique(groups, return_inverse=True)
    members = np.split(np.argsort(index, kind="stable"), np.cumsum(np.bincount(index))[:-1])
    out: dict[str, list[float]] = {m: [] for m in metrics}
    for _ in range(draws):
        rows = np.concatenate([members[g] for g in rng.integers(0, codes.size, codes.size)])
        values = classification_metrics(y[rows], p[rows], 1)
        for m in metrics:
            out[m].append(values[m])
    return {m: np.asarray(v, dtype=float) for m, v in out.items()}


def performance_checks(rows: pd.DataFrame, expected: Mapping[str, float | None], cfg: MonitoringSettings,
                       seed: int = 0) -> list[Check]:
    """Pooled untreated rows of the latest matured runs against the version's test-window metrics.

    A drop crosses only when the upper end of the one-sided bootstrap interval (customers resampled)
    is below the limit; calibration crosses only when its ECE is unlikely for a calibrated model at
    this n and materially above what such a model shows. Small samples therefore rarely trigger.
    """
    n = len(rows)
    runs = rows["run_date"].nunique() if n else 0
    if n < cfg.min_labelled_rows:
        return [Check("performance", float(n), float(cfg.min_labelled_rows), False,
                      f"{runs} matured run(s), {n} untreated labelled rows: too few to judge")]
    window = (f"{runs} matured run(s) {pd.Timestamp(rows['run_date'].min()):%Y-%m-%d}.."
              f"{pd.Timestamp(rows['run_date'].max()):%Y-%m-%d}, {n} untreated rows")
    y, p = rows["label"].to_numpy(dtype=float), rows["probability"].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    point = classification_metrics(y, p, 1)
    checks = []
    limits = {"roc_auc": (lambda e: e - cfg.max_roc_auc_drop), "pr_auc": (lambda e: e * (1 - cfg.max_pr_auc_drop))}
    wanted = [m for m in limits if _finite(expected.get(m)) is not None and _finite(point[m]) is not None]
    boot = clustered_bootstrap(y, p, rows["customer_id"].astype(str).to_numpy(), wanted, cfg.bootstrap_draws,
                               rng) if wanted else {}
    for metric in wanted:
        limit = limits[metric](float(expected[metric]))  # type: ignore[arg-type]
        upper = float(np.nanquantile(boot[metric], 1 - cfg.performance_alpha))
        checks.append(Check(metric, float(point[metric]), limit, upper < limit,
                            f"{window}; upper {1 - cfg.performance_alpha:.0%} bound {upper:.3f}; "
                            f"test {metric} {float(expected[metric]):.3f}"))  # type: ignore[arg-type]
    if 0 < y.sum() < n:
        checks.append(calibration_check(y, p, cfg, rng, window))
    return checks


def expected_metrics(history: pd.DataFrame, model: str, label: str | None) -> dict[str, float | None]:
    """The version's test-window metrics as recorded with its matured runs."""
    rows = history[(history["model"] == model) & (history["model_version"] == label)]
    if rows.empty:
        return {}
    last = rows.sort_values("run_date").iloc[-1]
    return {"roc_auc": _finite(last["expected_roc_auc"]), "pr_auc": _finite(last["expected_pr_auc"])}


def last_retrain(wh: Warehouse, model: str) -> pd.Series | None:
    """The latest triggered retrain of a model (its decision row), if any."""
    if not wh.has_table(DECISIONS_TABLE):
        return None
    rows = wh.query(f"SELECT * FROM \"{DECISIONS_TABLE}\" WHERE model = ? AND decision = 'retrain' "
                    "ORDER BY decided_at DESC LIMIT 1", [model])
    return rows.iloc[0] if len(rows) else None


@dataclass
class Decision:
    model: str
    model_version: str | None
    checks: list[Check]
    decision: str  # retrain | none | cooldown | disabled | failed
    reason: str
    trigger: str | None = None
    flow_run_id: str | None = None

    @property
    def crossed(self) -> list[str]:
        return [c.check for c in self.checks if c.crossed]


def decide(model: str, label: str | None, checks: list[Check], previous: pd.Series | None,
           now: pd.Timestamp, cfg: MonitoringSettings) -> Decision:
    """Retrain when a check crossed, unless retraining is off or the model is cooling down."""
    crossed = [c for c in checks if c.crossed]
    if not crossed:
        return Decision(model, label, checks, "none", "no check crossed its threshold")
    evidence = "; ".join(f"{c.check} {_fmt(c.value)} vs {_fmt(c.threshold)}" for c in crossed)
    if cfg.retrain == "off":
        return Decision(model, label, checks, "disabled", f"{evidence}; retraining is off (monitoring.retrain)")
    if previous is not None:
        at = pd.Timestamp(previous["decided_at"])
        until = at + pd.Timedelta(days=cfg.cooldown_days)
        if now < until:
            return Decision(model, label, checks, "cooldown",
                            f"{evidence}; a retrain was triggered at {at:%Y-%m-%d %H:%M} UTC (flow run "
                            f"{previous['flow_run_id']}): cool-down until {until:%Y-%m-%d %H:%M} UTC")
    return Decision(model, label, checks, "retrain", evidence)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def decisions_table(decisions: Sequence[Decision], run_date: Any, now: pd.Timestamp,
                    monitor_flow_run_id: str | None) -> pd.DataFrame:
    rows = [{
        "decided_at": now, "run_date": _day(run_date), "model": d.model, "model_version": d.model_version,
        "checks": json.dumps([vars(c) for c in d.checks]), "crossed": ",".join(d.crossed) or None,
        "decision": d.decision, "reason": d.reason, "trigger": d.trigger, "flow_run_id": d.flow_run_id,
        "monitor_flow_run_id": monitor_flow_run_id,
    } for d in decisions]
    return RetrainDecisions.validate(pd.DataFrame(rows, columns=list(RetrainDecisions.to_schema().columns)),
                                     lazy=True)


# ========================================================================================= report


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_feature_psi(result: ModelDrift, cfg: MonitoringSettings, top_n: int = 15) -> Figure:
    checks = sorted((c for c in result.checks if c.psi is not None), key=lambda c: c.psi or 0.0)[-top_n:]
    fig = Figure(figsize=(7, max(2.5, 0.28 * len(checks) + 1)), layout="constrained")
    ax = fig.subplots()
    colours = {"drift": "tab:red", "warn": "tab:orange", "ok": "tab:blue", "not_judged": "grey"}
    ax.barh([c.feature for c in checks], [c.psi for c in checks], color=[colours[c.status] for c in checks])
    ax.axvline(cfg.psi_drift, color="tab:red", linestyle="--", linewidth=1, label=f"drift {cfg.psi_drift:g}")
    ax.axvline(cfg.psi_warn, color="tab:orange", linestyle=":", linewidth=1, label=f"warn {cfg.psi_warn:g}")
    ax.set(xlabel="PSI vs training reference", title=f"{result.model}: largest PSI (red: drifted)")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_score_distribution(reference: np.ndarray, current: np.ndarray, title: str) -> Figure:
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(0, max(float(np.max(reference, initial=0)), float(np.max(current, initial=0)), 0.05), 31)
    ax.hist(reference, bins=bins, density=True, alpha=0.5, label=f"reference ({reference.size:,})")
    ax.hist(current, bins=bins, density=True, alpha=0.5, label=f"scored ({current.size:,})")
    ax.set(xlabel="probability", ylabel="density", title=title)
    ax.legend(fontsize="small")
    return fig


def plot_performance_trend(history: pd.DataFrame) -> Figure:
    models = sorted(history["model"].unique())
    fig = Figure(figsize=(8, 2.6 * max(1, len(models))), layout="constrained")
    axes = np.atleast_1d(fig.subplots(max(1, len(models)), 1))
    for ax, model in zip(axes, models, strict=False):
        part = history[history["model"] == model].sort_values("run_date")
        for metric in ("roc_auc", "pr_auc", "listed_precision"):
            ax.plot(part["run_date"], part[metric], marker="o", label=metric)
        for metric, style in (("expected_roc_auc", "--"), ("expected_pr_auc", ":")):
            if part[metric].notna().any():
                ax.axhline(float(part[metric].dropna().iloc[-1]), linestyle=style, color="grey", linewidth=1,
                           label=f"test {metric.removeprefix('expected_')}")
        ax.set(ylim=(0, 1), title=f"{model}: realised performance by scoring date")
        ax.legend(fontsize="x-small", ncols=3)
    return fig


def plot_reliability(row: pd.Series) -> Figure:
    table = pd.DataFrame(json.loads(row["reliability"]))
    fig = Figure(figsize=(4.2, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    if len(table):
        ax.plot(table["mean_predicted"], table["observed_rate"], marker="o")
        top = float(table[["mean_predicted", "observed_rate"]].max().max()) * 1.1 + 0.01
        ax.set(xlim=(0, min(1, top)), ylim=(0, min(1, top)))
    ax.set(xlabel="mean predicted", ylabel="observed rate",
           title=f"{row['model']} {pd.Timestamp(row['run_date']):%Y-%m-%d} (ECE {row['ece'] or float('nan'):.3f})")
    return fig


def _html_table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4g}", border=0, classes="t")


def drift_frame(result: ModelDrift) -> pd.DataFrame:
    columns = ["feature", "kind", "status", "psi", "test", "statistic", "p_value", "reference_missing",
               "current_missing", "unseen_share", "unseen_values", "reason"]
    return pd.DataFrame([vars(c) for c in result.checks], columns=[*columns, "reference_rows", "current_rows"])[columns]


def html_report(run_date: Any, results: Mapping[str, ModelDrift], history: pd.DataFrame,
                decisions: Sequence[Decision], settings: Settings,
                references: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> str:
    """A self-contained page (``schemas/defaults/templates/monitoring.html.j2``): drift per model,
    score distributions, performance trend, decisions. Text is escaped by the template; only the
    pandas tables and the base64 plots are passed as ready HTML."""
    from tasks.templates import render

    cfg = settings.monitoring
    day = _day(run_date)
    decisions_html = _html_table(pd.DataFrame([{"model": d.model, "version": d.model_version, "decision": d.decision,
                                                "crossed": ", ".join(d.crossed), "reason": d.reason,
                                                "flow run": d.flow_run_id} for d in decisions]))
    models = []
    for model, result in results.items():
        section: dict[str, Any] = {"title": result.summary(cfg), "images": [], "table": None}
        models.append(section)
        if result.status != "checked" and not result.checks:
            continue
        section["images"].append(_png(plot_feature_psi(result, cfg)))
        if references and model in references:
            ref, cur = references[model]
            section["images"].append(_png(plot_score_distribution(ref, cur, f"{model}: scores vs reference")))
        frame = drift_frame(result)
        rank = frame["status"].map({"drift": 0, "warn": 1, "ok": 2, "not_judged": 3})
        frame = frame.assign(_rank=rank).sort_values(["_rank", "psi"], ascending=[True, False]).drop(columns="_rank")
        section["table"] = _html_table(frame)
    performance: dict[str, Any] = {"images": [], "table": None}
    if not history.empty:
        performance["images"].append(_png(plot_performance_trend(history)))
        for _, row in history.sort_values("run_date").groupby("model").tail(1).iterrows():
            performance["images"].append(_png(plot_reliability(row)))
        shown = ["run_date", "model", "model_version", "n", "positives", "roc_auc", "pr_auc", "brier", "ece",
                 "precision_at_k", "listed", "listed_precision", "listed_precision_at_k", "expected_roc_auc",
                 "expected_pr_auc"]
        performance["table"] = _html_table(history[shown].sort_values(["model", "run_date"]))
    return render("monitoring.html.j2", day=f"{day:%Y-%m-%d}", decisions=decisions_html, models=models,
                  performance=performance)


def markdown_report(run_date: Any, results: Mapping[str, ModelDrift], new_performance: pd.DataFrame,
                    decisions: Sequence[Decision], cfg: MonitoringSettings, html_path: Path | None) -> str:
    day = _day(run_date)
    lines = [f"# Model monitoring {day:%Y-%m-%d}", ""]
    lines.append(markdown_table(pd.DataFrame([
        {"model": r.model, "version": r.model_version or "", "status": r.status,
         "drifted features": ", ".join(r.drifted) or "-", "score PSI": r.score.psi if r.score else None,
         "severe": "**yes**" if r.severe(cfg) else "no"} for r in results.values()]), floatfmt=".3f"))
    lines += ["", "## Realised performance (newly matured runs)", ""]
    if new_performance.empty:
        lines.append("No scoring run matured since the last check.")
    else:
        shown = new_performance.assign(run_date=pd.to_datetime(new_performance["run_date"]).dt.strftime("%Y-%m-%d"))
        shown = shown[list(PERFORMANCE_HEADINGS)].astype({"n": "Int64"} | dict.fromkeys(PERFORMANCE_METRICS, float))
        lines.append(markdown_table(shown.rename(columns=PERFORMANCE_HEADINGS), floatfmt=".3g"))
    lines += ["", "## Retrain decisions", "", markdown_table(pd.DataFrame([
        {"model": d.model, "decision": f"**{d.decision}**", "crossed": ", ".join(d.crossed) or "-",
         "reason": d.reason, "flow run": d.flow_run_id or ""} for d in decisions]))]
    if html_path is not None:
        lines += ["", f"Full report with plots: `{html_path}`"]
    return "\n".join(lines) + "\n"


# ================================================================================== Prefect tasks


def mark_flow_run(flow_run_id: str, tag: str) -> None:
    """Add a tag to a Prefect flow run, so a drifted scoring run stands out in the UI."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        client.update_flow_run(run.id, tags=sorted({*run.tags, tag}))


@task(name="drift-gate", cache_policy=NO_CACHE)
def drift_gate_task(settings: Settings, run_date: Any, scorers: Mapping[str, Any] | None = None,
                    frames: Mapping[str, pd.DataFrame] | None = None) -> GateDecision:
    """Never fails the scoring run: a gate that cannot judge says so and lets the list ship."""
    logger = get_run_logger()
    flow_run_id = str(flow_run.id) if flow_run.id else None
    try:
        decision = run_gate(settings, run_date, scorers, flow_run_id, frames)
    except Exception as exc:  # monitoring must not stop the care team's list
        logger.warning("drift gate unavailable: %s", exc)
        return GateDecision(_day(run_date), False, "unavailable", [], f"{type(exc).__name__}: {exc}"[:300])
    if decision.severe:
        logger.warning("severe drift (%s): %s", decision.action, decision.reason)
        if flow_run_id:
            with contextlib.suppress(Exception):  # a missing tag must not cost the day's list
                mark_flow_run(flow_run_id, f"drift:{decision.action}")
    return decision


@task(name="check-drift", cache_policy=NO_CACHE)
def check_drift_task(settings: Settings, run_date: Any) -> dict[str, ModelDrift]:
    with open_warehouse(settings) as wh:
        results = stored_gate_drift(wh, settings, run_date)
        if results is None:
            results = drift_for_day(wh, settings, run_date)
        else:
            get_run_logger().info("drift of %s: the scoring run's gate statistics (same versions), judged again",
                                  _day(run_date).date())
        checks, runs = drift_tables(results, run_date, settings.monitoring, source="monitor")
        write_drift(wh, checks, runs, run_date)
    log_drift(settings, results, run_date)
    return results


@task(name="realised-performance", cache_policy=NO_CACHE)
def realised_performance_task(settings: Settings, until: Any | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate every newly matured scoring run; returns (new rows, whole history)."""
    with open_warehouse(settings) as wh:
        rows = [evaluate_run(wh, settings, day, model) for day, model in pending_runs(wh, settings, until)]
        new = performance_table(rows)
        if len(new):
            write_performance(wh, new, labelled_frame(rows))
        history = performance_history(wh)
    if len(new):
        log_performance(settings, new)
    return new, history
