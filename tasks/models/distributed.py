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
  the training frame partitioned over the workers (Parquet partitions in the snapshot folder, read
  by the workers, removed after the fit), with the same parameters, early stopping,
  class weighting and calibration as ``training.train_model``. ``xgboost.dask`` is not bit-identical
  to a single-process ``hist`` fit (quantile sketches are merged across workers), so the model's
  metrics match within a tolerance, not to the last bit (tests/test_distributed.py).
"""

from __future__ import annotations

import itertools
import shutil
import uuid
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


def snapshot_root(settings: Settings) -> Path:
    """Where frames are written for the workers (storage every worker reads)."""
    return Path(settings.dask.snapshot_dir or settings.paths.home / "snapshots")


def snapshot_folder(settings: Settings, run_date: pd.Timestamp, model: str) -> Path:
    return snapshot_root(settings) / f"{run_date:%Y-%m-%d}" / model


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


def score_partition(path: str, settings: Settings, model: str, version: str, cap: float | None = None) -> pd.DataFrame:
    """One partition scored on a worker: what ``scoring.score_model`` does after its feature query.

    ``cap`` is the shop's cap on value at stake, computed once over the whole day (a partition's own
    quantile would cap each partition differently).
    """
    from tasks.models.datasets import feature_columns
    from tasks.models.scoring import check_signature, predict, risk_of_rows, value_at_stake

    champion = _champion(settings, model, version)
    frame = pd.read_parquet(path)
    check_signature(champion, frame)
    frame["probability"] = np.clip(predict(champion, frame[feature_columns(model)]), 0.0, 1.0)
    frame["risk"] = risk_of_rows(model, frame)
    frame["value_at_stake"] = value_at_stake(model, frame, settings, cap)
    frame["model_version"] = champion.label
    return frame


def score_frame_on_dask(client: Any, champion: Any, frame: pd.DataFrame, run_date: pd.Timestamp,
                        settings: Settings, cap: float | None = None) -> pd.DataFrame:
    """The day's frame of one model scored over the cluster, in the frame's row order."""
    from tasks.models.scoring import refuse_constant

    folder = snapshot_folder(settings, run_date, champion.model)
    paths = write_partitions(frame, folder, n_partitions(client, settings, len(frame)))
    futures = client.map(score_partition, paths, settings=settings, model=champion.model,
                         version=champion.version, cap=cap, pure=False)
    scored = pd.concat(client.gather(futures))
    refuse_constant(champion, scored["probability"].to_numpy(), settings)  # judged on the whole day
    return scored


def score_model_on_dask(champion: Any, run_date: pd.Timestamp, settings: Settings,
                        client: Any | None = None) -> pd.DataFrame:
    """``scoring.score_model`` with the prediction spread over the Dask cluster; same rows, same scores."""
    from tasks.data.warehouse import open_warehouse
    from tasks.models.datasets import scoring_frame
    from tasks.models.scoring import score_model, stake_cap

    with open_warehouse(settings, read_only=True) as wh:
        frame = scoring_frame(wh, champion.model, run_date, settings)
        if frame.empty:  # nothing to spread: the single-process answer, with its empty columns
            return score_model(wh, champion, run_date, settings)
        cap = stake_cap(wh, champion.model, frame, run_date, settings)
    if client is not None:
        return score_frame_on_dask(client, champion, frame, run_date, settings, cap)
    with dask_client(settings) as own:
        return score_frame_on_dask(own, champion, frame, run_date, settings, cap)


# ----------------------------------------------------------------------------------------- training


@contextmanager
def training_partitions(frame: pd.DataFrame, settings: Settings, parts: int) -> Iterator[Any]:
    """The training rows as a Dask frame whose partitions the workers read from a Parquet snapshot
    (``dask.snapshot_dir``, like the scoring frames), removed after the fit.

    Why: ``dd.from_pandas`` puts the rows into the task graph, which the scheduler then ships to the
    workers (17 MiB for a small test shop, with distributed's "large graph" warning); the graph now
    names files. ``meta`` is the frame's own empty slice, so categorical levels are known exactly.
    """
    import dask.dataframe as dd
    from dask import delayed

    folder = snapshot_root(settings) / "training" / uuid.uuid4().hex
    try:
        paths = write_partitions(frame, folder, parts)
        yield dd.from_delayed([delayed(pd.read_parquet)(path) for path in paths], meta=frame.iloc[:0],
                              verify_meta=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fit_booster_on_dask(X: pd.DataFrame, y: np.ndarray, categories: dict[str, list[str]], params: dict[str, Any],
                        rounds: int, settings: Settings, client: Any | None = None) -> Any:
    """``training.fit_booster`` with the rows partitioned over the Dask workers (``xgboost.dask``).

    The refit of ``fit_as_of`` is the one large fit (every matured cutoff); the parameters and the
    number of rounds were chosen on the rolling origins, so there is no early stopping here. Returns
    a plain ``xgboost.Booster`` the model is built from as usual. ``categories`` are the levels of the
    whole training frame, the ones the model scores with.
    """
    if client is None:
        with dask_client(settings) as own:
            return fit_booster_on_dask(X, y, categories, params, rounds, settings, own)
    from xgboost import dask as dxgb

    from tasks.models.training import prepare_features

    prepared = prepare_features(X, list(X.columns), categories).reset_index(drop=True)
    label = "__label__"
    prepared[label] = np.asarray(y, dtype=float)
    with training_partitions(prepared, settings, n_partitions(client, settings, len(prepared))) as rows:
        matrix = dxgb.DaskQuantileDMatrix(client, rows.drop(columns=label), rows[label], enable_categorical=True,
                                          max_bin=settings.training.xgb.max_bin)
        out = dxgb.train(client, params, matrix, num_boost_round=max(1, rounds), verbose_eval=False)
    return out["booster"]
