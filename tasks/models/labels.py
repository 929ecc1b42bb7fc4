"""Who is scored at a cutoff (the population) and what happened to them after it (the label).

Features never look past the cutoff; labels look only past it, by design. Populations use only
what was known at the cutoff (they are computed the same way on the scoring date), so a model is
trained on exactly the kind of rows it will score.

Order models score an order at the *moments* the shop can act on it (``orders_as_of_sql``): when
it was shipped, delivered or became overdue in the ``moment_window_days`` before the cutoff (the
time between two daily runs; overdue again every ``overdue_repeat_days``), or, in a shop without
shipment or delivery dates (invoice lines), when it was placed. A training row is (order, cutoff)
with the moment as a feature, so with daily cutoffs an order gives one row per moment (1-3), not
one per cutoff. Not cancelled, and not already returned / reviewed by the cutoff:

- ``return`` (moments ``return_moments``): label 1 when a return is requested, or the order is
  cancelled, after the cutoff and within ``return_window_days`` of its delivery (of the order
  itself at the ``ordered`` moment: "cancellation within 30 days of an invoice"; of the cutoff at a
  moment before delivery).
- ``negative_review`` (moments ``review_moments``; overdue rows are the late-delivery watch): label
  1 when a review with score <= ``negative_review_max_score`` is written after the cutoff and within
  ``review_window_days`` of it, before delivery too (a late order's complaint, or a marketplace
  that asks for the review as the parcel arrives).
- ``churn``: customers with an order in the ``churn_activity_days`` before the cutoff. Label 1 when
  they place no order in the ``churn_horizon_days`` after it.

Every label is decided within ``label_horizon_days(model)`` after the cutoff, so a cutoff's labels
are *matured* once the data reaches cutoff + horizon (``label_matured``). Dates: features and
populations read ``<= cutoff``, labels ``> cutoff``; a date-only export stores each date at the end
of its day, so an order on the cutoff's own day is in no feature and still in the label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from schemas.derived import CUTOFF, ENTITY_KEY, LABEL, MODEL_ENTITY, ModelName
from schemas.settings import LabelSettings, Settings, get_settings
from schemas.sources import Orders, Returns, Reviews
from tasks.data.warehouse import Warehouse
from tasks.models.features import (
    AT_CUTOFF,
    ago,
    as_of_sources,
    as_timestamp,
    at_each_cutoff,
    orders_as_of_sql,
    registered,
    run_sql,
)

MODELS: tuple[ModelName, ...] = ("return", "negative_review", "churn")

# the tables whose latest timestamp bounds what a model's labels can have seen
LABEL_CLOCKS: dict[str, tuple[tuple[str, str], ...]] = {
    "return": (("orders", Orders.ordered_at), ("returns", Returns.requested_at)),
    "negative_review": (("orders", Orders.ordered_at), ("reviews", Reviews.created_at)),
    "churn": (("orders", Orders.ordered_at),),
}


def _check_model(model: str) -> None:
    if model not in MODEL_ENTITY:
        raise ValueError(f"unknown model {model!r}; choose one of {list(MODEL_ENTITY)}")


def check_label_settings(labels: LabelSettings) -> None:
    """Moments must fit inside the label windows, or rows would be scored after the fact."""
    shortest = min(labels.return_window_days, labels.review_window_days)
    if not 0 < labels.moment_window_days < shortest:
        raise ValueError(f"moment_window_days must be positive and shorter than the label windows ({shortest} days)")
    if labels.overdue_repeat_days < 0:
        raise ValueError("overdue_repeat_days must be 0 (no repeat) or positive")
    if not labels.return_moments or not labels.review_moments:
        raise ValueError("return_moments and review_moments need at least one moment each")


def model_moments(model: ModelName, labels: LabelSettings) -> list[str]:
    """The moments an order model scores at (empty for churn)."""
    _check_model(model)
    return {"return": list(labels.return_moments), "negative_review": list(labels.review_moments)}.get(model, [])


def label_horizon_days(model: ModelName, labels: LabelSettings) -> int:
    """Days after the cutoff within which every label of ``model`` is decided."""
    _check_model(model)
    return {
        "return": labels.return_window_days,
        "negative_review": labels.review_window_days,
        "churn": labels.churn_horizon_days,
    }[model]


def data_end(wh: Warehouse, model: ModelName) -> pd.Timestamp | None:
    """How far the data reaches for this model's labels: the earliest of its sources' latest rows.

    Taking the earliest protects against a lagging export (returns loaded a week behind orders
    would otherwise read as "no return"). An empty optional source does not hold the clock back.
    """
    _check_model(model)
    ends = []
    for table, column in LABEL_CLOCKS[model]:
        value = wh.scalar(f'SELECT max("{column}") FROM "{table}"')
        if value is not None:
            ends.append(pd.Timestamp(value))
    return min(ends) if ends else None


def label_matured(wh: Warehouse, model: ModelName, cutoff: Any, settings: Settings | None = None) -> bool:
    """True when the data covers the whole label window after ``cutoff``."""
    settings = settings or get_settings()
    end = data_end(wh, model)
    horizon = pd.Timedelta(days=label_horizon_days(model, settings.labels))
    return end is not None and as_timestamp(cutoff) + horizon <= end


def latest_matured_cutoff(wh: Warehouse, model: ModelName, settings: Settings | None = None) -> pd.Timestamp | None:
    """The latest midnight whose labels have matured."""
    settings = settings or get_settings()
    end = data_end(wh, model)
    if end is None:
        return None
    return (end - pd.Timedelta(days=label_horizon_days(model, settings.labels))).floor("D")


# ---- populations ----------------------------------------------------------------------------
def population_sql(model: ModelName, labels: LabelSettings, sources: str = "") -> str:
    """SQL of the entities scored at ``$cutoff``: keys plus what the label needs.

    ``sources`` (``as_of_sources``) shadows the source tables with their versions as of the cutoff;
    it is scoped to this statement, so a label query around it still reads the latest rows.
    """
    _check_model(model)
    if model == "churn":
        return f"""
        WITH {sources}act AS (SELECT customer_id FROM orders
                     WHERE ordered_at <= $cutoff AND ordered_at > {ago(labels.churn_activity_days)})
        SELECT customer_id FROM act GROUP BY customer_id"""
    done = ("SELECT 1 FROM returns r WHERE r.order_id = o.order_id AND r.requested_at <= $cutoff"
            if model == "return" else
            "SELECT 1 FROM reviews r WHERE r.order_id = o.order_id AND r.created_at <= $cutoff")
    moments = ", ".join(f"'{m}'" for m in model_moments(model, labels))
    return f"""
        WITH {sources}ord AS ({orders_as_of_sql(labels)})
        SELECT o.order_id, o.customer_id, o.ordered_at, o.delivered_at, o.moment FROM ord o
        WHERE o.moment IN ({moments}) AND NOT o.cancelled AND NOT EXISTS ({done})"""


def key_columns(model: ModelName) -> list[str]:
    """Id columns of a model's rows: ``order_id, customer_id`` or ``customer_id``."""
    _check_model(model)
    return ["order_id", "customer_id"] if MODEL_ENTITY[model] == "order" else ["customer_id"]


