"""Training sets over rolling cutoffs, split by time, and the matching scoring frame.

A training row is (entity, cutoff): the population of the model at that cutoff, its features as
of the cutoff and its label from after it. Splits are by cutoff date, never random: the test
window is the latest ``split.test_cutoffs`` cutoffs, validation the ``split.valid_cutoffs``
latest ones at least a *gap* before the test window, training every cutoff at least a gap before
validation. The gap is the larger of ``split.gap_days`` and the
model's label horizon, so no label window of an earlier split reaches into a later split's cutoff
(an entity that appears in two splits is scored on disjoint stretches of time).
"""

from __future__ import annotations

from typing import Any

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
    feature_names,
    order_features,
)
from tasks.models.labels import (
    MODELS,
    entity_key,
    key_columns,
    label_horizon_days,
    labels,
    latest_matured_cutoff,
    population,
)


def feature_columns(model: ModelName) -> list[str]:
    """The model's feature columns, in training order (keys, cutoff and label excluded)."""
    return feature_names(MODEL_ENTITY[model])


def categorical_columns(model: ModelName) -> list[str]:
    return categorical_features(MODEL_ENTITY[model])


def split_gap_days(model: ModelName | None, settings: Settings) -> int:
    """Days between consecutive splits: the configured gap, widened to cover the label window."""
    models = [model] if model else list(settings.training.models)
    horizons = [label_horizon_days(m, settings.labels) for m in models]
    return max([settings.split.gap_days, *horizons])


def rolling_cutoffs(
    wh: Warehouse, settings: Settings | None = None, model: ModelName | None = None
) -> list[pd.Timestamp]:
    """Cutoffs for a training set, oldest first: test, validation a gap earlier, then training ones.

    The newest is ``split.latest_cutoff`` or else the latest midnight whose labels have matured
    (for every configured model when ``model`` is None). The test window steps back from it by
    ``cutoff_step_days``; validation starts one gap before the test window; the remaining
    cutoffs step back from one gap before validation. Cutoffs before the first order are
    dropped. Cutoffs in between would be discarded by ``time_split`` anyway, so they are not built.
    """
    settings = settings or get_settings()
    models = [model] if model else list(settings.training.models)
    if settings.split.latest_cutoff:
        latest = as_timestamp(settings.split.latest_cutoff).floor("D")
    else:
        matured = [latest_matured_cutoff(wh, m, settings) for m in models]
        if any(m is None for m in matured):
            return []
        latest = min(m for m in matured if m is not None)
    gap = pd.Timedelta(days=split_gap_days(model, settings))
    step = pd.Timedelta(days=settings.split.cutoff_step_days)
    n_test, n_valid = max(1, settings.split.test_cutoffs), max(1, settings.split.valid_cutoffs)
    n_train = max(1, settings.split.n_cutoffs - n_test - n_valid)
    test = [latest - k * step for k in range(n_test)]
    valid = [test[-1] - gap - k * step for k in range(n_valid)]
    train = [valid[-1] - gap - k * step for k in range(n_train)]
    cutoffs = test + valid + train
    first = wh.scalar(f'SELECT min("{Orders.ordered_at}") FROM orders')
    if first is None:
        return []
    return sorted(c for c in cutoffs if c > pd.Timestamp(first))


def _features(wh: Warehouse, model: ModelName, cutoff: pd.Timestamp, ids: pd.DataFrame,
              settings: Settings) -> pd.DataFrame:
    if MODEL_ENTITY[model] == "order":
        return order_features(wh, cutoff, ids, settings)
    return customer_features(wh, cutoff, ids, settings)


