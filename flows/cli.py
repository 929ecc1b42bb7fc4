"""The `aftersales` command line: it parses arguments and runs flows, nothing more."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="After-sales risk platform: ingest, train, score and hand care teams a task list.",
                  no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)


LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s %(message)s"
NOTICE_LOGGER = "aftersales.notice"  # one-line notices for people: waiting for the warehouse, a step begun
_log_file: Path | None = None


class UserError(Exception):
    """A mistake in what was asked (unknown model, missing folder): one line, exit code 2, no start-up."""


def _settings():
    from schemas.settings import get_settings

    return get_settings()


def _log_path() -> Path:
    settings = _settings()
    folder = settings.paths.home / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return (folder / "aftersales.log").resolve()


def _console_quiet() -> None:
    """Logs go to ``<home>/logs/aftersales.log`` in full; the console keeps our own lines only.

    Prefect's console handlers print every failure with its traceback, once per task, flow and
    parent flow (the same refusal four times, and "NoneType: None"); the CLI prints one line per
    failure instead. ``AFTERSALES_VERBOSE=1`` shows the logs on the console as well.
    """
    import logging
    from logging.handlers import RotatingFileHandler

    global _log_file
    verbose = os.environ.get("AFTERSALES_VERBOSE", "").lower() in ("1", "true", "yes")
    path = _log_path()
    handler = RotatingFileHandler(path, maxBytes=5_000_000, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for existing in getattr(logger, "handlers", []):
            if isinstance(existing, logging.StreamHandler) and not isinstance(existing, logging.FileHandler) \
                    and not getattr(existing, "_aftersales", False):
                existing.setLevel(logging.INFO if verbose else logging.CRITICAL + 1)
    root = logging.getLogger()
    if not any(getattr(h, "_aftersales", False) for h in root.handlers):
        handler._aftersales = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        for name in ("prefect._internal", "uvicorn", "fastapi"):  # they do not propagate to the root
            logging.getLogger(name).addHandler(handler)
    notice = logging.getLogger(NOTICE_LOGGER)
    if not notice.handlers:
        plain = logging.StreamHandler(sys.stderr)
        plain.setFormatter(logging.Formatter("%(message)s"))
        plain._aftersales = True  # type: ignore[attr-defined]
        notice.addHandler(plain)
        notice.setLevel(logging.INFO)
    _log_file = path


def _quiet_defaults() -> None:
    """Start-up of every command that runs a flow: quiet console, full log file, embedded server.

    Leaked embedded servers of killed commands are stopped first; then this command's server is
    started (and recorded) with a line saying so, instead of long silence.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")  # a busy 2-core machine
    os.environ.setdefault("DISABLE_PANDERA_IMPORT_WARNING", "True")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")  # to the log file and the Prefect UI, not the console
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # MLflow's INFO/advice lines drown the tables
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", module="mlflow")
    warnings.filterwarnings("ignore", category=FutureWarning)
    settings = _settings()
    from flows.runtime import clean_leaked_servers

    stopped = clean_leaked_servers(settings)
    import prefect.main  # noqa: F401  (configures Prefect's logging, which _console_quiet then adjusts; a bare
    # `import prefect` does not, and the first `from prefect import flow` would then undo the quieting)

    _console_quiet()
    if stopped:
        err.print(f"stopped {len(stopped)} embedded Prefect server(s) left running by killed commands "
                  f"(pid {', '.join(map(str, stopped))})")
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        err.print("[dim]starting the embedded Prefect server ...[/]")
        from flows.runtime import start_embedded_server

        try:
            start_embedded_server(settings)
        except RuntimeError as exc:
            raise UserError(f"the embedded Prefect server did not start ({str(exc).splitlines()[0][:160]}); "
                            "a busy machine needs more time (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS), "
                            "or point PREFECT_API_URL at a Prefect server") from exc


def _failure_message(state: Any) -> str:
    """A failed run's reason in words: the exception's own message, not Prefect's wrapper text."""
    try:
        state.result()
    except Exception as exc:
        text = str(exc).strip() or type(exc).__name__
        known = ("Error", "Exception")
        if type(exc).__name__ in ("FailedRun", "CrashedRun", "UnfinishedRun") or not text:
            text = state.message or text
        elif not any(type(exc).__name__.endswith(k) for k in known) or type(exc).__module__ == "builtins":
            text = f"{type(exc).__name__}: {text}"
        for prefix in ("Flow run encountered an exception: ", "Task run encountered an exception "):
            text = text.removeprefix(prefix)
        return text.splitlines()[0]
    return (state.message or "failed").splitlines()[0]


