"""The `aftersales` command line: it parses arguments and runs flows, nothing more."""

from __future__ import annotations

import json
import os
import warnings
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="After-sales risk platform: ingest, train, score and hand care teams a task list.",
                  no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)


def _quiet_defaults() -> None:
    """Embedded-mode defaults that keep the console readable; users may override any of them."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("DISABLE_PANDERA_IMPORT_WARNING", "True")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # MLflow's INFO/advice lines drown the tables
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", module="mlflow")


def _finish(state: Any, what: str) -> Any:
    """Turn a failed flow run into one clear line and exit code 1, never a traceback."""
    if state.is_failed():
        err.print(f"[bold red]{what} failed:[/] {state.message}")
        raise typer.Exit(1)
    return state.result()


@app.command()
def config() -> None:
    """Print the effective settings (defaults + aftersales.toml + AFTERSALES_* variables)."""
    from schemas.settings import get_settings

    console.print_json(json.dumps(get_settings().effective()))


@app.command()
def generate(
    customers: Annotated[int, typer.Option(help="number of customers")] = 5_000,
    seed: Annotated[int, typer.Option(help="same seed, same shop")] = 42,
    out: Annotated[Path | None, typer.Option(help="output folder (default: settings data dir)")] = None,
    file_format: Annotated[str, typer.Option("--format", help="csv or parquet")] = "parquet",
    months: Annotated[int, typer.Option(help="months of history")] = 18,
) -> None:
    """Write a synthetic shop (all eight source tables) with planted signal and dirty rows."""
    from schemas.settings import get_settings
    from tasks.data.synthetic import generate_shop

    settings = get_settings()
    out = out or settings.data_dir
    counts = generate_shop(out, customers=customers, seed=seed, months=months,
                           end_date=settings.generator.end_date, dirty_share=settings.generator.dirty_share,
                           file_format=file_format, progress=True)
    table = Table("table", "rows", title=f"synthetic shop in {out}")
    for name, n in counts.items():
        table.add_row(name, f"{n:,}")
    console.print(table)


@app.command()
def ingest(
    data_dir: Annotated[Path, typer.Argument(help="folder with <table>.csv/.parquet files")],
    mapping: Annotated[Path | None, typer.Option(help="mapping file for foreign column names/codes")] = None,
    as_of: Annotated[datetime | None, typer.Option(help="batch time; later timestamps are rejected")] = None,
    force: Annotated[bool, typer.Option(help="re-read files already loaded with the same content")] = False,
) -> None:
    """Validate and load a batch of files into the warehouse (quarantine keeps bad rows)."""
    _quiet_defaults()
    from flows.ingest import ingest_flow

    summary = _finish(ingest_flow(data_dir, mapping, as_of, force, return_state=True), "ingestion")
    console.print(f"[green]batch {summary['batch_id']}[/]: {summary['rows_in']:,} rows in, "
                  f"{summary['rows_valid']:,} valid, {summary['rows_quarantined']:,} quarantined")
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"report: {summary['report']}")


def _settings_with_runner():
    from flows.runtime import task_runner
    from schemas.settings import get_settings

    settings = get_settings()
    return settings, task_runner(settings)


@app.command()
def train(
    models: Annotated[list[str] | None,
                      typer.Option("--model", help="return, negative_review, churn; repeatable")] = None,
    cutoff: Annotated[datetime | None, typer.Option(
        help="train as of this date: no label closing after it is used (default: the latest data)")] = None,
    promote: Annotated[bool, typer.Option(help="then promote each challenger that beats its champion")] = False,
) -> None:
    """Train risk models on point-in-time data, compare with baselines, register challengers."""
    _quiet_defaults()
    from flows.train import retrain_flow, train_flow

    _, runner = _settings_with_runner()
    if promote:
        result = _finish(retrain_flow.with_options(task_runner=runner)(models=models, promote=True,
                                                                          return_state=True), "retraining")
        _print_trained(result["training"])
        for decision in result["promotions"]:
            console.print(f"[bold]{decision['model']}[/]: {decision['message']}")
        return
    day = cutoff.date() if cutoff else None
    result = _finish(train_flow.with_options(task_runner=runner)(models=models, cutoff=day, return_state=True),
                     "training")
    _print_trained(result["models"])


def _print_trained(results: list[dict[str, Any]]) -> None:
    console.print(_models_table(results))
    for r in results:
        if "skipped" in r:
            console.print(f"[yellow]{r['model']} skipped:[/] {r['skipped']}")


def _models_table(results: list[dict[str, Any]]) -> Table:
    """Fits an 80-column terminal: aliases are in `aftersales models`, baselines are PR-AUC only."""
    table = Table("model", "ver", "ROC-AUC", "PR-AUC", "Brier", "lift@k", "PR-AUC\nlogistic", "PR-AUC\nrule",
                  title="trained models, test window", box=box.SIMPLE_HEAD)
    table.columns[0].no_wrap = True
    for r in results:
        if "skipped" in r:
            table.add_row(r["model"], "-", "skipped")
            continue
        m = r["metrics"]
        table.add_row(r["model"], str(r["version"]),
                      *(f"{m.get(k, float('nan')):.3f}" for k in
                        ("test_roc_auc", "test_pr_auc", "test_brier", "test_lift_at_k",
                         "baseline_logreg_test_pr_auc", "baseline_rule_test_pr_auc")))
    return table


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="return, negative_review or churn")],
    force: Annotated[bool, typer.Option(help="move champion even if the challenger is not better")] = False,
) -> None:
    """Compare champion and challenger on the same latest window; promote if better by the margin."""
    _quiet_defaults()
    from flows.promote import promote_flow

    result = _finish(promote_flow(model, force=force, return_state=True), "promotion")
    colour = "green" if result["promoted"] else "yellow"
    console.print(f"[{colour}]{result['decision']}[/]: {result['message']}")


def _every_days(text: str) -> int:
    """'14d', '2w' or '14' -> days."""
    value = text.strip().lower()
    factor = 7 if value.endswith("w") else 1
    try:
        days = int(value.rstrip("dw")) * factor
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give days like 14d, or weeks like 2w") from None
    if days < 1:
        raise typer.BadParameter("--every must be at least one day")
    return days


def _interval(m: dict[str, Any], metric: str, signed: bool = False) -> str:
    """'.741 .70-.78' — a value and its bootstrap interval in 14 characters."""
    if metric not in m:
        return ""
    value, low, high = m[metric]

    def short(v: float) -> str:
        text = f"{v:+.2f}" if signed else f"{v:.2f}"
        return text.replace("0.", ".")

    point = (f"{value:+.3f}" if signed else f"{value:.3f}").replace("0.", ".")
    return point if low != low or high != high else f"{point} {short(low)}–{short(high)}"


def _backtest_table(summary: dict[str, Any]) -> Table:
    """Fits an 80-column terminal: value and 95 % interval per metric, the paired difference last."""
    table = Table("date", "scorer", "ROC-AUC", "PR-AUC", "Brier", "ECE", "p@k", box=box.SIMPLE_HEAD,
                  title=f"{summary['model']}: backtest (95 % bootstrap intervals)", padding=(0, 1))
    for entry in summary["dates"]:
        if not entry["ok"]:
            table.add_row(entry["date"], "[yellow]none[/]", entry["refusal"][:60], "", "", "", "")
    for day, scorers in summary["metrics"].items():
        first = True
        for scorer in ("model", "logistic", "rule", "model-logistic"):
            if scorer not in scorers:
                continue
            m = scorers[scorer]
            if scorer == "model-logistic":
                table.add_row("", "Δ vs logit", _interval(m, "roc_auc", True), _interval(m, "pr_auc", True), "", "", "")
                continue
            cells = [f"{m[k][0]:.3f}".replace("0.", ".") if k in m else "" for k in ("brier", "ece", "precision_at_k")]
            table.add_row(day if first else "", scorer, _interval(m, "roc_auc"), _interval(m, "pr_auc"), *cells)
            first = False
        table.add_section()
    return table


@app.command()
def backtest(
    models: Annotated[list[str] | None, typer.Option(
        "--model", help="return, negative_review, churn or all; repeatable (default: all)")] = None,
    at: Annotated[datetime | None, typer.Option("--at", help="one date to backtest")] = None,
    start: Annotated[datetime | None, typer.Option("--from", help="first date of a grid")] = None,
    end: Annotated[datetime | None, typer.Option("--to", help="last date of a grid")] = None,
    every: Annotated[str, typer.Option(help="grid step, e.g. 14d or 2w")] = "14d",
    out: Annotated[Path | None, typer.Option(help="folder for the CSV files (default: reports/backtest/...)")] = None,
) -> None:
    """Train as of each date, score that date's population, label it from after, compare with a
    plain logistic regression and the one-line rule on the same rows."""
    _quiet_defaults()
    from flows.backtest import backtest_dates, backtest_flow

    try:
        days = backtest_dates(at.date() if at else None, start.date() if start else None,
                              end.date() if end else None, _every_days(every))
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    names = [m for given in (models or ["all"]) for m in given.split(",")]
    result = _finish(backtest_flow(models=names, dates=[d.date() for d in days], out=out, return_state=True),
                     "backtest")
    for summary in result["models"]:
        console.print(_backtest_table(summary))
        k = f"precision at the top {_top_k()}"
        for entry in summary["dates"]:
            if entry["ok"]:
                chosen = f"; {entry['chosen']}" if entry.get("chosen") else ""
                console.print(f"  {entry['date']}: {entry['rows']:,} rows, {entry['positives']:,} positive; p@k = {k}"
                              f"{chosen}", highlight=False)
        console.print(f"  rows: {result['files'][summary['model']][0]}", highlight=False)
    console.print(f"MLflow: experiment {result['experiment']}, runs {', '.join(result['runs'].values())}")
    if all(not e["ok"] for s in result["models"] for e in s["dates"]):
        raise typer.Exit(1)


def _top_k() -> int:
    from schemas.settings import get_settings

    return get_settings().training.top_k


@app.command()
def models() -> None:
    """List each model's versions, aliases and the history of alias moves."""
    import pandas as pd

    from schemas.settings import get_settings
    from tasks.models.registry import list_models

    frame = list_models(get_settings())
    table = Table("registered model", "version", "aliases", "created", "ROC-AUC", "PR-AUC", "data hash", "code",
                  title="registered models")
    for row in frame.itertuples():
        table.add_row(row.registered_model, str(row.version), row.aliases or "", f"{row.created:%Y-%m-%d %H:%M}",
                      f"{row.test_roc_auc:.3f}", f"{row.test_pr_auc:.3f}", str(row.train_data_hash)[:10],
                      str(row.code_version)[:10])
    console.print(table)
    history = frame.attrs.get("alias_history")
    if history is not None and len(history):
        shown = ["ts", "model", "alias", "from_version", "to_version", "reason", "actor", "metric",
                 "champion_score", "challenger_score"]
        moves = Table(*shown, title="alias history (append-only)")
        for row in history[shown].itertuples(index=False):
            moves.add_row(*("" if pd.isna(v) else str(v) for v in row))
        console.print(moves)