def _assemble(frames: list[pd.DataFrame], model: ModelName, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Concatenate cutoffs, restore shared category levels, order rows, validate the contract."""
    columns = list(schema.columns)
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype=str(col.dtype)) for c, col in schema.columns.items()})
        return schema.validate(empty, lazy=True)
    df = pd.concat(frames, ignore_index=True)
    for column in categorical_columns(model):
        df[column] = categorize(df[column].astype("string"), FIXED_LEVELS.get(column, ()))
    df = df.sort_values([CUTOFF, entity_key(model)], kind="stable").reset_index(drop=True)
    return schema.validate(df[columns], lazy=True)


def _frame_at(wh: Warehouse, model: ModelName, cutoff: pd.Timestamp, settings: Settings,
              with_label: bool) -> pd.DataFrame:
    """Population, features and (optionally) label of one cutoff."""
    rows = labels(wh, model, cutoff, settings) if with_label else population(wh, model, cutoff, settings)
    key = entity_key(model)
    feats = _features(wh, model, cutoff, rows[[key]], settings)
    out = feats.merge(rows[[key, LABEL]] if with_label else rows[[key]], on=key, how="inner", validate="1:1")
    out.insert(len(key_columns(model)), CUTOFF, cutoff)
    return out


def build_training_set(
    wh: Warehouse, model: ModelName, cutoffs: list[pd.Timestamp], settings: Settings | None = None
) -> pd.DataFrame:
    """Rows of (entity, cutoff): keys, ``cutoff``, ``feature_columns(model)``, ``label``.

    Raises if any cutoff's labels have not matured. ``df.attrs["model"]`` records the model so
    ``time_split`` can size the gap.
    """
    settings = settings or get_settings()
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}")
    frames = [_frame_at(wh, model, as_timestamp(c), settings, with_label=True) for c in sorted(set(cutoffs))]
    frames = [f for f in frames if len(f)]
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


def time_split(
    df: pd.DataFrame, settings: Settings | None = None, model: ModelName | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, valid, test) by cutoff date with a gap; rows of cutoffs inside a gap are dropped.

    ``model`` (default ``df.attrs["model"]``) widens the gap to its label horizon.
    """
    settings = settings or get_settings()
    model = model or df.attrs.get("model")
    gap = pd.Timedelta(days=split_gap_days(model, settings) if model else settings.split.gap_days)
    cutoffs = sorted(pd.to_datetime(df[CUTOFF]).unique())
    if not cutoffs:
        raise ValueError("empty training set")
    test_cs = cutoffs[-max(1, settings.split.test_cutoffs):]
    earlier = [c for c in cutoffs if c <= test_cs[0] - gap]
    if not earlier:
        raise ValueError(f"no cutoff at least {gap.days} days before the test window {test_cs[0]:%Y-%m-%d}")
    valid_cs = earlier[-max(1, settings.split.valid_cutoffs):]
    train_cs = [c for c in cutoffs if c <= valid_cs[0] - gap]
    if not train_cs:
        raise ValueError(f"no cutoff at least {gap.days} days before the validation window {valid_cs[0]:%Y-%m-%d}")
    parts = (df[df[CUTOFF].isin(train_cs)], df[df[CUTOFF].isin(valid_cs)], df[df[CUTOFF].isin(test_cs)])
    train, valid, test = (p.reset_index(drop=True) for p in parts)
    for part in (train, valid, test):
        part.attrs = dict(df.attrs)
    horizon = pd.Timedelta(days=label_horizon_days(model, settings.labels)) if model else pd.Timedelta(0)
    assert_time_ordered(train, valid, test, gap, horizon)
    return train, valid, test


def assert_time_ordered(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame,
                        gap: pd.Timedelta, horizon: pd.Timedelta = pd.Timedelta(0)) -> None:
    """Each split ends a gap before the next begins, and no label window crosses into a later split."""
    for earlier, later, name in ((train, valid, "train/valid"), (valid, test, "valid/test"),
                                 (train, test, "train/test")):
        if earlier.empty or later.empty:
            continue
        last, first = earlier[CUTOFF].max(), later[CUTOFF].min()
        if last + gap > first:
            raise AssertionError(f"{name}: {last:%Y-%m-%d} + {gap.days}d gap overlaps {first:%Y-%m-%d}")
        if last + horizon > first:
            raise AssertionError(f"{name}: label windows of {last:%Y-%m-%d} reach past {first:%Y-%m-%d}")
