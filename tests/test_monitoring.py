"""Drift statistics, a planted shift and realised performance on a generated shop.

Real parts only: the shop is generated and ingested into DuckDB, the models are trained by
``train_flow`` into a SQLite MLflow registry, and scoring runs through the real scoring code. The
planted shifts rewrite a copy of the ingested warehouse: a new carrier that is always late on 40%
of the last 60 days' orders, and electronics prices tripled over the same 60 days.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from flows.runtime import run_flow_state
from schemas.monitoring import PERFORMANCE_TABLE
from schemas.settings import MonitoringSettings, Settings, reset_settings_cache
from tasks.data.warehouse import Warehouse
from tasks.monitoring.checks import (
    Check,
    ModelDrift,
    binned_counts,
    categorical_drift,
    comparable_features,
    decide,
    drift_for_day,
    gate_decision,
    judge,
    numeric_drift,
    performance_checks,
    psi,
    reference_edges,
)

pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")

RUN_DATE = "2026-11-02"  # the day after the generated shop's last day: production's "today"
STABLE_DAYS = ("2026-10-29", "2026-10-30", "2026-10-31", "2026-11-01", RUN_DATE)  # consecutive daily runs
MATURED = "2026-09-20"  # return / review windows (30 days) passed by 2026-11-01; churn's (90 days) not
IMMATURE = "2026-10-20"  # the return window has not passed yet
SHIFT_SINCE = "2026-09-03"  # the planted shifts cover the 60 days before the run date
NEW_CARRIER = "JetLate"
DELIVERY = {"carrier", "carrier_late_rate", "days_late", "is_late", "is_delivered", "days_since_delivery",
            "days_since_order", "promised_days"}
PRICE = {"order_value", "mean_unit_price", "max_unit_price", "discount_share", "value_vs_customer_median"}
CHURN_DELIVERY = {"late_deliveries", "late_delivery_rate", "days_since_bad_experience"}
CFG = MonitoringSettings()


# ============================================================================ statistics (no data)


def test_psi_is_zero_on_identical_data_and_grows_with_the_shift() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=5_000)
    edges = reference_edges(ref, 10, CFG.resolution)
    same = psi(binned_counts(ref, edges), binned_counts(ref, edges))
    small = psi(binned_counts(ref, edges), binned_counts(ref + 0.1, edges))
    large = psi(binned_counts(ref, edges), binned_counts(ref + 1.0, edges))
    assert same == pytest.approx(0.0, abs=1e-9) and 0 < small < 0.05 < 0.25 < large


def test_bin_edges_keep_clear_of_point_masses_that_creep() -> None:
    """A smoothed carrier late rate: five values per day, each moving a hair from day to day."""
    rng = np.random.default_rng(2)
    carriers = np.array([0.053, 0.055, 0.060, 0.094, 0.458])
    ref = np.concatenate([rng.choice(carriers + rng.normal(0, 0.002, 5), 300) for _ in range(8)])
    cur = rng.choice(carriers + 0.003, 400)
    tolerant = numeric_drift("carrier_late_rate", pd.Series(ref), pd.Series(cur), CFG)
    naive = numeric_drift("carrier_late_rate", pd.Series(ref), pd.Series(cur), CFG.model_copy(update={"resolution": 0}))
    assert naive.psi > 0.5, "plain quantile edges split the point masses"
    assert tolerant.psi < 0.05
    moved = numeric_drift("carrier_late_rate", pd.Series(ref), pd.Series(np.r_[cur[:240], np.full(160, 0.9)]), CFG)
    assert judge(moved, CFG).status == "drift", "a real move (a carrier at 90% late) still counts"


def test_drift_needs_psi_and_its_test_to_agree() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=2_000)
    deciles = np.quantile(ref, np.linspace(0, 1, 11))
    comb = np.concatenate([rng.uniform(deciles[i], deciles[i + 1], 20) for i in range(0, 10, 2)])  # every other bin
    shape_only = judge(numeric_drift("x", pd.Series(ref), pd.Series(comb), CFG), CFG)
    assert shape_only.psi > 1 and shape_only.p_value > CFG.p_value and shape_only.status == "ok"
    tiny = judge(numeric_drift("x", pd.Series(rng.normal(size=20_000)), pd.Series(rng.normal(0.08, 1, 20_000)), CFG),
                 CFG)
    assert tiny.p_value < CFG.p_value and tiny.psi < CFG.psi_warn and tiny.status == "ok"
    big = judge(numeric_drift("x", pd.Series(rng.normal(size=2_000)), pd.Series(rng.normal(1.5, 1, 300)), CFG), CFG)
    assert big.status == "drift" and "PSI" in big.reason and "KS" in big.reason


def test_ks_is_exact_on_small_samples_and_asymptotic_on_large_ones() -> None:
    """Exact KS on two large samples of counts costs 5-20 ms a feature (scipy's own rule keeps it up to
    10,000 values); the asymptotic p-value is within a hair of it there, so large days use it."""
    from scipy import stats

    rng = np.random.default_rng(5)
    ref, cur = rng.poisson(2.0, 4_000).astype(float), rng.poisson(2.1, 3_001).astype(float)
    large = numeric_drift("orders_90d", pd.Series(ref), pd.Series(cur), CFG)
    assert large.p_value == pytest.approx(stats.ks_2samp(ref, cur, method="asymp").pvalue)
    assert large.p_value == pytest.approx(stats.ks_2samp(ref, cur, method="exact").pvalue, abs=0.005)
    small = numeric_drift("orders_90d", pd.Series(ref[:500]), pd.Series(cur[:400]), CFG)
    assert small.p_value == pytest.approx(stats.ks_2samp(ref[:500], cur[:400], method="exact").pvalue)
    assert small.p_value != pytest.approx(stats.ks_2samp(ref[:500], cur[:400], method="asymp").pvalue, abs=1e-9)


def test_unseen_categories_and_missing_values_are_drift_on_their_own() -> None:
    ref = pd.Series(["a"] * 500 + ["b"] * 500)
    cur = pd.Series(["a"] * 190 + ["b"] * 190 + ["new"] * 20)
    check = judge(categorical_drift("carrier", ref, cur), CFG)
    assert check.unseen_share == pytest.approx(0.05) and check.unseen_values == "new (20)"
    assert check.status == "drift" and "never had" in check.reason
    values = np.random.default_rng(4).normal(size=1_000)
    holes = values.copy()
    holes[:300] = np.nan
    missing = judge(numeric_drift("x", pd.Series(values), pd.Series(holes), CFG), CFG)
    assert missing.current_missing == pytest.approx(0.3) and missing.status == "drift"
    assert "missing 30% vs 0%" in missing.reason


def test_a_missing_share_moves_by_chance_on_a_small_day_but_not_on_a_large_one() -> None:
    """Half the review model's rows are undelivered (days_since_delivery empty); a day of 30 can read 63%."""
    ref = pd.Series([np.nan, 1.0] * 300)
    small = pd.Series([np.nan] * 19 + [1.0] * 11)
    check = judge(numeric_drift("days_since_delivery", ref, small, CFG), CFG.model_copy(update={"min_rows": 20}))
    assert check.current_missing - check.reference_missing >= CFG.missing_delta and check.status != "drift"
    large = pd.Series([np.nan] * 1_300 + [1.0] * 700)
    assert judge(numeric_drift("days_since_delivery", ref, large, CFG), CFG).status == "drift"


