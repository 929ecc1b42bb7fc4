"""Overlapping runs wait for each other instead of failing on DuckDB's file lock (issues 14.1, 14.2),
and a killed command's embedded Prefect server is cleaned up by the next one (issue 16.5).

Real processes: ``aftersales`` commands in subprocesses, a real DuckDB file, real lock files, a real
Prefect test server for the global concurrency limit, and a real ``kill -9``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest

from schemas.settings import Settings
from tasks.data.warehouse import Warehouse, WarehouseBusyError, open_warehouse
from tasks.locks import LockTimeoutError, hold

PROJECT = Path(__file__).resolve().parents[1]


def write_shop(folder: Path, customers: int = 30) -> Path:
    """A tiny valid export: customers and their orders."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"C{i}" for i in range(customers)]
    pd.DataFrame({"customer_id": ids}).to_csv(folder / "customers.csv", index=False)
    pd.DataFrame({"order_id": [f"O{i}" for i in range(customers)], "customer_id": ids,
                  "ordered_at": "2026-01-05 10:00:00", "total_amount": 20.0}).to_csv(folder / "orders.csv", index=False)
    return folder


def cli(home: Path, *args: str, prefect_home: Path, extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"AFTERSALES_PATHS__HOME": str(home), "PREFECT_HOME": str(prefect_home), "COLUMNS": "200",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "900", **(extra or {})}
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=home.parent, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_two_ingests_at_once_both_load_one_after_the_other(home: Path, tmp_path: Path) -> None:
    """The overlapping-runs case: while the warehouse is busy (held here, as a running flow would),
    two `aftersales ingest` commands start; both wait, saying so, then both succeed."""
    settings = Settings(paths={"home": home})
    shop = write_shop(tmp_path / "shop")
    logs = tmp_path / "logs"
    logs.mkdir()
    runs: list = []
    try:
        _two_ingests(settings, shop, logs, home, tmp_path, runs)
    finally:
        for process, err in runs:
            process.kill()
            err.close()


def _two_ingests(settings: Settings, shop: Path, logs: Path, home: Path, tmp_path: Path, runs: list) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"AFTERSALES_PATHS__HOME": str(home), "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "900"}  # two embedded servers on 2 busy cores

    def waiting(i: int) -> bool:
        process = runs[i][0]
        if process.poll() is not None:  # ended while the warehouse was held: it failed
            raise AssertionError(f"command {i} ended early: {(logs / f'{i}.err').read_text()[-2000:]}")
        return "waiting for the warehouse" in (logs / f"{i}.err").read_text()

    with hold(settings, "warehouse", label="the warehouse"):
        for i in range(2):  # one after the other: two fresh embedded servers migrating one DB would race
            err = open(logs / f"{i}.err", "w")  # noqa: SIM115 (closed by the caller)
            runs.append((subprocess.Popen([sys.executable, "-m", "flows.cli", "ingest", str(shop),
                                           *(["--force"] if i else [])], cwd=tmp_path, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=err), err))
            wait_for(lambda i=i: waiting(i), 900, f"command {i} to say it waits")
        assert waiting(0) and waiting(1), "both wait at the same time"
    outputs = []
    for (process, err), i in zip(runs, range(2), strict=True):
        out, _ = process.communicate(timeout=900)
        err.flush()
        text = out + (logs / f"{i}.err").read_text()
        outputs.append(text)
        assert process.returncode == 0, text
        assert "Could not set lock" not in text and "Traceback" not in text
    wh = Warehouse(home / "warehouse.duckdb", read_only=True)
    try:
        assert wh.row_count("orders") == 30
    finally:
        wh.close()


def test_readers_share_the_warehouse_and_a_writer_waits_for_them(home: Path) -> None:
    settings = Settings(paths={"home": home})
    with open_warehouse(settings) as wh:
        wh.replace_table("t", pd.DataFrame({"a": [1]}))
    order: list[str] = []
    with open_warehouse(settings, read_only=True) as first, open_warehouse(settings, read_only=True) as second:
        assert first.scalar("SELECT a FROM t") == second.scalar("SELECT a FROM t") == 1

        def write() -> None:
            with open_warehouse(settings) as wh:
                order.append("writer")
                wh.replace_table("t", pd.DataFrame({"a": [2]}))

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(2)
        order.append("readers done")
    writer.join(60)
    assert order == ["readers done", "writer"]


