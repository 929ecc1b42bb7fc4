"""Model training, calibration, baselines and metrics on small synthetic data (no registry)."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from tasks.models.evaluation import (
    classification_metrics,
    expected_calibration_error,
    higher_is_better,
    plot_calibration,
    plot_feature_importance,
    plot_pr_curves,
    plot_shap_summary,
    precision_recall_at_k,
)
from tasks.models.training import (
    Calibrator,
    DataSplits,
    RuleSpec,
    score_window,
    split_validation,
    train_baselines,
    train_model,
)

pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")


def synthetic(n: int, seed: int, n_cutoffs: int = 3) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Planted signal with an interaction and thresholds a linear model cannot express."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(5)})
    X["days_late"] = rng.poisson(2, n).astype("int64")
    X["channel"] = pd.Categorical(rng.choice(["web", "app", "store"], n))
    X.loc[rng.random(n) < 0.05, "x1"] = np.nan
    logit = (
        -2.0
        + 2.0 * ((X["x0"] > 0) == (X["x1"].fillna(0) > 0))
        + 0.35 * X["days_late"]
        + 0.8 * (X["channel"] == "app")
        - 1.5 * (X["x2"].abs() > 1.2)
    )
    y = pd.Series((rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int), name="label")
    t = pd.Series(pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, n_cutoffs, n) * 30, unit="D"))
    return X, y, t


@pytest.fixture(scope="module")
def splits() -> DataSplits:
    X_tr, y_tr, t_tr = synthetic(5000, 1)
    X_va, y_va, t_va = synthetic(3000, 2)
    X_te, y_te, t_te = synthetic(4000, 3)
    return DataSplits(X_tr, y_tr, X_va, y_va, X_te, y_te, t_tr, t_va, t_te)


@pytest.fixture
def fast(settings):
    settings.training.xgb.n_estimators = 150
    settings.training.class_weighting = "balanced"  # full reweighting: what calibration must undo
    return settings


# --------------------------------------------------------------------------------------- metrics


def test_precision_recall_lift_at_k_match_hand_computation():
    y = np.array([1, 0, 1, 0, 0, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    m = classification_metrics(y, p, top_k=3)
    # top 3 = rows 0,1,2 -> 2 hits; 3 positives in all; base rate 0.3
    assert m["precision_at_k"] == pytest.approx(2 / 3)
    assert m["recall_at_k"] == pytest.approx(2 / 3)
    assert m["base_rate"] == pytest.approx(0.3)
    assert m["lift_at_k"] == pytest.approx((2 / 3) / 0.3)
    assert m["n"] == 10 and m["single_class"] == 0.0
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    # positives ranked 1, 3, 6 -> AP = (1/1 + 2/3 + 3/6) / 3
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    assert precision_recall_at_k(y, p, 100) == (pytest.approx(0.3), pytest.approx(1.0))


def test_ece_zero_when_bins_are_calibrated_and_positive_otherwise():
    y = np.array([1, 0, 0, 0, 0] * 4 + [1, 1, 1, 1, 0] * 4)
    p = np.array([0.2] * 20 + [0.8] * 20)
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.0)
    # tied scores share a bin (as sklearn's calibration_curve bins them), whatever the row order
    assert expected_calibration_error(y, np.full(40, 0.5), n_bins=2) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(40, 0.7), n_bins=2) == pytest.approx(0.2)
    assert expected_calibration_error(y, np.r_[np.full(20, 0.5), np.full(20, 0.9)], n_bins=2) == pytest.approx(0.2)


def test_bootstrap_matches_sklearn_on_all_rows_and_pairs_the_difference():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from tasks.models.evaluation import bootstrap_intervals

    rng = np.random.default_rng(0)
    y = rng.random(600) < 0.2
    good = np.round(y * 0.3 + rng.random(600), 2)  # ties, as calibrated scores have
    weak = good + rng.normal(0, 0.6, 600)
    table = bootstrap_intervals(y, {"model": good, "baseline_logreg": weak}, top_k=50, resamples=300, seed=1)
    row = table.set_index(["scorer", "metric"])
    assert row.loc[("model", "roc_auc"), "value"] == pytest.approx(roc_auc_score(y, good))
    assert row.loc[("model", "pr_auc"), "value"] == pytest.approx(average_precision_score(y, good))
    diff = row.loc[("model-baseline_logreg", "roc_auc")]
    assert 0 < diff["low"] < diff["value"] < diff["high"]  # the better scorer wins on paired resamples
    again = bootstrap_intervals(y, {"model": good, "baseline_logreg": weak}, top_k=50, resamples=300, seed=1)
    pd.testing.assert_frame_equal(table, again)  # seeded


def test_single_class_window_gives_nan_and_flag_not_an_error():
    m = classification_metrics(np.zeros(50), np.linspace(0, 1, 50), top_k=10)
    assert m["single_class"] == 1.0
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"]) and math.isnan(m["lift_at_k"])
    assert m["precision_at_k"] == 0.0 and math.isfinite(m["brier"])
    assert classification_metrics([], [], top_k=5)["n"] == 0.0
    assert not higher_is_better("brier") and not higher_is_better("test_log_loss") and higher_is_better("pr_auc")


# -------------------------------------------------------------------------------------- training


def test_model_beats_baselines_and_calibration_helps(splits, fast):
    trained = train_model(
        splits.X_train, splits.y_train, splits.X_valid, splits.y_valid, fast, valid_time=splits.t_valid
    )
    baselines = train_baselines(splits.X_train, splits.y_train, fast, RuleSpec("days_late"))
    scores = score_window(trained, baselines, splits.X_test)
    metrics = {name: classification_metrics(splits.y_test, p, 200) for name, p in scores.items()}

    assert metrics["model"]["roc_auc"] > 0.7
    assert metrics["model"]["roc_auc"] > metrics["baseline_logreg"]["roc_auc"] + 0.03
    assert metrics["model"]["roc_auc"] > metrics["baseline_rule"]["roc_auc"]
    assert metrics["model"]["brier"] <= metrics["model_raw"]["brier"]
    # isotonic ties are broken in the booster's order: ranking metrics are unchanged by calibration
    assert metrics["model"]["roc_auc"] == pytest.approx(metrics["model_raw"]["roc_auc"], abs=1e-9)
    assert trained.validation_split == "time"
    assert trained.n_early_stopping + trained.n_calibration == len(splits.y_valid)
    assert trained.scale_pos_weight == pytest.approx((splits.y_train == 0).sum() / splits.y_train.sum())


def test_same_data_and_seed_give_identical_predictions(splits, fast):
    args = (splits.X_train, splits.y_train, splits.X_valid, splits.y_valid, fast)
    first = train_model(*args, valid_time=splits.t_valid)
    second = train_model(*args, valid_time=splits.t_valid)
    assert first.best_iteration == second.best_iteration
    np.testing.assert_array_equal(first.predict_proba(splits.X_test), second.predict_proba(splits.X_test))


def test_model_object_scores_signed_input_and_explains(splits, fast):
    trained = train_model(
        splits.X_train, splits.y_train, splits.X_valid, splits.y_valid, fast, valid_time=splits.t_valid
    )
    model = trained.model
    X = splits.X_test.head(50).assign(order_id=range(50))  # extra columns are ignored
    signed = model.model_input(X)
    assert signed["channel"].dtype == object and signed["days_late"].dtype == "float64"
    np.testing.assert_allclose(model.predict(None, signed), trained.predict_proba(X))
    contributions = model.predict(None, signed, params={"output": "contributions"})
    assert list(contributions.columns) == [*trained.features, "bias"]
    np.testing.assert_allclose(contributions.sum(axis=1), model.margin(X), rtol=1e-4, atol=1e-4)
    unseen = X.assign(channel=pd.Categorical(["fax"] * 50))  # unseen level -> missing, no error
    assert np.isfinite(model.predict_proba(unseen)).all()


def test_validation_split_uses_latest_cutoffs_for_calibration():
    y = pd.Series([0, 1] * 30)
    t = pd.Series(np.repeat(pd.to_datetime(["2026-01-01", "2026-02-01", "2026-03-01"]), 20))
    mask, mode = split_validation(y, t, share=0.3, seed=0)
    assert mode == "time"
    assert set(t[mask]) == {pd.Timestamp("2026-03-01")}
    mask, mode = split_validation(y, None, share=0.5, seed=0)
    assert mode == "random" and mask.sum() == 30
    mask, mode = split_validation(pd.Series([0] * 30 + [1] * 30), t, share=0.3, seed=0)
    assert mode == "shared" and mask.all()


def test_plots_render(splits, fast):
    trained = train_model(
        splits.X_train, splits.y_train, splits.X_valid, splits.y_valid, fast, valid_time=splits.t_valid
    )
    y = splits.y_test
    p = trained.predict_proba(splits.X_test)
    sample = splits.X_test.head(200)
    figures = [
        plot_calibration(y, {"model": p, "raw": trained.raw_proba(splits.X_test)}),
        plot_pr_curves(y, {"model": p}),
        plot_feature_importance(trained.importance()),
        plot_shap_summary(trained.contributions(sample), sample),
    ]
    for figure in figures:
        assert isinstance(figure, Figure)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------- linear booster


def additive_in_logs(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """What real exports look like for churn: risk additive in log recency, frequency and spend."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({
        "recency_days": rng.lognormal(3.0, 1.0, n),
        "orders": rng.poisson(rng.lognormal(1.0, 0.8, n)).astype("float64"),
        "spend": rng.lognormal(4.0, 1.2, n),
        "noise": rng.normal(size=n),
        "region": pd.Categorical(rng.choice([f"r{i}" for i in range(40)], n)),
    })
    X.loc[rng.random(n) < 0.1, "spend"] = np.nan
    logit = (-3.0 + 0.9 * np.log1p(X["recency_days"]) - 0.7 * np.log1p(X["orders"])
             - 0.3 * np.log1p(X["spend"].fillna(X["spend"].median())) + 0.6 * (X["region"] == "r1"))
    return X, (rng.random(n) < 1 / (1 + np.exp(-logit))).to_numpy(dtype=float)


