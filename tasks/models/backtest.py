"""Rolling-origin training as of a date, and the backtest that judges a date with it.

``fit_as_of`` is what ``aftersales train --cutoff D`` runs for each model:

1. plan the cutoffs as of D and build the training frame once (``datasets.plan_cutoffs``,
   ``build_training_frame``); every row's label closes by D;
2. on the older origins e_1..e_{K-1} (each trained on its purged rows), choose the booster
   configuration and its number of rounds (``training.tune_booster``);
3. score every origin out of fold with that configuration, and the plain logistic regression and
   the one-line rule the same way;
4. the honest test: the newest origin e_K, scored by the model trained before its window and
   calibrated on e_1..e_{K-1}; model, logistic regression and rule on the same rows, each metric
   with a bootstrap interval and the paired model-minus-logistic difference;
5. the minimum-signal guard (``training.min_positives``) and the constant-score check;
6. refit on every matured row; calibrate on all origins' out-of-fold scores, the newest weighted
   most (``training.calibration_decay``): the registered model is as new as the data allows and
   its calibrator has only seen scores of models that had not seen those rows (as scikit-learn's
   ``CalibratedClassifierCV(ensemble=False)`` does), with the most weight on the current base rate.

``backtest_at`` then scores the population at D with that fit, labels it from after D, and
compares model, logistic regression and rule on those rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.derived import CUTOFF, LABEL, MODEL_ENTITY, ModelName
from schemas.settings import Settings
from tasks.data.warehouse import Warehouse
from tasks.models.datasets import (
    CutoffPlan,
    FrameCache,
    NotEnoughData,
    build_training_frame,
    feature_columns,
    fill_training_cache,
    labelled_frame,
    origin_folds,
    plan_cutoffs,
    refit_rows,
)
from tasks.models.evaluation import bootstrap_intervals, classification_metrics, interval_metrics
from tasks.models.features import as_timestamp
from tasks.models.labels import LABEL_CLOCKS, data_end, key_columns, label_horizon_days
from tasks.models.training import (
    AftersalesModel,
    Baselines,
    DataSplits,
    FoldMatrix,
    RuleModel,
    RuleSpec,
    TrainedModel,
    Tuning,
    class_weight,
    fit_booster,
    fit_calibrator,
    fit_logistic,
    is_constant,
    origin_weights,
    raw_scores,
    tune_booster,
)

SCORERS = ("model", "baseline_logreg", "baseline_rule")
INTERVAL_PREFIX = {"model": "test_", "baseline_logreg": "baseline_logreg_test_",
                   "baseline_rule": "baseline_rule_test_", "model-baseline_logreg": "test_model_minus_logreg_"}
CLUSTER = "customer_id"  # bootstrap resamples customers: one customer's rows move together


class NotMatured(ValueError):
    """A backtest date whose labels the data cannot decide yet."""


def settings_as_of(settings: Settings, as_of: Any) -> Settings:
    """The same settings, training as of ``as_of`` (a date or None for the latest data)."""
    data = settings.model_dump()
    data["split"]["as_of"] = None if as_of is None else str(as_timestamp(as_of))
    return Settings(**data)


def _positives(y: np.ndarray) -> int:
    return int(np.asarray(y, dtype=float).sum())


@dataclass
class AsOfFit:
    """One model fitted as of a date: what was registered (or why not) and how it was judged."""

    model: ModelName
    plan: CutoffPlan
    rule: RuleSpec
    notes: list[str]
    counts: dict[str, tuple[int, int]]  # set -> (rows, positives)
    refusal: str | None = None
    trained: TrainedModel | None = None
    baselines: Baselines | None = None
    splits: DataSplits | None = None
    tuning: Tuning | None = None
    intervals: pd.DataFrame | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step, for the run log
    existing: Any = None  # what ``fit_as_of``'s ``existing`` found for these rows: nothing was fitted

    @property
    def registrable(self) -> bool:
        return self.refusal is None and self.trained is not None


# given a fit's splits and rule before any booster is fitted: the version already trained on them, if any
ExistingVersion = Callable[[DataSplits, RuleSpec], Any]


def split_rows(X: pd.DataFrame, y: np.ndarray, cutoffs: pd.Series, refit: np.ndarray, evaluated: np.ndarray,
               test: np.ndarray) -> DataSplits:
    """The refit rows, every origin's evaluated rows and the newest origin's, with their cutoffs."""
    def part(rows: np.ndarray) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
        return (X.iloc[rows].reset_index(drop=True), pd.Series(y[rows], name=LABEL),
                cutoffs.iloc[rows].reset_index(drop=True))

    (X_train, y_train, t_train), (X_valid, y_valid, t_valid), (X_test, y_test, t_test) = map(
        part, (refit, evaluated, test))
    return DataSplits(X_train, y_train, X_valid, y_valid, X_test, y_test, t_train, t_valid, t_test)


class Stopwatch:
    """Seconds per named step (repeated steps add up), so a run says where its time went."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now


