"""MLflow runs, the model registry, champion/challenger promotion and the alias history.

Conventions
-----------
* One experiment per model, ``{experiment_prefix}-{model}``, artifacts under
  ``<settings.artifact_location>/<experiment name>``.
* Registered model ``settings.registered_model_name(model)``; aliases ``challenger`` (latest
  trained version), ``champion`` (what scoring loads) and ``previous_champion`` (rollback target).
* The registry is the only truth for "which version is champion": ``resolve_alias`` always asks
  it, so an alias moved by hand in the MLflow UI is honoured at once.

Alias history
-------------
MLflow keeps no history of alias moves (mlflow #2169). Every move is appended as one JSON line
to ``<paths.home>/registry/alias_history.jsonl`` (see ``alias_history_path``), and the versions
involved get ``alias_<alias>_since`` / ``alias_<alias>_until`` tags as breadcrumbs in the UI.
A JSONL file, because it is independent of the MLflow store (survives a registry rebuild or a
store migration, readable with ``cat``/pandas, diff-able), append-only by construction, needs no
server and no schema migration, and does not compete with the warehouse's single DuckDB writer.
Writes hold an exclusive ``flock`` per registered model, so concurrent flows on one machine do not
interleave; with a remote MLflow server, point ``paths.home`` at storage every runner shares.
A move made outside this module (UI, ``MlflowClient``) is recorded as ``manual`` the next time
any function here looks at that model.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import importlib.metadata
import json
import math
import socket
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import numpy as np
import pandas as pd
import sklearn
import xgboost as xgb
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.settings import Settings
from tasks.models.evaluation import (
    classification_metrics,
    evaluate_scores,
    higher_is_better,
    plot_calibration,
    plot_feature_importance,
    plot_pr_curves,
    plot_shap_summary,
    prefixed,
    sample_rows,
)
from tasks.models.training import (
    OUTPUTS,
    Baselines,
    DataSplits,
    RuleSpec,
    TrainedModel,
    score_window,
    training_config_hash,
)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous_champion"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS_CHAMPION)
MODEL_TAG = "aftersales_model"
VERSION_TAG_METRICS = ("roc_auc", "pr_auc", "brier", "ece", "lift_at_k")
HISTORY_COLUMNS = [
    "ts",
    "model",
    "registered_model",
    "alias",
    "from_version",
    "to_version",
    "reason",
    "actor",
    "flow_run",
    "metric",
    "champion_score",
    "challenger_score",
    "margin",
    "run_id",
    "note",
]
SCORER_PREFIX = {
    "model": "test_",
    "model_raw": "test_raw_",
    "baseline_logreg": "baseline_logreg_test_",
    "baseline_rule": "baseline_rule_test_",
}
DATASET_SCHEMA_SAMPLE = 1_000


class RegistryError(RuntimeError):
    """A registry state this module cannot act on; the message says what to do."""


class ModelNotFoundError(RegistryError, LookupError):
    pass


class AliasNotFoundError(RegistryError, LookupError):
    pass


# ------------------------------------------------------------------------------ MLflow plumbing


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow (tracking and registry) at the settings' store and return a client."""
    registry_uri = settings.mlflow.registry_uri or settings.tracking_uri
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=registry_uri)


def experiment_name(settings: Settings, model: str) -> str:
    return f"{settings.mlflow.experiment_prefix}-{model}"


def ensure_experiment(client: MlflowClient, settings: Settings, model: str) -> str:
    """The model's experiment id, created with artifacts under ``settings.artifact_location``."""
    name = experiment_name(settings, model)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = f"{settings.artifact_location.rstrip('/')}/{name}"
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another run
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def code_version() -> str:
    """``git:<sha>`` of this checkout (+ a hash of uncommitted changes to the code), else the
    package version. Identical code gives an identical string, which the rerun check relies on."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20, check=True)
        return done.stdout

    try:
        sha = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD", "--", "tasks", "schemas", "flows")
    except (OSError, subprocess.SubprocessError):
        return f"aftersales=={importlib.metadata.version('aftersales')}"
    suffix = f"+dirty.{hashlib.sha256(diff.encode()).hexdigest()[:8]}" if diff else ""
    return f"git:{sha[:12]}{suffix}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _actor() -> tuple[str, str | None]:
    """Who moved an alias: OS user@host, and the Prefect flow run when inside one."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    flow_run: str | None = None
    try:
        from prefect.runtime import flow_run as current

        if current.id:
            flow_run = f"{current.flow_name}/{current.name} ({current.id})"
    except Exception:  # outside Prefect or no context: the user is enough
        flow_run = None
    return f"{user}@{socket.gethostname()}", flow_run


