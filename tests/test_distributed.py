"""Data-parallel scoring and training on a real local Dask cluster of two worker processes.

A planted shop is generated, ingested and two champions (one order model, one customer model) are
trained and registered in a real MLflow registry. The Dask run must give the single-process run's
scores (within 1e-6) and the same task list; a booster fitted with xgboost.dask must match the
single-process model's test metrics within a stated tolerance (xgboost.dask merges the workers'
quantile sketches, so it is not bit-identical to a single-process ``hist`` fit).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("distributed")

MODELS = ["return", "churn"]
RUN = pd.Timestamp("2026-11-02")  # the synthetic shop's history ends on 2026-11-01


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Settings of a home with an ingested 2,000-customer shop and registered champions."""
    from schemas.settings import Settings, reset_settings_cache

    home = tmp_path_factory.mktemp("dask-shop") / "home"
    saved = {k: os.environ.get(k) for k in ("AFTERSALES_PATHS__HOME", "AFTERSALES_TRAINING__XGB__N_ESTIMATORS")}
    os.environ["AFTERSALES_PATHS__HOME"] = str(home)
    os.environ["AFTERSALES_TRAINING__XGB__N_ESTIMATORS"] = "60"
    reset_settings_cache()
    settings = Settings(training={"models": MODELS})
    from flows.train import train_and_register
    from tasks.data.ingest import ingest_batch
    from tasks.data.synthetic import generate_shop
    from tasks.data.warehouse import Warehouse

    generate_shop(settings.data_dir, customers=2_000, seed=5, dirty_share=0.0)
    wh = Warehouse(settings.warehouse_path)
    ingest_batch(settings.data_dir, wh, settings)
    wh.close()
    for model in MODELS:
        out = train_and_register.fn(model, settings)
        assert "version" in out, out
    yield settings
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    reset_settings_cache()


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


def _task_list(settings, champions, scored) -> pd.DataFrame:
    """The day's list from scored frames, with the scoring flow's own functions."""
    from tasks.care.interventions import build_task_list_task, load_history
    from tasks.data.warehouse import open_warehouse
    from tasks.models.scoring import explain, list_candidates, scored_rows

    rows = []
    for model, frame in scored.items():
        candidates = list_candidates(frame, settings)
        rows.append(scored_rows(candidates, explain(candidates, champions[model]), RUN, None))
    with open_warehouse(settings, read_only=True) as wh:
        history, held_out = load_history(wh, RUN, settings)
    tasks, _ = build_task_list_task.fn(pd.concat(rows, ignore_index=True), settings, RUN, history, held_out)
    return tasks


def test_scores_on_dask_equal_the_single_process_run_and_give_the_same_list(shop, client) -> None:
    from tasks.data.warehouse import open_warehouse
    from tasks.models.distributed import score_model_on_dask
    from tasks.models.scoring import load_champions, score_model

    champions = load_champions(shop, MODELS)
    single, spread = {}, {}
    for model, champion in champions.items():
        with open_warehouse(shop, read_only=True) as wh:
            single[model] = score_model(wh, champion, RUN, shop)
        spread[model] = score_model_on_dask(champion, RUN, shop, client=client)
        a, b = single[model], spread[model]
        assert len(a) > 0 and len(a) == len(b), model  # orders are scored at their moments: a few a day
        key = ["order_id"] if "order_id" in a else ["customer_id"]
        pd.testing.assert_frame_equal(a[key].reset_index(drop=True), b[key].reset_index(drop=True))
        assert np.abs(a["probability"].to_numpy() - b["probability"].to_numpy()).max() <= 1e-6, model
        assert (a["risk"].to_numpy() == b["risk"].to_numpy()).all()
        np.testing.assert_allclose(a["value_at_stake"].to_numpy(), b["value_at_stake"].to_numpy())
    # the workers read their partitions from the snapshot, not the warehouse file
    parts = sorted((shop.paths.home / "snapshots" / f"{RUN:%Y-%m-%d}").glob("*/part-*.parquet"))
    assert len(parts) == len(MODELS) * 2 * shop.dask.partitions_per_worker
    tasks_single, tasks_spread = _task_list(shop, champions, single), _task_list(shop, champions, spread)
    assert len(tasks_single) > 0
    pd.testing.assert_frame_equal(tasks_single.reset_index(drop=True), tasks_spread.reset_index(drop=True))