def population(wh: Warehouse, model: ModelName, cutoff: Any, settings: Settings | None = None) -> pd.DataFrame:
    """The entities ``model`` scores at ``cutoff``: ``order_id, customer_id`` or ``customer_id``."""
    settings = settings or get_settings()
    check_label_settings(settings.labels)
    keys, cutoff = key_columns(model), as_timestamp(cutoff)
    sql = (f"SELECT {', '.join(keys)} FROM ({population_sql(model, settings.labels, as_of_sources(wh, cutoff))}) "
           f"ORDER BY {keys[0]}")
    return run_sql(wh, sql, {"cutoff": cutoff})


# ---- labels ----------------------------------------------------------------------------------
def _label_sql(model: ModelName, labels: LabelSettings, sources: str = "") -> str:
    """SQL of 0/1 for each population row; the only place that reads past ``$cutoff`` (latest rows)."""
    pop = population_sql(model, labels, sources)
    if model == "return":
        # the return window runs from delivery; from the order itself at the 'ordered' moment; from the
        # cutoff at a moment before delivery (so every label closes within return_window_days)
        until = (f"coalesce(p.delivered_at, CASE WHEN p.moment = 'ordered' THEN p.ordered_at END, $cutoff) "
                 f"+ INTERVAL {int(labels.return_window_days)} DAY")
        outcome = f"""EXISTS (SELECT 1 FROM returns r WHERE r.order_id = p.order_id
              AND r.requested_at > $cutoff AND r.requested_at <= {until})
            OR EXISTS (SELECT 1 FROM orders o WHERE o.order_id = p.order_id AND o.status = 'cancelled'
              AND o.updated_at > $cutoff AND o.updated_at <= {until})"""
    elif model == "negative_review":
        outcome = f"""EXISTS (SELECT 1 FROM reviews r WHERE r.order_id = p.order_id AND r.score <= $bad
              AND r.created_at > $cutoff AND r.created_at <= $cutoff + INTERVAL {int(labels.review_window_days)} DAY)"""
    else:
        outcome = f"""NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = p.customer_id
              AND o.ordered_at > $cutoff
              AND o.ordered_at <= $cutoff + INTERVAL {int(labels.churn_horizon_days)} DAY)"""
    keys = ", ".join(f"p.{k}" for k in key_columns(model))
    return f"SELECT {keys}, ({outcome})::INTEGER AS {LABEL} FROM ({pop}) p ORDER BY p.{key_columns(model)[0]}"


