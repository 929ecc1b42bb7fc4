"""Populations and labels: who is scored at a cutoff and what happened after it.

Hand-made cases around one cutoff CUT, each named after what it exercises.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from schemas.settings import LabelSettings, Settings
from tasks.data.warehouse import Warehouse
from tasks.models.labels import (
    check_label_settings,
    data_end,
    label_horizon_days,
    label_matured,
    labels,
    latest_matured_cutoff,
    population,
)

CUT = pd.Timestamp("2026-03-01")
S = Settings()


def at(days: float) -> pd.Timestamp:
    return CUT + pd.Timedelta(days=days)


def put(wh: Warehouse, table: str, rows: list[dict]) -> None:
    wh.append(table, pd.DataFrame(rows))


def order(oid: str, cust: str, ordered: float, promised: float | None = None, delivered: float | None = None,
          status: str = "delivered", updated: float | None = None) -> dict:
    return {"order_id": oid, "customer_id": cust, "ordered_at": at(ordered),
            "promised_at": None if promised is None else at(promised),
            "delivered_at": None if delivered is None else at(delivered), "status": status,
            "total_amount": 10.0, "updated_at": None if updated is None else at(updated)}


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    w = Warehouse(tmp_path / "w.duckdb")
    put(w, "customers", [{"customer_id": f"c{i}"} for i in range(1, 10)])
    put(w, "orders", [
        order("a1", "c1", -8, -4, -5),  # returned within the window after the cutoff
        order("a2", "c1", -6, -2, -3),  # returned, but too late (delivery + 43 days)
        order("a3", "c2", -13, -9, -10),  # returned before the cutoff
        order("a4", "c2", -23, -19, -20),  # delivered too long ago for both order models
        order("a5", "c3", -4, 0, -1),  # bad review within the window
        order("a6", "c3", -6, -2, 10, updated=10),  # overdue at the cutoff; bad review before delivery
        order("a7", "c4", -5, -1, -2),  # good review
        order("a8", "c4", -7, -3, -4),  # reviewed before the cutoff
        order("a9", "c5", -3, 2, None, "placed"),  # not yet due
        order("a10", "c5", -9, -5, None, "cancelled", updated=-6),  # cancelled before the cutoff
        order("a11", "c6", -9, -5, -6),  # bad review after its review window
        order("a12", "c7", -200, -196, -195),  # inactive customer
        order("a13", "c2", 50, 54, 53),  # c2 comes back within the churn horizon
        order("a14", "c3", 100, 104, 103),  # c3 comes back, but after the horizon
        order("a15", "c9", 101, 105, 104),  # new customer; pushes the data past every horizon
    ])
    put(w, "returns", [
        {"return_id": "r1", "order_id": "a1", "requested_at": at(10)},
        {"return_id": "r2", "order_id": "a2", "requested_at": at(40)},
        {"return_id": "r3", "order_id": "a3", "requested_at": at(-2)},
        {"return_id": "r9", "order_id": "a13", "requested_at": at(60)},
    ])
    put(w, "reviews", [
        {"review_id": "v5", "order_id": "a5", "score": 1, "created_at": at(5)},
        {"review_id": "v6", "order_id": "a6", "score": 2, "created_at": at(3)},
        {"review_id": "v7", "order_id": "a7", "score": 4, "created_at": at(2)},
        {"review_id": "v8", "order_id": "a8", "score": 1, "created_at": at(-1)},
        {"review_id": "v11", "order_id": "a11", "score": 1, "created_at": at(29)},
        {"review_id": "v13", "order_id": "a13", "score": 5, "created_at": at(60)},
    ])
    yield w
    w.close()


def as_dict(df: pd.DataFrame, key: str) -> dict[str, int]:
    return dict(zip(df[key], df["label"], strict=True))


def test_return_population_and_labels(wh: Warehouse) -> None:
    got = as_dict(labels(wh, "return", CUT, S), "order_id")
    assert got == {"a1": 1, "a2": 0, "a5": 0, "a7": 0, "a8": 0, "a11": 0}


def test_negative_review_population_and_labels(wh: Warehouse) -> None:
    got = as_dict(labels(wh, "negative_review", CUT, S), "order_id")
    # a6: overdue at the cutoff, bad review before delivery but after the promise; a8 already reviewed
    assert got == {"a1": 0, "a2": 0, "a3": 0, "a5": 1, "a6": 1, "a7": 0, "a11": 0}


def test_churn_population_and_labels(wh: Warehouse) -> None:
    got = as_dict(labels(wh, "churn", CUT, S), "customer_id")
    assert got == {"c1": 1, "c2": 0, "c3": 1, "c4": 1, "c5": 1, "c6": 1}


def test_population_uses_only_what_was_known(wh: Warehouse) -> None:
    """The same as labels' keys, and blind to everything after the cutoff."""
    before = {m: population(wh, m, CUT, S) for m in ("return", "negative_review", "churn")}
    for m, pop in before.items():
        assert list(pop.iloc[:, 0]) == list(labels(wh, m, CUT, S).iloc[:, 0])
    put(wh, "orders", [order("b1", "c8", 1, 3, 2)])
    put(wh, "returns", [{"return_id": "r5", "order_id": "a7", "requested_at": at(0.5)}])
    put(wh, "reviews", [{"review_id": "v9", "order_id": "a2", "score": 1, "created_at": at(0.5)}])
    wh.con.execute("UPDATE orders SET status = 'cancelled', updated_at = ? WHERE order_id = 'a9'", [at(1)])
    for m, pop in before.items():
        pd.testing.assert_frame_equal(pop, population(wh, m, CUT, S))