def _run(what: str, flow: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run a flow and give its value, or one clear line and exit code 1 when it failed."""
    from flows.runtime import run_flow_state

    return _finish(run_flow_state(flow, *args, **kwargs), what)


def _finish(state: Any, what: str) -> Any:
    """Turn a failed flow run into one clear line and exit code 1, never a traceback."""
    if state.is_failed() or state.is_crashed():
        detail = f" (details: {_log_file})" if _log_file else ""
        err.print(f"[bold red]{what} failed:[/] {escape(_failure_message(state))}{detail}", soft_wrap=True)
        raise typer.Exit(1)
    return state.result()


def _check_models(models: list[str] | None) -> list[str] | None:
    """Unknown model names are refused at once, before any start-up."""
    if not models:
        return None
    known = list(_settings().training.models)
    unknown = [m for m in models if m not in known]
    if unknown:
        raise UserError(f"unknown model {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
    return list(models)


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
    as_of: Annotated[datetime | None, typer.Option(
        metavar="DATE", help="batch time; later timestamps are rejected")] = None,
    force: Annotated[bool, typer.Option(help="re-read files already loaded with the same content")] = False,
) -> None:
    """Validate and load a batch of files into the warehouse (quarantine keeps bad rows)."""
    if not data_dir.is_dir():
        raise UserError(f"{data_dir} is not a folder (give the folder that holds the export files)")
    if mapping is not None and not mapping.is_file():
        raise UserError(f"mapping file {mapping} does not exist")
    _quiet_defaults()
    from flows.ingest import ingest_flow

    summary = _run("ingestion", ingest_flow, data_dir, mapping, as_of, force)
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
    models: Annotated[list[str] | None, typer.Option(
        "--model", metavar="MODEL", help="return, negative_review, churn; repeatable")] = None,
    cutoff: Annotated[datetime | None, typer.Option(
        metavar="DATE", help="train as of this date: no label closing after it is used (default: the latest data)")
    ] = None,
    promote: Annotated[bool, typer.Option(help="then promote each challenger that beats its champion")] = False,
) -> None:
    """Train risk models on point-in-time data, compare with baselines, register challengers."""
    models = _check_models(models)
    err.print(f"training {', '.join(models or _settings().training.models)}: point-in-time sets, XGBoost, baselines, "
              "MLflow logging (a minute or more per model on 2 cores)")
    _quiet_defaults()
    from flows.train import retrain_flow, train_flow

    _, runner = _settings_with_runner()
    if promote:
        result = _run("retraining", retrain_flow.with_options(task_runner=runner), models=models, promote=True)
        _print_trained(result["training"])
        for decision in result["promotions"]:
            console.print(f"[bold]{decision['model']}[/]: {decision['message']}")
        return
    day = cutoff.date() if cutoff else None
    result = _run("training", train_flow.with_options(task_runner=runner), models=models, cutoff=day)
    _print_trained(result["models"])


def _print_trained(results: list[dict[str, Any]]) -> None:
    console.print(_models_table(results))
    for r in results:
        if "skipped" in r:
            console.print(f"[yellow]{r['model']} skipped:[/] {r['skipped'].removeprefix(r['model'] + ': ')}")
        elif not r.get("new_version", True):
            console.print(f"{r['model']}: identical to version {r['version']} (the same rows, code and "
                          f"configuration): nothing new registered", soft_wrap=True)


def _models_table(results: list[dict[str, Any]]) -> Table:
    """Fits an 80-column terminal whole ("logit": the logistic-regression baseline; aliases are in
    `aftersales models`; baselines are PR-AUC only)."""
    table = Table("model", "ver", "ROC-AUC", "PR-AUC", "Brier", "lift@k", "PR-AUC\nlogit", "PR-AUC\nrule",
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
    to: Annotated[int | None, typer.Option("--to", help="make this version champion now, without a "
                                                       "comparison (the old one becomes previous_champion)")] = None,
) -> None:
    """Compare champion and challenger on the same latest window; promote if better by the margin."""
    _check_models([model])
    if to is not None:
        _quiet_mlflow()
        from tasks.models.registry import set_champion

        move = _registry_call(lambda: set_champion(model, _settings(), str(to), note="aftersales promote --to"))
        console.print(f"[green]{move.message}[/]", soft_wrap=True)
        return
    _quiet_defaults()
    from flows.promote import promote_flow

    result = _run("promotion", promote_flow, model, force=force)
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
        if not entry["ok"]:  # the reason is printed whole below the table
            table.add_row(entry["date"], "[yellow]not judged[/]", "", "", "", "", "")
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
        "--model", metavar="MODEL", help="return, negative_review, churn or all; repeatable (default: all)")] = None,
    at: Annotated[list[datetime] | None, typer.Option(
        "--at", metavar="DATE", help="a date to backtest; repeatable")] = None,
    start: Annotated[datetime | None, typer.Option("--from", metavar="DATE", help="first date of a grid")] = None,
    end: Annotated[datetime | None, typer.Option("--to", metavar="DATE", help="last date of a grid")] = None,
    every: Annotated[str, typer.Option(help="grid step, e.g. 14d or 2w")] = "14d",
    out: Annotated[Path | None, typer.Option(help="folder for the CSV files (default: reports/backtest/...)")] = None,
) -> None:
    """Train as of each date, score its population, compare with a logistic regression and a rule."""
    _quiet_defaults()
    from flows.backtest import backtest_dates, backtest_flow

    try:
        days = backtest_dates([d.date() for d in at or []], start.date() if start else None,
                              end.date() if end else None, _every_days(every))
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    names = [m for given in (models or ["all"]) for m in given.split(",")]
    result = _run("backtest", backtest_flow, models=names, dates=[d.date() for d in days], out=out)
    for summary in result["models"]:
        console.print(_backtest_table(summary))
        k = f"precision at the top {_top_k()}"
        for entry in summary["dates"]:
            if entry["ok"]:
                chosen = f"; {entry['chosen']}" if entry.get("chosen") else ""
                console.print(f"  {entry['date']}: {entry['rows']:,} rows, {entry['positives']:,} positive; p@k = {k}"
                              f"{chosen}", highlight=False)
            else:
                console.print(f"  {entry['date']} not judged: {entry['refusal']}", style="yellow", highlight=False)
        # a path people copy: the terminal may wrap it, rich must not break it with a newline
        console.print(f"  rows: {result['files'][summary['model']][0]}", highlight=False, soft_wrap=True)
    console.print(f"MLflow: experiment {result['experiment']}, runs {', '.join(result['runs'].values())}")
    if all(not e["ok"] for s in result["models"] for e in s["dates"]):
        raise typer.Exit(1)


def _top_k() -> int:
    from schemas.settings import get_settings

    return get_settings().training.top_k


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="return, negative_review or churn")],
) -> None:
    """Move champion back to previous_champion (recorded in the alias history with who did it)."""
    _check_models([model])
    _quiet_mlflow()
    from tasks.models.registry import rollback as rollback_model

    move = _registry_call(lambda: rollback_model(model, _settings()))
    console.print(f"[green]{move.message}[/]", soft_wrap=True)


def _quiet_mlflow() -> None:
    """Before MLflow is imported: its INFO lines ("Creating initial MLflow database tables") stay off the console."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    warnings.filterwarnings("ignore", category=FutureWarning)


def _registry_call(call: Any) -> Any:
    """A registry operation run from the CLI: its refusals are user errors, one line each."""
    from tasks.models.registry import RegistryError

    try:
        return call()
    except RegistryError as exc:
        raise UserError(str(exc)) from None


@app.command()
def models(
    history: Annotated[int, typer.Option(help="latest alias moves shown (0: none)")] = 15,
) -> None:
    """List each model's versions, aliases and the latest alias moves (who moved what, and why)."""
    import pandas as pd

    _quiet_mlflow()
    from tasks.models.registry import list_models

    frame = _registry_call(lambda: list_models(_settings()))
    if frame.empty:
        console.print("no registered models yet: run `aftersales train`")
        return
    table = Table("registered model", "v", "aliases", "created", "ROC", "PR", "data",
                  title="registered models (test ROC-AUC, PR-AUC; training data hash)", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    for column in table.columns[:-1]:  # names as the MLflow UI shows them, aliases whole ("champ…" is no alias)
        column.no_wrap = True
    table.columns[-1].overflow = "crop"  # a hash prefix: what a narrow terminal shortens
    for row in frame.itertuples():
        table.add_row(row.registered_model, str(row.version), "\n".join((row.aliases or "").split(",")),
                      f"{row.created:%y-%m-%d}", f"{row.test_roc_auc:.3f}", f"{row.test_pr_auc:.3f}",
                      str(row.train_data_hash)[:7])
    console.print(table)
    moves = frame.attrs.get("alias_history")
    if history and moves is not None and len(moves):
        shown = Table("when (UTC)", "model", "alias", "move", "why, who", title="alias history (latest)",
                      box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        shown.columns[0].no_wrap = shown.columns[2].no_wrap = True
        for row in moves.tail(history).itertuples(index=False):
            before = "-" if pd.isna(row.from_version) else f"v{row.from_version}"
            after = "-" if pd.isna(row.to_version) else f"v{row.to_version}"
            shown.add_row(str(row.ts)[:16].replace("T", " "), row.model, row.alias, f"{before}>{after}",
                          f"{row.reason}, {row.actor}")
        console.print(shown)
    console.print(f"full history: {_settings().paths.home / 'registry' / 'alias_history.jsonl'}", overflow="fold")


@app.command()
def score(
    run_date: Annotated[datetime | None, typer.Option(
        "--date", metavar="DATE", help="day to score (default: today, UTC)")] = None,
    start: Annotated[datetime | None, typer.Option("--from", metavar="DATE", help="first day of a backfill")] = None,
    end: Annotated[datetime | None, typer.Option("--to", metavar="DATE", help="last day of a backfill")] = None,
    models: Annotated[list[str] | None,
                      typer.Option("--model", metavar="MODEL", help="return, negative_review, churn; repeatable "
                                   "(default: every model with a champion)")] = None,
) -> None:
    """Score with the current champions and write the day's care task list (or backfill a range)."""
    models = _check_models(models)
    if (start or end) and (not (start and end) or end < start):
        raise UserError("--from and --to go together, --from first")
    _quiet_defaults()
    from flows.score import as_day, backfill_flow, score_flow

    if start or end:
        results = _run("backfill", backfill_flow, as_day(start), as_day(end), models=models)
        for r in results:
            line = f"{r['tasks']} tasks, {r['control']} held out" if r["ok"] else f"[red]failed:[/] {r['message']}"
            console.print(f"{r['run_date']}: {line}")
        if not all(r["ok"] for r in results):
            raise typer.Exit(1)
        return
    result = _run("scoring", score_flow, run_date=as_day(run_date), models=models)
    _print_scored(result)


def _print_scored(result: dict[str, Any]) -> None:
    console.print(f"[green]{result['run_date']}[/]: {result['tasks']} tasks, {result['control']} held out "
                  f"as control; models {', '.join(result['models'].values())}")
    scored = result.get("scored") or {}
    if scored:
        rows = "; ".join(f"{model} {n['rows']:,} rows, {n['above_floor']:,} at or above it"
                         for model, n in scored.items())
        console.print(f"scored against the probability floor {result['min_probability']:g} "
                      f"(scoring.min_probability): {rows}", soft_wrap=True)
    if funnel := result.get("funnel"):
        steps = " → ".join(f"{n:,} {step}" for step, n in funnel.items())
        console.print(f"customers: {steps} (expected value = probability × value at stake × the action's effect − "
                      "its cost)", soft_wrap=True)
    for model, why in (result.get("skipped") or {}).items():
        console.print(f"[yellow]{model} not scored:[/] {escape(why)}", soft_wrap=True)
    gate = result.get("drift_gate") or {}
    if gate.get("action") in ("flag", "hold"):
        verb = "shipped FLAGGED" if gate["action"] == "flag" else "HELD (no tasks issued)"
        console.print(f"[bold yellow]task list {verb}: severe drift in {', '.join(gate.get('models') or [])}[/]"
                      " (aftersales monitor for details)")
    console.print(f"task list: {result['files'].get('csv')}", soft_wrap=True)


def runnable(name: str) -> str:
    """How to type this environment's ``name`` command here: the bare name when the shell finds this one,
    else its path (a fresh .venv is usually not activated, and `mlflow: command not found` is a dead end)."""
    own = Path(sys.executable).parent / name
    if not own.exists() or shutil.which(name) == str(own):
        return name
    with contextlib.suppress(ValueError):
        return str(own.relative_to(Path.cwd()))
    return str(own)


@app.command()
def run(
    customers: Annotated[int, typer.Option(help="size of the synthetic shop")] = 5_000,
    seed: Annotated[int, typer.Option(help="same seed, same shop")] = 42,
) -> None:
    """The main job on the embedded default: generate → ingest → train → register → score → task list."""
    err.print(f"main job: generate a {customers:,}-customer shop, ingest it, train 3 models, score "
              "(a few minutes; the steps are listed as they start)")
    _quiet_defaults()
    from flows.main import main_flow

    result = _run("the main job", main_flow, customers=customers, seed=seed)
    _print_trained(result["training"])
    ingest = result.get("ingest") or {}
    if ingest.get("rows_quarantined"):
        console.print(f"{ingest['rows_quarantined']:,} rows quarantined: see {ingest.get('report')}", soft_wrap=True)
    _print_scored(result["score"])
    aftersales = runnable("aftersales")
    console.print(f"next:\n  {aftersales} models    versions and aliases\n  {aftersales} report    the KPI report\n"
                  f"  {aftersales} monitor   drift", soft_wrap=True)
    console.print("MLflow UI:", soft_wrap=True)
    print(f"  {runnable('mlflow')} ui --backend-store-uri {result['tracking_uri']} --port 5000")  # never wrapped


@app.command()
def segments(
    run_date: Annotated[datetime | None, typer.Option(
        "--date", metavar="DATE", help="as-of day (default: today, UTC)")] = None,
) -> None:
    """Recompute behaviour tags (with their history) and customer segments; log the run to MLflow."""
    _quiet_defaults()
    from flows.segments import segments_flow

    result = _run("segmentation", segments_flow, run_date=run_date)
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
    run_date: Annotated[datetime | None, typer.Option(
        "--date", metavar="DATE", help="as-of day (default: today, UTC)")] = None,
) -> None:
    """After-sales paths, slow stages and the next-step model against the naive baseline."""
    _quiet_defaults()
    from flows.journeys import journeys_flow

    result = _run("journey analysis", journeys_flow, run_date=run_date)
    console.print(f"[green]{result['run_date']}[/]: {result['journeys']:,} journeys ({result['open']:,} open), "
                  f"{result['slow_stages']} slow stages")
    for model, accuracy in result["accuracy"].items():
        console.print(f"  next-step accuracy, {model}: {accuracy:.1%}")
    console.print(f"report: {result['report']}")


@app.command(name="service-scores")
def service_scores(
    run_date: Annotated[datetime | None, typer.Option(
        "--date", metavar="DATE", help="as-of day (default: today, UTC)")] = None,
) -> None:
    """Service-quality scores per agent, team, channel, category and week, with shrinkage."""
    _quiet_defaults()
    from flows.service_scores import service_scores_flow

    result = _run("service scoring", service_scores_flow, run_date=run_date)
    console.print(f"[green]{result['run_date']}[/]: {result['tickets']:,} tickets scored")
    for row in result["team_ranking"]:
        console.print(f"  {row['rank']}. {row['team']}: {row['score']} ({row['tickets']} tickets)")
    if result["not_ranked"]:
        console.print(f"  not ranked (too few tickets): {', '.join(result['not_ranked'])}")
    console.print(f"report: {result['report']}")


@app.command()
def text(
    train_until: Annotated[datetime | None, typer.Option(
        metavar="DATE", help="train only on texts up to this day (backtests)")] = None,
) -> None:
    """Learn sentiment and complaint reasons from review/ticket/return texts; score every text."""
    _quiet_defaults()
    from flows.text import text_flow

    result = _run("text analysis", text_flow, train_until=train_until.date() if train_until else None)
    auc = result["sentiment_test_roc_auc"]
    console.print(f"[green]{result['stored']:,} texts scored[/]; sentiment ROC-AUC on the later window "
                  f"{'n/a' if auc is None else f'{auc:.3f}'}; MLflow run {result['run_id']}")
    evaluation = result["complaint_eval"]
    for lang in ("en", "zh"):
        if f"macro_f1_{lang}" in evaluation:
            used = "classifier" if lang in result.get("complaint_languages", []) else "keyword lexicon (fallback)"
            bare = evaluation[f"macro_f1_bare_{lang}"]
            model = f"classifier macro-F1 {bare:.3f}" if result.get("complaint_model", True) else "no classifier"
            console.print(f"  complaint reasons ({lang}): {model} "
                          f"vs keyword baseline {evaluation[f'macro_f1_lexicon_{lang}']:.3f}; used: {used}")
    for note in result.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")


@app.command()
def alerts(
    as_of: Annotated[datetime | None, typer.Option(
        metavar="DATE", help="data time to judge by (default: the latest data)")] = None,
    weeks: Annotated[int | None, typer.Option(help="complete weeks to check (0 = all; default: settings)")] = None,
) -> None:
    """Product early warning: weekly return / negative-review spikes against history and category."""
    _quiet_defaults()
    from flows.alerts import alerts_flow

    result = _run("product early warning", alerts_flow, as_of=as_of, weeks=weeks)
    console.print(f"[green]{result['alerts']} alerts[/] in {len(result['weeks'])} weeks checked "
                  f"(data as of {result['as_of'][:10]}): {', '.join(result['products']) or 'none'}")
    for note in result.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
    if result["webhook"]:
        console.print(f"webhook: {result['webhook']}")
    console.print(f"file: {result['file']}")


@app.command()
def report(
    as_of: Annotated[datetime | None, typer.Option(
        metavar="DATE", help="data time to report on (default: the latest data)")] = None,
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: reports/kpi/...)")] = None,
) -> None:
    """The after-sales KPI report: one self-contained HTML file."""
    _quiet_defaults()
    from flows.report import report_flow

    result = _run("report", report_flow, as_of=as_of, out=out)
    console.print(f"[green]report[/] (data as of {result['as_of'][:10]}, {result['alerts']} early warnings): "
                  f"{result['report']}")
    for line in result.get("sources", []):
        console.print(f"  {line}")


@app.command()
def monitor(
    run_date: Annotated[datetime | None, typer.Option(
        "--date", metavar="DATE", help="scoring date to judge (default: today, UTC)")] = None,
    models: Annotated[list[str] | None, typer.Option(
        "--model", metavar="MODEL", help="return, negative_review, churn; repeatable")] = None,
) -> None:
    """Drift of the day's scores, realised performance of matured runs, and retrain triggers."""
    models = _check_models(models)
    _quiet_defaults()
    from rich.markup import escape

    from flows.monitor import monitor_flow
    from flows.score import as_day

    result = _run("monitoring", monitor_flow, run_date=as_day(run_date), models=models)
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
                    typer.Option("--deployment", metavar="NAME", help="serve only this deployment; repeatable")] = None,
    inbox: Annotated[Path | None, typer.Option(help="folder daily-ingest reads (default: prefect.inbox)")] = None,
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
    if any(spec.name == "daily-ingest" for spec in specs) and not inbox:
        from flows.deployments import inbox_problem

        problem = inbox_problem(_settings())
        if problem:
            raise UserError(f"{problem} (or pass --inbox)")
    if not on_ephemeral_server():
        _server_setup()
    for spec in specs:
        when = ", ".join(f"{s.cron} {s.timezone}" for s in spec.schedules) or "no schedule"
        console.print(f"[bold]{spec.name}[/] ({spec.module_entrypoint}): {when}")
    serve_deployments(specs, overrides)


