"""The `aftersales` command line: it parses arguments and runs flows, nothing more."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
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
    from tasks.synthetic import generate_shop

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
) -> None:
    """Validate and load a batch of files into the warehouse (quarantine keeps bad rows)."""
    _quiet_defaults()
    from flows.ingest import ingest_flow

    summary = _finish(ingest_flow(data_dir, mapping, as_of, return_state=True), "ingestion")
    console.print(f"[green]batch {summary['batch_id']}[/]: {summary['rows_in']:,} rows in, "
                  f"{summary['rows_valid']:,} valid, {summary['rows_quarantined']:,} quarantined")
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"report: {summary['report']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
