"""Setup and probes of the benchmarks run in spawned child processes that end with their parent.

Why: a benchmark stopped by Ctrl-C or ``kill`` left its spawned child training models for an hour on
the machine's two cores, slowing every figure measured after it. A child here watches its parent's
sentinel (readable once the parent is gone, however it ended) and exits then.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

SPAWN = multiprocessing.get_context("spawn")


def _exit_when_parent_ends(sentinel: int) -> None:
    wait([sentinel])
    os._exit(1)


def with_parent(target: Callable[..., Any], *args: Any) -> Any:
    """Run ``target(*args)`` in this child, which exits as soon as its parent process has ended."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_when_parent_ends, args=(parent.sentinel,), daemon=True).start()
    return target(*args)


def in_child(target: Callable[..., None], *args: Any) -> float:
    """Run ``target`` in a fresh process (its memory and threads stay out of the figures); wall seconds."""
    started = time.perf_counter()
    child = SPAWN.Process(target=with_parent, args=(target, *args))
    child.start()
    child.join()
    if child.exitcode:
        raise SystemExit(f"setup failed in a child process (exit code {child.exitcode})")
    return time.perf_counter() - started
