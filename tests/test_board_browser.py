"""The care board in a real browser: Debian's chromium driven by playwright, against `aftersales board`
started as a user would (a new process, a real port on 127.0.0.1, the real warehouse file).

Covers signing in, working a task end to end, two agents claiming one task, a Chinese-speaking
customer, forged or missing CSRF tokens refused, control customers unreachable, the outcome showing
up in `aftersales uplift`, and a server log without customers' data. With
``AFTERSALES_BOARD_SCREENSHOTS=<folder>`` the README's screenshots are written there.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks.care.board import add_account
from tasks.data.warehouse import Warehouse
from tests.board_day import board_env, use_env, write_day
from tests.shared_shop import shop_copy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORDS = {"ann": "ann-secret-1", "bob": "bob-secret-1", "lee": "lee-secret-1"}
NAMES = {"ann": "Ann Agent", "bob": "Bob Agent", "lee": "Lee Lead"}
SHOTS = os.environ.get("AFTERSALES_BOARD_SCREENSHOTS")

if not Path(CHROMIUM).exists():  # .ci/setup installs it: a missing browser is a broken set-up, never a pass
    pytest.fail(f"{CHROMIUM} is missing: run bash .ci/setup", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Board:
    """The running server, its files and the day it serves."""

    def __init__(self, url: str, settings: Any, env: dict[str, str], log: Path, tasks: pd.DataFrame,
                 control: pd.DataFrame):
        self.url, self.settings, self.env, self.log, self.tasks, self.control = url, settings, env, log, tasks, control

    def query(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        for _ in range(50):  # the server may be writing this instant
            try:
                wh = Warehouse(self.settings.warehouse_path, read_only=True)
                break
            except Exception:  # a lock held by the server, for a moment
                time.sleep(0.1)
        try:
            return wh.query(sql, params)
        finally:
            wh.close()

    def language_of(self) -> dict[str, str]:
        frame = self.query("SELECT customer_id, language FROM customers")
        return dict(zip(frame["customer_id"], frame["language"], strict=True))


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    warehouse, _ = shop_copy(tmp_path_factory, "board-browser")
    home = warehouse.parent / "home"
    env = board_env(home, warehouse)
    with pytest.MonkeyPatch.context() as mp:
        settings = use_env(mp, env)
        tasks, control, _ = write_day(settings)
        for user in ("ann", "lee"):
            add_account(settings, user, PASSWORDS[user], role="lead" if user == "lee" else "agent",
                        queues=["returns", "delivery"] if user == "ann" else [], name=NAMES[user])
    full_env = {**os.environ, **env}
    # the command agents' leads use to add an account
    added = subprocess.run([sys.executable, "-m", "flows.cli", "board", "add-account", "bob", "--queue", "returns",
                            "--name", NAMES["bob"], "--password-stdin"], input=PASSWORDS["bob"] + "\n", text=True,
                           capture_output=True, env=full_env, cwd=home.parent, timeout=300)
    assert added.returncode == 0, added.stderr
    port = free_port()
    log = home.parent / "board.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "flows.cli", "board", "--port", str(port)], env=full_env,
                                  cwd=home.parent, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/login", timeout=2)
                break
            except OSError:
                assert server.poll() is None, log.read_text()
                time.sleep(0.5)
        else:
            pytest.fail("the board did not start: " + log.read_text())
        yield Board(url, settings, full_env, log, tasks, control)
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture(scope="module")
def browser(board: Board):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def sign_in(browser: Any, board: Board, user: str, password: str | None = None) -> Any:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{board.url}/login")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", password or PASSWORDS[user])
    page.click("button[type=submit]")
    return page


def shot(page: Any, name: str, full: bool = False) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name), full_page=full)


def free_task(board: Board, queue: str = "returns", language: str | None = None, skip: int = 0) -> str:
    """A task nobody has touched yet."""
    held = set(board.query("SELECT task_id FROM board_claims")["task_id"]) if _has(board, "board_claims") else set()
    done = set(board.query("SELECT task_id FROM outcomes")["task_id"])
    lang = board.language_of()
    candidates = [t for t in board.tasks.itertuples() if t.queue == queue and t.task_id not in held | done
                  and (language is None or lang.get(t.customer_id) == language)]
    return candidates[skip].task_id


def _has(board: Board, table: str) -> bool:
    return bool(board.query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = ?",
                            [table])["n"][0])


# ---- the tests -------------------------------------------------------------------------------
def test_sign_in_refuses_a_wrong_password_and_shows_the_queue(browser, board: Board):
    page = sign_in(browser, board, "ann", "not-her-password")
    assert "/login" in page.url and page.locator(".error").inner_text() == "That user name and password do not match."
    page = sign_in(browser, board, "ann")
    page.wait_for_url("**/tasks")
    counts = page.locator("#counts").inner_text()
    mine = board.tasks[board.tasks["queue"].isin(["returns", "delivery"])]
    assert re.search(rf"\b{len(mine)}\s+open", counts), counts
    queues = set(page.locator("table.tasks tbody tr td:nth-child(7)").all_inner_texts())
    assert queues <= {"returns", "delivery"}
    assert page.locator("table.tasks tbody tr").count() == min(len(mine), board.settings.board.page_size)
    shot(page, "board-list.png")
    page.goto(f"{board.url}/tasks?status=open&queue=delivery")
    rows = page.locator("table.tasks tbody tr")
    assert rows.count() == (board.tasks["queue"] == "delivery").sum() > 0
    page.context.close()


def test_an_agent_works_a_task_end_to_end(browser, board: Board):
    task_id = free_task(board, language="en")
    page = sign_in(browser, board, "ann")
    page.wait_for_url("**/tasks")
    page.click(f"tr[data-task='{task_id}'] a")
    assert page.locator("#claim-state").inner_text() == "Nobody is working on this task yet."
    assert 1 <= page.locator("#why li").count() <= 3
    page.click("#claim")
    assert page.locator("#claim-state").inner_text() == "You are working on this task."
    page.fill("textarea[name=note]", "Sent the size guide; exchange booked")
    page.click("#outcome-resolved")
    assert page.locator("#flash").inner_text() == "Saved: Resolved."
    assert "Sent the size guide; exchange booked" in page.locator("#recorded").inner_text()
    shot(page, "board-task.png", full=True)
    stored = board.query("SELECT outcome, note, _batch_id FROM outcomes WHERE task_id = ?", [task_id])
    assert stored.to_dict("records") == [{"outcome": "resolved", "note": "Sent the size guide; exchange booked",
                                          "_batch_id": "board"}]
    audit = board.query("SELECT agent, action FROM board_audit WHERE task_id = ? ORDER BY changed_at", [task_id])
    assert audit.to_dict("records") == [{"agent": "ann", "action": "claim"}, {"agent": "ann", "action": "outcome"}]
    page.goto(f"{board.url}/tasks?status=done")
    assert page.locator(f"tr[data-task='{task_id}']").count() == 1
    page.context.close()


def test_two_agents_claiming_one_task(browser, board: Board):
    task_id = free_task(board)
    ann, bob = sign_in(browser, board, "ann"), sign_in(browser, board, "bob")
    for page in (ann, bob):
        page.wait_for_url("**/tasks")
        page.goto(f"{board.url}/tasks/{task_id}")
    ann.click("#claim")
    assert ann.locator("#claim-state").inner_text() == "You are working on this task."
    bob.click("#claim")  # his page was loaded before Ann claimed
    assert bob.locator("#flash").inner_text() == "Ann Agent claimed this task first."
    assert bob.locator("#claim-state").inner_text() == "Ann Agent is working on this task."
    assert bob.locator("#outcome-form").count() == 0 and bob.locator("#claim").count() == 0
    assert board.query("SELECT agent FROM board_claims WHERE task_id = ?", [task_id])["agent"].tolist() == ["ann"]
    bob.goto(f"{board.url}/tasks?status=claimed")
    row = bob.locator(f"tr[data-task='{task_id}'] td.state")
    assert row.inner_text() == "Ann Agent"
    ann.context.close()
    bob.context.close()


def test_a_chinese_speaking_customer_gets_chinese_words(browser, board: Board):
    task_id = free_task(board, language="zh")
    page = sign_in(browser, board, "ann")
    page.wait_for_url("**/tasks")
    page.goto(f"{board.url}/tasks/{task_id}")
    words = page.locator("#customer-words")
    assert words.get_attribute("lang") == "zh"
    for part in ("#action", "#why", "#message"):
        assert re.search(r"[\u4e00-\u9fff]", page.locator(part).inner_text()), part
    assert "Customer's language: Chinese" in page.locator("header.head").inner_text()
    assert page.locator("#why").inner_text().count("\n") <= 2
    page.select_option("select[name=lang]", "zh")
    page.click("header.top button[type=submit]:not(#sign-out)")
    assert page.locator("#claim-state").inner_text() == "还没有人认领这个任务。"
    assert page.locator("html").get_attribute("lang") == "zh"
    shot(page, "board-task-zh.png", full=True)
    page.context.close()


def test_a_forged_or_missing_csrf_token_is_refused(browser, board: Board):
    task_id = free_task(board)
    page = sign_in(browser, board, "ann")
    page.wait_for_url("**/tasks")
    request = page.context.request  # the signed-in session's cookie, as a forged form on another site would use
    for form in ({"csrf_token": "forged"}, {}):
        answer = request.post(f"{board.url}/tasks/{task_id}/claim", form=form, max_redirects=0)
        assert answer.status == 403
        answer = request.post(f"{board.url}/tasks/{task_id}/outcome", form={**form, "outcome": "resolved"},
                              max_redirects=0)
        assert answer.status == 403
    assert board.query("SELECT count(*) AS n FROM outcomes WHERE task_id = ?", [task_id])["n"][0] == 0
    claims = board.query("SELECT count(*) AS n FROM board_claims WHERE task_id = ?", [task_id])["n"][0]
    assert claims == 0
    token = page.goto(f"{board.url}/tasks/{task_id}").ok and page.locator("input[name=csrf_token]").first.get_attribute(
        "value")
    answer = request.post(f"{board.url}/tasks/{task_id}/claim", form={"csrf_token": token}, max_redirects=0)
    assert answer.status == 303, "the page's own token works"
    anonymous = browser.new_context().request.post(f"{board.url}/tasks/{task_id}/release",
                                                   form={"csrf_token": token}, max_redirects=0)
    assert anonymous.status in (303, 403) and "login" in anonymous.headers.get("location", "/login")
    page.context.close()


def test_control_customers_and_other_queues_are_not_reachable(browser, board: Board):
    page = sign_in(browser, board, "bob")  # works "returns" only
    page.wait_for_url("**/tasks")
    for task_id in board.control["task_id"].head(3):
        assert page.goto(f"{board.url}/tasks/{task_id}").status == 404
    other = board.tasks.loc[board.tasks["queue"] == "delivery", "task_id"].iloc[0]
    assert page.goto(f"{board.url}/tasks/{other}").status == 404
    assert page.locator("#message").inner_text().startswith("This task is not on your list.")
    page.context.close()


def test_a_lead_sees_every_queue_and_reassigns(browser, board: Board):
    task_id = free_task(board, skip=1)
    page = sign_in(browser, board, "lee")
    page.wait_for_url("**/tasks")
    counts = [int(n) for n in re.findall(r"(\d+)\s+(?:open|done)", page.locator("#counts").inner_text())]
    assert sum(counts) == len(board.tasks), "a lead counts every queue"
    page.goto(f"{board.url}/tasks/{task_id}")
    page.select_option("select[name=to]", "bob")
    page.click("#assign")
    assert page.locator("#flash").inner_text() == "Given to Bob Agent."
    assert page.locator("#claim-state").inner_text() == "Bob Agent is working on this task."
    audit = board.query("SELECT agent, action, after FROM board_audit WHERE task_id = ?", [task_id])
    assert audit.to_dict("records") == [{"agent": "lee", "action": "reassign", "after": '{"agent": "bob"}'}]
    page.context.close()


def test_the_outcome_shows_up_in_aftersales_uplift(browser, board: Board, prefect_api: None):
    page = sign_in(browser, board, "ann")
    page.wait_for_url("**/tasks")
    task_id = free_task(board)
    page.goto(f"{board.url}/tasks/{task_id}")
    page.click("#outcome-reached")  # one click: claims and records
    assert page.locator("#flash").inner_text() == "Saved: Reached."
    page.context.close()
    from prefect.settings import PREFECT_API_URL

    result = subprocess.run([sys.executable, "-m", "flows.cli", "uplift"], capture_output=True, text=True,
                            env={**board.env, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "250"},
                            cwd=board.settings.paths.home.parent, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    # the terminal's table: the row of the return risk, its last cell the share of contacts reached
    row = next(line.split() for line in result.stdout.splitlines() if line.split()[:1] == ["return"])
    reached = float(row[-1].rstrip("%"))
    treated = board.tasks[board.tasks["risk_code"] == "return"]
    contacted = board.query("SELECT DISTINCT task_id FROM outcomes WHERE outcome IN ('contacted', 'resolved')")
    expected = treated["task_id"].isin(set(contacted["task_id"])).mean()
    assert expected > 0 and reached == pytest.approx(100 * expected, abs=0.06)


def test_the_server_log_holds_no_customer_data(board: Board):
    log = board.log.read_text()
    assert "GET /tasks/{task_id} 200" in log and "POST /tasks/{task_id}/outcome 303" in log
    for value in [*board.tasks["customer_id"], *board.tasks["task_id"], "exchange booked", "ann-secret-1"]:
        assert value not in log, value
    assert "Traceback" not in log
