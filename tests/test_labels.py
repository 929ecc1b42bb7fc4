"""Populations and labels: who is scored at a cutoff and what happened after it.

Hand-made cases around one cutoff CUT, each named after what it exercises.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from schemas.settings import LabelSettings, Settings
from tasks.data.warehouse import Warehouse
from tasks.models.features import customer_features, order_features
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
          status: str = "delivered", updated: float | None = None, shipped: float | None = None) -> dict:
    return {"order_id": oid, "customer_id": cust, "ordered_at": at(ordered),
            "promised_at": None if promised is None else at(promised),
            "shipped_at": None if shipped is None else at(shipped),
            "delivered_at": None if delivered is None else at(delivered), "status": status,
            "total_amount": 10.0, "updated_at": None if updated is None else at(updated)}


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    """Orders at every moment around CUT (moment window: the day before it)."""
    w = Warehouse(tmp_path / "w.duckdb")
    put(w, "customers", [{"customer_id": f"c{i}"} for i in range(1, 10)])
    put(w, "orders", [
        order("a1", "c1", -8, -4, -0.5, shipped=-6),  # delivered; returned within the window after the cutoff
        order("a2", "c1", -6, -2, -0.3, shipped=-5),  # delivered; returned, but too late (delivery + 40 days)
        order("a3", "c2", -13, -9, -0.8, shipped=-12),  # delivered; returned before the cutoff
        order("a4", "c2", -23, -19, -20, shipped=-22),  # delivered long ago: at no moment
        order("a5", "c3", -4, 0.5, 1, shipped=-0.5, updated=1),  # shipped; bad review after the cutoff
        order("a6", "c3", -6, -0.5, 10, shipped=-5, updated=10),  # became overdue; bad review before delivery
        order("a7", "c4", -5, -1, -0.1, shipped=-3),  # delivered; good review
        order("a8", "c4", -7, -3, -0.9, shipped=-6),  # delivered; reviewed before the cutoff
        order("a9", "c5", -3, 2, None, "placed"),  # placed, not shipped: no moment
        order("a10", "c5", -9, -0.5, None, "cancelled", updated=-6),  # cancelled before the cutoff (would be overdue)
        order("a11", "c6", -9, -5, -0.2, shipped=-8),  # delivered; bad review 29 days after the cutoff
        order("a12", "c7", -200, -196, -195, shipped=-199),  # inactive customer
        order("a13", "c2", 50, 54, 53, shipped=51),  # c2 comes back within the churn horizon
        order("a14", "c3", 100, 104, 103, shipped=101),  # c3 comes back, but after the horizon
        order("a15", "c9", 101, 105, 104, shipped=102),  # new customer; pushes the data past every horizon
        order("a16", "c8", -20, -7.5, None, "shipped", shipped=-15),  # overdue for a week: scored again
        order("a17", "c8", -9, -3, None, "shipped", shipped=-8),  # overdue for 3 days: between repeats
        order("a18", "c6", -2, 1, -0.1, shipped=-0.4),  # shipped and delivered in the window: delivered
    ])
    put(w, "returns", [
        {"return_id": "r1", "order_id": "a1", "requested_at": at(10)},
        {"return_id": "r2", "order_id": "a2", "requested_at": at(40)},
        {"return_id": "r3", "order_id": "a3", "requested_at": at(-0.2)},
        {"return_id": "r9", "order_id": "a13", "requested_at": at(60)},
    ])
    put(w, "reviews", [
        {"review_id": "v5", "order_id": "a5", "score": 1, "created_at": at(5)},
        {"review_id": "v6", "order_id": "a6", "score": 2, "created_at": at(3)},
        {"review_id": "v7", "order_id": "a7", "score": 4, "created_at": at(2)},
        {"review_id": "v8", "order_id": "a8", "score": 1, "created_at": at(-0.5)},
        {"review_id": "v11", "order_id": "a11", "score": 1, "created_at": at(29)},
        {"review_id": "v16", "order_id": "a16", "score": 1, "created_at": at(31)},
        {"review_id": "v13", "order_id": "a13", "score": 5, "created_at": at(60)},
    ])
    yield w
    w.close()


def as_dict(df: pd.DataFrame, key: str) -> dict[str, int]:
    return dict(zip(df[key], df["label"], strict=True))


def moments(wh: Warehouse, cutoff: pd.Timestamp = CUT, settings: Settings = S) -> dict[str, str]:
    frame = order_features(wh, cutoff, settings=settings)
    return {o: str(m) for o, m in zip(frame["order_id"], frame["moment"], strict=True)}


def test_each_order_has_the_moment_the_shop_can_act_on(wh: Warehouse) -> None:
    m = moments(wh)
    assert {o for o, v in m.items() if v == "delivered"} == {"a1", "a2", "a3", "a7", "a8", "a11", "a18"}
    assert m["a5"] == "shipped" and m["a6"] == "overdue" and m["a16"] == "overdue"
    assert m["a17"] == "none" and m["a4"] == "none" and m["a9"] == "none" and m["a10"] == "none"
    never_again = Settings(labels={"overdue_repeat_days": 0})
    assert moments(wh, settings=never_again)["a16"] == "none"


def test_return_population_and_labels(wh: Warehouse) -> None:
    got = as_dict(labels(wh, "return", CUT, S), "order_id")
    # delivered in the day before the cutoff, not returned yet (a3 was)
    assert got == {"a1": 1, "a2": 0, "a7": 0, "a8": 0, "a11": 0, "a18": 0}


def test_negative_review_population_and_labels(wh: Warehouse) -> None:
    got = as_dict(labels(wh, "negative_review", CUT, S), "order_id")
    # a5 at shipment, a6 and a16 overdue (a6's bad review comes before its delivery), a8 already reviewed;
    # a11's bad review 29 days after the cutoff counts, a16's after 31 days does not
    assert got == {"a1": 0, "a2": 0, "a3": 0, "a5": 1, "a6": 1, "a7": 0, "a11": 1, "a16": 0, "a18": 0}


def test_churn_population_and_labels(wh: Warehouse) -> None:
    got = as_dict(labels(wh, "churn", CUT, S), "customer_id")
    assert got == {"c1": 1, "c2": 0, "c3": 1, "c4": 1, "c5": 1, "c6": 1, "c8": 1}


def test_daily_cutoffs_give_each_order_a_row_per_moment(wh: Warehouse) -> None:
    """Over every daily cutoff an order appears once per moment it reaches: 1-3 rows, not one per day."""
    rows = pd.concat([population(wh, "negative_review", c, S).assign(cutoff=c)
                      for c in pd.date_range(at(-30), at(20), freq="D")])
    per_order = rows.groupby("order_id").size()
    assert per_order.loc["a7"] == 2  # shipped, delivered
    assert per_order.loc["a1"] == 3  # shipped, overdue (promised -4, delivered -0.5), delivered
    assert per_order.loc["a6"] == 2  # shipped, became overdue (then reviewed: out of the population)
    assert per_order.loc["a16"] >= 4  # shipped, then overdue at 0, 7, 14, 21 days (and while the window allows)
    assert per_order.loc["a3"] == 4  # shipped, overdue at 1 and 8 days, delivered a week late
    assert per_order.drop(["a3", "a16", "a17"]).between(1, 3).all()


def test_a_review_arriving_hours_after_delivery_still_gives_the_review_model_rows(tmp_path: Path) -> None:
    """A marketplace asks for the review as the parcel arrives: rows at shipment (and overdue) remain."""
    w = Warehouse(tmp_path / "market.duckdb")
    put(w, "customers", [{"customer_id": "m"}])
    put(w, "orders", [order(f"m{i}", "m", -10 + i, -6 + i, -5.5 + i, shipped=-8 + i) for i in range(5)]
        + [order("late", "m", -10, -3.5, 4, shipped=-8, updated=4)])
    put(w, "reviews", [{"review_id": f"v{i}", "order_id": f"m{i}", "score": 1 if i % 2 else 5,
                        "created_at": at(-5.5 + i + 0.1)} for i in range(5)]
        + [{"review_id": "vl", "order_id": "late", "score": 1, "created_at": at(4.1)}])
    put(w, "orders", [order("end", "m", 60, 61, 61)])
    put(w, "reviews", [{"review_id": "v-end", "order_id": "end", "score": 5, "created_at": at(62)}])
    try:
        rows = pd.concat([labels(w, "negative_review", c, S).assign(cutoff=c)
                          for c in pd.date_range(at(-12), at(6), freq="D")])
        shipped = rows[rows["order_id"].str.startswith("m")]
        assert set(shipped["order_id"]) == {f"m{i}" for i in range(5)}, "every order scored at shipment"
        assert shipped.groupby("order_id").size().eq(1).all(), "reviewed within hours: never at delivery"
        assert shipped.set_index("order_id")["label"].to_dict() == {f"m{i}": i % 2 for i in range(5)}
        late = rows[rows["order_id"] == "late"]
        assert len(late) >= 2 and late["label"].eq(1).all(), "shipped and overdue: the late-delivery watch"
    finally:
        w.close()


def test_population_uses_only_what_was_known(wh: Warehouse) -> None:
    """The same as labels' keys, and blind to everything after the cutoff."""
    before = {m: population(wh, m, CUT, S) for m in ("return", "negative_review", "churn")}
    for m, pop in before.items():
        assert list(pop.iloc[:, 0]) == list(labels(wh, m, CUT, S).iloc[:, 0])
    put(wh, "orders", [order("b1", "c8", 1, 3, 2, shipped=1.5)])
    put(wh, "returns", [{"return_id": "r5", "order_id": "a7", "requested_at": at(0.5)}])
    put(wh, "reviews", [{"review_id": "v9", "order_id": "a2", "score": 1, "created_at": at(0.5)}])
    wh.con.execute("UPDATE orders SET status = 'cancelled', updated_at = ? WHERE order_id = 'a9'", [at(1)])
    wh.con.execute("UPDATE orders SET delivered_at = ?, status = 'delivered', updated_at = ? WHERE order_id = 'a16'",
                   [at(0.5), at(0.5)])
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
    put(wh, "returns", [{"return_id": "r6", "order_id": "a7", "requested_at": at(30)}])  # delivery + 30.1
    put(wh, "reviews", [{"review_id": "v12", "order_id": "a2", "score": 1, "created_at": at(30.5)}])
    put(wh, "orders", [order("b2", "c1", 91, 95, 94)])  # after the churn horizon
    for m, frame in base.items():
        pd.testing.assert_frame_equal(frame, labels(wh, m, CUT, S))
    # post-cutoff facts inside the windows flip exactly their own labels
    put(wh, "returns", [{"return_id": "r7", "order_id": "a18", "requested_at": at(20)}])
    put(wh, "reviews", [{"review_id": "v10", "order_id": "a1", "score": 2, "created_at": at(20)}])
    put(wh, "orders", [order("b3", "c4", 30, 34, 33)])
    ret = as_dict(labels(wh, "return", CUT, S), "order_id")
    rev = as_dict(labels(wh, "negative_review", CUT, S), "order_id")
    churn = as_dict(labels(wh, "churn", CUT, S), "customer_id")
    assert ret == {**as_dict(base["return"], "order_id"), "a18": 1}
    assert rev == {**as_dict(base["negative_review"], "order_id"), "a1": 1}
    assert churn == {**as_dict(base["churn"], "customer_id"), "c4": 0}


