"""Training runs, registration, dedupe, promotion and alias history against a real SQLite registry."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tasks.models.registry import (
    AliasNotFoundError,
    ModelNotFoundError,
    alias_history,
    alias_history_path,
    list_models,
    log_training_run,
    promote,
    resolve_alias,
)
from tasks.models.training import DataSplits, RuleSpec, train_baselines, train_model

pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")

MODEL = "negative_review"
RULE = RuleSpec("days_late")


def synthetic(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(4)})
    X["days_late"] = rng.poisson(2, n).astype("int64")
    X["carrier"] = pd.Categorical(rng.choice(["dhl", "ups", "post"], n))
    logit = -1.5 + 1.5 * X["x0"] + 0.4 * X["days_late"] + 0.7 * (X["carrier"] == "post")
    y = pd.Series((rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int), name="label")
    t = pd.Series(pd.Timestamp("2026-03-01") + pd.to_timedelta(rng.integers(0, 2, n) * 30, unit="D"))
    return X, y, t


def make_splits(signal: bool) -> DataSplits:
    """Same features and test window; without signal the training labels are shuffled."""
    rng = np.random.default_rng(99)
    (X_tr, y_tr, t_tr), (X_va, y_va, t_va), (X_te, y_te, t_te) = (
        synthetic(n, s) for n, s in ((3000, 1), (1500, 2), (2000, 3))
    )
    if not signal:
        y_tr = pd.Series(rng.permutation(y_tr.to_numpy()), name="label")
        y_va = pd.Series(rng.permutation(y_va.to_numpy()), name="label")
    return DataSplits(X_tr, y_tr, X_va, y_va, X_te, y_te, t_tr, t_va, t_te)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Two models trained once per module: one with signal ("good"), one on shuffled labels."""
    from schemas.settings import Settings

    settings = Settings(paths={"home": tmp_path_factory.mktemp("fit")})
    settings.training.xgb.n_estimators = 60
    out = {}
    for label, signal in (("good", True), ("bad", False)):
        splits = make_splits(signal)
        trained = train_model(
            splits.X_train, splits.y_train, splits.X_valid, splits.y_valid, settings, valid_time=splits.t_valid
        )
        out[label] = (splits, trained, train_baselines(splits.X_train, splits.y_train, settings, RULE))
    return out


@pytest.fixture
def reg(settings):
    settings.training.xgb.n_estimators = 60  # must match `fitted` (part of the config hash)
    settings.training.shap_sample_rows = 300
    return settings


def register(settings, fitted, which: str, catalogue=None):
    splits, trained, baselines = fitted[which]
    return log_training_run(MODEL, settings, trained, baselines, splits, RULE, feature_catalogue=catalogue, code="test")


