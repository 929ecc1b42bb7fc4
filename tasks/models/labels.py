"""Who is scored at a cutoff (the population) and what happened to them after it (the label).

Features never look past the cutoff; labels look only past it, by design. Populations use only
what was known at the cutoff (they are computed the same way on the scoring date), so a model is
trained on exactly the kind of rows it will score:

- ``return``: orders delivered in the ``return_population_days`` before the cutoff, not cancelled,
  with no return requested yet. Label 1 when a return is requested after the cutoff and within
  ``return_window_days`` of delivery.
- ``negative_review``: orders without a review yet, not cancelled, and either delivered in the
  ``review_population_days`` before the cutoff or still undelivered past their promised date (by
  at most ``review_window_days``). Label 1 when a review with score <= ``negative_review_max_score``
  is written after the cutoff that counts for the order: within ``review_window_days`` after
  delivery, or before delivery but after the promised date (a late order).
- ``churn``: customers with an order in the ``churn_activity_days`` before the cutoff. Label 1 when
  they place no order in the ``churn_horizon_days`` after it.

Every label is decided within ``label_horizon_days(model)`` after the cutoff, so a cutoff's labels
are *matured* once the data reaches cutoff + horizon (``label_matured``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from schemas.derived import ENTITY_KEY, LABEL, MODEL_ENTITY, ModelName
from schemas.settings import LabelSettings, Settings, get_settings
from schemas.sources import Orders, Returns, Reviews
from tasks.data.warehouse import Warehouse
from tasks.models.features import ago, as_timestamp, orders_as_of_sql, run_sql

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
    """Populations must sit inside their label windows, or rows would be scored after the fact."""
    if labels.return_population_days >= labels.return_window_days:
        raise ValueError("return_population_days must be shorter than return_window_days")
    if labels.review_population_days >= labels.review_window_days:
        raise ValueError("review_population_days must be shorter than review_window_days")


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


# ---- populations -----------------------------------------------------------------------------
def population_sql(model: ModelName, labels: LabelSettings) -> str:
    """SQL of the entities scored at ``$cutoff`` (keys plus what the label needs)."""
    _check_model(model)
    if model == "return":
        return f"""
        SELECT o.order_id, o.customer_id, o.delivered_at FROM ({orders_as_of_sql()}) o
        WHERE o.delivered_at > {ago(labels.return_population_days)} AND NOT o.cancelled
          AND NOT EXISTS (SELECT 1 FROM returns r WHERE r.order_id = o.order_id AND r.requested_at <= $cutoff)"""
    if model == "negative_review":
        return f"""
        SELECT o.order_id, o.customer_id, o.delivered_at FROM ({orders_as_of_sql()}) o
        WHERE NOT o.cancelled
          AND (o.delivered_at > {ago(labels.review_population_days)}
               OR (o.overdue AND o.promised_at >= {ago(labels.review_window_days)}))
          AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.order_id = o.order_id AND r.created_at <= $cutoff)"""
    return f"""
        SELECT customer_id FROM orders
        WHERE ordered_at <= $cutoff AND ordered_at > {ago(labels.churn_activity_days)}
        GROUP BY customer_id"""


def key_columns(model: ModelName) -> list[str]:
    """Id columns of a model's rows: ``order_id, customer_id`` or ``customer_id``."""
    _check_model(model)
    return ["order_id", "customer_id"] if MODEL_ENTITY[model] == "order" else ["customer_id"]


def population(wh: Warehouse, model: ModelName, cutoff: Any, settings: Settings | None = None) -> pd.DataFrame:
    """The entities ``model`` scores at ``cutoff``: ``order_id, customer_id`` or ``customer_id``."""
    settings = settings or get_settings()
    check_label_settings(settings.labels)
    keys = key_columns(model)
    sql = f"SELECT {', '.join(keys)} FROM ({population_sql(model, settings.labels)}) ORDER BY {keys[0]}"
    return run_sql(wh, sql, {"cutoff": as_timestamp(cutoff)})


# ---- labels ----------------------------------------------------------------------------------
def _label_sql(model: ModelName, labels: LabelSettings) -> str:
    """SQL of 0/1 for each population row; the only place that reads past ``$cutoff``."""
    pop = population_sql(model, labels)
    if model == "return":
        outcome = f"""EXISTS (SELECT 1 FROM returns r WHERE r.order_id = p.order_id
              AND r.requested_at > $cutoff
              AND r.requested_at <= p.delivered_at + INTERVAL {int(labels.return_window_days)} DAY)"""
    elif model == "negative_review":
        window = f"INTERVAL {int(labels.review_window_days)} DAY"
        outcome = f"""EXISTS (SELECT 1 FROM reviews r JOIN orders o ON o.order_id = r.order_id
              WHERE r.order_id = p.order_id AND r.score <= $bad
                AND r.created_at > $cutoff AND r.created_at <= $cutoff + {window}
                AND (o.delivered_at IS NULL OR r.created_at <= o.delivered_at + {window})
                AND ((o.delivered_at IS NOT NULL AND r.created_at >= o.delivered_at)
                     OR r.created_at > o.promised_at))"""
    else:
        outcome = f"""NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = p.customer_id
              AND o.ordered_at > $cutoff
              AND o.ordered_at <= $cutoff + INTERVAL {int(labels.churn_horizon_days)} DAY)"""
    keys = ", ".join(f"p.{k}" for k in key_columns(model))
    return f"SELECT {keys}, ({outcome})::INTEGER AS {LABEL} FROM ({pop}) p ORDER BY p.{key_columns(model)[0]}"


def labels(wh: Warehouse, model: ModelName, cutoff: Any, settings: Settings | None = None) -> pd.DataFrame:
    """The population at ``cutoff`` with its ``label`` (keys as in ``population``).

    Raises if the labels have not matured: an immature window would read "nothing happened yet"
    as a negative.
    """
    settings = settings or get_settings()
    check_label_settings(settings.labels)
    if not label_matured(wh, model, cutoff, settings):
        raise ValueError(
            f"{model} labels at {as_timestamp(cutoff):%Y-%m-%d} have not matured: the data must reach "
            f"{label_horizon_days(model, settings.labels)} days past the cutoff"
        )
    out = run_sql(wh, _label_sql(model, settings.labels),
                  {"cutoff": as_timestamp(cutoff), "bad": settings.labels.negative_review_max_score})
    return out.astype({LABEL: "int64"})


def entity_key(model: ModelName) -> str:
    """The id column a model's rows are keyed by."""
    _check_model(model)
    return ENTITY_KEY[MODEL_ENTITY[model]]
