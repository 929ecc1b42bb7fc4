"""Point-in-time features: leakage, missing optional sources, one-time buyers, catalogue.

A small hand-made shop lives in a real DuckDB file; the cutoff is CUT. The leakage tests append
or update rows dated after CUT (source rows and scored texts in ``text_insights``) and demand
every feature of every entity stays exactly the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.derived import CUTOFF, TEXT_COMPLAINTS, UNKNOWN, CustomerFeatures, OrderFeatures
from schemas.settings import Settings
from schemas.sources import TABLES
from schemas.text import TEXT_INSIGHTS_TABLE, TextInsights, complaint_column
from tasks.data.warehouse import Warehouse, history_table
from tasks.models.features import (
    CATALOGUE_PATH,
    WINDOWS,
    available_at,
    available_sources,
    customer_features,
    feature_catalogue,
    feature_registry,
    features_at_cutoffs,
    first_source_rows,
    order_features,
    write_feature_catalogue,
)

CUT = pd.Timestamp("2026-03-01")
OPTIONAL = ("returns", "tickets", "reviews", "events", TEXT_INSIGHTS_TABLE)
TEXT_FEATURES = {
    "customer": ["negative_text_count", "negative_text_share", "days_since_negative_text",
                 *(complaint_column(c) for c in TEXT_COMPLAINTS)],
    "order": ["order_negative_text_count", "customer_negative_text_count", "customer_negative_text_share",
              "customer_days_since_negative_text", *(f"customer_{complaint_column(c)}" for c in TEXT_COMPLAINTS)],
}


def at(days: float) -> pd.Timestamp:
    """A time relative to the cutoff (negative: before it)."""
    return CUT + pd.Timedelta(days=days)


def put(wh: Warehouse, table: str, rows: list[dict]) -> None:
    wh.append(table, pd.DataFrame(rows))


def build_core(wh: Warehouse) -> None:
    """Customers, products, orders and lines, all before the cutoff."""
    put(wh, "customers", [
        {"customer_id": "c1", "signup_at": at(-400), "region": "north"},
        {"customer_id": "c2", "signup_at": at(-100), "region": "south"},
        {"customer_id": "c3", "signup_at": None, "region": None},  # one-time buyer
    ])
    put(wh, "products", [
        {"product_id": "shoe", "category": "shoes", "size_sensitive": True},
        {"product_id": "boot", "category": "shoes", "size_sensitive": True},
        {"product_id": "phone", "category": "phones", "size_sensitive": False},
        {"product_id": "misc", "category": None, "size_sensitive": None},
    ])
    o = [
        # id, customer, ordered, promised, delivered, status, total, discount, carrier, payment
        ("o1", "c1", -200, -196, -197, "delivered", 100.0, 10.0, "dhl", "card"),
        ("o2", "c1", -60, -56, -50, "delivered", 50.0, 0.0, "ups", "paypal"),
        ("o3", "c1", -10, -6, -4, "delivered", 120.0, None, "ups", "card"),  # late by 2 days
        ("o4", "c2", -8, -3, None, "shipped", 80.0, None, "ups", "cod"),  # overdue 3 days
        ("o5", "c2", -2, 3, None, "placed", 30.0, 5.0, "dhl", "card"),  # not due yet
        ("o6", "c3", -20, -16, -17, "delivered", 40.0, 0.0, None, None),  # one-time buyer
        ("o7", "c2", -30, -26, None, "cancelled", 20.0, 0.0, "dhl", "card"),
    ]
    put(wh, "orders", [
        {"order_id": i, "customer_id": c, "ordered_at": at(od), "promised_at": at(pr),
         "delivered_at": None if dl is None else at(dl), "status": st, "total_amount": tot,
         "discount_amount": disc, "carrier": car, "payment_type": pay, "region": None,
         "updated_at": at(od + 1) if st == "cancelled" else None}
        for i, c, od, pr, dl, st, tot, disc, car, pay in o
    ])
    put(wh, "order_items", [
        {"order_id": "o1", "line_no": 1, "product_id": "shoe", "quantity": 1, "unit_price": 55.0, "size": "40"},
        {"order_id": "o1", "line_no": 2, "product_id": "phone", "quantity": 1, "unit_price": 55.0, "size": None},
        {"order_id": "o2", "line_no": 1, "product_id": "phone", "quantity": 1, "unit_price": 50.0, "size": None},
        {"order_id": "o3", "line_no": 1, "product_id": "shoe", "quantity": 1, "unit_price": 60.0, "size": "40"},
        {"order_id": "o3", "line_no": 2, "product_id": "shoe", "quantity": 1, "unit_price": 60.0, "size": "41"},
        {"order_id": "o4", "line_no": 1, "product_id": "boot", "quantity": 2, "unit_price": 40.0, "size": "42"},
        {"order_id": "o5", "line_no": 1, "product_id": "misc", "quantity": 3, "unit_price": 10.0, "size": None},
        {"order_id": "o6", "line_no": 1, "product_id": "phone", "quantity": 1, "unit_price": 40.0, "size": None},
        {"order_id": "o7", "line_no": 1, "product_id": "misc", "quantity": 2, "unit_price": 10.0, "size": None},
    ])


def build_optional(wh: Warehouse) -> None:
    """Returns, tickets, reviews and events, all dated before the cutoff."""
    put(wh, "returns", [
        {"return_id": "r1", "order_id": "o1", "product_id": "shoe", "requested_at": at(-190),
         "reason_code": "size_fit"},
        {"return_id": "r2", "order_id": "o2", "product_id": None, "requested_at": at(-45)},
    ])
    put(wh, "tickets", [
        # resolved, escalated, rated
        {"ticket_id": "t1", "customer_id": "c1", "order_id": "o2", "category": "delivery", "opened_at": at(-52),
         "first_response_at": at(-51.5), "resolved_at": at(-49), "escalated": True, "satisfaction": 2.0,
         "updated_at": at(-49)},
        # open at the cutoff, no response yet
        {"ticket_id": "t2", "customer_id": "c2", "order_id": "o4", "category": "delivery", "opened_at": at(-1),
         "first_response_at": None, "resolved_at": None, "escalated": False, "updated_at": at(-1)},
        # question, answered, open
        {"ticket_id": "t3", "customer_id": "c1", "order_id": None, "category": "usage_question",
         "opened_at": at(-3), "first_response_at": at(-2.5), "resolved_at": None, "escalated": None,
         "updated_at": at(-2.5)},
    ])
    put(wh, "reviews", [
        {"review_id": "v1", "order_id": "o1", "customer_id": "c1", "score": 2, "created_at": at(-190)},
        {"review_id": "v2", "order_id": "o6", "customer_id": "c3", "score": 5, "created_at": at(-15)},
    ])
    ev = [
        ("c1", "s1", "view_size_chart", "shoe", -11),
        ("c1", "s1", "add_to_cart", "shoe", -10.5),
        ("c1", "s1", "remove_from_cart", "shoe", -10.4),
        ("c1", "s1", "checkout", None, -10.01),
        ("c1", "s2", "view_return_policy", None, -2),
        ("c1", "s9", "view_return_policy", None, -30),  # outside o3's pre-purchase window
        ("c2", "s3", "add_to_cart", "boot", -1),  # abandoned cart
        ("c2", "s3", "view_size_chart", None, -8.5),  # a general size chart before o4
    ]
    put(wh, "events", [
        {"event_id": f"e{n}", "customer_id": c, "session_id": s, "event_type": t, "product_id": p,
         "occurred_at": at(d)}
        for n, (c, s, t, p, d) in enumerate(ev)
    ])


def insights(rows: list[tuple]) -> pd.DataFrame:
    """``text_insights`` rows from (source, id, customer, order, day, negative, complaint)."""
    return TextInsights.validate(pd.DataFrame([
        {"source": src, "source_id": sid, "customer_id": cust, "order_id": order, "product_id": None,
         "created_at": at(day), "language": "en", "negative_probability": 0.9 if neg else 0.1, "negative": neg,
         "complaint": complaint, "complaint_confidence": 0.8, "method": "model", "weak_label": None,
         "model_run_id": "run-1"}
        for src, sid, cust, order, day, neg, complaint in rows]))


def build_texts(wh: Warehouse) -> None:
    """What ``aftersales text`` wrote about the texts of ``build_optional`` (all before the cutoff)."""
    wh.replace_table(TEXT_INSIGHTS_TABLE, insights([
        ("review", "v1", "c1", "o1", -190, True, "size_fit"),
        ("return", "r1", "c1", "o1", -190, True, "size_fit"),
        ("ticket", "t1", "c1", "o2", -52, True, "logistics_late"),
        ("ticket", "t3", "c1", None, -3, False, "other"),
        ("ticket", "t2", "c2", "o4", -1, True, "service_attitude"),
        ("review", "v2", "c3", "o6", -15, False, "other"),
    ]))


def add_future_texts(wh: Warehouse) -> None:
    """Scored texts written after the cutoff, by known and new customers, about old and new orders."""
    wh.append(TEXT_INSIGHTS_TABLE, insights([
        ("review", "v3", "c1", "o3", 3, True, "quality_defect"),
        ("review", "v4", "c2", "o4", 0.1, True, "not_as_described"),
        ("ticket", "t4", "c3", "o6", 1, True, "service_attitude"),
        ("return", "r3", "c1", "o3", 2, True, "size_fit"),
        ("return", "r4", "c3", "o6", 0.5, False, "quality_defect"),
        ("ticket", "t9", "c9", "o9", 2, True, "size_fit"),
    ]))


def add_future(wh: Warehouse) -> None:
    """Everything that happens after the cutoff: new rows and later facts on existing rows."""
    put(wh, "customers", [{"customer_id": "c9", "signup_at": at(1), "region": "west"}])
    put(wh, "products", [{"product_id": "hat", "category": "hats", "size_sensitive": True}])
    put(wh, "orders", [
        {"order_id": "o8", "customer_id": "c1", "ordered_at": at(1), "promised_at": at(4), "delivered_at": at(3),
         "status": "delivered", "total_amount": 70.0, "carrier": "fedex", "payment_type": "bnpl"},
        {"order_id": "o9", "customer_id": "c9", "ordered_at": at(2), "promised_at": at(5),
         "status": "placed", "total_amount": 10.0, "carrier": "dhl", "payment_type": "wallet"},
    ])
    put(wh, "order_items", [
        {"order_id": "o8", "line_no": 1, "product_id": "hat", "quantity": 1, "unit_price": 70.0, "size": "M"},
        {"order_id": "o9", "line_no": 1, "product_id": "shoe", "quantity": 1, "unit_price": 10.0, "size": "39"},
    ])
    put(wh, "returns", [
        {"return_id": "r3", "order_id": "o3", "product_id": "shoe", "requested_at": at(2)},
        {"return_id": "r4", "order_id": "o6", "product_id": None, "requested_at": at(0.5)},
    ])
    put(wh, "tickets", [
        {"ticket_id": "t4", "customer_id": "c3", "order_id": "o6", "category": "complaint_service",
         "opened_at": at(1), "escalated": True, "updated_at": at(1)},
    ])
    put(wh, "reviews", [
        {"review_id": "v3", "order_id": "o3", "customer_id": "c1", "score": 1, "created_at": at(3)},
        {"review_id": "v4", "order_id": "o4", "customer_id": "c2", "score": 1, "created_at": at(0.1)},
    ])
    put(wh, "events", [
        {"event_id": "e100", "customer_id": "c1", "session_id": "s7", "event_type": "view_return_policy",
         "occurred_at": at(0.2)},
        {"event_id": "e101", "customer_id": "c2", "session_id": "s3", "event_type": "checkout",
         "occurred_at": at(0.01)},
        {"event_id": "e102", "customer_id": "c2", "session_id": "s8", "event_type": "view_size_chart",
         "product_id": "boot", "occurred_at": at(0.3)},
    ])
    con = wh.con
    # the overdue order arrives, the open tickets get answered, escalated, resolved and rated
    con.execute("UPDATE orders SET delivered_at = ?, status = 'delivered', updated_at = ? WHERE order_id = 'o4'",
                [at(2), at(2)])
    con.execute("UPDATE orders SET status = 'cancelled', updated_at = ? WHERE order_id = 'o5'", [at(1)])
    con.execute("UPDATE tickets SET first_response_at = ?, resolved_at = ?, escalated = TRUE, satisfaction = 1,"
                " updated_at = ? WHERE ticket_id IN ('t2', 't3')", [at(0.5), at(1), at(1)])
    add_future_texts(wh)


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    build_core(warehouse)
    build_optional(warehouse)
    build_texts(warehouse)
    yield warehouse
    warehouse.close()


@pytest.fixture
def bare(tmp_path: Path) -> Warehouse:
    """Only the required sources: no returns, tickets, reviews, events or text_insights at all."""
    warehouse = Warehouse(tmp_path / "bare.duckdb")
    build_core(warehouse)
    yield warehouse
    warehouse.close()


def by(df: pd.DataFrame, key: str) -> pd.DataFrame:
    return df.set_index(key)


# ---- leakage --------------------------------------------------------------------------------
def test_order_features_ignore_everything_after_the_cutoff(wh: Warehouse) -> None:
    before = order_features(wh, CUT)
    add_future(wh)
    after = order_features(wh, CUT)
    pd.testing.assert_frame_equal(before, after, check_exact=True)
    assert set(before["order_id"]) == {"o1", "o2", "o3", "o4", "o5", "o6", "o7"}


def test_customer_features_ignore_everything_after_the_cutoff(wh: Warehouse) -> None:
    before = customer_features(wh, CUT)
    add_future(wh)
    after = customer_features(wh, CUT)
    pd.testing.assert_frame_equal(before, after, check_exact=True)
    assert list(before["customer_id"]) == ["c1", "c2", "c3"]


def test_features_on_bare_shop_ignore_future_optional_rows(bare: Warehouse) -> None:
    """Optional sources (and scored texts) that only start after the cutoff must not switch features on."""
    before_o, before_c = order_features(bare, CUT), customer_features(bare, CUT)
    add_future(bare)
    pd.testing.assert_frame_equal(before_o, order_features(bare, CUT), check_exact=True)
    pd.testing.assert_frame_equal(before_c, customer_features(bare, CUT), check_exact=True)


def test_text_features_ignore_texts_after_the_cutoff(wh: Warehouse) -> None:
    """Only the scored texts change: appended later texts move no feature, the new ones included."""
    before_o, before_c = order_features(wh, CUT), customer_features(wh, CUT)
    add_future_texts(wh)
    assert wh.row_count(TEXT_INSIGHTS_TABLE) == 12
    pd.testing.assert_frame_equal(before_o, order_features(wh, CUT), check_exact=True)
    pd.testing.assert_frame_equal(before_c, customer_features(wh, CUT), check_exact=True)
    for frame, entity in ((before_o, "order"), (before_c, "customer")):
        assert frame[TEXT_FEATURES[entity]].notna().any().all()  # the features were on, not all NaN


def test_an_earlier_cutoff_sees_less(wh: Warehouse) -> None:
    """Moving the cutoff back hides later orders and the later delivery of o3."""
    early = by(order_features(wh, at(-5)), "order_id")
    assert "o5" not in early.index
    assert early.loc["o3", "is_delivered"] == 0
    assert early.loc["o3", "days_late"] == pytest.approx(1)  # promised at -6: overdue by a day at -5
    assert early.loc["o3", "is_late"] == 1
    c1 = by(customer_features(wh, at(-60)), "customer_id").loc["c1"]  # texts of day -52 and -3 not yet written
    assert c1["negative_text_count"] == 2 and c1["days_since_negative_text"] == pytest.approx(130)


# ---- values ---------------------------------------------------------------------------------
def test_order_feature_values(wh: Warehouse) -> None:
    f = by(order_features(wh, CUT), "order_id")
    o3, o4, o1 = f.loc["o3"], f.loc["o4"], f.loc["o1"]
    assert o3["days_late"] == pytest.approx(2) and o3["is_late"] == 1
    assert o3["days_since_delivery"] == pytest.approx(4)
    assert o3["size_bracketing"] == 1 and o3["size_sensitive_share"] == 1
    assert o3["size_sensitive_items_unviewed"] == 0  # shoe chart seen 1 day before purchase
    assert o3["cart_adds_before"] == 1 and o3["cart_removes_before"] == 1
    assert o3["return_policy_views_after"] == 1 and o3["return_policy_views_before"] == 0
    assert o3["customer_prior_orders"] == 2
    assert o3["customer_past_returns"] == 2 and o3["customer_return_rate"] == 1.0
    assert o3["customer_bad_reviews"] == 1 and o3["customer_reviews"] == 1
    assert o3["customer_tickets"] == 2 and o3["customer_unresolved_tickets"] == 1
    assert o3["customer_escalated_tickets"] == 1 and o3["customer_complaints"] == 1
    assert o3["main_category"] == "shoes" and o3["payment_type"] == "card" and o3["region"] == "north"
    assert o4["is_delivered"] == 0 and o4["days_late"] == pytest.approx(3) and o4["is_late"] == 1
    assert o4["days_since_delivery"] != o4["days_since_delivery"]  # NaN: not delivered
    assert o4["order_tickets"] == 1 and o4["order_unresolved_tickets"] == 1
    assert o4["order_ticket_wait_hours"] == pytest.approx(24)  # unanswered for a day so far
    assert o4["size_sensitive_items_unviewed"] == 0  # a general size chart covers every product
    assert f.loc["o5", "days_late"] == 0 and f.loc["o5", "is_late"] != f.loc["o5", "is_late"]  # not due
    assert f.loc["o5", "main_category"] == UNKNOWN
    assert f.loc["o7", "days_late"] != f.loc["o7", "days_late"]  # cancelled: no lateness
    assert o1["discount_share"] == pytest.approx(10 / 110)
    assert o1["order_review_score"] == 2


def test_return_rates_are_smoothed_and_point_in_time(wh: Warehouse) -> None:
    """Rates use lines of orders delivered by the cutoff and returns requested by then."""
    f = by(order_features(wh, CUT), "order_id")
    m = WINDOWS.smoothing_strength
    # delivered lines by the cutoff: o1 shoe (returned), o1 phone, o2 phone (whole-order return),
    # o3 shoe x2, o6 phone -> 6 lines, 2 returned
    shop = 2 / 6
    shoes = (1 + m * shop) / (3 + m)
    phones = (1 + m * shop) / (3 + m)
    shoe = (1 + m * shoes) / (3 + m)
    assert f.loc["o3", "max_category_return_rate"] == pytest.approx(shoes)
    assert f.loc["o3", "max_product_return_rate"] == pytest.approx(shoe)
    assert f.loc["o6", "mean_category_return_rate"] == pytest.approx(phones)
    boot = shoes  # never sold: falls back on its category
    assert f.loc["o4", "max_product_return_rate"] == pytest.approx(boot)
    assert 0 <= f["max_product_return_rate"].min() <= f["max_product_return_rate"].max() <= 1


def test_carrier_late_rate_counts_overdue_orders(wh: Warehouse) -> None:
    f = by(order_features(wh, CUT), "order_id")
    m = WINDOWS.smoothing_strength
    # known outcomes: o1 dhl on time, o2 ups late, o3 ups late, o4 ups overdue; o5 not due, o7 cancelled
    shop = 3 / 4
    assert f.loc["o2", "carrier_late_rate"] == pytest.approx((3 + m * shop) / (3 + m))
    assert f.loc["o1", "carrier_late_rate"] == pytest.approx((0 + m * shop) / (1 + m))
    assert f.loc["o6", "carrier_late_rate"] == pytest.approx(shop)  # no carrier: the shop rate


def test_customer_feature_values(wh: Warehouse) -> None:
    c = by(customer_features(wh, CUT), "customer_id")
    c1, c2 = c.loc["c1"], c.loc["c2"]
    assert c1["orders_total"] == 3 and c1["orders_30d"] == 1 and c1["orders_90d"] == 2
    assert c1["orders_365d"] == 3 and c1["recency_days"] == pytest.approx(10)
    assert c1["order_trend_90d"] == 2  # 2 in the last 90 days, none in the 90 before
    assert c1["returns_total"] == 2 and c1["return_rate"] == pytest.approx(2 / 3)
    assert c1["mean_days_between_orders"] == pytest.approx(95)
    assert c1["tickets_total"] == 2 and c1["unresolved_tickets"] == 1 and c1["escalated_tickets"] == 1
    assert c1["mean_satisfaction"] == 2 and c1["mean_first_response_hours"] == pytest.approx(12)
    assert c1["bad_reviews"] == 1 and c1["mean_review_score"] == 2
    assert c1["days_since_bad_experience"] == pytest.approx(4)  # o3 delivered late 4 days ago
    assert c1["sessions_30d"] == 2 and c1["abandoned_carts_30d"] == 0
    assert c1["tenure_days"] != c1["tenure_days"] and c1["tenure_censored"] == 1  # signed up as the data begins
    assert c2["tenure_days"] == pytest.approx(100) and c2["tenure_censored"] == 0
    assert c2["abandoned_carts_30d"] == 1 and c2["cart_adds_30d"] == 1
    assert c2["unresolved_tickets"] == 1 and c2["mean_satisfaction"] != c2["mean_satisfaction"]
    assert c2["days_since_bad_experience"] == pytest.approx(3)  # o4 overdue since its promise
    assert c2["payment_type"] == "card"  # latest order o5
    assert c2["late_deliveries"] == 1 and c2["late_delivery_rate"] == 1.0  # o5 not due, o7 cancelled


def test_text_feature_values(wh: Warehouse) -> None:
    c = by(customer_features(wh, CUT), "customer_id")
    c1, c2, c3 = c.loc["c1"], c.loc["c2"], c.loc["c3"]
    assert c1["negative_text_count"] == 3 and c1["negative_text_share"] == pytest.approx(0.75)
    assert c1["days_since_negative_text"] == pytest.approx(52)  # the delivery ticket
    assert c1[complaint_column("size_fit")] == 2 and c1[complaint_column("quality_defect")] == 0
    assert c2["negative_text_count"] == 1 and c2["days_since_negative_text"] == pytest.approx(1)
    assert c2[complaint_column("service_attitude")] == 1
    assert c3["negative_text_count"] == 0 and c3["negative_text_share"] == 0
    assert c3["days_since_negative_text"] != c3["days_since_negative_text"]  # NaN: never negative
    o = by(order_features(wh, CUT), "order_id")
    assert o.loc["o1", "order_negative_text_count"] == 2  # bad review and return reason of o1
    assert o.loc["o2", "order_negative_text_count"] == 1 and o.loc["o3", "order_negative_text_count"] == 0
    assert o.loc["o4", "order_negative_text_count"] == 1
    for order, customer in (("o3", c1), ("o5", c2), ("o6", c3)):  # the customer's texts, as in customer features
        names = TEXT_FEATURES["customer"]
        ours = o.loc[order, [f"customer_{n}" for n in names]].to_numpy(dtype=float)
        assert np.array_equal(ours, customer[names].to_numpy(dtype=float), equal_nan=True), order


def test_text_features_agree_with_the_text_module(wh: Warehouse) -> None:
    """The feature layer counts exactly what ``tasks.insight.text.text_features`` counts."""
    from tasks.insight.text import text_features

    ours = by(customer_features(wh, CUT), "customer_id")
    theirs = by(text_features(wh, CUT), "customer_id")
    assert set(theirs.index) == {"c1", "c2", "c3"}
    pd.testing.assert_frame_equal(ours.loc[theirs.index, TEXT_FEATURES["customer"]],
                                  theirs[TEXT_FEATURES["customer"]], check_exact=False, check_names=False)


def test_features_build_without_text_insights(wh: Warehouse) -> None:
    """No table (the text flow never ran) or an empty one: text features NaN, everything else unchanged."""
    with_texts_o, with_texts_c = order_features(wh, CUT), customer_features(wh, CUT)
    wh.con.execute(f'DELETE FROM "{TEXT_INSIGHTS_TABLE}"')
    empty_o, empty_c = order_features(wh, CUT), customer_features(wh, CUT)
    wh.con.execute(f'DROP TABLE "{TEXT_INSIGHTS_TABLE}"')
    assert not wh.has_table(TEXT_INSIGHTS_TABLE)
    none_o, none_c = order_features(wh, CUT), customer_features(wh, CUT)
    assert available_sources(wh, CUT)[TEXT_INSIGHTS_TABLE] is False
    for entity, full, frames in (("order", with_texts_o, (empty_o, none_o)),
                                 ("customer", with_texts_c, (empty_c, none_c))):
        text = TEXT_FEATURES[entity]
        for frame in frames:
            assert frame[text].isna().all().all(), entity
            pd.testing.assert_frame_equal(frame.drop(columns=text), full.drop(columns=text), check_exact=True)
    pd.testing.assert_frame_equal(empty_o, none_o, check_exact=True)
    pd.testing.assert_frame_equal(empty_c, none_c, check_exact=True)


def test_text_features_null_until_a_text_exists(wh: Warehouse) -> None:
    """Before the first scored text the features are unknown (NaN), not 0."""
    first = by(customer_features(wh, at(-191)), "customer_id")
    assert first[TEXT_FEATURES["customer"]].isna().all().all()
    assert available_sources(wh, at(-190))[TEXT_INSIGHTS_TABLE]


def test_one_time_buyer_gets_sane_features(wh: Warehouse) -> None:
    c3 = by(customer_features(wh, CUT), "customer_id").loc["c3"]
    assert c3["is_one_time_buyer"] == 1 and c3["orders_total"] == 1
    assert c3["mean_days_between_orders"] != c3["mean_days_between_orders"]  # NaN, not 0
    assert c3["recency_days"] == pytest.approx(20) and c3["tenure_days"] == pytest.approx(20)
    assert c3["return_rate"] == 0 and c3["tickets_total"] == 0 and c3["reviews_total"] == 1
    assert c3["region"] == UNKNOWN and c3["payment_type"] == UNKNOWN
    assert c3["days_since_bad_experience"] != c3["days_since_bad_experience"]
    o6 = by(order_features(wh, CUT), "order_id").loc["o6"]
    assert o6["customer_prior_orders"] == 0 and o6["customer_past_returns"] == 0
    assert o6["customer_return_rate"] != o6["customer_return_rate"]  # no other delivered order
    assert o6["carrier"] == UNKNOWN


def test_features_run_without_optional_sources(bare: Warehouse) -> None:
    assert available_sources(bare, CUT) == dict.fromkeys(OPTIONAL, False)
    o = order_features(bare, CUT)
    c = customer_features(bare, CUT)
    assert len(o) == 7 and len(c) == 3
    for frame, entity in ((o, "order"), (c, "customer")):
        for feature in feature_registry(entity):
            if feature.needs:
                assert frame[feature.name].isna().all(), feature.name
    # features of the required sources are still there
    assert o["days_late"].notna().sum() == 6 and c["orders_total"].notna().all()
    assert c["days_since_bad_experience"].notna().any()  # late deliveries alone still count


def test_order_subset_keeps_full_history(wh: Warehouse) -> None:
    full = by(order_features(wh, CUT), "order_id")
    for ids in (["o3", "o4"], pd.DataFrame({"order_id": ["o3", "o4"]}),
                "SELECT order_id FROM orders WHERE order_id IN ('o3', 'o4')"):
        part = by(order_features(wh, CUT, ids), "order_id")
        assert list(part.index) == ["o3", "o4"]
        pd.testing.assert_frame_equal(part.drop(columns=["main_category", "payment_type", "region", "carrier"]),
                                      full.loc[["o3", "o4"]].drop(
                                          columns=["main_category", "payment_type", "region", "carrier"]))
    sub = customer_features(wh, CUT, ["c2"])
    assert list(sub["customer_id"]) == ["c2"]


def test_outputs_match_the_contracts(wh: Warehouse) -> None:
    o, c = order_features(wh, CUT), customer_features(wh, CUT)
    assert list(o.columns) == list(OrderFeatures.to_schema().columns)
    assert list(c.columns) == list(CustomerFeatures.to_schema().columns)
    for frame in (o, c):
        for column in frame.columns:
            if isinstance(frame[column].dtype, pd.CategoricalDtype):
                levels = list(frame[column].cat.categories)
                assert levels == sorted(levels) and UNKNOWN in levels
    assert "bnpl" in list(o["payment_type"].cat.categories)  # closed vocabulary keeps every level


def test_bad_review_threshold_comes_from_settings(wh: Warehouse) -> None:
    strict = Settings(labels={"negative_review_max_score": 1})
    c = by(customer_features(wh, CUT, settings=strict), "customer_id")
    assert c.loc["c1", "bad_reviews"] == 0


# ---- catalogue --------------------------------------------------------------------------------
def test_shipped_catalogue_matches_the_code(tmp_path: Path) -> None:
    generated = write_feature_catalogue(tmp_path / "catalogue.csv")
    assert CATALOGUE_PATH.read_text() == generated.read_text(), (
        "run `python -c 'from tasks.models.features import write_feature_catalogue; write_feature_catalogue()'`"
    )
    cat = feature_catalogue()
    assert not cat.duplicated(["entity", "name"]).any()
    assert set(cat["entity"]) == {"order", "customer"}
    assert (cat["description"].str.len() > 10).all()
    assert cat.loc[cat["name"] == "size_chart_views_before", "sources"].item() == "orders;events"


def test_contracts_reject_bad_frames(wh: Warehouse) -> None:
    """Each pandera contract catches what it promises to catch."""
    from pandera.errors import SchemaError, SchemaErrors

    good = order_features(wh, CUT)
    for column, value in (("discount_share", 1.5), ("n_items", -1.0), ("is_late", 0.5)):
        bad = good.copy()
        bad.loc[0, column] = value
        with pytest.raises((SchemaError, SchemaErrors)):
            OrderFeatures.validate(bad)
    with pytest.raises((SchemaError, SchemaErrors)):
        OrderFeatures.validate(pd.concat([good, good.iloc[:1]], ignore_index=True))  # duplicate order
    with pytest.raises((SchemaError, SchemaErrors)):
        CustomerFeatures.validate(customer_features(wh, CUT).assign(extra=1))  # strict: no stray column


# ---- features real exports support ------------------------------------------------------------
def test_wholesale_basket_and_product_history_values(wh: Warehouse) -> None:
    f = by(order_features(wh, CUT), "order_id")
    # line quantities as of the cutoff: seven lines of 1, two of 2 (o4, o7), one of 3 (o5); 99th pct ~2.9
    assert f.loc["o5", "max_line_quantity"] == 3 and f.loc["o5", "bulk_line_share"] == 1
    assert f.loc["o4", "units_per_line"] == 2 and f.loc["o4", "bulk_line_share"] == 0
    # o3 against c1's other orders (o1: 100 for 2 units, o2: 50 for 1)
    assert f.loc["o3", "value_vs_customer_median"] == pytest.approx(120 / 75)
    assert f.loc["o3", "items_vs_customer_median"] == pytest.approx(2 / 1.5)
    assert np.isnan(f.loc["o6", "value_vs_customer_median"])  # a one-time buyer has no usual basket
    # shoe: 3 settled lines (o1, o3 twice), 1 returned; phone: 3 lines (o1, o2, o6), 1 returned (o2 whole)
    assert (f.loc["o3", "product_past_returns"], f.loc["o3", "product_past_sales"]) == (1, 3)
    assert (f.loc["o1", "product_past_returns"], f.loc["o1", "product_past_sales"]) == (2, 6)
    assert (f.loc["o4", "product_past_returns"], f.loc["o4", "product_past_sales"]) == (0, 0)  # boot: never sold
    # settled orders o1, o2, o3, o6; returned o1, o2: shop rate 1/2, 5 pseudo-orders
    mc = WINDOWS.customer_smoothing_strength
    assert f.loc["o3", "customer_return_rate_smoothed"] == pytest.approx((2 + mc * 0.5) / (2 + mc))
    assert f.loc["o6", "customer_return_rate_smoothed"] == pytest.approx(0.5)
    assert f["handling_days"].isna().all()  # no shipment dates in this shop


def test_churn_history_values(wh: Warehouse) -> None:
    c = by(customer_features(wh, CUT), "customer_id")
    c1, c2 = c.loc["c1"], c.loc["c2"]
    assert c1["median_days_between_orders"] == pytest.approx(95)  # gaps 140 and 50
    assert c1["gap_ratio"] == pytest.approx(10 / 95) and c1["median_gap_ratio"] == pytest.approx(10 / 95)
    assert c2["median_days_between_orders"] == pytest.approx(14)  # o7 -> o4: 22, o4 -> o5: 6
    assert c1["value_trend_90d"] == pytest.approx(170)  # o2 + o3, nothing in the 90 days before
    assert c1["order_value_cv"] == pytest.approx(np.std([100, 50, 120], ddof=1) / 90)
    assert c1["value_per_active_month"] == pytest.approx(270 / (200 / 30.4375))
    assert c1["distinct_products"] == 2 and c.loc["c3", "distinct_products"] == 1
    assert np.isnan(c.loc["c3", "gap_ratio"]) and np.isnan(c.loc["c3", "order_value_cv"])


def test_tenure_is_unknown_for_customers_first_seen_as_the_data_begins(wh: Warehouse) -> None:
    """c1 signed up on the shop's first recorded day: older than the data, perhaps; not 'new'."""
    o = by(order_features(wh, CUT), "order_id")
    assert o.loc["o3", "customer_tenure_censored"] == 1 and np.isnan(o.loc["o3", "customer_tenure_days"])
    assert o.loc["o4", "customer_tenure_censored"] == 0 and o.loc["o4", "customer_tenure_days"] == pytest.approx(100)
    wh.con.execute("UPDATE customers SET signup_at = NULL")  # only orders: the first order (-200) starts the data
    c = by(customer_features(wh, CUT), "customer_id")
    assert c.loc["c1", "tenure_censored"] == 1 and c.loc["c3", "tenure_censored"] == 0
    assert c.loc["c3", "tenure_days"] == pytest.approx(20)


