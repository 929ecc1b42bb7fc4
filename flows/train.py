"""Retraining: point-in-time training sets → XGBoost + baselines → MLflow registry (challenger).

``train_flow`` is what schedulers trigger; ``retrain_flow`` trains and then promotes each model
only through the same-window comparison of ``promote_flow``.
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
from flows.runtime import task_runner
from schemas.settings import Settings, get_settings
from tasks.data.warehouse import open_warehouse
from tasks.models.datasets import build_training_set, feature_columns, rolling_cutoffs, time_split
from tasks.models.features import CATALOGUE_PATH
from tasks.models.registry import RegisteredVersion, configure, log_training_run
from tasks.models.training import DataSplits, RuleSpec, train_baselines, train_model

SCORERS = {"model": "XGBoost (calibrated)", "baseline_logreg": "logistic regression",
           "baseline_rule": "one-line rule"}


class NotEnoughData(RuntimeError):
    """The warehouse cannot yet give a model train, validation and test windows."""


def settings_for_run(settings: Settings, cutoff: date | None = None, **label_windows: int | None) -> Settings:
    """The run's settings: the configured ones with this run's cutoff and label windows."""
    data = settings.model_dump()
    if cutoff is not None:
        data["split"]["latest_cutoff"] = str(cutoff)
    data["labels"].update({k: v for k, v in label_windows.items() if v is not None})
    return Settings(**data)


def training_splits(model: str, settings: Settings) -> DataSplits:
    """Rolling cutoffs → one training frame → train/valid/test by time with a gap."""
    with open_warehouse(settings, read_only=True) as wh:  # Dask workers in other processes read too
        cutoffs = rolling_cutoffs(wh, settings, model)
        if len(cutoffs) < 3:
            raise NotEnoughData(f"{model}: only {len(cutoffs)} usable cutoffs (need 3: train, validation, test); "
                                "the history is too short for the label windows")
        frame = build_training_set(wh, model, cutoffs, settings)
    try:
        train, valid, test = time_split(frame, settings, model)
    except ValueError as exc:
        raise NotEnoughData(f"{model}: {exc}") from exc
    for name, part in {"train": train, "validation": valid, "test": test}.items():
        if part["label"].nunique() < 2:
            raise NotEnoughData(f"{model}: the {name} window has a single class ({len(part)} rows)")
    return DataSplits.from_frames(train, valid, test, feature_columns(model))


def log_reference_sample(registered: RegisteredVersion, splits: DataSplits, settings: Settings) -> None:
    """Keep a sample of the model's most recent data beside it: the drift monitor's reference.

    The validation and test windows, not the whole training history: a year of history would make
    an ordinary season look like drift, and these windows are what the model was judged on.
    """
    if not registered.is_new or registered.run_id is None:
        return
    recent = pd.concat([splits.X_valid, splits.X_test], ignore_index=True)
    sample = recent.sample(min(len(recent), settings.training.reference_sample_rows),
                           random_state=settings.training.seed)
    configure(settings)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "reference_sample.parquet"
        sample.to_parquet(path)
        mlflow.MlflowClient().log_artifact(registered.run_id, str(path), artifact_path="reference")


@task(name="train-and-register", cache_policy=NO_CACHE)
def train_and_register(model: str, settings: Settings) -> dict[str, Any]:
    """One model end to end; a model without enough data is skipped with the reason."""
    try:
        splits = training_splits(model, settings)
    except NotEnoughData as exc:
        return {"model": model, "skipped": str(exc)}
    rule = RuleSpec(settings.training.baseline_rules[model])
    fit = train_model
    if settings.dask.data_parallel:  # the booster fitted with xgboost.dask (tasks/models/distributed.py)
        from tasks.models.distributed import train_model_on_dask as fit
    trained = fit(splits.X_train, splits.y_train, splits.X_valid, splits.y_valid, settings,
                valid_time=splits.t_valid)
    baselines = train_baselines(splits.X_train, splits.y_train, settings, rule)
    registered = log_training_run(model, settings, trained, baselines, splits, rule,
                                  feature_catalogue=CATALOGUE_PATH)
    log_reference_sample(registered, splits, settings)
    return {"model": model, "version": registered.version, "new_version": registered.is_new,
            "aliases": registered.aliases, "metrics": registered.metrics,
            "rows": {"train": len(splits.X_train), "validation": len(splits.X_valid), "test": len(splits.X_test)},
            "test_window": str(pd.Timestamp(splits.t_test.iloc[0]).date()) if splits.t_test is not None else None}


def training_summary(results: list[dict[str, Any]]) -> str:
    """Markdown: per model, the test-window metrics of the model next to its baselines."""
    lines = ["# Training run", ""]
    for result in results:
        if "skipped" in result:
            lines += [f"## {result['model']}: skipped", "", result["skipped"], ""]
            continue
        state = "new version" if result["new_version"] else "identical to an existing version (not re-registered)"
        lines += [f"## {result['model']}: version {result['version']} ({state}; aliases: "
                  f"{', '.join(result['aliases']) or 'none'})", "",
                  f"Rows: {result['rows']['train']:,} train, {result['rows']['validation']:,} validation, "
                  f"{result['rows']['test']:,} test (window {result['test_window']}).", "",
                  "| scorer | ROC-AUC | PR-AUC | Brier | ECE | precision@k | lift@k |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        metrics = result["metrics"]
        for prefix, label in SCORERS.items():
            key = "test_" if prefix == "model" else f"{prefix}_test_"
            values = [metrics.get(f"{key}{m}") for m in ("roc_auc", "pr_auc", "brier", "ece",
                                                          "precision_at_k", "lift_at_k")]
            if all(v is None for v in values):
                continue
            lines.append(f"| {label} | " + " | ".join("" if v is None else f"{v:.3f}" for v in values) + " |")
        lines.append("")
    return "\n".join(lines)


@flow(name="train")
def train_flow(models: list[str] | None = None, cutoff: date | None = None,
               return_window_days: int | None = None, review_window_days: int | None = None,
               churn_horizon_days: int | None = None) -> dict[str, Any] | Failed:
    """Train every requested risk model as of the latest matured cutoff and register challengers."""
    logger = get_run_logger()
    settings = settings_for_run(get_settings(), cutoff, return_window_days=return_window_days,
                                review_window_days=review_window_days, churn_horizon_days=churn_horizon_days)
    models = models or list(settings.training.models)
    unknown = sorted(set(models) - set(settings.training.baseline_rules))
    if unknown:
        return Failed(message=f"unknown model(s) {unknown}; known: {sorted(settings.training.baseline_rules)}")
    futures = [train_and_register.submit(model, settings) for model in models]
    results = [future.result() for future in futures]
    summary = training_summary(results)
    create_markdown_artifact(summary, key="training-summary", description="model vs baselines on the test window")
    for result in results:
        if "skipped" in result:
            logger.warning("%s skipped: %s", result["model"], result["skipped"])
        else:
            logger.info("%s: version %s %s", result["model"], result["version"], result["aliases"])
    if all("skipped" in r for r in results):
        return Failed(message="no model could be trained: " + "; ".join(r["skipped"] for r in results))
    return {"models": results, "summary": summary}


@flow(name="retrain")
def retrain_flow(models: list[str] | None = None, promote: bool = True) -> dict[str, Any] | Failed:
    """The weekly retrain: new challengers, each promoted only if it beats its champion."""
    runner = task_runner(get_settings())  # a subflow keeps its own runner unless given this one
    trained = train_flow.with_options(task_runner=runner)(models=models, return_state=True)
    if trained.is_failed():
        return Failed(message=trained.message)
    results = trained.result()
    decisions = []
    if promote:
        for result in results["models"]:
            if "skipped" not in result:
                decisions.append(promote_flow(result["model"]))
    return {"training": results["models"], "promotions": decisions}
