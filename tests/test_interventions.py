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
from tests.md_tables import row_starting

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
    assert a["expected_value"] == pytest.approx(0.5 * 400 * 0.08 - 3.0)  # winback_offer: effect 8%, cost 3
    assert a["effect"] == pytest.approx(0.08) and a["effect_source"] == "playbook prior 8%"
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
    # the list says where each dropped customer went: below the floor (not counted), unprofitable
    assert tasks.attrs["funnel"] == {"above the floor": 2, "with a positive expected value": 1,
                                     "not cooling down": 1, "held out as control": 0, "tasks within capacity": 1}


def test_the_funnel_counts_cooling_control_and_capacity(playbook, catalogue):
    scored = many(40, "return", seed=3)
    history = scored.head(5)[["customer_id"]].assign(run_date=pd.Timestamp(DAY) - pd.Timedelta(days=2),
                                                      probability=0.99)
    tasks, control = build_task_list(scored, playbook, cfg(control_share=0.2, queue_capacity={"returns": 10}),
                                     history, catalogue=catalogue)
    funnel = tasks.attrs["funnel"]
    assert funnel["above the floor"] == funnel["with a positive expected value"] == 40
    assert funnel["not cooling down"] == 35
    assert funnel["held out as control"] == len(control) > 0 and funnel["tasks within capacity"] == len(tasks) == 10


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
    assert again["customer_id"].tolist() == control["customer_id"].tolist()
    # a stable hash per customer, risk and period: the next day draws the same, another period afresh
    next_day = build_task_list(scored.assign(run_date="2026-11-03"), playbook, settings, catalogue=catalogue)[1]
    assert set(next_day["customer_id"]) == set(control["customer_id"])
    later = build_task_list(scored.assign(run_date="2026-12-15"), playbook, settings, catalogue=catalogue)[1]
    assert set(later["customer_id"]) != set(control["customer_id"])
    assert (control["held_for"] == "return").all() and (control["assigned_on"] == pd.Timestamp(DAY)).all()
    assert (control["held_until"] == pd.Timestamp(DAY) + pd.Timedelta(days=30)).all()


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
    assert row_starting(summary, "returns")[1] == "40" and row_starting(summary, "retention")[1] == "30"
    assert "held out" in summary