def test_shop_without_delivery_dates_scores_orders_when_placed(tmp_path: Path) -> None:
    """Invoice lines: the order's own time is the moment; the label is a return or cancellation
    within return_window_days of the order."""
    w = Warehouse(tmp_path / "invoices.duckdb")
    put(w, "customers", [{"customer_id": "g1"}, {"customer_id": "g2"}])
    put(w, "orders", [
        order("i1", "g1", -0.5, status=None), order("i2", "g1", -0.7, status=None),
        order("i3", "g2", -0.2, status="cancelled", updated=10), order("i4", "g2", -0.9, status=None),
        order("i5", "g2", -3, status=None),  # placed three days ago: scored then, not now
        order("i6", "g1", 80, status=None),
    ])
    put(w, "returns", [
        {"return_id": "x1", "order_id": "i1", "requested_at": at(20)},  # within 30 days of the invoice
        {"return_id": "x2", "order_id": "i2", "requested_at": at(29.5)},  # invoice + 30.2 days: too late
        {"return_id": "x9", "order_id": "i6", "requested_at": at(81)},
    ])
    try:
        assert moments(w)["i1"] == "ordered" and moments(w)["i5"] == "none"
        assert as_dict(labels(w, "return", CUT, S), "order_id") == {"i1": 1, "i2": 0, "i3": 1, "i4": 0}
        assert set(population(w, "negative_review", CUT, S)["order_id"]) == {"i1", "i2", "i3", "i4"}
        assert label_horizon_days("return", S.labels) == S.labels.return_window_days
    finally:
        w.close()


