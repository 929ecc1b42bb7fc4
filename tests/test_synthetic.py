"""The synthetic shop: deterministic, schema-clean apart from the listed dirty rows, and carrying
the planted signals (asserted as directions and relations, never exact numbers)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.sources import (
    EVENT_TYPES,
    LANGUAGES,
    ORDER_STATUSES,
    RETURN_REASONS,
    SOURCE_TABLES,
    TABLES,
    TICKET_CHANNELS,
)
from tasks.data.synthetic import DIRTY, generate_shop

END = pd.Timestamp("2026-11-02")  # end_date 2026-11-01 is included in history
NOT_AFTER = END + pd.Timedelta(days=1)  # what ingestion accepts: export time + 24 h
CUSTOMERS = 1_500
TS_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def _generate(path: Path, **kwargs) -> dict[str, int]:
    args = {"customers": 300, "seed": 3} | kwargs
    return generate_shop(path, **args)


@pytest.fixture(scope="module")
def shop_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("shop")
    counts = generate_shop(out, customers=CUSTOMERS, seed=11)
    return out, counts


@pytest.fixture(scope="module")
def manifest(shop_dir) -> pd.DataFrame:
    return pd.read_csv(shop_dir[0] / "_dirty_manifest.csv", dtype={"key": str})


@pytest.fixture(scope="module")
def raw(shop_dir) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(shop_dir[0] / f"{name}.parquet") for name in SOURCE_TABLES}


def _parse(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Types as ingestion would parse them (text columns hold bad-type values in the file)."""
    df = df.copy()
    for col, column in TABLES[name].model.to_schema().columns.items():
        kind = str(column.dtype).lower()
        if "datetime" in kind and not pd.api.types.is_datetime64_any_dtype(df[col]):
            df[col] = pd.to_datetime(df[col], format="%Y-%m-%d %H:%M:%S")
        elif ("float" in kind or "int" in kind) and not pd.api.types.is_numeric_dtype(df[col]):
            df[col] = pd.to_numeric(df[col])
    return df


@pytest.fixture(scope="module")
def clean(raw, manifest) -> dict[str, pd.DataFrame]:
    out = {}
    for name, df in raw.items():
        dirty = manifest.loc[manifest["table"] == name, "source_row"].to_numpy() - 1
        out[name] = _parse(name, df.drop(index=df.index[dirty]).reset_index(drop=True))
    return out


@pytest.fixture(scope="module")
def archetypes(shop_dir) -> pd.Series:
    frame = pd.read_csv(shop_dir[0] / "_archetypes.csv")
    return frame.set_index("customer_id")["archetype"]


@pytest.fixture(scope="module")
def lines(clean) -> pd.DataFrame:
    """Order lines with their order, product, size-chart view (events, 7 days before) and return."""
    o, p, ev = clean["orders"], clean["products"], clean["events"]
    it = clean["order_items"].merge(
        o[["order_id", "customer_id", "ordered_at", "delivered_at", "promised_at", "carrier"]], on="order_id"
    ).merge(p[["product_id", "size_sensitive", "category"]], on="product_id")
    views = ev.loc[ev["event_type"] == "view_size_chart", ["customer_id", "product_id", "occurred_at"]]
    m = it.merge(views, on=["customer_id", "product_id"], how="left")
    m["hit"] = (m["occurred_at"] <= m["ordered_at"]) & (m["occurred_at"] >= m["ordered_at"] - pd.Timedelta(days=7))
    chart = m.groupby(["order_id", "line_no"])["hit"].any().rename("chart").reset_index()
    policy = ev.loc[ev["event_type"] == "view_return_policy", ["customer_id", "occurred_at"]]
    po = o[["order_id", "customer_id", "ordered_at"]].merge(policy, on="customer_id", how="left")
    po["hit"] = (po["occurred_at"] <= po["ordered_at"]) & (
        po["occurred_at"] >= po["ordered_at"] - pd.Timedelta(days=7))
    it = it.merge(chart, on=["order_id", "line_no"])
    it["policy"] = it["order_id"].map(po.groupby("order_id")["hit"].any())
    returns = clean["returns"][["order_id", "product_id", "reason_code"]].drop_duplicates(["order_id", "product_id"])
    it = it.merge(returns, on=["order_id", "product_id"], how="left")
    it["returned"] = it["reason_code"].notna()
    return it[it["delivered_at"].notna()]


