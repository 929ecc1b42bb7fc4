"""Metrics and plots for a binary risk score, shared by training, baselines and promotion.

Everything here is a pure function of labels and scores, so the model, the baselines and the
champion/challenger comparison are judged by one implementation on the same window.

Plots are built on ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot): nothing global
is touched, figures are garbage-collected, and this works in worker threads without a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

ECE_BINS = 10
"""Equal-frequency bins for ECE and the reliability curve.

Equal-frequency (not equal-width): risk scores pile up near 0, so equal-width bins leave most bins
nearly empty and the ECE is then decided by a handful of rows. Ten bins of equal support keep the
per-bin rate estimate stable on test windows of a few thousand rows.
"""

LOWER_IS_BETTER = frozenset({"brier", "ece", "log_loss"})
_EPS = 1e-15


def higher_is_better(metric: str) -> bool:
    """Direction of a metric name (with or without a ``test_`` style prefix)."""
    return not any(metric == m or metric.endswith("_" + m) for m in LOWER_IS_BETTER)


def _as_arrays(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype=float).ravel()
    p_arr = np.asarray(p, dtype=float).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"labels and scores differ in length: {y_arr.size} vs {p_arr.size}")
    if np.isnan(p_arr).any():
        raise ValueError("scores contain NaN; impute or drop those rows before evaluating")
    return y_arr, p_arr


def top_k_order(p: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores; ties broken by row order (stable), as a work list would."""
    k = max(0, min(int(k), p.size))
    return np.argsort(-p, kind="stable")[:k]


def precision_recall_at_k(y: Any, p: Any, k: int) -> tuple[float, float]:
    """Share of positives among the k highest scores, and share of all positives they catch."""
    y_arr, p_arr = _as_arrays(y, p)
    top = top_k_order(p_arr, k)
    if top.size == 0:
        return math.nan, math.nan
    hits = float(y_arr[top].sum())
    positives = float(y_arr.sum())
    return hits / top.size, (hits / positives if positives > 0 else math.nan)


def equal_frequency_bins(p: np.ndarray, n_bins: int = ECE_BINS) -> list[np.ndarray]:
    """Row indices per bin after sorting by score; bins differ in size by at most one row."""
    order = np.argsort(p, kind="stable")
    return [b for b in np.array_split(order, min(n_bins, max(p.size, 1))) if b.size]


