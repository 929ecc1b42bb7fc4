"""Data-parallel scoring and training on a Dask cluster, chosen by settings alone (``dask.data_parallel``).

Why this shape:

- **No worker opens the warehouse.** DuckDB allows one read-write process per file and its locks
  are unreliable on network file systems (deploy/README.md §3-4). The flow reads the warehouse
  once (a read-only connection, as a single-process run does), writes the day's frame as Parquet
  partitions under ``dask.snapshot_dir`` (storage every worker can read: a shared mount or an
  object store path), and the workers read only their own partition.
- **Features are built once, then the frame is partitioned.** Several features are aggregates over
  all customers (a product's return rate, a carrier's lateness, ...). Building them per partition of
  customers would give each partition other values, so the distributed scores would not be the
  single-process scores. What scales with the shop on the workers is what costs per row: the
  signature check, the model's input preparation and the prediction. Candidate ranking, reasons
  and the task list stay on the flow: they are global (one ranking, queue capacities) and touch
  only the few hundred rows that can make the list.
- **Training**: the booster is fitted with ``xgboost.dask`` on a ``DaskQuantileDMatrix`` made from
  the training frame partitioned over the workers, with the same parameters, early stopping,
  class weighting and calibration as ``training.train_model``. ``xgboost.dask`` is not bit-identical
  to a single-process ``hist`` fit (quantile sketches are merged across workers), so the model's
  metrics match within a tolerance, not to the last bit (tests/test_distributed.py).
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas.settings import Settings

_CHAMPIONS: dict[tuple[str, str, str], Any] = {}  # per worker process: each version is loaded once


@contextmanager
def dask_client(settings: Settings) -> Iterator[Any]:
    """A client of the configured cluster (``prefect.dask_address``), else of a local cluster of
    ``dask.local_workers`` single-threaded worker processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise RuntimeError("dask.data_parallel needs: pip install 'aftersales[dask]'") from exc
    if settings.prefect.dask_address:
        from distributed import default_client

        try:  # this process's client of that cluster: xgboost.dask hangs with a second one (seen here)
            current = default_client()
            if current.scheduler.address == settings.prefect.dask_address:
                yield current
                return
        except ValueError:  # no client yet
            pass
        client = Client(settings.prefect.dask_address)
        try:
            yield client
        finally:
            client.close()
        return
    with LocalCluster(n_workers=settings.dask.local_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def n_partitions(client: Any, settings: Settings, rows: int) -> int:
    """Partitions of a frame: ``dask.partitions_per_worker`` per worker, never more than rows."""
    workers = max(1, len(client.scheduler_info()["workers"]))
    return max(1, min(rows, workers * settings.dask.partitions_per_worker))


def snapshot_folder(settings: Settings, run_date: pd.Timestamp, model: str) -> Path:
    base = settings.dask.snapshot_dir or settings.paths.home / "snapshots"
    return Path(base) / f"{run_date:%Y-%m-%d}" / model


def write_partitions(frame: pd.DataFrame, folder: Path, parts: int) -> list[str]:
    """The frame as ``parts`` contiguous Parquet files (row order and dtypes kept by pandas' metadata)."""
    if folder.exists():
        shutil.rmtree(folder)  # a re-run of the day replaces its snapshot
    folder.mkdir(parents=True)
    bounds = np.linspace(0, len(frame), parts + 1).astype(int)
    paths = []
    for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        path = folder / f"part-{k:05d}.parquet"
        frame.iloc[lo:hi].to_parquet(path)
        paths.append(str(path))
    return paths


def _champion(settings: Settings, model: str, version: str) -> Any:
    """The registered version, loaded once per worker process from the registry."""
    from tasks.models.registry import configure
    from tasks.models.scoring import load_version

    key = (settings.tracking_uri, model, version)
    if key not in _CHAMPIONS:
        configure(settings)
        _CHAMPIONS[key] = load_version(settings, model, version)
    return _CHAMPIONS[key]


def score_partition(path: str, settings: Settings, model: str, version: str) -> pd.DataFrame:
    """One partition scored on a worker: what ``scoring.score_model`` does after its feature query."""
    from tasks.models.datasets import feature_columns
    from tasks.models.scoring import check_signature, predict, risk_of_rows, value_at_stake

    champion = _champion(settings, model, version)
    frame = pd.read_parquet(path)
    check_signature(champion, frame)
    frame["probability"] = np.clip(predict(champion, frame[feature_columns(model)]), 0.0, 1.0)
    frame["risk"] = risk_of_rows(model, frame)
    frame["value_at_stake"] = value_at_stake(model, frame, settings)
    frame["model_version"] = champion.label
    return frame


def score_frame_on_dask(client: Any, champion: Any, frame: pd.DataFrame, run_date: pd.Timestamp,
                        settings: Settings) -> pd.DataFrame:
    """The day's frame of one model scored over the cluster, in the frame's row order."""
    from tasks.models.scoring import refuse_constant

    folder = snapshot_folder(settings, run_date, champion.model)
    paths = write_partitions(frame, folder, n_partitions(client, settings, len(frame)))
    futures = client.map(score_partition, paths, settings=settings, model=champion.model,
                         version=champion.version, pure=False)
    scored = pd.concat(client.gather(futures))
    refuse_constant(champion, scored["probability"].to_numpy(), settings)  # judged on the whole day
    return scored


def score_model_on_dask(champion: Any, run_date: pd.Timestamp, settings: Settings,
                        client: Any | None = None) -> pd.DataFrame:
    """``scoring.score_model`` with the prediction spread over the Dask cluster; same rows, same scores."""
    from tasks.data.warehouse import open_warehouse
    from tasks.models.datasets import scoring_frame
    from tasks.models.scoring import score_model

    with open_warehouse(settings, read_only=True) as wh:
        frame = scoring_frame(wh, champion.model, run_date, settings)
        if frame.empty:  # nothing to spread: the single-process answer, with its empty columns
            return score_model(wh, champion, run_date, settings)
    if client is not None:
        return score_frame_on_dask(client, champion, frame, run_date, settings)
    with dask_client(settings) as own:
        return score_frame_on_dask(own, champion, frame, run_date, settings)


# ----------------------------------------------------------------------------------------- training


def _dask_frame(frame: pd.DataFrame | pd.Series, parts: int) -> Any:
    import dask.dataframe as dd

    return dd.from_pandas(frame, npartitions=max(1, min(parts, len(frame))), sort=False)


def train_model_on_dask(X_train: pd.DataFrame, y_train: pd.Series, X_valid: pd.DataFrame, y_valid: pd.Series,
                        settings: Settings, valid_time: pd.Series | None = None, client: Any | None = None,
                        calibration_share: float | None = None) -> Any:
    """``training.train_model`` with the booster fitted by ``xgboost.dask`` over the workers.

    The same class weight, parameters, early-stopping / calibration split of the validation window and
    calibrator; the rows are partitioned over the workers (``dask.partitions_per_worker``), each worker
    building its part of the quantile matrix. Returns a ``TrainedModel`` the registry logs as usual.
    """
    if client is None:
        with dask_client(settings) as own:
            return train_model_on_dask(X_train, y_train, X_valid, y_valid, settings, valid_time, own,
                                       calibration_share)
    import time

    from xgboost import dask as dxgb

    from tasks.models.training import (
        CALIBRATION_SHARE,
        AftersalesModel,
        Calibrator,
        TrainedModel,
        category_levels,
        class_weight,
        prepare_features,
        split_validation,
        xgb_params,
    )

    share = CALIBRATION_SHARE if calibration_share is None else calibration_share
    started = time.perf_counter()
    y_tr = np.asarray(y_train, dtype=float)
    if np.unique(y_tr).size != 2:
        raise ValueError("training labels hold a single class; nothing to learn")
    features, categories = list(X_train.columns), category_levels(X_train)
    positives = float(y_tr.sum())
    scale_pos_weight = class_weight(y_tr.size - positives, positives, settings.training.class_weighting)
    params = xgb_params(settings, scale_pos_weight)
    cfg = settings.training.xgb
    cal_mask, mode = split_validation(y_valid, valid_time, share, settings.training.seed)
    es_mask = ~cal_mask if mode != "shared" else cal_mask
    y_va = np.asarray(y_valid, dtype=float)
    X_cal, y_cal = X_valid.iloc[cal_mask], y_va[cal_mask]

    parts = n_partitions(client, settings, len(X_train))
    x_tr = prepare_features(X_train, features, categories).reset_index(drop=True)
    x_es = prepare_features(X_valid.iloc[es_mask], features, categories).reset_index(drop=True)
    dtrain = dxgb.DaskQuantileDMatrix(client, _dask_frame(x_tr, parts), _dask_frame(pd.Series(y_tr), parts),
                                          enable_categorical=True, max_bin=cfg.max_bin)
    des = dxgb.DaskQuantileDMatrix(client, _dask_frame(x_es, parts),
                                       _dask_frame(pd.Series(y_va[es_mask]), parts), enable_categorical=True,
                                       ref=dtrain, max_bin=cfg.max_bin)
    out = dxgb.train(client, params, dtrain, num_boost_round=cfg.n_estimators, evals=[(des, "valid")],
                         early_stopping_rounds=cfg.early_stopping_rounds, verbose_eval=False)
    booster = out["booster"]
    best_iteration = int(getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1))
    booster = booster[: best_iteration + 1]
    uncalibrated = AftersalesModel(booster, Calibrator("identity"), features, categories, cfg.nthread)
    calibrator = Calibrator(settings.training.calibration).fit(uncalibrated.raw_proba(X_cal), y_cal)
    notes = [f"fitted with xgboost.dask on {len(client.scheduler_info()['workers'])} workers, {parts} partitions"]
    if mode == "shared":
        notes.append("early stopping and calibration share the validation set")
    return TrainedModel(
        model=AftersalesModel(booster, calibrator, features, categories, cfg.nthread), params=params,
        best_iteration=best_iteration, scale_pos_weight=scale_pos_weight, n_train=len(X_train),
        n_early_stopping=int(es_mask.sum()), n_calibration=int(cal_mask.sum()), validation_split=mode,
        calibration_method=settings.training.calibration, calibration_share=share,
        fit_seconds=time.perf_counter() - started, notes=notes)
