"""The KPI report (built from the generated shop, every section present, readable words only) and
the text, alerts and report flows end to end under a real Prefect API with a real DuckDB file."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from test_text import shop_warehouse  # the shared generated shop (tests/ is on sys.path)

from flows.runtime import run_flow_state
from schemas.settings import Settings
from schemas.text import ALERTS_TABLE, TEXT_INSIGHTS_TABLE
from tasks.data.warehouse import Warehouse
from tasks.insight.report import SECTIONS, build_report
from tests.md_tables import row_starting, table_rows

SNAKE = re.compile(r"\b[a-z]+_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shop_warehouse(tmp_path_factory)


def visible_text(html: str) -> str:
    """What a reader sees: no style sheet, no embedded images, no tags."""
    html = re.sub(r"<style>.*?</style>", " ", html, flags=re.S)
    html = re.sub(r"<img[^>]*>", " ", html)
    return re.sub(r"<[^>]+>", " ", html)


def assert_readable_report(html: str, min_charts: int = 8) -> None:
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in html, title
    assert html.count("data:image/png;base64,") >= min_charts
    assert not re.search(r"(src|href)=\"(http|//)", html), "the report must not load anything from outside"
    words = visible_text(html)
    assert not SNAKE.findall(words), f"raw identifiers shown to the reader: {set(SNAKE.findall(words))}"
    assert "nan" not in re.findall(r"\b\w+\b", words)


def test_report_builds_before_text_and_alert_flows_have_run(shop: Path, tmp_path: Path) -> None:
    copy = tmp_path / "wh.duckdb"
    shutil.copy(shop, copy)
    wh = Warehouse(copy, read_only=True)
    try:
        path, figures = build_report(wh, Settings(), out=tmp_path / "report.html")
    finally:
        wh.close()
    html = path.read_text(encoding="utf-8")
    assert_readable_report(html)
    assert "has not run yet" in html  # complaint reasons and early warnings explain their absence
    assert figures["as_of"].startswith("2026-11-02")
    assert 0 < figures["headline"]["return_rate"] < 1 and 1 <= figures["headline"]["satisfaction"] <= 5
    assert any("ParcelPro" in h for h in figures["highlights"])  # the planted late carrier stands out
    assert all("no data" not in line for line in figures["sources"])  # the generated shop has every source
    assert any("Team Pine" in h for h in figures["highlights"])  # and the slow team


def test_text_alerts_and_report_flows_end_to_end(prefect_api, settings, shop: Path) -> None:
    import mlflow
    from typer.testing import CliRunner

    from flows.alerts import alerts_flow
    from flows.cli import app
    from flows.report import report_flow
    from flows.text import text_flow

    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shop, settings.warehouse_path)

    text = text_flow()
    assert text["stored"] > 10_000 and text["sentiment_test_roc_auc"] > 0.85
    for lang in ("en", "zh"):
        assert text["complaint_eval"][f"macro_f1_{lang}"] > text["complaint_eval"][f"macro_f1_lexicon_{lang}"]
    mlflow.set_tracking_uri(settings.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["aftersales-text"])
    assert len(runs) == 1 and runs.iloc[0]["metrics.complaint_eval_macro_f1_zh"] > 0
    assert mlflow.sklearn.load_model(f"runs:/{text['run_id']}/complaint").predict(
        __import__("pandas").DataFrame({"text": ["快递一直没到"]}))[0] == "logistics_late"

    alerts = alerts_flow(weeks=0)
    assert alerts["alerts"] > 0 and "P0117" in alerts["products"] and Path(alerts["file"]).exists()
    assert alerts["webhook"] is None  # off by default

    report = report_flow()
    html = Path(report["report"]).read_text(encoding="utf-8")
    assert_readable_report(html)
    assert 'class="alert"' in html and "has not run yet" not in html
    assert "late or slow delivery" in html  # complaint reasons in words

    wh = Warehouse(settings.warehouse_path, read_only=True)
    try:
        assert wh.row_count(TEXT_INSIGHTS_TABLE) == text["stored"]
        assert wh.row_count(ALERTS_TABLE) == alerts["alerts"]
    finally:
        wh.close()

    out = settings.paths.home / "cli-report.html"
    result = CliRunner().invoke(app, ["report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_text_summary_compares_each_language_classifier_with_its_keyword_baseline() -> None:
    from flows.text import text_summary

    result = {"stored": 12_345, "sentiment_test_roc_auc": 0.9, "run_id": "abc", "complaint_languages": ["en"],
              "complaint_eval": {"macro_f1_en": 0.7, "macro_f1_bare_en": 0.6123, "macro_f1_lexicon_en": 0.4,
                                 "macro_f1_zh": 0.5, "macro_f1_bare_zh": float("nan"), "macro_f1_lexicon_zh": 0.3}}
    text = text_summary(result)
    assert table_rows(text)[0] == ["language", "classifier macro-F1", "keyword baseline macro-F1", "reasons from"]
    assert row_starting(text, "en") == ["en", "0.612", "0.400", "classifier"]
    assert row_starting(text, "zh") == ["zh", "n/a", "0.300", "keyword lexicon"]  # too few zh texts to train on
    assert "- texts scored: 12,345" in text

    del result["complaint_eval"]["macro_f1_zh"]  # a language not evaluated has no row
    assert [row[0] for row in table_rows(text_summary(result))] == ["language", "en"]


def test_text_flow_fails_in_words_on_an_empty_warehouse(prefect_api, settings) -> None:
    from flows.text import text_flow

    Warehouse(settings.warehouse_path).close()
    state = run_flow_state(text_flow)
    assert state.is_failed() and "holds no review, ticket or return text: nothing to learn from" in state.message
    assert "ingest" not in state.message  # an empty warehouse is a shop without texts, not a missing step


# ---- real export layouts: a marketplace without returns, a stray late row, thin data ----------------------
def test_report_tells_the_truth_about_absent_sources_and_stray_rows(tmp_path: Path) -> None:
    from small_shops import ingest_shop, write_shop

    path = ingest_shop(write_shop(tmp_path / "data", returns=False, stray_order_days=21), tmp_path / "wh.duckdb")
    wh = Warehouse(path, read_only=True)
    try:
        last_review = wh.scalar("SELECT max(created_at) FROM reviews")
        report, figures = build_report(wh, Settings(), out=tmp_path / "report.html")
    finally:
        wh.close()
    html = report.read_text(encoding="utf-8")
    assert_readable_report(html, min_charts=3)
    # "as of" is where the sources end, not the stray cancelled order three weeks later
    assert figures["as_of"][:10] == str((last_review.normalize() if hasattr(last_review, "normalize") else
                                         __import__("pandas").Timestamp(last_review).normalize())
                                        + __import__("pandas").Timedelta(days=1))[:10]
    assert any("stray" in line and "Orders" in line for line in figures["sources"])
    assert "Returns: no data." in figures["sources"]
    # no returns source: no 0.0 % return rate, no "returned most often" table
    assert figures["headline"]["return_rate"] is None
    words = visible_text(html)
    assert "no returns data" in words and "Products returned most often" not in words
    assert "0.0%" not in words.split("Return rate")[1][:80]
    assert "▲" not in words or "vs previous period" in words


def test_complaints_per_order_say_no_data_without_tickets_or_reviews(prefect_api, settings) -> None:
    """A receipt log (Complete Journey): orders but no ticket or review to count a complaint from; the
    card said 0.0 complaints per 100 orders, a figure the shop never measured. The flow's summary
    says the same in words (it read the field the card used before, and crashed on such a shop)."""
    from small_shops import ingest_shop, write_shop

    from flows.report import report_flow

    data = write_shop(settings.paths.home / "data", returns=False)
    (data / "reviews.csv").unlink()
    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    ingest_shop(data, settings.warehouse_path)
    result = report_flow()
    assert result["headline"]["complaint_rate"] is None
    words = visible_text(Path(result["report"]).read_text(encoding="utf-8"))
    card = words.split("Complaints per 100 orders")[1][:120]
    assert "no support tickets or reviews data" in card and "0.0" not in card


def test_report_without_any_product_over_the_minimum_does_not_crash(tmp_path: Path) -> None:
    from small_shops import ingest_shop, write_shop

    path = ingest_shop(write_shop(tmp_path / "data", weeks=10, orders_per_day=1, products=40),
                       tmp_path / "wh.duckdb")
    wh = Warehouse(path, read_only=True)
    try:
        report, _ = build_report(wh, Settings(), out=tmp_path / "report.html")
    finally:
        wh.close()
    words = visible_text(report.read_text(encoding="utf-8"))
    assert "too thin: only" in words  # tiny windows say so instead of showing big swings
    assert "none is ranked" in words or "none is compared" in words


def test_a_shop_without_delivery_dates_says_so_instead_of_none_in_the_period(tmp_path: Path) -> None:
    """A receipt log (Complete Journey) has no delivery dates: the carriers section said "No
    deliveries in the period", which reads as zero deliveries; a shop with dates still says that."""
    import pandas as pd
    from small_shops import ingest_shop, write_shop

    data = write_shop(tmp_path / "data", weeks=12, returns=False)
    orders = pd.read_csv(data / "orders.csv")
    orders.drop(columns=["promised_at", "shipped_at", "delivered_at", "carrier", "status"]).to_csv(
        data / "orders.csv", index=False)
    wh = Warehouse(ingest_shop(data, tmp_path / "wh.duckdb"), read_only=True)
    try:
        assert wh.scalar("SELECT count(delivered_at) FROM orders") == 0
        report, _ = build_report(wh, Settings(), out=tmp_path / "report.html")
    finally:
        wh.close()
    carriers = visible_text(report.read_text(encoding="utf-8")).split("Late deliveries by delivery company")[1][:200]
    assert "This shop exports no deliveries" in carriers and "No deliveries in the period" not in carriers
