"""Retraining: rolling-origin backtest → refit on every matured label → MLflow registry (challenger).

``train_flow`` is what schedulers trigger (``cutoff``: train *as of* that date, nothing whose label
closes after it is used); ``retrain_flow`` trains and then promotes each model only through the
same-window comparison of ``promote_flow``. A model without enough signal is not registered.
"""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows.promote import promote_flow
from flows.runtime import run_flow_state, task_runner
from schemas.derived import MODEL_ENTITY
from schemas.settings import Settings, get_settings
from tasks.data.warehouse import open_warehouse
from tasks.models.backtest import (
    AsOfFit,
    ExistingVersion,
    describe_laps,
    fit_as_of,
    prebuild_order_frames,
    settings_as_of,
)
from tasks.models.datasets import FrameCache, NotEnoughData
from tasks.models.features import CATALOGUE_PATH
from tasks.models.registry import (
    RegisteredVersion,
    configure,
    identical_version,
    log_refused_run,
    log_training_run,
)
from tasks.models.training import DataSplits
from tasks.templates import markdown_table

SCORERS = {"model": "XGBoost (calibrated)", "baseline_logreg": "logistic regression",
           "baseline_rule": "one-line rule"}
# the summary's metric columns: metric key -> heading (ROC-AUC also shows its interval)
METRICS_SHOWN = {"roc_auc": "ROC-AUC (95 % interval)", "pr_auc": "PR-AUC", "brier": "Brier", "ece": "ECE",
                 "precision_at_k": "precision@k", "lift_at_k": "lift@k"}

__all__ = ["NotEnoughData", "retrain_flow", "train_flow"]


def settings_for_run(settings: Settings, cutoff: date | None = None, **label_windows: int | None) -> Settings:
    """The run's settings: the configured ones, trained as of ``cutoff``, with this run's label windows."""
    data = settings_as_of(settings, cutoff if cutoff is not None else settings.split.as_of).model_dump()
    data["labels"].update({k: v for k, v in label_windows.items() if v is not None})
    return Settings(**data)


def fit_model(model: str, settings: Settings, cache: FrameCache | None = None,
              existing: ExistingVersion | None = None) -> AsOfFit:
    """One model as of the run's date: plan, frame, rolling origins, guard, refit (``fit_as_of``)."""
    with open_warehouse(settings, read_only=True) as wh:  # Dask workers in other processes read too
        return fit_as_of(wh, model, settings, cache, existing)


@task(name="build-order-training-frames", cache_policy=NO_CACHE)
def order_training_frames(models: list[str], settings: Settings) -> FrameCache:
    """The order models' training frames built together: one feature pass per cutoff they share
    (most of a frame is reading the history, the same for both)."""
    cache: FrameCache = {}
    with open_warehouse(settings, read_only=True) as wh:
        prebuild_order_frames(wh, models, settings, cache)
    return cache


def log_reference_sample(registered: RegisteredVersion, splits: DataSplits, settings: Settings) -> None:
    """Keep a sample of the model's newest matured windows beside it: the drift monitor's reference.

    The rolling origins' evaluated windows (the newest of them is the test window): rows of the
    same populations, drawn at the same moments as a scoring day's, and close to the run date; a
    year of training history would make an ordinary season look like drift.
    """
    if not registered.is_new or registered.run_id is None:
        return
    recent = splits.X_valid
    sample = recent.sample(min(len(recent), settings.training.reference_sample_rows),
                           random_state=settings.training.seed)
    configure(settings)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "reference_sample.parquet"
        sample.to_parquet(path)
        mlflow.MlflowClient().log_artifact(registered.run_id, str(path), artifact_path="reference")


