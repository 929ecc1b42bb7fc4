"""Uplift: treated vs control on realised outcomes, with a Newcombe interval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.settings import ScoringSettings, Settings
from tasks.care.interventions import build_task_list, write_task_list
from tasks.care.playbook import load_playbook
from tasks.care.uplift import newcombe_difference, uplift_report, wilson_interval
from tasks.data.warehouse import Warehouse
from tasks.models.explain import default_catalogue

DAY = pd.Timestamp("2026-09-01")
TRUE_TREATED, TRUE_CONTROL = 0.20, 0.35


def test_newcombe_matches_the_published_example():
    # Newcombe (1998), Stat Med 17:873, Table II, method 10, examples (a) and (d)
    diff, low, high = newcombe_difference(56, 70, 48, 80)
    assert diff == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert newcombe_difference(5, 56, 0, 29)[1:] == pytest.approx((-0.0381, 0.1926), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)


def test_newcombe_interval_keeps_its_coverage():
    rng = np.random.default_rng(0)
    n1, n2, p1, p2 = 120, 60, 0.15, 0.25
    hits = 0
    for k1, k2 in zip(rng.binomial(n1, p1, 400), rng.binomial(n2, p2, 400), strict=True):
        _, low, high = newcombe_difference(int(k1), n1, int(k2), n2)
        hits += low <= p1 - p2 <= high
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
    tasks, control = build_task_list(scored, load_playbook(catalogue=catalogue), settings, catalogue=catalogue)
    write_task_list(wh, tasks, control, day, tmp_path / "out")
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
        assert r["ci_high"] < 0 and r["verdict"] == "fewer bad outcomes with contact"
        assert r["reached_share"] == pytest.approx(100 / len(tasks)) and r["control_contacted"] == 0
        assert "Newcombe" in md and "| return |" in md and "Warning" not in md
    finally:
        wh.close()