def test_shop_without_delivery_dates_still_has_return_histories(tmp_path: Path) -> None:
    """Invoice lines: an order is settled when placed, and a cancellation counts as a return."""
    w = Warehouse(tmp_path / "invoices.duckdb")
    put(w, "customers", [{"customer_id": "g1"}, {"customer_id": "g2"}])
    put(w, "products", [{"product_id": "mug"}, {"product_id": "vase"}])
    put(w, "orders", [
        {"order_id": f"i{n}", "customer_id": c, "ordered_at": at(d), "total_amount": v, "status": st,
         "updated_at": at(d + 1) if st else None}
        for n, c, d, v, st in [(1, "g1", -50, 10.0, None), (2, "g1", -30, 20.0, "cancelled"),
                               (3, "g1", -0.5, 30.0, None), (4, "g2", -20, 500.0, None)]])
    put(w, "order_items", [{"order_id": f"i{n}", "line_no": 1, "product_id": p, "quantity": q, "unit_price": 1.0}
                           for n, p, q in [(1, "mug", 1), (2, "mug", 1), (3, "mug", 2), (4, "vase", 400)]])
    put(w, "returns", [{"return_id": "x1", "order_id": "i1", "product_id": "mug", "requested_at": at(-45)}])
    try:
        f = by(order_features(w, CUT), "order_id")
        assert f.loc["i3", "moment"] == "ordered"
        assert f.loc["i3", "customer_past_returns"] == 2 and f.loc["i3", "customer_return_rate"] == 1.0
        assert (f.loc["i3", "product_past_returns"], f.loc["i3", "product_past_sales"]) == (2, 3)
        assert f.loc["i3", "max_product_return_rate"] > f.loc["i4", "max_product_return_rate"]
        c = by(customer_features(w, CUT), "customer_id")
        assert c.loc["g1", "returns_total"] == 2 and c.loc["g2", "return_rate"] == 0
    finally:
        w.close()