def _server_setup() -> None:
    """What the deployments need on the server besides themselves: limits and automations."""
    from flows.deployments import ensure_automations, ensure_concurrency_limits

    settings = _settings()
    limits = ensure_concurrency_limits(settings)
    console.print("concurrency limits: " + ", ".join(f"{n} ({v} slots)" for n, v in limits.items()))
    automations = ensure_automations(settings.prefect.notify_url)
    console.print(f"automations: {', '.join(automations)}" if automations else
                  "automations: none (set prefect.notify_url to be told of flagged lists and failed runs)")


@app.command()
def deploy(
    pool: Annotated[str, typer.Option(help="process work pool the deployments run on")] = "aftersales",
) -> None:
    """The deploy step on a Prefect server: checks the inbox, creates the work pool, the concurrency
    limits and the automations, then deploys deploy/prefect.yaml with `prefect deploy`."""
    import subprocess

    from flows.deployments import PREFECT_FILE, PROJECT_DIR, api_problem, inbox_problem

    problem = inbox_problem(_settings())
    if problem:
        raise UserError(problem)
    problem = api_problem()
    if problem:
        raise UserError(f"{problem}: deploy to a Prefect server (export PREFECT_API_URL=http://HOST:4200/api)")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    _server_setup()
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file",
                           str(PREFECT_FILE)], cwd=PROJECT_DIR, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError("prefect deploy failed: " + (done.stdout + done.stderr).strip().splitlines()[-1])
    console.print(f"deployed {PREFECT_FILE} to work pool {pool!r}; start a worker: prefect worker start --pool {pool}")