@app.command()
def score(
    run_date: Annotated[datetime | None, typer.Option("--date", help="day to score (default: today, UTC)")] = None,
    start: Annotated[datetime | None, typer.Option("--from", help="first day of a backfill")] = None,
    end: Annotated[datetime | None, typer.Option("--to", help="last day of a backfill")] = None,
) -> None:
    """Score with the current champions and write the day's care task list (or backfill a range)."""
    _quiet_defaults()
    from flows.score import as_day, backfill_flow, score_flow

    if start or end:
        if not (start and end) or end < start:
            err.print("[red]--from and --to go together, --from first[/]")
            raise typer.Exit(2)
        results = _finish(backfill_flow(as_day(start), as_day(end), return_state=True), "backfill")
        for r in results:
            line = f"{r['tasks']} tasks, {r['control']} held out" if r["ok"] else f"[red]failed:[/] {r['message']}"
            console.print(f"{r['run_date']}: {line}")
        if not all(r["ok"] for r in results):
            raise typer.Exit(1)
        return
    result = _finish(score_flow(run_date=as_day(run_date), return_state=True), "scoring")
    console.print(f"[green]{result['run_date']}[/]: {result['tasks']} tasks, {result['control']} held out "
                  f"as control; models {', '.join(result['models'].values())}")
    console.print(f"task list: {result['files'].get('csv')}")