# ---- rows edited after the cutoff --------------------------------------------------------------
VERSIONED = ("orders", "tickets", "customers", "products")


def keep_versions(wh: Warehouse, since: pd.Timestamp) -> None:
    """What ingestion keeps: each stored row is the current version, dated by ``_valid_from``."""
    for table in VERSIONED:
        wh.con.execute(f'UPDATE "{table}" SET _valid_from = ?', [since.to_pydatetime()])


def edit(wh: Warehouse, table: str, where: str, change: str, when: pd.Timestamp) -> None:
    """Edit stored rows the way ingestion does: the old version moves to history, the row changes."""
    cols = ", ".join(f'"{c}"' for c in TABLES[table].columns)
    wh.con.execute(f'INSERT INTO "{history_table(table)}" ({cols}, valid_from) '
                   f'SELECT {cols}, _valid_from FROM "{table}" WHERE {where}')
    wh.con.execute(f'UPDATE "{table}" SET {change}, _valid_from = ? WHERE {where}', [when.to_pydatetime()])


def edit_after_cutoff(wh: Warehouse) -> None:
    when = at(1)
    edit(wh, "orders", "order_id = 'o3'", "carrier = 'fedex', total_amount = 999.0, payment_type = 'bnpl'", when)
    edit(wh, "orders", "order_id = 'o6'", "status = 'cancelled', region = 'east'", when)
    edit(wh, "orders", "order_id = 'o5'", "promised_at = promised_at + INTERVAL 10 DAY, discount_amount = 0", when)
    edit(wh, "tickets", "ticket_id = 't1'", "category = 'usage_question', escalated = FALSE", when)
    edit(wh, "customers", "customer_id = 'c2'", "region = 'east'", when)
    edit(wh, "products", "product_id = 'shoe'", "category = 'boots', size_sensitive = FALSE", when)