def require_matured(wh: Warehouse, model: ModelName, cutoff: Any, settings: Settings) -> None:
    """Raise unless the labels at ``cutoff`` have matured: an immature window would read "nothing
    happened yet" as a negative."""
    if not label_matured(wh, model, cutoff, settings):
        raise ValueError(
            f"{model} labels at {as_timestamp(cutoff):%Y-%m-%d} have not matured: the data must reach "
            f"{label_horizon_days(model, settings.labels)} days past the cutoff"
        )


def labels(wh: Warehouse, model: ModelName, cutoff: Any, settings: Settings | None = None) -> pd.DataFrame:
    """The population at ``cutoff`` with its ``label`` (keys as in ``population``).

    Raises if the labels have not matured: an immature window would read "nothing happened yet"
    as a negative.
    """
    settings = settings or get_settings()
    check_label_settings(settings.labels)
    require_matured(wh, model, cutoff, settings)
    cutoff = as_timestamp(cutoff)
    out = run_sql(wh, _label_sql(model, settings.labels, as_of_sources(wh, cutoff)),
                  {"cutoff": cutoff, "bad": settings.labels.negative_review_max_score})
    return out.astype({LABEL: "int64"})


def labels_at_cutoffs(wh: Warehouse, model: ModelName, cutoffs: Sequence[Any],
                      settings: Settings | None = None) -> pd.DataFrame:
    """``labels`` at each of ``cutoffs`` in one query (``at_each_cutoff``): ``cutoff`` first, then the
    keys and ``label``, rows by cutoff and key. Raises as ``labels`` does if the newest has not matured.

    Table versions are read as the oldest cutoff needs (the same rows at the newer ones).
    """
    settings = settings or get_settings()
    check_label_settings(settings.labels)
    stamps = sorted({as_timestamp(c) for c in cutoffs})
    if not stamps:
        return pd.DataFrame({CUTOFF: pd.Series(dtype="datetime64[ns]"),
                             **{k: pd.Series(dtype=object) for k in key_columns(model)},
                             LABEL: pd.Series(dtype="int64")})
    if len(stamps) == 1:  # a parameter, not a join: DuckDB prunes row groups by it (a large shop's batches)
        alone = labels(wh, model, stamps[0], settings)
        alone.insert(0, CUTOFF, pd.Series([stamps[0]] * len(alone), dtype="datetime64[ns]"))
        return alone
    require_matured(wh, model, stamps[-1], settings)  # the newest: maturity only grows further back
    one = _label_sql(model, settings.labels, as_of_sources(wh, stamps[0]))
    with registered(wh, pd.DataFrame({"cutoff": pd.Series(stamps, dtype="datetime64[us]")}), "label_cutoffs") as name:
        sql = f"SELECT * FROM ({at_each_cutoff(one, f'(SELECT cutoff FROM {name})')}) ORDER BY 1, 2"
        out = run_sql(wh, sql, {"bad": settings.labels.negative_review_max_score})
    out = out.rename(columns={AT_CUTOFF: CUTOFF}).astype({LABEL: "int64"})
    out[CUTOFF] = pd.to_datetime(out[CUTOFF]).astype("datetime64[ns]")
    return out


def entity_key(model: ModelName) -> str:
    """The id column a model's rows are keyed by."""
    _check_model(model)
    return ENTITY_KEY[MODEL_ENTITY[model]]