# ---- holds that last the outcome window, expected value with an effect ---------------------------
def _held_customer(scored_days: list[pd.DataFrame], settings: ScoringSettings, playbook, catalogue,
                   tmp_path: Path) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Run the list day after day through the warehouse, as the scoring flow does."""
    from tasks.care.interventions import load_assignments

    wh = Warehouse(tmp_path / "w.duckdb")
    out = []
    try:
        for scored in scored_days:
            day = pd.Timestamp(scored["run_date"].iloc[0])
            history, held = load_history(wh, day, settings)
            tasks, control = build_task_list(scored, playbook, settings, history, day, catalogue=catalogue,
                                             held_out=held, assignments=load_assignments(wh, day))
            write_task_list(wh, tasks, control, day, tmp_path / "out", settings)
            out.append((tasks, control))
    finally:
        wh.close()
    return out


def _control_churn_customer(settings: ScoringSettings) -> str:
    """A customer whose hash puts them in churn control on DAY (found, not hard-coded)."""
    from tasks.care.interventions import assignment_period, hash_uniform

    period = assignment_period(DAY, settings.assignment_period_days)
    key = "churn" if settings.holdout == "per_risk" else "all"
    return next(f"k{i}" for i in range(10_000) if hash_uniform(settings.seed, f"k{i}", key, period)
                < settings.control_share)


@pytest.mark.parametrize("holdout", ["per_risk", "universal"])
def test_a_control_customer_stays_uncontacted_for_the_whole_outcome_window(playbook, catalogue, tmp_path, holdout):
    settings = cfg(control_share=0.3, holdout=holdout, queue_capacity={"default": 100})
    who = _control_churn_customer(settings)
    start = pd.Timestamp(DAY)
    days = [start + pd.Timedelta(days=d) for d in (0, 15, 45, 89, 91)]  # churn window: 90 days
    scored_days = []
    for d in days:
        rows = [row(who, "churn", 0.6, 400.0, day=str(d.date()))]
        if d != start:  # from day 15 on the customer also has a likely return
            rows.append(row(who, "return", 0.9, 120.0, order=f"o-{d:%m%d}", day=str(d.date())))
        scored_days.append(frame(rows))
    results = _held_customer(scored_days, settings, playbook, catalogue, tmp_path)
    (t0, c0) = results[0]
    assert t0.empty and c0["customer_id"].tolist() == [who] and c0["held_for"].iloc[0] == (
        "churn" if holdout == "per_risk" else "all")
    for (tasks, _), d in zip(results[1:4], days[1:4], strict=True):
        assert not (tasks["risks"].str.contains("churn")).any(), f"{d:%Y-%m-%d}: contacted about churn"
        if holdout == "universal":
            assert tasks.empty, f"{d:%Y-%m-%d}: a universal holdout gets no proactive contact"
        else:  # the return risk leads and may be worked; churn is neither led nor mentioned
            assert tasks.empty or (tasks["risk_code"] == "return").all()
    for _, control in results[1:4]:  # a churn control row on a later day sits in the first hold
        churn = control[control["risk_code"] == "churn"]
        assert (churn["assigned_on"] == start).all()
    wh = Warehouse(tmp_path / "w.duckdb")
    try:
        stored = wh.query("SELECT * FROM control_assignments")
    finally:
        wh.close()
    first = stored[stored["assigned_on"] == start].iloc[0]
    assert first["customer_id"] == who and first["window_end"] == start + pd.Timedelta(days=90)
    assert first["task_id"] == make_task_id(DAY, who)


def test_expected_value_uses_the_effect_and_value_on_one_capped_scale(playbook, catalogue):
    # a low-probability big spender against a likely loss of ordinary size, same action and effect
    scored = frame([row("big", "return", 0.16, 20_000.0)] +
                   [row(f"n{i}", "return", 0.85, 100.0) for i in range(9)])
    tasks, _ = build_task_list(scored, playbook, cfg(queue_capacity={"default": 100}), catalogue=catalogue)
    ranked = tasks.set_index("customer_id")
    assert ranked.loc["big", "rank"] == len(tasks), "value alone must not lift the big spender to the top"
    assert ranked.loc["big", "value_at_stake"] == pytest.approx(5 * 100.0)  # capped at 5 x the median
    assert ranked.loc["n0", "expected_value"] == pytest.approx(0.85 * 100.0 * 0.2 - 4.0)
    uncapped, _ = build_task_list(scored, playbook, cfg(queue_capacity={"default": 100}, value_cap_multiple=0),
                                  catalogue=catalogue)
    assert uncapped.iloc[0]["customer_id"] == "big", "without the cap the big spender would lead"


def test_a_shop_without_amounts_still_gets_a_list_ranked_by_probability(playbook, catalogue):
    # a bare purchase log (groceryElog): every value at stake is 0, so value x probability - cost < 0 for all
    churn = [row(f"k{i}", "churn", p, value=0.0) for i, p in enumerate((0.3, 0.9, 0.6, 0.1))]
    priced = [row("r0", "return", 0.5, value=0.0), row("r1", "return", 0.5, value=100.0)]
    tasks, _ = build_task_list(frame(churn + priced), playbook, cfg(), catalogue=catalogue)
    listed = tasks[tasks["risk_code"] == "churn"]
    assert listed["customer_id"].tolist() == ["k1", "k2", "k0"], "by probability; below the floor never"
    assert (listed["value_at_stake"] == 0).all()
    assert listed["expected_value"].to_numpy() == pytest.approx(listed["peak_probability"] * listed["effect"], abs=0.01)
    # a priced risk keeps the money scale: its zero-value row costs more than it saves
    assert set(tasks.loc[tasks["risk_code"] == "return", "customer_id"]) == {"r1"}
    summary = task_list_summary(tasks)
    assert "no amounts for churn" in summary and "return" not in summary.split("no amounts for")[1].split(":")[0]


def test_measured_uplift_pulls_the_prior_and_the_list_says_so(playbook, catalogue):
    scored = frame([row("a", "return", 0.8, 1000.0), row("b", "churn", 0.8, 1000.0)])
    effects = pd.DataFrame({"risk": ["return"], "action_id": ["size_guide_exchange"], "effect": [0.02],
                            "se": [0.01], "n_treated": [3000], "n_control": [600], "measured_at": [pd.Timestamp(DAY)]})
    tasks, _ = build_task_list(scored, playbook, cfg(), effects=effects, catalogue=catalogue)
    a, b = tasks.set_index("customer_id").loc["a"], tasks.set_index("customer_id").loc["b"]
    # prior 20% (sd 10%), measured 2% (se 1%): weights 100 : 10000
    expected = (0.20 / 0.1**2 + 0.02 / 0.01**2) / (1 / 0.1**2 + 1 / 0.01**2)
    assert a["effect"] == pytest.approx(expected, abs=1e-4)
    assert "measured 2%" in a["effect_source"] and "3,600 customers" in a["effect_source"]
    assert b["effect_source"] == "playbook prior 8%", "no measurement for churn: the prior stands"
    harmful = effects.assign(effect=-0.3)
    tasks, _ = build_task_list(scored, playbook, cfg(), effects=harmful, catalogue=catalogue)
    assert "a" not in set(tasks["customer_id"]), "an action measured to backfire has no positive value"


def test_the_days_funnel_starts_with_every_customer_above_the_floor():
    """The list sees only each risk's best rows (``list_candidates``); the funnel the user reads
    starts before that cut, with every customer above the floor, so the cut is a named step."""
    from flows.score import CONSIDERED, customer_funnel
    from schemas.settings import Settings
    from tasks.models.scoring import customers_above_floor

    scored = {"churn": pd.DataFrame({"customer_id": ["a", "b", "c", "d"], "probability": [0.9, 0.5, 0.2, 0.1]}),
              "return": pd.DataFrame({"customer_id": ["a", "e"], "probability": [0.3, 0.16]})}
    assert customers_above_floor(scored, Settings(scoring={"min_probability": 0.15})) == 4  # a, b, c, e
    assert customers_above_floor(scored, Settings(scoring={"min_probability": 0.4})) == 2
    listing = {"above the floor": 2, "with a positive expected value": 1, "not cooling down": 1,
               "held out as control": 0, "tasks within capacity": 1}
    funnel = customer_funnel(4, listing)
    assert list(funnel) == ["above the floor", CONSIDERED, *list(listing)[1:]]
    assert funnel["above the floor"] == 4 and funnel[CONSIDERED] == 2
    assert customer_funnel(4, {}) == {}