@task(name="train-and-register", cache_policy=NO_CACHE)
def train_and_register(model: str, settings: Settings, cache: FrameCache | None = None) -> dict[str, Any]:
    """One model end to end; a model without enough data or signal is skipped with the reason.

    ``cache``: training frames already built (``order_training_frames``)."""
    try:
        fit = fit_model(model, settings, cache,
                        existing=lambda splits, rule: identical_version(model, settings, splits, rule))
    except NotEnoughData as exc:
        return {"model": model, "skipped": str(exc)}
    if fit.existing is not None:
        return _unchanged_result(fit, fit.existing)
    if not fit.registrable:
        log_refused_run(model, settings, fit.refusal or "not registered", fit.counts, fit.notes)
        return {"model": model, "skipped": fit.refusal, "counts": fit.counts}
    assert fit.trained is not None and fit.splits is not None
    registered = log_training_run(model, settings, fit.trained, fit.baselines, fit.splits, fit.rule,
                                  feature_catalogue=CATALOGUE_PATH)
    log_reference_sample(registered, fit.splits, settings)
    splits = fit.splits
    return {"model": model, "version": registered.version, "new_version": registered.is_new,
            "aliases": registered.aliases, "metrics": _metrics_of(fit, settings),
            "rows": {"train": len(splits.X_train), "validation": len(splits.X_valid), "test": len(splits.X_test)},
            "test_window": _window(splits.t_test), "as_of": fit.trained.extra_params.get("as_of"),
            "chosen": fit.tuning.describe() if fit.tuning else None, "notes": fit.notes,
            "seconds": round(fit.seconds, 1), "step_seconds": fit.timings}


def _unchanged_result(fit: AsOfFit, existing: RegisteredVersion) -> dict[str, Any]:
    """The result of a fit skipped because a version was trained on exactly these rows: its metrics."""
    assert fit.splits is not None
    splits = fit.splits
    said = (f"identical to version {existing.version} (the same rows, code and configuration): not fitted "
            f"again; its registered test metrics are shown")
    return {"model": fit.model, "version": existing.version, "new_version": False, "aliases": existing.aliases,
            "metrics": existing.metrics,
            "rows": {"train": len(splits.X_train), "validation": len(splits.X_valid), "test": len(splits.X_test)},
            "test_window": _window(splits.t_test), "as_of": f"{fit.plan.as_of:%Y-%m-%d %H:%M}", "chosen": None,
            "notes": [said, *existing.notes], "seconds": round(fit.seconds, 1), "step_seconds": fit.timings}


def _window(t: pd.Series | None) -> str | None:
    if t is None or t.empty:
        return None
    first, last = pd.Timestamp(t.min()).date(), pd.Timestamp(t.max()).date()
    return str(last) if first == last else f"{first}..{last}"


def _metrics_of(fit: AsOfFit, settings: Settings) -> dict[str, float]:
    """Test metrics of the fit (what the registry logs; also for a rerun that registered nothing new)."""
    from tasks.models.evaluation import classification_metrics, prefixed
    from tasks.models.registry import SCORER_PREFIX

    assert fit.splits is not None and fit.splits.test_scores is not None
    out: dict[str, float] = {}
    for scorer, scores in fit.splits.test_scores.items():
        out.update(prefixed(classification_metrics(fit.splits.y_test, scores, settings.training.top_k),
                            SCORER_PREFIX[scorer]))
    return out | (fit.trained.extra_metrics if fit.trained else {})


