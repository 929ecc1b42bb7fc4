"""Scaling per Dask worker of data-parallel scoring and training (``tasks/models/distributed.py``).

    .venv/bin/python benchmarks/dask_scaling.py                         # 30k-customer shop, 1M rows scored
    .venv/bin/python benchmarks/dask_scaling.py --rows 2000000 --home DIR
    .venv/bin/python benchmarks/dask_scaling.py --smoke                 # tiny; the test suite runs it

Setup (child process, not timed): a generated shop, ingested, its ``return`` model trained and registered
by the train flow's per-model body. Then, on a local cluster of 1 and of 2 single-threaded worker
processes (``LocalCluster(n_workers=k, threads_per_worker=1, processes=True)``):

- score:  the model's real scoring frame at the run date, resampled to ``--rows`` rows, scored by
          ``score_frame_on_dask`` (Parquet partitions, one read each, predict on the workers) against
          ``score_model`` in this process on the same rows with the booster on 1 thread;
- train:  the model's real training frame refitted by ``fit_booster_on_dask`` against ``fit_booster``
          with ``nthread`` 1 (one worker's worth of cores), same parameters and rounds.

The figures are speed-ups over one process with one thread, so they say what a worker adds. This
machine has 2 cores shared by other engineers: 2 workers can at best double, and under load they
do not; the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import pandas as pd

from benchmarks.daily_cycle import in_child, load, quiet
from schemas.settings import Settings, reset_settings_cache


def setup(home: Path, customers: int, seed: int) -> None:
    """Generate, ingest, train and register the return model (child process)."""
    quiet()
    os.environ["AFTERSALES_PATHS__HOME"] = str(home)
    reset_settings_cache()
    from flows.train import train_and_register
    from tasks.data.ingest import ingest_batch
    from tasks.data.synthetic import generate_shop
    from tasks.data.warehouse import Warehouse

    settings = Settings(paths={"home": home})
    generate_shop(settings.data_dir, customers=customers, seed=seed, end_date=settings.generator.end_date)
    wh = Warehouse(settings.warehouse_path, memory_limit=settings.warehouse.memory_limit)
    try:
        ingest_batch(settings.data_dir, wh, settings)
    finally:
        wh.close()
    out = train_and_register.fn("return", settings)
    if "skipped" in out:
        raise SystemExit(f"return could not be trained: {out['skipped']}")


def timed(fn) -> tuple[object, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=30_000)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows scored (the real frame resampled)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--home", type=Path, help="keep/reuse the shop and the registry here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: tests/test_benchmarks.py runs it")
    args = parser.parse_args()
    if args.smoke:
        args.customers, args.rows, args.workers = 1_500, 5_000, [2]
        os.environ.setdefault("AFTERSALES_TRAINING__XGB__N_ESTIMATORS", "30")
        os.environ.setdefault("AFTERSALES_TRAINING__MIN_POSITIVES", "5")  # a tiny shop: the guard would refuse
    os.environ["AFTERSALES_TRAINING__XGB__NTHREAD"] = "1"  # one thread per process and per worker: the unit
    quiet()
    home = (args.home or Path(tempfile.mkdtemp(prefix="aftersales-bench-dask-"))).resolve()
    try:
        run(home, args)
    finally:
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)


def pick_config(grid: list) -> object:
    """A depth-4 point where the grid has one (a mid-sized booster), else its deepest."""
    return next((c for c in grid if c.max_depth == 4), max(grid, key=lambda c: c.max_depth))


def run(home: Path, args: argparse.Namespace) -> None:
    os.environ["AFTERSALES_PATHS__HOME"] = str(home)
    reset_settings_cache()
    settings = Settings(paths={"home": home})
    if not settings.warehouse_path.exists():
        in_child(setup, home, args.customers, args.seed)
    from distributed import Client, LocalCluster

    from tasks.data.warehouse import open_warehouse
    from tasks.models import scoring
    from tasks.models.datasets import build_training_frame, feature_columns, plan_cutoffs, scoring_frame
    from tasks.models.distributed import fit_booster_on_dask, score_frame_on_dask
    from tasks.models.training import FoldMatrix, booster_params, fit_booster, min_child_weight

    day = pd.Timestamp(settings.generator.end_date) + pd.Timedelta(days=1)
    champion = scoring.load_champions(settings, ["return"])["return"]
    with open_warehouse(settings, read_only=True) as wh:
        real = scoring_frame(wh, "return", day, settings)
    frame = real.sample(n=args.rows, replace=True, random_state=args.seed).reset_index(drop=True)
    with open_warehouse(settings, read_only=True) as wh:
        training = build_training_frame(wh, "return", plan_cutoffs(wh, "return", settings), settings)
    X, y = training[feature_columns("return")], training["label"].to_numpy(dtype=float)
    data, config, rounds = FoldMatrix(X, y, settings), pick_config(settings.training.grid), 100
    params = booster_params(settings, config, 1.0, min_child_weight(y, 1.0, config.min_leaf_share))
    print(f"scoring {len(frame):,} rows (resampled from {len(real):,} real); training on {len(X):,} rows "
          f"x {X.shape[1]} features, {rounds} rounds; {load()}", flush=True)

    with mock.patch.object(scoring, "scoring_frame", lambda *_: frame.copy()):
        _, score_one = timed(lambda: scoring.score_model(None, champion, day, settings))
    _, train_one = timed(lambda: fit_booster(data, None, params, rounds))
    rows = [("1 process, 1 thread", score_one, train_one, rounds)]
    for k in args.workers:
        with LocalCluster(n_workers=k, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            score_frame_on_dask(client, champion, frame.head(1_000), day, settings)  # workers load the model once
            _, score_k = timed(lambda c=client: score_frame_on_dask(c, champion, frame, day, settings))
            _, train_k = timed(lambda c=client: fit_booster_on_dask(X, y, data.categories, params, rounds, settings,
                                                                    c))
        rows.append((f"dask, {k} worker{'s' if k > 1 else ''}", score_k, train_k, rounds))
    print()
    print(f"{'run':<22} {'score s':>8} {'rows/s':>11} {'x':>6}   {'train s':>8} {'x':>6} {'trees':>6}")
    for name, s, t, trees in rows:
        print(f"{name:<22} {s:8.2f} {len(frame) / s:11,.0f} {score_one / s:6.2f}   {t:8.2f} {train_one / t:6.2f} "
              f"{trees:6d}")
    print(f"x = speed-up over one process with one thread; {os.cpu_count()} cpus; {load()}")


if __name__ == "__main__":
    main()
