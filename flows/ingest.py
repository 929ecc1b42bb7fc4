"""Ingestion flow: a folder of exports (or mapped SQL) into the warehouse, validated."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from schemas.settings import get_settings
from tasks.data.ingest import BatchResult, IngestError, ingest_batch, validation_report
from tasks.data.mapping import MappingError
from tasks.data.warehouse import open_warehouse
from tasks.progress import row_progress


@task(cache_policy=NO_CACHE)
def load_batch(data_dir: Path, mapping_file: Path | None, as_of: datetime | str | None,
               force: bool = False) -> BatchResult | State:
    """A batch that cannot load ends the task Failed with the reason in words, not a traceback."""
    settings = get_settings()
    try:
        with open_warehouse(settings) as wh, row_progress("ingesting rows") as advance:
            return ingest_batch(data_dir, wh, settings, mapping_file, as_of, progress=advance, force=force)
    except (IngestError, MappingError) as exc:
        message = str(exc)
    return Failed(message=message)


@task(cache_policy=NO_CACHE)
def publish_report(result: BatchResult) -> Path:
    """The same report to a file and to the Prefect UI."""
    settings = get_settings()
    report = validation_report(result, settings.ingest.report_examples)
    path = settings.reports_dir / "ingest" / f"{result.batch_id}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report, encoding="utf-8")
    create_markdown_artifact(report, key="ingest-report", description=f"batch {result.batch_id}")
    return path


@flow(name="ingest")
def ingest_flow(data_dir: Path, mapping_file: Path | None = None, as_of: datetime | None = None,
                force: bool = False):
    """Validate a batch, quarantine what is wrong, merge the rest by key, report."""
    logger = get_run_logger()
    state = load_batch(Path(data_dir), mapping_file, as_of, force, return_state=True)
    if state.is_failed():
        logger.error("ingestion stopped, nothing written: %s", state.message)
        return Failed(message=state.message)
    result = state.result()
    report_path = publish_report(result)
    for warning in result.warnings:  # file, row and column named; never a value (personal data stays out)
        logger.warning("%s", warning)
    logger.info("batch %s: %s rows in, %s valid, %s quarantined, %s values cleared; report %s", result.batch_id,
                result.rows_in, result.rows_valid, result.rows_quarantined, result.values_cleared, report_path)
    return {"batch_id": result.batch_id, "rows_in": result.rows_in, "rows_valid": result.rows_valid,
            "rows_quarantined": result.rows_quarantined, "values_cleared": result.values_cleared,
            "report": str(report_path), "warnings": result.warnings, "notes": result.notes}