# --- determinism and shape ---------------------------------------------------------------------


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
def test_same_seed_gives_identical_files(tmp_path: Path, file_format: str) -> None:
    first = _generate(tmp_path / "a", file_format=file_format)
    second = _generate(tmp_path / "b", file_format=file_format)
    assert first == second
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    _generate(tmp_path / "a", seed=3)
    _generate(tmp_path / "b", seed=4)
    for name in ("orders", "events", "reviews"):
        assert (tmp_path / "a" / f"{name}.parquet").read_bytes() != (tmp_path / "b" / f"{name}.parquet").read_bytes()


def test_every_table_written_with_the_schema_columns(shop_dir, raw) -> None:
    out, counts = shop_dir
    assert list(counts) == SOURCE_TABLES
    for name in SOURCE_TABLES:
        assert list(raw[name].columns) == TABLES[name].columns
        assert len(raw[name]) == counts[name] > 0
    assert not (out / "outcomes.parquet").exists()
    assert json.loads((out / "_batch.json").read_text())["exported_at"] == "2026-11-02T00:00:00"


def test_volumes_look_like_a_shop(shop_dir, clean, archetypes) -> None:
    counts = shop_dir[1]
    assert 1.5 * CUSTOMERS < counts["orders"] < 6 * CUSTOMERS
    assert counts["order_items"] > counts["orders"]
    assert counts["events"] > 5 * counts["orders"]
    assert 150 <= counts["products"] <= 400
    per_customer = clean["orders"].groupby("customer_id").size()
    assert (per_customer == 1).mean() > 0.3  # many one-time buyers
    assert per_customer.max() >= 10  # and some loyal regulars
    months = clean["orders"]["ordered_at"].dt.month.value_counts()
    assert months[[11, 12]].mean() > months[[2, 3, 4]].mean() * 1.3  # November/December peak
    assert set(clean["customers"]["language"]) == {"en", "zh"}
    assert clean["order_items"].loc[clean["order_items"]["size"].notna(), "product_id"].nunique() > 10


def test_csv_uses_iso_timestamps(tmp_path: Path) -> None:
    _generate(tmp_path, file_format="csv", dirty_share=0.0)
    frame = pd.read_csv(tmp_path / "orders.csv", dtype=str)
    assert list(frame.columns) == TABLES["orders"].columns
    assert frame["ordered_at"].str.match(TS_PATTERN).all()
    assert frame["delivered_at"].dropna().str.match(TS_PATTERN).all()


# --- clean rows ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SOURCE_TABLES)
def test_clean_rows_pass_the_schema_with_unique_keys(clean, name: str) -> None:
    spec = TABLES[name]
    frame = clean[name]
    spec.model.validate(frame, lazy=True)
    assert not frame.duplicated(list(spec.key)).any()
    for col in spec.timestamp_columns:
        if col not in spec.future_allowed:  # a delivery promise may lie after the export
            assert frame[col].max() <= NOT_AFTER, col


def test_clean_children_point_at_clean_parents(clean) -> None:
    orders, customers, products = clean["orders"], clean["customers"], clean["products"]
    for child in ("order_items", "returns", "reviews"):
        assert clean[child]["order_id"].isin(orders["order_id"]).all(), child
    assert orders["customer_id"].isin(customers["customer_id"]).all()
    assert clean["tickets"]["customer_id"].isin(customers["customer_id"]).all()
    assert clean["order_items"]["product_id"].isin(products["product_id"]).all()


def test_recent_orders_may_be_undelivered_and_some_are_cancelled(clean) -> None:
    status = clean["orders"]["status"].value_counts()
    assert status["delivered"] > status["cancelled"] > 0
    recent = clean["orders"][clean["orders"]["ordered_at"] > END - pd.Timedelta(days=3)]
    assert recent["delivered_at"].isna().any()


# --- dirty rows ----------------------------------------------------------------------------------