def reliability_table(y: Any, p: Any, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Mean predicted vs observed rate per equal-frequency bin (the data of a reliability curve)."""
    y_arr, p_arr = _as_arrays(y, p)
    rows = [
        {"bin": i, "n": b.size, "mean_predicted": p_arr[b].mean(), "observed_rate": y_arr[b].mean()}
        for i, b in enumerate(equal_frequency_bins(p_arr, n_bins))
    ]
    return pd.DataFrame(rows, columns=["bin", "n", "mean_predicted", "observed_rate"])


def expected_calibration_error(y: Any, p: Any, n_bins: int = ECE_BINS) -> float:
    """Row-weighted mean |observed rate - mean predicted| over equal-frequency bins."""
    table = reliability_table(y, p, n_bins)
    if table.empty:
        return math.nan
    gap = (table["observed_rate"] - table["mean_predicted"]).abs()
    return float((gap * table["n"]).sum() / table["n"].sum())


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def classification_metrics(y: Any, p: Any, top_k: int, n_bins: int = ECE_BINS) -> dict[str, float]:
    """All metrics we log and compare, as plain floats (MLflow-ready).

    A window holding a single class (or no rows) cannot rank: roc_auc and pr_auc are NaN and
    ``single_class`` is 1.0, so callers can refuse to compare instead of crashing.
    """
    y_arr, p_arr = _as_arrays(y, p)
    n = y_arr.size
    positives = float(y_arr.sum()) if n else 0.0
    base_rate = positives / n if n else math.nan
    single_class = n == 0 or positives in (0.0, float(n))
    precision_k, recall_k = precision_recall_at_k(y_arr, p_arr, top_k) if n else (math.nan, math.nan)
    return {
        "roc_auc": math.nan if single_class else float(roc_auc_score(y_arr, p_arr)),
        "pr_auc": math.nan if single_class else float(average_precision_score(y_arr, p_arr)),
        "brier": float(np.mean((p_arr - y_arr) ** 2)) if n else math.nan,
        "ece": expected_calibration_error(y_arr, p_arr, n_bins) if n else math.nan,
        "log_loss": _log_loss(y_arr, p_arr) if n else math.nan,
        "precision_at_k": precision_k,
        "recall_at_k": recall_k,
        "lift_at_k": precision_k / base_rate if n and base_rate > 0 else math.nan,
        "base_rate": base_rate,
        "n": float(n),
        "k": float(min(top_k, n)),
        "single_class": float(single_class),
    }


def evaluate_scores(
    y: Any, scores: Mapping[str, Any], top_k: int, n_bins: int = ECE_BINS
) -> dict[str, dict[str, float]]:
    """The same metrics for several scorers (model, baselines, champion...) on one window."""
    return {name: classification_metrics(y, p, top_k, n_bins) for name, p in scores.items()}


def prefixed(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """``{"roc_auc": .8}`` -> ``{"test_roc_auc": .8}``; keeps MLflow metric names in one place."""
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------------------- plots


def _figure(width: float = 6.4, height: float = 4.8, ncols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def plot_calibration(
    y: Any, probabilities: Mapping[str, Any], n_bins: int = ECE_BINS, title: str = "Reliability"
) -> Figure:
    """Reliability curves (observed rate vs mean predicted, equal-frequency bins) for each scorer."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    top = 0.0
    for name, p in probabilities.items():
        table = reliability_table(y, p, n_bins)
        ece = expected_calibration_error(y, p, n_bins)
        ax.plot(table["mean_predicted"], table["observed_rate"], marker="o", label=f"{name} (ECE {ece:.3f})")
        top = max(top, float(table[["mean_predicted", "observed_rate"]].max().max()))
    lim = min(1.0, top * 1.1 + 0.01)
    ax.set(xlim=(0, lim), ylim=(0, lim), xlabel="mean predicted probability", ylabel="observed rate")
    ax.set_title(f"{title} ({n_bins} equal-frequency bins)")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def plot_pr_curves(y: Any, scores: Mapping[str, Any], title: str = "Precision-recall") -> Figure:
    """Model and baselines on one PR plot, with the base rate as the no-skill line."""
    y_arr = np.asarray(y, dtype=float).ravel()
    fig, ax = _figure()
    if np.unique(y_arr).size < 2:
        ax.text(0.5, 0.5, "single-class window: no PR curve", ha="center", va="center")
        return fig
    for name, p in scores.items():
        precision, recall, _ = precision_recall_curve(y_arr, np.asarray(p, dtype=float))
        ap = average_precision_score(y_arr, np.asarray(p, dtype=float))
        ax.step(recall, precision, where="post", label=f"{name} (AP {ap:.3f})")
    base = y_arr.mean()
    ax.axhline(base, linestyle="--", color="grey", linewidth=1, label=f"base rate {base:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.legend(loc="upper right", fontsize="small")
    return fig


def plot_feature_importance(importance: Mapping[str, float], top_n: int = 25, title: str = "") -> Figure:
    """Horizontal bar chart of the largest importances (XGBoost total gain)."""
    series = pd.Series(dict(importance), dtype=float).sort_values(ascending=False).head(top_n)[::-1]
    fig, ax = _figure(height=max(3.0, 0.28 * len(series) + 1))
    ax.barh(series.index.astype(str), series.to_numpy())
    ax.set(xlabel="total gain", title=title or f"Feature importance (gain, top {len(series)})")
    return fig


def _colour_values(column: pd.Series) -> np.ndarray:
    """Feature value mapped to [0, 1] by rank (categories by code), for the beeswarm colour."""
    values = column.cat.codes.where(column.notna()) if isinstance(column.dtype, pd.CategoricalDtype) else column
    numeric = pd.to_numeric(values, errors="coerce")
    ranks = numeric.rank(pct=True)
    return ranks.fillna(0.5).to_numpy(dtype=float)


def plot_shap_summary(
    contributions: pd.DataFrame | np.ndarray,
    X: pd.DataFrame,
    top_n: int = 20,
    seed: int = 0,
    title: str = "SHAP summary",
) -> Figure:
    """Mean |contribution| bars and a beeswarm-like scatter (colour = feature value rank).

    ``contributions`` are XGBoost ``pred_contribs`` for the rows of ``X`` (log-odds); a trailing
    ``bias`` column, if present, is ignored.
    """
    if isinstance(contributions, pd.DataFrame):
        contrib = contributions
    else:
        contrib = pd.DataFrame(np.asarray(contributions)[:, : X.shape[1]], columns=X.columns)
    contrib = contrib[[c for c in X.columns if c in contrib.columns]]
    mean_abs = contrib.abs().mean().sort_values(ascending=False).head(top_n)
    features = list(mean_abs.index[::-1])
    fig, (bar_ax, bee_ax) = _figure(width=12, height=max(3.5, 0.3 * len(features) + 1.2), ncols=2)
    bar_ax.barh(features, mean_abs[features].to_numpy())
    bar_ax.set(xlabel="mean |contribution| (log-odds)", title=f"{title}: importance")
    rng = np.random.default_rng(seed)
    scatter = None
    for row, feature in enumerate(features):
        x = contrib[feature].to_numpy(dtype=float)
        jitter = rng.uniform(-0.3, 0.3, size=x.size)
        scatter = bee_ax.scatter(
            x, row + jitter, c=_colour_values(X[feature]), cmap="coolwarm", s=4, alpha=0.6, vmin=0, vmax=1
        )
    bee_ax.axvline(0, color="grey", linewidth=0.8)
    bee_ax.set_yticks(range(len(features)), features)
    bee_ax.set(xlabel="contribution to log-odds", title=f"{title}: per row")
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=bee_ax, ticks=[0, 1])
        bar.ax.set_yticklabels(["low", "high"])
        bar.set_label("feature value (rank)")
    return fig


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample (for SHAP plots on a bounded number of rows)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


__all__: Sequence[str] = [
    "ECE_BINS",
    "LOWER_IS_BETTER",
    "classification_metrics",
    "evaluate_scores",
    "expected_calibration_error",
    "higher_is_better",
    "plot_calibration",
    "plot_feature_importance",
    "plot_pr_curves",
    "plot_shap_summary",
    "precision_recall_at_k",
    "prefixed",
    "reliability_table",
    "sample_rows",
]
