"""The morning scoring run: champions → scores as of the run date → reasons → the care task list."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

from flows.runtime import failure_reason, run_day, run_flow_state, run_name, with_retries
from schemas.settings import Settings, get_settings
from schemas.tasks import ScoredRows, TaskList
from tasks.care.export import record_task_risks_task
from tasks.care.interventions import build_task_list_task, load_history, task_list_summary, write_task_list_task
from tasks.data.warehouse import open_warehouse, run_lock
from tasks.insight.tags import current_tags
from tasks.models.datasets import scoring_frames
from tasks.models.scoring import (
    SCORES_TABLE,
    Champion,
    customers_above_floor,
    explain,
    find_champions,
    list_candidates,
    score_model,
    scored_rows,
    scores_table,
    scoring_funnel,
)
from tasks.monitoring.checks import drift_gate_task, empty_task_lists

CONSIDERED = "among each risk's best by probability × value (scoring.explain_headroom × capacity)"


@task(name="resolve-champions", cache_policy=NO_CACHE)
def resolve_champions(settings: Settings, models: list[str]) -> tuple[dict[str, Champion], dict[str, str]]:
    """Each model's champion now; a model without one is skipped with the reason. An unreachable
    registry raises (and is retried): it is not a reason to ship a list without models."""
    return find_champions(settings, models)


@task(name="build-features", cache_policy=NO_CACHE)
def build_features(models: list[str], day: pd.Timestamp, settings: Settings) -> dict[str, pd.DataFrame]:
    """Every scored model's population with its features as of the run date; the two order models
    share one pass over the history (a reader of the warehouse)."""
    with open_warehouse(settings, read_only=True) as wh:
        return scoring_frames(wh, models, day, settings)


@task(name="score-model", task_run_name="score-{model}", cache_policy=NO_CACHE)
def score_one(model: str, champion: Champion, day: pd.Timestamp, settings: Settings,
              frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """One model's population at the run date, scored; its features built here unless given."""
    if settings.dask.data_parallel:  # the prediction spread over a Dask cluster (tasks/models/distributed.py)
        from tasks.models.distributed import score_model_on_dask

        return score_model_on_dask(champion, day, settings)
    with open_warehouse(settings, read_only=True) as wh:
        return score_model(wh, champion, day, settings, frame)


@task(name="explain-candidates", cache_policy=NO_CACHE)
def score_populations(champions: dict[str, Champion], scored: dict[str, pd.DataFrame], day: pd.Timestamp,
                      settings: Settings) -> pd.DataFrame:
    """All scores kept for monitoring; the rows that can make the list explained (``ScoredRows``)."""
    with open_warehouse(settings) as wh:
        frames = [scores_table(f, day) for f in scored.values()]
        wh.replace_partition(SCORES_TABLE, pd.concat(frames, ignore_index=True) if frames else scores_table(
            pd.DataFrame(columns=["risk", "model_version", "customer_id", "probability", "value_at_stake"]), day),
                             where={"run_date": day.to_pydatetime()})
        tags = current_tags(wh, day)  # tags as of the run date, so a backfill sees that day's tags
    rows = []
    for model, frame in scored.items():
        candidates = list_candidates(frame, settings)
        if len(candidates):
            rows.append(scored_rows(candidates, explain(candidates, champions[model]), day, tags))
    if not rows:  # nobody eligible: an empty frame of the contract, so the day gets a valid empty list
        rows = [ScoredRows.validate(pd.DataFrame(columns=list(ScoredRows.to_schema().columns)))]
    return pd.concat(rows, ignore_index=True)


def customer_funnel(above_floor: int, listing: dict[str, int]) -> dict[str, int]:
    """Where the day's customers went: every one above the floor, then the list's own steps, whose
    first are the customers ``list_candidates`` kept (each risk's best by probability x value)."""
    if not listing:
        return {}
    steps = dict(listing)
    considered = steps.pop("above the floor")
    return {"above the floor": above_floor, CONSIDERED: considered, **steps}


def _links(settings: Settings, champions: dict[str, Champion], paths: dict[str, Any]) -> str:
    """Markdown links: each model version in MLflow, and the task-list files."""
    base = settings.tracking_uri.rstrip("/")
    lines = []
    for champion in champions.values():
        if base.startswith(("http://", "https://")):
            lines.append(f"- [{champion.label}]({base}/#/models/{champion.registered_model}/versions/"
                         f"{champion.version})")
        else:
            lines.append(f"- {champion.label} (`models:/{champion.registered_model}/{champion.version}`)")
    for kind, path in paths.items():
        lines.append(f"- task list {kind}: [{path}]({Path(path).resolve().as_uri()})")
    return "\n".join(lines)


