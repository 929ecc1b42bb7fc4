"""Early-warning flow: weekly product rates tested against history and category; alerts to the
warehouse (``product_alerts``), a file, a Prefect artifact and, if configured, a webhook."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.runtime import failure_reason, run_name, with_retries
from schemas.settings import Settings, get_settings
from tasks.insight.alerts import (
    AlertRun,
    alerts_markdown,
    alerts_payload,
    detect_alerts_task,
    post_webhook,
    store_alerts_task,
    write_alert_files,
)
from tasks.insight.text import load_lexicon


@task(name="publish-product-alerts", cache_policy=NO_CACHE)
def publish_alerts(run: AlertRun, settings: Settings) -> Path:
    """The same alert list to a file (markdown + CSV) and to the Prefect UI."""
    labels = load_lexicon(settings.text.lexicon_file).labels
    words = {k: v.get("en", k) for k, v in labels.items()}
    path = write_alert_files(run, settings.reports_dir / "alerts", words)
    create_markdown_artifact(alerts_markdown(run, words), key="product-alerts",
                             description=f"product early warning as of {run.as_of:%Y-%m-%d}")
    return path


@task(name="notify-webhook", cache_policy=NO_CACHE)
def notify(run: AlertRun, settings: Settings) -> str:
    """POST the alerts; an unreachable webhook raises, so the task is retried with back-off."""
    ok, message = post_webhook(str(settings.alerts.webhook_url), alerts_payload(run),
                               settings.alerts.webhook_timeout_seconds)
    if not ok:
        raise ConnectionError(message)
    return message


@flow(name="alerts", flow_run_name=run_name("alerts"))
def alerts_flow(as_of: datetime | None = None, weeks: int | None = None) -> dict[str, Any]:
    """Check the latest complete weeks (``alerts.weeks``; 0 = all) as of ``as_of`` (default: the
    data's clock) and publish what stands out."""
    logger = get_run_logger()
    settings = get_settings()
    run = detect_alerts_task(settings, as_of, weeks)
    store_alerts_task(run, settings)
    path = publish_alerts(run, settings)
    result = run.summary() | {"file": str(path), "webhook": None}
    if settings.alerts.webhook_url and len(run.alerts):
        sent = with_retries(notify, settings)(run, settings, return_state=True)  # a dead webhook loses nothing
        result["webhook"] = sent.result() if sent.is_completed() else failure_reason(sent)
        if not sent.is_completed():
            logger.warning("alerts stored, but the webhook was not reached: %s", result["webhook"])
    for note in run.notes:
        logger.warning(note)
    logger.info("%s alerts in %s weeks; %s", len(run.alerts), len(run.weeks), path)
    return result
