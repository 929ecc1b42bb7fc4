"""Training frames over rolling cutoffs, planned *as of* a date, and the rolling-origin folds on them.

A training row is (entity, cutoff c): the model's population at c, its features as of c and its
label from after c, decided by c + horizon (``label_horizon_days``). Training **as of D** uses only
rows with c + horizon <= D, so nothing whose label closes after D is read; ``aftersales train
--cutoff D`` followed by ``aftersales score --date D`` is therefore exactly a backtest at D.

The plan (``plan_cutoffs``) derives everything from the data's span and the label horizon: a step
(daily for order models, weekly or every 14 days for customers), a minimum history before the
first cutoff, and K rolling origins e_1 < ... < e_K, the newest being the latest matured cutoff.
Each origin evaluates a window of cutoffs ending at it (one cutoff for customer models, the pooled
cutoffs of ``split.order_eval_window_days`` for order models, whose daily populations are small)
and trains on rows whose labels closed before the window starts (*purged*: c + horizon <= start).
The frame is built once for every cutoff; folds are index slices of it (``origin_folds``).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pandera.pandas as pa

from schemas.derived import CUTOFF, LABEL, MODEL_ENTITY, ModelName, scoring_frame_schema, training_set_schema
from schemas.settings import Settings, get_settings
from schemas.sources import Orders
from tasks.data.warehouse import Warehouse
from tasks.models.features import (
    FIXED_LEVELS,
    as_timestamp,
    categorical_features,
    categorize,
    customer_features,
    cutoff_batches,
    feature_names,
    features_at_cutoffs,
    order_features,
)
from tasks.models.labels import (
    MODELS,
    data_end,
    entity_key,
    key_columns,
    label_horizon_days,
    labels,
    labels_at_cutoffs,
    population,
)

DAY = pd.Timedelta(days=1)
SAMPLE_KEY = "customer_id"  # rows are capped by customer, so one customer's rows stay together
FrameCache = MutableMapping[tuple[str, pd.Timestamp], pd.DataFrame]
T = TypeVar("T")


def side_by_side(wh: Warehouse, jobs: Sequence[Callable[[Warehouse], T]], threads: int | None) -> list[T]:
    """``[job(wh) for job in jobs]``, run on ``threads`` threads (default: the cores), each with its own
    cursor on the database; results in the jobs' order.

    Why: the training frame's batches of cutoffs (``cutoff_batches``: one on a small shop, several on a
    large one) are independent queries; small ones leave cores idle, which the others use (when one
    query per cutoff was the rule: 800-customer shop, 120 cutoffs, 19.2 s -> 10.7 s on 2 cores). In one
    thread inside a write transaction: other cursors would not see it.
    """
    threads = min(threads or os.cpu_count() or 1, len(jobs))
    if threads <= 1 or wh.in_transaction:
        return [job(wh) for job in jobs]
    local, opened, lock = threading.local(), [], threading.Lock()

    def run(job: Callable[[Warehouse], T]) -> T:
        if not hasattr(local, "wh"):
            local.wh = wh.cursor()
            with lock:
                opened.append(local.wh)
        return job(local.wh)

    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="aftersales-frame") as pool:
            return list(pool.map(run, jobs))
    finally:
        for cursor in opened:
            cursor.close()


class NotEnoughData(RuntimeError):
    """The warehouse cannot (yet) give this model a training frame and an honest test; says why."""


class LeakageError(AssertionError):
    """A fold would train on a label that closes after its evaluated cutoffs."""


def feature_columns(model: ModelName) -> list[str]:
    """The model's feature columns, in training order (keys, cutoff and label excluded)."""
    return feature_names(MODEL_ENTITY[model])


def categorical_columns(model: ModelName) -> list[str]:
    return categorical_features(MODEL_ENTITY[model])


