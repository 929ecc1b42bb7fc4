"""Service-scores flow: the scoring system applied to agents, teams, channels, categories and weeks."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.runtime import run_day
from schemas.settings import get_settings
from tasks.data.warehouse import open_warehouse
from tasks.insight.service_quality import (
    ScoreBook,
    ServiceRun,
    load_score_book,
    service_report,
    service_scores,
    write_service_scores,
)


@task(cache_policy=NO_CACHE)
def score(day: pd.Timestamp, book: ScoreBook) -> ServiceRun:
    settings = get_settings()
    with open_warehouse(settings, read_only=True) as wh:
        return service_scores(wh, day, settings, book)


@task(cache_policy=NO_CACHE)
def store(run: ServiceRun) -> None:
    with open_warehouse(get_settings()) as wh:
        write_service_scores(wh, run)


@task(cache_policy=NO_CACHE)
def publish(run: ServiceRun, book: ScoreBook) -> Path:
    """The report to a file (with the trend plot) and to the Prefect UI (text)."""
    settings = get_settings()
    path = settings.reports_dir / "service" / f"{run.run_date:%Y-%m-%d}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(service_report(run, book, settings), encoding="utf-8")
    create_markdown_artifact(service_report(run, book, settings, images=False), key="service-scores-report",
                             description=f"service quality {run.run_date:%Y-%m-%d}")
    return path


@flow(name="service-scores")
def service_scores_flow(run_date: date | datetime | str | None = None) -> dict:
    """Score service quality as of the run date, rank the groups with enough tickets, report."""
    logger = get_run_logger()
    settings = get_settings()
    day = run_day(run_date)
    book = load_score_book(settings.analytics.service.scores_file)
    run = score(day, book)
    store(run)
    report = publish(run, book)
    teams = run.scores[(run.scores["period"] == "window") & (run.scores["grouping"] == "team")]
    ranking = teams[teams["ranked"]].sort_values("rank")
    logger.info("service scores %s: %s tickets; report %s", f"{day:%Y-%m-%d}", run.tickets, report)
    return {
        "run_date": f"{day:%Y-%m-%d}", "tickets": run.tickets,
        "team_ranking": [{"team": r.group_value, "rank": int(r.rank), "score": round(float(r.score), 1),
                          "tickets": int(r.tickets)} for r in ranking.itertuples()],
        "not_ranked": sorted(teams.loc[~teams["ranked"], "group_value"]),
        "report": str(report),
    }
