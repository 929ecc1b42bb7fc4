"""Training sets over rolling cutoffs, time splits and the scoring frame.

A small random shop (a few hundred orders over ~14 months) stands in for real data; the strongest
check rebuilds the warehouse as it looked on a cutoff day and demands the scoring frame of that
day equals the training rows of that cutoff, label aside.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.derived import CUTOFF, LABEL, UNKNOWN, training_set_schema
from schemas.settings import Settings
from schemas.sources import TABLES
from tasks.data.warehouse import Warehouse
from tasks.models.datasets import (
    Fold,
    LeakageError,
    NotEnoughData,
    build_training_frame,
    build_training_frames,
    build_training_set,
    check_fold,
    feature_columns,
    frame_settings,
    in_order,
    join_one_to_one,
    origin_folds,
    plan_cutoffs,
    refit_rows,
    rolling_cutoffs,
    scoring_frame,
    scoring_frames,
    side_by_side,
)
from tasks.models.features import cutoff_batches, order_features
from tasks.models.labels import label_horizon_days, labels, labels_at_cutoffs, latest_matured_cutoff, population

END = pd.Timestamp("2026-06-01")
DAYS = 430
S = Settings(split={"customer_step_days": 30, "order_step_days": 30, "origin_spacing_days": 30})
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
    """Rows at the planned cutoffs with the scoring day's populations (what ``scoring_frame`` sees)."""
    return {m: build_training_set(wh, m, rolling_cutoffs(wh, S, m), S) for m in MODELS}


@pytest.fixture(scope="module")
def planned(wh: Warehouse) -> dict[str, pd.DataFrame]:
    """The training frames as training builds them (order moments widened to the 30-day step)."""
    return {m: build_training_frame(wh, m, plan_cutoffs(wh, m, S), S) for m in MODELS}


def test_cutoffs_step_back_from_the_latest_matured(wh: Warehouse) -> None:
    for model in MODELS:
        plan = plan_cutoffs(wh, model, S)
        cutoffs = rolling_cutoffs(wh, S, model)
        assert cutoffs == list(plan.cutoffs) == sorted(cutoffs) and len(cutoffs) >= 8
        assert cutoffs[-1] == latest_matured_cutoff(wh, model, S)
        assert {b - a for a, b in pairwise(cutoffs)} == {pd.Timedelta(days=30)}
        assert cutoffs[0] >= plan.first_order + pd.Timedelta(days=plan.min_history_days)
        assert cutoffs[0] - pd.Timedelta(days=30) < plan.first_order + pd.Timedelta(days=plan.min_history_days)
        assert all(c == c.normalize() for c in cutoffs)
        assert plan.origins[-1] == cutoffs[-1] and len(plan.origins) == S.split.backtest_origins


def test_as_of_means_no_label_closes_after_it(wh: Warehouse) -> None:
    """``train --cutoff D``: the newest training cutoff is D - horizon, whatever the data holds after D."""
    for model in MODELS:
        horizon = pd.Timedelta(days=label_horizon_days(model, S.labels))
        as_of = pd.Timestamp("2026-02-10")
        plan = plan_cutoffs(wh, model, Settings(split={**S.split.model_dump(), "as_of": str(as_of)}))
        assert plan.latest == (as_of - horizon).floor("D")
        assert all(c + horizon <= as_of for c in plan.cutoffs)
    with pytest.raises(NotEnoughData, match="no cutoff has a matured label"):
        plan_cutoffs(wh, "churn", Settings(split={**S.split.model_dump(), "as_of": str(END - pd.Timedelta(days=400))}))


def test_steps_and_history_derive_from_the_span(wh: Warehouse) -> None:
    """Defaults: daily order cutoffs, weekly customer cutoffs on ~14 months, a month of history at most."""
    plain = Settings(split={"max_cutoffs": 1000})
    churn, ret = plan_cutoffs(wh, "churn", plain), plan_cutoffs(wh, "return", plain)
    assert churn.step_days == 7 and ret.step_days == 1 and not ret.notes
    assert churn.min_history_days == 30 and ret.eval_window_days == plain.split.order_eval_window_days
    # churn on a 90-day horizon trains from ~a month of history up to D - 90
    assert churn.cutoffs[0] - churn.first_order <= pd.Timedelta(days=37)
    # a capped order model keeps the scoring day's daily step and drops the oldest cutoffs (its rows must
    # sit at the moments a scoring day draws them); a capped customer model widens its step instead
    capped = plan_cutoffs(wh, "return", Settings(split={"max_cutoffs": 50}))
    assert len(capped.cutoffs) == 50 and capped.step_days == 1 and any("max_cutoffs" in n for n in capped.notes)
    assert capped.cutoffs[-1] == ret.cutoffs[-1] and capped.cutoffs[0] > ret.cutoffs[0]
    wide = plan_cutoffs(wh, "churn", Settings(split={"max_cutoffs": 10}))
    assert len(wide.cutoffs) <= 10 and wide.step_days > 7


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


