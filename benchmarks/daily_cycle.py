"""The daily cycle of a shop of N customers, stage by stage: one day's delta ingested, featured, scored,
listed and monitored, as the scheduled flows run it, with wall and CPU seconds and peak memory.

    .venv/bin/python benchmarks/daily_cycle.py                       # 1,000,000 customers (setup ~30+ min once)
    .venv/bin/python benchmarks/daily_cycle.py --customers 300000    # smaller shop
    .venv/bin/python benchmarks/daily_cycle.py --cache DIR           # where the shop + trained home are kept
    .venv/bin/python benchmarks/daily_cycle.py --smoke               # a few hundred customers (the test suite)

**The delta, from the generator's own code.** The generator writes a shop whose history ends with
``generator.end_date`` (D). That one shop is split at the start of D (``split_shop``):

- *setup batch* (as of D 00:00): every row created before D (orders by ``ordered_at``, lines by their
  order's, returns ``requested_at``, tickets ``opened_at``, reviews ``created_at``, events
  ``occurred_at``, customers ``signup_at``, products ``launched_at``), with the facts that only
  happen on D removed, as an export taken at D 00:00 would show them: a delivery, shipment, refund,
  first response or resolution stamped on D is empty, the status says what was known (``shipped``
  / ``placed``, ``approved``), ``updated_at`` is just before D;
- *the day's delta* (as of D+1 00:00): the rows created on D, plus the full current row of every order,
  return and ticket that changed on D (delivered, shipped, refunded, answered, resolved), which the
  ingest merges by key over the old version (newer ``updated_at``). Dirty rows of the generator
  fall on either side by their own timestamps and are quarantined where they land.

**Setup** (once, cached under ``--cache``; timed and reported apart, in a child process so its memory
does not count): generate, split, ingest the setup batch, train and register the three models with
the train flow's per-model body. Before each timed cycle the warehouse is restored from the copy
made after setup, so the cycle always ingests the same delta into the same warehouse.

**The timed cycle** runs inside one Prefect flow run (embedded server), each stage calling the
functions the scheduled flows call, in their order:

1. ingest delta  ``ingest_batch`` (the ingest flow's ``load_batch``) on the delta folder;
2. features      ``scoring_frames`` at the run date D+1 (the score flow's ``build_features``: one pass
                 for the two order models, one for churn);
3. score         ``score_model`` of each champion on those frames (signature check, pyfunc predict,
                 risk, value at stake); ``bare`` = ``booster.inplace_predict`` on the same rows prepared;
4. list          ``score_populations`` (scores written, tags, candidates explained), the drift gate,
                 ``load_history``, ``build_task_list_task``, ``record_task_risks_task``,
                 ``write_task_list_task`` (the score flow's steps after scoring);
5. monitor       ``check_drift_task``, ``realised_performance_task``, ``decide_retrain``, ``write_report``
                 (the monitor flow without ``trigger``: a retrain it may start is the weekly job's cost).

Per stage: wall and CPU seconds (this process and its children, the Prefect server included) and
peak RSS of the process tree (psutil, sampled every 50 ms). Ratios beside their limits (issue 15):
ingest against reading the same delta files alone; features + score + list against bare
``inplace_predict`` on the same rows. Target: the cycle in <= 5 min and <= 8 GiB. Quote the load
average printed with the figures (the machine's 2 cores are shared).

**Steady state or first morning.** The drift gate pools the order models' populations of the last
``monitoring.drift_pool_days`` run dates; each scoring run keeps its own day, so a steady morning
computes only today's. The first cycle after setup has none kept and computes the earlier days too
(one feature pass a day for both order models); later cycles find them. ``--first-morning`` removes
the kept days before the cycle to time that morning again; the report says which was timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from benchmarks._children import in_child
from schemas.settings import Settings, reset_settings_cache

TARGET_SECONDS = 300.0
TARGET_GIB = 8.0
BATCH_MANIFEST = "_batch.json"

# the timestamp that says when a row came into being (order lines: their order's)
CREATED = {"customers": "signup_at", "products": "launched_at", "orders": "ordered_at", "returns": "requested_at",
           "tickets": "opened_at", "reviews": "created_at", "events": "occurred_at"}


def quiet() -> None:
    """MLflow, Prefect and pandera chatter would bury the figures."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DISABLE_PANDERA_IMPORT_WARNING", "True")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")  # shared cores
    warnings.filterwarnings("ignore")
    for name in ("mlflow", "alembic", "prefect", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ------------------------------------------------------------------------------- the day's delta


def _ts(column: str, kind: str) -> str:
    """A column as a timestamp: dirty exports hold text in timestamp columns (NULL when unparseable)."""
    return f'TRY_CAST("{column}" AS TIMESTAMP)' if "TIMESTAMP" not in kind else f'"{column}"'


def split_shop(full: Path, setup_dir: Path, delta_dir: Path, day: pd.Timestamp) -> dict[str, tuple[int, int]]:
    """Split a generated shop at the start of ``day``: (setup rows, delta rows) per table. See the module doc."""
    import duckdb

    from schemas.sources import TABLES

    start = f"TIMESTAMP '{day:%Y-%m-%d %H:%M:%S}'"
    before = f"TIMESTAMP '{day - pd.Timedelta(seconds=1):%Y-%m-%d %H:%M:%S}'"
    setup_dir.mkdir(parents=True, exist_ok=True)
    delta_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    counts: dict[str, tuple[int, int]] = {}
    files = {p.stem: p for p in sorted(full.glob("*.parquet"))}
    for table, path in files.items():
        kinds = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM "
                                 f"read_parquet('{path}'))").fetchall())
        later = [c for c in TABLES[table].timestamp_columns
                 if c in kinds and c != CREATED.get(table) and c not in TABLES[table].future_allowed]
        if table == "order_items":
            orders = files["orders"]
            kind = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM "
                                    f"read_parquet('{orders}'))").fetchall())["ordered_at"]
            source = (f"(SELECT i.*, o._created FROM read_parquet('{path}') i LEFT JOIN (SELECT order_id, "
                      f"min({_ts('ordered_at', kind)}) AS _created FROM read_parquet('{orders}') GROUP BY order_id) o "
                      f"USING (order_id))")
        else:
            created = CREATED[table]
            source = f"(SELECT *, {_ts(created, kinds[created])} AS _created FROM read_parquet('{path}'))"
        is_new = f"coalesce(_created >= {start}, false)"
        def on_day(c: str, kinds: dict[str, str] = kinds) -> str:  # the fact happened on the delta day or later
            return f"coalesce({_ts(c, kinds[c])} >= {start}, false)"

        changed = " OR ".join(on_day(c) for c in later) or "false"
        masked = {c: f'CASE WHEN {on_day(c)} THEN '
                     f'{f"CAST({before} AS {kinds[c]})" if c == "updated_at" else "NULL"} ELSE "{c}" END'
                  for c in later}
        if table == "orders":  # what the status said before the masked delivery / shipment
            masked["status"] = (f"CASE WHEN status = 'delivered' AND {on_day('delivered_at')} THEN CASE WHEN "
                                f"{on_day('shipped_at')} THEN 'placed' ELSE 'shipped' END "
                                f"WHEN status = 'shipped' AND {on_day('shipped_at')} THEN 'placed' ELSE status END")
        elif table == "returns":
            masked["status"] = (f"CASE WHEN status = 'refunded' AND {on_day('refunded_at')} THEN 'approved' "
                                "ELSE status END")
        elif table == "tickets":
            masked["satisfaction"] = f"CASE WHEN {on_day('resolved_at')} THEN NULL ELSE satisfaction END"
        columns = ", ".join(f'{masked[c]} AS "{c}"' if c in masked else f'"{c}"' for c in kinds)
        plain = ", ".join(f'"{c}"' for c in kinds)
        con.execute(f"COPY (SELECT {columns} FROM {source} WHERE NOT {is_new}) TO '{setup_dir / path.name}' "
                    "(FORMAT parquet)")
        con.execute(f"COPY (SELECT {plain} FROM {source} WHERE {is_new} OR ({changed})) TO "
                    f"'{delta_dir / path.name}' (FORMAT parquet)")
        counts[table] = tuple(con.execute(f"SELECT count(*) FROM read_parquet('{d / path.name}')").fetchone()[0]
                              for d in (setup_dir, delta_dir))
    con.close()
    for folder, at in ((setup_dir, day), (delta_dir, day + pd.Timedelta(days=1))):
        (folder / BATCH_MANIFEST).write_text(json.dumps({"exported_at": f"{at:%Y-%m-%dT%H:%M:%S}",
                                                         "source": "aftersales synthetic shop, split by day"}))
    return counts