def test_features_read_edited_rows_as_they_were_at_the_cutoff(wh: Warehouse) -> None:
    keep_versions(wh, at(-1000))
    before_o, before_c = order_features(wh, CUT), customer_features(wh, CUT)
    edit_after_cutoff(wh)
    pd.testing.assert_frame_equal(before_o, order_features(wh, CUT), check_exact=True)
    pd.testing.assert_frame_equal(before_c, customer_features(wh, CUT), check_exact=True)
    later = by(order_features(wh, at(2)), "order_id")
    assert later.loc["o3", "carrier"] == "fedex" and later.loc["o3", "order_value"] == 999
    assert later.loc["o5", "region"] == "east" and later.loc["o3", "main_category"] == "boots"


def test_without_row_versions_the_edits_would_leak(wh: Warehouse) -> None:
    """The control: the same edits, with only the latest row stored, move the features."""
    keep_versions(wh, at(-1000))
    before = by(order_features(wh, CUT), "order_id")
    edit_after_cutoff(wh)
    for table in VERSIONED:
        wh.con.execute(f'DELETE FROM "{history_table(table)}"')
    after = by(order_features(wh, CUT), "order_id")
    assert after.loc["o3", "carrier"] == "fedex" and before.loc["o3", "carrier"] == "ups"
    assert (before.loc["o4", "region"], after.loc["o4", "region"]) == ("south", "east")  # the customer moved
    assert after.loc["o3", "order_value"] == 999 and after.loc["o3", "main_category"] == "boots"