def test_a_booster_refitted_with_xgboost_dask_matches_the_single_process_fit(shop, client) -> None:
    """The refit's parameters and rounds on the older cutoffs, judged on the newest ones, both ways."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from tasks.data.warehouse import open_warehouse
    from tasks.models.datasets import build_training_frame, feature_columns, plan_cutoffs
    from tasks.models.distributed import fit_booster_on_dask
    from tasks.models.training import FoldMatrix, booster_params, fit_booster, min_child_weight, raw_scores

    with open_warehouse(shop, read_only=True) as wh:
        frame = build_training_frame(wh, "return", plan_cutoffs(wh, "return", shop), shop)
    X, y = frame[feature_columns("return")], frame["label"].to_numpy(dtype=float)
    newest = frame["cutoff"] >= frame["cutoff"].quantile(0.8)
    train, test = np.flatnonzero(~newest.to_numpy()), np.flatnonzero(newest.to_numpy())
    data = FoldMatrix(X, y, shop)
    config = shop.training.grid[2]
    params = booster_params(shop, config, 1.0, min_child_weight(y[train], 1.0, config.min_leaf_share))
    single = raw_scores(fit_booster(data, train, params, 80), data, test)
    spread = raw_scores(fit_booster_on_dask(X.iloc[train], y[train], data.categories, params, 80, shop, client),
                        data, test)
    seen = {"roc_auc": (roc_auc_score(y[test], single), roc_auc_score(y[test], spread)),
            "pr_auc": (average_precision_score(y[test], single), average_precision_score(y[test], spread))}
    print("single vs dask:", {k: (round(a, 4), round(b, 4)) for k, (a, b) in seen.items()})
    # xgboost.dask merges the workers' quantile sketches: close to a single-process hist fit, not equal
    assert abs(seen["roc_auc"][0] - seen["roc_auc"][1]) <= 0.02
    assert abs(seen["pr_auc"][0] - seen["pr_auc"][1]) <= 0.05
    assert seen["roc_auc"][1] > 0.6  # it learned the planted signal, not just agreed with a bad model


def test_the_score_flow_spreads_over_dask_by_settings_alone_and_ships_the_same_list(shop, client, prefect_api,
                                                                                   monkeypatch) -> None:
    from distributed import get_task_stream

    from flows.score import score_flow
    from schemas.settings import reset_settings_cache

    def run(data_parallel: bool) -> pd.DataFrame:
        monkeypatch.setenv("AFTERSALES_DASK__DATA_PARALLEL", str(data_parallel).lower())
        monkeypatch.setenv("AFTERSALES_PREFECT__DASK_ADDRESS", client.scheduler.address)
        reset_settings_cache()
        result = score_flow(run_date=RUN.date(), models=MODELS)
        return pd.read_parquet(Path(result["files"]["parquet"]))

    single = run(False)
    with get_task_stream(client) as stream:
        spread = run(True)
    assert sum(1 for t in stream.data if "score_partition" in str(t["key"])) == len(MODELS) * 4
    assert len(single) > 0
    pd.testing.assert_frame_equal(single, spread)


def test_the_train_flow_fits_on_dask_by_settings_alone(shop, client) -> None:
    from distributed import get_task_stream

    from flows.train import train_and_register

    # another seed: with the registered one, the same rows would find version 1 and fit nothing
    settings = shop.model_copy(update={"dask": shop.dask.model_copy(update={"data_parallel": True}),
                                       "prefect": shop.prefect.model_copy(update={"dask_address":
                                                                                  client.scheduler.address}),
                                       "training": shop.training.model_copy(update={"seed": shop.training.seed + 1})})
    with get_task_stream(client) as stream, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train_and_register.fn("churn", settings)
    assert "version" in out and "skipped" not in out and out["new_version"], out
    # the refit's rows went to the workers as files they read, not inside the task graph
    assert any("read_parquet" in str(t["key"]) for t in stream.data)
    assert not [w for w in caught if "large graph" in str(w.message)], [str(w.message) for w in caught]
    snapshots = shop.paths.home / "snapshots" / "training"
    assert not snapshots.exists() or not any(snapshots.iterdir())  # removed after the fit
    assert any("xgboost.dask" in note for note in out["notes"]), out["notes"]
