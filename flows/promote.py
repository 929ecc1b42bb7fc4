"""Promotion: champion and challenger scored on the same, latest matured window."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from schemas.settings import Settings, get_settings
from tasks.data.warehouse import open_warehouse
from tasks.models.datasets import build_training_set, feature_columns, rolling_cutoffs
from tasks.models.registry import promote


@task(name="latest-test-window", cache_policy=NO_CACHE)
def latest_window(model: str, settings: Settings):
    """The newest cutoff whose labels have matured: unseen by any model trained before it."""
    with open_warehouse(settings) as wh:
        cutoffs = rolling_cutoffs(wh, settings, model)
        if not cutoffs:
            return None
        frame = build_training_set(wh, model, [cutoffs[-1]], settings)
    return frame[feature_columns(model)], frame["label"], cutoffs[-1]


@flow(name="promote")
def promote_flow(model: str, force: bool = False) -> dict[str, Any]:
    """Move ``champion`` to the challenger only if it is better by the configured margin."""
    logger = get_run_logger()
    settings = get_settings()
    window = latest_window(model, settings)
    if window is None:
        message = f"{model}: no matured window to compare on yet"
        logger.warning(message)
        return {"model": model, "decision": "not_comparable", "promoted": False, "message": message}
    X, y, cutoff = window
    result = promote(model, settings, X, y, force=force, reason=f"same-window comparison at {cutoff:%Y-%m-%d}")
    logger.info(result.message)
    create_markdown_artifact(
        f"# Promotion of {model}\n\n{result.message}\n\n| | version | {result.metric} |\n|---|---|---:|\n"
        f"| champion | {result.champion_version} | {result.champion_score} |\n"
        f"| challenger | {result.challenger_version} | {result.challenger_score} |\n",
        key=f"promotion-{model.replace('_', '-')}", description=result.decision)
    return asdict(result) | {"window": str(cutoff.date())}