def test_many_cutoffs_in_one_query_equal_one_query_per_cutoff(wh: Warehouse, bare: Warehouse) -> None:
    """The training frames' LATERAL query gives, at every cutoff, exactly the one-cutoff features: around
    rows edited after some cutoffs (read through their versions), facts arriving later, texts, a shop
    without optional sources, and a different set of rows asked for at each cutoff."""
    keep_versions(wh, at(-1000))
    add_future(wh)
    edit_after_cutoff(wh)
    cutoffs = [at(d) for d in (-100, -9, -1.5, 0, 0.4, 1.5, 2.5, 5)]
    for warehouse in (wh, bare):
        for entity, key, one in (("order", "order_id", order_features), ("customer", "customer_id",
                                                                           customer_features)):
            everyone = sorted(one(warehouse, cutoffs[-1], validate=False)[key])
            wanted = pd.concat([pd.DataFrame({key: [*everyone[i % 3::1 + i % 2], "nobody"], CUTOFF: c})
                                for i, c in enumerate(cutoffs)], ignore_index=True)
            many = features_at_cutoffs(warehouse, entity, wanted, Settings())
            assert list(many.columns) == [CUTOFF, *one(warehouse, cutoffs[0], validate=False).columns]
            assert list(many[CUTOFF].unique()) == cutoffs  # oldest first
            for c in cutoffs:
                ids = list(wanted.loc[wanted[CUTOFF] == c, key])
                expected = one(warehouse, c, ids, validate=False)
                found = many[many[CUTOFF] == c].drop(columns=CUTOFF).reset_index(drop=True)
                for frame in (found, expected):  # levels are those of all the cutoffs; values must match
                    for column in frame.select_dtypes("category"):
                        frame[column] = frame[column].astype(str)
                pd.testing.assert_frame_equal(found, expected, check_exact=True)
            first_rows = first_source_rows(warehouse)
            assert all(available_at(first_rows, c) == available_sources(warehouse, c) for c in cutoffs)
            sizes = many.groupby(CUTOFF).size()
            assert sizes.nunique() > 1 and "nobody" not in set(many[key])  # the rows asked for, and known, differ