@app.command()
def run(
    customers: Annotated[int, typer.Option(help="size of the synthetic shop")] = 5_000,
    seed: Annotated[int, typer.Option(help="same seed, same shop")] = 42,
) -> None:
    """The main job on the embedded default: generate → ingest → train → register → score → task list."""
    _quiet_defaults()
    from flows.main import main_flow

    result = _finish(main_flow(customers=customers, seed=seed, return_state=True), "the main job")
    _print_trained(result["training"])
    console.print(f"[green]task list for {result['score']['run_date']}[/]: {result['score']['tasks']} tasks "
                  f"({result['score']['control']} customers held out as control)")
    console.print(f"  {result['score']['files'].get('csv')}")
    console.print(f"MLflow UI: mlflow ui --backend-store-uri {result['tracking_uri']}")


@app.command()
def segments(
    run_date: Annotated[datetime | None, typer.Option("--date", help="as-of day (default: today, UTC)")] = None,
) -> None:
    """Recompute behaviour tags (with their history) and customer segments; log the run to MLflow."""
    _quiet_defaults()
    from flows.segments import segments_flow

    result = _finish(segments_flow(run_date=run_date, return_state=True), "segmentation")
    console.print(f"[green]{result['run_date']}[/]: {result['customers']:,} customers, {result['tags']:,} tags held "
                  f"(+{result['gained']:,} / -{result['lost']:,} today); {result['k']} segments, "
                  f"silhouette {result['silhouette']}")
    for seg in result["segments"]:
        console.print(f"  {seg['segment']} {seg['segment_name']}: {seg['customers']:,} customers")
    for tag, why in result["skipped_tags"].items():
        console.print(f"[yellow]tag {tag} not computed:[/] {why}")
    console.print(f"report: {result['report']}")


