"""Journeys flow: after-sales paths, slow stages, next-step model against the naive baseline, report."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from flows.runtime import failure_reason, run_day
from schemas.settings import get_settings
from tasks.data.warehouse import open_warehouse
from tasks.insight.journeys import JourneyRun, analyse_journeys, journeys_report, write_journeys


@task(cache_policy=NO_CACHE)
def analyse(day: pd.Timestamp) -> JourneyRun:
    settings = get_settings()
    with open_warehouse(settings, read_only=True) as wh:
        return analyse_journeys(wh, day, settings)


@task(cache_policy=NO_CACHE)
def store(run: JourneyRun) -> None:
    with open_warehouse(get_settings()) as wh:
        write_journeys(wh, run)


@task(cache_policy=NO_CACHE)
def publish(run: JourneyRun) -> Path:
    """The report to a file (with plots) and to the Prefect UI (text)."""
    settings = get_settings()
    path = settings.reports_dir / "journeys" / f"{run.run_date:%Y-%m-%d}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(journeys_report(run, settings), encoding="utf-8")
    create_markdown_artifact(journeys_report(run, settings, images=False), key="journeys-report",
                             description=f"after-sales journeys {run.run_date:%Y-%m-%d}")
    return path


@flow(name="journeys")
def journeys_flow(run_date: date | datetime | str | None = None) -> dict | State:
    """Rebuild every delivered order's journey as of the run date, model what comes next, report."""
    logger = get_run_logger()
    day = run_day(run_date)
    analysed = analyse(day, return_state=True)
    if analysed.is_failed():
        return Failed(message=failure_reason(analysed))
    run = analysed.result()
    store(run)
    report = publish(run)
    ev = run.evaluation.set_index("model")
    logger.info("journeys %s: %s orders, %s open; report %s", f"{day:%Y-%m-%d}", run.journeys,
                len(run.predictions), report)
    return {
        "run_date": f"{day:%Y-%m-%d}", "journeys": run.journeys, "ended": run.closed,
        "open": len(run.predictions), "paths": len(run.paths),
        "slow_stages": int(run.stages["slow"].sum()),
        "accuracy": {model: round(float(acc), 4) for model, acc in ev["accuracy"].items()},
        "test_transitions": int(ev["transitions"].iloc[0]) if len(ev) else 0,
        "report": str(report),
    }