def test_the_rows_asked_for_narrow_the_rows_never_the_history(wh: Warehouse, bare: Warehouse) -> None:
    """Scoring asks for one day's orders and active customers, and the queries read only those
    customers' own histories: every asked-for row must equal its row among everyone's features (shop
    rates, product and carrier rates, basket medians and ranks still come from all of the history)."""
    keep_versions(wh, at(-1000))
    add_future(wh)
    edit_after_cutoff(wh)
    for warehouse in (wh, bare):
        for cutoff in (at(-9), at(0.4), at(5)):
            for key, one in (("order_id", order_features), ("customer_id", customer_features)):
                everyone = one(warehouse, cutoff, validate=False).set_index(key)
                ids = list(everyone.index)
                for asked in (ids[:1], ids[1::3], ids[-2:]):
                    part = one(warehouse, cutoff, asked, validate=False).set_index(key)
                    expected = everyone.loc[sorted(asked)]
                    for frame in (part, expected):  # levels may differ with the rows; values must not
                        for column in frame.select_dtypes("category"):
                            frame[column] = frame[column].astype(str)
                    pd.testing.assert_frame_equal(part.sort_index(), expected, check_exact=True)


# ---- categories the model never saw -------------------------------------------------------------
def test_map_unseen_levels_sends_new_values_to_unknown() -> None:
    from tasks.models.features import map_unseen_levels, unseen_levels

    trained = {"carrier": ["dhl", "ups", UNKNOWN]}
    frame = pd.DataFrame({"carrier": pd.Categorical(["dhl", "JetLate", None, "ups", "JetLate"]), "x": range(5)})
    assert unseen_levels(frame, trained) == {"carrier": 2}
    mapped = map_unseen_levels(frame, trained)
    assert list(mapped["carrier"]) == ["dhl", UNKNOWN, UNKNOWN, "ups", UNKNOWN]
    assert list(mapped["carrier"].cat.categories) == ["dhl", "ups", UNKNOWN]
    assert mapped["x"].equals(frame["x"]) and frame["carrier"].iloc[1] == "JetLate"  # input untouched
    assert unseen_levels(mapped, trained) == {"carrier": 0}