def test_rolling_origins_are_purged(wh: Warehouse, planned: dict[str, pd.DataFrame]) -> None:
    """No training row's label window reaches past the start of the window its origin evaluates."""
    for model, df in planned.items():
        plan = plan_cutoffs(wh, model, S)
        folds = origin_folds(df, plan)
        assert [f.origin for f in folds] == list(plan.origins) and folds[-1].origin == df[CUTOFF].max()
        cutoffs = pd.to_datetime(df[CUTOFF])
        for fold in folds:
            assert fold.train.size and fold.evaluate.size
            assert (cutoffs.iloc[fold.train] + plan.horizon <= fold.window_start).all()
            judged = cutoffs.iloc[fold.evaluate]
            assert judged.between(fold.window_start, fold.origin).all()
            # every row that could be used without a leak is used
            usable = cutoffs + plan.horizon <= fold.window_start
            assert int(usable.sum()) == fold.train.size
        assert refit_rows(df, plan).size == len(df)  # the refit uses every matured cutoff


def test_a_planted_leak_is_refused(wh: Warehouse, sets: dict[str, pd.DataFrame]) -> None:
    df = sets["churn"]
    plan = plan_cutoffs(wh, "churn", S)
    fold = origin_folds(df, plan)[-1]
    cutoffs = pd.to_datetime(df[CUTOFF]).to_numpy()
    late = np.flatnonzero(cutoffs == np.datetime64(fold.origin - pd.Timedelta(days=30)))
    assert late.size  # a cutoff 30 days before the test: its 90-day label closes after the test cutoff
    leaky = Fold(fold.origin, fold.window_start, np.r_[fold.train, late], fold.evaluate)
    with pytest.raises(LeakageError, match="close after the evaluated window"):
        check_fold(df, leaky, plan.horizon)
    early = plan_cutoffs(wh, "churn", Settings(split={**S.split.model_dump(), "as_of": str(plan.latest)}))
    with pytest.raises(LeakageError, match="after the as-of date"):
        refit_rows(df, early)  # the frame holds labels the earlier as-of date may not see