def test_drift_is_judged_on_what_the_version_was_trained_with() -> None:
    """Features added since, or entirely missing in the reference (texts before `aftersales text`), are no drift."""
    ref = pd.DataFrame({"days_late": np.arange(200.0), "negative_text_count": np.nan, "new_feature": 1.0})
    cur = pd.DataFrame({"days_late": np.arange(100.0), "negative_text_count": 3.0, "new_feature": 5.0,
                        "later_code": 1.0})
    assert comparable_features(ref, cur) == ["days_late", "new_feature"]
    assert comparable_features(ref, cur, trained=["days_late", "negative_text_count"]) == ["days_late"]


def test_unseen_levels_are_those_the_model_never_trained_on() -> None:
    """A level in training but not in the reference sample is not new; one outside training is."""
    ref = pd.Series(["dhl"] * 300 + ["ups"] * 300)
    cur = pd.Series(["dhl"] * 90 + ["fedex"] * 5 + ["JetLate"] * 5)
    check = judge(categorical_drift("carrier", ref, cur, trained=["dhl", "fedex", "ups", "unknown"]), CFG)
    assert check.unseen_values == "JetLate (5)" and check.unseen_share == pytest.approx(0.05)
    assert check.status == "drift"


def pooled(n_runs: int, per_run: int, seed: int, truth=lambda p: p) -> pd.DataFrame:
    """Untreated labelled rows of ``n_runs`` runs; labels drawn from ``truth(p)`` (identity: calibrated)."""
    rng = np.random.default_rng(seed)
    n = n_runs * per_run
    p = rng.beta(2, 5, n)
    return pd.DataFrame({"run_date": np.repeat(pd.date_range("2026-09-01", periods=n_runs), per_run),
                         "customer_id": [f"c{i % (n // 2)}" for i in range(n)],  # customers recur across runs
                         "probability": p, "label": (rng.uniform(size=n) < truth(p)).astype(int)})


