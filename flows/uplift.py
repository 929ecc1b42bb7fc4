"""The effect of care tasks, measured against the held-out control group."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from schemas.settings import get_settings
from tasks.care.uplift import uplift_report_task


@flow(name="uplift")
def uplift_flow(since: date | None = None, until: date | None = None) -> dict[str, Any]:
    """Return, review and churn rates of contacted vs control customers, with confidence intervals."""
    settings = get_settings()
    table, markdown = uplift_report_task(settings, since, until)
    path = settings.reports_dir / "uplift" / f"uplift-{since or 'all'}-{until or 'now'}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown, encoding="utf-8")
    create_markdown_artifact(markdown, key="uplift", description="treated vs control")
    return {"markdown": markdown, "report": str(path), "rows": len(table)}