def test_labels_move_only_with_post_cutoff_facts(wh: Warehouse) -> None:
    base = {m: labels(wh, m, CUT, S) for m in ("return", "negative_review", "churn")}
    # irrelevant pre-cutoff rows: behaviour, tickets, an old order of an inactive customer
    put(wh, "events", [{"event_id": "e1", "customer_id": "c1", "event_type": "view_return_policy",
                        "occurred_at": at(-1)}])
    put(wh, "tickets", [{"ticket_id": "t1", "customer_id": "c3", "order_id": "a5", "opened_at": at(-0.5)}])
    put(wh, "orders", [order("b0", "c7", -300, -296, -295)])
    for m, frame in base.items():
        pd.testing.assert_frame_equal(frame, labels(wh, m, CUT, S))
    # post-cutoff facts outside the windows change nothing either
    put(wh, "returns", [{"return_id": "r6", "order_id": "a5", "requested_at": at(30)}])  # delivery + 31
    put(wh, "orders", [order("b2", "c1", 91, 95, 94)])  # after the churn horizon
    for m, frame in base.items():
        pd.testing.assert_frame_equal(frame, labels(wh, m, CUT, S))
    # post-cutoff facts inside the windows flip exactly their own labels
    put(wh, "returns", [{"return_id": "r7", "order_id": "a7", "requested_at": at(20)}])
    put(wh, "reviews", [{"review_id": "v10", "order_id": "a1", "score": 2, "created_at": at(20)}])
    put(wh, "orders", [order("b3", "c4", 30, 34, 33)])
    ret = as_dict(labels(wh, "return", CUT, S), "order_id")
    rev = as_dict(labels(wh, "negative_review", CUT, S), "order_id")
    churn = as_dict(labels(wh, "churn", CUT, S), "customer_id")
    assert ret == {**as_dict(base["return"], "order_id"), "a7": 1}
    assert rev == {**as_dict(base["negative_review"], "order_id"), "a1": 1}
    assert churn == {**as_dict(base["churn"], "customer_id"), "c4": 0}


def test_maturity(wh: Warehouse) -> None:
    assert data_end(wh, "churn") == at(101)
    assert data_end(wh, "return") == at(60)  # returns stop earlier than orders: the earlier clock wins
    assert label_matured(wh, "return", CUT, S) and label_matured(wh, "churn", CUT, S)
    assert not label_matured(wh, "return", at(31), S)
    assert not label_matured(wh, "churn", at(12), S)
    assert latest_matured_cutoff(wh, "return", S) == at(60 - S.labels.return_window_days)
    with pytest.raises(ValueError, match="not matured"):
        labels(wh, "churn", at(12), S)
    assert label_horizon_days("churn", S.labels) == S.labels.churn_horizon_days


def test_empty_warehouse_has_no_mature_labels(tmp_path: Path) -> None:
    w = Warehouse(tmp_path / "empty.duckdb")
    assert data_end(w, "return") is None and not label_matured(w, "return", CUT, S)
    assert latest_matured_cutoff(w, "churn", S) is None
    assert population(w, "negative_review", CUT, S).empty


def test_label_windows_come_from_settings(wh: Warehouse) -> None:
    short = Settings(labels={"return_window_days": 14, "return_population_days": 6})
    got = as_dict(labels(wh, "return", CUT, short), "order_id")
    # a1's return (delivery + 15 days) falls outside a 14-day window; a11 (6 days ago) drops out
    assert got == {"a1": 0, "a2": 0, "a5": 0, "a7": 0, "a8": 0}


def test_population_windows_must_fit_label_windows() -> None:
    with pytest.raises(ValueError):
        check_label_settings(LabelSettings(return_window_days=10, return_population_days=14))