def test_unseen_levels_are_mapped_alike_from_every_column_type() -> None:
    """The fast paths (a categorical's own levels, hashed objects) give what casting every row to text
    and comparing gives, for categories, objects with numbers, strings and nulls of each kind."""
    from tasks.models.features import map_unseen_levels
    from tasks.models.training import to_model_input

    trained = {"c": ["1", "2.5", "dhl", "ups"]}
    raw = ["dhl", "JetLate", None, "ups", 1, 2.5, np.nan, "1", "unknown", 3]
    columns = {"object": pd.Series(raw, dtype=object),
               "string": pd.Series([None if v is None or v is np.nan else str(v) for v in raw], dtype="string"),
               "category": pd.Series(pd.Categorical([None if v is None or v is np.nan else str(v) for v in raw])),
               "numeric category": pd.Series(pd.Categorical([1, 2.5, None, 1, 7, 2.5, None, 1, None, 3])),
               "empty category": pd.Series(pd.Categorical([None] * 3, categories=[]))}
    for kind, values in columns.items():
        frame = pd.DataFrame({"c": values})
        text = values.astype("string").fillna(UNKNOWN)
        plain = text.where(text.isin(trained["c"]), UNKNOWN).astype(object)
        assert list(map_unseen_levels(frame, trained)["c"].astype(object)) == list(plain), kind
        signed = to_model_input(frame, ["c"], trained)["c"]
        expected = values.astype("string").astype(object)
        assert list(signed) == [None if pd.isna(v) else v for v in expected], kind
        assert signed.dtype == object


