"""Promotion: champion and challenger scored on the same latest matured window(s), decided by evidence."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from schemas.settings import Settings, get_settings
from tasks.data.warehouse import open_warehouse
from tasks.models.datasets import build_training_set, feature_columns, rolling_cutoffs
from tasks.models.registry import PromotionResult, promote
from tasks.templates import markdown_table


@task(name="latest-test-window", cache_policy=NO_CACHE)
def latest_window(model: str, settings: Settings):
    """The newest ``promotion_windows`` cutoffs whose labels have matured, with each row's customer.

    Pooling several cutoffs gives the comparison more rows; the bootstrap resamples customers, so a
    customer seen at two cutoffs is not counted as two independent cases.
    """
    with open_warehouse(settings) as wh:
        cutoffs = rolling_cutoffs(wh, settings, model)
        if not cutoffs:
            return None
        chosen = cutoffs[-max(1, settings.training.promotion_windows):]
        frame = build_training_set(wh, model, chosen, settings)
    window = f"{chosen[0]:%Y-%m-%d}..{chosen[-1]:%Y-%m-%d} ({len(chosen)} cutoffs)"
    return frame[feature_columns(model)], frame["label"], frame["customer_id"], window


def promotion_markdown(model: str, result: PromotionResult, confidence: float) -> str:
    """The decision, champion and challenger side by side (version, metric, ECE), and the evidence in words."""
    level = f"{confidence:.0%}"

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.4f}"

    def shown(value: Any) -> str:
        return "n/a" if value is None or value != value else str(value)  # None or NaN: nothing to show

    table = pd.DataFrame(
        [[role, shown(version), shown(score), shown(metrics.get("ece"))]
         for role, version, score, metrics in (
             ("champion", result.champion_version, result.champion_score, result.champion_metrics),
             ("challenger", result.challenger_version, result.challenger_score, result.challenger_metrics))],
        columns=["", "version", result.metric, "ECE"])
    return (f"# Promotion of {model}\n\n**{result.decision}**: {result.message}\n\n"
            f"{markdown_table(table, right=(result.metric, 'ECE'))}\n"
            f"Window: {result.window or 'n/a'}, {result.rows} rows, {result.clusters} customers (resampled whole).\n\n"
            f"Improvement in {result.metric}: {fmt(result.improvement)}, {level} paired bootstrap interval "
            f"{fmt(result.interval_low)} to {fmt(result.interval_high)} (must clear {result.margin}). "
            f"Challenger ECE - champion ECE: {fmt(result.calibration_low)} to {fmt(result.calibration_high)}.\n")


@flow(name="promote")
def promote_flow(model: str, force: bool = False) -> dict[str, Any]:
    """Move ``champion`` to the challenger only if the evidence says it is better and no worse calibrated."""
    logger = get_run_logger()
    settings = get_settings()
    window = latest_window(model, settings)
    if window is None:
        message = f"{model}: no matured window to compare on yet"
        logger.warning(message)
        return {"model": model, "decision": "not_comparable", "promoted": False, "message": message}
    X, y, customers, span = window
    result = promote(model, settings, X, y, force=force, reason=f"same-window comparison on {span}",
                     groups=pd.Series(customers).astype(str), window=span)
    logger.info(result.message)
    create_markdown_artifact(promotion_markdown(model, result, settings.training.promotion_confidence),
                             key=f"promotion-{model.replace('_', '-')}", description=result.decision)
    return asdict(result) | {"window": span}