def training_summary(results: list[dict[str, Any]]) -> str:
    """Markdown: per model, the honest test (newest origin) of the model next to its baselines."""
    lines = ["# Training run", ""]
    for result in results:
        if "skipped" in result:
            lines += [f"## {result['model']}: not registered", "", result["skipped"], ""]
            continue
        state = "new version" if result["new_version"] else "identical to an existing version (not re-registered)"
        metrics = result["metrics"]
        lines += [f"## {result['model']}: version {result['version']} ({state}; aliases: "
                  f"{', '.join(result['aliases']) or 'none'})", "",
                  f"As of {result['as_of']}: refitted on {result['rows']['train']:,} rows; calibrated on "
                  f"{result['rows']['validation']:,} out-of-fold rows; tested on {result['rows']['test']:,} rows "
                  f"(window {result['test_window']}) by a model trained before that window.", ""]
        if result.get("chosen"):
            lines += [f"Chosen on the older origins: {result['chosen']}.", ""]
        rows = []
        for prefix, label in SCORERS.items():
            key = "test_" if prefix == "model" else f"{prefix}_test_"
            values = [metrics.get(f"{key}{m}") for m in METRICS_SHOWN]
            if all(v is None for v in values):
                continue
            low, high = metrics.get(f"{key}roc_auc_low"), metrics.get(f"{key}roc_auc_high")
            cells = ["" if v is None else f"{v:.3f}" for v in values]
            if low is not None and high is not None:
                cells[0] += f" ({low:.3f}–{high:.3f})"
            rows.append([label, *cells])
        headings = list(METRICS_SHOWN.values())
        lines.append(markdown_table(pd.DataFrame(rows, columns=["scorer", *headings], dtype=object),
                                    right=headings).rstrip("\n"))
        diff = metrics.get("test_model_minus_logreg_roc_auc")
        if diff is not None:
            lines += ["", f"Model minus logistic regression, paired on the same rows: ROC-AUC {diff:+.3f} "
                      f"({metrics.get('test_model_minus_logreg_roc_auc_low', float('nan')):+.3f} to "
                      f"{metrics.get('test_model_minus_logreg_roc_auc_high', float('nan')):+.3f}), PR-AUC "
                      f"{metrics.get('test_model_minus_logreg_pr_auc', float('nan')):+.3f}."]
        lines += ["", *[f"- {note}" for note in result.get("notes", [])], ""]
    return "\n".join(lines)


@flow(name="train")
def train_flow(models: list[str] | None = None, cutoff: date | None = None,
               return_window_days: int | None = None, review_window_days: int | None = None,
               churn_horizon_days: int | None = None) -> dict[str, Any] | Failed:
    """Train every requested risk model as of ``cutoff`` (default: the latest data), register challengers.

    A model refused by the minimum-signal guard is reported and not registered; the flow fails only
    when no model at all could be trained.
    """
    logger = get_run_logger()
    settings = settings_for_run(get_settings(), cutoff, return_window_days=return_window_days,
                                review_window_days=review_window_days, churn_horizon_days=churn_horizon_days)
    models = models or list(settings.training.models)
    unknown = sorted(set(models) - set(settings.training.baseline_rules))
    if unknown:
        return Failed(message=f"unknown model(s) {unknown}; known: {sorted(settings.training.baseline_rules)}")
    together = [m for m in models if MODEL_ENTITY[m] == "order"] if settings.prefect.task_runner != "dask" else []
    futures = {m: train_and_register.submit(m, settings) for m in models if m not in together or len(together) < 2}
    if len(together) > 1:  # while the others fit, the order models' frames are built in one pass a cutoff
        built = order_training_frames(together, settings, return_state=True)
        cache = {} if built.is_failed() else built.result()  # failed: each fit builds (and fails) on its own
        futures |= {m: train_and_register.submit(m, settings, cache) for m in together}
    results = [futures[model].result() for model in models]
    summary = training_summary(results)
    create_markdown_artifact(summary, key="training-summary", description="model vs baselines on the test window")
    for result in results:
        if "skipped" in result:
            logger.warning("%s skipped: %s", result["model"], result["skipped"].removeprefix(f"{result['model']}: "))
        else:
            logger.info("%s: version %s %s", result["model"], result["version"], result["aliases"])
            logger.info("%s fitted in %.1f s: %s", result["model"], result["seconds"],
                        describe_laps(result["step_seconds"]))
    if all("skipped" in r for r in results):
        return Failed(message="no model could be trained: " + "; ".join(r["skipped"] for r in results))
    return {"models": results, "summary": summary}


@flow(name="retrain")
def retrain_flow(models: list[str] | None = None, promote: bool = True) -> dict[str, Any] | Failed:
    """The weekly retrain: new challengers, each promoted only if it beats its champion."""
    runner = task_runner(get_settings())  # a subflow keeps its own runner unless given this one
    trained = run_flow_state(train_flow.with_options(task_runner=runner), models=models)
    if trained.is_failed():
        return Failed(message=trained.message)
    results = trained.result()
    decisions = []
    if promote:
        for result in results["models"]:
            if "skipped" not in result:
                decisions.append(promote_flow(result["model"]))
    return {"training": results["models"], "promotions": decisions}