def test_categorize_recodes_a_categorical_as_it_would_its_text() -> None:
    """The categorical path (levels in use, recoded) gives exactly what casting each row to text gives:
    unused levels dropped, nulls and blanks unknown, numbers as their text, fixed levels kept."""
    from tasks.models.features import categorize

    cases = {
        "unused levels": pd.Categorical(["b", None, "a", "b"], categories=["z", "b", "a", "y"]),
        "blanks": pd.Categorical([" ", "", "north", None, "north "]),
        "numbers": pd.Categorical([1, 2.5, None, 1]),
        "empty": pd.Categorical([None, None], categories=[]),
        "unknown present": pd.Categorical([UNKNOWN, "x", None]),
    }
    for kind, values in cases.items():
        series = pd.Series(values, name="c", index=[10 + i for i in range(len(values))])
        for fixed in ((), ("west", "x")):
            fast, plain = categorize(series, fixed), categorize(series.astype("string"), fixed)
            assert list(fast.cat.categories) == list(plain.cat.categories), kind
            assert fast.astype(object).tolist() == plain.astype(object).tolist(), kind
            assert fast.index.equals(series.index) and fast.name == "c"


def test_an_unseen_level_scores_like_the_trained_unknown_level() -> None:
    """The reproduction of issue 11.6 on a real booster: a new carrier must not take the missing branch."""
    import xgboost as xgb

    from tasks.models.features import map_unseen_levels

    rng = np.random.default_rng(0)
    n = 4_000
    levels = ["dhl", "ups", UNKNOWN]
    carrier = rng.choice(levels, n, p=[0.45, 0.45, 0.1])
    y = (rng.uniform(size=n) < np.select([carrier == "dhl", carrier == "ups"], [0.7, 0.3], 0.02)).astype(int)
    X = pd.DataFrame({"carrier": pd.Categorical(carrier, categories=levels), "late": rng.normal(size=n)})
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "seed": 1}, xgb.DMatrix(
        X, y, enable_categorical=True), num_boost_round=30)
    new = pd.DataFrame({"carrier": ["JetLate", UNKNOWN], "late": [0.0, 0.0]})

    def score(frame: pd.DataFrame) -> np.ndarray:  # as the booster's input is prepared: trained levels only
        values = frame["carrier"].where(frame["carrier"].isin(levels))
        ready = frame.assign(carrier=pd.Categorical(values, categories=levels))
        return booster.predict(xgb.DMatrix(ready, enable_categorical=True))

    raw, mapped = score(new), score(map_unseen_levels(new, {"carrier": levels}))
    assert mapped[0] == mapped[1] < 0.1, "the unseen carrier scores exactly as 'unknown'"
    assert raw[0] != raw[1], "without the mapping the unseen level takes another path"


def test_edits_ingested_after_the_cutoff_leave_every_feature_unchanged(tmp_path: Path) -> None:
    """The real ingest keeps the superseded versions: a later export that edits orders (carrier,
    amount, cancellation), tickets (category) and customers (region) changes no feature at an
    earlier cutoff, and shows at a cutoff after the edits."""
    from tasks.data.ingest import ingest_batch
    from tasks.data.synthetic import generate_shop

    shop, edits = tmp_path / "shop", tmp_path / "edits"
    generate_shop(shop, customers=60, seed=3, months=6, end_date="2026-03-01", dirty_share=0.0, file_format="csv")
    wh = Warehouse(tmp_path / "w.duckdb")
    try:
        ingest_batch(shop, wh, Settings(), as_of="2026-03-01")
        cutoff, later, edited_at = pd.Timestamp("2026-02-15"), pd.Timestamp("2026-03-03"), "2026-03-02 10:00:00"
        before_o, before_c = order_features(wh, cutoff), customer_features(wh, cutoff)
        orders = pd.read_csv(shop / "orders.csv", dtype=str)
        changed = orders[pd.to_datetime(orders["ordered_at"]) < cutoff - pd.Timedelta(days=20)].head(6).copy()
        changed["carrier"], changed["status"], changed["updated_at"] = "JetLate", "cancelled", edited_at
        changed["total_amount"] = (changed["total_amount"].astype(float) * 3).round(2).astype(str)
        tickets = pd.read_csv(shop / "tickets.csv", dtype=str, keep_default_na=False)
        tickets = tickets[pd.to_datetime(tickets["opened_at"]) < cutoff].assign(updated_at=edited_at)
        tickets["category"] = np.where(tickets["category"] == "delivery", "payment", "delivery")
        customers = pd.read_csv(shop / "customers.csv", dtype=str, keep_default_na=False)
        customers = customers.assign(region="Atlantis", updated_at=edited_at)
        edits.mkdir()
        for name, frame in (("orders", changed), ("tickets", tickets), ("customers", customers)):
            frame.to_csv(edits / f"{name}.csv", index=False)
        ingest_batch(edits, wh, Settings(), as_of="2026-03-03")
        assert all(wh.has_rows(history_table(t)) for t in ("orders", "tickets", "customers"))
        pd.testing.assert_frame_equal(before_o, order_features(wh, cutoff), check_exact=True)
        pd.testing.assert_frame_equal(before_c, customer_features(wh, cutoff), check_exact=True)
        now = by(order_features(wh, later), "order_id")
        ids = list(changed["order_id"].str.strip('"'))
        assert now.index.isin(ids).any() and set(now.loc[now.index.isin(ids), "carrier"].astype(str)) == {"JetLate"}
    finally:
        wh.close()


def test_the_booster_sees_an_unseen_level_as_unknown_not_missing() -> None:
    """prepare_features (training and scoring) maps a new carrier to the trained ``unknown`` level."""
    from tasks.models.training import prepare_features

    trained = {"carrier": ["dhl", UNKNOWN, "ups"]}
    new = pd.DataFrame({"carrier": ["JetLate", "dhl"], "x": [1.0, 2.0]})
    known = pd.DataFrame({"carrier": [UNKNOWN, "dhl"], "x": [1.0, 2.0]})
    seen = prepare_features(new, ["carrier", "x"], trained)
    pd.testing.assert_frame_equal(seen, prepare_features(known, ["carrier", "x"], trained))
    assert seen["carrier"].cat.codes.tolist() == [1, 0] and seen["carrier"].notna().all()
