"""Value at stake: one scale (margin within the label horizon) for every risk, capped per shop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.settings import Settings
from tasks.data.warehouse import Warehouse
from tasks.models.scoring import list_candidates, risk_of_rows, stake_cap, value_at_stake

S = Settings()
RUN = pd.Timestamp("2026-03-01")


def customers(values_365d: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": [f"c{i}" for i in range(len(values_365d))],
                         "value_365d": values_365d, "avg_order_value": 50.0})


def test_churn_and_orders_share_one_scale() -> None:
    margin, horizon = S.scoring.margin_rate, S.scoring.churn_value_days
    churn = value_at_stake("churn", customers([365.0, 0.0]), S)
    assert churn.iloc[0] == pytest.approx(margin * horizon)  # one unit a day over the days a lost customer costs
    assert churn.iloc[1] == pytest.approx(margin * 50 / 365 * horizon)  # no spend this year: the usual order
    order = value_at_stake("return", pd.DataFrame({"order_value": [200.0, None]}), S)
    assert list(order) == [pytest.approx(margin * 200), 0.0]


def test_a_likely_loss_outranks_an_unlikely_big_spender() -> None:
    """A wholesale buyer spending 100x the others at 5% churn risk must not top the list."""
    frame = customers([500.0] * 60 + [50_000.0]).assign(probability=[0.6] * 60 + [0.05], risk="churn")
    uncapped = frame.assign(value_at_stake=value_at_stake("churn", frame, S))
    assert list_candidates(uncapped, S.model_copy(update={"scoring": S.scoring.model_copy(
        update={"min_probability": 0.0})}))["customer_id"].iloc[0] == "c60", "on value alone the big spender leads"
    cap = stake_cap(None, "churn", frame, RUN, S)
    capped = frame.assign(value_at_stake=value_at_stake("churn", frame, S, cap))
    assert capped["value_at_stake"].max() == pytest.approx(cap)
    ranked = list_candidates(capped, S.model_copy(update={"scoring": S.scoring.model_copy(
        update={"min_probability": 0.0})}))
    assert ranked["customer_id"].iloc[-1] == "c60"


def test_order_cap_comes_from_the_shops_last_year_of_orders(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    rng = np.random.default_rng(1)
    totals = np.r_[rng.uniform(10, 100, 200), [9_000.0, 12_000.0]]
    wh.append("customers", pd.DataFrame({"customer_id": ["c"]}))
    wh.append("orders", pd.DataFrame({"order_id": [f"o{i}" for i in range(len(totals))], "customer_id": "c",
                                      "ordered_at": RUN - pd.to_timedelta(np.arange(len(totals)), unit="h"),
                                      "total_amount": totals}))
    wh.append("orders", pd.DataFrame({"order_id": ["future"], "customer_id": "c", "ordered_at": [RUN + pd.Timedelta(
        days=1)], "total_amount": [1e9]}))
    try:
        cap = stake_cap(wh, "return", pd.DataFrame({"order_value": [9_000.0]}), RUN, S)
        assert cap == pytest.approx(S.scoring.margin_rate * np.quantile(totals, S.scoring.value_cap_quantile))
        assert cap < S.scoring.margin_rate * 100  # the two wholesale invoices do not set the scale
    finally:
        wh.close()


def test_only_overdue_orders_are_the_late_delivery_watch() -> None:
    frame = pd.DataFrame({"moment": pd.Categorical(["shipped", "overdue", "delivered"]), "is_delivered": [0, 0, 1]})
    assert list(risk_of_rows("negative_review", frame)) == ["negative_review", "late_delivery", "negative_review"]
    assert list(risk_of_rows("return", frame)) == ["return"] * 3


def test_without_amounts_the_candidates_are_the_most_likely() -> None:
    """A purchase log without prices: every value at stake is 0, so the probability alone picks who is explained."""
    rng = np.random.default_rng(3)
    scored = pd.DataFrame({"risk": "churn", "customer_id": [f"c{i}" for i in range(500)],
                           "probability": rng.uniform(0.2, 1.0, 500), "value_at_stake": 0.0})
    settings = S.model_copy(update={"scoring": S.scoring.model_copy(
        update={"queue_capacity": {"default": 10}, "explain_headroom": 2.0})})
    kept = list_candidates(scored, settings)
    assert len(kept) == 20
    assert kept["probability"].min() >= scored["probability"].nlargest(20).min()


def test_candidates_are_each_risks_best_by_expected_gain() -> None:
    """The positional ranking keeps exactly what sorting the whole frame kept: per risk the first
    ``limit`` rows by probability x value (probability alone for a risk without amounts), ties in
    row order, unlabelled index kept, the floor applied; every column of the kept rows unchanged."""
    rng = np.random.default_rng(7)
    n = 3_000
    frame = pd.DataFrame({
        "risk": rng.choice(["return", "churn", "negative_review"], n),
        "probability": rng.choice([0.05, 0.2, 0.4, 0.4, 0.7, 0.9], n),  # many ties
        "value_at_stake": rng.choice([0.0, 10.0, 55.5, np.nan], n),
        "customer_id": [f"c{i}" for i in range(n)],
        "region": pd.Categorical(rng.choice(["n", "s"], n)),
    }, index=rng.permutation(np.arange(10_000, 10_000 + n)))
    frame.loc[frame["risk"] == "negative_review", "value_at_stake"] = 0.0  # a risk without amounts
    settings = S.model_copy(update={"scoring": S.scoring.model_copy(
        update={"min_probability": 0.3, "explain_headroom": 0.5})})
    limit = int(settings.scoring.explain_headroom * sum(settings.scoring.queue_capacity.values()))
    kept = list_candidates(frame, settings)

    eligible = frame[frame["probability"] >= 0.3]
    value = eligible["value_at_stake"].astype(float)
    priced = value.gt(0).groupby(eligible["risk"]).transform("any").astype(bool)
    gain = eligible["probability"] * value.where(priced, 1.0)
    expected = (eligible.assign(_gain=gain).sort_values("_gain", ascending=False, kind="stable")
                .groupby("risk", sort=False).head(limit).drop(columns="_gain"))
    pd.testing.assert_frame_equal(kept, expected)
    assert (kept.groupby("risk").size() == limit).all() and (eligible.groupby("risk").size() > limit).all()
    assert kept["probability"].min() >= 0.3
    empty = list_candidates(frame.assign(probability=0.0), settings)
    assert empty.empty and list(empty.columns) == list(frame.columns)
