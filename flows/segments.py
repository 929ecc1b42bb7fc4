"""Segments flow: behaviour tags with their history, customer segments, MLflow log and a report."""

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
from tasks.insight.segments import (
    Segmentation,
    customer_tag_snapshot,
    log_segmentation,
    previous_run,
    segment_customers,
    segments_report,
    write_segmentation,
)
from tasks.insight.tags import (
    TagBook,
    behaviour_features,
    evaluate_tags,
    load_tag_book,
    load_tag_history,
    tag_changes,
    update_tag_history,
)


@task(cache_policy=NO_CACHE)
def load_features(day: pd.Timestamp) -> pd.DataFrame:
    settings = get_settings()
    with open_warehouse(settings, read_only=True) as wh:
        return behaviour_features(wh, day, settings)


@task(cache_policy=NO_CACHE)
def segment(features: pd.DataFrame, tags_long: pd.DataFrame, book: TagBook, day: pd.Timestamp) -> Segmentation | None:
    """Cluster, keeping the ids of the previous run's segments."""
    settings = get_settings()
    with open_warehouse(settings, read_only=True) as wh:
        previous = previous_run(wh, day)
    return segment_customers(features, tags_long, book, settings, day, previous)


@task(cache_policy=NO_CACHE)
def store(features: pd.DataFrame, tags_long: pd.DataFrame, seg: Segmentation | None, book: TagBook,
          day: pd.Timestamp) -> pd.DataFrame:
    """Write the day's tags and segments and the updated tag history; return today's tag changes."""
    settings = get_settings()
    with open_warehouse(settings) as wh:
        history = update_tag_history(load_tag_history(wh), tags_long, day)
        snapshot = customer_tag_snapshot(features, tags_long, seg, book, day)
        write_segmentation(wh, snapshot, history, seg, day)
    return tag_changes(history, day)


@task(cache_policy=NO_CACHE)
def publish(seg: Segmentation | None, changes: pd.DataFrame, skipped: dict[str, str], book: TagBook,
            customers: int, day: pd.Timestamp) -> tuple[Path, str | None]:
    """The report to a file (with plots), to the Prefect UI (text) and, with the run, to MLflow."""
    settings = get_settings()
    report = segments_report(seg, changes, skipped, book, settings, customers)
    path = settings.reports_dir / "segments" / f"{day:%Y-%m-%d}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report, encoding="utf-8")
    create_markdown_artifact(segments_report(seg, changes, skipped, book, settings, customers, images=False),
                             key="segments-report", description=f"segments and tags {day:%Y-%m-%d}")
    run_id = log_segmentation(seg, settings, report) if seg is not None else None
    return path, run_id


@flow(name="segments")
def segments_flow(run_date: date | datetime | str | None = None) -> dict:
    """Recompute every customer's behaviour tags (keeping their history) and segments as of the run date."""
    logger = get_run_logger()
    settings = get_settings()
    day = run_day(run_date)
    book = load_tag_book(settings.analytics.tags.rules_file)
    features = load_features(day)
    tags_long, skipped = evaluate_tags(features, book)
    seg = segment(features, tags_long, book, day)
    changes = store(features, tags_long, seg, book, day)
    report, mlflow_run = publish(seg, changes, skipped, book, len(features), day)
    logger.info("segments %s: %s customers, %s tags held, k=%s; report %s", f"{day:%Y-%m-%d}", len(features),
                len(tags_long), seg.k if seg else None, report)
    return {
        "run_date": f"{day:%Y-%m-%d}", "customers": len(features), "tags": len(tags_long),
        "skipped_tags": skipped, "k": seg.k if seg else None,
        "silhouette": round(seg.silhouette, 4) if seg else None,
        "segments": seg.profiles[["segment", "segment_name", "customers"]].to_dict("records") if seg else [],
        "gained": int(changes["gained"].sum()) if len(changes) else 0,
        "lost": int(changes["lost"].sum()) if len(changes) else 0,
        "report": str(report), "mlflow_run_id": mlflow_run,
    }
