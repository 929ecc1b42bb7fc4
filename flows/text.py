"""Text flow: learn sentiment and complaint reasons from the shop's own texts, check them, track
them in MLflow and rescore every review, ticket and return text into ``text_insights``."""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from schemas.settings import Settings, get_settings
from tasks.insight.text import (
    TextModelError,
    TextModels,
    load_texts_task,
    log_text_run_task,
    score_and_store_task,
    summary,
    train_text_models,
)
from tasks.templates import markdown_table


@task(name="train-text-models", cache_policy=NO_CACHE)
def train_models(texts: pd.DataFrame, settings: Settings) -> TextModels | State:
    """Too little text ends the task Failed with the reason in words, not a traceback."""
    try:
        return train_text_models(texts, settings)
    except TextModelError as exc:
        return Failed(message=str(exc))


def _fmt(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


COMPLAINT_COLUMNS = ["language", "classifier macro-F1", "keyword baseline macro-F1", "reasons from"]


def text_summary(result: dict[str, Any]) -> str:
    """Markdown: the text models in figures; per language, the complaint classifier against its keyword baseline."""
    evaluation = result["complaint_eval"]
    lines = ["# Text models", "", f"- texts scored: {result['stored']:,}",
             f"- sentiment ROC-AUC on the later window: {_fmt(result['sentiment_test_roc_auc'])}",
             *(f"  - {name}: {_fmt(auc)}" for name, auc in result.get("sentiment_analyzers", {}).items()),
             f"- stored predictions cross-fitted over {result.get('folds', 0)} periods (models of earlier texts only)",
             f"- MLflow run: {result['run_id']}", ""]
    rows = [[lang, _fmt(evaluation[f"macro_f1_bare_{lang}"]), _fmt(evaluation[f"macro_f1_lexicon_{lang}"]),
             "classifier" if lang in result.get("complaint_languages", []) else "keyword lexicon"]
            for lang in ("en", "zh") if f"macro_f1_{lang}" in evaluation]
    lines.append(markdown_table(pd.DataFrame(rows, columns=COMPLAINT_COLUMNS, dtype=object),
                                right=COMPLAINT_COLUMNS[1:3]).rstrip("\n"))
    lines += ["", *(f"- note: {n}" for n in result.get("notes", []))]
    return "\n".join(lines)


@task(name="publish-text-summary", cache_policy=NO_CACHE)
def publish_summary(result: dict[str, Any]) -> None:
    create_markdown_artifact(text_summary(result), key="text-models", description="sentiment and complaint reasons")


@flow(name="text")
def text_flow(train_until: date | None = None) -> dict[str, Any] | State:
    """Train and evaluate the text models, log them to MLflow, rescore every text (cross-fitted)."""
    logger = get_run_logger()
    settings = get_settings()
    if train_until is not None:
        settings = settings.model_copy(update={"text": settings.text.model_copy(
            update={"train_until": str(train_until)})})
    texts = load_texts_task(settings)
    if texts.empty:
        return Failed(message="this shop's data holds no review, ticket or return text: nothing to learn from "
                      "(map a reviews, tickets or returns file with its text column to analyse texts)")
    state = train_models(texts, settings, return_state=True)
    if state.is_failed():
        logger.error("text models not trained: %s", state.message)
        return Failed(message=state.message)
    models = state.result()
    models.run_id = log_text_run_task(models, settings)
    stored = score_and_store_task(texts, models, settings)
    result = summary(models, stored)
    publish_summary(result)
    for note in result["notes"]:
        logger.warning(note)
    logger.info("text models: sentiment AUC %s, %s texts scored, MLflow run %s",
                _fmt(result["sentiment_test_roc_auc"]), stored, models.run_id)
    return result
