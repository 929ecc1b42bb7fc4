"""Guards around shared state (the warehouse file, a registered model's aliases): wait, never crash.

Two layers, both kept libraries rather than hand-written ``fcntl`` code:

* **this machine**: a ``filelock`` lock file beside the state. Readers share it
  (``ReadWriteLock``), a writer holds it alone. It is an operating-system lock, so a process
  killed with ``kill -9`` releases it at once: no stale lock to clean up by hand.
* **every machine of a Prefect server**: a Prefect global concurrency limit of the same name
  (``aftersales-warehouse``, ``aftersales-registry``), created by the deploy step
  (``flows/deployments.py: ensure_concurrency_limits``). A writer occupies every slot, a reader
  one; the holder renews a lease, so slots of a killed run come back after
  ``prefect.lock_lease_seconds``. The Prefect UI shows who holds them (Concurrency page).

A guard that must wait says so once, in the log and the Prefect run log, with who holds it, then
waits up to ``prefect.lock_wait_seconds``. The same thread may nest guards of one name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, ReadWriteLock, Timeout

from schemas.settings import Settings

log = logging.getLogger(__name__)
notice = logging.getLogger("aftersales.notice")  # the CLI prints these lines; a run logs them too
_held = threading.local()
_limits_seen: dict[tuple[str, str], bool] = {}


class LockTimeoutError(RuntimeError):
    """Waited ``prefect.lock_wait_seconds`` and the guard is still held by someone else."""


def limit_name(settings: Settings, name: str) -> str:
    """The Prefect global concurrency limit guarding ``name`` on a server."""
    return f"{settings.prefect.limit_prefix}{name}"


def lock_folder(settings: Settings) -> Path:
    folder = settings.paths.home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _holder_file(settings: Settings, name: str) -> Path:
    return lock_folder(settings) / f"{name}.holder.json"


def _whoami(what: str) -> dict[str, Any]:
    program = Path(sys.argv[0]).stem if sys.argv else "python"
    program = "aftersales" if program in ("cli", "aftersales") else program
    me: dict[str, Any] = {"pid": os.getpid(), "what": what or " ".join([program, *sys.argv[1:3]]),
                          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    if "prefect" not in sys.modules:
        return me
    with contextlib.suppress(Exception):
        from prefect.runtime import flow_run

        if flow_run.id:
            me["flow_run"] = f"{flow_run.flow_name}/{flow_run.name}"
    return me


def describe_holder(settings: Settings, name: str) -> str:
    """Who holds a guard, as far as this machine knows (the last writer that said so and still lives)."""
    path = _holder_file(settings, name)
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "another run"
    pid = holder.get("pid")
    try:
        import psutil

        alive = bool(pid) and psutil.pid_exists(int(pid))
    except (ImportError, ValueError):
        alive = True
    if not alive:
        return "another run"
    run = holder.get("flow_run")
    return f"{run or holder.get('what')} (pid {pid}, since {holder.get('since')})"


def _notice(message: str) -> None:
    """Once per wait: the notice log (the CLI prints it) and the Prefect run log (the UI shows it)."""
    notice.warning(message)
    if "prefect" not in sys.modules:
        return
    with contextlib.suppress(Exception):
        from prefect.context import FlowRunContext, TaskRunContext
        from prefect.logging import get_run_logger

        if FlowRunContext.get() or TaskRunContext.get():
            get_run_logger().warning(message)


def _server_limit(settings: Settings, name: str | None) -> str | None:
    """The global concurrency limit's name when a Prefect server is configured and has it."""
    if name is None:
        return None
    if "prefect" not in sys.modules and not os.environ.get("PREFECT_API_URL"):
        return None  # a plain read (``aftersales models``) does not load Prefect to find no server
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return None
    limit = limit_name(settings, name)
    key = (url, limit)
    if not _limits_seen.get(key):  # only a limit found is remembered: the deploy step may create it later
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        try:
            with get_client(sync_client=True) as client:
                client.read_global_concurrency_limit_by_name(limit)
            _limits_seen[key] = True
        except ObjectNotFound:
            if key not in _limits_seen:  # said once per process
                log.warning("the Prefect server has no concurrency limit %r: runs on other machines are not kept "
                            "apart (create it with `aftersales serve` or deploy/README.md); this machine still is",
                            limit)
            _limits_seen[key] = False
    return limit if _limits_seen[key] else None