def _is_dirty(name: str, kind: str, position: int, frame: pd.DataFrame, raw: dict[str, pd.DataFrame]) -> bool:
    """Whether the listed row (0-based ``position``) really has the defect its kind says."""
    spec, dirt = TABLES[name], DIRTY[name]
    row = frame.iloc[position]
    if kind == "duplicate_row":
        return bool(frame.duplicated(keep=False).iloc[position])
    if kind == "duplicate_key":
        return bool(frame.duplicated(list(spec.key), keep=False).iloc[position])
    if kind in ("bad_type", "bad_date"):
        value = row[dirt.text_column]
        parsed = (pd.to_datetime(pd.Series([value]), format="%Y-%m-%d %H:%M:%S", errors="coerce") if kind ==
                  "bad_date" else pd.to_numeric(pd.Series([value]), errors="coerce"))
        return value is not None and parsed.isna().all()
    if kind == "negative_amount":
        return float(row[dirt.amount]) < 0
    if kind == "orphan":
        column, _, _ = dirt.orphan
        parent = next(fk for fk in spec.foreign_keys if fk.columns == (column,)).parent
        return row[column] not in set(raw[parent][column])
    if kind == "future_timestamp":
        first = pd.to_datetime(row[spec.timestamp_columns[0]], format="%Y-%m-%d %H:%M:%S")
        return first > END + pd.Timedelta(days=2)
    if kind == "unknown_enum":
        column, _ = dirt.enum
        allowed = {"language": LANGUAGES, "status": ORDER_STATUSES, "reason_code": RETURN_REASONS,
                   "channel": TICKET_CHANNELS, "event_type": EVENT_TYPES}[column]
        return row[column] not in allowed
    if kind == "out_of_range":
        column, _ = dirt.out_of_range
        value = float(row[column])
        bounds = {"birth_year": (1900, 2020), "quantity": (1, 1000), "satisfaction": (1, 5), "score": (1, 5)}
        return not bounds[column][0] <= value <= bounds[column][1]
    if kind == "delivered_before_ordered":
        return row["delivered_at"] < row["ordered_at"]
    raise AssertionError(f"unknown kind {kind}")


def test_dirty_manifest_lists_real_defects_in_every_table(raw, manifest) -> None:
    assert list(manifest.columns) == ["table", "key", "source_row", "kind"]
    for name in SOURCE_TABLES:
        listed = manifest[manifest["table"] == name]
        assert set(listed["kind"]) == set(DIRTY[name].kinds), name
        frame = raw[name]
        key = frame[list(TABLES[name].key)].astype(str).agg("|".join, axis=1)
        for entry in listed.itertuples():
            assert key.iloc[entry.source_row - 1] == entry.key, (name, entry)
            assert _is_dirty(name, entry.kind, entry.source_row - 1, frame, raw), (name, entry)


def test_duplicates_come_before_the_copy_ingestion_keeps(raw, manifest) -> None:
    """Ingestion keeps the last copy of a key; the listed duplicate must be the earlier one."""
    duplicates = manifest[manifest["kind"].isin(["duplicate_row", "duplicate_key"])]
    for name, listed in duplicates.groupby("table"):
        frame = raw[name]
        key = frame[list(TABLES[name].key)].astype(str).agg("|".join, axis=1)
        last_row = pd.Series(np.arange(1, len(frame) + 1), index=key.to_numpy()).groupby(level=0).max()
        assert (listed["source_row"].to_numpy() < last_row[listed["key"]].to_numpy()).all(), name


def test_dirty_share_zero_writes_no_dirt_and_typed_columns(tmp_path: Path) -> None:
    _generate(tmp_path, dirty_share=0.0)
    assert len(pd.read_csv(tmp_path / "_dirty_manifest.csv")) == 0
    orders = pd.read_parquet(tmp_path / "orders.parquet")
    assert pd.api.types.is_float_dtype(orders["total_amount"])
    assert not orders["order_id"].duplicated().any()


# --- planted signals ---------------------------------------------------------------------------------


def test_size_chart_view_lowers_size_returns_and_one_garment_runs_small(lines) -> None:
    sized = lines[lines["size_sensitive"]]
    size_rate = sized.groupby("chart")["reason_code"].apply(lambda s: (s == "size_fit").mean())
    assert size_rate[False] > 1.5 * size_rate[True]
    by_product = sized.groupby("product_id")["reason_code"].agg(
        rate=lambda s: (s == "size_fit").mean(), n="size")
    assert by_product[by_product["n"] >= 20]["rate"].idxmax() == "P0042"


