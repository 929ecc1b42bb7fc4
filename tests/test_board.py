"""The care board without HTTP: languages, the hand-out, claims, outcomes, audit, scope, accounts, locks.

Real parts: the shared generated shop in a real DuckDB file, the task list written by the real code.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pandas as pd
import pytest

from schemas.board import AUDIT_TABLE, CLAIMS_TABLE, TASK_RISKS_TABLE
from schemas.settings import BoardAccount
from tasks.care.board import (
    BoardStore,
    Filters,
    WarehouseBusy,
    add_account,
    load_accounts,
    status_of,
    verify_password,
    worklist,
)
from tasks.care.export import AGENT_COLUMNS, Wording, load_phrases
from tasks.care.uplift import uplift_report
from tasks.data.warehouse import Warehouse
from tests.board_day import DAY, board_env, use_env, write_day
from tests.shared_shop import shop_copy

INTERNAL = ["rule", "action_id", "risk_code", "model_versions", "action_cost", "peak_probability", "expected_value"]
AGENT = BoardAccount(name="Ann", role="agent", queues=["returns"], password_hash="-")
LEAD = BoardAccount(name="Lee", role="lead", queues=[], password_hash="-")


@pytest.fixture
def day(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    warehouse, _ = shop_copy(tmp_path_factory, "board")
    home = warehouse.parent / "home"
    settings = use_env(monkeypatch, board_env(home, warehouse))
    tasks, control, scored = write_day(settings)
    return settings, tasks, control, scored


def query(settings, sql: str, params=None) -> pd.DataFrame:
    wh = Warehouse(settings.warehouse_path, read_only=True)
    try:
        return wh.query(sql, params)
    finally:
        wh.close()


# ---- the customer's language and reasons fit for people --------------------------------------
def test_each_task_speaks_its_customers_language(day):
    settings, _tasks, _, _ = day
    store = BoardStore(settings)
    rows = store.day().tasks
    languages = query(settings, "SELECT customer_id, language FROM customers")
    lang = dict(zip(languages["customer_id"], languages["language"], strict=True))
    assert {lang[r["customer_id"]] for r in rows} == {"en", "zh"}, "the shop has customers of both languages"
    for r in rows:
        expected = lang[r["customer_id"]] if lang[r["customer_id"]] in ("en", "zh") else "en"
        assert r["language_code"] == expected
        has_chinese = bool(re.search(r"[\u4e00-\u9fff]", r["action"] + r["why"] + r["message"]))
        assert has_chinese == (expected == "zh"), r
        assert 1 <= len(r["why_list"]) <= 3


def test_reasons_never_read_as_zero_or_mix_two_orders(day):
    settings, _tasks, _, _ = day
    rows = BoardStore(settings).day().tasks
    for r in rows:
        why = r["why"]
        assert not re.search(r"(?<![\d.])0 (days?|hours?)", why) and "0天" not in why and "0小时" not in why, why
        assert "first reply" not in why and "首次回复" not in why, "a wait of 0 hours is no risk"
        assert "ordered 9 days ago" not in why and "9天前下单" not in why, "the churn row's reasons stay out"
    delivered_today = [r for r in rows if r["language_code"] == "en" and "delivered today" in r["why"]]
    assert delivered_today, "a zero-day delivery has its own words"
    with_churn = [r for r in rows if r["others"]]
    assert with_churn and all(o["risk"] == "churn" for r in with_churn for o in r["others"])


def test_agent_csv_has_agent_columns_in_the_customers_language_and_a_time_zone(day):
    settings, tasks, _, _ = day
    folder = settings.reports_dir / "tasks" / f"{DAY:%Y-%m-%d}"
    agent = pd.read_csv(folder / "tasks.csv", encoding="utf-8-sig", dtype=str, keep_default_na=False)
    analysts = pd.read_csv(folder / "tasks_analysts.csv", encoding="utf-8-sig")
    assert list(agent.columns) == AGENT_COLUMNS and len(agent) == len(tasks)
    assert not set(INTERNAL) & set(agent.columns) and set(INTERNAL) <= set(analysts.columns)
    assert agent["due_by"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d\+08:00").all()
    assert (agent["time_zone"] == "Asia/Shanghai").all()
    zh = agent[agent["language"] == "zh"]
    assert len(zh) and zh["action"].str.contains(r"[\u4e00-\u9fff]").all() and zh["why"].str.contains(
        r"[\u4e00-\u9fff]").all()
    assert not agent["why"].str.contains("_").any() and not agent["tags"].str.contains("_").any()
    assert not (folder / "NOTICE.txt").exists()


def test_a_drift_flag_reaches_agents_in_words_they_can_act_on(day):
    settings, tasks, control, _ = day
    wh = Warehouse(settings.warehouse_path)
    try:
        wh.replace_table("drift_gate", pd.DataFrame([{"run_date": DAY, "severe": True, "action": "flag",
                                                      "flagged": True, "held": False, "models": "return",
                                                      "reason": "severe drift: PSI 0.41 days_late"}]))
        wh.replace_table("monitoring_runs", pd.DataFrame([{
            "run_date": DAY, "model": "return", "drifted_features": "days_late,carrier_late_rate,is_late",
            "score_drift": False, "severe": True, "source": "score"}]))
        from tasks.care.interventions import write_task_list
        write_task_list(wh, tasks, control, DAY, settings.reports_dir / "tasks")
    finally:
        wh.close()
    notice = (settings.reports_dir / "tasks" / f"{DAY:%Y-%m-%d}" / "NOTICE.txt").read_text(encoding="utf-8")
    assert "Today's list may be less reliable: deliveries changed a lot this week" in notice
    assert "本周配送情况变化很大" in notice
    assert "PSI" not in notice and "_" not in notice
    store = BoardStore(settings)
    assert store.day().notice is not None and "deliveries" in store.day().notice.text(store.wording.phrases["en"])


# ---- claims, outcomes, audit -----------------------------------------------------------------
def test_two_agents_claiming_one_task_leave_one_holder(day):
    settings, *_ = day
    store = BoardStore(settings)
    task = next(t for t in store.day().tasks if t["queue"] == "returns")
    results = {}
    barrier = threading.Barrier(2)

    def take(user: str) -> None:
        barrier.wait()
        results[user] = store.claim(AGENT, user, task)

    threads = [threading.Thread(target=take, args=(u,)) for u in ("ann", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [u for u, c in results.items() if c.changed]
    assert len(winners) == 1
    loser = ({"ann", "bob"} - set(winners)).pop()
    assert results[loser].refused == "taken" and results[loser].holder == winners[0]
    assert store.claim(AGENT, winners[0], task).changed is False, "claiming your own task again changes nothing"
    claims = query(settings, f"SELECT agent FROM {CLAIMS_TABLE} WHERE task_id = ?", [task["task_id"]])
    assert claims["agent"].tolist() == winners
    audit = query(settings, f"SELECT agent, action FROM {AUDIT_TABLE} WHERE task_id = ?", [task["task_id"]])
    assert audit.to_dict("records") == [{"agent": winners[0], "action": "claim"}]


def test_an_outcome_lands_at_once_audited_and_idempotent(day):
    settings, *_ = day
    store = BoardStore(settings)
    task = next(t for t in store.day().tasks if t["queue"] == "returns")
    assert store.record(AGENT, "ann", task, "reached", "offered an exchange").changed
    assert not store.record(AGENT, "ann", task, "reached", "offered an exchange").changed  # a double click
    assert store.record(AGENT, "bob", task, "resolved", "").refused == "taken"
    rows = query(settings, "SELECT task_id, customer_id, outcome, note, _batch_id FROM outcomes WHERE task_id = ?",
                 [task["task_id"]])
    assert rows.to_dict("records") == [{"task_id": task["task_id"], "customer_id": task["customer_id"],
                                        "outcome": "contacted", "note": "offered an exchange", "_batch_id": "board"}]
    assert store.record(AGENT, "ann", task, "reached", "exchange sent").changed
    audit = query(settings, f"SELECT agent, action, before, after FROM {AUDIT_TABLE} WHERE task_id = ? "
                  "ORDER BY changed_at", [task["task_id"]])
    assert audit["action"].tolist() == ["claim", "outcome", "note"]
    assert json.loads(audit["after"].iloc[2]) == {"note": "exchange sent", "outcome": "reached"}
    assert json.loads(audit["before"].iloc[2])["note"] == "offered an exchange"
    rows, counts = worklist(store.day(), AGENT, "ann", Filters(status="done"), store.now())
    assert [t["task_id"] for t in rows] == [task["task_id"]] and counts["done"] == 1


def test_not_reached_keeps_the_task_open(day):
    settings, *_ = day
    store = BoardStore(settings)
    task = next(t for t in store.day().tasks if t["queue"] == "returns")
    store.record(AGENT, "ann", task, "not_reached", "voicemail")
    rows, _ = worklist(store.day(), AGENT, "ann", Filters(status="mine"), store.now())
    assert [status_of(store.day(), t, store.now())["status"] for t in rows if t["task_id"] == task["task_id"]] == [
        "claimed"]
    assert [t["task_id"] for t in worklist(store.day(), AGENT, "ann", Filters(status="claimed"), store.now())[0]] == [
        task["task_id"]]


def test_control_customers_never_appear_and_agents_see_their_queues(day):
    settings, tasks, control, _ = day
    store = BoardStore(settings)
    assert len(control) > 0
    for task_id in control["task_id"]:
        assert store.task(LEAD, task_id) is None
    ids = {t["task_id"] for t in store.day().tasks}
    assert ids == set(tasks["task_id"]) and not ids & set(control["task_id"])
    other_queue = [t for t in store.day().tasks if t["queue"] != "returns"]
    assert other_queue, "the day has tasks outside the agent's queue"
    assert store.task(AGENT, other_queue[0]["task_id"]) is None and store.task(LEAD, other_queue[0]["task_id"])
    rows, _ = worklist(store.day(), AGENT, "ann", Filters(), store.now())
    assert rows and {t["queue"] for t in rows} == {"returns"}
    assert [t["rank"] for t in rows] == sorted(t["rank"] for t in rows), "priority order"


def test_overdue_counts_follow_the_clock(day):
    settings, *_ = day
    early = BoardStore(settings, now=lambda: DAY.tz_localize("UTC").to_pydatetime())
    late = BoardStore(settings, now=lambda: (DAY + pd.Timedelta(days=30)).tz_localize("UTC").to_pydatetime())
    assert worklist(early.day(), LEAD, "lee", Filters(), early.now())[1]["overdue"] == 0
    _, counts = worklist(late.day(), LEAD, "lee", Filters(), late.now())
    assert counts["overdue"] == counts["open"] > 0


def test_a_lead_reassigns_and_it_is_audited(day):
    settings, *_ = day
    store = BoardStore(settings)
    task = store.day().tasks[0]
    store.claim(AGENT, "ann", task)
    assert store.assign(AGENT, "ann", task, "bob").refused == "not_lead"
    assert store.assign(LEAD, "lee", task, "bob").changed and store.day().claims[task["task_id"]]["agent"] == "bob"
    audit = query(settings, f"SELECT agent, action, before, after FROM {AUDIT_TABLE} WHERE action = 'reassign'")
    assert audit.iloc[0]["agent"] == "lee" and json.loads(audit.iloc[0]["before"]) == {"agent": "ann"}


def test_changes_by_another_process_are_picked_up(day):
    settings, _tasks, *_ = day
    store = BoardStore(settings)
    task = store.day().tasks[0]
    assert task["task_id"] not in store.day().outcomes
    wh = Warehouse(settings.warehouse_path)  # e.g. `aftersales ingest` of a helpdesk's outcomes file
    try:
        wh.con.execute("INSERT INTO outcomes (task_id, customer_id, outcome, recorded_at) VALUES (?, ?, 'resolved', ?)",
                       [task["task_id"], task["customer_id"], DAY.to_pydatetime()])
    finally:
        wh.close()
    assert [o["outcome"] for o in store.day().outcomes[task["task_id"]]] == ["resolved"]


def test_writes_wait_politely_for_another_writer(day, tmp_path: Path):
    settings, *_ = day
    store = BoardStore(settings)
    task = store.day().tasks[0]
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(settings.warehouse_path)!r})
        print("holding", flush=True)
        sys.stdin.readline()
        con.close()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(WarehouseBusy):
            store.claim(AGENT, "ann", task)
        assert store.day().tasks, "reads keep being served from memory meanwhile"
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(30)
    assert store.claim(AGENT, "ann", task).changed


def test_recorded_outcomes_reach_the_uplift_report(day):
    settings, _tasks, *_ = day
    wh = Warehouse(settings.warehouse_path)
    try:
        before, _ = uplift_report(wh, settings)
    finally:
        wh.close()
    store = BoardStore(settings)
    returns = [t for t in store.day().tasks if t["risk_code"] == "return"]
    for t in returns[:5]:
        store.record(LEAD, "lee", t, "reached", "")
    wh = Warehouse(settings.warehouse_path)
    try:
        after, _markdown = uplift_report(wh, settings)
    finally:
        wh.close()
    row_before = before.set_index("risk").loc["return"]
    row_after = after.set_index("risk").loc["return"]
    assert row_before["reached_share"] == 0
    assert row_after["reached_share"] == pytest.approx(5 / row_after["n_treated"])


# ---- accounts and phrases --------------------------------------------------------------------
def test_accounts_are_hashed_private_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    settings = use_env(monkeypatch, {"AFTERSALES_PATHS__HOME": str(tmp_path)})
    path = add_account(settings, "ann", "correct horse", queues=["returns"], language="zh", name="Ann")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "correct horse" not in text and "$argon2id$" in text
    accounts = load_accounts(settings)
    assert accounts["ann"].queues == ["returns"] and accounts["ann"].language == "zh"
    assert verify_password(accounts, "ann", "correct horse") is accounts["ann"]
    assert verify_password(accounts, "ann", "wrong horse") is None
    assert verify_password(accounts, "nobody", "correct horse") is None
    with pytest.raises(ValueError, match="8 characters"):
        add_account(settings, "bob", "short")


def test_phrase_files_have_the_same_words_in_every_language(settings):
    phrases = load_phrases(settings.board.phrases_dir)
    assert {"en", "zh"} <= set(phrases)
    wording = Wording.from_settings(settings)
    for lang, book in phrases.items():
        assert set(book.messages) >= set(wording.playbook.actions), f"{lang}: a suggested message per action"
        assert set(book.drift.areas) >= set(wording.catalogue.groups) | {"score"}
        assert not [k for k, v in book.ui.items() if not v.strip()]
    assert re.search(r"[\u4e00-\u9fff]", phrases["zh"].t("claim"))


def test_task_risks_are_replaced_when_a_day_is_rewritten(day):
    settings, tasks, _control, _scored = day
    first = query(settings, f"SELECT count(*) AS n FROM {TASK_RISKS_TABLE}")["n"][0]
    write_day(settings)
    assert query(settings, f"SELECT count(*) AS n FROM {TASK_RISKS_TABLE}")["n"][0] == first
    leads = query(settings, f"SELECT task_id, count(*) AS n FROM {TASK_RISKS_TABLE} WHERE lead GROUP BY 1")
    assert len(leads) == len(tasks) and (leads["n"] == 1).all()


def test_a_named_segment_reads_in_the_customers_language(settings):
    """The task list showed "Loyal high spenders" beside Chinese tags: the segments run names
    segments in one language; the list words a pattern's name in each customer's, as it does tags."""
    wording = Wording.from_settings(settings)
    assert wording.segment_words("Loyal high spenders", "zh") == "忠诚高消费客户"
    assert wording.segment_words("忠诚高消费客户", "en") == "Loyal high spenders"
    assert wording.segment_words("High value, frequent buyer", "zh") == "High value, frequent buyer"  # traits stay
    assert wording.segment_words(None, "zh") == ""
    from tasks.care.export import localise

    task = {"task_id": "t1", "run_date": pd.Timestamp("2026-11-02"), "rank": 1, "queue": "vip", "queue_rank": 1,
            "due_by": pd.Timestamp("2026-11-02 04:00"), "customer_id": "C1", "order_id": None,
            "risk_code": "churn", "action_id": "none", "action": "call", "channel": "phone", "why": "",
            "other_risks": "", "related_orders": None, "segment": "Loyal high spenders", "tags": "high_value"}
    (row,) = localise([task], [], {"C1": "zh"}, wording)
    assert row["segment"] == "忠诚高消费客户" and re.search(r"[\u4e00-\u9fff]", row["tags"])
