"""The daily task list: playbook, merging, cool-down, control group, capacity, idempotent storage."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
import yaml

from schemas.settings import ScoringSettings
from schemas.tasks import AGENT_TEXT_COLUMNS, CONTROL_TABLE, TASK_TABLE, ScoredRows
from tasks.care.interventions import build_task_list, load_history, make_task_id, task_list_summary, write_task_list
from tasks.care.playbook import DEFAULT_PLAYBOOK_FILE, PlaybookError, apply_playbook, load_playbook, parse_playbook
from tasks.data.warehouse import Warehouse
from tasks.models.explain import default_catalogue
from tasks.models.features import feature_registry

DAY = "2026-11-02"
FEATURES = {f.name for f in feature_registry()}
REASONS = {  # typical top reasons per risk
    "return": [("size_sensitive_share", 0.9), ("size_chart_views_before", 0.0), ("max_product_return_rate", 0.4)],
    "negative_review": [("order_ticket_wait_hours", 30.0), ("mean_satisfaction", 2.0), ("order_value", 80.0)],
    "late_delivery": [("days_late", 4.0), ("carrier_late_rate", 0.3), ("carrier", "Slowpost")],
    "churn": [("recency_days", 80.0), ("orders_90d", 0.0), ("avg_discount_share", 0.3)],
}


@pytest.fixture(scope="module")
def catalogue():
    return default_catalogue()


@pytest.fixture(scope="module")
def playbook(catalogue):
    return load_playbook(catalogue=catalogue)


def cfg(**overrides: Any) -> ScoringSettings:
    base: dict[str, Any] = {"control_share": 0.0, "cooldown_days": 14, "min_probability": 0.15}
    return ScoringSettings(**(base | overrides))


def row(customer: str, risk: str, probability: float, value: float = 100.0, order: str | None = None,
        tags: str | None = None, reasons: list[tuple[str, Any]] | None = None, day: str = DAY) -> dict[str, Any]:
    reasons = REASONS[risk] if reasons is None else reasons
    out: dict[str, Any] = {
        "run_date": day, "risk": risk, "customer_id": customer,
        "order_id": None if risk == "churn" else (order or f"o-{customer}-{risk}"),
        "probability": probability, "value_at_stake": value, "model_version": "7", "tags": tags, "segment": None}
    for i in range(3):
        name, val = reasons[i] if i < len(reasons) else (None, None)
        out[f"reason_{i + 1}"], out[f"reason_{i + 1}_value"] = name, val
    return out


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def many(n: int, risk: str = "return", seed: int = 0, **kw: Any) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return frame([row(f"c{i:05d}", risk, float(p), float(v), **kw)
                  for i, (p, v) in enumerate(zip(rng.uniform(0.3, 0.95, n), rng.uniform(50, 500, n), strict=True))])


def assert_agent_safe(tasks: pd.DataFrame) -> None:
    for col in AGENT_TEXT_COLUMNS:
        for text in tasks[col].dropna():
            assert "_" not in text, (col, text)
            assert not set(re.findall(r"[A-Za-z0-9_]+", text)) & FEATURES, (col, text)


# ---- playbook --------------------------------------------------------------------------------
def test_tag_specific_rule_beats_the_default(playbook, catalogue):
    rows = frame([row("a", "return", 0.5), row("b", "return", 0.5, tags="new, high_value"),
                  row("c", "return", 0.5, reasons=[("order_value", 90.0)]),
                  row("d", "churn", 0.5, reasons=[("recency_days", 60.0), ("unresolved_tickets", 2.0)]),
                  row("e", "negative_review", 0.5, tags="frequent_complainer", reasons=[("order_value", 9.0)]),
                  row("f", "late_delivery", 0.5)])
    out = apply_playbook(ScoredRows.validate(rows), playbook, catalogue).set_index("customer_id")
    assert out.loc["a", "rule"] == "return_size_fit" and out.loc["a", "queue"] == "returns"
    assert out.loc["b", "rule"] == "vip_any_risk" and out.loc["b", "queue"] == "vip"
    assert out.loc["c", "rule"] == "return_default"
    assert out.loc["d", "rule"] == "churn_open_ticket" and out.loc["d", "action_id"] == "senior_retention_call"
    assert out.loc["e", "rule"] == "negative_review_frequent_complainer"
    assert out.loc["f", "action_id"] == "delivery_apology_credit" and out.loc["f", "sla_hours"] == 12
    assert (out["action_cost"] > 0).all()


def _raw_playbook() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_PLAYBOOK_FILE.read_text(encoding="utf-8"))


def test_playbook_errors_name_the_rule(catalogue):
    raw = _raw_playbook()
    raw["rules"][1]["action"] = "teleport_parcel"
    with pytest.raises(PlaybookError, match=r"return_size_fit.*teleport_parcel"):
        parse_playbook(raw)
    raw = _raw_playbook()
    raw["rules"][2]["sla_hours"] = -1
    with pytest.raises(PlaybookError, match=r"return_product_issue.*sla_hours"):
        parse_playbook(raw)
    raw = _raw_playbook()
    raw["rules"][1]["when"]["reason_group"] = "no_such_group"
    with pytest.raises(PlaybookError, match=r"return_size_fit.*no_such_group"):
        parse_playbook(raw, catalogue=catalogue)
    raw = _raw_playbook()
    raw["rules"] = [r for r in raw["rules"] if r["name"] != "churn_default"]
    with pytest.raises(PlaybookError, match=r"no default rule.*churn"):
        parse_playbook(raw)


# ---- the list --------------------------------------------------------------------------------
def test_one_task_per_customer_with_every_reason_merged(playbook, catalogue):
    scored = frame([row("a", "return", 0.6, 100.0), row("a", "churn", 0.5, 400.0),
                    row("a", "negative_review", 0.3, 100.0, order="o-other"), row("b", "return", 0.4)])
    tasks, control = build_task_list(scored, playbook, cfg(), catalogue=catalogue)
    assert control.empty and tasks["customer_id"].tolist() == ["a", "b"]
    a = tasks.iloc[0]
    assert a["risk_code"] == "churn" and a["risk"] == "churn risk"  # highest expected value leads
    assert pd.isna(a["order_id"]) and a["action_id"] == "winback_offer" and a["queue"] == "retention"
    assert a["expected_value"] == pytest.approx(0.5 * 400 - 3.0)
    assert set(a["risks"].split(",")) == {"churn", "return", "negative_review"}
    assert a["other_risks"] == "return risk 60%; bad review risk 30%"
    assert set(a["related_orders"].split(", ")) == {"o-a-return", "o-other"}
    for expected in ["last order 80 days ago", "90% of items are size-sensitive", "waited 30 hours for a first reply"]:
        assert expected in a["why"]
    assert a["task_id"] == make_task_id(DAY, "a") and a["rank"] == 1
    assert a["due_by"] == pd.Timestamp(DAY) + pd.Timedelta(hours=72)
    assert_agent_safe(tasks)


def test_low_probability_and_unprofitable_rows_are_dropped(playbook, catalogue):
    scored = frame([row("low", "return", 0.10), row("cheap", "return", 0.5, value=2.0), row("ok", "return", 0.5)])
    tasks, _ = build_task_list(scored, playbook, cfg(), catalogue=catalogue)
    assert tasks["customer_id"].tolist() == ["ok"]


def test_capacity_is_respected_per_queue_highest_value_first(playbook, catalogue):
    scored = pd.concat([many(40, "return", seed=1), many(30, "churn", seed=2).assign(
        customer_id=lambda d: "k" + d["customer_id"])], ignore_index=True)
    scored.loc[:9, "tags"] = "high_value"
    capacity = {"returns": 7, "retention": 5, "vip": 3, "default": 2}
    tasks, _ = build_task_list(scored, playbook, cfg(queue_capacity=capacity), catalogue=catalogue)
    assert tasks.groupby("queue").size().to_dict() == {"returns": 7, "retention": 5, "vip": 3}
    full, _ = build_task_list(scored, playbook, cfg(queue_capacity={"default": 1000}), catalogue=catalogue)
    for queue, kept in tasks.groupby("queue"):
        dropped = full[(full["queue"] == queue) & ~full["customer_id"].isin(kept["customer_id"])]
        assert kept["expected_value"].min() >= dropped["expected_value"].max()
    assert tasks["rank"].tolist() == list(range(1, len(tasks) + 1))
    assert tasks["expected_value"].is_monotonic_decreasing


def test_cooldown_skips_recent_contacts_unless_risk_rose_sharply(playbook, catalogue):
    day = pd.Timestamp(DAY)
    history = pd.DataFrame({
        "customer_id": ["calm", "surge", "old", "today"],
        "run_date": [day - pd.Timedelta(days=3), day - pd.Timedelta(days=2), day - pd.Timedelta(days=14), day],
        "peak_probability": [0.50, 0.30, 0.5, 0.6]})
    scored = frame([row("calm", "return", 0.60), row("surge", "return", 0.70), row("old", "return", 0.5),
                    row("today", "return", 0.6), row("new", "return", 0.5)])
    tasks, _ = build_task_list(scored, playbook, cfg(cooldown_override_increase=0.25), history, catalogue=catalogue)
    # calm: +0.10 within 14 days -> skipped; surge: +0.40 -> listed; old: 14 days ago, cool-down over;
    # today: a re-run of the same day never cools a customer down by itself
    assert sorted(tasks["customer_id"]) == ["new", "old", "surge", "today"]


def test_control_group_share_and_separation(playbook, catalogue):
    scored = many(2000, "return", seed=3)
    settings = cfg(control_share=0.1, queue_capacity={"default": 50})
    tasks, control = build_task_list(scored, playbook, settings, catalogue=catalogue)
    assert abs(len(control) / 2000 - 0.1) <= 0.01
    assert not set(tasks["customer_id"]) & set(control["customer_id"])
    assert len(tasks) == 50  # capacity applies to the treated customers only
    # within_capacity: the control customers who would have made the cut of 50
    cut = tasks["expected_value"].min()
    assert (control["within_capacity"] == (control["expected_value"] >= cut)).all()
    assert_agent_safe(control)
    again = build_task_list(scored, playbook, settings, run_date=DAY, catalogue=catalogue)[1]
    other_day = build_task_list(scored.assign(run_date="2026-11-03"), playbook, settings, catalogue=catalogue)[1]
    assert again["customer_id"].tolist() == control["customer_id"].tolist()
    assert set(other_day["customer_id"]) != set(control["customer_id"])


def test_recent_control_customers_are_not_contacted(playbook, catalogue):
    scored = many(50, "return", seed=4)
    yesterday = pd.Timestamp(DAY) - pd.Timedelta(days=1)
    held = pd.DataFrame({"customer_id": ["c00001", "c00002"], "run_date": [yesterday] * 2,
                         "peak_probability": [0.99, 0.0]})
    tasks, control = build_task_list(scored, playbook, cfg(), held_out=held, catalogue=catalogue)
    listed = set(tasks["customer_id"]) | set(control["customer_id"])
    assert "c00001" not in listed  # sits out the same cool-down as a contacted customer
    assert "c00002" in listed  # unless their risk rose sharply since


def test_chinese_list_is_in_chinese_without_identifiers(playbook, catalogue):
    scored = frame([row("a", "late_delivery", 0.8), row("a", "churn", 0.3, 50.0), row("b", "return", 0.6)])
    tasks, _ = build_task_list(scored, playbook, cfg(language="zh"), catalogue=catalogue)
    a = tasks.set_index("customer_id").loc["a"]
    assert a["risk"] == "配送延误" and a["action"].startswith("主动为延误致歉")
    assert "包裹已延误4天" in a["why"] and "由Slowpost承运" in a["why"] and a["other_risks"] == "流失风险 30%"
    assert_agent_safe(tasks)


def test_scored_rows_contract_rejects_bad_rows(playbook, catalogue):
    bad = frame([row("a", "return", 0.5)]).assign(order_id=None)
    with pytest.raises(pa.errors.SchemaErrors, match="order"):
        build_task_list(bad, playbook, cfg(), catalogue=catalogue)
    with pytest.raises(ValueError, match="2026-11-03"):
        build_task_list(frame([row("a", "return", 0.5, day="2026-11-03")]), playbook, cfg(), run_date=DAY,
                        catalogue=catalogue)


def test_same_inputs_same_list_and_rewrites_keep_one_copy(tmp_path: Path, playbook, catalogue):
    scored = pd.concat([many(300, "return", seed=5), many(200, "churn", seed=6)], ignore_index=True)
    settings = cfg(control_share=0.2, queue_capacity={"returns": 40, "retention": 30, "default": 10})
    tasks, control = build_task_list(scored, playbook, settings, catalogue=catalogue)
    shuffled = scored.sample(frac=1.0, random_state=1)
    tasks2, control2 = build_task_list(shuffled, playbook, settings, catalogue=catalogue)
    pd.testing.assert_frame_equal(tasks, tasks2)
    pd.testing.assert_frame_equal(control, control2)

    wh = Warehouse(tmp_path / "w.duckdb")
    try:
        for _ in range(2):
            paths = write_task_list(wh, tasks, control, DAY, tmp_path / "out")
        write_task_list(wh, tasks.head(3).assign(run_date=pd.Timestamp("2026-11-01")),
                        control.head(0), "2026-11-01", tmp_path / "out")
        counts = wh.query(f"SELECT run_date, count(*) AS n FROM {TASK_TABLE} GROUP BY 1 ORDER BY 1")
        assert counts["n"].tolist() == [3, len(tasks)]
        assert wh.row_count(CONTROL_TABLE) == len(control)
        assert wh.scalar(f"SELECT count(DISTINCT task_id) FROM {TASK_TABLE} WHERE run_date = ?",
                         [pd.Timestamp(DAY).to_pydatetime()]) == len(tasks)
        stored = wh.query(f"SELECT * FROM {TASK_TABLE} WHERE run_date = ? ORDER BY rank",
                          [pd.Timestamp(DAY).to_pydatetime()])
        assert stored["task_id"].tolist() == tasks["task_id"].tolist()
        history, held = load_history(wh, "2026-11-03", settings)
        assert len(history) == len(tasks) + 3 and len(held) == len(control)
    finally:
        wh.close()
    assert paths["csv"] == tmp_path / "out" / DAY / "tasks.csv"
    assert len(pd.read_csv(paths["csv"], encoding="utf-8-sig")) == len(tasks)
    assert pd.read_parquet(paths["parquet"])["task_id"].tolist() == tasks["task_id"].tolist()
    summary = task_list_summary(tasks, control)
    assert "| returns | 40 |" in summary and "| retention | 30 |" in summary and "held out" in summary