def _limit_busy(limit: str, occupy: int) -> bool:
    """Whether the server's limit has fewer free slots than asked for (unknown: busy)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            found = client.read_global_concurrency_limit_by_name(limit)
    except Exception:  # the notice is a courtesy: any doubt says it
        return True
    return (found.active_slots or 0) + occupy > found.limit


@contextlib.contextmanager
def _server_slots(settings: Settings, name: str | None, shared: bool, label: str) -> Iterator[None]:
    limit = _server_limit(settings, name)
    if limit is None:
        yield
        return
    from prefect.concurrency.sync import concurrency

    cfg = settings.prefect
    occupy = 1 if shared else cfg.warehouse_slots if name == "warehouse" else 1
    # One acquisition, never a short first try: a try that times out while its request is in flight
    # leaves the slots the server granted with nobody to release them (a test server never takes them
    # back; a real one after the lease). CI once hung an hour on such a leak.
    if _limit_busy(limit, occupy):
        _notice(f"waiting for {label}: another run holds the Prefect concurrency limit {limit!r}; "
                f"waiting up to {cfg.lock_wait_seconds:.0f} s")
    entered = False
    try:
        with concurrency(limit, occupy=occupy, timeout_seconds=cfg.lock_wait_seconds,
                         lease_duration=cfg.lock_lease_seconds, strict=True):
            entered = True
            yield
    except TimeoutError as exc:
        if entered:  # the guarded work's own timeout, not the wait
            raise
        raise LockTimeoutError(f"{label} is still busy after {cfg.lock_wait_seconds:.0f} s (Prefect concurrency "
                               f"limit {limit!r}); try again later") from exc


@contextlib.contextmanager
def _local(settings: Settings, name: str, shared: bool, label: str) -> Iterator[None]:
    """The lock file on this machine, held for the block: shared or exclusive (warehouse), else exclusive."""
    path = lock_folder(settings) / f"{name}.lock"
    wait = settings.prefect.lock_wait_seconds
    lock: Any
    if name == "warehouse":
        lock = ReadWriteLock(path, is_singleton=False)
        acquire = lock.acquire_read if shared else lock.acquire_write
    else:
        lock = FileLock(path, thread_local=False, is_singleton=False)
        acquire = lock.acquire
    try:
        acquire(timeout=0, blocking=False)
    except Timeout:
        _notice(f"waiting for {label}: held by {describe_holder(settings, name)}; waiting up to {wait:.0f} s")
        try:
            acquire(timeout=wait)
        except Timeout as exc:
            raise LockTimeoutError(f"{label} is still held by {describe_holder(settings, name)} after "
                                   f"{wait:.0f} s; try again later") from exc
    try:
        yield
    finally:
        lock.release()
        if isinstance(lock, ReadWriteLock):
            lock.close()


@contextlib.contextmanager
def hold(settings: Settings, name: str, *, shared: bool = False, label: str | None = None,
         what: str = "", limit: str | None = "") -> Iterator[None]:
    """Hold the guard ``name`` (shared for readers) for the length of the block, waiting visibly.

    ``limit`` names the server's concurrency limit (default: ``name``; None: this machine only).
    Nested holds of one name in one thread pass through (a write hold covers a nested read).
    """
    label = label or f"the {name}"
    depth: dict[str, str] = getattr(_held, "names", None) or {}
    _held.names = depth
    if name in depth:
        if depth[name] == "read" and not shared:
            raise RuntimeError(f"{label}: a write guard requested while this thread holds it for reading")
        yield
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(_server_slots(settings, name if limit == "" else limit, shared, label))
        stack.enter_context(_local(settings, name, shared, label))
        depth[name] = "read" if shared else "write"
        if not shared:
            _holder_file(settings, name).write_text(json.dumps(_whoami(what)), encoding="utf-8")
        try:
            yield
        finally:
            del depth[name]
