"""Report flow: the after-sales KPI report as one self-contained HTML file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from schemas.settings import get_settings
from tasks.insight.report import KPIS, build_report_task


@flow(name="report")
def report_flow(as_of: datetime | None = None, out: Path | None = None) -> dict[str, Any]:
    """Build the report as of ``as_of`` (default: the data's clock) and point the Prefect UI at it."""
    logger = get_run_logger()
    settings = get_settings()
    path, figures = build_report_task(settings, as_of, out)
    kpis = {k.key: k for k in KPIS}
    lines = [f"# After-sales report, data as of {figures['as_of'][:10]}", "", f"File: `{path}`", "",
             *(f"- {line}" for line in figures["sources"]), ""]
    lines += [f"- {kpis[key].title}: " + (kpis[key].fmt(value) if value is not None else
                                          f"no {kpis[key].missing()} data")
              for key, value in figures["headline"].items()]
    create_markdown_artifact("\n".join(lines), key="kpi-report", description="after-sales KPI report")
    logger.info("report written to %s", path)
    return {"report": str(path), **figures}
