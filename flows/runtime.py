"""Where flows run their tasks: threads on this machine, or a Dask cluster, by settings alone."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pandas as pd
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import NotSet

from schemas.settings import Settings


def task_runner(settings: Settings) -> Any:
    """The configured task runner; Dask only when asked for (its package is an optional extra)."""
    if settings.prefect.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise RuntimeError("task_runner = 'dask' needs: pip install 'aftersales[dask]'") from exc
        if settings.prefect.dask_address:
            return DaskTaskRunner(address=settings.prefect.dask_address)
        # worker processes would each start their own embedded Prefect server: threads instead
        return DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": settings.prefect.max_workers,
                                              "processes": False, "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=settings.prefect.max_workers)


def run_day(run_date: date | datetime | str | None) -> pd.Timestamp:
    """The day a run is for: the parameter, else the scheduled time in UTC (late runs and backfills
    produce what their date would have had), never the wall clock inside a task."""
    stamp = pd.Timestamp(run_date if run_date is not None else flow_run.scheduled_start_time)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.normalize()


# ---------------------------------------------------------------------------- retries, names, states


def is_transient(exc: BaseException) -> bool:
    """Failures worth another try after a pause: a warehouse locked by another program, an
    unreachable registry or webhook, a dropped connection. Bad input is never retried."""
    from tasks.data.warehouse import WarehouseBusyError
    from tasks.models.registry import RegistryUnreachableError

    return isinstance(exc, WarehouseBusyError | RegistryUnreachableError | ConnectionError | TimeoutError)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only what ``is_transient`` calls transient."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


def with_retries(task: Any, settings: Settings) -> Any:
    """The task with bounded retries and back-off for transient failures (``prefect.retries``)."""
    return task.with_options(retries=settings.prefect.retries,
                             retry_delay_seconds=list(settings.prefect.retry_delay_seconds),
                             retry_condition_fn=retry_transient)


def run_name(flow: str) -> Any:
    """A flow-run name callable: ``score-2026-11-02`` (+ ``-return`` when one model was asked for),
    from the run_date parameter, else the scheduled day, so runs are found by what they did."""

    def name() -> str:
        params = flow_run.parameters or {}
        day = params.get("run_date") or params.get("cutoff")
        try:
            label = f"{run_day(day):%Y-%m-%d}"
        except Exception:  # no date at all (outside a scheduled run)
            label = pd.Timestamp.now("UTC").strftime("%Y-%m-%d")
        models = params.get("models") or ([params["model"]] if params.get("model") else [])
        suffix = f"-{'-'.join(str(m).replace('_', '-') for m in models)}" if models and len(models) < 3 else ""
        return f"{flow}-{label}{suffix}"

    return name


# ---------------------------------------------------------------------- the embedded Prefect server

SERVER_RECORDS = "prefect-servers.json"


def _records_path(settings: Settings) -> Any:
    folder = settings.paths.home / "run"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / SERVER_RECORDS


def _same_process(pid: int, created: float) -> Any:
    """The live process ``pid`` if it is the one that started at ``created`` (pids get reused)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return process if abs(process.create_time() - created) < 1.0 else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def clean_leaked_servers(settings: Settings) -> list[int]:
    """Stop embedded Prefect servers recorded by earlier commands whose command is gone.

    Prefect stops its temporary server when the command exits normally; after ``kill -9`` it keeps
    running, re-parented and listening. Only servers this project recorded are touched.
    """
    import json

    from filelock import FileLock

    path = _records_path(settings)
    stopped = []
    with FileLock(f"{path}.lock", is_singleton=False):
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            records = []
        keep = []
        for record in records:
            server = _same_process(record["pid"], record["created"])
            if server is None:
                continue  # gone already
            if _same_process(record["parent"], record["parent_created"]) is not None:
                keep.append(record)  # its command still runs
                continue
            server.terminate()
            try:
                server.wait(timeout=10)
            except Exception:
                server.kill()
            stopped.append(record["pid"])
        path.write_text(json.dumps(keep), encoding="utf-8")
    return stopped


def start_embedded_server(settings: Settings) -> Any:
    """Start Prefect's temporary server now (the one the client would start on the first flow) and
    record its pid, port and parent in ``<home>/run``, so a later command can clean it up if this one
    is killed. None when a Prefect server is configured."""
    import json
    import os

    import psutil
    from filelock import FileLock
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if PREFECT_API_URL.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    if server.server_process is None:
        return server
    me = psutil.Process(os.getpid())
    child = psutil.Process(server.server_process.pid)
    record = {"pid": child.pid, "created": child.create_time(), "port": server.port, "parent": me.pid,
              "parent_created": me.create_time()}
    path = _records_path(settings)
    with FileLock(f"{path}.lock", is_singleton=False):
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            records = []
        path.write_text(json.dumps([*records, record]), encoding="utf-8")
    return server


def failure_reason(state: Any) -> str:
    """A failed run's reason in words: the exception's own message, not Prefect's wrapper text."""
    try:
        state.result()
    except Exception as exc:
        return str(exc).strip() or type(exc).__name__
    return state.message or "failed"


def run_flow_state(flow: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run a flow and give back its final state, still holding the value the flow returned.

    ``flow(..., return_state=True)`` gives the state the Prefect API answered with. When a loaded
    server commits the final transition but its answer is lost, the client's retry is rejected as
    "already made this transition" and answered with the stored state, which holds no data:
    ``.result()`` then raises MissingResult for a run that completed. This runs the flow as
    Prefect's own ``run_flow_sync`` does and takes the value the engine kept back into a completed
    state the API left empty (Prefect is pinned; the lost-answer test fails if that changes)."""
    from prefect.flow_engine import FlowRunEngine
    from prefect.states import State
    from prefect.utilities.callables import get_call_parameters

    engine = FlowRunEngine(flow=flow, parameters=get_call_parameters(flow.fn, args, kwargs))
    with engine.start():
        while engine.is_running():
            with engine.run_context():
                engine.call_flow_fn()
    state, returned = engine.state, engine._return_value
    if state.is_completed() and state.data is None and returned is not NotSet:
        state = state.model_copy(update={"data": returned.data if isinstance(returned, State) else returned})
    return state