def test_one_carrier_causes_most_late_deliveries(clean) -> None:
    delivered = clean["orders"].dropna(subset=["delivered_at", "promised_at"]).copy()
    delivered["late"] = delivered["delivered_at"] > delivered["promised_at"]
    late_share = delivered.groupby("carrier")["late"].mean()
    assert late_share.idxmax() == "ParcelPro"
    assert (delivered.loc[delivered["late"], "carrier"] == "ParcelPro").mean() > 0.5
    tickets = clean["tickets"]
    delivery = tickets[tickets["category"] == "delivery"].merge(delivered[["order_id", "late"]], on="order_id")
    assert delivery["late"].mean() > 3 * delivered["late"].mean()
    reviews = clean["reviews"].merge(delivered[["order_id", "late"]], on="order_id")
    bad = reviews.groupby("late")["score"].apply(lambda s: (s <= 2).mean())
    assert bad[True] > 2 * bad[False]
    timed = clean["reviews"].merge(clean["orders"][["order_id", "delivered_at"]], on="order_id")
    early = timed[timed["delivered_at"].isna() | (timed["created_at"] < timed["delivered_at"])]
    assert len(early) > 0 and early["score"].mean() < timed["score"].mean()
    assert (clean["returns"]["reason_code"] == "late_delivery").any()


def test_return_policy_views_past_returns_and_discount_hunters_return_more(lines, archetypes) -> None:
    by_policy = lines.groupby("policy")["returned"].mean()
    assert by_policy[True] > 1.3 * by_policy[False]
    by_archetype = lines.assign(archetype=lines["customer_id"].map(archetypes)).groupby("archetype")["returned"].mean()
    assert by_archetype["discount_hunter"] > by_archetype["one_time"]
    ordered = lines.sort_values("ordered_at")
    ordered["past"] = ordered.groupby("customer_id")["returned"].cumsum() - ordered["returned"]
    by_past = ordered.groupby(ordered["past"] > 0)["returned"].mean()
    assert by_past[True] > by_past[False]


def test_bad_tickets_and_bad_reviews_lead_to_churn(clean, archetypes) -> None:
    last_order = clean["orders"].groupby("customer_id")["ordered_at"].max()
    cutoff = END - pd.Timedelta(days=120)
    tickets = clean["tickets"].dropna(subset=["order_id"])
    tickets = tickets[tickets["opened_at"] < cutoff].copy()
    tickets["bad"] = tickets["resolved_at"].isna() | tickets["escalated"].astype(bool)
    tickets["reordered"] = tickets["customer_id"].map(last_order) > tickets["opened_at"]
    reorder = tickets.groupby("bad")["reordered"].mean()
    assert reorder[True] < 0.8 * reorder[False]
    reviews = clean["reviews"][clean["reviews"]["created_at"] < cutoff].copy()
    reviews["reordered"] = reviews["customer_id"].map(last_order) > reviews["created_at"]
    by_score = reviews.groupby(reviews["score"] <= 2)["reordered"].mean()
    assert by_score[True] < by_score[False]
    orders_per_customer = clean["orders"].groupby("customer_id").size().rename("n").to_frame()
    orders_per_customer["archetype"] = archetypes
    mean_orders = orders_per_customer.groupby("archetype")["n"].mean()
    assert mean_orders.idxmax() == "loyal"


def test_phone_returns_jump_from_the_update_week(shop_dir, lines) -> None:
    planted = json.loads((shop_dir[0] / "_planted.json").read_text())["signals"]["phone_spike"]
    phone = lines[lines["product_id"] == planted["product_id"]]
    after = phone["ordered_at"] >= pd.Timestamp(planted["week_start"])
    rate = phone.groupby(after)["reason_code"].apply(lambda s: (s == "quality_defect").mean())
    assert rate[True] > 3 * max(rate[False], 0.01)


def test_fragile_food_breaks_and_gets_bad_reviews(clean, lines) -> None:
    damaged = lines.groupby(lines["product_id"] == "P0163")["reason_code"].apply(
        lambda s: (s == "damaged_in_transit").mean())
    assert damaged[True] > 5 * damaged[False]
    reviews = clean["reviews"]
    bad = reviews.groupby(reviews["product_id"] == "P0163")["score"].apply(lambda s: (s <= 2).mean())
    assert bad[True] > bad[False]


