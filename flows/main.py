"""The main job on the embedded default, end to end, as one flow of subflows."""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.states import Failed

from flows.ingest import ingest_flow
from flows.score import score_flow
from flows.segments import segments_flow
from flows.train import train_flow
from schemas.settings import get_settings
from tasks.data.synthetic import generate_shop


@task(name="generate-shop")
def generate(customers: int, seed: int) -> str:
    settings = get_settings()
    generate_shop(settings.data_dir, customers=customers, seed=seed, months=settings.generator.months,
                  end_date=settings.generator.end_date, dirty_share=settings.generator.dirty_share,
                  file_format=settings.generator.file_format)
    return str(settings.data_dir)


@flow(name="main-job")
def main_flow(customers: int = 5_000, seed: int = 42) -> dict[str, Any] | Failed:
    """Generate a synthetic shop → ingest → train and register → tags and segments → score → the day's task list."""
    settings = get_settings()
    data_dir = generate(customers, seed)
    steps = [("ingestion", lambda: ingest_flow(data_dir, return_state=True)),
             ("training", lambda: train_flow(return_state=True))]
    results: dict[str, Any] = {}
    for name, step in steps:
        state = step()
        if state.is_failed():
            return Failed(message=f"{name}: {state.message}")
        results[name] = state.result()
    # the synthetic shop's "today" is the day after its last exported day
    today: date = (pd.Timestamp(settings.generator.end_date) + pd.Timedelta(days=1)).date()
    # tags and segments as of the run date first: the playbook reads them and agents see them on each task
    tagged = segments_flow(run_date=today, return_state=True)
    if tagged.is_failed():
        return Failed(message=f"tags and segments: {tagged.message}")
    scored = score_flow(run_date=today, return_state=True)
    if scored.is_failed():
        return Failed(message=f"scoring: {scored.message}")
    return {"ingest": results["ingestion"], "training": results["training"]["models"],
            "segments": tagged.result(), "score": scored.result(), "tracking_uri": settings.tracking_uri}