def end_of_day(day: int) -> pd.Timestamp:
    """A date-only value as ingestion stores it: the end of its day (the moment it is known)."""
    return CUT + pd.Timedelta(days=day + 1) - pd.Timedelta(microseconds=1)


def test_date_only_export_has_no_look_ahead_at_midnight_cutoffs(tmp_path: Path) -> None:
    """An order dated the cutoff's own day is in no feature and not lost from any label."""
    w = Warehouse(tmp_path / "dates.duckdb")
    d = end_of_day
    put(w, "customers", [{"customer_id": "k1"}, {"customer_id": "k2"}])
    rows = [("d1", "k1", -40, -36, -38, -37), ("d2", "k1", -5, -1, -4, -1), ("d3", "k2", -20, -16, -18, -17),
            ("d4", "k2", 0, 4, 1, 2), ("end", "k2", 100, 104, 101, 102)]
    put(w, "orders", [{"order_id": o, "customer_id": c, "ordered_at": d(od), "promised_at": d(pr),
                       "shipped_at": d(sh), "delivered_at": d(dl), "status": "delivered", "total_amount": 10.0}
                      for o, c, od, pr, sh, dl in rows])
    put(w, "returns", [{"return_id": "r", "order_id": "d2", "requested_at": d(0)},
                       {"return_id": "r9", "order_id": "end", "requested_at": d(102)}])
    put(w, "reviews", [{"review_id": "v", "order_id": "d2", "score": 1, "created_at": d(0)},
                       {"review_id": "v9", "order_id": "end", "score": 5, "created_at": d(102)}])
    try:
        feats = order_features(w, CUT)
        assert "d4" not in set(feats["order_id"]), "ordered on the cutoff's day: not known at midnight"
        cust = customer_features(w, CUT).set_index("customer_id")
        assert cust.loc["k2", "orders_total"] == 1
        assert cust.loc["k1", "returns_total"] != cust.loc["k1", "returns_total"], "no return known yet: NaN"
        assert moments(w)["d2"] == "delivered", "delivered yesterday (date only): scored this morning"
        assert as_dict(labels(w, "return", CUT, S), "order_id") == {"d2": 1}, "today's return is the label"
        assert as_dict(labels(w, "negative_review", CUT, S), "order_id") == {"d2": 1}
        assert as_dict(labels(w, "churn", CUT, S), "customer_id") == {"k1": 1, "k2": 0}, "today's order counts"
        next_day = customer_features(w, CUT + pd.Timedelta(days=1)).set_index("customer_id")
        assert next_day.loc["k2", "orders_total"] == 2 and next_day.loc["k1", "returns_total"] == 1
    finally:
        w.close()


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
    short = Settings(labels={"return_window_days": 9, "moment_window_days": 0.4})
    got = as_dict(labels(wh, "return", CUT, short), "order_id")
    # a1's return (delivery + 10.5 days) falls outside a 9-day window; only orders delivered in the last
    # 0.4 days are at their delivery moment
    assert got == {"a2": 0, "a7": 0, "a11": 0, "a18": 0}


def test_moments_must_fit_label_windows() -> None:
    with pytest.raises(ValueError):
        check_label_settings(LabelSettings(return_window_days=10, moment_window_days=14))
    with pytest.raises(ValueError):
        check_label_settings(LabelSettings(moment_window_days=0))
