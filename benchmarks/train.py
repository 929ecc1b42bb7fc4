"""Time and peak memory of each training call on a 1M-row, ~40-feature synthetic set (2 cores).

    .venv/bin/python benchmarks/train.py                 # 1M train rows, 40 features
    .venv/bin/python benchmarks/train.py --rows 200000 --no-registry

Prints one line per call: wall seconds, peak RSS of the process during the call, and the rise
over the RSS before the call (RSS sampled every 20 ms; it includes XGBoost's native memory,
which tracemalloc would miss). Target: each training call under 2 minutes, and ``train_model``
within 2x of bare ``xgboost.train`` with the same parameters, the same training matrix and the
same number of rounds (the rounds early stopping ran, patience included), printed as a ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import xgboost as xgb

from schemas.settings import Settings
from tasks.models.evaluation import classification_metrics
from tasks.models.training import DataSplits, RuleSpec, class_weight, train_baselines, train_model, xgb_params

CATEGORICAL = 6


def synthetic(n: int, n_features: int, seed: int) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Numeric + categorical features with a non-linear planted signal and ~8% positives."""
    rng = np.random.default_rng(seed)
    n_numeric = n_features - CATEGORICAL
    X = pd.DataFrame(rng.normal(size=(n, n_numeric)), columns=[f"num_{i:02d}" for i in range(n_numeric)])
    X["days_late"] = rng.poisson(1.5, n).astype("float64")
    X.loc[rng.random(n) < 0.03, "num_01"] = np.nan
    for j in range(CATEGORICAL):
        levels = [f"c{j}_{k}" for k in range(3 + 4 * j)]
        X[f"cat_{j}"] = pd.Categorical(rng.choice(levels, n), categories=levels)
    logit = (
        -3.2
        + 0.9 * X["num_00"]
        + 0.8 * ((X["num_01"].fillna(0) > 0) & (X["num_02"] > 0.5))
        + 0.25 * X["days_late"]
        + 0.6 * (X["cat_0"] == "c0_1")
        - 0.5 * (X["num_03"].abs() > 1.5)
    )
    y = pd.Series((rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64"), name="label")
    t = pd.Series(pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 3, n) * 30, unit="D"))
    return X, y, t


def measure(label: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` while sampling RSS; print seconds, peak RSS and the rise over the start."""
    process = psutil.Process(os.getpid())
    start_rss = process.memory_info().rss
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    mib = 1024**2
    print(
        f"{label:<22} {seconds:8.1f} s   peak RSS {peak[0] / mib:7.0f} MiB   "
        f"(+{(peak[0] - start_rss) / mib:.0f} MiB over start)",
        flush=True,
    )
    return result


def bare_xgboost(X: pd.DataFrame, y: pd.Series, settings: Settings, rounds: int) -> xgb.Booster:
    """The limit: the same parameters and rounds on the same rows, no validation, calibration or checks."""
    cfg = settings.training.xgb
    positives = float(y.sum())
    params = xgb_params(settings, class_weight(len(y) - positives, positives, settings.training.class_weighting))
    matrix = xgb.QuantileDMatrix(X, label=y, enable_categorical=True, max_bin=cfg.max_bin, nthread=cfg.nthread)
    return xgb.train(params, matrix, num_boost_round=rounds)


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="training rows")
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--valid-rows", type=int, default=200_000)
    parser.add_argument("--test-rows", type=int, default=200_000)
    parser.add_argument("--no-registry", action="store_true", help="skip timing log_training_run")
    parser.add_argument("--smoke", action="store_true", help="tiny size (5k rows, 12 features), in seconds: "
                        "tests/test_benchmarks.py runs it so the script cannot rot")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.valid_rows, args.test_rows, args.features = 5_000, 2_000, 2_000, 12
    warnings.filterwarnings("ignore", module="mlflow")

    home = Path(tempfile.mkdtemp(prefix="aftersales-bench-"))
    settings = Settings(paths={"home": home})
    cores = settings.training.xgb.nthread
    print(
        f"rows train/valid/test {args.rows:,}/{args.valid_rows:,}/{args.test_rows:,}, "
        f"{args.features} features ({CATEGORICAL} categorical), nthread={cores}, cpus={os.cpu_count()}, "
        f"max {settings.training.xgb.n_estimators} rounds, depth {settings.training.xgb.max_depth}",
        flush=True,
    )
    data = measure(
        "generate data",
        lambda: [
            synthetic(n, args.features, s) for n, s in ((args.rows, 1), (args.valid_rows, 2), (args.test_rows, 3))
        ],
    )
    (X_tr, y_tr, t_tr), (X_va, y_va, t_va), (X_te, y_te, t_te) = data
    splits = DataSplits(X_tr, y_tr, X_va, y_va, X_te, y_te, t_tr, t_va, t_te)
    rule = RuleSpec("days_late")

    started = time.perf_counter()
    trained = measure("train_model", lambda: train_model(X_tr, y_tr, X_va, y_va, settings, valid_time=t_va))
    fit_seconds = time.perf_counter() - started
    print(
        f"{'':<22} best_iteration {trained.best_iteration}, validation split {trained.validation_split} "
        f"({trained.n_early_stopping:,} early stopping / {trained.n_calibration:,} calibration rows)"
    )
    cfg = settings.training.xgb
    rounds = min(trained.best_iteration + 1 + cfg.early_stopping_rounds, cfg.n_estimators)
    bare_seconds = measure(f"bare xgboost.train x{rounds}", lambda: timed(lambda: bare_xgboost(X_tr, y_tr, settings,
                                                                                                rounds)))
    print(f"{'':<22} train_model / bare xgboost.train = {fit_seconds / bare_seconds:.2f}x (target <= 2x; the rest: "
          "validation matrix and evaluation each round, calibration, checks)")
    baselines = measure("train_baselines", lambda: train_baselines(X_tr, y_tr, settings, rule))
    scores = measure("score test window", lambda: {"model": trained.predict_proba(X_te), **baselines.predict(X_te)})
    for name, p in scores.items():
        m = classification_metrics(y_te, p, settings.training.top_k)
        print(f"{'':<22} {name:<16} roc_auc {m['roc_auc']:.4f}  pr_auc {m['pr_auc']:.4f}  brier {m['brier']:.4f}")
    measure("contributions 10k rows", lambda: trained.contributions(X_te.head(10_000)))
    if not args.no_registry:
        from tasks.models.registry import log_training_run

        measure(
            "log_training_run",
            lambda: log_training_run("benchmark", settings, trained, baselines, splits, rule, code="benchmark"),
        )
    print(f"MLflow store and artifacts left in {home}")


if __name__ == "__main__":
    main()
