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
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, log_loss, precision_recall_curve, roc_auc_score

ECE_BINS = 10
"""Equal-frequency bins for ECE and the reliability curve (``calibration_curve(strategy="quantile")``).

Equal-frequency (not equal-width): risk scores pile up near 0, so equal-width bins leave most bins
nearly empty and the ECE is then decided by a handful of rows. Ten bins of equal support keep the
per-bin rate estimate stable on test windows of a few thousand rows.
"""

LOWER_IS_BETTER = frozenset({"brier", "ece", "log_loss"})
INTERVAL_METRICS = ("roc_auc", "pr_auc", "brier", "ece", "precision_at_k", "lift_at_k")
PAIRED_METRICS = ("roc_auc", "pr_auc")


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


def calibration_bins(p: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each row, exactly as ``sklearn.calibration.calibration_curve(strategy="quantile")`` bins."""
    edges = np.percentile(p, np.linspace(0, 1, n_bins + 1) * 100)
    return np.searchsorted(edges[1:-1], p)


def reliability_table(y: Any, p: Any, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Mean predicted vs observed rate per equal-frequency bin (the data of a reliability curve)."""
    y_arr, p_arr = _as_arrays(y, p)
    if y_arr.size == 0:
        return pd.DataFrame(columns=["bin", "n", "mean_predicted", "observed_rate"])
    observed, predicted = calibration_curve(y_arr, np.clip(p_arr, 0.0, 1.0), n_bins=n_bins, strategy="quantile")
    counts = np.bincount(calibration_bins(np.clip(p_arr, 0.0, 1.0), n_bins), minlength=n_bins)
    counts = counts[counts > 0]
    return pd.DataFrame({"bin": np.arange(counts.size), "n": counts, "mean_predicted": predicted,
                         "observed_rate": observed})


def expected_calibration_error(y: Any, p: Any, n_bins: int = ECE_BINS) -> float:
    """Row-weighted mean |observed rate - mean predicted| over equal-frequency bins."""
    table = reliability_table(y, p, n_bins)
    if table.empty:
        return math.nan
    gap = (table["observed_rate"] - table["mean_predicted"]).abs()
    return float((gap * table["n"]).sum() / table["n"].sum())


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
    probabilities = np.clip(p_arr, 0.0, 1.0)
    return {
        "roc_auc": math.nan if single_class else float(roc_auc_score(y_arr, p_arr)),
        "pr_auc": math.nan if single_class else float(average_precision_score(y_arr, p_arr)),
        "brier": float(np.mean((p_arr - y_arr) ** 2)) if n else math.nan,
        "ece": expected_calibration_error(y_arr, p_arr, n_bins) if n else math.nan,
        "log_loss": float(log_loss(y_arr, probabilities, labels=[0, 1])) if n else math.nan,
        "precision_at_k": precision_k,
        "recall_at_k": recall_k,
        "lift_at_k": precision_k / base_rate if n and base_rate > 0 else math.nan,
        "base_rate": base_rate,
        "n": float(n),
        "k": float(min(top_k, n)),
        "single_class": float(single_class),
    }


# ------------------------------------------------------------------------------------ bootstrap


def bootstrap_weights(n: int, resamples: int, seed: int, clusters: Any = None) -> np.ndarray:
    """(resamples, n) counts of each row in each resample: rows drawn with replacement, or whole
    clusters (e.g. every row of one customer) when ``clusters`` labels the rows."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        draws = rng.integers(0, n, size=(resamples, n))
        offsets = (np.arange(resamples)[:, None] * n + draws).ravel()
        return np.bincount(offsets, minlength=resamples * n).reshape(resamples, n).astype(float)
    codes, uniques = pd.factorize(pd.Series(np.asarray(clusters)), sort=True)
    m = len(uniques)
    draws = rng.integers(0, m, size=(resamples, m))
    offsets = (np.arange(resamples)[:, None] * m + draws).ravel()
    per_cluster = np.bincount(offsets, minlength=resamples * m).reshape(resamples, m).astype(float)
    return per_cluster[:, codes]


def weighted_metrics(y: np.ndarray, p: np.ndarray, weights: np.ndarray, top_k: int,
                     bins: np.ndarray) -> dict[str, np.ndarray]:
    """The interval metrics of each row of ``weights`` (one resample each), all resamples at once.

    Ties are grouped like scikit-learn groups them (ROC-AUC counts a tie as half, average precision
    steps at each distinct score), so all-ones weights reproduce ``roc_auc_score`` and
    ``average_precision_score``; top k follows the stable row order of ``top_k_order``.
    """
    order = np.argsort(-p, kind="stable")
    ys, ps, w = y[order], p[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    pos = np.add.reduceat(w * ys, starts, axis=1)
    neg = np.add.reduceat(w * (1 - ys), starts, axis=1)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    n_pos, n_neg = tp[:, -1], fp[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        roc = (pos * (n_neg[:, None] - fp + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        ap = (pos * (tp / np.maximum(tp + fp, 1e-300))).sum(axis=1) / n_pos
        total = w.sum(axis=1)
        k = np.minimum(float(top_k), total)
        before = np.cumsum(w, axis=1) - w
        taken = np.clip(k[:, None] - before, 0.0, w)
        precision = (taken * ys).sum(axis=1) / k
        lift = precision / (n_pos / total)
        brier = (w * (ps - ys) ** 2).sum(axis=1) / total
        by_bin = np.argsort(bins, kind="stable")
        bin_starts = np.flatnonzero(np.r_[True, np.diff(bins[by_bin]) != 0])
        residual = weights[:, by_bin] * (y[by_bin] - p[by_bin])
        ece = np.abs(np.add.reduceat(residual, bin_starts, axis=1)).sum(axis=1) / total
    single = (n_pos == 0) | (n_neg == 0)
    roc[single], ap[single] = np.nan, np.nan
    return {"roc_auc": roc, "pr_auc": ap, "brier": brier, "ece": ece, "precision_at_k": precision,
            "lift_at_k": lift}


def bootstrap_intervals(
    y: Any,
    scores: Mapping[str, Any],
    top_k: int,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: Any = None,
    pairs: Sequence[tuple[str, str]] = (("model", "baseline_logreg"),),
    n_bins: int = ECE_BINS,
) -> pd.DataFrame:
    """Percentile bootstrap intervals of every scorer's metrics on the same resampled rows.

    One set of resamples serves every scorer, so ``pairs`` (e.g. model vs logistic regression) get a
    *paired* interval of their difference in ROC-AUC and PR-AUC: the noise the two share cancels.
    Rows: ``scorer`` (or ``a-b``), ``metric``, ``value`` (on all rows), ``low``, ``high``, ``resamples``.
    Resamples are processed in chunks so memory stays bounded on large windows.
    """
    y_arr = np.asarray(y, dtype=float).ravel()
    arrays = {name: _as_arrays(y_arr, p)[1] for name, p in scores.items()}
    n = y_arr.size
    alpha = (1 - confidence) / 2
    ones = np.ones((1, n))
    bins = {name: calibration_bins(np.clip(p, 0, 1), n_bins) for name, p in arrays.items()}
    point = {name: {m: float(v[0]) for m, v in weighted_metrics(y_arr, p, ones, top_k, bins[name]).items()}
             for name, p in arrays.items()}
    draws: dict[str, dict[str, list[np.ndarray]]] = {name: {m: [] for m in INTERVAL_METRICS} for name in arrays}
    chunk = max(1, min(resamples, 5_000_000 // max(n, 1)))
    done = 0
    while n and done < resamples:
        size = min(chunk, resamples - done)
        weights = bootstrap_weights(n, size, seed + done, clusters)
        for name, p in arrays.items():
            for metric, values in weighted_metrics(y_arr, p, weights, top_k, bins[name]).items():
                draws[name][metric].append(values)
        done += size
    rows = []

    def interval(values: np.ndarray) -> tuple[float, float]:
        values = values[np.isfinite(values)]
        if values.size < max(10, resamples // 2):
            return math.nan, math.nan
        low, high = np.quantile(values, [alpha, 1 - alpha])
        return float(low), float(high)

    for name in arrays:
        for metric in INTERVAL_METRICS:
            values = np.concatenate(draws[name][metric]) if draws[name][metric] else np.array([])
            rows.append({"scorer": name, "metric": metric, "value": point[name][metric], **dict(
                zip(("low", "high"), interval(values), strict=True)), "resamples": int(values.size)})
    for a, b in pairs:
        if a not in arrays or b not in arrays:
            continue
        for metric in PAIRED_METRICS:
            diff = (np.concatenate(draws[a][metric]) - np.concatenate(draws[b][metric])) if n else np.array([])
            rows.append({"scorer": f"{a}-{b}", "metric": metric, "value": point[a][metric] - point[b][metric],
                         **dict(zip(("low", "high"), interval(diff), strict=True)), "resamples": int(diff.size)})
    return pd.DataFrame(rows, columns=["scorer", "metric", "value", "low", "high", "resamples"])


def interval_metrics(table: pd.DataFrame, prefixes: Mapping[str, str]) -> dict[str, float]:
    """``bootstrap_intervals`` rows as flat MLflow metrics: ``<prefix><metric>_low`` / ``_high``."""
    out: dict[str, float] = {}
    for row in table.itertuples(index=False):
        prefix = prefixes.get(row.scorer, f"{row.scorer.replace('-', '_minus_')}_")
        if row.scorer in prefixes:
            out.update({f"{prefix}{row.metric}_low": row.low, f"{prefix}{row.metric}_high": row.high})
        else:
            out.update({f"{prefix}{row.metric}": row.value, f"{prefix}{row.metric}_low": row.low,
                        f"{prefix}{row.metric}_high": row.high})
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


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
    "bootstrap_intervals",
    "bootstrap_weights",
    "classification_metrics",
    "evaluate_scores",
    "expected_calibration_error",
    "higher_is_better",
    "interval_metrics",
    "plot_calibration",
    "plot_feature_importance",
    "plot_pr_curves",
    "plot_shap_summary",
    "precision_recall_at_k",
    "prefixed",
    "reliability_table",
    "sample_rows",
]