# ------------------------------------------------------------------------------------- setup


def setup(cache: Path, customers: int, seed: int) -> None:
    """Generate, split, ingest the setup batch, train and register; runs in a child process."""
    quiet()
    home = cache / "home"
    os.environ["AFTERSALES_PATHS__HOME"] = str(home)
    reset_settings_cache()
    from tasks.data.ingest import ingest_batch
    from tasks.data.synthetic import generate_shop
    from tasks.data.warehouse import Warehouse

    settings = Settings(paths={"home": home})
    day = pd.Timestamp(settings.generator.end_date)
    full, setup_dir, delta_dir = cache / "full", cache / "setup", cache / "delta"
    if not (delta_dir / BATCH_MANIFEST).exists():
        started = time.perf_counter()
        generate_shop(full, customers=customers, seed=seed, end_date=settings.generator.end_date)
        print(f"setup  generated {customers:,} customers in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        counts = split_shop(full, setup_dir, delta_dir, day)
        shutil.rmtree(full)
        print(f"setup  split at {day:%Y-%m-%d} in {time.perf_counter() - started:.0f} s: "
              + ", ".join(f"{t} {a:,}+{b:,}" for t, (a, b) in counts.items()), flush=True)
    wh = Warehouse(settings.warehouse_path, memory_limit=settings.warehouse.memory_limit)
    try:
        started = time.perf_counter()
        result = ingest_batch(setup_dir, wh, settings)
        print(f"setup  ingested {result.rows_in:,} rows ({result.rows_quarantined:,} quarantined) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    finally:
        wh.close()
    from flows.train import train_and_register

    for model in settings.training.models:
        started = time.perf_counter()
        out = train_and_register.fn(model, settings)
        if "skipped" in out:
            raise SystemExit(f"{model} could not be trained: {out['skipped']}")
        print(f"setup  trained {model} v{out['version']} on {out['rows']['train']:,} rows in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    shutil.copyfile(settings.warehouse_path, cache / "warehouse.after-setup.duckdb")


# ---------------------------------------------------------------------------------- measuring


def _tree_cpu() -> float:
    """CPU seconds of this process and its live children (the embedded Prefect server among them)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


class PeakRss:
    """Peak resident memory of this process tree, sampled in a thread while a stage runs."""

    def __init__(self, every: float = 0.05) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self.peak = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


@dataclass
class Stage:
    name: str
    rows: int
    wall: float
    cpu: float
    peak: int
    note: str = ""

    def line(self) -> str:
        return (f"{self.name:<16} {self.rows:>11,} {self.wall:>9.2f} {self.cpu:>9.2f} {self.peak / 1024**3:>9.2f}   "
                f"{self.note}")


def measure(name: str, fn: Callable[[], Any], rows: Callable[[Any], int] = lambda _: 0,
            note: Callable[[Any], str] = lambda _: "") -> tuple[Any, Stage]:
    """Run one stage: its result and its wall, CPU (process tree) and peak RSS."""
    wall, cpu = time.perf_counter(), _tree_cpu()
    with PeakRss() as rss:
        out = fn()
    return out, Stage(name, rows(out), time.perf_counter() - wall, _tree_cpu() - cpu, rss.peak, note(out))


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cpus"


# ----------------------------------------------------------------------------------- the cycle


def cycle(delta_dir: Path, run_date: pd.Timestamp, chunk_rows: int) -> list[Stage]:
    """The timed daily cycle (inside a Prefect flow run, so the tasks' loggers work as in the flows)."""
    from benchmarks.ingest import read_rows
    from flows.monitor import decide_retrain, write_report
    from flows.score import score_populations
    from schemas.settings import get_settings
    from tasks.care.export import record_task_risks_task
    from tasks.care.interventions import build_task_list_task, load_history, write_task_list_task
    from tasks.data.ingest import ingest_batch
    from tasks.data.warehouse import open_warehouse
    from tasks.models import scoring
    from tasks.models.datasets import feature_columns, scoring_frames
    from tasks.monitoring.checks import check_drift_task, drift_gate_task, realised_performance_task

    settings = get_settings()
    models = list(settings.training.models)
    champions, _ = scoring.find_champions(settings, models)
    stages: list[Stage] = []

    started = time.perf_counter()
    read_rows(delta_dir, chunk_rows, to_pandas=False)  # reading alone, Arrow batches: the ingest benchmark's floor
    read_s = time.perf_counter() - started

    def ingest() -> Any:
        with open_warehouse(settings) as wh:
            return ingest_batch(delta_dir, wh, settings)

    batch, stage = measure("ingest delta", ingest, lambda r: r.rows_in)
    stage.note = (f"{batch.rows_quarantined:,} quarantined, {sum(f.inserted for f in batch.files):,} inserted, "
                  f"{sum(f.updated for f in batch.files):,} updated; reading alone {read_s:.2f} s: "
                  f"x{stage.wall / max(read_s, 1e-9):.1f}")
    stages.append(stage)

    def features() -> dict[str, pd.DataFrame]:
        with open_warehouse(settings, read_only=True) as wh:
            return scoring_frames(wh, list(champions), run_date, settings)

    frames, stage = measure("features", features, lambda f: sum(len(x) for x in f.values()),
                            lambda f: ", ".join(f"{m} {len(x):,}" for m, x in f.items()))
    stages.append(stage)

    def score() -> dict[str, pd.DataFrame]:
        out = {}
        for model, champion in champions.items():
            out[model] = scoring.score_model(None, champion, run_date, settings, frames[model])
        return out

    scored, stage = measure("score", score, lambda s: sum(len(x) for x in s.values()))
    prepared = {m: c.scorer.prepare(scored[m][feature_columns(m)]) for m, c in champions.items()}
    _, bare = measure("bare predict", lambda p=prepared: [c.scorer.booster_output(p[m])
                                                          for m, c in champions.items()], lambda _: stage.rows)
    del prepared
    stages.append(stage)

    def task_list() -> tuple[pd.DataFrame, pd.DataFrame]:
        candidates = score_populations.fn(champions, scored, run_date, settings)
        drift_gate_task.fn(settings, run_date, {m: c.scorer for m, c in champions.items()}, scored)
        with open_warehouse(settings, read_only=True) as wh:
            history, held_out = load_history(wh, run_date, settings)
        tasks, control = build_task_list_task.fn(candidates, settings, run_date, history, held_out)
        record_task_risks_task.fn(settings, candidates, tasks, run_date)
        write_task_list_task.fn(settings, tasks, control, run_date)
        return tasks, control

    _, stage = measure("list", task_list, lambda t: len(t[0]),
                                      lambda t: f"{len(t[0]):,} tasks + {len(t[1]):,} control")
    stages.append(stage)

    def monitor() -> list[Any]:
        drift = check_drift_task.fn(settings, run_date)
        new, history = realised_performance_task.fn(settings, until=run_date)
        decisions = decide_retrain.fn(settings, drift, history)
        write_report.fn(settings, run_date, drift, new, history, decisions)
        return decisions

    _, stage = measure("monitor", monitor, lambda d: len(d),
                       lambda d: "; ".join(f"{x.model}: {x.decision}" for x in d))
    stages.append(stage)
    stages.append(bare)
    return stages


def report(stages: list[Stage], customers: int, setup_seconds: float | None) -> None:
    """The stage table, end to end, the ratios to their limits and the targets."""
    named = {s.name: s for s in stages}
    timed_stages = [s for s in stages if s.name != "bare predict"]
    wall, cpu = sum(s.wall for s in timed_stages), sum(s.cpu for s in timed_stages)
    peak = max(s.peak for s in stages)
    print()
    print(f"{'stage':<16} {'rows':>11} {'wall s':>9} {'cpu s':>9} {'peak GiB':>9}   note")
    for s in stages:
        print(s.line())
    scoring_wall = sum(named[n].wall for n in ("features", "score", "list"))
    bare = named["bare predict"].wall
    print()
    print(f"daily cycle, {customers:,} customers: {wall:.1f} s wall, {cpu:.1f} s cpu, peak {peak / 1024**3:.2f} GiB "
          f"(process tree)   target <= {TARGET_SECONDS:.0f} s: {'PASS' if wall <= TARGET_SECONDS else 'MISS'}, "
          f"<= {TARGET_GIB:.0f} GiB: {'PASS' if peak / 1024**3 <= TARGET_GIB else 'MISS'}")
    print(f"ratio ingest / reading the same files       {named['ingest delta'].note.rsplit('x', 1)[-1]}x "
          "(issue 15 item 1 target: reading >= 25 % of ingest, i.e. <= 4x)")
    print(f"ratio features+score+list / bare predict   {scoring_wall / max(bare, 1e-9):.1f}x "
          f"({scoring_wall:.2f} s / {bare:.3f} s; item 2 target <= 3x)")
    if setup_seconds is not None:
        print(f"setup (generate, split, ingest history, train 3 models; not in the cycle): {setup_seconds:.0f} s")
    print(load())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cache", type=Path, help="keep the shop, its split and the trained home here "
                        "(default: a temporary folder, removed afterwards)")
    parser.add_argument("--first-morning", action="store_true", help="remove the drift gate's kept "
                        "populations of earlier days first: the morning after go-live, not a steady one")
    parser.add_argument("--smoke", action="store_true", help="a few hundred customers, 40 trees: "
                        "tests/test_benchmarks.py runs it so the script cannot rot; its figures mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.customers = 800
        os.environ.setdefault("AFTERSALES_TRAINING__XGB__N_ESTIMATORS", "40")
        os.environ.setdefault("AFTERSALES_TRAINING__MIN_POSITIVES", "5")  # a tiny shop: the guard would refuse
        os.environ.setdefault("AFTERSALES_TRAINING__SHAP_SAMPLE_ROWS", "200")
    quiet()
    work = (args.cache or Path(tempfile.mkdtemp(prefix="aftersales-bench-cycle-"))).resolve()
    cache = work / f"shop-{args.customers}-seed{args.seed}"
    try:
        run(cache, args)
    finally:
        if not args.cache:
            shutil.rmtree(work, ignore_errors=True)


def kept_pool_days(settings: Settings, run_date: pd.Timestamp, forget: bool) -> int:
    """Earlier days of the drift pool kept by earlier runs (the fewest over the order models)."""
    from tasks.monitoring.checks import earlier_pool_days, order_models_of, population_kept, population_path

    order_models = order_models_of(settings.training.models)
    days = earlier_pool_days(run_date, settings.monitoring)
    if forget:
        for model in order_models:
            for day in days:
                population_path(settings, model, day).unlink(missing_ok=True)
    return min((sum(population_kept(settings, m, d) for d in days) for m in order_models), default=0)


def run(cache: Path, args: argparse.Namespace) -> None:
    """Setup when missing, the warehouse restored to its after-setup copy, then the timed cycle."""
    home = cache / "home"
    os.environ["AFTERSALES_PATHS__HOME"] = str(home)
    reset_settings_cache()
    settings = Settings(paths={"home": home})
    setup_seconds = None
    pristine = cache / "warehouse.after-setup.duckdb"
    if not pristine.exists():
        print(f"setup of a {args.customers:,}-customer shop in {cache}; {load()}", flush=True)
        setup_seconds = in_child(setup, cache, args.customers, args.seed)
    shutil.copyfile(pristine, settings.warehouse_path)
    for leftover in settings.warehouse_path.parent.glob(f"{settings.warehouse_path.name}.wal"):
        leftover.unlink()
    run_date = pd.Timestamp(settings.generator.end_date) + pd.Timedelta(days=1)
    kept = kept_pool_days(settings, run_date, args.first_morning)
    print(f"daily cycle for {run_date:%Y-%m-%d}: delta {cache / 'delta'}; {load()}", flush=True)
    print(f"drift pool: {kept} of the {settings.monitoring.drift_pool_days - 1} earlier days kept per order model "
          f"({'steady morning' if kept else 'first morning: the gate computes them in the cycle'})", flush=True)

    from prefect import flow

    @flow(name="daily-cycle-benchmark")
    def timed_cycle() -> list[Stage]:
        return cycle(cache / "delta", run_date, settings.ingest.chunk_rows)

    report(timed_cycle(), args.customers, setup_seconds)


if __name__ == "__main__":
    main()