def test_performance_checks_pool_rows_and_judge_them_at_the_pooled_size() -> None:
    fast = CFG.model_copy(update={"bootstrap_draws": 200})
    rows = pooled(4, 100, seed=1)
    checks = {c.check: c for c in performance_checks(rows, {"roc_auc": 0.72, "pr_auc": 0.45}, fast)}
    assert set(checks) == {"roc_auc", "pr_auc", "calibration"} and not any(c.crossed for c in checks.values())
    assert "400 untreated rows" in checks["calibration"].detail
    worse = {c.check: c for c in performance_checks(rows, {"roc_auc": 0.95, "pr_auc": 0.9}, fast)}
    assert worse["roc_auc"].crossed and worse["roc_auc"].threshold == pytest.approx(0.90)
    assert worse["pr_auc"].crossed
    off = {c.check: c for c in performance_checks(pooled(4, 100, seed=2, truth=lambda p: np.clip(p + 0.2, 0, 1)),
                                                  {}, fast)}
    assert off["calibration"].crossed, "20 points of under-prediction on 400 rows is not chance"
    thin = performance_checks(rows.head(40), {"roc_auc": 0.8}, fast)
    assert [c.check for c in thin] == ["performance"] and not thin[0].crossed


@pytest.mark.parametrize("per_run", [50, 100])
def test_a_calibrated_model_rarely_triggers_a_retrain(per_run: int) -> None:
    """The old rule (mean per-run ECE > 0.1) fired in most runs at these sizes; the pooled null test must not."""
    fast = CFG.model_copy(update={"bootstrap_draws": 200})
    old_rule = fired = 0
    repeats = 40
    for seed in range(repeats):
        rows = pooled(CFG.performance_runs, per_run, seed=100 + seed)
        per_run_ece = rows.groupby("run_date").apply(
            lambda g: performance_checks_ece(g), include_groups=False).mean()
        old_rule += per_run_ece > 0.1
        fired += any(c.crossed for c in performance_checks(rows, {}, fast, seed=seed))
    print(f"{per_run} rows/run: old rule fired {old_rule}/{repeats}, pooled test {fired}/{repeats}")
    assert fired <= 0.1 * repeats
    assert old_rule > fired


def performance_checks_ece(g: pd.DataFrame) -> float:
    from tasks.models.evaluation import expected_calibration_error

    return expected_calibration_error(g["label"].to_numpy(), g["probability"].to_numpy())


def test_a_retrain_cools_down_and_can_be_switched_off() -> None:
    crossed = [Check("drifted_features", 5, 3, True)]
    now = pd.Timestamp("2026-11-02 08:00")
    assert decide("return", "v1", crossed, None, now, CFG).decision == "retrain"
    assert decide("return", "v1", [Check("score_psi", 0.1, 0.25, False)], None, now, CFG).decision == "none"
    previous = pd.Series({"decided_at": now - pd.Timedelta(days=2), "flow_run_id": "abc"})
    held = decide("return", "v1", crossed, previous, now, CFG)
    assert held.decision == "cooldown" and "abc" in held.reason and "2026-11-07" in held.reason
    later = decide("return", "v1", crossed, previous, now + pd.Timedelta(days=6), CFG)
    assert later.decision == "retrain"
    off = decide("return", "v1", crossed, None, now, CFG.model_copy(update={"retrain": "off"}))
    assert off.decision == "disabled"


