"""The main job on the embedded default, end to end, as one flow of subflows."""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.states import Failed

from flows.ingest import ingest_flow
from flows.runtime import run_flow_state
from flows.score import score_flow
from flows.segments import segments_flow
from flows.train import train_flow
from schemas.settings import get_settings
from tasks.data.synthetic import generate_shop
from tasks.progress import step


@task(name="generate-shop")
def generate(customers: int, seed: int) -> str:
    settings = get_settings()
    generate_shop(settings.data_dir, customers=customers, seed=seed, months=settings.generator.months,
                  end_date=settings.generator.end_date, dirty_share=settings.generator.dirty_share,
                  file_format=settings.generator.file_format)
    return str(settings.data_dir)


@flow(name="main-job", flow_run_name="main-job-{customers}-customers")
def main_flow(customers: int = 5_000, seed: int = 42) -> dict[str, Any] | Failed:
    """Generate a synthetic shop → ingest → train and register → tags and segments → score → the day's task list.

    Args:
        customers: size of the synthetic shop.
        seed: same seed, same shop.
    """
    settings = get_settings()
    step(1, 5, f"generating a synthetic shop of {customers:,} customers")
    data_dir = generate(customers, seed)
    steps = [("ingestion", "ingesting and validating it", lambda: run_flow_state(ingest_flow, data_dir)),
             ("training", f"training {len(settings.training.models)} models (the longest step)",
              lambda: run_flow_state(train_flow))]
    results: dict[str, Any] = {}
    for number, (name, what, run) in enumerate(steps, start=2):
        step(number, 5, what)
        state = run()
        if state.is_failed():
            return Failed(message=f"{name}: {state.message}")
        results[name] = state.result()
    # the synthetic shop's "today" is the day after its last exported day
    today: date = (pd.Timestamp(settings.generator.end_date) + pd.Timedelta(days=1)).date()
    # tags and segments as of the run date first: the playbook reads them and agents see them on each task
    step(4, 5, f"tags and segments as of {today}")
    tagged = run_flow_state(segments_flow, run_date=today)
    if tagged.is_failed():
        return Failed(message=f"tags and segments: {tagged.message}")
    step(5, 5, f"scoring {today} and writing the task list")
    scored = run_flow_state(score_flow, run_date=today)
    if scored.is_failed():
        return Failed(message=f"scoring: {scored.message}")
    return {"ingest": results["ingestion"], "training": results["training"]["models"],
            "segments": tagged.result(), "score": scored.result(), "tracking_uri": settings.tracking_uri}