@app.command()
def uplift(
    since: Annotated[datetime | None, typer.Option(metavar="DATE", help="first task-list day to include")] = None,
    until: Annotated[datetime | None, typer.Option(metavar="DATE", help="last task-list day to include")] = None,
) -> None:
    """Return, review and churn rates of contacted vs control customers, with 95% intervals."""
    _quiet_defaults()
    from flows.score import as_day
    from flows.uplift import uplift_flow

    result = _run("uplift", uplift_flow, as_day(since), as_day(until))
    if not result["table"]:  # no control or no closed window yet: the report is one sentence, say it
        console.print(result["markdown"].removeprefix("## Uplift of care tasks").strip(), highlight=False)
    else:
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1),
                      title="uplift: bad-outcome rates, contacted vs control (effect: share prevented)")
        for heading in result["table"][0]:
            table.add_column(heading, overflow="fold")
        for row in result["table"]:
            table.add_row(*(str(value) for value in row.values()))
        console.print(table)
        if result["contaminations"]:
            console.print(f"[yellow]{result['contaminations']} contacts of held-out customers[/]: "
                          f"{result['contamination_file']}", soft_wrap=True)
    # a path people copy: the terminal may wrap it, rich must not break it with a newline
    console.print(f"report (intervals, power, weeks to a readout): {result['report']}", soft_wrap=True,
                  highlight=False)


