"""What agents did comes back: a helpdesk export of outcomes, validated, tied to tasks, merged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from schemas.settings import get_settings
from tasks.care.outcomes import ImportResult, OutcomeImportError, import_outcomes, import_report
from tasks.data.warehouse import open_warehouse


@task(name="import-outcomes", cache_policy=NO_CACHE)
def load_outcomes(path: Path, mapping_file: Path | None) -> ImportResult | State:
    """A file that cannot be imported ends the task Failed with the reason in words, not a traceback."""
    settings = get_settings()
    try:
        with open_warehouse(settings) as wh:
            return import_outcomes(wh, path, settings, mapping_file)
    except OutcomeImportError as exc:
        message = str(exc)
    return Failed(message=message)


@flow(name="outcomes-import")
def outcomes_import_flow(path: Path, mapping_file: Path | None = None) -> dict[str, Any] | State:
    """Import one export of agents' outcomes: validate, tie to tasks, quarantine the rest, report."""
    logger = get_run_logger()
    state = load_outcomes(Path(path), mapping_file, return_state=True)
    if state.is_failed():
        logger.error("outcomes import stopped, nothing written: %s", state.message)
        return Failed(message=state.message)
    result = state.result()
    report = import_report(result)
    folder = get_settings().reports_dir / "outcomes"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{result.file_hash[:12]}.md"
    out.write_text(report, encoding="utf-8")
    create_markdown_artifact(report, key="outcomes-import", description=Path(result.file).name)
    logger.info("%s: %s valid, %s quarantined", result.file, result.valid, result.quarantined)
    return {**result.as_dict(), "report": str(out), "markdown": report}