def test_a_guard_that_stays_busy_fails_with_who_holds_it(home: Path) -> None:
    settings = Settings(paths={"home": home}, prefect={"lock_wait_seconds": 1})
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from schemas.settings import Settings; from tasks.locks import hold\n"
        f"s = Settings(paths={{'home': {str(home)!r}}})\n"
        "with hold(s, 'warehouse', what='a nightly job'):\n"
        "    print('held', flush=True); time.sleep(60)")], cwd=PROJECT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeoutError, match=r"still held by a nightly job \(pid \d+"), \
                hold(settings, "warehouse", label="the warehouse"):
            pass
        holder.send_signal(signal.SIGKILL)  # the OS frees the lock of a killed holder at once
        holder.wait(10)
        with hold(settings, "warehouse", label="the warehouse"):
            pass
    finally:
        holder.kill()


def test_a_file_locked_by_another_program_is_retried_then_named(home: Path) -> None:
    settings = Settings(paths={"home": home}, warehouse={"open_retries": 1, "open_retry_seconds": 0.2})
    Warehouse(home / "warehouse.duckdb").close()
    other = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, time\n"
        f"con = duckdb.connect({str(home / 'warehouse.duckdb')!r})\n"
        "print('open', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "open"
        with pytest.raises(WarehouseBusyError, match="locked by another program after 2 tries"), \
                open_warehouse(settings):
            pass
    finally:
        other.kill()
        other.wait(10)


@pytest.fixture
def server_limits(home: Path, prefect_api: None) -> Iterator[Settings]:
    """Settings whose concurrency limits exist on the session's test server under a name of their own,
    deleted afterwards: limits left behind would send every later test's writer through them."""
    from prefect.client.orchestration import get_client

    from flows.deployments import ensure_concurrency_limits

    settings = Settings(paths={"home": home}, prefect={"limit_prefix": f"test-{uuid.uuid4().hex[:8]}-"})
    limits = ensure_concurrency_limits(settings)
    yield settings
    with get_client(sync_client=True) as client:
        for name in limits:
            client.delete_global_concurrency_limit_by_name(name)


def test_on_a_prefect_server_the_global_concurrency_limit_queues_writers(server_limits: Settings) -> None:
    """With the limit the deploy step creates, a writer waits while another run holds the slots
    (a run on another machine would do so through the same server)."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    from flows.deployments import ensure_concurrency_limits

    settings = server_limits
    prefix = settings.prefect.limit_prefix
    assert ensure_concurrency_limits(settings) == {f"{prefix}warehouse": settings.prefect.warehouse_slots,
                                                   f"{prefix}registry": 1}  # twice: still one of each
    entered = threading.Event()

    def writer() -> None:
        with open_warehouse(settings) as wh:
            entered.set()
            wh.replace_table("t", pd.DataFrame({"a": [1]}))

    with concurrency(f"{prefix}warehouse", occupy=settings.prefect.warehouse_slots, strict=True):
        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(4)
        assert not entered.is_set(), "the writer waits for the server's slots"
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(f"{prefix}warehouse")
        assert limit.active_slots == settings.prefect.warehouse_slots
    thread.join(120)
    assert entered.is_set()


def test_the_waiting_notice_is_said_only_while_the_servers_slots_are_held(server_limits: Settings) -> None:
    """A first try that times out on a slow server is not "another run holds" (CI once said so)."""
    from prefect.concurrency.sync import concurrency

    from tasks.locks import _limit_busy

    settings = server_limits
    limit = f"{settings.prefect.limit_prefix}warehouse"
    assert not _limit_busy(limit, 1)
    assert settings.prefect.warehouse_slots > 1
    with concurrency(limit, occupy=1, strict=True):  # a reader holds one slot
        assert not _limit_busy(limit, 1), "another reader enters at once"
        assert _limit_busy(limit, settings.prefect.warehouse_slots), "a writer waits"
    assert _limit_busy("aftersales-no-such-limit", 1), "unknown: the notice is said"


def test_a_slow_servers_grant_is_not_leaked(server_limits: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI once hung an hour: a 1-s first try timed out while the server was granting the slots, nobody
    released them, and the test server never takes expired leases back. Every grant here answers 1.5 s late."""
    import asyncio

    from prefect.client.orchestration import PrefectClient, get_client

    grant = PrefectClient.increment_concurrency_slots_with_lease

    async def late_grant(self, *args, **kwargs):
        answer = await grant(self, *args, **kwargs)
        await asyncio.sleep(1.5)
        return answer

    monkeypatch.setattr(PrefectClient, "increment_concurrency_slots_with_lease", late_grant)
    settings = server_limits.model_copy(update={"prefect": server_limits.prefect.model_copy(
        update={"lock_wait_seconds": 20.0})})
    for _ in range(2):  # the second writer finds every slot free again
        with open_warehouse(settings) as wh:
            wh.replace_table("t", pd.DataFrame({"a": [1]}))
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(f"{settings.prefect.limit_prefix}warehouse")
    assert (limit.active_slots or 0) == 0