# ======================================================================== a generated, trained shop


@dataclass
class Shop:
    home: Path
    stable: Path
    late_carrier: Path
    price_change: Path

    def settings(self, warehouse: Path | None = None) -> Settings:
        return Settings(paths={"home": self.home, "warehouse": warehouse or self.stable})


def plant_late_carrier(wh: Warehouse, since: str, share_pct: int = 40, late_days: int = 4) -> None:
    """A new carrier takes ``share_pct`` % of the orders since ``since`` and delivers every one late."""
    end = wh.scalar("SELECT max(ordered_at) FROM orders")
    due = f"promised_at + INTERVAL {late_days} DAY"
    wh.con.execute(f"""
        UPDATE orders SET carrier = '{NEW_CARRIER}',
            delivered_at = CASE WHEN {due} <= ? THEN {due} END,
            status = CASE WHEN {due} <= ? THEN 'delivered' ELSE 'shipped' END
        WHERE ordered_at >= ? AND status <> 'cancelled' AND promised_at IS NOT NULL
          AND hash(order_id) % 100 < {share_pct}""", [end, end, pd.Timestamp(since).to_pydatetime()])


def plant_price_change(wh: Warehouse, since: str, category: str = "electronics", factor: float = 3.0) -> None:
    """Unit prices of one category multiplied since ``since``; order totals follow."""
    params = [category, pd.Timestamp(since).to_pydatetime()]
    wh.con.execute(f"""
        UPDATE orders o SET total_amount = o.total_amount + x.extra FROM (
            SELECT i.order_id, sum(i.quantity * i.unit_price) * {factor - 1} AS extra
            FROM order_items i JOIN products p USING (product_id) JOIN orders oo USING (order_id)
            WHERE p.category = ? AND oo.ordered_at >= ? GROUP BY 1) x
        WHERE x.order_id = o.order_id""", params)
    wh.con.execute(f"""
        UPDATE order_items i SET unit_price = i.unit_price * {factor}
        FROM products p, orders o
        WHERE p.product_id = i.product_id AND o.order_id = i.order_id AND p.category = ? AND o.ordered_at >= ?""",
                   params)


def shifted_copy(source: Path, target: Path, *plants) -> Path:
    shutil.copy(source, target)
    wh = Warehouse(target)
    try:
        for plant in plants:
            plant(wh, SHIFT_SINCE)
    finally:
        wh.close()
    return target


def build_trained_shop(root: Path, customers: int = 3_000, seed: int = 5) -> Path:
    """Generate, ingest and train (``train_flow``) into ``root/home``; the settings come from the env."""
    from flows.train import train_flow
    from tasks.data.ingest import ingest_batch
    from tasks.data.synthetic import generate_shop

    settings = Settings()
    generate_shop(root / "data", customers=customers, seed=seed, dirty_share=0.0)
    wh = Warehouse(settings.warehouse_path)
    try:
        ingest_batch(root / "data", wh, settings)
    finally:
        wh.close()
    state = run_flow_state(train_flow)
    assert not state.is_failed(), state.message
    return settings.warehouse_path


@contextmanager
def trained_shop(root: Path) -> Iterator[Path]:
    """``build_trained_shop`` with home ``root/home`` and small models; those settings hold inside the block."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AFTERSALES_PATHS__HOME", str(root / "home"))
        mp.setenv("AFTERSALES_TRAINING__XGB__N_ESTIMATORS", "150")
        mp.setenv("AFTERSALES_TRAINING__SHAP_SAMPLE_ROWS", "300")
        # daily cutoffs, as order models are trained (each order once per moment): the reference
        # (validation + test windows) then holds the same kind of daily populations that are scored
        mp.setenv("AFTERSALES_SPLIT__CUTOFF_STEP_DAYS", "1")
        mp.setenv("AFTERSALES_SPLIT__N_CUTOFFS", "36")
        reset_settings_cache()
        yield build_trained_shop(root)
    reset_settings_cache()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, prefect_api: None) -> Iterator[Shop]:
    root = tmp_path_factory.mktemp("monitoring")
    with trained_shop(root) as stable:
        yield Shop(root / "home", stable,
                   shifted_copy(stable, root / "late_carrier.duckdb", plant_late_carrier),
                   shifted_copy(stable, root / "price_change.duckdb", plant_price_change))


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    yield
    reset_settings_cache()


def score_day(settings: Settings, day: str) -> None:
    """The scoring run's own scoring step: every population scored and written to ``scores``."""
    from flows.score import score_one, score_populations
    from tasks.models.scoring import load_champions

    champions = load_champions(settings, list(settings.training.models))
    when = pd.Timestamp(day)
    scored = {model: score_one.fn(model, champion, when, settings) for model, champion in champions.items()}
    score_populations.fn(champions, scored, when, settings)


