"""The daily monitoring run: drift of the day's scores, realised performance of matured runs, retrain triggers.

Scheduled after the scoring run (``deploy/prefect.yaml``). It reads what scoring wrote, never the
clock inside a task, so a late run or a backfill judges the date it is for. When drift or realised
performance crosses its threshold it starts one retrain (``retrain_flow``: new challengers, promoted
only through the same-window comparison) for the models that crossed, unless a retrain of that model
was triggered within ``monitoring.cooldown_days``. Every decision is appended to ``retrain_decisions``.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.runtime import run_day, run_name, task_runner
from schemas.monitoring import DECISIONS_TABLE
from schemas.settings import Settings, get_settings
from tasks.data.warehouse import open_warehouse, run_lock
from tasks.monitoring.checks import (
    Decision,
    ModelDrift,
    check_drift_task,
    decide,
    decisions_table,
    drift_checks,
    expected_metrics,
    html_report,
    last_retrain,
    load_reference,
    markdown_report,
    performance_checks,
    pooled_rows,
    realised_performance_task,
    scores_of_day,
    version_of_label,
)


def _current_flow_run_id() -> str | None:
    return str(flow_run.id) if flow_run.id else None


@task(name="decide-retrain", cache_policy=NO_CACHE)
def decide_retrain(settings: Settings, drift: dict[str, ModelDrift], history: pd.DataFrame) -> list[Decision]:
    """Each model's checks (drift of the day, realised performance pooled over runs on untreated rows)."""
    now = pd.Timestamp.now("UTC").tz_localize(None).as_unit("us")
    decisions = []
    with open_warehouse(settings) as wh:
        for model in settings.training.models:
            result = drift.get(model)
            label = result.model_version if result else None
            pooled = pooled_rows(wh, model, label, settings.monitoring)  # untreated rows only
            checks = drift_checks(result, settings.monitoring) + performance_checks(
                pooled, expected_metrics(history, model, label), settings.monitoring, settings.training.seed)
            decisions.append(decide(model, label, checks, last_retrain(wh, model), now, settings.monitoring))
    return decisions


def deployment_exists(name: str) -> bool:
    """True when a Prefect server (not the embedded one) knows the deployment."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return False
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
    except ObjectNotFound:
        return False
    return True


def retrain_mode(settings: Settings) -> str:
    """``subflow`` or ``deployment``: auto picks the deployment when a server has it."""
    mode = settings.monitoring.retrain
    if mode == "auto":
        return "deployment" if deployment_exists(settings.monitoring.retrain_deployment) else "subflow"
    return mode


def start_retrain(models: list[str], settings: Settings) -> tuple[str, str | None, str | None]:
    """Start one retrain of ``models``: (how, its flow run id, an error message or None)."""
    mode = retrain_mode(settings)
    if mode == "deployment":
        from prefect.deployments import run_deployment

        run = run_deployment(settings.monitoring.retrain_deployment, parameters={"models": models, "promote": True},
                             timeout=0, tags=["triggered-by-monitor"])
        return mode, str(run.id), None
    from flows.train import retrain_flow

    state = retrain_flow.with_options(task_runner=task_runner(settings))(models=models, promote=True,
                                                                         return_state=True)
    run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    return mode, run_id, (state.message or "retrain failed") if state.is_failed() else None


def trigger(decisions: list[Decision], settings: Settings) -> list[Decision]:
    """One retrain run for every model whose decision is ``retrain``; the run id goes on each decision."""
    chosen = [d for d in decisions if d.decision == "retrain"]
    if not chosen:
        return decisions
    try:
        mode, run_id, error = start_retrain([d.model for d in chosen], settings)
    except Exception as exc:  # the decision and its evidence are still recorded, with why the start failed
        mode, run_id, error = settings.monitoring.retrain, None, f"{type(exc).__name__}: {exc}"[:300]
    for d in chosen:
        d.trigger, d.flow_run_id = mode, run_id
        if error:
            d.decision, d.reason = "failed", f"{d.reason}; the retrain failed: {error}"
    return decisions


def score_distributions(settings: Settings, day: pd.Timestamp,
                        drift: dict[str, ModelDrift]) -> dict[str, tuple[Any, Any]]:
    """(reference probabilities, served probabilities) per checked model, for the report's plots."""
    out = {}
    with open_warehouse(settings, read_only=True) as wh:
        scores = scores_of_day(wh, day)
    for model, result in drift.items():
        if result.status != "checked" or not result.model_version:
            continue
        reference = load_reference(settings, model, version_of_label(result.model_version)[1])
        out[model] = (reference.probabilities, scores.loc[scores["model"] == model, "probability"].to_numpy(float))
    return out


@task(name="monitoring-report", cache_policy=NO_CACHE)
def write_report(settings: Settings, day: pd.Timestamp, drift: dict[str, ModelDrift], new: pd.DataFrame,
                 history: pd.DataFrame, decisions: list[Decision]) -> Path:
    folder = settings.reports_dir / "monitoring"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{day:%Y-%m-%d}.html"
    page = html_report(day, drift, history, decisions, settings, score_distributions(settings, day, drift))
    path.write_text(page, encoding="utf-8")
    create_markdown_artifact(markdown_report(day, drift, new, decisions, settings.monitoring, path),
                             key="model-monitoring", description=f"drift, realised performance, retrain {day:%Y-%m-%d}")
    return path


def only_models(settings: Settings, models: list[str] | None) -> Settings:
    """The settings with ``training.models`` narrowed to the requested models (all when None)."""
    if not models:
        return settings
    narrowed = settings.model_copy(deep=True)
    narrowed.training.models = [m for m in settings.training.models if m in models]
    return narrowed


@flow(name="monitor", flow_run_name=run_name("monitor"))
def monitor_flow(run_date: date | None = None, models: list[str] | None = None) -> dict[str, Any]:
    """Judge the day's scores for drift, evaluate matured runs, and retrain where a threshold is crossed.

    Args:
        run_date: the scoring day judged, UTC; default the scheduled day.
        models: the risk models to judge (return, negative_review, churn); default all.
    """
    logger = get_run_logger()
    settings = only_models(get_settings(), models)
    day = run_day(run_date)
    with run_lock(settings, "monitor"):  # the cool-down check and the trigger never interleave
        drift = check_drift_task(settings, day)
        new, history = realised_performance_task(settings, until=day)
        decisions = trigger(decide_retrain(settings, drift, history), settings)
        with open_warehouse(settings) as wh:
            wh.append(DECISIONS_TABLE, decisions_table(decisions, day, pd.Timestamp.now("UTC").tz_localize(None)
                                                       .as_unit("us"), _current_flow_run_id()))
    for result in drift.values():
        (logger.warning if result.severe(settings.monitoring) else logger.info)(result.summary(settings.monitoring))
    for d in decisions:
        (logger.warning if d.decision in ("retrain", "failed") else logger.info)("%s: %s (%s)", d.model,
                                                                                 d.decision, d.reason)
    report = write_report(settings, day, drift, new, history, decisions)
    return {
        "run_date": str(day.date()),
        "drift": {m: {"status": r.status, "version": r.model_version, "severe": r.severe(settings.monitoring),
                      "drifted": r.drifted, "score_psi": r.score.psi if r.score else None}
                  for m, r in drift.items()},
        "evaluated_runs": len(new),
        "decisions": [{"model": d.model, "decision": d.decision, "crossed": d.crossed, "reason": d.reason,
                       "trigger": d.trigger, "flow_run_id": d.flow_run_id} for d in decisions],
        "report": str(report),
    }
