"""Progress bars for long work, quiet when nobody watches (CI, tests, schedulers)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def row_progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` callback; draws a bar only on an interactive terminal."""
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f} rows"),
               TimeElapsedColumn()]
    with Progress(*columns, transient=True) as progress:
        task_id = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task_id, n)


def step(number: int, total: int, what: str) -> None:
    """A long job's step begun, as one line (``step 2/4: ...``): printed by the CLI, logged by a run."""
    import logging

    logging.getLogger("aftersales.notice").info("step %d/%d: %s", number, total, what)
