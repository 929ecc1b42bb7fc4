"""Behaviour tags: rules, the tag file, history that follows behaviour, planted groups, churn scores."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from shared_shop import RUN, shop_copy

from schemas.analytics import CUSTOMER_TAGS_TABLE, TagHistory
from schemas.settings import Settings
from tasks.care.playbook import DEFAULT_PLAYBOOK_FILE
from tasks.data.synthetic import ARCHETYPES_FILE
from tasks.data.warehouse import Warehouse
from tasks.insight.tags import (
    TagBook,
    TagBookError,
    behaviour_features,
    current_tags,
    empty_history,
    evaluate_tags,
    load_tag_book,
    tag_changes,
    tag_strings,
    update_tag_history,
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return shop_copy(tmp_path_factory, "tags")


@pytest.fixture(scope="module")
def book() -> TagBook:
    return load_tag_book()


def tags_of(long: pd.DataFrame, customer: str) -> set[str]:
    return set(long.loc[long["customer_id"] == customer, "tag"])


# ---- rules ---------------------------------------------------------------------------------------
def small_book() -> TagBook:
    return TagBook.model_validate({
        "tags": [
            {"name": "big", "label": {"en": "Big", "zh": "大"},
             "all": [{"feature": "value_365d", "op": ">=", "quantile": 0.75}]},
            {"name": "deal", "label": {"en": "Deal", "zh": "折"},
             "all": [{"feature": "avg_discount_share", "op": ">=", "value": 0.2},
                     {"feature": "orders_total", "op": ">=", "value": 2}]},
            {"name": "leaving", "label": {"en": "Leaving", "zh": "走"},
             "all": [{"feature": "churn_probability", "op": ">=", "value": 0.5}]},
        ],
        "segment_features": [{"feature": "value_365d", "label": {"en": "Spend", "zh": "消费"},
                              "high": {"en": "high spend", "zh": "高"}, "low": {"en": "low spend", "zh": "低"}}],
    })


def test_rules_use_values_quantiles_and_skip_tags_without_data() -> None:
    features = pd.DataFrame({
        "customer_id": ["a", "b", "c", "d"],
        "value_365d": [10.0, 20.0, 30.0, 400.0],
        "avg_discount_share": [0.5, 0.5, 0.0, None],
        "orders_total": [1.0, 3.0, 3.0, 5.0],
        "churn_probability": [None, None, None, None],
    })
    long, skipped = evaluate_tags(features, small_book())
    assert tags_of(long, "d") == {"big"}  # top quarter; unknown discount never matches
    assert tags_of(long, "b") == {"deal"}
    assert tags_of(long, "a") == set()  # one order is not a habit
    assert set(skipped) == {"leaving"} and "churn probability" in skipped["leaving"]
    strings = tag_strings(long, features["customer_id"], small_book())
    assert strings.tolist() == [None, "deal", None, "big"]


def test_default_tag_file_has_the_asked_tags_and_the_playbook_names(book: TagBook) -> None:
    names = {t.name for t in book.tags}
    assert names == {"high_value", "frequent_buyer", "price_sensitive", "new_product_adopter", "brand_loyal",
                     "frequent_returner", "frequent_complainer", "cart_abandoner", "churn_risk", "dormant"}
    playbook = yaml.safe_load(DEFAULT_PLAYBOOK_FILE.read_text(encoding="utf-8"))
    used = {t for rule in playbook["rules"] for t in (rule["when"].get("tags_any") or []) if t != "vip"}
    assert used <= names
    for tag in book.tags:
        assert tag.label.en and tag.label.zh and "_" not in tag.label.en


def test_a_broken_tag_file_is_refused_with_its_entry(tmp_path: Path) -> None:
    bad = tmp_path / "tags.yaml"
    bad.write_text(yaml.safe_dump({"tags": [{"name": "x", "label": {"en": "X", "zh": "X"},
                                             "all": [{"feature": "orders_total", "op": ">="}]}],
                                   "segment_features": []}))
    with pytest.raises(TagBookError, match="exactly one of value or quantile"):
        load_tag_book(bad)


# ---- history ---------------------------------------------------------------------------------------
def pairs(*items: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(items, columns=["customer_id", "tag"])


def spell(history: pd.DataFrame, customer: str, tag: str) -> pd.DataFrame:
    return history[(history["customer_id"] == customer) & (history["tag"] == tag)].reset_index(drop=True)


def test_history_records_gains_and_losses_and_reruns_are_idempotent() -> None:
    d1, d2, d3 = pd.Timestamp("2026-01-01"), pd.Timestamp("2026-02-01"), pd.Timestamp("2026-03-01")
    h1 = update_tag_history(empty_history(), pairs(("a", "x"), ("b", "x")), d1)
    h2 = update_tag_history(h1, pairs(("a", "x"), ("a", "y")), d2)
    assert spell(h2, "b", "x")["lost_at"].tolist() == [d2]
    assert spell(h2, "a", "y")["gained_at"].tolist() == [d2]
    assert spell(h2, "a", "x")["lost_at"].isna().all() and spell(h2, "a", "x")["gained_at"].tolist() == [d1]
    pd.testing.assert_frame_equal(update_tag_history(h2, pairs(("a", "x"), ("a", "y")), d2), h2)
    h3 = update_tag_history(h2, pairs(("b", "x")), d3)
    b = spell(h3, "b", "x")
    assert b["gained_at"].tolist() == [d1, d3] and b["lost_at"].isna().tolist() == [False, True]
    # back-filling d2 again rewinds what d3 recorded
    pd.testing.assert_frame_equal(update_tag_history(h3, pairs(("a", "x"), ("a", "y")), d2), h2)
    changes = tag_changes(h3, d3).set_index("tag")
    assert changes.loc["x", "gained"] == 1 and changes.loc["x", "lost"] == 1 and changes.loc["y", "lost"] == 1
    TagHistory.validate(h3)


def test_tags_follow_behaviour_when_new_orders_arrive(shop, book: TagBook, tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    shutil.copy(shop[0], path)
    settings = Settings()
    wh = Warehouse(path)
    try:
        first = behaviour_features(wh, RUN, settings)
        long1, _ = evaluate_tags(first, book)
        history = update_tag_history(empty_history(), long1, RUN)
        dormant = set(long1.loc[long1["tag"] == "dormant", "customer_id"])
        buyers = set(long1.loc[long1["tag"] == "frequent_buyer", "customer_id"])
        customer = sorted(dormant - buyers)[0]
        product = wh.scalar("SELECT min(product_id) FROM products")
        times = [RUN + pd.Timedelta(days=3 + 3 * i) for i in range(6)]
        wh.append("orders", pd.DataFrame({
            "order_id": [f"NEW{i}" for i in range(6)], "customer_id": customer, "ordered_at": times,
            "delivered_at": [t + pd.Timedelta(days=2) for t in times], "status": "delivered",
            "total_amount": 80.0, "discount_amount": 0.0}))
        wh.append("order_items", pd.DataFrame({"order_id": [f"NEW{i}" for i in range(6)], "line_no": 1,
                                               "product_id": product, "quantity": 1, "unit_price": 80.0}))
        later = RUN + pd.Timedelta(days=30)
        long2, _ = evaluate_tags(behaviour_features(wh, later, settings), book)
    finally:
        wh.close()
    history = update_tag_history(history, long2, later)
    assert spell(history, customer, "dormant")["lost_at"].tolist() == [later]
    gained = spell(history, customer, "frequent_buyer")
    assert gained["gained_at"].tolist() == [later] and gained["lost_at"].isna().all()


# ---- planted groups and churn scores ---------------------------------------------------------------------
def test_planted_discount_hunters_and_adopters_carry_their_tags(shop, book: TagBook) -> None:
    wh = Warehouse(shop[0], read_only=True)
    try:
        features = behaviour_features(wh, RUN, Settings())
    finally:
        wh.close()
    long, skipped = evaluate_tags(features, book)
    assert "churn_risk" in skipped  # no scoring run yet: skipped, not guessed
    truth = pd.read_csv(shop[1] / ARCHETYPES_FILE).merge(features, on="customer_id")
    tagged = {tag: set(grp["customer_id"]) for tag, grp in long.groupby("tag")}

    def share(mask: pd.Series, tag: str) -> float:
        return float(truth.loc[mask, "customer_id"].isin(tagged[tag]).mean())

    hunters = truth["archetype"] == "discount_hunter"
    adopters = truth["archetype"] == "new_adopter"
    repeat = truth["orders_total"] >= 2
    assert share(hunters & repeat, "price_sensitive") >= 0.7
    assert share(~hunters, "price_sensitive") <= 0.02
    assert share(adopters & (truth["lines_total"] >= 2), "new_product_adopter") >= 0.7
    assert share(~adopters, "new_product_adopter") <= 0.03
    assert share(truth["archetype"] == "cart_abandoner", "cart_abandoner") >= 0.4


def test_churn_risk_comes_from_the_latest_churn_scores(shop, book: TagBook, tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    shutil.copy(shop[0], path)
    wh = Warehouse(path)
    try:
        old, new = RUN - pd.Timedelta(days=3), RUN - pd.Timedelta(days=1)
        wh.append("scores", pd.DataFrame({
            "run_date": [old, new, new, new], "risk": ["churn", "churn", "churn", "return"],
            "model_version": "1", "customer_id": ["C0000001", "C0000002", "C0000003", "C0000004"],
            "order_id": [None, None, None, "O1"], "probability": [0.9, 0.8, 0.1, 0.95], "value_at_stake": 10.0}))
        long, skipped = evaluate_tags(behaviour_features(wh, RUN, Settings()), book)
    finally:
        wh.close()
    assert "churn_risk" not in skipped
    assert set(long.loc[long["tag"] == "churn_risk", "customer_id"]) == {"C0000002"}


def test_current_tags_reads_the_latest_run(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    try:
        empty = current_tags(wh)
        assert empty.empty and list(empty.columns) == ["customer_id", "tags", "segment", "segment_name"]
        for day, tags in (("2026-10-01", "dormant"), ("2026-10-08", "frequent_buyer,high_value")):
            wh.replace_partition(CUSTOMER_TAGS_TABLE, pd.DataFrame({
                "run_date": [pd.Timestamp(day)], "customer_id": ["c1"], "tags": [tags], "segment": ["S2"],
                "segment_name": ["Loyal high spenders"]}), {"run_date": pd.Timestamp(day).to_pydatetime()})
        assert current_tags(wh)["tags"].tolist() == ["frequent_buyer,high_value"]
        assert current_tags(wh, as_of="2026-10-05")["tags"].tolist() == ["dormant"]
    finally:
        wh.close()
