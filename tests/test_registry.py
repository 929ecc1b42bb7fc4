"""Training runs, registration, dedupe, promotion and alias history against a real SQLite registry."""

from __future__ import annotations

from pathlib import Path

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
    ensure_experiment,
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
    assert "test_pr_auc" in run.data.metrics
    assert not [m for m in run.data.metrics if m.startswith("baseline_")], "baselines are child runs, not metrics"
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{first.run_id}'")
    by_scorer = {c.data.tags["scorer"]: c for c in children}
    assert set(by_scorer) == {"model_raw", "baseline_logreg", "baseline_rule"}
    assert all("test_pr_auc" in c.data.metrics for c in children), "same metric names: the UI compares them"
    assert run.data.metrics["test_pr_auc"] > by_scorer["baseline_rule"].data.metrics["test_pr_auc"]
    assert first.metrics["baseline_rule_test_pr_auc"] == by_scorer["baseline_rule"].data.metrics["test_pr_auc"]
    for described in (run.data.tags["mlflow.note.content"], version.description):
        assert "train" in described and "positives" in described and "first version" in described
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
    assert experiment.name == name, "experiment and registered model are spelled alike"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert name in experiment.tags["mlflow.note.content"] and "Compare" in experiment.tags["mlflow.note.content"]
    client.set_experiment_tag(experiment.experiment_id, "mlflow.note.content", "")  # a store from before
    assert ensure_experiment(client, reg, MODEL) == experiment.experiment_id
    assert name in client.get_experiment(experiment.experiment_id).tags["mlflow.note.content"]
    client.set_experiment_tag(experiment.experiment_id, "mlflow.note.content", "ours: weekly retrains")
    ensure_experiment(client, reg, MODEL)
    assert client.get_experiment(experiment.experiment_id).tags["mlflow.note.content"] == "ours: weekly retrains"
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


def perturbed(splits: DataSplits, seed: int = 5) -> DataSplits:
    """The same data as a second read of the warehouse gives it: rows in another order, and
    averages differing in their last bit (DuckDB sums in parallel)."""
    rng = np.random.default_rng(seed)

    def part(X: pd.DataFrame, y: pd.Series, t: pd.Series):
        order = rng.permutation(len(X))
        X = X.iloc[order].reset_index(drop=True)
        noisy = X["x0"].to_numpy().copy()
        noisy[::3] = np.nextafter(noisy[::3], np.inf)
        return X.assign(x0=noisy), y.iloc[order].reset_index(drop=True), t.iloc[order].reset_index(drop=True)

    (a, b, c), (d, e, f), (g, h, i) = (part(*p) for p in splits.parts().values())
    return DataSplits(a, b, d, e, g, h, c, f, i)


def test_an_identical_retrain_registers_nothing_new(reg, fitted):
    """Issue 14.3: train twice on unchanged data -> one version (the hash is of the data, not its bits)."""
    from tasks.models.registry import training_data_hash

    splits, trained, baselines = fitted["good"]
    again = perturbed(splits)
    assert not again.X_train.equals(splits.X_train)
    assert training_data_hash(again) == training_data_hash(splits)
    first = register(reg, fitted, "good")
    second = log_training_run(MODEL, reg, trained, baselines, again, RULE, code="test")
    assert first.is_new and not second.is_new and second.version == first.version
    assert len(MlflowClient().search_model_versions(f"name = '{reg.registered_model_name(MODEL)}'")) == 1
    changed = splits.X_train.assign(x1=splits.X_train["x1"] + 0.01)  # really different data: a new hash
    assert training_data_hash(DataSplits(changed, *list(vars(splits).values())[1:])) != training_data_hash(splits)


