"""Pages come from Jinja2 templates that escape text: a reason or a name can never inject markup."""

from __future__ import annotations

import re

import pandas as pd

from schemas.settings import MonitoringSettings, Settings
from tasks.monitoring.checks import Decision, FeatureDrift, ModelDrift, html_report, markdown_report
from tasks.templates import markdown_table, render
from tests.md_tables import row_starting, table_rows


def test_monitoring_page_escapes_text_and_says_when_nothing_matured() -> None:
    decision = Decision("return", "aftersales-return v2", [], "none", "reason with <script>alert(1)</script>")
    page = html_report("2026-11-02", {"return": ModelDrift("return", None, status="not <scored>")}, pd.DataFrame(),
                       [decision], Settings())
    assert page.startswith("<!doctype html>") and "<title>Monitoring 2026-11-02</title>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "return: not checked (not &lt;scored&gt;)" in page
    assert "No scoring run has matured labels yet." in page


def test_data_profile_template_renders_tables_as_given_and_escapes_the_title() -> None:
    page = render("data_profile.html.j2", model="<b>churn</b>", label_rates="<table id='r'></table>",
                  columns="<table id='c'></table>")
    assert "&lt;b&gt;churn&lt;/b&gt;: training data profile" in page
    assert "<table id='r'></table>" in page and "<table id='c'></table>" in page


def test_markdown_table_keeps_text_as_given_formats_numbers_and_leaves_missing_cells_empty() -> None:
    frame = pd.DataFrame({"customer": ["00123", "a|b"], "orders": [1234, 5], "rate": [0.125, float("nan")],
                          "share": ["12.0%", "3.1%"]})
    table = markdown_table(frame, floatfmt=".2f", intfmt=",", right=["share"])
    assert table_rows(table) == [["customer", "orders", "rate", "share"], ["00123", "1,234", "0.12", "12.0%"],
                                 ["a/b", "5", "", "3.1%"]]
    assert re.fullmatch(r"\|:-+\|(-+:\|){3}", table.splitlines()[1]), "text left, numbers right-aligned"
    assert markdown_table(frame.iloc[:0]) == "_none_\n"


def test_monitoring_markdown_lists_drift_matured_performance_and_decisions() -> None:
    score = FeatureDrift("probability", "score", "psi", 0.31234, None, None, None, None, None, None, 900, 800,
                         status="drift")
    drift = {"return": ModelDrift("return", "3", [score]), "churn": ModelDrift("churn", None, status="no scores")}
    performance = pd.DataFrame({"run_date": [pd.Timestamp("2026-10-01")], "model": ["return"], "n": [1234],
                                "roc_auc": [0.81234], "pr_auc": [None], "brier": [0.1], "ece": [0.02],
                                "listed_precision": [0.5]})
    decision = Decision("return", "aftersales-return v3", [], "retrain", "score drift | severe", flow_run_id="f1")
    text = markdown_report("2026-11-02", drift, performance, [decision], MonitoringSettings(), None)
    assert row_starting(text, "return", "3") == ["return", "3", "checked", "-", "0.312", "**yes**"]
    assert row_starting(text, "churn") == ["churn", "", "no scores", "-", "", "no"]
    assert row_starting(text, "2026-10-01") == ["2026-10-01", "return", "1234", "0.812", "", "0.1", "0.02", "0.5"]
    assert row_starting(text, "return", "**retrain**") == ["return", "**retrain**", "-", "score drift / severe", "f1"]