outcomes_app = typer.Typer(help="What agents did with their tasks, back from a helpdesk export.",
                           no_args_is_help=True)
app.add_typer(outcomes_app, name="outcomes")


@outcomes_app.command(name="import")
def outcomes_import(
    path: Annotated[Path, typer.Argument(help="helpdesk export (CSV or Parquet): task id or customer + time, "
                                              "outcome, agent, note")],
    mapping: Annotated[Path | None, typer.Option(help="mapping file (tables: outcomes:) for its names and codes")]
    = None,
) -> None:
    """Validate and load agents' outcomes; rows that cannot be tied to a task are quarantined."""
    _quiet_defaults()
    from flows.outcomes import outcomes_import_flow

    result = _run("outcomes import", outcomes_import_flow, path, mapping)
    console.print(result["markdown"])
    console.print(f"report: {result['report']}")
from flows.board import board_cli  # noqa: E402  (typer only at import; the web stack loads when serving)

app.add_typer(board_cli, name="board")


def main() -> None:
    """The entry point: a user error or a refused request is one line on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)  # click returns a typer.Exit's code instead of raising it here
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except UserError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise SystemExit(2) from None
    except typer.TyperException as exc:  # click's usage errors, as vendored by typer
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # typer printed the help already
            raise SystemExit(0) from None
        command = f"aftersales {ctx.info_name}" if ctx is not None and ctx.parent is not None else "aftersales"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(f"[bold red]error:[/] {escape(message.splitlines()[0])} (see {command} --help)", soft_wrap=True)
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    except typer.Abort:
        err.print("aborted")
        raise SystemExit(130) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise SystemExit(130) from None
    except Exception as exc:  # a bug or an environment problem: one line here, the traceback in the log
        import logging

        where = ""
        with contextlib.suppress(Exception):
            path = _log_file or _log_path()
            crash = logging.getLogger("aftersales.crash")
            crash.propagate = False
            crash.addHandler(logging.FileHandler(path, encoding="utf-8"))
            crash.exception("unexpected error in: aftersales %s", " ".join(sys.argv[1:]))
            where = f" (details: {path})"
        err.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc).splitlines()[0] if str(exc) else '')}"
                  f"{where}", soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
