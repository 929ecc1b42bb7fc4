"""Journeys: steps and their end, feasibility, the absorbing chain, the later-window evaluation, the flow."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from shared_shop import RUN, shop_copy

from flows.runtime import run_flow_state
from schemas.analytics import (
    JOURNEY_EVALUATION_TABLE,
    JOURNEY_PATHS_TABLE,
    JOURNEY_PREDICTIONS_TABLE,
    JOURNEY_STAGES_TABLE,
    JOURNEY_STEPS,
    JourneyPredictions,
)
from schemas.settings import Settings
from tasks.data.warehouse import Warehouse
from tasks.insight.journeys import (
    NextStepModel,
    bad_outcome_probabilities,
    evaluate_models,
    feasible,
    journey_steps,
    order_steps,
    seen_counts,
    transitions,
)

D = pd.Timestamp("2026-01-10")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return shop_copy(tmp_path_factory, "journeys")


def day(n: float) -> pd.Timestamp:
    return D + pd.Timedelta(days=n)


# ---- steps ------------------------------------------------------------------------------------------
def test_a_journey_ends_at_the_next_order_and_later_steps_are_dropped() -> None:
    raw = pd.DataFrame({
        "order_id": "o1", "customer_id": "c1", "delivered_at": day(0), "channel": None, "category": "shoes",
        "step": ["review_good", "delivered", "next_order", "ticket_opened", "return_requested"],
        "at": [day(3), day(0), day(10), day(-1), day(12)],
    })
    steps = order_steps(raw)
    assert steps["step"].tolist() == ["ticket_opened", "delivered", "review_good", "next_order"]
    assert steps["pos"].tolist() == [0, 1, 2, 3]


def handmade(wh: Warehouse) -> None:
    """One customer: o1 goes wrong (ticket, escalation, return, refund, bad review), o2 comes 30 days later."""
    wh.append("customers", pd.DataFrame({"customer_id": ["c1"]}))
    wh.append("products", pd.DataFrame({"product_id": ["p1"], "category": ["shoes"]}))
    wh.append("orders", pd.DataFrame({
        "order_id": ["o1", "o2"], "customer_id": "c1", "ordered_at": [day(-3), day(30)],
        "delivered_at": [day(0), day(33)], "status": "delivered", "total_amount": 50.0}))
    wh.append("order_items", pd.DataFrame({"order_id": ["o1", "o2"], "line_no": 1, "product_id": "p1",
                                           "quantity": 1, "unit_price": 50.0}))
    wh.append("tickets", pd.DataFrame({
        "ticket_id": ["t1"], "customer_id": "c1", "order_id": "o1", "channel": "email", "opened_at": [day(1)],
        "first_response_at": [day(1.5)], "resolved_at": [day(4)], "escalated": [True], "updated_at": [day(4)]}))
    wh.append("returns", pd.DataFrame({"return_id": ["r1"], "order_id": "o1", "requested_at": [day(2)],
                                       "refunded_at": [day(6)], "status": "refunded"}))
    wh.append("reviews", pd.DataFrame({"review_id": ["v1"], "order_id": "o1", "score": [1],
                                       "created_at": [day(7)]}))


def test_steps_of_a_handmade_order_as_known_at_each_time(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    settings = Settings()
    try:
        handmade(wh)
        steps = journey_steps(wh, day(200), settings)
        early = journey_steps(wh, day(3), settings)
    finally:
        wh.close()
    o1 = steps[steps["order_id"] == "o1"]
    assert o1["step"].tolist() == ["delivered", "ticket_opened", "escalated", "return_requested", "refunded",
                                   "review_bad", "next_order"]
    assert o1["at"].iloc[-1] == day(30) and (o1["channel"].iloc[1:3] == "email").all()
    o2 = steps[steps["order_id"] == "o2"]
    assert o2["step"].tolist() == ["delivered", "gone_quiet"]
    assert o2["at"].iloc[-1] == day(33 + settings.analytics.journeys.quiet_days)
    # at day 3 the refund, review, escalation (row last touched on day 4) and next order are unknown
    assert early["step"].tolist() == ["delivered", "ticket_opened", "return_requested"]


def test_steps_that_cannot_happen_again_are_ruled_out() -> None:
    steps = pd.DataFrame({"order_id": ["o"] * 3, "step": ["delivered", "ticket_opened", "review_good"]})
    seen = seen_counts(steps)
    mask = pd.DataFrame(feasible(seen, max_tickets=3), columns=list(JOURNEY_STEPS))
    last = mask.iloc[-1]
    assert not last["delivered"] and not last["review_bad"] and not last["refunded"]
    assert last["escalated"] and last["return_requested"] and last["ticket_opened"] and last["next_order"]
    assert mask.iloc[0]["review_bad"] and not mask.iloc[0]["escalated"]


def test_bad_outcome_probability_of_a_small_chain() -> None:
    # delivered -> review_bad 0.2 | ticket 0.3 | next_order 0.5;  ticket -> return 0.5 | next_order 0.5
    table = pd.DataFrame({"state": ["delivered"] * 3 + ["ticket_opened"] * 2,
                          "next": ["review_bad", "ticket_opened", "next_order", "return_requested", "next_order"],
                          "probability": [0.2, 0.3, 0.5, 0.5, 0.5]})
    p = bad_outcome_probabilities(table, ("review_bad", "return_requested", "gone_quiet"))
    assert p["ticket_opened"] == pytest.approx(0.5)
    assert p["delivered"] == pytest.approx(0.2 + 0.3 * 0.5)


def test_the_model_backs_off_to_the_last_step_for_rare_states() -> None:
    trans = pd.DataFrame({"ctx1": ["delivered"] * 30 + ["ticket_opened"] * 5,
                          "ctx2": ["start"] * 30 + ["delivered"] * 5,
                          "next": ["next_order"] * 20 + ["review_good"] * 10 + ["escalated"] * 5,
                          "hours": [300.0] * 20 + [50.0] * 10 + [2.0] * 5})
    model = NextStepModel.fit(trans, order=2, min_count=10, bad_steps=("review_bad",))
    query = pd.DataFrame({"ctx1": ["delivered", "ticket_opened", "refunded"],
                          "ctx2": ["start", "delivered", "return_requested"]})
    pred = model.predict(query)
    assert pred["next_step"].tolist()[:2] == ["next_order", "escalated"]
    assert pred["state"].tolist() == ["start>delivered", "ticket_opened", ""]  # rare pair backs off; unseen: none
    assert pred["hours"].iloc[0] == pytest.approx(300.0)


# ---- on generated data --------------------------------------------------------------------------------
def test_next_step_prediction_beats_the_naive_baseline_on_a_later_window(shop) -> None:
    settings = Settings()
    wh = Warehouse(shop[0], read_only=True)
    try:
        ev = evaluate_models(wh, RUN, settings)
        steps = journey_steps(wh, RUN, settings)
    finally:
        wh.close()
    table = ev.table.set_index("model")
    print("\n" + ev.table.to_string())
    assert ev.test_from >= ev.train_until and ev.test_until > ev.test_from
    baseline = table.loc["most frequent next step (baseline)"]
    assert baseline["transitions"] >= 1_000
    for model in table.index.drop("most frequent next step (baseline)"):
        assert table.loc[model, "accuracy"] >= baseline["accuracy"] + 0.05, model
        assert table.loc[model, "bad_outcome_brier"] < baseline["bad_outcome_brier"]
    # every journey starts or ends somewhere sensible
    trans = transitions(steps, 2)
    assert set(trans["next"]) <= set(JOURNEY_STEPS)
    last = steps.groupby("order_id")["step"].last()
    old = steps.groupby("order_id")["delivered_at"].first() <= RUN - pd.Timedelta(days=130)
    assert last[old].isin(["next_order", "gone_quiet"]).all()


def test_journeys_flow_end_to_end(shop, settings: Settings, prefect_api: None) -> None:
    from flows.journeys import journeys_flow

    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shop[0], settings.warehouse_path)
    result = journeys_flow(run_date=RUN.date())
    again = journeys_flow(run_date=RUN.date())
    assert result == again
    accuracy = result["accuracy"]
    assert max(accuracy.values()) > accuracy["most frequent next step (baseline)"]
    assert result["open"] > 0 and result["paths"] == settings.analytics.journeys.top_paths
    wh = Warehouse(settings.warehouse_path, read_only=True)
    try:
        for table in (JOURNEY_PATHS_TABLE, JOURNEY_STAGES_TABLE, JOURNEY_PREDICTIONS_TABLE, JOURNEY_EVALUATION_TABLE):
            assert wh.scalar(f'SELECT count(DISTINCT run_date) FROM "{table}"') == 1
        predictions = JourneyPredictions.validate(wh.table(JOURNEY_PREDICTIONS_TABLE))
        paths = wh.table(JOURNEY_PATHS_TABLE)
    finally:
        wh.close()
    assert len(predictions) == result["open"]
    assert predictions["bad_outcome_probability"].between(0, 1).all()
    assert np.isclose(paths["share"].iloc[0], paths["orders"].iloc[0] / result["ended"], atol=0.2)
    report = Path(result["report"]).read_text(encoding="utf-8")
    assert "naive baseline" in report and "Ordered again" in report and "data:image/png;base64," in report
    assert "next_order" not in report.split("<img")[0]


def test_a_window_without_deliveries_is_evaluated_on_nothing_not_a_crash(tmp_path: Path) -> None:
    """The later window holds no delivered order (a quiet spell, or the data ends): 0 transitions."""
    wh = Warehouse(tmp_path / "w.duckdb")
    try:
        handmade(wh)
        evaluation = evaluate_models(wh, day(1000), Settings())
    finally:
        wh.close()
    assert (evaluation.table["transitions"] == 0).all() and len(evaluation.table) >= 1


def test_a_shop_without_delivery_dates_is_told_so(settings: Settings, prefect_api: None) -> None:
    """groceryElog, Complete Journey: orders, no delivery dates. Was: KeyError 'step'."""
    from flows.journeys import journeys_flow

    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    wh = Warehouse(settings.warehouse_path)
    try:
        wh.append("customers", pd.DataFrame({"customer_id": ["c1", "c2"]}))
        wh.append("orders", pd.DataFrame({
            "order_id": ["o1", "o2"], "customer_id": ["c1", "c2"], "ordered_at": [day(-3), day(5)],
            "delivered_at": pd.Series([pd.NaT, pd.NaT], dtype="datetime64[us]"), "status": "placed",
            "total_amount": 10.0}))
    finally:
        wh.close()
    state = run_flow_state(journeys_flow, run_date=day(60).date())
    assert state.is_failed()
    assert "no order delivered by" in state.message and "map delivered_at" in state.message