def drift_of(shop: Shop, warehouse: Path, day: str = RUN_DATE) -> dict[str, ModelDrift]:
    settings = shop.settings(warehouse)
    score_day(settings, day)
    wh = Warehouse(warehouse)
    try:
        return drift_for_day(wh, settings, day)
    finally:
        wh.close()


def figures(results: dict[str, ModelDrift], features: set[str]) -> dict[str, dict[str, tuple]]:
    """PSI and test p-value of the named features, per model (printed with -s, asserted on below)."""
    return {m: {c.feature: (round(c.psi or 0, 3), f"{c.p_value:.1e}", c.status) for c in r.checks
                if c.feature in features} for m, r in results.items()}


def test_a_stable_period_raises_nothing(shop: Shop) -> None:
    """Scored day after day, a shop that did not change shows no drift: not on the timing features
    (days since order / delivery), which the moment populations hold steady, nor on any other."""
    for day in STABLE_DAYS:
        results = drift_of(shop, shop.stable, day)
        print("stable", day, figures(results, DELIVERY | PRICE | {"probability"}))
        for model, result in results.items():
            assert result.status == "checked" and result.current_rows >= CFG.min_rows, (day, model)
            assert result.drifted == [], f"{day} {model}: {[(c.feature, c.reason) for c in result.checks if c.reason]}"
            assert not result.score_drift and not result.severe(CFG)
        assert gate_decision(results, day, CFG).action == "none"


def test_retraining_on_unchanged_data_reuses_the_version_without_fitting(shop: Shop) -> None:
    """The same rows, code and configuration: the registered version and its test metrics are
    returned before any booster is fitted (the fit would only reproduce them), nothing is logged."""
    from flows.train import train_and_register
    from tasks.models.registry import configure

    settings = shop.settings()
    client = configure(settings)
    name = settings.registered_model_name("churn")
    versions = {str(v.version) for v in client.search_model_versions(f"name = '{name}'")}
    result = train_and_register.fn("churn", settings)
    assert result["new_version"] is False and result["version"] in versions
    assert "not fitted again" in result["notes"][0]
    assert "tuning" not in result["step_seconds"] and "refit booster" not in result["step_seconds"]
    registered = client.get_run(client.get_model_version(name, result["version"]).run_id).data.metrics
    for metric in ("test_roc_auc", "test_pr_auc", "test_brier"):
        assert result["metrics"][metric] == registered[metric]
    assert 0 < result["metrics"]["baseline_logreg_test_roc_auc"] < 1, "the baselines' metrics come back too"
    assert {str(v.version) for v in client.search_model_versions(f"name = '{name}'")} == versions


def test_a_new_always_late_carrier_is_detected_on_delivery_features_only(shop: Shop) -> None:
    results = drift_of(shop, shop.late_carrier)
    print("late carrier:", figures(results, DELIVERY | PRICE | CHURN_DELIVERY | {"probability"}))
    for model in ("return", "negative_review"):
        result = results[model]
        drifted = set(result.drifted)
        # two weeks of moment populations (~200 orders at delivery on this small shop): the new carrier and
        # at least two more delivery features drift, the carrier's late rate at least warns
        assert "carrier" in drifted and len(drifted) >= 3, (model, drifted)
        assert drifted <= DELIVERY, f"{model}: unrelated features flagged: {drifted - DELIVERY}"
        assert {"carrier_late_rate", "is_late"} & drifted and "carrier_late_rate" in drifted | set(result.warned)
        carrier = next(c for c in result.checks if c.feature == "carrier")
        assert NEW_CARRIER in carrier.unseen_values and carrier.test == "chi2" and carrier.p_value < 1e-6
        assert result.severe(CFG)
    assert set(results["churn"].drifted) <= CHURN_DELIVERY
    decision = gate_decision(results, RUN_DATE, CFG)
    assert decision.severe and set(decision.models) == {"return", "negative_review"}