def lap_metrics(laps: dict[str, float]) -> dict[str, float]:
    """The steps' seconds as MLflow metrics (``seconds_tuning`` ...): runs compared side by side."""
    return {"seconds_" + "_".join(name.replace("-", " ").split()): round(seconds, 3) for name, seconds in laps.items()}


def describe_laps(laps: dict[str, float]) -> str:
    """Where a fit's time went, longest first, in words for the run log."""
    return ", ".join(f"{name} {seconds:,.1f} s" for name, seconds in sorted(laps.items(), key=lambda kv: -kv[1]))


def guard_message(model: str, counts: dict[str, tuple[int, int]], minimum: int) -> str | None:
    """Words for every set with fewer than ``minimum`` positive labels, or None when all have enough."""
    short = [f"{positives:,} positive label{'s' if positives != 1 else ''} in the {name}"
             for name, (_, positives) in counts.items() if positives < minimum]
    if not short:
        return None
    return f"{model}: not registered — {', '.join(short)}; at least {minimum} are needed"


def refuse_without_outcomes(wh: Warehouse, model: ModelName) -> None:
    """No returns (or reviews) at all is the reason to give, before any talk of windows and origins."""
    table = LABEL_CLOCKS[model][-1][0]
    if not wh.has_table(table) or int(wh.query(f'SELECT count(*) AS n FROM "{table}"')["n"].iloc[0]) == 0:
        raise NotEnoughData(f"{model}: the data has no {table}, so there is no outcome to learn from "
                            f"(map a {table} file to train it)")


def prebuild_order_frames(wh: Warehouse, models: Sequence[ModelName], settings: Settings,
                          cache: FrameCache) -> list[ModelName]:
    """Fill ``cache`` with the training frames of the order models among ``models``, built together:
    one feature pass per cutoff they share (their fits then find every cutoff built). A model that
    cannot be planned is left to its own fit, which says why. Returns the models prebuilt."""
    plans = {}
    for model in models:
        if MODEL_ENTITY[model] != "order":
            continue
        try:
            refuse_without_outcomes(wh, model)
            plans[model] = plan_cutoffs(wh, model, settings)
        except NotEnoughData:
            continue
    if len(plans) < 2:
        return []
    fill_training_cache(wh, plans, settings, cache)
    return sorted(plans)


