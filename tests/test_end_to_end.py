"""The CLI end to end on a small generated shop: real Prefect flow runs, real DuckDB, real MLflow registry."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from schemas.settings import Settings
from tasks.data.warehouse import Warehouse

RUN_DATE = "2026-11-02"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture
def cli(home: Path, prefect_api: None):
    """Run ``aftersales ...`` as a user would: a new process, every path in this module's temp home,
    flow runs recorded by the session's real Prefect test server."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "AFTERSALES_PATHS__HOME": str(home / "home"), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "COLUMNS": "200"}

    def invoke(*args: str, ok: bool = True, extra_env: dict[str, str] | None = None):
        result = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=home, capture_output=True,
                                text=True, env={**env, **(extra_env or {})}, timeout=600)
        result.output = result.stdout + result.stderr
        assert (result.returncode == 0) == ok, result.output
        return result

    return invoke


def registry(home: Path) -> MlflowClient:
    """A client of this module's registry. The registry URI is given too: MLflow prefers a process-wide
    registry URI (set by any earlier test that trained in this process) to the tracking URI."""
    uri = Settings(paths={"home": home / "home"}).tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def counts(home: Path) -> dict[str, int]:
    wh = Warehouse(home / "home" / "warehouse.duckdb")
    try:
        return {t: wh.row_count(t) for t in ("customers", "orders", "events", "quarantine", "task_list")}
    finally:
        wh.close()


def test_help_lists_every_command(cli) -> None:
    out = cli("--help").output
    for command in ("generate", "ingest", "train", "promote", "models", "score", "run", "config", "uplift",
                    "monitor", "serve", "segments", "journeys", "service-scores", "text", "alerts", "report"):
        assert command in out


def test_command_help_names_what_to_type(cli) -> None:
    """Flags carry no placeholder, dates say DATE: typer 0.29 printed <bool> beside every flag and
    --help, and <datetime> (earlier versions: the list of accepted formats) beside dates."""
    for command, wanted in (("train", ("--cutoff", "DATE", "--model", "MODEL")),
                            ("score", ("--date", "DATE", "--from", "--to")),
                            ("ingest", ("--as-of", "DATE", "--force"))):
        out = cli(command, "--help").output
        assert "<bool>" not in out and "<datetime>" not in out and "%Y" not in out, out
        assert all(word in out for word in wanted), out


def test_generate_and_ingest_twice_changes_nothing(cli, home: Path) -> None:
    data = home / "shop"
    cli("generate", "--customers", "2500", "--seed", "3", "--out", str(data))
    first = cli("ingest", str(data)).output
    assert "quarantined" in first and "report:" in first
    before = counts(home)
    assert before["orders"] > 5_000 and before["quarantine"] > 0
    cli("ingest", str(data), "--force")
    assert counts(home) == before


def test_bad_batch_fails_with_a_clear_message_and_writes_nothing(cli, home: Path, tmp_path: Path) -> None:
    before = counts(home)
    (tmp_path / "orders.csv").write_text("order_id,ordered_at\no1,2026-01-01\n")
    result = cli("ingest", str(tmp_path), ok=False)
    assert "orders.csv" in result.output and "total_amount" in result.output
    assert "Traceback" not in result.output
    assert counts(home) == before


def test_score_without_a_champion_fails_cleanly(cli, home: Path) -> None:
    result = cli("score", "--date", RUN_DATE, ok=False)
    assert "no champion" in result.output and "train" in result.output
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, f"one line for people (issue 16.7): {result.stderr}"
    log = home / "home" / "logs" / "aftersales.log"
    assert log.is_file() and str(log) in result.stderr and "no champion" in log.read_text()


def test_prefect_internal_errors_go_to_the_log_file_not_the_console(home: Path, prefect_api: None) -> None:
    """A command's console stays quiet when Prefect's own services log an error later in the run.

    CI once printed a ``prefect._internal.concurrency`` ERROR line beside the one-line refusal: a
    bare ``import prefect`` does not set up Prefect's logging, so the first ``from prefect import
    flow`` after the CLI quieted the console set it up again with a fresh stderr handler.
    """
    from prefect.settings import PREFECT_API_URL

    script = (
        "import logging\n"
        "from flows import cli\n"
        "cli._quiet_defaults()\n"
        "import flows.score  # the flows' imports, as a command makes them after start-up\n"
        "logging.getLogger('prefect._internal.concurrency').error('planted service failure')\n"
    )
    env = {**os.environ, "AFTERSALES_PATHS__HOME": str(home / "home"), "PREFECT_API_URL": PREFECT_API_URL.value()}
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "planted service failure" not in result.stderr + result.stdout
    assert "planted service failure" in (home / "home" / "logs" / "aftersales.log").read_text()


