"""Training sets over rolling cutoffs, time splits and the scoring frame.

A small random shop (a few hundred orders over ~14 months) stands in for real data; the strongest
check rebuilds the warehouse as it looked on a cutoff day and demands the scoring frame of that
day equals the training rows of that cutoff, label aside.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.derived import CUTOFF, LABEL, UNKNOWN, training_set_schema
from schemas.settings import Settings
from tasks.data.warehouse import Warehouse
from tasks.models.datasets import (
    build_training_set,
    feature_columns,
    rolling_cutoffs,
    scoring_frame,
    split_gap_days,
    time_split,
)
from tasks.models.features import order_features
from tasks.models.labels import label_horizon_days, latest_matured_cutoff, population

END = pd.Timestamp("2026-06-01")
DAYS = 430
S = Settings(split={"n_cutoffs": 4, "test_cutoffs": 1, "valid_cutoffs": 1, "cutoff_step_days": 30, "gap_days": 30})
MODELS = ("return", "negative_review", "churn")
OPTIONAL = ("returns", "tickets", "reviews", "events")


def random_shop(customers: int = 70, seed: int = 5) -> dict[str, pd.DataFrame]:
    """Source frames of a tiny shop: orders, lines, late parcels, returns, reviews, tickets, events."""
    rng = np.random.default_rng(seed)
    start = END - pd.Timedelta(days=DAYS)
    day = pd.Timedelta(days=1)
    cats = ["shoes", "phones", "food"]
    products = pd.DataFrame({
        "product_id": [f"p{i}" for i in range(12)],
        "category": [cats[i % 3] for i in range(12)],
        "size_sensitive": [i % 3 == 0 for i in range(12)],
    })
    cust, orders, items, returns, reviews, tickets, events = [], [], [], [], [], [], []
    for c in range(customers):
        cid = f"c{c:03d}"
        signup = start + day * rng.uniform(0, DAYS * 0.6)
        cust.append({"customer_id": cid, "signup_at": signup, "region": rng.choice(["north", "south"])})
        n = 1 + rng.poisson(3.0) if c % 4 else 1  # a quarter are one-time buyers
        for t in np.sort(rng.uniform(0, (END - signup) / day, n)):
            oid = f"o{len(orders):04d}"
            ordered = signup + day * t
            promised = ordered + day * rng.integers(2, 6)
            delivered = promised + day * rng.normal(0, 2)
            delivered = max(delivered, ordered + day * 0.5)
            orders.append({"order_id": oid, "customer_id": cid, "ordered_at": ordered, "promised_at": promised,
                           "delivered_at": delivered if delivered <= END else None,
                           "status": "delivered" if delivered <= END else "shipped",
                           "total_amount": float(rng.gamma(2, 30)), "discount_amount": float(rng.choice([0, 5])),
                           "payment_type": rng.choice(["card", "paypal"]), "carrier": rng.choice(["dhl", "ups"]),
                           "updated_at": delivered if delivered <= END else ordered})
            for line in range(1, 1 + rng.integers(1, 4)):
                items.append({"order_id": oid, "line_no": line, "product_id": f"p{rng.integers(0, 12)}",
                              "quantity": 1, "unit_price": float(rng.gamma(2, 15)), "size": rng.choice(["S", "M"])})
            late = delivered > promised
            if rng.random() < 0.15 + 0.25 * late:
                returns.append({"return_id": f"r{len(returns)}", "order_id": oid,
                                "requested_at": delivered + day * rng.uniform(1, 25)})
            if rng.random() < 0.5:
                score = int(rng.integers(1, 3)) if late and rng.random() < 0.6 else int(rng.integers(2, 6))
                reviews.append({"review_id": f"v{len(reviews)}", "order_id": oid, "customer_id": cid,
                                "score": score, "created_at": delivered + day * rng.uniform(0, 20)})
            if rng.random() < 0.2 + 0.3 * late:
                opened = delivered - day * rng.uniform(0, 2)
                resolved = opened + day * rng.uniform(0.2, 6)
                tickets.append({"ticket_id": f"t{len(tickets)}", "customer_id": cid, "order_id": oid,
                                "category": rng.choice(["delivery", "usage_question"]), "opened_at": opened,
                                "first_response_at": opened + day * rng.uniform(0.05, 2),
                                "resolved_at": resolved, "escalated": bool(rng.random() < 0.2),
                                "satisfaction": float(rng.integers(1, 6)), "updated_at": resolved})
            for k in range(rng.integers(0, 5)):
                events.append({"event_id": f"e{len(events)}", "customer_id": cid, "session_id": f"s{oid}",
                               "event_type": rng.choice(["view_size_chart", "add_to_cart", "view_return_policy",
                                                         "checkout"]),
                               "product_id": None, "occurred_at": ordered - day * rng.uniform(0, 6) + day * 3 * k})
    frames = {"customers": pd.DataFrame(cust), "products": products, "orders": pd.DataFrame(orders),
              "order_items": pd.DataFrame(items), "returns": pd.DataFrame(returns),
              "reviews": pd.DataFrame(reviews), "tickets": pd.DataFrame(tickets), "events": pd.DataFrame(events)}
    for name in OPTIONAL:  # nothing after the end of the data
        col = {"returns": "requested_at", "reviews": "created_at", "tickets": "opened_at",
               "events": "occurred_at"}[name]
        frames[name] = frames[name][frames[name][col] <= END]
    return frames


def load(path: Path, frames: dict[str, pd.DataFrame], skip: tuple[str, ...] = ()) -> Warehouse:
    wh = Warehouse(path)
    for name, frame in frames.items():
        if name not in skip:
            wh.append(name, frame)
    return wh


def as_it_was(wh: Warehouse, day: pd.Timestamp) -> None:
    """Rewind the warehouse to what it held on ``day``: later rows gone, later facts undone."""
    d = [day.to_pydatetime()]
    con = wh.con
    con.execute("DELETE FROM order_items WHERE order_id IN (SELECT order_id FROM orders WHERE ordered_at > ?)", d)
    for table, col in (("orders", "ordered_at"), ("returns", "requested_at"), ("reviews", "created_at"),
                       ("tickets", "opened_at"), ("events", "occurred_at")):
        con.execute(f"DELETE FROM {table} WHERE {col} > ?", d)
    con.execute("UPDATE orders SET delivered_at = NULL, status = 'shipped', updated_at = ordered_at "
                "WHERE delivered_at > ?", d)
    con.execute("UPDATE tickets SET first_response_at = NULL WHERE first_response_at > ?", d)
    con.execute("UPDATE tickets SET resolved_at = NULL, satisfaction = NULL, escalated = NULL, updated_at = NULL "
                "WHERE resolved_at > ?", d)


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return random_shop()


@pytest.fixture(scope="module")
def wh(tmp_path_factory: pytest.TempPathFactory, frames: dict[str, pd.DataFrame]) -> Warehouse:
    w = load(tmp_path_factory.mktemp("ds") / "w.duckdb", frames)
    yield w
    w.close()


@pytest.fixture(scope="module")
def sets(wh: Warehouse) -> dict[str, pd.DataFrame]:
    return {m: build_training_set(wh, m, rolling_cutoffs(wh, S, m), S) for m in MODELS}


def test_rolling_cutoffs_step_back_from_the_latest_matured(wh: Warehouse) -> None:
    for model in MODELS:
        cutoffs = rolling_cutoffs(wh, S, model)
        gap = pd.Timedelta(days=split_gap_days(model, S))
        assert cutoffs == sorted(cutoffs) and len(cutoffs) == S.split.n_cutoffs
        assert cutoffs[-1] == latest_matured_cutoff(wh, model, S)
        assert cutoffs[-1] - cutoffs[-2] == gap and cutoffs[-2] - cutoffs[-3] == gap
        assert cutoffs[1] - cutoffs[0] == pd.Timedelta(days=S.split.cutoff_step_days)
        assert all(c == c.normalize() for c in cutoffs)
    assert split_gap_days("churn", S) == S.labels.churn_horizon_days  # horizon wider than the gap
    every = rolling_cutoffs(wh, S)
    assert every[-1] == min(latest_matured_cutoff(wh, m, S) for m in MODELS)
    fixed = Settings(split={**S.split.model_dump(), "latest_cutoff": "2026-01-15"})
    assert rolling_cutoffs(wh, fixed, "return")[-1] == pd.Timestamp("2026-01-15")


def test_training_sets_have_the_contract_columns(sets: dict[str, pd.DataFrame]) -> None:
    for model, df in sets.items():
        key = "customer_id" if model == "churn" else "order_id"
        keys = ["customer_id"] if model == "churn" else ["order_id", "customer_id"]
        assert list(df.columns) == [*keys, CUTOFF, *feature_columns(model), LABEL]
        training_set_schema(model).validate(df)
        assert not df.duplicated([key, CUTOFF]).any()
        assert set(df[LABEL].unique()) == {0, 1}, model  # both outcomes occur in this shop
        assert df.attrs["model"] == model
        for col in df.select_dtypes("category"):
            assert UNKNOWN in df[col].cat.categories


def test_time_split_is_by_time_with_a_gap(sets: dict[str, pd.DataFrame]) -> None:
    for model, df in sets.items():
        train, valid, test = time_split(df, S)
        gap = pd.Timedelta(days=split_gap_days(model, S))
        horizon = pd.Timedelta(days=label_horizon_days(model, S.labels))
        assert len(train) + len(valid) + len(test) == len(df)  # rolling cutoffs waste no cutoff
        assert test[CUTOFF].nunique() == 1 and test[CUTOFF].iloc[0] == df[CUTOFF].max()
        assert valid[CUTOFF].nunique() == 1
        assert train[CUTOFF].max() + gap <= valid[CUTOFF].min()
        assert valid[CUTOFF].max() + gap <= test[CUTOFF].min()
        # an entity seen in two splits has disjoint label windows
        key = "customer_id" if model == "churn" else "order_id"
        for early, late in ((train, valid), (valid, test), (train, test)):
            both = early.merge(late, on=key, suffixes=("_e", "_l"))[[f"{CUTOFF}_e", f"{CUTOFF}_l"]]
            assert (both[f"{CUTOFF}_e"] + horizon <= both[f"{CUTOFF}_l"]).all()


def test_test_and_validation_windows_can_span_several_cutoffs(wh: Warehouse) -> None:
    wide = Settings(split={"n_cutoffs": 7, "test_cutoffs": 2, "valid_cutoffs": 2, "cutoff_step_days": 14,
                           "gap_days": 30})
    cutoffs = rolling_cutoffs(wh, wide, "return")
    step, gap = pd.Timedelta(days=14), pd.Timedelta(days=split_gap_days("return", wide))
    assert len(cutoffs) == 7
    assert cutoffs[-1] - cutoffs[-2] == step and cutoffs[-2] - cutoffs[-3] == gap
    assert cutoffs[-3] - cutoffs[-4] == step and cutoffs[-4] - cutoffs[-5] == gap
    train, valid, test = time_split(build_training_set(wh, "return", cutoffs, wide), wide)
    assert test[CUTOFF].nunique() == 2 and valid[CUTOFF].nunique() == 2
    assert train[CUTOFF].max() + gap <= valid[CUTOFF].min() and valid[CUTOFF].max() + gap <= test[CUTOFF].min()


def test_time_split_drops_cutoffs_inside_the_gap(wh: Warehouse) -> None:
    latest = latest_matured_cutoff(wh, "churn", S)
    cutoffs = [latest - pd.Timedelta(days=30 * k) for k in range(7)]  # monthly, churn needs 90 days
    df = build_training_set(wh, "churn", cutoffs, S)
    train, valid, test = time_split(df, S)
    assert valid[CUTOFF].iloc[0] == latest - pd.Timedelta(days=90)
    assert train[CUTOFF].max() == latest - pd.Timedelta(days=180)
    assert len(train) + len(valid) + len(test) < len(df)
    with pytest.raises(ValueError, match="no cutoff"):
        time_split(df[df[CUTOFF] > latest - pd.Timedelta(days=90)], S)


def test_immature_cutoffs_are_refused(wh: Warehouse) -> None:
    with pytest.raises(ValueError, match="not matured"):
        build_training_set(wh, "return", [END - pd.Timedelta(days=5)], S)


def test_training_rows_equal_the_scoring_frame_of_that_day(
    tmp_path: Path, frames: dict[str, pd.DataFrame], sets: dict[str, pd.DataFrame]
) -> None:
    """Leakage end to end: a training row at cutoff c is exactly what scoring saw on day c."""
    for model in MODELS:
        c = sets[model][CUTOFF].value_counts().idxmax()
        past = load(tmp_path / f"{model}.duckdb", frames)
        as_it_was(past, c)
        seen = scoring_frame(past, model, c, S)
        past.close()
        train_rows = sets[model][sets[model][CUTOFF] == c].drop(columns=LABEL).reset_index(drop=True)
        assert len(seen) >= 4
        for frame in (seen, train_rows):  # levels differ (other cutoffs); values must not
            for col in frame.select_dtypes("category"):
                frame[col] = frame[col].astype(str)
        pd.testing.assert_frame_equal(seen, train_rows, check_exact=True)


def test_scoring_frame_is_the_population_with_features(wh: Warehouse, sets: dict[str, pd.DataFrame]) -> None:
    for model in MODELS:
        frame = scoring_frame(wh, model, END, S)
        expected_columns = [c for c in sets[model].columns if c != LABEL]
        assert list(frame.columns) == expected_columns
        key = "customer_id" if model == "churn" else "order_id"
        assert list(frame[key]) == list(population(wh, model, END, S)[key])
        assert (frame[CUTOFF] == END).all()
    rows = scoring_frame(wh, "return", END, S)
    direct = order_features(wh, END, rows["order_id"].tolist(), S)
    pd.testing.assert_frame_equal(rows.drop(columns=CUTOFF).reset_index(drop=True), direct)


def test_empty_population_gives_an_empty_valid_frame(wh: Warehouse) -> None:
    frame = scoring_frame(wh, "return", END - pd.Timedelta(days=DAYS + 30), S)
    assert frame.empty and list(frame.columns)[:3] == ["order_id", "customer_id", CUTOFF]


def test_training_sets_without_optional_sources(tmp_path: Path, frames: dict[str, pd.DataFrame]) -> None:
    bare = load(tmp_path / "bare.duckdb", frames, skip=OPTIONAL)
    for model in MODELS:
        df = build_training_set(bare, model, rolling_cutoffs(bare, S, model)[-2:], S)
        assert len(df) > 0
        if model == "return":
            assert (df[LABEL] == 0).all()  # no returns recorded: nothing to learn, but it runs
        if model == "churn":
            assert df["tickets_total"].isna().all() and df["orders_total"].notna().all()
    bare.close()


def test_synthetic_shop_end_to_end(tmp_path: Path) -> None:
    """The built-in synthetic shop: every model builds, splits by time and stays leak-free."""
    synthetic = pytest.importorskip("tasks.data.synthetic")
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "shop"
    synthetic.generate_shop(out, customers=300, seed=4, dirty_share=0.0)

    def warehouse(name: str) -> Warehouse:
        w = Warehouse(tmp_path / name)
        for table in ("customers", "products", "orders", "order_items", *OPTIONAL):
            w.append(table, pq.read_table(out / f"{table}.parquet").to_pandas())
        return w

    wh = warehouse("w.duckdb")
    settings = Settings()
    sets = {m: build_training_set(wh, m, rolling_cutoffs(wh, settings, m), settings) for m in MODELS}
    wh.close()
    for model, df in sets.items():
        train, valid, test = time_split(df, settings)
        assert len(train) and len(valid) and len(test), model
    assert sets["churn"][LABEL].nunique() == 2 and sets["return"][LABEL].nunique() == 2
    c = sets["return"][CUTOFF].max()
    past = warehouse("past.duckdb")
    as_it_was(past, c)
    seen = scoring_frame(past, "return", c, settings)
    past.close()
    rows = sets["return"][sets["return"][CUTOFF] == c].drop(columns=LABEL).reset_index(drop=True)
    for frame in (seen, rows):
        for col in frame.select_dtypes("category"):
            frame[col] = frame[col].astype(str)
    pd.testing.assert_frame_equal(seen, rows, check_exact=True)


def test_training_set_contract_rejects_bad_rows(sets: dict[str, pd.DataFrame]) -> None:
    from pandera.errors import SchemaError, SchemaErrors

    df = sets["return"]
    schema = training_set_schema("return")
    bad_label = df.copy()
    bad_label.loc[0, LABEL] = 2
    for bad in (bad_label, df.drop(columns=CUTOFF), pd.concat([df, df.iloc[:1]], ignore_index=True)):
        with pytest.raises((SchemaError, SchemaErrors)):
            schema.validate(bad)
