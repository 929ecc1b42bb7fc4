"""Pages come from Jinja2 templates that escape text: a reason or a name can never inject markup."""

from __future__ import annotations

import pandas as pd

from schemas.settings import Settings
from tasks.monitoring.checks import Decision, ModelDrift, html_report
from tasks.templates import render


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