@app.command()
def journeys(
    run_date: Annotated[datetime | None, typer.Option("--date", help="as-of day (default: today, UTC)")] = None,
) -> None:
    """After-sales paths, slow stages and the next-step model against the naive baseline."""
    _quiet_defaults()
    from flows.journeys import journeys_flow

    result = _finish(journeys_flow(run_date=run_date, return_state=True), "journey analysis")
    console.print(f"[green]{result['run_date']}[/]: {result['journeys']:,} journeys ({result['open']:,} open), "
                  f"{result['slow_stages']} slow stages")
    for model, accuracy in result["accuracy"].items():
        console.print(f"  next-step accuracy, {model}: {accuracy:.1%}")
    console.print(f"report: {result['report']}")


@app.command(name="service-scores")
def service_scores(
    run_date: Annotated[datetime | None, typer.Option("--date", help="as-of day (default: today, UTC)")] = None,
) -> None:
    """Service-quality scores per agent, team, channel, category and week, with shrinkage."""
    _quiet_defaults()
    from flows.service_scores import service_scores_flow

    result = _finish(service_scores_flow(run_date=run_date, return_state=True), "service scoring")
    console.print(f"[green]{result['run_date']}[/]: {result['tickets']:,} tickets scored")
    for row in result["team_ranking"]:
        console.print(f"  {row['rank']}. {row['team']}: {row['score']} ({row['tickets']} tickets)")
    if result["not_ranked"]:
        console.print(f"  not ranked (too few tickets): {', '.join(result['not_ranked'])}")
    console.print(f"report: {result['report']}")


@app.command()
def text(
    train_until: Annotated[datetime | None, typer.Option(help="train only on texts up to this day (backtests)")] = None,
) -> None:
    """Learn sentiment and complaint reasons from review/ticket/return texts; score every text."""
    _quiet_defaults()
    from flows.text import text_flow

    result = _finish(text_flow(train_until=train_until.date() if train_until else None, return_state=True),
                     "text analysis")
    console.print(f"[green]{result['stored']:,} texts scored[/]; sentiment ROC-AUC on the later window "
                  f"{result['sentiment_test_roc_auc']:.3f}; MLflow run {result['run_id']}")
    evaluation = result["complaint_eval"]
    for lang in ("en", "zh"):
        if f"macro_f1_{lang}" in evaluation:
            console.print(f"  complaint reasons ({lang}): macro-F1 {evaluation[f'macro_f1_{lang}']:.3f} "
                          f"vs keyword baseline {evaluation[f'macro_f1_lexicon_{lang}']:.3f}")


@app.command()
def alerts(
    as_of: Annotated[datetime | None, typer.Option(help="data time to judge by (default: the latest data)")] = None,
    weeks: Annotated[int | None, typer.Option(help="complete weeks to check (0 = all; default: settings)")] = None,
) -> None:
    """Product early warning: weekly return / negative-review spikes against history and category."""
    _quiet_defaults()
    from flows.alerts import alerts_flow

    result = _finish(alerts_flow(as_of=as_of, weeks=weeks, return_state=True), "product early warning")
    console.print(f"[green]{result['alerts']} alerts[/] in {len(result['weeks'])} weeks checked "
                  f"(data as of {result['as_of'][:10]}): {', '.join(result['products']) or 'none'}")
    if result["webhook"]:
        console.print(f"webhook: {result['webhook']}")
    console.print(f"file: {result['file']}")


