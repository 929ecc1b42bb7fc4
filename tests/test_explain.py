"""Top reasons from contributions, and reason phrases that never show a raw feature name."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from schemas.tasks import REASON_COLUMNS
from tasks.models.explain import (
    DEFAULT_REASONS_FILE,
    CatalogueError,
    default_catalogue,
    load_reason_catalogue,
    phrase,
    phrase_reasons,
    top_reasons,
)
from tasks.models.features import feature_registry

REGISTRY = feature_registry()
FEATURE_NAMES = sorted({f.name for f in REGISTRY})
SAMPLE_VALUES = {"count": [0.0, 1.0, 3.0], "rate": [0.0, 0.42, 1.0], "flag": [0.0, 1.0], "days": [0.0, 2.6, 45.0],
                 "money": [0.0, 129.9, 2500.0], "numeric": [-2.0, 1.0, 3.5], "categorical": ["home_garden", "FastShip",
                                                                                            "bank_transfer"]}
MISSING_VALUES = [None, math.nan, "unknown", pd.NA]


def assert_agent_safe(text: str) -> None:
    assert text, "empty phrase"
    assert "_" not in text, text
    tokens = set(re.findall(r"[A-Za-z0-9_]+", text))
    assert not tokens & set(FEATURE_NAMES), f"raw feature name in {text!r}"
    assert "{" not in text and "nan" not in tokens, text


# ---- top reasons -----------------------------------------------------------------------------
def test_top_reasons_picks_largest_positive_contributions_in_order():
    names = ["days_late", "size_sensitive_share", "order_value", "carrier"]
    values = pd.DataFrame({"days_late": [3.0, 0.0, 1.0], "size_sensitive_share": [0.8, 0.1, 0.5],
                           "order_value": [99.0, 10.0, 20.0], "carrier": ["FastShip", "Slowpost", "FastShip"]},
                          index=[10, 11, 12])
    contrib = np.array([[0.5, 1.2, -0.3, 0.1, 9.9],    # bias column last: never a reason
                        [-0.5, -0.1, -0.2, -0.3, 9.9],  # nothing pushes up
                        [0.0, 0.4, np.nan, 0.2, 9.9]])  # zero and NaN are not reasons
    out = top_reasons(contrib, names, values)
    assert list(out.columns) == [c for pair in REASON_COLUMNS for c in pair]
    assert list(out.index) == [10, 11, 12]
    top = ["size_sensitive_share", "days_late", "carrier"]
    assert out.loc[10, ["reason_1", "reason_2", "reason_3"]].tolist() == top
    assert out.loc[10, ["reason_1_value", "reason_2_value", "reason_3_value"]].tolist() == [0.8, 3.0, "FastShip"]
    assert out.loc[11].isna().all()
    assert out.loc[12, "reason_1"] == "size_sensitive_share" and out.loc[12, "reason_2"] == "carrier"
    assert pd.isna(out.loc[12, "reason_3"]) and pd.isna(out.loc[12, "reason_3_value"])


def test_top_reasons_accepts_contribution_frames_and_rejects_mismatches():
    names = ["recency_days", "orders_90d"]
    values = pd.DataFrame({"recency_days": [40.0], "orders_90d": [0.0]})
    frame = pd.DataFrame({"recency_days": [0.1], "orders_90d": [0.7], "bias": [3.0]})
    out = top_reasons(frame, names, values, k=3)
    assert out.iloc[0]["reason_1"] == "orders_90d" and out.iloc[0]["reason_2"] == "recency_days"
    assert pd.isna(out.iloc[0]["reason_3"])
    with pytest.raises(ValueError, match="do not match"):
        top_reasons(np.zeros((2, 2)), names, values)


# ---- phrases ---------------------------------------------------------------------------------
def test_every_registry_feature_has_phrases_in_both_languages():
    catalogue = default_catalogue()
    missing = [n for n in FEATURE_NAMES if n not in catalogue.features]
    assert not missing, f"features without a phrase in reasons.yaml: {missing}"
    for name in FEATURE_NAMES:
        spec = catalogue.features[name]
        assert spec.en and spec.zh, name
        assert spec.group in catalogue.groups


@pytest.mark.parametrize("language", ["en", "zh"])
def test_no_phrase_shows_a_raw_feature_name(language):
    kinds = {f.name: f.kind for f in REGISTRY}
    shown = 0
    for name in FEATURE_NAMES:
        for value in [*SAMPLE_VALUES[kinds[name]], *MISSING_VALUES]:
            text = phrase(name, value, language)
            if text is not None:  # left out: a value that would not read as a risk
                assert_agent_safe(text)
                shown += 1
        assert phrase(name, None, language) is None, "a missing value is no reason"
    assert shown > len(FEATURE_NAMES)
    for unknown in ["brand_new_size_feature", "zz_mystery_signal"]:  # added after the catalogue was written
        assert_agent_safe(phrase(unknown, 1.0, language))


def test_phrases_format_values_in_english_and_chinese():
    assert phrase("days_late", 3.2, "en") == "parcel 3 days late"
    assert phrase("days_late", 3.2, "zh") == "包裹已延误3天"
    assert phrase("size_sensitive_share", 0.8, "en") == "80% of items are size-sensitive"
    assert phrase("payment_type", "bank_transfer", "en") == "paid by bank transfer"
    assert phrase("payment_type", "bank_transfer", "zh") == "支付方式：银行转账"
    assert phrase("main_category", "home_garden", "en") == "mostly home garden products"
    assert phrase("size_chart_views_before", 0.0, "en") == "bought without checking the size chart"
    assert phrase("is_delivered", 1.0, "en") == "parcel already delivered"
    assert phrase("is_delivered", 0.0, "zh") == "包裹尚未送达"
    # a feature added after the catalogue was written: its group's words
    assert phrase("brand_new_size_feature", 2.0, "en") == "signs the size may not fit"
    assert phrase(None, 1.0) is None


@pytest.mark.parametrize(("feature", "value"), [
    ("days_since_delivery", 0.0), ("days_since_order", 0.4), ("order_trend_90d", 0.0), ("orders_30d", 0.0),
])
def test_a_value_that_reads_as_zero_has_its_own_words_or_none(feature, value):
    for language in ("en", "zh"):
        text = phrase(feature, value, language)
        assert text is None or not re.search(r"(?<![\d.])[+-]?0(?![\d.])", text), text
    assert phrase("days_since_delivery", 0.0, "en") == "delivered today"
    assert phrase("orders_30d", 0.0, "zh") == "近30天没有下单"
    assert phrase("order_trend_90d", 0.2, "en") is None  # "+0 orders vs the 90 days before"


def test_a_value_that_lowers_risk_in_words_is_no_reason():
    # "waits 0 hours on average for a first reply", an early parcel, a good rating, a missing value:
    # none of them reads as a risk, so none is given as one
    assert phrase("mean_first_response_hours", 0.0, "en") is None
    assert phrase("mean_first_response_hours", 2.0, "en") is None
    assert phrase("mean_first_response_hours", 30.0, "en") == "waits 30 hours on average for a first reply"
    assert phrase("days_late", -2.0, "en") is None
    assert phrase("mean_satisfaction", 4.8, "en") is None
    assert phrase("mean_satisfaction", math.nan, "zh") is None
    assert phrase("order_trend_90d", 3.0, "en") is None
    assert phrase("order_trend_90d", -3.0, "en") == "-3 orders vs the 90 days before"


def test_phrase_reasons_joins_rank_order_and_has_a_generic_phrase():
    df = pd.DataFrame({"reason_1": ["days_late", None], "reason_1_value": [4.0, None],
                       "reason_2": ["is_late", None], "reason_2_value": [1.0, None],
                       "reason_3": ["carrier", None], "reason_3_value": ["FastShip", None]})
    why = phrase_reasons(df, language="en")
    assert why.iloc[0] == "parcel 4 days late; parcel late or overdue; shipped with FastShip"
    assert why.iloc[1] == "several small signals together"
    assert "包裹已延误4天" in phrase_reasons(df, language="zh").iloc[0]


def test_a_reason_implied_by_another_of_the_row_is_left_out():
    """Seen on a real export: "last order 175 days ago; spent nothing in the last 90 days; no orders
    in the last 30 days" - the last two say nothing the first does not."""
    df = pd.DataFrame({"reason_1": ["recency_days", "recency_days", "orders_30d"],
                       "reason_1_value": [175.0, 45.0, 0.0],
                       "reason_2": ["value_90d", "value_90d", "value_90d"],
                       "reason_2_value": [0.0, 0.0, 0.0],
                       "reason_3": ["orders_30d", "orders_30d", None], "reason_3_value": [0.0, 0.0, None]})
    why = phrase_reasons(df, language="en")
    assert why.iloc[0] == "last order 175 days ago"
    # 45 days: nothing in 30 days is implied, nothing spent in 90 days is news
    assert why.iloc[1] == "last order 45 days ago; spent nothing in the last 90 days"
    # without the recency reason, the others stay
    assert why.iloc[2] == "no orders in the last 30 days; spent nothing in the last 90 days"
    assert phrase_reasons(df, language="zh").iloc[0] == "最近一次下单在175天前"


def test_catalogue_errors_name_the_feature(tmp_path: Path):
    raw = yaml.safe_load(DEFAULT_REASONS_FILE.read_text(encoding="utf-8"))
    raw["features"]["days_late"]["group"] = "no_such_group"
    bad = tmp_path / "reasons.yaml"
    bad.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(CatalogueError, match="days_late"):
        load_reason_catalogue(bad)


def test_the_task_list_words_reasons_through_the_same_rule():
    """The handout / board path (tasks.care.export) once phrased reasons on its own and kept the
    implied ones on a real export's list."""
    from tasks.care.export import row_reasons
    from tasks.models.explain import default_catalogue

    row = {"reason_1": "recency_days", "reason_1_value": 175.0, "reason_2": "value_90d", "reason_2_value": 0.0,
           "reason_3": "orders_30d", "reason_3_value": 0.0}
    assert row_reasons(row, default_catalogue(), "en") == ["last order 175 days ago"]