def test_a_price_change_in_one_category_is_detected_on_price_features_only(shop: Shop) -> None:
    results = drift_of(shop, shop.price_change)
    print("price change:", figures(results, PRICE | DELIVERY | {"probability"}))
    stable = drift_of(shop, shop.stable)  # the same day unchanged: customer tenure, which ages with the shop, warns
    for model in ("return", "negative_review"):
        flagged = set(results[model].drifted) | set(results[model].warned)
        flagged -= set(stable[model].warned) - PRICE  # what the change added, besides the day's own warnings
        # every price feature moves; on the return model's ~200 deliveries of two weeks (electronics a
        # minority of them) the move is a warning, on the review model's larger population a drift
        assert {"order_value", "mean_unit_price", "max_unit_price"} <= flagged, (model, flagged)
        assert flagged <= PRICE, f"{model}: unrelated features flagged: {flagged - PRICE}"
    assert {"order_value", "max_unit_price"} <= set(results["negative_review"].drifted)
    assert results["churn"].drifted == [] or set(results["churn"].drifted) <= {"value_90d", "value_365d",
                                                                                "avg_order_value"}


def test_the_first_mornings_pooled_days_take_one_pass_a_day_and_equal_the_days_computed_alone(
    shop: Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: no earlier day kept (a fresh warehouse path), the gate computes the pooled days of
    both order models in one feature pass a day, value for value as each day's own scoring frame."""
    from tasks.models import datasets
    from tasks.models.datasets import scoring_frame
    from tasks.monitoring.checks import fill_population_pools, population_columns, population_path

    copy = Path(shutil.copy(shop.stable, tmp_path / "fresh.duckdb"))
    settings = shop.settings(copy)
    score_day(settings, RUN_DATE)
    real, passes = datasets.order_features, []

    def counted(*args: object, **kwargs: object) -> pd.DataFrame:
        passes.append(args[1])
        return real(*args, **kwargs)

    wh = Warehouse(copy)
    try:
        monkeypatch.setattr(datasets, "order_features", counted)
        days = fill_population_pools(wh, settings, RUN_DATE, ["return", "negative_review", "churn"])
        pooled = [pd.Timestamp(RUN_DATE) - pd.Timedelta(days=b) for b in range(1, days + 1)]
        sizes = {(d, m): len(pd.read_parquet(population_path(settings, m, d)))
                 for d in pooled for m in ("return", "negative_review")}
        assert days == settings.monitoring.drift_pool_days - 1
        assert len(passes) == days == sum(sizes[d, "return"] > 0 and sizes[d, "negative_review"] > 0 for d in pooled)
        assert fill_population_pools(wh, settings, RUN_DATE, ["return", "negative_review"]) == 0
        assert len(passes) == days  # kept: nothing computed twice
        monkeypatch.setattr(datasets, "order_features", real)
        for back in (1, days):
            day = pd.Timestamp(RUN_DATE) - pd.Timedelta(days=back)
            for model in ("return", "negative_review"):
                kept = pd.read_parquet(population_path(settings, model, day))
                alone = scoring_frame(wh, model, day, settings)[population_columns(model)]
                assert len(alone), (day, model)
                pd.testing.assert_frame_equal(kept, alone, check_exact=False, rtol=1e-12, atol=0)
    finally:
        wh.close()


def test_realised_performance_only_for_matured_runs_and_as_sklearn_computes_it(shop: Shop, monkeypatch) -> None:
    from flows.score import score_flow
    from tasks.care.treatment import treatment_mask
    from tasks.models.labels import entity_key, labels
    from tasks.monitoring.checks import realised_performance_task

    monkeypatch.setenv("AFTERSALES_PATHS__WAREHOUSE", str(shop.stable))
    reset_settings_cache()
    settings = shop.settings()
    state = run_flow_state(score_flow, run_date=pd.Timestamp(MATURED).date())  # scores + that day's list
    assert not state.is_failed(), state.message
    score_day(settings, IMMATURE)

    new, history = realised_performance_task(settings)
    assert len(history) == len(new)
    assert {(f"{d:%Y-%m-%d}", m) for d, m in zip(new["run_date"], new["model"], strict=True)} == {
        (MATURED, "return"), (MATURED, "negative_review")}, "churn (90 days) and the later run are not matured"

    wh = Warehouse(shop.stable)
    try:
        for model in ("return", "negative_review"):
            row = new[new["model"] == model].iloc[0]
            key = entity_key(model)
            risks = ("return",) if model == "return" else ("negative_review", "late_delivery")
            scores = wh.query(f"SELECT {key}, probability FROM scores WHERE run_date = ? AND risk IN "
                              f"({', '.join('?' for _ in risks)})", [pd.Timestamp(MATURED).to_pydatetime(), *risks])
            joined = scores.merge(labels(wh, model, MATURED, settings)[[key, "customer_id", "label"]],
                                  on=key).sort_values(key)
            # customers on that day's task list were treated: their outcomes are not the model's to judge
            listed_customers = set(wh.query("SELECT customer_id FROM task_list WHERE run_date = ?",
                                            [pd.Timestamp(MATURED).to_pydatetime()])["customer_id"])
            treated = treatment_mask(wh, joined.assign(run_date=pd.Timestamp(MATURED)), model, settings,
                                     cutoff_column="run_date")
            assert treated.sum() > 0 and set(joined.loc[treated, "customer_id"]) >= (
                listed_customers & set(joined["customer_id"]))
            stored = wh.query("SELECT * FROM monitoring_labelled WHERE model = ?", [model])
            assert len(stored) == len(joined) and int(stored["treated"].sum()) == int(treated.sum())
            everyone, joined = joined, joined[~treated]
            y, p = joined["label"].to_numpy(), joined["probability"].to_numpy()
            assert row["scored_rows"] == len(everyone) and row["n"] == len(joined) and row["positives"] == y.sum() > 0
            assert row["roc_auc"] == pytest.approx(roc_auc_score(y, p))
            assert row["pr_auc"] == pytest.approx(average_precision_score(y, p))
            assert row["brier"] == pytest.approx(brier_score_loss(y, p))
            top = np.argsort(-p, kind="stable")[: settings.training.top_k]
            assert row["precision_at_k"] == pytest.approx(y[top].mean())
            # ECE over sklearn's calibration_curve(strategy="quantile") bins: tied probabilities share a bin
            observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
            ids = np.searchsorted(np.percentile(p, np.linspace(0, 100, 11))[1:-1], p)
            sizes = np.bincount(ids)[np.bincount(ids) > 0]
            ece = float(np.sum(np.abs(observed - predicted) * sizes) / y.size)
            assert row["ece"] == pytest.approx(ece)
            listed = wh.query(f"SELECT {key}, rank FROM task_list WHERE run_date = ? AND risk_code IN "
                              f"({', '.join('?' for _ in risks)}) ORDER BY rank",
                              [pd.Timestamp(MATURED).to_pydatetime(), *risks]).merge(everyone, on=key)
            assert row["listed"] == len(listed) and row["listed_positives"] == listed["label"].sum()
            at_k = json.loads(row["listed_precision_at_k"])
            for k in CFG.top_k:
                expected = listed["label"].head(k).mean() if len(listed) >= k else None
                assert at_k[str(k)] == (pytest.approx(expected) if expected is not None else None)
            assert len(json.loads(row["reliability"])) == 10
            assert row["expected_roc_auc"] > 0.5, "the version's test ROC-AUC is kept for the trend"
        assert wh.row_count(PERFORMANCE_TABLE) == 2
    finally:
        wh.close()

    again, _ = realised_performance_task(settings)
    assert again.empty, "a run is evaluated once"

    client = MlflowClient(settings.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("aftersales-return").experiment_id],
                              "tags.aftersales_monitoring = 'true'")
    assert len(runs) == 1 and runs[0].data.tags["model_version"] == "1"
    logged = client.get_metric_history(runs[0].info.run_id, "realised_roc_auc")
    step = (pd.Timestamp(MATURED) - pd.Timestamp("1970-01-01")).days
    assert [(m.step, round(m.value, 9)) for m in logged] == [
        (step, round(float(new.loc[new["model"] == "return", "roc_auc"].iloc[0]), 9))]
    assert os.path.exists(settings.reports_dir / "tasks" / MATURED / "tasks.csv")