def _v(version: Any) -> str | None:
    """Version numbers as strings: the sqlite store returns ints, the REST store strings."""
    return None if version is None else str(version)


# ---------------------------------------------------------------------------------- alias lookup


def resolve_alias(name: str, alias: str, settings: Settings | None = None) -> ModelVersion:
    """The version an alias points to, asked from the registry every time (never cached)."""
    client = configure(settings) if settings is not None else MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        try:
            registered = client.get_registered_model(name)
        except MlflowException:
            raise ModelNotFoundError(
                f"No registered model {name!r} in {mlflow.get_registry_uri()}: train and register it first."
            ) from exc
        known = ", ".join(f"{a}=v{v}" for a, v in sorted(registered.aliases.items())) or "none"
        raise AliasNotFoundError(f"Model {name!r} has no alias {alias!r} (aliases: {known}).") from exc


def current_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Alias -> version (as str) straight from the registry; empty if the model does not exist."""
    try:
        return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    except MlflowException:
        return {}


# --------------------------------------------------------------------------------- alias history


def alias_history_path(settings: Settings) -> Path:
    return (settings.paths.home / "registry" / "alias_history.jsonl").resolve()


@contextlib.contextmanager
def _model_lock(settings: Settings, registered_model: str) -> Iterator[None]:
    """Exclusive lock per registered model around read-compare-move-append sequences."""
    lock_path = alias_history_path(settings).parent / f"{registered_model}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class AliasEvent:
    """One line of the alias history: a move (or a kept champion after a comparison)."""

    model: str
    registered_model: str
    alias: str
    from_version: str | None
    to_version: str | None
    reason: str
    actor: str = ""
    flow_run: str | None = None
    metric: str | None = None
    champion_score: float | None = None
    challenger_score: float | None = None
    margin: float | None = None
    run_id: str | None = None
    note: str = ""
    ts: str = field(default_factory=_now)


def _append_history(settings: Settings, event: AliasEvent) -> None:
    path = alias_history_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(event).items()}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def alias_history(settings: Settings, registered_model: str | None = None) -> pd.DataFrame:
    """The append-only history, oldest first (optionally of one registered model)."""
    path = alias_history_path(settings)
    rows = []
    if path.exists():
        with open(path, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    if registered_model is not None:
        frame = frame[frame["registered_model"] == registered_model].reset_index(drop=True)
    return frame


def _last_recorded(settings: Settings, registered_model: str) -> dict[str, str | None]:
    history = alias_history(settings, registered_model)
    last: dict[str, str | None] = {}
    for alias, version in zip(history["alias"], history["to_version"], strict=True):
        last[alias] = None if pd.isna(version) else str(version)
    return last


def _tag_move(client: MlflowClient, name: str, event: AliasEvent) -> None:
    """Breadcrumbs on the versions, visible in the MLflow UI next to the JSONL history."""
    with contextlib.suppress(MlflowException):
        if event.to_version is not None:
            client.set_model_version_tag(name, event.to_version, f"alias_{event.alias}_since", event.ts)
        if event.from_version is not None and event.from_version != event.to_version:
            client.set_model_version_tag(name, event.from_version, f"alias_{event.alias}_until", event.ts)


def _record_manual_moves(client: MlflowClient, settings: Settings, model: str, name: str) -> list[AliasEvent]:
    """Aliases whose registry value differs from the last recorded one were moved by hand."""
    registry = current_aliases(client, name)
    recorded = _last_recorded(settings, name)
    events = []
    for alias in ALIASES:
        now, before = registry.get(alias), recorded.get(alias)
        if now != before and (now is not None or alias in recorded):
            event = AliasEvent(
                model=model,
                registered_model=name,
                alias=alias,
                from_version=before,
                to_version=now,
                reason="manual",
                actor="outside aftersales (MLflow UI/API)",
                note="detected on next look; moved between the previous record and this timestamp",
            )
            _append_history(settings, event)
            _tag_move(client, name, event)
            events.append(event)
    return events


def detect_manual_moves(settings: Settings, model: str) -> list[AliasEvent]:
    """Record alias moves made outside this module (MLflow UI/API) into the history."""
    client = configure(settings)
    name = settings.registered_model_name(model)
    with _model_lock(settings, name):
        return _record_manual_moves(client, settings, model, name)


def _move_alias(
    client: MlflowClient,
    settings: Settings,
    model: str,
    alias: str,
    version: str,
    reason: str,
    **details: Any,
) -> AliasEvent:
    """Point an alias at a version and append the move (caller holds the model lock)."""
    name = settings.registered_model_name(model)
    before = current_aliases(client, name).get(alias)
    client.set_registered_model_alias(name, alias, version)
    actor, flow_run = _actor()
    event = AliasEvent(
        model=model,
        registered_model=name,
        alias=alias,
        from_version=before,
        to_version=str(version),
        reason=reason,
        actor=actor,
        flow_run=flow_run,
        **details,
    )
    _append_history(settings, event)
    _tag_move(client, name, event)
    return event


# ------------------------------------------------------------------------------ training runs


@dataclass
class RegisteredVersion:
    """Outcome of ``log_training_run``: the version that stands for this training data + code."""

    model: str
    registered_model: str
    version: str
    run_id: str | None
    is_new: bool
    aliases: list[str]
    train_data_hash: str
    code_version: str
    metrics: dict[str, float] = field(default_factory=dict)


def find_existing_version(
    client: MlflowClient, name: str, data_hash: str, code: str, config_hash: str
) -> ModelVersion | None:
    """A version trained on the same data with the same code and config, if any (oldest wins)."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    matches = [
        v
        for v in versions
        if v.tags.get("train_data_hash") == data_hash
        and v.tags.get("code_version") == code
        and v.tags.get("training_config_hash") == config_hash
    ]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def _window(t: pd.Series | None) -> str:
    if t is None or len(t) == 0:
        return "unknown"
    return f"{pd.Timestamp(t.min()).date()}..{pd.Timestamp(t.max()).date()}"