@flow(name="score", flow_run_name=run_name("score"))
def score_flow(run_date: date | None = None, models: list[str] | None = None) -> dict[str, Any] | State:
    """Score as of the run date with the current champions and write that day's task list.

    Args:
        run_date: the day scored, UTC; default the scheduled day (a late run or a backfill
            produces the list that day would have had).
        models: the risk models to score (return, negative_review, churn); default every model
            that has a champion. A model without one is skipped and named.
    """
    logger = get_run_logger()
    settings = get_settings()
    day = run_day(run_date)
    wanted = list(models or settings.training.models)
    with run_lock(settings, f"score-{day:%Y-%m-%d}"):  # two runs for one date never interleave
        resolved = with_retries(resolve_champions, settings)(settings, wanted, return_state=True)
        if resolved.is_failed():
            message = failure_reason(resolved)
            logger.error("scoring stopped: %s", message)
            return Failed(message=message)
        champions, skipped = resolved.result()
        for model, why in skipped.items():
            logger.warning("%s not scored: %s", model, why)
        frames: dict[str, pd.DataFrame] = {}
        if not settings.dask.data_parallel:  # on Dask each model's frame is built where it is scored
            built = with_retries(build_features, settings)(list(champions), day, settings, return_state=True)
            if built.is_failed():  # each model then builds its own, and fails or not on its own
                logger.warning("shared features failed, built per model: %s", failure_reason(built))
            else:
                frames = built.result()
        scored: dict[str, pd.DataFrame] = {}
        for model, champion in list(champions.items()):
            state = with_retries(score_one, settings)(model, champion, day, settings, frames.get(model),
                                                      return_state=True)
            if state.is_failed():
                skipped[model] = failure_reason(state)
                champions.pop(model)
                logger.warning("%s not scored: %s", model, skipped[model])
            else:
                scored[model] = state.result()
        if not champions:
            reasons = "; ".join(f"{m}: {why}" for m, why in skipped.items())
            return Failed(message=f"no champion to score with ({reasons}); train and register first")
        versions = {model: champion.label for model, champion in champions.items()}
        logger.info("scoring %s with %s", day.date(), versions)
        candidates = score_populations(champions, scored, day, settings)
        # scores are kept either way; severe drift holds the list or ships it flagged (monitoring.gate)
        gate = drift_gate_task(settings, day, {model: champion.scorer for model, champion in champions.items()},
                               scored)
        with open_warehouse(settings, read_only=True) as wh:
            history, held_out = load_history(wh, day, settings)
        if candidates.empty:
            logger.warning("no eligible customers or orders on %s: the list is empty", day.date())
        if gate.held:
            logger.warning("task list held: %s", gate.reason)
            tasks, control = empty_task_lists()
        else:
            tasks, control = build_task_list_task(candidates, settings, day, history, held_out)
        if tasks.empty and not candidates.empty and not gate.held:
            logger.warning("%s rows above the probability floor on %s, no task: none had a positive expected value "
                           "(probability x value at stake x effect - action cost), or each customer is cooling "
                           "down or held out", f"{len(candidates):,}", day.date())
        record_task_risks_task(settings, candidates, tasks, day)  # reasons as codes: words in each customer's language
        paths = write_task_list_task(settings, tasks, control, day)
    summary = gate.banner() + task_list_summary(tasks, control)
    if skipped:
        summary += "\n\nNot scored: " + "; ".join(f"{m} ({why})" for m, why in skipped.items())
    create_markdown_artifact(summary + "\n\nModels and files:\n\n" + _links(settings, champions, paths),
                             key="care-task-list", description=f"task list for {day:%Y-%m-%d}")
    if len(tasks):
        counts = (tasks.groupby([TaskList.queue, TaskList.action]).size().rename("tasks").reset_index()
                  .to_dict(orient="records"))
        create_table_artifact(counts, key="care-tasks-by-queue", description=f"tasks per queue, {day:%Y-%m-%d}")
    result = {"run_date": str(day.date()), "models": versions, "tasks": len(tasks), "control": len(control),
              "files": {k: str(v) for k, v in paths.items()}, "summary": summary, "drift_gate": gate.as_dict(),
              "skipped": skipped, "scored": scoring_funnel(scored, settings),
              "min_probability": settings.scoring.min_probability,
              "funnel": customer_funnel(customers_above_floor(scored, settings), tasks.attrs.get("funnel", {}))}
    if gate.flagged or gate.held:
        emit_flagged(day, gate, result)
        return Completed(name="Flagged" if gate.flagged else "Held", data=result,
                         message=f"task list {'shipped flagged' if gate.flagged else 'held'}: {gate.reason}"[:500])
    return result


def emit_flagged(day: pd.Timestamp, gate: Any, result: dict[str, Any]) -> None:
    """A Prefect event for a list shipped under a drift flag (or held): automations notify on it."""
    from prefect.events import emit_event
    from prefect.runtime import flow_run

    related = [{"prefect.resource.id": f"prefect.flow-run.{flow_run.id}", "prefect.resource.role": "flow-run"}] \
        if flow_run.id else []
    emit_event(event=f"aftersales.task-list.{gate.action}",
               resource={"prefect.resource.id": f"aftersales.task-list.{day:%Y-%m-%d}",
                         "prefect.resource.name": f"task list {day:%Y-%m-%d}"},
               related=related,
               payload={"reason": gate.reason, "models": gate.models, "tasks": result["tasks"],
                        "file": result["files"].get("csv")})


@flow(name="score-backfill", flow_run_name="score-backfill-{start}-to-{end}")
def backfill_flow(start: date, end: date, models: list[str] | None = None) -> list[dict[str, Any]]:
    """One scoring run per day, each producing the list that day would have had.

    Args:
        start: first day scored (UTC).
        end: last day scored, inclusive.
        models: the risk models to score; default every model that has a champion.
    """
    days = [start + timedelta(days=k) for k in range((end - start).days + 1)]
    results = []
    for day in days:
        state = run_flow_state(score_flow, run_date=day, models=models)
        results.append({"run_date": str(day), "ok": not state.is_failed(),
                        **({"message": state.message} if state.is_failed() else state.result())})
    return results


def as_day(value: datetime | date | None) -> date | None:
    return value.date() if isinstance(value, datetime) else value