def test_manual_champion_move_keeps_the_way_back_and_rollback_uses_it(reg, fitted, monkeypatch):
    """Issue 14.4: previous_champion after a move in the UI; rollback and promote --to, with the actor."""
    from tasks.models.registry import RegistryError, rollback, set_champion

    register(reg, fitted, "bad")
    register(reg, fitted, "good")
    name = reg.registered_model_name(MODEL)
    MlflowClient().set_registered_model_alias(name, "champion", "2")  # by hand, in the MLflow UI
    monkeypatch.setenv("AFTERSALES_ACTOR", "ana@care-team")
    back = rollback(MODEL, reg)
    assert (back.from_version, back.to_version) == ("2", "1")
    assert str(resolve_alias(name, "champion", reg).version) == "1"
    assert str(resolve_alias(name, "previous_champion", reg).version) == "2"
    history = alias_history(reg, name)
    manual = history[history["reason"] == "manual"].iloc[0]
    assert (manual["alias"], manual["from_version"], manual["to_version"]) == ("champion", "1", "2")
    last = history.iloc[-1]
    assert (last["alias"], last["reason"], last["actor"]) == ("champion", "rollback", "ana@care-team")

    moved = set_champion(MODEL, reg, "2")
    assert moved.to_version == "2" and str(resolve_alias(name, "previous_champion", reg).version) == "1"
    with pytest.raises(RegistryError, match="has no version 7"):
        set_champion(MODEL, reg, "7")


def test_an_unreachable_registry_is_named_within_seconds(reg):
    """Issue 16.3: no silent minutes of retries, and an outage is never called "no registered model"."""
    import time

    from tasks.models.registry import RegistryUnreachableError

    reg.mlflow.tracking_uri = "http://127.0.0.1:9"  # nothing listens there
    reg.mlflow.request_retries, reg.mlflow.request_backoff_seconds = 1, 0.1
    started = time.monotonic()
    with pytest.raises(RegistryUnreachableError, match=r"the registry at http://127.0.0.1:9 cannot be reached"):
        resolve_alias(reg.registered_model_name(MODEL), "champion", reg)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_model_file_names_model_version_and_file(reg, fitted, damage):
    """Issue 16.3: the scorer refuses the version with its name, version and the unreadable file."""
    from tasks.models.scoring import find_champions

    register(reg, fitted, "good")
    client = MlflowClient()
    name = reg.registered_model_name(MODEL)
    model_id = client.get_model_version(name, "1").source.rsplit("/", 1)[-1]  # models:/m-<id>
    source = client.get_logged_model(model_id).artifact_location
    pickled = next(Path(source.removeprefix("file://")).rglob("python_model.pkl"))
    data = pickled.read_bytes()
    pickled.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a pickle at all")
    champions, skipped = find_champions(reg, [MODEL])
    assert not champions
    assert f"model {name} v1" in skipped[MODEL] and "python_model.pkl" in skipped[MODEL]
    assert "rollback" in skipped[MODEL]


def test_scoring_enforces_the_signature_and_refuses_constant_scores(reg, fitted):
    """Issue 11.15: a missing or mistyped column is named; a constant probability is refused."""
    from tasks.models.scoring import ModelRefusedError, check_signature, find_champions, predict, refuse_constant

    register(reg, fitted, "good")
    champion = find_champions(reg, [MODEL])[0][MODEL]
    X = fitted["good"][0].X_test.head(50)
    check_signature(champion, X)
    assert predict(champion, X).shape == (50,)
    with pytest.raises(ModelRefusedError, match="days_late"):
        check_signature(champion, X.drop(columns="days_late"))
    with pytest.raises(ModelRefusedError, match=r"x1 \(signed double, got text such as 'n/a'\)"):
        check_signature(champion, X.assign(x1=["n/a", *X["x1"].astype(str).iloc[1:]]))
    with pytest.raises(ModelRefusedError, match=r"carrier \(signed string"):
        check_signature(champion, X.assign(carrier=7))
    with pytest.raises(ModelRefusedError, match=f"model {champion.label} gave every one of 50 rows"):
        refuse_constant(champion, np.full(50, 0.12), reg)
    refuse_constant(champion, np.full(5, 0.12), reg)  # too few rows to judge