def linear_and_trees(settings, X: pd.DataFrame, y: np.ndarray):
    from schemas.settings import BoosterConfig
    from tasks.models.training import AftersalesModel, Calibrator, FoldMatrix, fit_booster, tune_booster

    settings.training.grid = [BoosterConfig(max_depth=2, learning_rate=0.1, min_leaf_share=0.005),
                              BoosterConfig(booster="gblinear", learning_rate=0.5, l2=0.1)]
    settings.training.max_rounds = 200
    half = len(y) // 2
    folds = [(np.arange(0, half // 2), np.arange(half // 2, half)), (np.arange(0, half), np.arange(half, len(y)))]
    data = FoldMatrix(X, y, settings)
    tuning = tune_booster(data, folds, settings, 1.0)
    chosen = data.for_config(tuning.config)
    booster = fit_booster(chosen, None, tuning.params, tuning.rounds)
    model = AftersalesModel(booster, Calibrator("identity"), list(X.columns), data.categories, 2, chosen.design)
    return tuning, model


def test_linear_booster_is_chosen_where_the_signal_is_additive_in_logs(settings):
    from sklearn.metrics import roc_auc_score

    X, y = additive_in_logs(6000, 11)
    tuning, model = linear_and_trees(settings, X, y)
    scores = tuning.table.set_index("booster")["score"]
    assert tuning.config.booster == "gblinear", tuning.table
    assert scores["gblinear"] > scores["gbtree"]
    X_new, y_new = additive_in_logs(4000, 12)
    assert roc_auc_score(y_new, model.predict_proba(X_new)) > 0.7


def test_linear_model_explains_per_feature_scores_signed_input_and_survives_pickling(settings):
    import cloudpickle

    X, y = additive_in_logs(3000, 13)
    _, model = linear_and_trees(settings, X, y)
    assert model.linear is not None
    rows = X.head(200)
    contributions = model.contributions(rows)
    assert list(contributions.columns) == [*X.columns, "bias"]
    np.testing.assert_allclose(contributions.sum(axis=1), model.margin(rows), rtol=1e-4, atol=1e-4)
    # longer since the last order -> that feature pushes the risk up, and it is the strongest reason
    assert np.corrcoef(np.log1p(rows["recency_days"]), contributions["recency_days"])[0, 1] > 0.99
    assert contributions.drop(columns="bias").abs().mean().idxmax() == "recency_days"
    signed = model.model_input(rows)
    np.testing.assert_allclose(model.predict(None, signed), model.predict_proba(rows))
    unseen = rows.assign(region=pd.Categorical(["nowhere"] * len(rows)))
    assert np.isfinite(model.predict_proba(unseen)).all()
    again = cloudpickle.loads(cloudpickle.dumps(model))
    np.testing.assert_array_equal(again.predict_proba(rows), model.predict_proba(rows))


def test_linear_fit_is_reproducible_and_its_importance_covers_every_feature(settings):
    from tasks.models.training import TrainedModel

    X, y = additive_in_logs(3000, 14)
    first = linear_and_trees(settings, X, y)[1]
    second = linear_and_trees(settings, X, y)[1]
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    trained = TrainedModel(first, {}, 0, 1.0, len(y), 0, 0, "rolling-origin", "identity", 0.0, 0.0)
    importance = trained.importance()
    assert set(importance) == set(X.columns) and min(importance.values()) >= 0
    assert max(importance, key=importance.get) == "recency_days"
    assert trained.importance_kind != "total gain"


def test_recentring_moves_the_level_of_a_map_and_keeps_its_order():
    """A map learnt on weaker fold models over-predicts the refit: re-anchored on a window's rate, not re-ranked."""
    rng = np.random.default_rng(4)
    raw = rng.uniform(0.01, 0.3, 4000)
    y = (rng.uniform(size=raw.size) < raw).astype(float)
    for method in ("sigmoid", "isotonic"):
        calibrator = Calibrator(method).fit(raw, y)
        newer = raw * 1.8  # the refit's scores on the newest window sit higher, the window's rate does not
        before = calibrator.transform(newer)
        calibrator.recentre(newer, float(y.mean()))
        after = calibrator.transform(newer)
        assert before.mean() > y.mean() + 0.03, method
        assert after.mean() == pytest.approx(y.mean(), abs=1e-4), method
        assert (np.diff(after[np.argsort(before, kind="stable")]) >= -1e-12).all(), method  # the same order
        assert calibrator.recentring < 0 and "recentred" in calibrator.describe()
    single = Calibrator("identity", scale="score").recentre(raw, 0.2)
    assert single.recentring == 0, "a rule's score is no probability: nothing to re-anchor"
    assert Calibrator("sigmoid").fit(raw, y).recentre(raw, 0.0).recentring == 0, "a window of one class moves nothing"


def test_the_training_config_hash_ignores_how_fast_the_frame_is_built() -> None:
    """Thread counts of the frame build change no row (tests/test_datasets.py), so they must not make
    a rerun on unchanged data look like a new configuration; the booster grid does."""
    from schemas.settings import BoosterConfig, Settings
    from tasks.models.training import RuleSpec, training_config_hash

    rule = RuleSpec("recency_days")
    base = training_config_hash(Settings(), rule, 0.0)
    assert training_config_hash(Settings(split={"frame_threads": 1}), rule, 0.0) == base
    assert training_config_hash(Settings(split={"frame_threads": 3}), rule, 0.0) == base
    assert training_config_hash(Settings(split={"feature_batch_rows": 1}), rule, 0.0) == base
    other_grid = [BoosterConfig(max_depth=3, learning_rate=0.1)]
    assert training_config_hash(Settings(training={"grid": other_grid}), rule, 0.0) != base