@pytest.fixture
def lost_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loaded server that commits a run's final state but whose answer is lost: the client sends the
    same request again, as its retry does, and the server answers with the state it stored."""
    from prefect.client.orchestration.base import BaseClient

    send = BaseClient.request

    def request(self, method, path, params=None, path_params=None, **kwargs):
        answer = send(self, method, path, params=params, path_params=path_params, **kwargs)
        if path == "/flow_runs/{id}/set_state" and kwargs.get("json", {}).get("state", {}).get("type") == "COMPLETED":
            answer = send(self, method, path, params=params, path_params=path_params, **kwargs)
        return answer

    monkeypatch.setattr(BaseClient, "request", request)


def test_a_completed_run_keeps_its_value_when_the_servers_answer_was_lost(prefect_api: None, lost_answers) -> None:
    """CI once failed `aftersales monitor` with MissingResult: the API's copy of a completed state has no data."""
    import typer
    from prefect import flow
    from prefect.exceptions import MissingResult
    from prefect.states import Completed

    from flows.cli import _run
    from flows.runtime import run_flow_state

    @flow
    def summary(tasks: int) -> dict:
        return {"tasks": tasks}

    @flow
    def broken() -> None:
        raise ValueError("orders.csv row 7, column ordered_at: not a date")

    @flow
    def flagged() -> Completed:  # a named state with a value, as the score flow ships a flagged list
        return Completed(name="Flagged", data={"tasks": 5}, message="task list shipped flagged")

    with pytest.raises(MissingResult):  # what Prefect's own return_state gives on such a server
        summary(3, return_state=True).result()
    assert run_flow_state(summary, 3).result() == {"tasks": 3}
    assert _run("scoring", summary, tasks=4) == {"tasks": 4}
    shipped = run_flow_state(flagged)
    assert shipped.name == "Flagged" and shipped.message == "task list shipped flagged"
    assert shipped.result() == {"tasks": 5}
    failed = run_flow_state(broken)
    assert failed.is_failed() and "row 7, column ordered_at" in failed.message
    with pytest.raises(ValueError, match="row 7"):
        failed.result()
    with pytest.raises(typer.Exit):
        _run("ingestion", broken)


def test_a_killed_commands_embedded_server_is_stopped_by_the_next_start(home: Path, tmp_path: Path) -> None:
    """kill -9 of a command leaves its embedded Prefect server running, re-parented; the next
    command's start-up stops it (it was recorded with its pid, port and parent in <home>/run)."""
    import json

    from flows.runtime import clean_leaked_servers

    settings = Settings(paths={"home": home})
    shop = write_shop(tmp_path / "shop")
    server_pid = None
    with hold(settings, "warehouse", label="the warehouse"):  # keeps the command running once started
        process = cli(home, "ingest", str(shop), prefect_home=tmp_path / "prefect")
        records = home / "run" / "prefect-servers.json"

        def recorded() -> bool:
            try:
                return any(r["parent"] == process.pid for r in json.loads(records.read_text()))
            except (OSError, ValueError):
                return False

        try:
            wait_for(recorded, 600, "the embedded server to be recorded")
            server_pid = next(r["pid"] for r in json.loads(records.read_text()) if r["parent"] == process.pid)
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            time.sleep(1)
            assert psutil.pid_exists(server_pid), "Prefect does not stop its server after kill -9"
            assert clean_leaked_servers(settings) == [server_pid]
            wait_for(lambda: not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == "zombie",
                     30, "the leaked server to stop")
            assert clean_leaked_servers(settings) == []
        finally:
            process.kill()
            if server_pid and psutil.pid_exists(server_pid):
                psutil.Process(server_pid).kill()
