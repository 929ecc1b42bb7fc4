"""Who was treated: rows whose outcome a care contact may have changed.

The risk models estimate what happens *without* a contact. Once the care team works the list, a
contacted customer's outcome is no longer that: if care works, the listed customers return, review
badly and leave less often than their score said. Training on those rows teaches the model that
the signals matter less; judging realised performance on them makes a working care team look like
a decaying model and triggers retrains. So training and realised-performance monitoring keep the
untreated rows only: held-out (control) customers and customers never listed.

A row (customer, cutoff) counts as treated when the customer had a contact whose effect window
overlaps the row's label window: a task in the list (listing is the treatment: intention to treat)
or a recorded outcome (also a helpdesk contact of a control customer), at a time ``t`` with
``cutoff - influence < t <= cutoff + horizon``, where ``horizon`` is the model's label horizon and
``influence`` the longest outcome window (how long a contact is assumed to change behaviour).

Used by ``tasks/models/datasets.py`` (training sets) and ``tasks/monitoring/checks.py`` (realised
performance); both pass frames with ``customer_id`` and a cutoff-like date column.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from schemas.settings import Settings, get_settings
from schemas.tasks import CONTROL_TABLE, TASK_TABLE
from tasks.data.warehouse import Warehouse

TREATED = "treated"  # the column ``mark_treatment`` adds
HORIZON = {"return": "return_window_days", "negative_review": "review_window_days", "churn": "churn_horizon_days"}


def influence_days(settings: Settings) -> int:
    """How long a contact is assumed to change behaviour: the longest outcome window."""
    labels = settings.labels
    return int(max(labels.return_window_days, labels.review_window_days, labels.churn_horizon_days))


def contacts(wh: Warehouse) -> pd.DataFrame:
    """Every contact: (customer_id, at) from the task lists and from recorded outcomes."""
    parts = []
    if wh.has_table(TASK_TABLE):
        parts.append(f'SELECT customer_id, run_date AS at FROM "{TASK_TABLE}"')
    if wh.has_table("outcomes"):  # the task's customer when the outcome names a task, else its own
        joins, owners = "", []
        for alias, table in (("t", TASK_TABLE), ("c", CONTROL_TABLE)):
            if wh.has_table(table):
                joins += f' LEFT JOIN "{table}" {alias} ON {alias}.task_id = x.task_id'
                owners.append(f"{alias}.customer_id")
        parts.append(f"SELECT coalesce({', '.join([*owners, 'x.customer_id'])}) AS customer_id, "
                     f"x.recorded_at AS at FROM outcomes x{joins}")
    if not parts:
        return pd.DataFrame({"customer_id": pd.Series(dtype=str), "at": pd.Series(dtype="datetime64[us]")})
    return wh.query(" UNION ALL ".join(parts))


def treatment_mask(wh: Warehouse, frame: pd.DataFrame, model: str, settings: Settings | None = None,
                   cutoff_column: str = "cutoff") -> np.ndarray:
    """True for rows (``customer_id``, ``cutoff_column``) whose label window a contact may have changed."""
    settings = settings or get_settings()
    if frame.empty:
        return np.zeros(0, dtype=bool)
    horizon = int(getattr(settings.labels, HORIZON[model]))
    keys = frame[["customer_id", cutoff_column]].drop_duplicates().rename(columns={cutoff_column: "cutoff"})
    keys = keys.astype({"customer_id": str, "cutoff": "datetime64[us]"})
    touched = contacts(wh)
    if touched.empty:
        return np.zeros(len(frame), dtype=bool)
    wh.register("_treatment_keys", keys)
    wh.register("_treatment_contacts", touched)
    try:
        hit = wh.query(f"""
            SELECT DISTINCT k.customer_id, k.cutoff FROM _treatment_keys k
            JOIN _treatment_contacts c ON c.customer_id = k.customer_id
             AND c.at > k.cutoff - INTERVAL {influence_days(settings)} DAY
             AND c.at <= k.cutoff + INTERVAL {horizon} DAY""")
    finally:
        wh.unregister("_treatment_keys")
        wh.unregister("_treatment_contacts")
    treated = set(zip(hit["customer_id"].astype(str), pd.to_datetime(hit["cutoff"]), strict=True))
    cutoffs = pd.to_datetime(frame[cutoff_column])
    return np.fromiter(((c, t) in treated for c, t in zip(frame["customer_id"].astype(str), cutoffs, strict=True)),
                       dtype=bool, count=len(frame))


def mark_treatment(wh: Warehouse, frame: pd.DataFrame, model: str, settings: Settings | None = None,
                   cutoff_column: str = "cutoff") -> pd.DataFrame:
    """The frame with a boolean ``treated`` column (for callers that model treatment explicitly)."""
    return frame.assign(**{TREATED: treatment_mask(wh, frame, model, settings, cutoff_column)})


def untreated_filter(wh: Warehouse, frame: pd.DataFrame, model: str, settings: Settings | None = None,
                     cutoff_column: str = "cutoff") -> pd.DataFrame:
    """The rows no care contact could have changed (control and never listed); ``attrs['treated_rows']`` counts
    the rows dropped."""
    mask = treatment_mask(wh, frame, model, settings, cutoff_column)
    out = frame[~mask].reset_index(drop=True)
    out.attrs = {**frame.attrs, "treated_rows": int(mask.sum())}
    return out


def describe_filter(dropped: int, kept: int) -> dict[str, Any]:
    """Counts for a run's log or MLflow params."""
    return {"treated_rows_excluded": int(dropped), "untreated_rows": int(kept)}
