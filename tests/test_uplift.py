"""Uplift: treated vs control per customer, on realised outcomes, with statsmodels intervals and power."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.settings import ScoringSettings, Settings
from tasks.care.interventions import build_task_list, write_task_list
from tasks.care.playbook import load_playbook
from tasks.care.uplift import (
    contamination,
    minimum_detectable,
    terminal_rows,
    two_arms,
    units_needed,
    uplift_analysis,
    uplift_report,
)
from tasks.data.warehouse import Warehouse
from tasks.models.explain import default_catalogue
from tests.md_tables import row_starting

DAY = pd.Timestamp("2026-09-01")
TRUE_TREATED, TRUE_CONTROL = 0.20, 0.35


def test_intervals_match_the_published_example():
    # Newcombe (1998), Stat Med 17:873, Table II, method 10, examples (a) and (d)
    a = two_arms(56, 70, 48, 80, 0.95)
    assert a["difference"] == pytest.approx(0.2)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    d = two_arms(5, 56, 0, 29, 0.95)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((-0.0381, 0.1926), abs=1e-4)
    assert np.isnan(d["effect"]), "no control events: the risk ratio is not estimable"
    r = two_arms(20, 100, 35, 100, 0.95)  # relative effect = 1 - RR, interval from the log-adjusted ratio
    assert r["effect"] == pytest.approx(1 - 0.2 / 0.35)
    assert r["effect_low"] < r["effect"] < r["effect_high"] < 1


def test_minimum_detectable_effect_and_units_needed_agree():
    p_c, effect, ratio = 0.30, 0.20, 0.25
    needed = units_needed(p_c, effect, ratio, 0.95, 0.8)
    assert 2_000 < needed < 10_000
    assert minimum_detectable(p_c, round(needed), round(needed * ratio), 0.95, 0.8) == pytest.approx(
        p_c * effect, rel=0.01)
    assert minimum_detectable(p_c, 100, 25, 0.95, 0.8) > minimum_detectable(p_c, 1000, 250, 0.95, 0.8)


def test_interval_keeps_its_coverage():
    rng = np.random.default_rng(0)
    n1, n2, p1, p2 = 120, 60, 0.15, 0.25
    hits = 0
    for k1, k2 in zip(rng.binomial(n1, p1, 400), rng.binomial(n2, p2, 400), strict=True):
        out = two_arms(int(k1), n1, int(k2), n2, 0.95)
        hits += out["ci_low"] <= p1 - p2 <= out["ci_high"]
    assert 0.92 <= hits / 400 <= 0.98


def _settings(tmp_path: Path, share: float = 0.5) -> Settings:
    return Settings(paths={"home": tmp_path}, scoring=ScoringSettings(
        control_share=share, queue_capacity={"default": 10_000}, min_probability=0.1))


def _store_day(wh: Warehouse, settings: Settings, tmp_path: Path, n: int = 2000, day: pd.Timestamp = DAY):
    rng = np.random.default_rng(1)
    scored = pd.DataFrame({
        "run_date": day, "risk": "return", "customer_id": [f"c{i:05d}" for i in range(n)],
        "order_id": [f"o{i:05d}" for i in range(n)], "probability": rng.uniform(0.3, 0.6, n),
        "value_at_stake": 100.0, "model_version": "3", "reason_1": "size_sensitive_share", "reason_1_value": 0.9,
        "reason_2": None, "reason_2_value": None, "reason_3": None, "reason_3_value": None})
    catalogue = default_catalogue()
    from tasks.care.interventions import load_assignments, load_history

    history, held = load_history(wh, day, settings)
    tasks, control = build_task_list(scored, load_playbook(catalogue=catalogue), settings, history, day,
                                     catalogue=catalogue, held_out=held, assignments=load_assignments(wh, day))
    write_task_list(wh, tasks, control, day, tmp_path / "out", settings)
    return tasks, control


def _clock(wh: Warehouse, until: pd.Timestamp) -> None:
    """The data reaches ``until``: one late order and one late return (the label clocks)."""
    wh.append("orders", pd.DataFrame({"order_id": ["late"], "customer_id": ["x"], "ordered_at": [until],
                                      "total_amount": [1.0]}))
    wh.append("returns", pd.DataFrame({"return_id": ["late"], "order_id": ["late"], "requested_at": [until]}))


def test_no_control_says_so(tmp_path: Path):
    wh = Warehouse(tmp_path / "w.duckdb")
    try:
        table, md = uplift_report(wh, _settings(tmp_path))
        assert table.empty and "No control group recorded yet" in md
        _store_day(wh, _settings(tmp_path, share=0.0), tmp_path, n=50)
        table, md = uplift_report(wh, _settings(tmp_path))
        assert "No control group recorded yet" in md
    finally:
        wh.close()


def test_pending_windows_are_not_read_as_no_return(tmp_path: Path):
    wh = Warehouse(tmp_path / "w.duckdb")
    try:
        settings = _settings(tmp_path)
        _store_day(wh, settings, tmp_path, n=100)
        _clock(wh, DAY + pd.Timedelta(days=10))  # return window is 30 days
        table, md = uplift_report(wh, settings)
        assert table.loc[0, "n_treated"] == 0 and table.loc[0, "pending"] == 100
        assert "no outcome window has closed yet" in md and "2026-10-01" in md
    finally:
        wh.close()


def test_uplift_interval_contains_the_true_difference(tmp_path: Path):
    wh = Warehouse(tmp_path / "w.duckdb")
    try:
        settings = _settings(tmp_path)
        tasks, control = _store_day(wh, settings, tmp_path)
        rng = np.random.default_rng(2)
        units = pd.concat([tasks.assign(p=TRUE_TREATED), control.assign(p=TRUE_CONTROL)])
        returned = units[rng.uniform(size=len(units)) < units["p"]]
        wh.append("returns", pd.DataFrame({"return_id": "r" + returned["order_id"], "order_id": returned["order_id"],
                                           "requested_at": DAY + pd.Timedelta(days=5)}))
        # a return after the window does not count
        wh.append("returns", pd.DataFrame({"return_id": ["r-late"], "order_id": [tasks["order_id"].iloc[0]],
                                           "requested_at": [DAY + pd.Timedelta(days=31)]}))
        reached = tasks["task_id"].iloc[:100]
        wh.append("outcomes", pd.DataFrame({"task_id": reached, "customer_id": "x", "outcome": "contacted",
                                            "recorded_at": DAY + pd.Timedelta(days=1)}))
        _clock(wh, DAY + pd.Timedelta(days=40))

        table, md = uplift_report(wh, settings)
        r = table.set_index("risk").loc["return"]
        assert r["n_treated"] == len(tasks) and r["n_control"] == len(control) and r["pending"] == 0
        assert r["rate_treated"] == pytest.approx(returned["task_id"].isin(tasks["task_id"]).sum() / len(tasks))
        assert r["ci_low"] <= TRUE_TREATED - TRUE_CONTROL <= r["ci_high"]
        assert r["effect_low"] <= 1 - TRUE_TREATED / TRUE_CONTROL <= r["effect_high"]
        assert r["ci_high"] < 0 and r["verdict"] == "fewer bad outcomes with contact"
        assert r["reached_share"] == pytest.approx(100 / len(tasks)) and r["control_contacted"] == 0
        assert r["mde"] > 0 and r["weeks_to_detect"] >= 0
        assert "Newcombe" in md and "Warning" not in md and "size_guide_exchange" in md
        row = row_starting(md, "return")
        assert row[1:3] == [str(len(tasks)), str(len(control))] and row[9] == "fewer bad outcomes with contact"
        # the terminal's cut of the same figures: five columns, nothing lost that a person reads first
        analysis = uplift_analysis(wh, settings)
        shown = terminal_rows(analysis, settings.care.confidence)
        actions = [f"return / {a}" for a in analysis.by_action["action_id"]]
        assert [line["risk / action"] for line in shown] == ["return", *actions]
        assert shown[0]["contacted"] == f"{r['rate_treated']:.1%} of {len(tasks):,}"
        assert shown[0]["control"].endswith(f"of {len(control):,}")
        assert shown[0]["verdict"] == "fewer bad outcomes with contact" and " to " in shown[0]["effect (95% CI)"]
        assert shown[0]["reached"] == f"{100 / len(tasks):.1%}"
    finally:
        wh.close()


def test_each_customer_counts_once_and_every_contact_of_a_held_customer_is_flagged(tmp_path: Path):
    wh = Warehouse(tmp_path / "w.duckdb")
    try:
        settings = _settings(tmp_path)
        tasks, control = _store_day(wh, settings, tmp_path, n=400)
        # the same customers again 20 days later (their return window of 30 days overlaps)
        later = DAY + pd.Timedelta(days=20)
        tasks2, _ = _store_day(wh, settings, tmp_path, n=400, day=later)
        held = control["customer_id"].tolist()
        assert not set(tasks2["customer_id"]) & set(held), "held customers stay out for the whole window"
        # contaminations: a hand-made task for a held customer, and helpdesk contacts by customer id
        sneaky = tasks2.head(1).assign(customer_id=held[0], task_id="manual-1")
        wh.append("task_list", sneaky)
        wh.append("outcomes", pd.DataFrame({
            "task_id": ["helpdesk-1", control["task_id"].iloc[2], "helpdesk-late"],
            "customer_id": [held[1], held[2], held[3]], "outcome": ["contacted", "no_answer", "contacted"],
            "recorded_at": [DAY + pd.Timedelta(days=3), DAY + pd.Timedelta(days=4), DAY + pd.Timedelta(days=40)]}))
        _clock(wh, DAY + pd.Timedelta(days=80))

        flagged = contamination(wh, settings)
        bad = flagged[flagged["kind"] == "contamination"]
        assert set(bad["customer_id"]) == {held[0], held[1], held[2]}, "the contact after the hold is not flagged"
        assert set(bad["source"]) == {"task list", "outcome"}

        analysis = uplift_analysis(wh, settings)
        units = analysis.outcomes
        assert not units.duplicated(["customer_id", "risk_code"]).any()
        assert len(units) == 400, "one unit per customer, at their first assignment (the manual task adds none)"
        first = units.set_index("customer_id")["run_date"]
        assert (first.loc[tasks["customer_id"]] == DAY).all()
        r = analysis.by_risk.set_index("risk").loc["return"]
        assert r["control_contacted"] == 3
        assert "Warning: 3 contacts of held-out customers" in analysis.markdown
    finally:
        wh.close()
