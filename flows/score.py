"""The morning scoring run: champions → scores as of the run date → reasons → the care task list."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from flows.runtime import run_day
from schemas.settings import Settings, get_settings
from schemas.tasks import ScoredRows, TaskList
from tasks.care.export import record_task_risks_task
from tasks.care.interventions import build_task_list_task, load_history, task_list_summary, write_task_list_task
from tasks.data.warehouse import open_warehouse, run_lock
from tasks.insight.tags import current_tags
from tasks.models.scoring import (
    SCORES_TABLE,
    Champion,
    ScoringError,
    explain,
    list_candidates,
    load_champions,
    score_model,
    scored_rows,
    scores_table,
)
from tasks.monitoring.checks import drift_gate_task, empty_task_lists


@task(name="resolve-champions", cache_policy=NO_CACHE)
def resolve_champions(settings: Settings) -> dict[str, Champion] | State:
    """No champion or no registry: the run fails with the reason in words, not a traceback."""
    try:
        return load_champions(settings, list(settings.training.models))
    except ScoringError as exc:
        message = str(exc)
    return Failed(message=message)


@task(name="score-populations", cache_policy=NO_CACHE)
def score_populations(champions: dict[str, Champion], day: pd.Timestamp,
                      settings: Settings) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Every model's population scored: all scores kept for monitoring, candidates explained.

    Returns the candidates as ``ScoredRows`` and each model's scored frame (for the drift gate).
    """
    with open_warehouse(settings) as wh:
        scored = {model: score_model(wh, champion, day, settings) for model, champion in champions.items()}
        wh.replace_partition(SCORES_TABLE, pd.concat([scores_table(f, day) for f in scored.values()],
                                                     ignore_index=True),
                             where={"run_date": day.to_pydatetime()})
        tags = current_tags(wh, day)  # tags as of the run date, so a backfill sees that day's tags
    rows = []
    for model, frame in scored.items():
        candidates = list_candidates(frame, settings)
        if len(candidates):
            rows.append(scored_rows(candidates, explain(candidates, champions[model]), day, tags))
    if not rows:  # nobody eligible: an empty frame of the contract, so the day gets a valid empty list
        rows = [ScoredRows.validate(pd.DataFrame(columns=list(ScoredRows.to_schema().columns)))]
    return pd.concat(rows, ignore_index=True), scored


@flow(name="score")
def score_flow(run_date: date | None = None) -> dict[str, Any] | Failed:
    """Score as of the run date with the current champions and write that day's task list."""
    logger = get_run_logger()
    settings = get_settings()
    day = run_day(run_date)
    with run_lock(settings, f"score-{day:%Y-%m-%d}"):  # two runs for one date never interleave
        resolved = resolve_champions(settings, return_state=True)
        if resolved.is_failed():
            logger.error("scoring stopped: %s", resolved.message)
            return Failed(message=resolved.message)
        champions = resolved.result()
        versions = {model: champion.label for model, champion in champions.items()}
        logger.info("scoring %s with %s", day.date(), versions)
        scored, frames = score_populations(champions, day, settings)
        # scores are kept either way; severe drift holds the list or ships it flagged (monitoring.gate)
        gate = drift_gate_task(settings, day, {model: champion.scorer for model, champion in champions.items()},
                               frames)
        with open_warehouse(settings) as wh:
            history, held_out = load_history(wh, day, settings)
        if scored.empty:
            logger.warning("no eligible customers or orders on %s: the list is empty", day.date())
        if gate.held:
            logger.warning("task list held: %s", gate.reason)
            tasks, control = empty_task_lists()
        else:
            tasks, control = build_task_list_task(scored, settings, day, history, held_out)
        record_task_risks_task(settings, scored, tasks, day)  # reasons as codes: words in each customer's language
        paths = write_task_list_task(settings, tasks, control, day)
    summary = gate.banner() + task_list_summary(tasks, control)
    create_markdown_artifact(summary + "\n\nModels: " + ", ".join(versions.values()),
                             key="care-task-list", description=f"task list for {day:%Y-%m-%d}")
    if len(tasks):
        counts = (tasks.groupby([TaskList.queue, TaskList.action]).size().rename("tasks").reset_index()
                  .to_dict(orient="records"))
        create_table_artifact(counts, key="care-tasks-by-queue", description=f"tasks per queue, {day:%Y-%m-%d}")
    return {"run_date": str(day.date()), "models": versions, "tasks": len(tasks), "control": len(control),
            "files": {k: str(v) for k, v in paths.items()}, "summary": summary, "drift_gate": gate.as_dict()}


@flow(name="score-backfill")
def backfill_flow(start: date, end: date) -> list[dict[str, Any]]:
    """One scoring run per day, each producing the list that day would have had."""
    days = [start + timedelta(days=k) for k in range((end - start).days + 1)]
    results = []
    for day in days:
        state = score_flow(run_date=day, return_state=True)
        results.append({"run_date": str(day), "ok": not state.is_failed(),
                        **({"message": state.message} if state.is_failed() else state.result())})
    return results


def as_day(value: datetime | date | None) -> date | None:
    return value.date() if isinstance(value, datetime) else value