@pytest.mark.parametrize("args, said", [
    (("promote", "foo"), "unknown model 'foo'; choose from return, negative_review, churn"),
    (("ingest", "/no/such/dir"), "/no/such/dir is not a folder"),
    (("score", "--model", "nope"), "unknown model 'nope'"),
    (("score", "--date", "notadate"), "Invalid value for '--date'"),
    (("rollback",), "Missing argument"),
])
def test_user_errors_are_one_line_before_any_start_up(cli, args: tuple[str, ...], said: str) -> None:
    """Issue 11.5: no traceback, no log lines, exit code 2, and no Prefect server started first."""
    result = cli(*args, ok=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and said in result.stderr
    assert "starting the embedded" not in result.output and "Traceback" not in result.output


def test_train_registers_every_model_and_lists_them(cli, home: Path) -> None:
    out = cli("train").output
    for model in ("return", "negative_review", "churn"):
        assert model in out
    listing = cli("models").output
    for name in ("aftersales-return", "aftersales-negative-review", "aftersales-churn"):
        assert name in listing
    assert "champion" in listing and "challenger" in listing
    client = registry(home)
    names = ("aftersales-return", "aftersales-negative-review", "aftersales-churn")
    before = {name: len(client.search_model_versions(f"name = '{name}'")) for name in names}
    again = cli("train").output  # identical data and code: no new versions (issue 14.3), and no second fit
    after = {name: len(client.search_model_versions(f"name = '{name}'")) for name in names}
    assert after == before == dict.fromkeys(names, 1)
    for model in ("return", "negative_review", "churn"):
        assert f"{model}: identical to version 1" in again
    table = [line for line in out.splitlines() if line.split()[:1] in (["return"], ["negative_review"], ["churn"])]
    assert table and all(line in again for line in table), "the skipped fits report the registered metrics"


def test_models_fits_80_columns(cli) -> None:
    """Issue 14.9: aliases are never cut ("champ…"), no line is wider than the terminal."""
    listing = cli("models", extra_env={"COLUMNS": "80"}).stdout
    assert max(len(line) for line in listing.splitlines()) <= 80
    assert "champion" in listing.split() and "challenger" in listing.split()


def test_score_writes_one_list_per_day_and_rerun_replaces_it(cli, home: Path) -> None:
    out = cli("score", "--date", RUN_DATE).output
    assert "tasks" in out
    csv = home / "home" / "reports" / "tasks" / RUN_DATE / "tasks.csv"
    tasks = pd.read_csv(csv)
    assert len(tasks) > 0 and tasks["customer_id"].is_unique
    # where the scored rows went: the user sees how many cleared the probability floor, per model
    funnel = re.search(r"churn ([\d,]+) rows, ([\d,]+) at or above it", out)
    assert "probability floor 0.15 (scoring.min_probability)" in out and funnel, out
    scored, above = (int(n.replace(",", "")) for n in funnel.groups())
    assert scored >= above > 0
    steps = re.search(r"customers: ([\d,]+) above the floor → ([\d,]+) among each risk's best by probability × "
                      r"value \(scoring.explain_headroom × capacity\) → ([\d,]+) with a positive expected value → "
                      r"([\d,]+) not cooling down → ([\d,]+) held out as control → ([\d,]+) tasks within capacity", out)
    assert steps, out
    above_customers, considered, positive, fresh, control, listed = (int(n.replace(",", "")) for n in steps.groups())
    assert above_customers >= considered >= positive >= fresh >= control + listed and listed == len(tasks)
    assert above_customers >= above, "every churn row above the floor is a customer above it"
    assert not tasks["why"].str.contains("_").any(), "agents never read raw feature names"
    first = counts(home)["task_list"]
    cli("score", "--date", RUN_DATE)
    assert counts(home)["task_list"] == first
    pd.testing.assert_frame_equal(pd.read_csv(csv), tasks)


def test_scoring_follows_a_champion_moved_by_hand(cli, home: Path) -> None:
    cli("train", "--model", "return", extra_env={"AFTERSALES_TRAINING__XGB__MAX_DEPTH": "3"})  # a second version
    client = registry(home)
    challenger = str(client.get_model_version_by_alias("aftersales-return", "challenger").version)
    assert challenger != "1"
    assert str(client.get_model_version_by_alias("aftersales-return", "champion").version) == "1"
    client.set_registered_model_alias("aftersales-return", "champion", challenger)  # as in the MLflow UI
    cli("score", "--date", "2026-11-01")  # the last day of history: the orders delivered the day before are scored
    wh = Warehouse(home / "home" / "warehouse.duckdb")
    used = wh.query("SELECT run_date, model_version FROM scores WHERE risk = 'return' GROUP BY ALL")
    wh.close()
    by_day = dict(zip(used["run_date"].dt.strftime("%Y-%m-%d"), used["model_version"], strict=True))
    assert by_day[RUN_DATE] == "aftersales-return v1"
    assert by_day["2026-11-01"] == f"aftersales-return v{challenger}"
    history = cli("models").output
    assert "manual" in history
    back = cli("rollback", "return").output  # issue 14.4: the way back after a move in the UI
    assert f"champion is now v1 (was v{challenger}" in back
    assert str(client.get_model_version_by_alias("aftersales-return", "previous_champion").version) == challenger
    again = cli("promote", "return", "--to", challenger).output
    assert f"champion is now v{challenger}" in again


def test_uplift_waits_for_outcome_windows_to_close(cli, home: Path) -> None:
    out = cli("uplift").output
    assert "control" in out and "no outcome window has closed" in out
    assert (home / "home" / "reports" / "uplift").is_dir()


def test_backfill_produces_each_days_list(cli, home: Path) -> None:
    out = cli("score", "--from", "2026-10-20", "--to", "2026-10-21").output
    assert "2026-10-20" in out and "2026-10-21" in out
    for day in ("2026-10-20", "2026-10-21"):
        assert (home / "home" / "reports" / "tasks" / day / "tasks.csv").exists()


def test_an_empty_eligible_set_gives_an_empty_but_valid_list(cli, home: Path) -> None:
    out = cli("score", "--date", "2024-01-01").output  # before the shop existed
    assert "0 tasks" in out
    assert pd.read_csv(home / "home" / "reports" / "tasks" / "2024-01-01" / "tasks.csv").empty


def test_a_model_without_a_champion_is_skipped_and_named(cli, home: Path) -> None:
    """Issue 11.2: a shop whose return model has no champion (no returns export) still scores."""
    client = registry(home)
    champion = str(client.get_model_version_by_alias("aftersales-return", "champion").version)
    client.delete_registered_model_alias("aftersales-return", "champion")
    try:
        out = cli("score", "--date", "2026-11-04").output
    finally:
        client.set_registered_model_alias("aftersales-return", "champion", champion)
    assert "return not scored: no champion" in out and "tasks" in out
    only = cli("score", "--date", "2026-11-05", "--model", "churn").output
    assert "aftersales-churn" in only and "aftersales-return" not in only


def test_unreachable_registry_fails_cleanly(cli) -> None:
    """Issue 16.3: bounded tries, then the registry's address in words (not "no registered model")."""
    import time

    unreachable = {"AFTERSALES_MLFLOW__TRACKING_URI": "http://127.0.0.1:9",  # nothing listens there
                   "AFTERSALES_MLFLOW__REQUEST_BACKOFF_SECONDS": "0.2",
                   "AFTERSALES_PREFECT__RETRY_DELAY_SECONDS": "[1, 1]"}
    started = time.monotonic()
    result = cli("score", "--date", RUN_DATE, ok=False, extra_env=unreachable)
    assert "the registry at http://127.0.0.1:9 cannot be reached" in result.output
    assert "No registered model" not in result.output and "Traceback" not in result.output
    assert time.monotonic() - started < 300


def test_hints_name_commands_as_the_user_can_type_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh .venv is not on PATH: `mlflow ui ...` would be "command not found", `.venv/bin/mlflow ui` runs."""
    from flows.cli import runnable

    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "mlflow"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert runnable("mlflow") == ".venv/bin/mlflow"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert runnable("mlflow") == "mlflow", "an activated environment: the bare name"
    assert runnable("no-such-tool") == "no-such-tool"
