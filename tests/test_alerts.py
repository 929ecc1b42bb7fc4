"""Product early warning: the statistics on hand-made weeks, the planted phone on the generated
shop, idempotent storage and the webhook (against a local server on 127.0.0.1 only)."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from test_text import shop_warehouse  # the shared generated shop (tests/ is on sys.path)

from schemas.settings import AlertSettings, Settings
from schemas.text import ALERTS_TABLE, COMPLAINTS, WEEK_STATS_TABLE, ProductAlerts, complaint_column
from tasks.data.warehouse import Warehouse
from tasks.insight.alerts import (
    WEEK,
    alerts_markdown,
    alerts_payload,
    benjamini_hochberg,
    detect_alerts,
    flag_alerts,
    forecast_negative_rate,
    last_complete_week,
    post_webhook,
    score_weeks,
    store_alerts,
)

CFG = AlertSettings()
START = pd.Timestamp("2026-01-05")  # a Monday


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shop_warehouse(tmp_path_factory)


@pytest.fixture(scope="module")
def planted(shop: Path) -> dict:
    return json.loads((shop.parent / "data" / "_planted.json").read_text())["signals"]


def weeks_frame(products: dict[str, dict], n_weeks: int = 20) -> pd.DataFrame:
    """Hand-made weekly rows: per product its units, returns, reviews and negative reviews per week."""
    rows = []
    for pid, spec in products.items():
        for w in range(n_weeks):
            spike = w in spec.get("spike_weeks", ())
            rows.append({"product_id": pid, "product_name": pid.title(), "category": "gadgets",
                         "week_start": START + w * WEEK, "units": float(spec["units"]),
                         "returns": float(spec["spike_returns"] if spike else spec["returns"]),
                         "reviews": float(spec.get("reviews", 0)),
                         "negative_reviews": float(spec.get("spike_negative" if spike else "negative", 0)),
                         **{complaint_column(c): 0.0 for c in COMPLAINTS}})
    return pd.DataFrame(rows)


# ---- statistics --------------------------------------------------------------------------------
def test_benjamini_hochberg_matches_the_textbook() -> None:
    q = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5, np.nan]))
    assert q[:4] == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    assert np.isnan(q[4])


def test_a_spike_is_flagged_in_its_week_and_steady_products_are_not() -> None:
    frame = weeks_frame({
        "steady-a": {"units": 40, "returns": 4},
        "steady-b": {"units": 30, "returns": 3, "spike_weeks": (15,), "spike_returns": 5},  # noise, not a spike
        "spiky": {"units": 30, "returns": 2, "spike_weeks": (15, 16), "spike_returns": 14,
                  "reviews": 10, "negative": 2, "spike_negative": 8},
        "tiny": {"units": 2, "returns": 0, "spike_weeks": (15,), "spike_returns": 2},  # below the minimum volume
    })
    scored = score_weeks(frame, CFG)
    alerts = flag_alerts(scored, sorted(frame["week_start"].unique())[1:], CFG)
    assert set(alerts["product_id"]) == {"spiky"}
    first = alerts.sort_values("week_start").iloc[0]
    assert first["week_start"] == START + 15 * WEEK and "history" in first["comparison"]
    assert set(alerts["metric"]) == {"return_rate", "negative_review_rate"}
    assert scored.loc[scored["product_id"] == "tiny", "p_history_return"].isna().all()


def test_history_needs_enough_units_before_it_can_speak_of_a_spike() -> None:
    frame = weeks_frame({"new": {"units": 10, "returns": 1, "spike_weeks": (1,), "spike_returns": 6},
                         "peer": {"units": 40, "returns": 4}}, n_weeks=3)
    scored = score_weeks(frame, CFG)
    week1 = scored[(scored["product_id"] == "new") & (scored["week_start"] == START + WEEK)].iloc[0]
    assert np.isnan(week1["p_history_return"])  # 10 units of history < min_history_units
    assert week1["p_category_return"] < 0.01  # but it is still far above its category


def test_forecast_starts_at_the_prior_and_follows_recent_weeks() -> None:
    empty = pd.DataFrame({"reviews": [0.0] * 4, "negative_reviews": [0.0] * 4})
    mean, low, high = forecast_negative_rate(empty, 0.2, CFG)
    assert mean == pytest.approx(0.2) and low < 0.2 < high
    bad_lately = pd.DataFrame({"reviews": [10.0, 10.0, 10.0, 10.0], "negative_reviews": [1.0, 1.0, 8.0, 9.0]})
    good_lately = pd.DataFrame({"reviews": [10.0, 10.0, 10.0, 10.0], "negative_reviews": [8.0, 9.0, 1.0, 1.0]})
    bad, good = forecast_negative_rate(bad_lately, 0.2, CFG)[0], forecast_negative_rate(good_lately, 0.2, CFG)[0]
    assert bad > good + 0.15  # same totals, but recent weeks weigh most


def test_last_complete_week() -> None:
    assert last_complete_week(pd.Timestamp("2026-11-02")) == pd.Timestamp("2026-10-26")  # Monday midnight
    assert last_complete_week(pd.Timestamp("2026-11-01 12:00")) == pd.Timestamp("2026-10-19")


# ---- the planted phone ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phone_run(shop: Path, planted: dict):
    """As a weekly run would see it five weeks after the phone's software update."""
    spike = pd.Timestamp(planted["phone_spike"]["week_start"])
    wh = Warehouse(shop, read_only=True)
    try:
        run = detect_alerts(wh, Settings(), as_of=spike + 5 * WEEK, weeks=8)
        products = wh.query("SELECT product_id, category FROM products")
    finally:
        wh.close()
    return run, spike, products