# ---------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class CutoffPlan:
    """Which cutoffs a model trains and is judged on as of a date, and why (``notes``)."""

    model: ModelName
    as_of: pd.Timestamp
    first_order: pd.Timestamp
    data_end: pd.Timestamp
    horizon_days: int
    step_days: int
    min_history_days: int
    eval_window_days: int
    spacing_days: int
    cutoffs: tuple[pd.Timestamp, ...]
    origins: tuple[pd.Timestamp, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def horizon(self) -> pd.Timedelta:
        return pd.Timedelta(days=self.horizon_days)

    @property
    def latest(self) -> pd.Timestamp:
        """The newest cutoff: the latest whose label has matured by the as-of date."""
        return self.cutoffs[-1]

    def window(self, origin: pd.Timestamp) -> list[pd.Timestamp]:
        """The cutoffs an origin evaluates: those in (origin - window, origin]."""
        start = origin - pd.Timedelta(days=self.eval_window_days)
        return [c for c in self.cutoffs if start < c <= origin]

    def train_cutoffs(self, origin: pd.Timestamp) -> list[pd.Timestamp]:
        """Cutoffs whose labels closed before the origin's window starts (the purge)."""
        first = self.window(origin)[0]
        return [c for c in self.cutoffs if c + self.horizon <= first]

    def describe(self) -> str:
        origins = ", ".join(f"{o:%Y-%m-%d}" for o in self.origins)
        return (f"as of {self.as_of:%Y-%m-%d}: {len(self.cutoffs)} cutoffs every {self.step_days} days "
                f"{self.cutoffs[0]:%Y-%m-%d} .. {self.latest:%Y-%m-%d} (first after {self.min_history_days} days "
                f"of history, the newest {self.horizon_days} days before the as-of date); origins {origins}, "
                f"each evaluating {self.eval_window_days} day(s)")


def _derived_step(model: ModelName, span_days: int, settings: Settings) -> int:
    if MODEL_ENTITY[model] == "order":
        return max(1, settings.split.order_step_days)
    if settings.split.customer_step_days:
        return settings.split.customer_step_days
    return 7 if span_days <= 730 else 14


def plan_cutoffs(wh: Warehouse, model: ModelName, settings: Settings | None = None) -> CutoffPlan:
    """The cutoffs and origins of ``model`` as of ``split.as_of`` (default: the end of its data).

    Raises ``NotEnoughData`` with the reason in words when the history cannot hold one cutoff with
    its minimum history and matured label.
    """
    settings = settings or get_settings()
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}")
    cfg = settings.split
    horizon = label_horizon_days(model, settings.labels)
    end = data_end(wh, model)
    first_value = wh.scalar(f'SELECT min("{Orders.ordered_at}") FROM orders')
    if end is None or first_value is None:
        raise NotEnoughData(f"{model}: the warehouse holds no orders yet")
    first = as_timestamp(first_value)
    as_of = as_timestamp(cfg.as_of) if cfg.as_of else as_timestamp(end)
    notes = []
    known = min(as_of, as_timestamp(end))
    if as_of > known:
        notes.append(f"the data ends {known:%Y-%m-%d %H:%M}, before the as-of date: labels mature only up to there")
    latest = (known - pd.Timedelta(days=horizon)).floor("D")
    span = max(0, (known - first).days)
    step = _derived_step(model, span, settings)
    min_history = cfg.min_history_days if cfg.min_history_days is not None else int(np.clip(span // 12, step, 30))
    start = (first + pd.Timedelta(days=min_history)).ceil("D")
    if latest < start:
        raise NotEnoughData(
            f"{model}: the data from {first:%Y-%m-%d} to {known:%Y-%m-%d} ({span} days) is shorter than "
            f"{min_history} days of history plus the {horizon}-day label window; no cutoff has a matured label")
    n_days = (latest - start).days
    if n_days // step + 1 > cfg.max_cutoffs and MODEL_ENTITY[model] == "order":
        # order rows must be drawn at the moments a scoring day draws them (its daily step): wider steps
        # put orders days past their moment into training (and the drift gate flagged every first day)
        start = latest - (cfg.max_cutoffs - 1) * pd.Timedelta(days=step)
        notes.append(f"{n_days // step + 1} cutoffs every {step} days exceed split.max_cutoffs={cfg.max_cutoffs}: "
                     f"the newest {cfg.max_cutoffs} are used, from {start:%Y-%m-%d}")
        n_days = (latest - start).days
    elif n_days // step + 1 > cfg.max_cutoffs:
        wider = math.ceil(n_days / max(1, cfg.max_cutoffs - 1))
        notes.append(f"{n_days // step + 1} cutoffs every {step} days exceed split.max_cutoffs={cfg.max_cutoffs}: "
                     f"one every {wider} days instead")
        step = wider
    cutoffs = sorted(latest - k * pd.Timedelta(days=step) for k in range(n_days // step + 1))
    window = max(cfg.order_eval_window_days, step) if MODEL_ENTITY[model] == "order" else 1
    spacing = cfg.origin_spacing_days or max(window, 2 * step, 7)
    spacing = math.ceil(spacing / step) * step
    plan = CutoffPlan(model, as_of, first, as_timestamp(end), horizon, step, min_history, window, spacing,
                      tuple(cutoffs), (), tuple(notes))
    origins = [latest - k * pd.Timedelta(days=spacing) for k in range(max(1, cfg.backtest_origins))]
    usable = sorted(o for o in origins if o >= cutoffs[0] and plan.train_cutoffs(o))
    dropped = len(origins) - len(usable)
    if dropped:
        notes.append(f"{dropped} of {len(origins)} origins dropped: no matured training cutoff before their window")
    return CutoffPlan(model, as_of, first, as_timestamp(end), horizon, step, min_history, window, spacing,
                      tuple(cutoffs), tuple(usable), tuple(notes))


def rolling_cutoffs(
    wh: Warehouse, settings: Settings | None = None, model: ModelName | None = None
) -> list[pd.Timestamp]:
    """Every training cutoff of ``model`` as of ``split.as_of``, oldest first (empty if none).

    The last one is the latest cutoff whose label has matured (what promotion compares on).
    """
    if model is None:
        raise ValueError("rolling_cutoffs needs the model: each has its own label horizon")
    try:
        return list(plan_cutoffs(wh, model, settings).cutoffs)
    except NotEnoughData:
        return []


# --------------------------------------------------------------------------------------- frames


def _features(wh: Warehouse, model: ModelName, cutoff: pd.Timestamp, ids: pd.DataFrame,
              settings: Settings) -> pd.DataFrame:
    """One cutoff's features, unchecked: every caller validates the frames it assembles once
    (``_assemble``); checking each cutoff as well took a third of a small shop's training frame."""
    if MODEL_ENTITY[model] == "order":
        return order_features(wh, cutoff, ids, settings, validate=False)
    return customer_features(wh, cutoff, ids, settings, validate=False)


def _assemble(frames: list[pd.DataFrame], model: ModelName, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Concatenate cutoffs, restore shared category levels, order rows, validate the contract."""
    columns = list(schema.columns)
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype=str(col.dtype)) for c, col in schema.columns.items()})
        return schema.validate(empty, lazy=True)
    df = pd.concat(frames, ignore_index=True)
    for column in categorical_columns(model):
        df[column] = categorize(df[column], FIXED_LEVELS.get(column, ()))
    if not in_order(df, [CUTOFF, entity_key(model)]):
        df = df.sort_values([CUTOFF, entity_key(model)], kind="stable").reset_index(drop=True)
    return schema.validate(df[columns], lazy=True)


def in_order(df: pd.DataFrame, by: list[str]) -> bool:
    """True when a stable sort by ``by`` would leave ``df`` as it is: one value of the first column
    and the second ascending (one cutoff's query comes back ordered by its key). A scoring frame of
    a 1M-customer shop sorted its 482k ids again in 0.2 s."""
    first, second = by
    return bool(len(df) == 0 or (df[first].nunique(dropna=False) == 1 and df[second].is_monotonic_increasing))


def join_one_to_one(feats: pd.DataFrame, rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """``feats.merge(rows, on=key, how="inner", validate="1:1")``, without the merge when both list
    the same unique keys in the same order (a cutoff's features come back in its population's
    order): the merge's key checks took 0.65 s of a 1M-customer shop's churn frame."""
    if feats[key].array.equals(rows[key].array) and rows[key].is_unique:
        out = feats.reset_index(drop=True)  # the merge's fresh index
        for column in rows.columns.drop(key):
            out[column] = rows[column].array
        return out
    return feats.merge(rows, on=key, how="inner", validate="1:1")


def _frame_at(wh: Warehouse, model: ModelName, cutoff: pd.Timestamp, settings: Settings,
              with_label: bool, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Population (or the given ``rows`` of it), features and (optionally) label of one cutoff."""
    if rows is None:
        rows = labels(wh, model, cutoff, settings) if with_label else population(wh, model, cutoff, settings)
    key = entity_key(model)
    if rows.empty:
        return pd.DataFrame()
    feats = _features(wh, model, cutoff, rows[[key]], settings)
    out = join_one_to_one(feats, rows[[key, LABEL]] if with_label else rows[[key]], key)
    out.insert(len(key_columns(model)), CUTOFF, cutoff)
    return out


def stable_share(ids: pd.Series, seed: int) -> np.ndarray:
    """A number in [0, 1) per id, fixed by the id and the seed alone (not by which rows exist)."""
    hashed = pd.util.hash_array(ids.astype(str).to_numpy(dtype=object), hash_key=f"aftersales{seed:06d}"[:16])
    return hashed.astype(np.float64) / 2.0**64


def frame_settings(model: ModelName, plan: CutoffPlan, settings: Settings) -> tuple[Settings, str | None]:
    """Order cutoffs further apart than ``labels.moment_window_days``: widen the moment window to the
    step (below the label windows), so each order is still seen once at each of its moments."""
    labels_cfg = settings.labels
    if MODEL_ENTITY[model] != "order" or plan.step_days <= labels_cfg.moment_window_days:
        return settings, None
    shortest = min(labels_cfg.return_window_days, labels_cfg.review_window_days)
    window = float(min(plan.step_days, shortest - 1))
    data = settings.model_dump()
    data["labels"]["moment_window_days"] = window
    return Settings(**data), (f"order cutoffs every {plan.step_days} days: training rows take the moments of the "
                              f"{window:g} days before each cutoff")


def build_training_frame(
    wh: Warehouse, model: ModelName, plan: CutoffPlan, settings: Settings | None = None,
    cache: FrameCache | None = None,
) -> pd.DataFrame:
    """Every cutoff of the plan in one frame: keys, ``cutoff``, features, ``label``.

    Populations and labels come first (cheap); beyond ``split.max_training_rows`` a stable share of
    customers is kept (the same customers whatever else the data holds); features are computed for
    the kept rows only. ``cache`` keeps finished cutoffs (and their labels) across calls: a backtest
    over many dates, or the order models' frames built together (``build_training_frames``).
    Notes for the run are in ``frame.attrs["notes"]``.
    """
    return build_training_frames(wh, {model: plan}, settings, cache)[model]


def label_cache_key(model: ModelName, cutoff: pd.Timestamp, settings: Settings) -> tuple[str, pd.Timestamp]:
    """Where a cutoff's labelled population is kept in a ``FrameCache`` (its moments depend on the settings)."""
    return f"{model}:labels:{settings.labels.moment_window_days:g}", cutoff


def build_training_frames(
    wh: Warehouse, plans: dict[ModelName, CutoffPlan], settings: Settings | None = None,
    cache: FrameCache | None = None,
) -> dict[ModelName, pd.DataFrame]:
    """``build_training_frame`` of each planned model; at a cutoff two order models share, one order
    feature pass serves both (``fill_training_cache``)."""
    cache = cache if cache is not None else {}
    todo, meta = fill_training_cache(wh, plans, settings, cache)
    out = {}
    for model, cutoffs in todo.items():
        _, notes, total = meta[model]
        frames = [cache[key] for key, _ in cutoffs.values() if len(cache[key])]
        out[model] = _assemble(frames, model, training_set_schema(model))
        out[model].attrs.update(model=model, notes=notes, rows_before_sampling=total)
    return out


Todo = dict[ModelName, dict[pd.Timestamp, tuple[tuple[str, pd.Timestamp], pd.DataFrame]]]
Meta = dict[ModelName, tuple[Settings, list[str], int]]


def labels_by_cutoff(wh: Warehouse, model: ModelName, cutoffs: Sequence[pd.Timestamp], settings: Settings,
                     threads: int | None) -> dict[pd.Timestamp, pd.DataFrame]:
    """``labels`` at each cutoff (in the order given), built in batches (``cutoff_batches``) side by side."""
    if not cutoffs:
        return {}
    batches = cutoff_batches(wh, cutoffs, settings)
    found = pd.concat(side_by_side(wh, [partial(labels_at_cutoffs, model=model, cutoffs=batch, settings=settings)
                                        for batch in batches], threads), ignore_index=True)
    parts = dict(list(found.groupby(CUTOFF, sort=False)))
    return {c: parts.get(c, found.iloc[:0]).drop(columns=CUTOFF).reset_index(drop=True) for c in cutoffs}


def fill_training_cache(wh: Warehouse, plans: dict[ModelName, CutoffPlan], settings: Settings | None,
                        cache: FrameCache) -> tuple[Todo, Meta]:
    """Every planned (model, cutoff) frame in ``cache``, with the key each is kept under; the order
    models' cutoffs they share take one feature pass (the union of their kept rows: a subset narrows
    rows, never history). Also returns per model its settings, run notes and rows before sampling."""
    base = settings or get_settings()
    todo: Todo = {}
    meta: Meta = {}
    threads = base.split.frame_threads
    for model, plan in plans.items():
        model_settings, widened = frame_settings(model, plan, base)
        label_keys = [label_cache_key(model, c, model_settings) for c in plan.cutoffs]
        missing = [key for key in label_keys if key not in cache]
        found = labels_by_cutoff(wh, model, [c for _, c in missing], model_settings, threads)
        cache.update(zip(missing, found.values(), strict=True))
        rows = {c: cache[key] for key, c in zip(label_keys, plan.cutoffs, strict=True)}
        total = sum(len(r) for r in rows.values())
        notes: list[str] = [widened] if widened else []
        share = 1.0
        if total > model_settings.split.max_training_rows:
            share = model_settings.split.max_training_rows / total
            notes.append(f"{total:,} training rows exceed split.max_training_rows="
                         f"{model_settings.split.max_training_rows:,}: a stable {share:.0%} of customers is kept")
        todo[model] = {}
        for cutoff, labelled in rows.items():
            if share < 1.0 and len(labelled):
                keep_ids = labelled[SAMPLE_KEY] if SAMPLE_KEY in labelled else labelled[entity_key(model)]
                labelled = labelled[stable_share(keep_ids, model_settings.training.seed) < share]
            key = (model, cutoff) if share == 1.0 else (f"{model}@{share:.6f}", cutoff)
            todo[model][cutoff] = (key, labelled)
        meta[model] = (model_settings, notes, total)
    _fill_features(wh, todo, meta, cache, threads)
    return todo, meta


def _fill_features(wh: Warehouse, todo: Todo, meta: Meta, cache: FrameCache, threads: int | None) -> None:
    """Every planned (model, cutoff) frame not yet in ``cache``, its features built many cutoffs to a
    query (``features_at_cutoffs``, batches by ``cutoff_batches``, side by side on ``threads``).

    Models of one entity with the same label settings share each query: it is asked for the union of
    their rows at each cutoff (a subset narrows rows, never history), each model keeps its own.
    """
    groups: dict[tuple[str, str], list[tuple[ModelName, pd.Timestamp]]] = {}
    for model, cutoffs in todo.items():
        for cutoff, (key, labelled) in cutoffs.items():
            if key in cache:
                continue
            if labelled.empty:
                cache[key] = pd.DataFrame()
                continue
            group = (MODEL_ENTITY[model], meta[model][0].labels.model_dump_json())
            groups.setdefault(group, []).append((model, cutoff))
    for (entity, _), members in groups.items():
        settings = meta[members[0][0]][0]
        key_column = entity_key(members[0][0])
        wanted = pd.concat([todo[m][c][1][[key_column]].assign(**{CUTOFF: c}) for m, c in members],
                           ignore_index=True).drop_duplicates(ignore_index=True)
        batches = cutoff_batches(wh, list(wanted[CUTOFF].unique()), settings)
        jobs = [partial(features_at_cutoffs, entity=entity, wanted=wanted[wanted[CUTOFF].isin(batch)],
                        settings=settings) for batch in batches]
        features = pd.concat(side_by_side(wh, jobs, threads), ignore_index=True)
        for model in dict.fromkeys(m for m, _ in members):
            cutoffs = [c for m, c in members if m == model]
            labelled = pd.concat([todo[model][c][1][[key_column, LABEL]].assign(**{CUTOFF: c}) for c in cutoffs],
                                 ignore_index=True)
            frame = features.merge(labelled, on=[CUTOFF, key_column], how="inner", validate="1:1")
            frame = frame[[*key_columns(model), CUTOFF, *frame.columns.drop([*key_columns(model), CUTOFF])]]
            parts = dict(list(frame.groupby(CUTOFF, sort=False)))
            for cutoff in cutoffs:
                part = parts.get(cutoff, frame.iloc[:0])
                cache[todo[model][cutoff][0]] = part.reset_index(drop=True) if len(part) else pd.DataFrame()


def build_training_set(
    wh: Warehouse, model: ModelName, cutoffs: list[pd.Timestamp], settings: Settings | None = None
) -> pd.DataFrame:
    """Rows of (entity, cutoff) at the given cutoffs: keys, ``cutoff``, ``feature_columns(model)``, ``label``.

    Raises if any cutoff's labels have not matured.
    """
    settings = settings or get_settings()
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}")
    stamps = sorted({as_timestamp(c) for c in cutoffs})
    threads = settings.split.frame_threads
    todo: Todo = {model: {c: ((model, c), rows) for c, rows in
                          labels_by_cutoff(wh, model, stamps, settings, threads).items()}}
    cache: FrameCache = {}
    _fill_features(wh, todo, {model: (settings, [], 0)}, cache, threads)
    frames = [cache[(model, c)] for c in stamps if len(cache[(model, c)])]
    out = _assemble(frames, model, training_set_schema(model))
    out.attrs["model"] = model
    return out


def scoring_frame(wh: Warehouse, model: ModelName, as_of: Any, settings: Settings | None = None) -> pd.DataFrame:
    """The model's population at the run date with the same features as training, no label."""
    settings = settings or get_settings()
    frame = _frame_at(wh, model, as_timestamp(as_of), settings, with_label=False)
    out = _assemble([frame] if len(frame) else [], model, scoring_frame_schema(model))
    out.attrs["model"] = model
    return out


def scoring_frames(wh: Warehouse, models: list[ModelName], as_of: Any,
                   settings: Settings | None = None) -> dict[ModelName, pd.DataFrame]:
    """``scoring_frame`` of each model; the order models share one feature pass over their populations.

    Why: an order's features do not depend on which other orders are asked for (the subset narrows
    the rows, never the history), and most of a pass is reading that history: the return and
    negative-review models score many of the same day's orders, so one pass serves both.
    """
    settings = settings or get_settings()
    day = as_timestamp(as_of)
    rows = {m: population(wh, m, day, settings) for m in models}
    shared_models = [m for m in models if MODEL_ENTITY[m] == "order" and len(rows[m])]
    shared = pd.DataFrame()
    if len(shared_models) > 1:
        key = entity_key(shared_models[0])
        wanted = pd.concat([rows[m][[key]] for m in shared_models]).drop_duplicates(ignore_index=True)
        shared = order_features(wh, day, wanted, settings, validate=False)
    out = {}
    for model in models:
        if model in shared_models and len(shared_models) > 1:
            key = entity_key(model)
            feats = shared[shared[key].isin(rows[model][key])].reset_index(drop=True)
            frame = join_one_to_one(feats, rows[model][[key]], key)
            frame.insert(len(key_columns(model)), CUTOFF, day)
        else:
            frame = _frame_at(wh, model, day, settings, with_label=False, rows=rows[model])
        out[model] = _assemble([frame] if len(frame) else [], model, scoring_frame_schema(model))
        out[model].attrs["model"] = model
    return out


def labelled_frame(wh: Warehouse, model: ModelName, as_of: Any, settings: Settings | None = None) -> pd.DataFrame:
    """The population at a date with features as of it and the label from after it (a backtest's rows)."""
    settings = settings or get_settings()
    frame = _frame_at(wh, model, as_timestamp(as_of), settings, with_label=True)
    out = _assemble([frame] if len(frame) else [], model, training_set_schema(model))
    out.attrs["model"] = model
    return out


# ---------------------------------------------------------------------------------------- folds


@dataclass(frozen=True)
class Fold:
    """One rolling origin: positions of its training rows and of its evaluated rows in the frame."""

    origin: pd.Timestamp
    window_start: pd.Timestamp
    train: np.ndarray
    evaluate: np.ndarray

    def describe(self) -> str:
        span = (f"{self.window_start:%Y-%m-%d}..{self.origin:%Y-%m-%d}" if self.window_start != self.origin
                else f"{self.origin:%Y-%m-%d}")
        return f"origin {span}: {self.train.size:,} training rows, {self.evaluate.size:,} evaluated"


def check_fold(frame: pd.DataFrame, fold: Fold, horizon: pd.Timedelta) -> None:
    """Refuse a fold whose training rows' label windows reach into its evaluated window.

    Also refuses training rows at or after the window and evaluated rows outside it.
    """
    cutoffs = pd.to_datetime(frame[CUTOFF])
    trained = cutoffs.iloc[fold.train]
    if len(trained) and (late := trained[trained + horizon > fold.window_start]).size:
        raise LeakageError(
            f"origin {fold.origin:%Y-%m-%d}: {late.size} training rows (cutoffs {late.min():%Y-%m-%d}.."
            f"{late.max():%Y-%m-%d}) have labels that close after the evaluated window starts "
            f"{fold.window_start:%Y-%m-%d} ({horizon.days}-day horizon)")
    judged = cutoffs.iloc[fold.evaluate]
    if len(judged) and ((judged < fold.window_start) | (judged > fold.origin)).any():
        raise LeakageError(f"origin {fold.origin:%Y-%m-%d}: evaluated rows outside its window")


def origin_folds(frame: pd.DataFrame, plan: CutoffPlan) -> list[Fold]:
    """One fold per origin of the plan, oldest first, each checked by ``check_fold``."""
    cutoffs = pd.to_datetime(frame[CUTOFF]).to_numpy()
    folds = []
    for origin in plan.origins:
        window = plan.window(origin)
        train = np.flatnonzero(np.isin(cutoffs, np.array(plan.train_cutoffs(origin), dtype="datetime64[ns]")))
        evaluate = np.flatnonzero(np.isin(cutoffs, np.array(window, dtype="datetime64[ns]")))
        fold = Fold(origin, window[0], train, evaluate)
        check_fold(frame, fold, plan.horizon)
        folds.append(fold)
    return folds


def refit_rows(frame: pd.DataFrame, plan: CutoffPlan) -> np.ndarray:
    """Positions of the rows the registered model is refitted on: every cutoff with a label matured
    by the as-of date (all of the plan's cutoffs; checked, since a cache could hold others)."""
    cutoffs = pd.to_datetime(frame[CUTOFF])
    late = cutoffs + plan.horizon > plan.as_of
    if late.any():
        raise LeakageError(f"{int(late.sum())} rows have labels closing after the as-of date {plan.as_of:%Y-%m-%d}")
    return np.arange(len(frame))
