"""Where flows run their tasks: threads on this machine, or a Dask cluster, by settings alone."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pandas as pd
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from schemas.settings import Settings


def task_runner(settings: Settings) -> Any:
    """The configured task runner; Dask only when asked for (its package is an optional extra)."""
    if settings.prefect.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise RuntimeError("task_runner = 'dask' needs: pip install 'aftersales[dask]'") from exc
        if settings.prefect.dask_address:
            return DaskTaskRunner(address=settings.prefect.dask_address)
        # worker processes would each start their own embedded Prefect server: threads instead
        return DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": settings.prefect.max_workers,
                                              "processes": False, "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=settings.prefect.max_workers)


def run_day(run_date: date | datetime | str | None) -> pd.Timestamp:
    """The day a run is for: the parameter, else the scheduled time in UTC (late runs and backfills
    produce what their date would have had), never the wall clock inside a task."""
    stamp = pd.Timestamp(run_date if run_date is not None else flow_run.scheduled_start_time)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.normalize()