def test_planted_phone_is_flagged_in_the_weeks_after_its_update(phone_run, planted: dict) -> None:
    run, spike, _ = phone_run
    phone = run.alerts[run.alerts["product_id"] == planted["phone_spike"]["product_id"]]
    assert len(phone), run.alerts
    assert phone["week_start"].min() >= spike, "flagged before the update"
    first = phone.sort_values("week_start").iloc[0]
    assert first["week_start"] <= spike + 3 * WEEK  # returns follow delivery by one to two weeks
    assert "history" in first["comparison"] and first["rate"] >= CFG.min_rate_ratio * first["baseline_history"]
    assert first["main_complaints"].startswith("quality_defect")
    assert len(json.loads(first["quotes"])) >= 1
    assert 0 <= first["forecast_low"] <= first["forecast_negative_review_rate"] <= first["forecast_high"] <= 1


def test_a_normal_product_is_not_flagged(phone_run, planted: dict) -> None:
    run, _, products = phone_run
    stats = run.stats[run.stats["level"] == "product"]
    totals = stats.groupby("key")[["units", "returns"]].sum().join(products.set_index("product_id"))
    category_rate = totals.groupby("category")["returns"].sum() / totals.groupby("category")["units"].sum()
    totals["relative"] = totals["returns"] / totals["units"] / totals["category"].map(category_rate)
    planted_ids = {s["product_id"] for s in planted.values() if isinstance(s, dict) and "product_id" in s}
    normal = totals[~totals.index.isin(planted_ids) & totals["relative"].between(0.75, 1.25)]
    busiest = normal.sort_values("units").index[-1]
    assert busiest not in set(run.alerts["product_id"])
    ProductAlerts.validate(run.alerts)


def test_alerts_are_stored_idempotently(shop: Path, phone_run, tmp_path: Path) -> None:
    run, _, _ = phone_run
    copy = tmp_path / "wh.duckdb"
    shutil.copy(shop, copy)
    wh = Warehouse(copy)
    store_alerts(wh, run)
    store_alerts(wh, run)
    assert wh.row_count(ALERTS_TABLE) == len(run.alerts)
    assert wh.row_count(WEEK_STATS_TABLE) == len(run.stats)
    wh.close()
    text = alerts_markdown(run, {"quality_defect": "faulty or poor quality"})
    assert "Nova X5 Phone" in text and "faulty or poor quality" in text


# ---- webhook ---------------------------------------------------------------------------------------
class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


def test_webhook_posts_the_alerts_to_a_local_server(phone_run) -> None:
    run, _, _ = phone_run
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        ok, message = post_webhook(f"http://127.0.0.1:{server.server_port}/hook", alerts_payload(run), 5)
    finally:
        thread.join(5)
        server.server_close()
    assert ok, message
    payload = _Receiver.received[-1]
    assert payload["kind"] == "product_alerts" and len(payload["alerts"]) == len(run.alerts)
    assert isinstance(payload["alerts"][0]["quotes"], list)


def test_an_unreachable_webhook_is_reported_not_raised() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    port = server.server_port
    server.server_close()  # nothing listens there any more
    ok, message = post_webhook(f"http://127.0.0.1:{port}/hook", {"alerts": []}, 2)
    assert not ok and "webhook failed" in message


# ---- thin data: say so instead of silently finding nothing ------------------------------------------------
def test_testable_share_counts_active_product_weeks_with_enough_volume() -> None:
    from tasks.insight.alerts import testable_notes, testable_shares

    frame = weeks_frame({"busy": {"units": 40, "returns": 4, "reviews": 12, "negative": 1},
                         "quiet": {"units": 2, "returns": 0, "reviews": 1},
                         "idle": {"units": 0, "returns": 0}}, n_weeks=4)
    weeks = sorted(frame["week_start"].unique())
    shares = testable_shares(frame, weeks, CFG)
    assert shares == {"return_rate": 0.5, "negative_review_rate": 0.5, "product_weeks": 8.0}  # idle is not active
    assert testable_notes(shares, True, CFG) == []
    thin = testable_notes(shares, True, CFG.model_copy(update={"min_testable_share": 0.6}))
    assert len(thin) == 2 and thin[1].startswith("only 50% of 8 active product-weeks had the 5 reviews")
    assert testable_notes(shares, False, CFG)[0] == "no returns data: return rates were not tested"


def test_alerts_on_a_thin_marketplace_say_what_could_not_be_tested(tmp_path: Path) -> None:
    from small_shops import ingest_shop, write_shop

    path = ingest_shop(write_shop(tmp_path / "data", returns=False, orders_per_day=6, products=60),
                       tmp_path / "wh.duckdb")
    wh = Warehouse(path, read_only=True)
    try:
        run = detect_alerts(wh, Settings())
    finally:
        wh.close()
    assert run.testable["negative_review_rate"] < CFG.min_testable_share
    assert "no returns data: return rates were not tested" in run.notes
    assert any("reviews a week needed to test the negative-review rate" in n for n in run.notes)
    assert run.summary()["notes"] == run.notes and "Note: no returns data" in alerts_markdown(run)