def test_training_frame_is_built_once_and_capped_by_customer(
    wh: Warehouse, sets: dict[str, pd.DataFrame], planned: dict[str, pd.DataFrame]
) -> None:
    plan = plan_cutoffs(wh, "return", S)
    cache: dict = {}
    full = build_training_frame(wh, "return", plan, S, cache)
    frames_cached = [k for k in cache if ":labels:" not in k[0]]
    labels_cached = [k for k in cache if ":labels:" in k[0]]
    assert len(full) == len(planned["return"])
    assert len(frames_cached) == len(labels_cached) == len(plan.cutoffs)  # one of each per cutoff
    assert len(full) > len(sets["return"])  # the moments between 30-day cutoffs are kept
    assert any("moments of the 29 days" in n for n in full.attrs["notes"])
    again = build_training_frame(wh, "return", plan, S, cache)
    pd.testing.assert_frame_equal(full, again)
    small = Settings(split={**S.split.model_dump(), "max_training_rows": len(full) // 2})
    capped = build_training_frame(wh, "return", plan, small)
    assert 0 < len(capped) < len(full) and any("stable" in n for n in capped.attrs["notes"])
    kept = set(capped["customer_id"])
    assert not (set(full["customer_id"]) - kept) & kept  # whole customers are kept or dropped
    assert full[full["customer_id"].isin(kept)].shape[0] == len(capped)


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
        assert len(seen) >= (4 if model == "churn" else 1)  # order models: the day's moments only
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


def test_the_order_models_share_one_feature_pass_with_the_same_frames(
    wh: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15.2: one order pass serves return and negative_review, value for value as apart."""
    from tasks.models import datasets

    passes: list[int] = []
    real = datasets.order_features

    def counted(*args: object, **kwargs: object) -> pd.DataFrame:
        passes.append(1)
        return real(*args, **kwargs)

    for day in (END - pd.Timedelta(days=d) for d in (105, 160, 235)):  # days both models have orders
        apart = {model: scoring_frame(wh, model, day, S) for model in MODELS}
        monkeypatch.setattr(datasets, "order_features", counted)
        passes.clear()
        together = scoring_frames(wh, list(MODELS), day, S)
        monkeypatch.setattr(datasets, "order_features", real)
        assert len(passes) == 1
        shared = set(apart["return"]["order_id"]) & set(apart["negative_review"]["order_id"])
        assert len(apart["return"]) and len(apart["negative_review"])
        for model in MODELS:  # to the last bits a sum over lines in another order may move
            pd.testing.assert_frame_equal(together[model], apart[model], check_exact=False, rtol=1e-12, atol=0)
        if shared:  # an order in both populations has one set of features
            one = together["return"].set_index("order_id").loc[sorted(shared)]
            other = together["negative_review"].set_index("order_id").loc[sorted(shared)]
            common = [c for c in one.columns if c in other.columns and c != CUTOFF]
            pd.testing.assert_frame_equal(one[common].astype(str), other[common].astype(str))


def test_the_order_models_training_frames_built_together_equal_those_built_apart(
    wh: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15.2: one order pass per shared cutoff, the same rows and values as apart (also sampled)."""
    from tasks.models import datasets

    real, passes = datasets.order_features, []

    def counted(*args: object, **kwargs: object) -> pd.DataFrame:
        passes.append(kwargs["cutoff"] if "cutoff" in kwargs else args[1])  # appended from the frame threads
        return real(*args, **kwargs)

    same_day = S.split.model_copy(update={"as_of": "2026-05-20"})  # both plans end on the same cutoff
    for settings in (S.model_copy(update={"split": same_day}),
                     S.model_copy(update={"split": same_day.model_copy(update={"max_training_rows": 40})})):
        plans = {m: plan_cutoffs(wh, m, settings) for m in ("return", "negative_review")}
        assert plans["return"].cutoffs == plans["negative_review"].cutoffs
        apart = {m: build_training_frame(wh, m, p, settings) for m, p in plans.items()}
        monkeypatch.setattr(datasets, "order_features", counted)
        passes.clear()
        together = build_training_frames(wh, plans, settings)
        monkeypatch.setattr(datasets, "order_features", real)
        assert len(passes) == len(set(passes)) <= len(plans["return"].cutoffs), "one order pass per cutoff"
        for model in plans:
            assert len(together[model]) == len(apart[model]) > 0
            pd.testing.assert_frame_equal(together[model], apart[model], check_exact=False, rtol=1e-12, atol=0)
            assert together[model].attrs["notes"] == apart[model].attrs["notes"]
    assert any("max_training_rows" in n for n in together["return"].attrs["notes"])


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
    plans = {m: plan_cutoffs(wh, m, settings) for m in MODELS}
    sets = {m: build_training_frame(wh, m, plans[m], settings) for m in MODELS}
    wh.close()
    for model, df in sets.items():
        folds = origin_folds(df, plans[model])  # checked for leaks as they are cut
        assert len(folds) == settings.split.backtest_origins, model
        assert all(f.train.size and f.evaluate.size for f in folds), model
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
    # DuckDB adds a group's doubles in whichever order its threads finish: 31.24 vs 31.240000000000002
    # (mean_unit_price) once in a CI run. Skew would be far larger than the last bits
    pd.testing.assert_frame_equal(seen, rows, check_exact=False, rtol=1e-12, atol=0)


def test_training_set_contract_rejects_bad_rows(sets: dict[str, pd.DataFrame]) -> None:
    from pandera.errors import SchemaError, SchemaErrors

    df = sets["return"]
    schema = training_set_schema("return")
    bad_label = df.copy()
    bad_label.loc[0, LABEL] = 2
    for bad in (bad_label, df.drop(columns=CUTOFF), pd.concat([df, df.iloc[:1]], ignore_index=True)):
        with pytest.raises((SchemaError, SchemaErrors)):
            schema.validate(bad)


def test_cutoffs_built_side_by_side_equal_those_built_one_after_another(
    wh: Warehouse, planned: dict[str, pd.DataFrame]
) -> None:
    """Frames built on several threads (each its own cursor) are the frames built on one, row for row;
    inside a write transaction the work stays on the one connection that sees the open rows."""
    built = {}
    for threads in (1, 3):
        settings = S.model_copy(update={"split": S.split.model_copy(update={"frame_threads": threads})})
        plans = {m: plan_cutoffs(wh, m, settings) for m in MODELS}
        built[threads] = build_training_frames(wh, plans, settings, cache={})
    for model in MODELS:
        assert len(built[3][model]) == len(planned[model]) > 0
        # to the last bits: DuckDB's parallel sums move there between two serial builds too (7e-15 here)
        pd.testing.assert_frame_equal(built[3][model], built[1][model], check_exact=False, rtol=1e-12, atol=0)
        pd.testing.assert_frame_equal(built[3][model], planned[model], check_exact=False, rtol=1e-12, atol=0)
    seen: list[Warehouse] = []
    with wh.transaction():
        assert side_by_side(wh, [seen.append] * 3, threads=3) == [None] * 3
    assert seen == [wh] * 3
    others: list[Warehouse] = []
    side_by_side(wh, [others.append] * 4, threads=2)
    assert len(others) == 4 and wh not in others


def test_many_cutoffs_to_a_query_equal_one_query_per_cutoff(wh: Warehouse, planned: dict[str, pd.DataFrame]) -> None:
    """The training frames (labels and features of many cutoffs per LATERAL query, all of them here,
    then two at a time) equal the frames built one cutoff and one query at a time, row for row."""
    singles = S.model_copy(update={"split": S.split.model_copy(update={"feature_batch_rows": 1})})
    for model in MODELS:
        plan = plan_cutoffs(wh, model, S)
        one_by_one = build_training_set(wh, model, list(plan.cutoffs), frame_settings(model, plan, singles)[0])
        assert len(one_by_one) > 0 and len(plan.cutoffs) > 2
        pd.testing.assert_frame_equal(planned[model], one_by_one, check_exact=False, rtol=1e-12, atol=0)
        many = labels_at_cutoffs(wh, model, plan.cutoffs, S)
        assert many[CUTOFF].is_monotonic_increasing and set(many[CUTOFF]) <= set(plan.cutoffs)
        for cutoff in plan.cutoffs:
            alone, part = labels(wh, model, cutoff, S), many[many[CUTOFF] == cutoff]
            assert len(part) == len(alone)
            if len(alone):
                pd.testing.assert_frame_equal(part.drop(columns=CUTOFF).reset_index(drop=True), alone)
    with pytest.raises(ValueError, match="not matured"):
        labels_at_cutoffs(wh, "return", [*plan.cutoffs, END - pd.Timedelta(days=5)], S)
    largest = max(wh.row_count(table) for table in TABLES)
    pairs = S.model_copy(update={"split": S.split.model_copy(update={"feature_batch_rows": 2 * largest + 1})})
    assert {len(batch) for batch in cutoff_batches(wh, plan.cutoffs, pairs)[:-1]} == {2}
    assert len(cutoff_batches(wh, plan.cutoffs, S)) == 1
    assert {len(batch) for batch in cutoff_batches(wh, plan.cutoffs, singles)} == {1}
    for settings in (pairs, singles):
        batched = build_training_frames(wh, {m: plan_cutoffs(wh, m, settings) for m in MODELS}, settings, cache={})
        for model in MODELS:
            pd.testing.assert_frame_equal(batched[model], planned[model], check_exact=False, rtol=1e-12, atol=0)


def test_join_one_to_one_is_the_validated_merge() -> None:
    """The shortcut (same unique keys in the same order) returns what the merge returns, and every
    other case still goes through the merge: reordered, missing or duplicated keys."""
    feats = pd.DataFrame({"customer_id": ["a", "b", "c"], "x": [1.0, 2.0, np.nan],
                          "region": pd.Categorical(["n", "s", None])})
    rows = pd.DataFrame({"customer_id": ["a", "b", "c"], LABEL: pd.array([1, 0, 1], dtype="int64")})
    cases = {"same order": rows, "reordered": rows.iloc[[2, 0, 1]].reset_index(drop=True),
             "missing": rows.iloc[[0, 2]].reset_index(drop=True), "keys only": rows[["customer_id"]]}
    for kind, other in cases.items():
        expected = feats.merge(other, on="customer_id", how="inner", validate="1:1")
        pd.testing.assert_frame_equal(join_one_to_one(feats, other, "customer_id"), expected, obj=kind)
    twice = pd.concat([rows, rows.iloc[[0]]], ignore_index=True)
    with pytest.raises(pd.errors.MergeError):
        join_one_to_one(pd.concat([feats, feats.iloc[[0]]], ignore_index=True), twice, "customer_id")
    joined = join_one_to_one(feats, rows, "customer_id")
    joined.loc[0, "x"] = 99.0
    assert feats.loc[0, "x"] == 1.0, "the caller's features are not written through"


def test_in_order_says_when_a_sort_would_change_nothing() -> None:
    day, other = pd.Timestamp("2026-01-01"), pd.Timestamp("2026-02-01")
    assert in_order(pd.DataFrame({CUTOFF: [day] * 3, "k": ["a", "b", "b"]}), [CUTOFF, "k"])
    assert not in_order(pd.DataFrame({CUTOFF: [day] * 3, "k": ["a", "c", "b"]}), [CUTOFF, "k"])
    assert not in_order(pd.DataFrame({CUTOFF: [day, other], "k": ["a", "b"]}), [CUTOFF, "k"])
    assert in_order(pd.DataFrame({CUTOFF: pd.Series(dtype="datetime64[ns]"), "k": pd.Series(dtype=str)}),
                    [CUTOFF, "k"])
