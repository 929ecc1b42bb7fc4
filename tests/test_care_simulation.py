"""The care loop on a synthetic shop with planted effects: recovered, contamination flagged, no false retrain.

A perfectly calibrated "model" scores every delivered order; the real playbook picks one of three
actions by the order's reason; the real task list holds out a control group day by day in a DuckDB
warehouse; a contacted order's return probability changes by the action's planted effect (+50%
prevented, none, 20% more returns). Customers recur every two weeks, so windows overlap. Some
held-out customers are contacted anyway by the helpdesk.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest

from schemas.settings import MonitoringSettings
from tasks.care.simulation import PlantedShop, SimulationTruth, monitoring_rows, run
from tasks.care.uplift import UpliftAnalysis, uplift_analysis
from tasks.monitoring.checks import performance_checks

SHOP = PlantedShop(customers=1500, days=42, seed=0)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UpliftAnalysis, SimulationTruth,
                                                                          pd.DataFrame]]:
    settings, wh, truth = run(SHOP, tmp_path_factory.mktemp("planted"))
    try:
        yield uplift_analysis(wh, settings), truth, monitoring_rows(wh, truth, settings)
    finally:
        wh.close()


def test_each_planted_effect_is_recovered_within_its_interval(simulated) -> None:
    analysis, _, _ = simulated
    by_action = analysis.by_action.set_index("action_id")
    print(by_action[["n_treated", "n_control", "effect", "effect_low", "effect_high", "difference", "ci_low",
                     "ci_high"]].to_string())
    for action, planted in SHOP.effects.items():
        row = by_action.loc[action]
        assert row["n_control"] >= 60 and row["n_treated"] >= 150, action
        assert row["effect_low"] <= planted <= row["effect_high"], (action, planted, row["effect_low"],
                                                                    row["effect_high"])
    # not trivially wide: the helpful action is told apart from no effect, the harmful one points the right way
    assert by_action.loc["size_guide_exchange", "ci_high"] < 0 < by_action.loc["size_guide_exchange", "effect_low"]
    assert by_action.loc["return_check_in", "effect"] < 0 < by_action.loc["return_check_in", "difference"]
    zero = by_action.loc["product_help"]
    assert zero["ci_low"] < 0 < zero["ci_high"] and zero["verdict"] == "no clear difference yet"


def test_the_unit_is_the_customer_not_the_customer_day(simulated) -> None:
    analysis, truth, _ = simulated
    units = analysis.outcomes
    assert not units.duplicated(["customer_id", "risk_code"]).any()
    listed_days = int(truth.orders["listed"].sum() + truth.orders["held"].sum())
    assert len(units) < 0.8 * listed_days, "customers recur: far fewer units than listed customer-days"


def test_every_planted_contamination_is_flagged(simulated) -> None:
    analysis, truth, _ = simulated
    assert len(truth.contaminations) >= 10
    flagged = analysis.contamination[analysis.contamination["kind"] == "contamination"]
    planted = set(truth.contaminations["task_id"])
    assert planted <= set(flagged["task_id"]), planted - set(flagged["task_id"])
    assert set(flagged["task_id"]) <= planted, "nothing but the planted contacts is flagged"
    assert int(analysis.by_risk["control_contacted"].sum()) > 0
    assert "Warning:" in analysis.markdown and "held-out customers" in analysis.markdown


def test_a_care_team_that_works_does_not_trigger_a_retrain(simulated) -> None:
    _, _, rows = simulated
    cfg = MonitoringSettings(bootstrap_draws=400)
    expected = {"roc_auc": 0.5, "pr_auc": float(rows["label"].mean())}  # a calibrated model that cannot rank
    untreated = rows[~rows["treated"]]
    assert rows["treated"].sum() > 0 and len(untreated) >= cfg.min_labelled_rows
    assert not any(c.crossed for c in performance_checks(untreated, expected, cfg)), "untreated rows: no retrain"
    everyone = {c.check: c for c in performance_checks(rows, expected, cfg)}
    assert everyone["calibration"].crossed, "judged on treated outcomes, working care looks like a broken model"