def data_profile(splits: DataSplits) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``describe()`` of every training column (+ label), and the label rate per split and cutoff."""
    train = splits.X_train.assign(label=np.asarray(splits.y_train))
    describe = train.describe(include="all").T
    describe.insert(0, "dtype", train.dtypes.astype(str))
    describe.insert(1, "missing_share", train.isna().mean())
    rates = []
    for split, (_, y, t) in splits.parts().items():
        cutoff = pd.Series("all", index=range(len(y))) if t is None else pd.Series(np.asarray(t))
        frame = pd.DataFrame({"cutoff": cutoff, "label": np.asarray(y, dtype=float)})
        grouped = frame.groupby("cutoff", sort=True)["label"].agg(rows="size", positives="sum", label_rate="mean")
        rates.append(grouped.reset_index().assign(split=split))
    label_rates = pd.concat(rates, ignore_index=True)[["split", "cutoff", "rows", "positives", "label_rate"]]
    return describe, label_rates


def _profile_html(model: str, describe: pd.DataFrame, label_rates: pd.DataFrame) -> str:
    return (
        f"<html><head><meta charset='utf-8'><title>{model} training data</title></head><body>"
        f"<h1>{model}: training data profile</h1><h2>Label rate per cutoff</h2>"
        f"{label_rates.to_html(index=False, float_format=lambda v: f'{v:.4f}')}"
        f"<h2>Columns (train split)</h2>{describe.to_html(float_format=lambda v: f'{v:.4g}')}</body></html>"
    )


def _pip_requirements() -> list[str]:
    return [
        f"mlflow=={mlflow.__version__}",
        f"xgboost-cpu=={xgb.__version__}",
        f"scikit-learn=={sklearn.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
        # The pickled wrapper class lives in tasks.models.training, so loading needs this project installed.
        # It is deliberately not listed: "aftersales" is not ours on PyPI (dependency confusion).
    ]


def _schema_sample(frame: pd.DataFrame, rows: int = DATASET_SCHEMA_SAMPLE) -> pd.DataFrame:
    """The first rows plus, per column, one row where it is missing (keeps ``required`` right)."""
    missing_rows = [frame.index[mask.to_numpy()][0] for _, mask in frame.isna().items() if mask.any()]
    picked = frame.index[:rows].union(pd.Index(missing_rows))
    return frame.loc[picked]


def _log_datasets(model: str, splits: DataSplits) -> None:
    for split, (X, y, t) in splits.parts().items():
        frame = X.assign(label=np.asarray(y))
        tags = {
            "cutoff_window": _window(t),
            "rows": str(len(y)),
            "positives": str(int(np.asarray(y).sum())),
        }
        with warnings.catch_warnings():  # "integer columns cannot hold missing values": describes data only
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
            dataset = mlflow.data.from_pandas(frame, name=f"{model}-{split}", targets="label")
            # MLflow infers the dataset schema value by value in Python (~30 s per 1M x 40); a sample
            # holding every column's missing values gives the same schema in milliseconds
            dataset.__dict__["schema"] = infer_signature(_schema_sample(frame)).inputs
            mlflow.log_input(dataset, context="training" if split == "train" else split, tags=tags)


def _log_plots(
    model: str, trained: TrainedModel, splits: DataSplits, scores: Mapping[str, np.ndarray], settings: Settings
) -> None:
    y = np.asarray(splits.y_test, dtype=float)
    mlflow.log_figure(
        plot_feature_importance(trained.importance(), title=f"{model}: feature importance (total gain)"),
        "plots/feature_importance.png",
    )
    rows = sample_rows(len(splits.X_test), settings.training.shap_sample_rows, settings.training.seed)
    sample = splits.X_test.iloc[rows]
    contributions = trained.contributions(sample)
    mlflow.log_figure(plot_shap_summary(contributions, sample, title=f"{model} SHAP"), "plots/shap_summary.png")
    calibration = {"model (calibrated)": scores["model"], "booster (raw)": scores["model_raw"]}
    calibration.update({k: v for k, v in scores.items() if k.startswith("baseline")})
    mlflow.log_figure(plot_calibration(y, calibration, title=f"{model}: reliability"), "plots/calibration.png")
    ranking = {k: v for k, v in scores.items() if k != "model_raw"}
    mlflow.log_figure(plot_pr_curves(y, ranking, title=f"{model}: precision-recall (test)"), "plots/pr_curve.png")


def _log_params(model: str, trained: TrainedModel, splits: DataSplits, rule: RuleSpec | None) -> None:
    params = {f"xgb_{k}": v for k, v in trained.params.items()}
    params.update(
        {
            "model": model,
            "n_features": len(trained.features),
            "features": ",".join(trained.features)[:5000],
            "best_iteration": trained.best_iteration,
            "calibration": trained.calibration_method,
            "calibration_share": trained.calibration_share,
            "validation_split": trained.validation_split,
            "n_train": len(splits.y_train),
            "n_early_stopping": trained.n_early_stopping,
            "n_calibration": trained.n_calibration,
            "n_test": len(splits.y_test),
            "baseline_rule": rule.describe() if rule else "none",
            **trained.extra_params,
        }
    )
    mlflow.log_params(params)


def log_training_run(
    model: str,
    settings: Settings,
    trained: TrainedModel,
    baselines: Baselines | None,
    splits: DataSplits,
    rule: RuleSpec | None = None,
    feature_catalogue: Path | str | None = None,
    code: str | None = None,
) -> RegisteredVersion:
    """Log one training run and register its model, unless this exact run exists already.

    Same training data hash + code version + training config -> the existing version is returned
    and nothing is logged (MLflow would otherwise add a duplicate version, mlflow #19036).
    A new version becomes ``challenger``; the first version of a model is also ``champion``.
    """
    client = configure(settings)
    name = settings.registered_model_name(model)
    data_hash = splits.data_hash()
    code = code or code_version()
    config_hash = training_config_hash(settings, rule, trained.calibration_share)
    with _model_lock(settings, name):
        _record_manual_moves(client, settings, model, name)
        existing = find_existing_version(client, name, data_hash, code, config_hash)
        if existing is not None:
            return RegisteredVersion(
                model=model,
                registered_model=name,
                version=str(existing.version),
                run_id=existing.run_id,
                is_new=False,
                aliases=sorted(a for a, v in current_aliases(client, name).items() if v == str(existing.version)),
                train_data_hash=data_hash,
                code_version=code,
            )
        experiment_id = ensure_experiment(client, settings, model)
        # after a rolling-origin fit the test rows are inside the refit: use its out-of-time scores
        scores = splits.test_scores if splits.test_scores is not None else score_window(trained, baselines,
                                                                                         splits.X_test)
        results = evaluate_scores(splits.y_test, scores, settings.training.top_k)
        metrics: dict[str, float] = {}
        for scorer, values in results.items():
            metrics.update(prefixed(values, SCORER_PREFIX[scorer]))
        run_tags = {
            MODEL_TAG: model,
            "train_data_hash": data_hash,
            "code_version": code,
            "training_config_hash": config_hash,
            **{f"window_{s}": _window(t) for s, (_, _, t) in splits.parts().items()},
        }
        nested = mlflow.active_run() is not None
        run_name = f"train-{model}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, nested=nested) as run:
            mlflow.set_tags(run_tags)
            _log_params(model, trained, splits, rule)
            mlflow.log_metrics({**metrics, **trained.extra_metrics, "fit_seconds": trained.fit_seconds})
            mlflow.log_dict(results, "metrics/test_metrics.json")
            if trained.notes:
                mlflow.log_text("\n".join(trained.notes), "notes.txt")
            _log_datasets(model, splits)
            _log_plots(model, trained, splits, scores, settings)
            describe, label_rates = data_profile(splits)
            mlflow.log_text(describe.to_csv(), "data/profile_columns.csv")
            mlflow.log_text(label_rates.to_csv(index=False), "data/label_rate_per_cutoff.csv")
            mlflow.log_text(_profile_html(model, describe, label_rates), "data/profile.html")
            if feature_catalogue is not None:
                mlflow.log_artifact(str(feature_catalogue), "data")
            example = trained.model.model_input(splits.X_train.head(5))
            signature = infer_signature(example, trained.model.predict_proba(example), params={"output": OUTPUTS[0]})
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=trained.model,
                signature=signature,
                input_example=example,
                pip_requirements=_pip_requirements(),
                metadata={
                    "features": trained.features,
                    "categories": trained.model.categories,
                    "outputs": list(OUTPUTS),
                    "calibration": trained.calibration_method,
                },
            )
        version_tags = {
            "train_data_hash": data_hash,
            "code_version": code,
            "training_config_hash": config_hash,
            "run_id": run.info.run_id,
            "window_test": run_tags["window_test"],
            **{f"test_{m}": f"{results['model'][m]:.6g}" for m in VERSION_TAG_METRICS},
        }
        registered = mlflow.register_model(info.model_uri, name, tags=version_tags)
        version = str(registered.version)
        client.set_registered_model_tag(name, MODEL_TAG, model)
        first = len(client.search_model_versions(f"name = '{name}'")) == 1
        aliases = [CHALLENGER]
        _move_alias(client, settings, model, CHALLENGER, version, "new_version", run_id=run.info.run_id)
        if first:
            _move_alias(client, settings, model, CHAMPION, version, "first_version", run_id=run.info.run_id)
            aliases.append(CHAMPION)
    return RegisteredVersion(
        model=model,
        registered_model=name,
        version=version,
        run_id=run.info.run_id,
        is_new=True,
        aliases=sorted(aliases),
        train_data_hash=data_hash,
        code_version=code,
        metrics=metrics,
    )


def log_refused_run(model: str, settings: Settings, reason: str, counts: Mapping[str, tuple[int, int]],
                    notes: list[str] | None = None) -> str:
    """Record a training run the minimum-signal guard refused: an MLflow run with the reason, the
    rows and positives of each set, and no model; nothing is registered, no alias moves."""
    client = configure(settings)
    experiment_id = ensure_experiment(client, settings, model)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"refused-{model}-{datetime.now(UTC):%Y%m%dT%H%M%S}",
                          nested=nested) as run:
        mlflow.set_tags({MODEL_TAG: model, "registered": "false", "not_registered_reason": reason[:5000]})
        mlflow.log_metrics({f"{name.replace(' ', '_')}_{what}": float(value)
                            for name, (rows, positives) in counts.items()
                            for what, value in (("rows", rows), ("positives", positives))})
        mlflow.log_text("\n".join([reason, *(notes or [])]), "not_registered.txt")
        return run.info.run_id


# ------------------------------------------------------------------------------------ promotion


@dataclass
class PromotionResult:
    """What promote decided and why; ``message`` is meant for a human."""

    model: str
    registered_model: str
    decision: str  # promoted | forced | kept_champion | not_comparable | already_champion | no_champion | no_challenger
    promoted: bool
    message: str
    metric: str
    margin: float
    champion_version: str | None = None
    challenger_version: str | None = None
    champion_score: float | None = None
    challenger_score: float | None = None
    improvement: float | None = None
    forced: bool = False
    run_id: str | None = None
    champion_metrics: dict[str, float] = field(default_factory=dict)
    challenger_metrics: dict[str, float] = field(default_factory=dict)


def _score_alias(name: str, alias: str, X: pd.DataFrame) -> np.ndarray:
    """Load ``models:/<name>@<alias>`` and score through pyfunc, as the scoring flow would."""
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
    inner = loaded.unwrap_python_model()
    return np.asarray(loaded.predict(inner.model_input(X)), dtype=float)


def compare(champion: float, challenger: float, metric: str, margin: float) -> tuple[bool, float]:
    """(challenger better by more than margin?, improvement in the metric's good direction)."""
    improvement = challenger - champion if higher_is_better(metric) else champion - challenger
    return bool(math.isfinite(improvement) and improvement > margin), improvement


def _log_comparison_run(
    client: MlflowClient, settings: Settings, model: str, result: PromotionResult, X_test: pd.DataFrame
) -> str:
    experiment_id = ensure_experiment(client, settings, model)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"promote-{model}-{datetime.now(UTC):%Y%m%dT%H%M%S}", nested=nested
    ) as run:
        mlflow.set_tags(
            {
                MODEL_TAG: model,
                "promotion_decision": result.decision,
                "promoted": str(result.promoted),
                "forced": str(result.forced),
                "champion_version": str(result.champion_version),
                "challenger_version": str(result.challenger_version),
            }
        )
        mlflow.log_params({"metric": result.metric, "margin": result.margin, "test_rows": len(X_test)})
        metrics = {
            **prefixed(result.champion_metrics, "champion_test_"),
            **prefixed(result.challenger_metrics, "challenger_test_"),
        }
        if result.improvement is not None:
            metrics["improvement"] = result.improvement
        mlflow.log_metrics(metrics)
        mlflow.log_text(result.message, "promotion.txt")
        return run.info.run_id


def _tag_compared_versions(client: MlflowClient, name: str, result: PromotionResult) -> None:
    for role, version, score in (
        ("champion", result.champion_version, result.champion_score),
        ("challenger", result.challenger_version, result.challenger_score),
    ):
        if version is None:
            continue
        tags = {
            "last_comparison_run_id": str(result.run_id),
            "last_comparison_role": role,
            "last_comparison_decision": result.decision,
            f"last_comparison_{result.metric}": f"{score:.6g}" if score is not None else "n/a",
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)


def promote(
    model: str,
    settings: Settings,
    X_test: pd.DataFrame,
    y_test: pd.Series,
    force: bool = False,
    reason: str = "",
) -> PromotionResult:
    """Score champion and challenger on the same window; move ``champion`` if the challenger wins.

    Winning means beating the champion on ``promotion_metric`` by more than ``promotion_margin``
    (lower is better for brier). ``force`` moves it regardless. The old champion becomes
    ``previous_champion``. A missing alias gives a result with a clear message, not an exception.
    """
    client = configure(settings)
    name = settings.registered_model_name(model)
    metric, margin = settings.training.promotion_metric, settings.training.promotion_margin
    base = {"model": model, "registered_model": name, "metric": metric, "margin": margin, "forced": force}
    with _model_lock(settings, name):
        _record_manual_moves(client, settings, model, name)
        aliases = current_aliases(client, name)
        champion_v, challenger_v = aliases.get(CHAMPION), aliases.get(CHALLENGER)
        if challenger_v is None:
            registered = bool(aliases) or _is_registered(client, name)
            hint = "train a new version first" if registered else f"model {name!r} is not registered yet"
            return PromotionResult(
                decision="no_challenger", promoted=False, message=f"No challenger for {name}: {hint}.", **base
            )
        if champion_v == challenger_v:
            return PromotionResult(
                decision="already_champion",
                promoted=False,
                message=f"{name} v{challenger_v} is already champion; nothing to compare.",
                champion_version=champion_v,
                challenger_version=challenger_v,
                **base,
            )
        if champion_v is None and not force:
            return PromotionResult(
                decision="no_champion",
                promoted=False,
                message=(
                    f"{name} has no champion to compare with; run promote with force=True to make "
                    f"challenger v{challenger_v} the champion."
                ),
                challenger_version=challenger_v,
                **base,
            )

        top_k = settings.training.top_k
        challenger_metrics = classification_metrics(y_test, _score_alias(name, CHALLENGER, X_test), top_k)
        champion_metrics = (
            classification_metrics(y_test, _score_alias(name, CHAMPION, X_test), top_k) if champion_v else {}
        )
        if current_aliases(client, name) != aliases:
            raise RegistryError(f"Aliases of {name} changed while comparing; run promote again.")
        challenger_score = challenger_metrics[metric]
        champion_score = champion_metrics.get(metric, math.nan)
        better, improvement = compare(champion_score, challenger_score, metric, margin)
        if force:
            decision = "forced"
        elif better:
            decision = "promoted"
        elif not (math.isfinite(champion_score) and math.isfinite(challenger_score)):
            decision = "not_comparable"
        else:
            decision = "kept_champion"
        promoted = decision in ("forced", "promoted")
        verb = {
            "forced": "forced to champion",
            "promoted": "promoted to champion",
            "kept_champion": "not promoted",
            "not_comparable": f"not promoted: {metric} is undefined on this window (single class?)",
        }[decision]
        message = (
            f"{name}: challenger v{challenger_v} {verb}; {metric} challenger {challenger_score:.4f} vs "
            f"champion {'v' + champion_v if champion_v else 'none'} {champion_score:.4f} "
            f"(improvement {improvement:+.4f}, margin {margin})."
        )
        result = PromotionResult(
            decision=decision,
            promoted=promoted,
            message=message,
            champion_version=champion_v,
            challenger_version=challenger_v,
            champion_score=champion_score,
            challenger_score=challenger_score,
            improvement=improvement if math.isfinite(improvement) else None,
            champion_metrics=champion_metrics,
            challenger_metrics=challenger_metrics,
            **base,
        )
        result.run_id = _log_comparison_run(client, settings, model, result, X_test)
        _tag_compared_versions(client, name, result)
        details = {
            "metric": metric,
            "champion_score": champion_score,
            "challenger_score": challenger_score,
            "margin": margin,
            "run_id": result.run_id,
            "note": reason,
        }
        if promoted:
            if champion_v is not None:
                _move_alias(client, settings, model, PREVIOUS_CHAMPION, champion_v, "demoted", **details)
            _move_alias(client, settings, model, CHAMPION, challenger_v, decision, **details)
        else:
            actor, flow_run = _actor()
            _append_history(
                settings,
                AliasEvent(
                    model=model,
                    registered_model=name,
                    alias=CHAMPION,
                    from_version=champion_v,
                    to_version=champion_v,
                    reason=decision,
                    actor=actor,
                    flow_run=flow_run,
                    **details,
                ),
            )
    return result


def _is_registered(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


# --------------------------------------------------------------------------------------- listing


def list_models(settings: Settings) -> pd.DataFrame:
    """Every version of every aftersales model: aliases, status, tags, key test metrics.

    The alias history (after recording any manual moves) is attached as
    ``frame.attrs["alias_history"]``; ``alias_history(settings)`` returns it on its own.
    """
    client = configure(settings)
    prefix = settings.training.registered_model_prefix
    rows = []
    for registered in client.search_registered_models(filter_string=f"name LIKE '{prefix}%'"):
        name = registered.name
        model = registered.tags.get(MODEL_TAG, name.removeprefix(prefix))
        with _model_lock(settings, name):
            _record_manual_moves(client, settings, model, name)
        aliases = current_aliases(client, name)
        for version in client.search_model_versions(f"name = '{name}'"):
            v = str(version.version)
            rows.append(
                {
                    "model": model,
                    "registered_model": name,
                    "version": int(v),
                    "aliases": ",".join(sorted(a for a, av in aliases.items() if av == v)),
                    "status": version.status,
                    "created": pd.Timestamp(version.creation_timestamp, unit="ms", tz="UTC"),
                    "run_id": version.run_id,
                    "train_data_hash": version.tags.get("train_data_hash"),
                    "code_version": version.tags.get("code_version"),
                    **{f"test_{m}": _float(version.tags.get(f"test_{m}")) for m in VERSION_TAG_METRICS},
                    "tags": dict(version.tags),
                }
            )
    columns = [
        "model",
        "registered_model",
        "version",
        "aliases",
        "status",
        "created",
        "run_id",
        "train_data_hash",
        "code_version",
        *[f"test_{m}" for m in VERSION_TAG_METRICS],
        "tags",
    ]
    frame = pd.DataFrame(rows, columns=columns).sort_values(["model", "version"], ignore_index=True)
    frame.attrs["alias_history"] = alias_history(settings)
    return frame


def _float(value: str | None) -> float:
    try:
        return float(value) if value is not None else math.nan
    except ValueError:
        return math.nan


# ---------------------------------------------------------------------------------- Prefect tasks


@task(name="log-training-run", cache_policy=NO_CACHE)
def log_training_run_task(
    model: str,
    settings: Settings,
    trained: TrainedModel,
    baselines: Baselines | None,
    splits: DataSplits,
    rule: RuleSpec | None = None,
    feature_catalogue: Path | str | None = None,
) -> RegisteredVersion:
    return log_training_run(model, settings, trained, baselines, splits, rule, feature_catalogue)


@task(name="promote-model", cache_policy=NO_CACHE)
def promote_task(
    model: str, settings: Settings, X_test: pd.DataFrame, y_test: pd.Series, force: bool = False, reason: str = ""
) -> PromotionResult:
    return promote(model, settings, X_test, y_test, force=force, reason=reason)


@task(name="list-models", cache_policy=NO_CACHE)
def list_models_task(settings: Settings) -> pd.DataFrame:
    return list_models(settings)


__all__ = [
    "ALIASES",
    "AliasNotFoundError",
    "ModelNotFoundError",
    "PromotionResult",
    "RegisteredVersion",
    "RegistryError",
    "alias_history",
    "alias_history_path",
    "code_version",
    "detect_manual_moves",
    "list_models",
    "log_refused_run",
    "log_training_run",
    "promote",
    "resolve_alias",
]
