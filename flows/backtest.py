"""Backtest: would the models have helped on these dates, and do they beat a plain logistic regression?

For each model and each date D: train exactly as ``aftersales train --cutoff D`` would (nothing
whose label closes after D), score the population at D, label it from after D, and compare the
model with the plain logistic regression and the one-line rule on the same rows (bootstrap
intervals, paired differences). The per-row scores go to CSV and, with the figures, to MLflow.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from schemas.settings import get_settings
from tasks.data.warehouse import open_warehouse
from tasks.models.backtest import (
    SCORER_NAME,
    BacktestResult,
    NotMatured,
    backtest_at_task,
    log_backtest_run_task,
    metrics_table,
    pooled_intervals,
    write_backtest_files_task,
)
from tasks.models.labels import MODELS
from tasks.models.registry import experiment_name
from tasks.templates import markdown_table

# the report's metric columns: summary key -> heading
METRICS_SHOWN = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "brier": "Brier", "ece": "ECE",
                 "precision_at_k": "precision@k"}


def backtest_dates(at: list[date] | None = None, start: date | None = None, end: date | None = None,
                   every_days: int = 14) -> list[pd.Timestamp]:
    """The given dates, or every ``every_days`` from ``start`` to ``end`` (both included when on the grid)."""
    if at and (start is not None or end is not None):
        raise ValueError("give --at dates or a --from/--to grid, not both")
    if at:
        return sorted({pd.Timestamp(day).normalize() for day in at})
    if start is None or end is None or end < start or every_days < 1:
        raise ValueError("give --at, or --from and --to (--from first) with --every of at least one day")
    return list(pd.date_range(pd.Timestamp(start), pd.Timestamp(end), freq=f"{every_days}D"))


def summarise(model: str, results: list[BacktestResult], table: pd.DataFrame) -> dict[str, Any]:
    """What the CLI prints and the artifact shows: per date, each scorer's metrics with intervals."""
    dates = []
    for r in results:
        entry: dict[str, Any] = {"date": f"{r.run_date:%Y-%m-%d}", "ok": r.ok, "refusal": r.refusal,
                                 "rows": len(r.rows), "positives": int(r.rows["label"].sum()) if len(r.rows) else 0}
        if r.ok and r.fit is not None and r.fit.tuning is not None:
            entry["chosen"] = r.fit.tuning.describe()
        dates.append(entry)
    metrics = {}
    for (day, scorer), part in table.groupby(["date", "scorer"], sort=False):
        metrics.setdefault(day, {})[scorer] = {row.metric: (row.value, row.low, row.high)
                                               for row in part.itertuples(index=False)}
    return {"model": model, "dates": dates, "metrics": metrics}


def markdown(summaries: list[dict[str, Any]]) -> str:
    """The report: per model, a row per date and scorer (value and interval), or why a date was not judged."""
    lines = ["# Backtest", ""]
    for s in summaries:
        rows = [{"date": e["date"], "scorer": "not judged", "ROC-AUC": e["refusal"]} for e in s["dates"] if not e["ok"]]
        rows += [{"date": day, "scorer": scorer, **{heading: f"{m[k][0]:.3f} ({m[k][1]:.3f}–{m[k][2]:.3f})"
                                                     for k, heading in METRICS_SHOWN.items() if k in m}}
                 for day, scorers in s["metrics"].items() for scorer, m in scorers.items()]
        lines += [f"## {s['model']}", "",
                  markdown_table(pd.DataFrame(rows, columns=["date", "scorer", *METRICS_SHOWN.values()], dtype=object))]
    return "\n".join(lines)


@flow(name="backtest")
def backtest_flow(models: list[str] | None = None, dates: list[date] | None = None,
                  out: Path | None = None) -> dict[str, Any]:
    """For each model: fit as of each date, score that date's population, label it, compare, record."""
    logger = get_run_logger()
    settings = get_settings()
    models = list(MODELS) if not models or models == ["all"] else models
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    days = [pd.Timestamp(d).normalize() for d in (dates or [])]
    if not days:
        raise ValueError("no date to backtest")
    folder = Path(out) if out else settings.reports_dir / "backtest" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    summaries, files, runs = [], {}, {}
    with open_warehouse(settings, read_only=True) as wh:
        for model in models:
            cache: dict = {}  # cutoffs shared by several dates are built once
            results = []
            for day in days:
                try:
                    results.append(backtest_at_task(wh, model, day, settings, cache))
                except NotMatured as exc:
                    logger.warning(str(exc))
                    results.append(BacktestResult(model, day, pd.DataFrame(columns=["label"]), refusal=str(exc)))
            files[model] = [str(p) for p in write_backtest_files_task(model, results, settings, folder)]
            runs[model] = log_backtest_run_task(model, results, settings, files[model])
            table = metrics_table(results, pooled_intervals(results, settings))
            summaries.append(summarise(model, results, table))
    report = markdown(summaries)
    create_markdown_artifact(report, key="backtest", description="model vs logistic regression and rule by date")
    return {"models": summaries, "files": files, "runs": runs, "folder": str(folder),
            "scorers": list(SCORER_NAME.values()), "experiment": experiment_name(settings, "backtest")}