def test_unclear_manual_drives_usage_questions(clean) -> None:
    usage = clean["tickets"][clean["tickets"]["category"] == "usage_question"]
    with_manual = set(clean["order_items"].loc[clean["order_items"]["product_id"] == "P0208", "order_id"])
    manual_orders = clean["orders"]["order_id"].isin(with_manual)
    per_order = usage["order_id"].isin(with_manual).sum() / manual_orders.sum()
    elsewhere = (~usage["order_id"].isin(with_manual)).sum() / (~manual_orders).sum()
    assert per_order > 5 * elsewhere


def test_slow_team_answers_late_and_leaves_customers_unhappy(clean) -> None:
    tickets = clean["tickets"].copy()
    tickets["hours"] = (tickets["first_response_at"] - tickets["opened_at"]).dt.total_seconds() / 3600
    by_team = tickets.groupby("team").agg(hours=("hours", "median"), satisfaction=("satisfaction", "mean"),
                                          escalated=("escalated", "mean"))
    assert by_team["hours"].idxmax() == "Team Pine"
    assert by_team["satisfaction"].idxmin() == "Team Pine"
    assert by_team["escalated"].idxmax() == "Team Pine"
    team_of_order = tickets.dropna(subset=["order_id"]).groupby("order_id")["team"].first()
    reviews = clean["reviews"].assign(team=lambda r: r["order_id"].map(team_of_order)).dropna(subset=["team"])
    bad = reviews.groupby(reviews["team"] == "Team Pine")["score"].apply(lambda s: (s <= 2).mean())
    assert bad[True] > bad[False]


def test_discount_hunters_new_adopters_and_cart_abandoners_stand_out(clean, archetypes) -> None:
    orders = clean["orders"].assign(archetype=lambda o: o["customer_id"].map(archetypes))
    share = orders["discount_amount"] / (orders["total_amount"] + orders["discount_amount"])
    deep = (share >= 0.25).groupby(orders["archetype"]).mean()
    assert deep.idxmax() == "discount_hunter" and deep["discount_hunter"] > 0.5
    items = clean["order_items"].merge(orders[["order_id", "ordered_at", "archetype"]], on="order_id").merge(
        clean["products"][["product_id", "launched_at"]], on="product_id")
    fresh = ((items["ordered_at"] - items["launched_at"]) < pd.Timedelta(days=14)).groupby(items["archetype"]).mean()
    assert fresh.idxmax() == "new_adopter"
    events = clean["events"].dropna(subset=["customer_id"])
    per_session = events.groupby("session_id").agg(
        customer=("customer_id", "first"),
        abandoned=("event_type", lambda s: "add_to_cart" in set(s) and "checkout" not in set(s)))
    abandoned = per_session[per_session["abandoned"]].groupby("customer").size()
    per_archetype = (abandoned.reindex(archetypes.index, fill_value=0).groupby(archetypes).mean())
    assert per_archetype.idxmax() == "cart_abandoner"


def test_texts_in_both_languages_match_their_reason(clean) -> None:
    reviews = clean["reviews"].dropna(subset=["text"])
    assert set(reviews["language"]) == {"en", "zh"}
    zh = reviews[reviews["language"] == "zh"]["text"]
    assert zh.str.contains(r"[\u4e00-\u9fff]").all()
    assert reviews["text"].nunique() > 0.5 * len(reviews)  # composed, not one sentence per category
    returns = clean["returns"].dropna(subset=["reason_text"])
    size = returns[returns["reason_code"] == "size_fit"].merge(
        clean["orders"][["order_id", "customer_id"]], on="order_id")
    words = r"size|Sizing|tight|small|fit|尺码|紧|小|码|版型"
    assert size["reason_text"].str.contains(words).mean() > 0.95
    tickets = clean["tickets"]
    assert tickets["text"].notna().all() and set(tickets["language"]) == {"en", "zh"}


def test_planted_facts_are_recorded(shop_dir, archetypes) -> None:
    planted = json.loads((shop_dir[0] / "_planted.json").read_text())
    signals = planted["signals"]
    assert signals["late_carrier"]["carrier"] == "ParcelPro"
    assert signals["slow_team"]["team"] == "Team Pine"
    assert signals["size_runs_small"]["product_id"] == "P0042"
    assert signals["phone_spike"]["product_id"] == "P0117"
    assert signals["fragile_food"]["product_id"] == "P0163"
    assert signals["unclear_manual"]["product_id"] == "P0208"
    assert sum(signals["archetypes"]["counts"].values()) == len(archetypes) == CUSTOMERS
    assert planted["rows"] == shop_dir[1]