def test_first_version_is_champion_and_challenger_and_rerun_is_not_duplicated(reg, fitted, tmp_path):
    catalogue = tmp_path / "feature_catalogue.csv"
    catalogue.write_text("feature,description\nx0,a\n")
    first = register(reg, fitted, "good", catalogue)
    name = reg.registered_model_name(MODEL)
    assert (first.version, first.is_new, first.aliases) == ("1", True, ["challenger", "champion"])
    assert resolve_alias(name, "champion", reg).version == resolve_alias(name, "challenger", reg).version

    again = register(reg, fitted, "good", catalogue)
    assert (again.version, again.is_new) == ("1", False)
    client = MlflowClient()
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    version = client.get_model_version(name, "1")
    assert version.tags["train_data_hash"] == first.train_data_hash and version.tags["code_version"] == "test"
    run = client.get_run(first.run_id)
    assert {"test_pr_auc", "baseline_logreg_test_pr_auc", "baseline_rule_test_pr_auc"} <= set(run.data.metrics)
    assert run.data.metrics["test_pr_auc"] > run.data.metrics["baseline_rule_test_pr_auc"]
    contexts = {t.value for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"}
    assert {"training", "valid", "test"} <= contexts
    artifacts = {a.path for d in ("plots", "data") for a in client.list_artifacts(first.run_id, d)}
    assert {
        "plots/feature_importance.png",
        "plots/shap_summary.png",
        "plots/calibration.png",
        "plots/pr_curve.png",
        "data/feature_catalogue.csv",
        "data/profile.html",
        "data/label_rate_per_cutoff.csv",
    } <= artifacts
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == f"{reg.mlflow.experiment_prefix}-{MODEL}"
    assert experiment.artifact_location.startswith(reg.artifact_location)

    # the registered pyfunc scores the signed input like the in-memory model, and explains
    splits, trained, _ = fitted["good"]
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    X = splits.X_test.head(20)
    np.testing.assert_allclose(loaded.predict(trained.model.model_input(X)), trained.predict_proba(X))
    contributions = loaded.predict(trained.model.model_input(X), params={"output": "contributions"})
    assert list(contributions.columns) == [*trained.features, "bias"]

    history = alias_history(reg, name)
    assert list(zip(history["alias"], history["reason"], strict=True)) == [
        ("challenger", "new_version"),
        ("champion", "first_version"),
    ]


def test_better_challenger_is_promoted_and_old_champion_kept_as_previous(reg, fitted):
    register(reg, fitted, "bad")
    second = register(reg, fitted, "good")
    name = reg.registered_model_name(MODEL)
    assert second.aliases == ["challenger"] and resolve_alias(name, "champion", reg).version in (1, "1")

    splits = fitted["good"][0]
    result = promote(MODEL, reg, splits.X_test, splits.y_test)
    assert result.promoted and result.decision == "promoted", result.message
    assert result.challenger_score > result.champion_score + reg.training.promotion_margin
    assert str(resolve_alias(name, "champion", reg).version) == "2"
    assert str(resolve_alias(name, "previous_champion", reg).version) == "1"

    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.tags["promotion_decision"] == "promoted"
    assert {"champion_test_pr_auc", "challenger_test_pr_auc"} <= set(run.data.metrics)
    assert client.get_model_version(name, "2").tags["last_comparison_decision"] == "promoted"
    moves = alias_history(reg, name).tail(2)
    assert list(moves["alias"]) == ["previous_champion", "champion"]
    assert list(moves["to_version"]) == ["1", "2"] and moves["challenger_score"].notna().all()


def test_worse_challenger_is_not_promoted_unless_forced(reg, fitted):
    register(reg, fitted, "good")
    register(reg, fitted, "bad")
    name = reg.registered_model_name(MODEL)
    splits = fitted["good"][0]

    kept = promote(MODEL, reg, splits.X_test, splits.y_test)
    assert not kept.promoted and kept.decision == "kept_champion", kept.message
    assert str(resolve_alias(name, "champion", reg).version) == "1"
    with pytest.raises(AliasNotFoundError):
        resolve_alias(name, "previous_champion", reg)

    forced = promote(MODEL, reg, splits.X_test, splits.y_test, force=True, reason="drill")
    assert forced.promoted and forced.decision == "forced"
    assert str(resolve_alias(name, "champion", reg).version) == "2"
    assert str(resolve_alias(name, "previous_champion", reg).version) == "1"
    assert alias_history(reg, name)["reason"].tolist()[-3:] == ["kept_champion", "demoted", "forced"]


def test_manual_alias_move_is_honoured_and_recorded(reg, fitted):
    register(reg, fitted, "bad")
    register(reg, fitted, "good")
    name = reg.registered_model_name(MODEL)
    splits = fitted["good"][0]
    assert promote(MODEL, reg, splits.X_test, splits.y_test).promoted  # champion -> v2

    MlflowClient().set_registered_model_alias(name, "champion", "1")  # someone rolls back in the UI
    assert str(resolve_alias(name, "champion", reg).version) == "1"

    result = promote(MODEL, reg, splits.X_test, splits.y_test)
    assert result.champion_version == "1" and result.challenger_version == "2"
    assert result.promoted  # v2 still beats the hand-restored v1

    history = alias_history(reg, name)
    manual = history[history["reason"] == "manual"]
    assert len(manual) == 1
    assert manual.iloc[0][["alias", "from_version", "to_version"]].tolist() == ["champion", "2", "1"]
    assert manual.index[0] < history[history["reason"] == "promoted"].index[-1]

    listing = list_models(reg)
    assert listing["version"].tolist() == [1, 2]
    assert listing.set_index("version").loc[2, "aliases"] == "challenger,champion"
    assert listing.set_index("version").loc[1, "aliases"] == "previous_champion"
    assert len(listing.attrs["alias_history"]) == len(history)
    assert alias_history_path(reg).is_file()


def test_missing_model_or_alias_gives_clear_errors(reg, fitted):
    name = reg.registered_model_name(MODEL)
    splits = fitted["good"][0]
    with pytest.raises(ModelNotFoundError, match="No registered model"):
        resolve_alias(name, "champion", reg)
    nothing = promote(MODEL, reg, splits.X_test, splits.y_test)
    assert nothing.decision == "no_challenger" and "not registered" in nothing.message

    register(reg, fitted, "good")
    with pytest.raises(AliasNotFoundError, match="has no alias 'previous_champion'"):
        resolve_alias(name, "previous_champion", reg)
    same = promote(MODEL, reg, splits.X_test, splits.y_test)
    assert same.decision == "already_champion"

    MlflowClient().delete_registered_model_alias(name, "champion")
    no_champion = promote(MODEL, reg, splits.X_test, splits.y_test)
    assert no_champion.decision == "no_champion" and "force=True" in no_champion.message
    forced = promote(MODEL, reg, splits.X_test, splits.y_test, force=True)
    assert forced.promoted and str(resolve_alias(name, "champion", reg).version) == "1"
    reasons = alias_history(reg, name)["reason"].tolist()
    assert reasons == ["new_version", "first_version", "manual", "forced"]


def test_prefect_tasks_record_the_flow_run(reg, fitted, prefect_api):
    from prefect import flow

    from tasks.models.registry import list_models_task, log_training_run_task, promote_task
    from tasks.models.training import train_baselines_task, train_model_task

    splits = fitted["good"][0]

    @flow(name="train-and-promote")
    def train_and_promote() -> str:
        trained = train_model_task(
            splits.X_train, splits.y_train, splits.X_valid, splits.y_valid, reg, valid_time=splits.t_valid
        )
        baselines = train_baselines_task(splits.X_train, splits.y_train, reg, RULE)
        version = log_training_run_task(MODEL, reg, trained, baselines, splits, RULE)
        promote_task(MODEL, reg, splits.X_test, splits.y_test)
        return list_models_task(reg).loc[0, "aliases"] + f"|{version.version}"

    assert train_and_promote() == "challenger,champion|1"
    assert alias_history(reg)["flow_run"].str.startswith("train-and-promote/").all()
