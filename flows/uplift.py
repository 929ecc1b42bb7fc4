"""The effect of care tasks, measured against the held-out control group."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from schemas.settings import get_settings
from tasks.care.uplift import terminal_rows, uplift_report_task


@flow(name="uplift")
def uplift_flow(since: date | None = None, until: date | None = None) -> dict[str, Any]:
    """Bad-outcome rates of contacted vs control customers per risk and action, with intervals and power;
    every contact of a held-out customer flagged; measured effects stored for expected value."""
    settings = get_settings()
    analysis = uplift_report_task(settings, since, until)
    folder = settings.reports_dir / "uplift"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"uplift-{since or 'all'}-{until or 'now'}"
    path = folder / f"{stem}.md"
    path.write_text(analysis.markdown, encoding="utf-8")
    flagged = folder / f"{stem}-contamination.csv"
    analysis.contamination.to_csv(flagged, index=False)
    create_markdown_artifact(analysis.markdown, key="uplift", description="treated vs control")
    if len(analysis.contamination):
        create_table_artifact(analysis.contamination.astype(str).to_dict(orient="records"),
                              key="uplift-contamination", description="contacts of held-out customers")
    contaminated = int((analysis.contamination["kind"] == "contamination").sum()) if len(analysis.contamination) else 0
    return {"markdown": analysis.markdown, "report": str(path), "contamination_file": str(flagged),
            "rows": len(analysis.by_risk), "contaminations": contaminated,
            "effects": analysis.effects.to_dict(orient="records"),
            "table": terminal_rows(analysis, settings.care.confidence)}