@app.command()
def report(
    as_of: Annotated[datetime | None, typer.Option(help="data time to report on (default: the latest data)")] = None,
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: reports/kpi/...)")] = None,
) -> None:
    """The after-sales KPI report: one self-contained HTML file."""
    _quiet_defaults()
    from flows.report import report_flow

    result = _finish(report_flow(as_of=as_of, out=out, return_state=True), "report")
    console.print(f"[green]report[/] (data as of {result['as_of'][:10]}, {result['alerts']} early warnings): "
                  f"{result['report']}")


@app.command()
def monitor(
    run_date: Annotated[datetime | None,
                        typer.Option("--date", help="scoring date to judge (default: today, UTC)")] = None,
) -> None:
    """Drift of the day's scores, realised performance of matured runs, and retrain triggers."""
    _quiet_defaults()
    from rich.markup import escape

    from flows.monitor import monitor_flow
    from flows.score import as_day

    result = _finish(monitor_flow(run_date=as_day(run_date), return_state=True), "monitoring")
    console.print(f"[green]{result['run_date']}[/]: drift of the scored population vs the training reference")
    for model, drift in result["drift"].items():
        verdict = "[red]severe drift[/]" if drift["severe"] else drift["status"]
        psi = "" if drift["score_psi"] is None else f", score PSI {drift['score_psi']:.2f}"
        drifted = ", ".join(drift["drifted"]) or "none"
        console.print(f"  {model} ({drift['version'] or '-'}): {verdict}; drifted: {drifted}{psi}")
    console.print(f"realised performance: {result['evaluated_runs']} newly matured scoring run(s) evaluated")
    for d in result["decisions"]:
        colour = "yellow" if d["decision"] in ("retrain", "failed") else "default"
        run = f" -> {d['trigger']} flow run {d['flow_run_id']}" if d["flow_run_id"] else ""
        console.print(f"  [{colour}]{d['model']}: {d['decision']}[/] ({escape(d['reason'])}){run}")
    console.print(f"report: {result['report']}")


@app.command()
def serve(
    only: Annotated[list[str] | None,
                    typer.Option("--deployment", help="serve only this deployment; repeatable")] = None,
    inbox: Annotated[Path | None, typer.Option(help="folder daily-ingest reads (default: prefect.yaml's)")] = None,
    ephemeral: Annotated[bool, typer.Option(help="serve without a Prefect server: manual runs only, "
                                                  "cron never fires")] = False,
) -> None:
    """Serve the deployments of deploy/prefect.yaml from this process (same names, schedules, parameters)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.deployments import PREFECT_FILE, DeploymentFileError, api_problem, load_deployments, on_ephemeral_server
    from flows.deployments import serve as serve_deployments

    try:
        specs = load_deployments(PREFECT_FILE, only)
    except DeploymentFileError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    problem = api_problem(allow_ephemeral=ephemeral)
    if problem:
        err.print(f"[bold red]{problem}[/]: schedules only fire on a Prefect server (an embedded, temporary one "
                  "has no scheduler). Start one first, in another shell:\n"
                  "  prefect server start --host 127.0.0.1 --port 4200\n"
                  "  export PREFECT_API_URL=http://127.0.0.1:4200/api\n"
                  "  aftersales serve\n"
                  "or pass --ephemeral to serve anyway (runs started by hand only: cron does not fire).")
        raise typer.Exit(2)
    if on_ephemeral_server():
        err.print("[yellow]--ephemeral: cron schedules will NOT fire on this temporary server; start runs by hand "
                  "(prefect deployment run 'score/daily-score', same PREFECT_HOME).[/]")
    overrides = {"daily-ingest": {"data_dir": str(inbox.resolve())}} if inbox else {}
    for spec in specs:
        when = ", ".join(f"{s.cron} {s.timezone}" for s in spec.schedules) or "no schedule"
        console.print(f"[bold]{spec.name}[/] ({spec.module_entrypoint}): {when}")
    serve_deployments(specs, overrides)


@app.command()
def uplift(
    since: Annotated[datetime | None, typer.Option(help="first task-list day to include")] = None,
    until: Annotated[datetime | None, typer.Option(help="last task-list day to include")] = None,
) -> None:
    """Return, review and churn rates of contacted vs control customers, with 95% intervals."""
    _quiet_defaults()
    from flows.score import as_day
    from flows.uplift import uplift_flow

    result = _finish(uplift_flow(as_day(since), as_day(until), return_state=True), "uplift")
    console.print(result["markdown"])
    console.print(f"report: {result['report']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