def _stack(parts: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.array([], dtype=float)


def fit_as_of(wh: Warehouse, model: ModelName, settings: Settings, cache: FrameCache | None = None,
              existing: ExistingVersion | None = None) -> AsOfFit:
    """Plan, build, tune on the older origins, test on the newest, guard, refit, calibrate (see module).

    ``existing``: asked once the rows are known; when it names a version trained on exactly these
    rows with this code and configuration, nothing is fitted (``fit.existing``). Fitting again would
    reproduce that version (fixed seeds), so a rerun on unchanged data costs its frame, not its fit.
    """
    started = time.perf_counter()
    clock = Stopwatch()
    refuse_without_outcomes(wh, model)
    plan = plan_cutoffs(wh, model, settings)
    frame = build_training_frame(wh, model, plan, settings, cache)
    clock.lap("training frame")
    rule = RuleSpec(settings.training.baseline_rules[model])
    notes = [plan.describe(), *plan.notes, *frame.attrs.get("notes", [])]
    if frame.empty:
        raise NotEnoughData(f"{model}: the population is empty at every cutoff {plan.cutoffs[0]:%Y-%m-%d}.."
                            f"{plan.latest:%Y-%m-%d}")
    if len(plan.origins) < 2:
        raise NotEnoughData(
            f"{model}: only {len(plan.origins)} rolling origin{'' if len(plan.origins) == 1 else 's'} with matured "
            f"training rows before it (2 needed: "
            f"one to choose and calibrate, one to test); the history from {plan.first_order:%Y-%m-%d} is too "
            f"short for the {plan.horizon_days}-day label window")
    features = feature_columns(model)
    X, y = frame[features], frame[LABEL].to_numpy(dtype=float)
    refit = refit_rows(frame, plan)
    folds = origin_folds(frame, plan)
    newest, older = folds[-1], folds[:-1]
    older_rows = _stack([f.evaluate for f in older]).astype(int)
    counts = {
        "training rows": (refit.size, _positives(y[refit])),
        "calibration rows": (older_rows.size, _positives(y[older_rows])),
        "test window": (newest.evaluate.size, _positives(y[newest.evaluate])),
    }
    fit = AsOfFit(model, plan, rule, notes, counts, timings=clock.laps)
    fit.refusal = guard_message(model, counts, settings.training.min_positives)
    if fit.refusal is None and (_positives(y[newest.train]) in (0, newest.train.size)):
        fit.refusal = f"{model}: not registered — the rows before the test window hold a single class"
    if fit.refusal is not None:
        fit.seconds = time.perf_counter() - started
        return fit

    all_rows = _stack([f.evaluate for f in folds]).astype(int)
    fit.splits = split_rows(X, y, frame[CUTOFF], refit, all_rows, newest.evaluate)
    fit.existing = existing(fit.splits, rule) if existing is not None else None
    if fit.existing is not None:
        clock.lap("looking for an identical version")
        fit.seconds = time.perf_counter() - started
        return fit

    positives = float(y[refit].sum())
    spw = class_weight(refit.size - positives, positives, settings.training.class_weighting)
    data = FoldMatrix(X, y, settings)
    clock.lap("feature matrix")
    tuning_folds = [f for f in older if 0 < _positives(y[f.train]) < f.train.size
                    and 0 < _positives(y[f.evaluate]) < f.evaluate.size]
    if len(tuning_folds) < len(older):
        notes.append(f"{len(older) - len(tuning_folds)} older origin(s) hold a single class and choose nothing")
    if not tuning_folds:
        fit.refusal = f"{model}: not registered — no older origin holds both outcomes to choose the model on"
        return fit
    tuning = tune_booster(data, [(f.train, f.evaluate) for f in tuning_folds], settings, spw)
    fit.tuning = tuning
    clock.lap("tuning")
    notes.append(f"chosen on {len(tuning_folds)} older origin(s): {tuning.describe()}")

    # every origin scored by models that never saw its rows (nor any label reaching into its window)
    oof: dict[str, list[np.ndarray]] = {"model": [], "baseline_logreg": [], "baseline_rule": []}
    tuned = dict(zip((f.origin for f in tuning_folds), tuning.boosters, strict=True))
    chosen = data.for_config(tuning.config)  # the matrix the chosen booster reads (trees or linear design)
    booster = None
    for f in folds:
        booster = tuned[f.origin] if f.origin in tuned else fit_booster(chosen, f.train, tuning.params, tuning.rounds)
        oof["model"].append(raw_scores(booster, chosen, f.evaluate))
        clock.lap("out-of-fold boosters")
        logreg, _ = fit_logistic(X.iloc[f.train], y[f.train], settings)
        oof["baseline_logreg"].append(logreg.predict_proba(X.iloc[f.evaluate])[:, 1])
        oof["baseline_rule"].append(RuleModel(rule).fit(X.iloc[f.train]).score(X.iloc[f.evaluate]))
        clock.lap("out-of-fold baselines")
    origin_of_row = _stack([np.full(f.evaluate.size, k) for k, f in enumerate(folds)])
    decay = settings.training.calibration_decay

    def calibrators(count: int) -> dict[str, Any]:
        """Calibrators fitted on the out-of-fold scores of the first ``count`` origins."""
        mask = origin_of_row < count
        weights = origin_weights(origin_of_row[mask], count, decay)
        return {name: fit_calibrator(_stack(oof[name][:count]), y[all_rows[mask]], settings, weights,
                                     scale="score" if name == "baseline_rule" else "probability")
                for name in oof}

    test_cal = calibrators(len(older))
    test_rows = newest.evaluate
    window_size = frame[CUTOFF].iloc[test_rows].nunique()
    if settings.training.recentre_calibration and booster is not None:
        # the test mirrors the registered model: the newest fold's booster, its map re-anchored on
        # the newest window it was trained on (see Calibrator.recentre)
        anchor = newest_window(frame[CUTOFF], newest.train, window_size)
        test_cal["model"].recentre(raw_scores(booster, chosen, anchor), float(y[anchor].mean()))
    test_scores = {name: test_cal[name].transform(oof[name][-1]) for name in oof}
    test_scores["baseline_rule"] = np.clip(test_scores["baseline_rule"], 0.0, 1.0)
    test_scores["model_raw"] = oof["model"][-1]
    if (message := _unusable(model, test_cal["model"], oof["model"][-1], "on the older origins")) is not None:
        fit.refusal = message
        return fit

    # refit on everything matured, calibrated on every origin (newest weighted most)
    final_cal = calibrators(len(folds))
    clock.lap("calibration")
    if settings.dask.data_parallel and chosen.design is None:  # the one large fit, over the Dask workers
        from tasks.models.distributed import fit_booster_on_dask

        booster = fit_booster_on_dask(X.iloc[refit], y[refit], data.categories, tuning.params, tuning.rounds,
                                      settings)
        notes.append(f"refit with xgboost.dask on {len(refit):,} rows (dask.data_parallel)")
    else:
        if settings.dask.data_parallel:
            notes.append("the linear booster was chosen: refit in this process on one thread (xgboost.dask "
                         "builds quantile matrices, which gblinear cannot read; measured 0.3 s a round per "
                         "200k rows x 120 design columns)")
        booster = fit_booster(chosen, refit, tuning.params, tuning.rounds)
    clock.lap("refit booster")
    registered = AftersalesModel(booster, final_cal["model"], features, data.categories, data.nthread,
                                 design=chosen.design)
    if settings.training.recentre_calibration:
        anchor = newest_window(frame[CUTOFF], refit, window_size)
        final_cal["model"].recentre(registered.raw_proba(X.iloc[anchor]), float(y[anchor].mean()))
        notes.append(f"calibration of the registered model: {final_cal['model'].describe()}")
    on_test = registered.raw_proba(X.iloc[test_rows])
    if (message := _unusable(model, final_cal["model"], on_test, "on all origins")) is not None:
        fit.refusal = message
        return fit
    logreg, logreg_note = fit_logistic(X.iloc[refit], y[refit], settings)
    notes.extend(n for n in [logreg_note] if n)
    rule_model = RuleModel(rule).fit(X.iloc[refit])
    rule_model.calibrator = final_cal["baseline_rule"]
    fit.baselines = Baselines(logreg=logreg, rule=rule_model, logreg_calibrator=final_cal["baseline_logreg"])
    clock.lap("refit baselines")

    clusters = frame[CLUSTER].iloc[test_rows].to_numpy() if CLUSTER in frame else None
    cfg = settings.training
    fit.intervals = bootstrap_intervals(y[test_rows], {n: test_scores[n] for n in SCORERS}, cfg.top_k,
                                        cfg.bootstrap_resamples, cfg.confidence, cfg.seed, clusters)
    clock.lap("bootstrap intervals")
    fit.splits.test_scores = test_scores
    fit.seconds = time.perf_counter() - started
    fit.trained = TrainedModel(
        model=registered, params=tuning.params, best_iteration=tuning.rounds - 1, scale_pos_weight=spw,
        n_train=refit.size, n_early_stopping=int(sum(f.evaluate.size for f in tuning_folds)),
        n_calibration=all_rows.size, validation_split="rolling-origin",
        calibration_method=final_cal["model"].describe(), calibration_share=0.0, fit_seconds=fit.seconds,
        notes=notes, extra_params=_run_params(plan, tuning, folds, test_cal["model"].describe()),
        extra_metrics=interval_metrics(fit.intervals, INTERVAL_PREFIX) | lap_metrics(clock.laps)
        | {"tuning_best_score": float(tuning.table.loc[tuning.table["chosen"], "score"].iloc[0])})
    return fit


def newest_window(cutoffs: pd.Series, positions: np.ndarray, size: int) -> np.ndarray:
    """The rows among ``positions`` at their ``size`` latest cutoffs: the newest matured window."""
    positions = np.asarray(positions, dtype=int)
    at = pd.to_datetime(cutoffs.iloc[positions]).to_numpy()
    latest = np.sort(np.unique(at))[-max(1, int(size)):]
    return positions[np.isin(at, latest)]


def _unusable(model: str, calibrator: Any, raw: np.ndarray, where: str) -> str | None:
    """Words when calibrated scores over the test window are one constant or rank backwards."""
    stepped = calibrator.stepped(raw)
    if is_constant(stepped):
        return (f"{model}: not registered — its calibrated probability is one constant ({float(stepped[0]):.4g}) "
                f"over the {raw.size:,} rows of the test window: it ranks nothing")
    if calibrator.method == "sigmoid" and not calibrator.slope > 0:
        return (f"{model}: not registered — {where}, a higher score of the model meant a lower observed rate "
                f"(calibration slope {calibrator.slope:.3g}): it has learnt no usable signal")
    return None


def _run_params(plan: CutoffPlan, tuning: Tuning, folds: Sequence[Any], test_calibration: str) -> dict[str, Any]:
    """What the run log needs to reproduce the choice: plan, origins, chosen configuration."""
    grid = "; ".join(f"{r.configuration}: {r.rounds} rounds {r.score:.4f}" for r in tuning.table.itertuples())
    return {
        "as_of": f"{plan.as_of:%Y-%m-%d %H:%M}", "cutoff_step_days": plan.step_days,
        "min_history_days": plan.min_history_days, "eval_window_days": plan.eval_window_days,
        "origin_spacing_days": plan.spacing_days, "n_cutoffs": len(plan.cutoffs),
        "cutoffs": f"{plan.cutoffs[0]:%Y-%m-%d}..{plan.latest:%Y-%m-%d}",
        "origins": ",".join(f"{f.origin:%Y-%m-%d}" for f in folds),
        "chosen_booster": tuning.config.booster, "chosen_max_depth": tuning.config.max_depth,
        "chosen_learning_rate": tuning.config.learning_rate,
        "chosen_min_leaf_share": tuning.config.min_leaf_share, "chosen_rounds": tuning.rounds,
        "selection_metric": tuning.metric, "grid": grid[:6000], "test_calibration": test_calibration,
    }


# ------------------------------------------------------------------------------------ backtest


@dataclass
class BacktestResult:
    """One model at one date: per-row scores, metrics with intervals, or the reason there are none."""

    model: ModelName
    run_date: pd.Timestamp
    rows: pd.DataFrame  # keys, cutoff, label, model, logistic, rule
    intervals: pd.DataFrame | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    fit: AsOfFit | None = None
    refusal: str | None = None

    @property
    def ok(self) -> bool:
        return self.refusal is None


def check_matured(wh: Warehouse, model: ModelName, run_date: pd.Timestamp, settings: Settings) -> None:
    """Refuse, in words, a date whose labels the data cannot decide yet."""
    horizon = pd.Timedelta(days=label_horizon_days(model, settings.labels))
    end = data_end(wh, model)
    if end is None or run_date + horizon > as_timestamp(end):
        ends = "holds no orders" if end is None else f"ends {as_timestamp(end):%Y-%m-%d}"
        raise NotMatured(f"{model} at {run_date:%Y-%m-%d}: its labels need data up to "
                         f"{run_date + horizon:%Y-%m-%d} ({horizon.days} days later), but the data {ends}")


def backtest_at(wh: Warehouse, model: ModelName, run_date: Any, settings: Settings,
                cache: FrameCache | None = None) -> BacktestResult:
    """Fit as ``train --cutoff run_date`` would, score the population at the date, label it from after.

    The logistic regression and the rule are refitted on the same rows and calibrated the same way,
    so every column of ``rows`` is what that scorer would have said on the morning of ``run_date``.
    """
    day = as_timestamp(run_date).normalize()
    check_matured(wh, model, day, settings)
    frame = labelled_frame(wh, model, day, settings)
    keys = [*key_columns(model), CUTOFF, LABEL]
    rows = frame[keys].copy()
    try:
        fit = fit_as_of(wh, model, settings_as_of(settings, day), cache)
    except NotEnoughData as exc:
        return BacktestResult(model, day, rows, refusal=str(exc))
    if not fit.registrable:
        return BacktestResult(model, day, rows, fit=fit, refusal=fit.refusal)
    assert fit.trained is not None and fit.baselines is not None
    X = frame[feature_columns(model)]
    scores = {"model": fit.trained.predict_proba(X), **fit.baselines.predict(X)} if len(frame) else {
        name: np.array([], dtype=float) for name in SCORERS}
    rows = rows.assign(model=scores["model"], logistic=scores["baseline_logreg"], rule=scores["baseline_rule"])
    y = frame[LABEL].to_numpy(dtype=float)
    cfg = settings.training
    result = BacktestResult(model, day, rows, fit=fit)
    result.metrics = {name: classification_metrics(y, scores[name], cfg.top_k) for name in SCORERS}
    if len(frame):
        clusters = frame[CLUSTER].to_numpy() if CLUSTER in frame else None
        result.intervals = bootstrap_intervals(y, scores, cfg.top_k, cfg.bootstrap_resamples, cfg.confidence,
                                               cfg.seed, clusters)
    return result


COLUMN_OF = {"model": "model", "baseline_logreg": "logistic", "baseline_rule": "rule"}
SCORER_NAME = {"model": "model", "baseline_logreg": "logistic", "baseline_rule": "rule",
               "model-baseline_logreg": "model-logistic"}


def per_row_scores(results: Sequence[BacktestResult]) -> pd.DataFrame:
    """Every scored row of every date: ids, cutoff, label, model, logistic, rule (the CSV a user
    can hold against their own model)."""
    frames = [r.rows for r in results if r.ok and len(r.rows)]
    if not frames:
        keys = key_columns(results[0].model) if results else []
        return pd.DataFrame(columns=[*keys, CUTOFF, LABEL, *COLUMN_OF.values()])
    return pd.concat(frames, ignore_index=True)


def metrics_table(results: Sequence[BacktestResult], pooled: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long table: date, scorer, metric, value, low, high, plus rows, positives and k of each date."""
    frames = []
    for r in results:
        if not r.ok or r.intervals is None:
            continue
        y = r.rows[LABEL]
        frames.append(r.intervals.assign(date=f"{r.run_date:%Y-%m-%d}", rows=len(y), positives=int(y.sum())))
    if pooled is not None:
        frames.append(pooled)
    if not frames:
        return pd.DataFrame(columns=["date", "scorer", "metric", "value", "low", "high", "rows", "positives"])
    table = pd.concat(frames, ignore_index=True)
    table["scorer"] = table["scorer"].map(SCORER_NAME).fillna(table["scorer"])
    return table[["date", "scorer", "metric", "value", "low", "high", "rows", "positives"]]


def pooled_intervals(results: Sequence[BacktestResult], settings: Settings) -> pd.DataFrame | None:
    """The dates' rows together (each scored by its own date's model): one more row, ``all dates``,
    where a date alone holds too few rows to say much (order models' daily populations)."""
    done = [r for r in results if r.ok and len(r.rows)]
    if len(done) < 2:
        return None
    rows = per_row_scores(done)
    cfg = settings.training
    scores = {name: rows[column].to_numpy(dtype=float) for name, column in COLUMN_OF.items()}
    clusters = rows[CLUSTER].to_numpy() if CLUSTER in rows else None
    table = bootstrap_intervals(rows[LABEL].to_numpy(dtype=float), scores, cfg.top_k, cfg.bootstrap_resamples,
                                cfg.confidence, cfg.seed, clusters)
    return table.assign(date="all dates", rows=len(rows), positives=int(rows[LABEL].sum()))


def step_of(day: pd.Timestamp) -> int:
    """MLflow step of a date, readable in the UI: 20171001."""
    return int(f"{day:%Y%m%d}")


def log_backtest_run(model: str, results: Sequence[BacktestResult], settings: Settings,
                     files: Sequence[Any] = ()) -> str:
    """One MLflow run in ``<prefix>-backtest`` per model and date grid: each date's metrics as steps."""
    from matplotlib.figure import Figure

    from tasks.models.registry import MODEL_TAG, configure, ensure_experiment

    client = configure(settings)
    experiment_id = ensure_experiment(client, settings, "backtest", (
        "aftersales backtests: one run per model and date grid, each date's metrics as steps for the "
        "model, its logistic regression and the rule on the same rows, with the paired differences."))
    days = [r.run_date for r in results]
    name = f"backtest-{model}-{min(days):%Y%m%d}-{max(days):%Y%m%d}" if days else f"backtest-{model}"
    table = metrics_table(results, pooled_intervals(results, settings))
    with mlflow_run(experiment_id, name) as run:
        import mlflow

        mlflow.set_tags({MODEL_TAG: model, "dates": ",".join(f"{d:%Y-%m-%d}" for d in days)[:5000]})
        mlflow.log_params({"model": model, "dates": len(days), "top_k": settings.training.top_k,
                           "bootstrap_resamples": settings.training.bootstrap_resamples,
                           "confidence": settings.training.confidence})
        for r in results:
            if not r.ok:
                mlflow.log_text(r.refusal or "", f"refused/{r.run_date:%Y-%m-%d}.txt")
        for row in table.itertuples(index=False):
            step = None if row.date == "all dates" else step_of(pd.Timestamp(row.date))
            key = f"{row.scorer.replace('-', '_minus_')}_{row.metric}" + ("" if step is not None else "_all_dates")
            values = {key: row.value, f"{key}_low": row.low, f"{key}_high": row.high}
            for metric, value in values.items():
                if value is not None and np.isfinite(value):
                    mlflow.log_metric(metric, float(value), step=step or 0)
        for path in files:
            mlflow.log_artifact(str(path), "backtest")
        if not any(r.ok for r in results):  # nothing judged: the refusals above say why, no empty plot
            return run.info.run_id
        figure = Figure(figsize=(8, 5), layout="constrained")
        axes = figure.subplots(1, 2)
        for ax, metric in zip(axes, ("roc_auc", "pr_auc"), strict=True):
            for scorer in ("model", "logistic", "rule"):
                part = table[(table["scorer"] == scorer) & (table["metric"] == metric) & (table["date"] != "all dates")]
                if part.empty:
                    continue
                x = pd.to_datetime(part["date"])
                ax.plot(x, part["value"], marker="o", label=scorer)
                ax.fill_between(x, part["low"], part["high"], alpha=0.15)
            ax.set(title=f"{model}: {metric.replace('_', '-').upper()} by date", xlabel="as of")
            ax.tick_params(axis="x", labelrotation=45)
            ax.legend(fontsize="small")
        mlflow.log_figure(figure, "backtest/metrics_by_date.png")
        return run.info.run_id


def mlflow_run(experiment_id: str, name: str) -> Any:
    import mlflow

    return mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=mlflow.active_run() is not None)


def write_backtest_files(model: str, results: Sequence[BacktestResult], settings: Settings,
                         out_dir: Any) -> list[Any]:
    """``<model>_rows.csv`` (every scored row) and ``<model>_metrics.csv`` (every date's metrics)."""
    from pathlib import Path

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    rows_path, metrics_path = folder / f"{model}_rows.csv", folder / f"{model}_metrics.csv"
    rows = per_row_scores(results)
    rows.assign(cutoff=pd.to_datetime(rows["cutoff"]).dt.strftime("%Y-%m-%d")).to_csv(rows_path, index=False)
    metrics_table(results, pooled_intervals(results, settings)).to_csv(metrics_path, index=False)
    return [rows_path, metrics_path]


# ---------------------------------------------------------------------------------- Prefect tasks


@task(name="fit-as-of", cache_policy=NO_CACHE)
def fit_as_of_task(wh: Warehouse, model: ModelName, settings: Settings) -> AsOfFit:
    return fit_as_of(wh, model, settings)


@task(name="backtest-at", cache_policy=NO_CACHE)
def backtest_at_task(wh: Warehouse, model: ModelName, run_date: Any, settings: Settings,
                     cache: FrameCache | None = None) -> BacktestResult:
    return backtest_at(wh, model, run_date, settings, cache)


@task(name="write-backtest-files", cache_policy=NO_CACHE)
def write_backtest_files_task(model: str, results: Sequence[BacktestResult], settings: Settings,
                              out_dir: Any) -> list[Any]:
    return write_backtest_files(model, results, settings, out_dir)


@task(name="log-backtest-run", cache_policy=NO_CACHE)
def log_backtest_run_task(model: str, results: Sequence[BacktestResult], settings: Settings,
                          files: Sequence[Any] = ()) -> str:
    return log_backtest_run(model, results, settings, files)
