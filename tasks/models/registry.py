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
Writes hold a guard per registered model (``tasks/locks.py``: a lock file here, the
``aftersales-registry`` concurrency limit on a Prefect server), so concurrent flows do not
interleave; with a remote MLflow server, point ``paths.home`` at storage every runner shares.
A move made outside this module (UI, ``MlflowClient``) is recorded as ``manual`` the next time
any function here looks at that model, and a champion moved by hand leaves ``previous_champion``
on the version it replaced, so ``aftersales rollback`` can always go back.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import importlib.metadata
import json
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from schemas.derived import MODEL_ENTITY
from schemas.settings import Settings
from tasks.locks import hold

if TYPE_CHECKING:  # heavy (xgboost, sklearn, matplotlib): imported where training runs are logged
    from tasks.models.training import Baselines, DataSplits, RuleSpec, TrainedModel

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
    "interval_low",
    "interval_high",
    "window",
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


class RegistryUnreachableError(RegistryError, ConnectionError):
    """The tracking/registry server does not answer (or its store cannot be opened)."""


# ------------------------------------------------------------------------------ MLflow plumbing

# MLflow's own HTTP client retries 7 times with a growing back-off (minutes against a dead server);
# these bound it, unless the user set the variables explicitly
_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "request_retries",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "request_timeout_seconds",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "request_backoff_seconds",
}
_REACHABLE: set[str] = set()


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def ensure_reachable(settings: Settings) -> None:
    """Fail fast with one clear sentence when the tracking server does not answer its health check.

    A few bounded tries with back-off (``mlflow.request_retries``), each within
    ``mlflow.request_timeout_seconds``; a server that answered once in this process is not asked again.
    """
    import requests

    uri = settings.tracking_uri
    if not _is_http(uri) or uri in _REACHABLE:
        return
    cfg = settings.mlflow
    problem = ""
    for attempt in range(cfg.request_retries + 1):
        if attempt:
            time.sleep(cfg.request_backoff_seconds * 2 ** (attempt - 1))
        try:
            answer = requests.get(f"{uri.rstrip('/')}/health", timeout=cfg.request_timeout_seconds)
        except requests.RequestException as exc:
            problem = _first_line(exc)
            continue
        if answer.status_code < 500 and answer.status_code not in (404,):
            _REACHABLE.add(uri)
            return
        problem = f"HTTP {answer.status_code}"
    raise RegistryUnreachableError(f"the registry at {uri} cannot be reached ({problem}; "
                                   f"{cfg.request_retries + 1} tries)")


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow (tracking and registry) at the settings' store and return a client.

    HTTP calls are bounded (retries, timeout) and a remote server is health-checked first, so an
    outage is one clear error within seconds instead of minutes of silent retries.
    """
    for variable, key in _HTTP_ENV.items():
        os.environ.setdefault(variable, str(getattr(settings.mlflow, key)))
    registry_uri = settings.mlflow.registry_uri or settings.tracking_uri
    ensure_reachable(settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=registry_uri)


def not_found(exc: MlflowException) -> bool:
    """True for "no such model/version/alias"; False for outages, permissions, corrupt stores."""
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def unreachable(settings: Settings, exc: BaseException) -> RegistryUnreachableError:
    return RegistryUnreachableError(f"the registry at {settings.mlflow.registry_uri or settings.tracking_uri} "
                                    f"cannot be reached or read: {_first_line(exc)}")


def experiment_name(settings: Settings, model: str) -> str:
    """``aftersales-negative-review``: the same spelling as the registered model."""
    return f"{settings.mlflow.experiment_prefix}-{model.replace('_', '-')}"


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # classic ML: the UI opens on runs, not the GenAI overview
DESCRIPTION_TAG = "mlflow.note.content"  # what the UI's experiment list shows as its description


def experiment_description(settings: Settings, model: str) -> str:
    """The experiment list's description: an engineer who opens the UI sees what a run holds."""
    return (f"aftersales {model.replace('_', ' ')} risk model, registered as {experiment_name(settings, model)}. "
            "One run per training: test-window metrics, data windows and chosen parameters; its baselines "
            "(logistic regression, rule) are child runs on the same rows: select them and Compare.")


def ensure_experiment(client: MlflowClient, settings: Settings, model: str, description: str | None = None) -> str:
    """The model's experiment id, created with artifacts under ``settings.artifact_location``.

    ``description``: what the UI lists for it (a risk model's by default, ``experiment_description``).

    An experiment of an older version spelled ``aftersales-negative_review`` is renamed, so its
    runs stay with the model's new ones.
    """
    name = experiment_name(settings, model)
    if description is None and model in MODEL_ENTITY:
        description = experiment_description(settings, model)
    experiment = client.get_experiment_by_name(name)
    legacy = f"{settings.mlflow.experiment_prefix}-{model}"
    if experiment is None and legacy != name:
        old = client.get_experiment_by_name(legacy)
        if old is not None:
            with contextlib.suppress(MlflowException):
                client.rename_experiment(old.experiment_id, name)
                experiment = client.get_experiment(old.experiment_id)
    if experiment is None:
        location = f"{settings.artifact_location.rstrip('/')}/{name}"
        try:
            tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND} | ({DESCRIPTION_TAG: description} if description else {})
            experiment_id = client.create_experiment(name, artifact_location=location, tags=tags)
            return experiment_id
        except MlflowException:  # created concurrently by another run
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        with contextlib.suppress(MlflowException):
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if description and not experiment.tags.get(DESCRIPTION_TAG):  # an engineer's own description is kept
        with contextlib.suppress(MlflowException):
            client.set_experiment_tag(experiment.experiment_id, DESCRIPTION_TAG, description)
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
    """Who moved an alias: ``AFTERSALES_ACTOR`` if set (e.g. a named person behind a shared
    service account), else OS user@host; and the Prefect flow run when inside one."""
    user = os.environ.get("AFTERSALES_ACTOR") or _os_user()
    flow_run: str | None = None
    if "prefect" not in sys.modules:  # no flow run without Prefect loaded; importing it costs seconds
        return user, None
    try:
        from prefect.runtime import flow_run as current

        if current.id:
            flow_run = f"{current.flow_name}/{current.name} ({current.id})"
    except Exception:  # outside Prefect or no context: the user is enough
        flow_run = None
    return user, flow_run


def _os_user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _v(version: Any) -> str | None:
    """Version numbers as strings: the sqlite store returns ints, the REST store strings."""
    return None if version is None else str(version)


# ---------------------------------------------------------------------------------- alias lookup


def resolve_alias(name: str, alias: str, settings: Settings | None = None) -> ModelVersion:
    """The version an alias points to, asked from the registry every time (never cached).

    Raises ``ModelNotFoundError`` / ``AliasNotFoundError`` only when the registry answered that
    they do not exist; anything else (no answer, a broken store) is ``RegistryUnreachableError``.
    """
    client = configure(settings) if settings is not None else MlflowClient()
    uri = mlflow.get_registry_uri()
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if not_found(exc):
            raise ModelNotFoundError(f"No registered model {name!r} in {uri}: train and register it first.") from exc
        raise RegistryUnreachableError(f"the registry at {uri} cannot be reached or read: {_first_line(exc)}") from exc
    except (OSError, ConnectionError) as exc:
        raise RegistryUnreachableError(f"the registry at {uri} cannot be reached: {_first_line(exc)}") from exc
    if alias not in registered.aliases:
        known = ", ".join(f"{a}=v{v}" for a, v in sorted(registered.aliases.items())) or "none"
        raise AliasNotFoundError(f"Model {name!r} has no alias {alias!r} (aliases: {known}).")
    try:
        return client.get_model_version(name, str(registered.aliases[alias]))
    except MlflowException as exc:
        raise RegistryUnreachableError(f"the registry at {uri} cannot be reached or read: {_first_line(exc)}") from exc


def current_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Alias -> version (as str) straight from the registry; empty if the model does not exist."""
    try:
        return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    except MlflowException as exc:
        if not_found(exc):
            return {}
        raise RegistryUnreachableError(f"the registry cannot be read: {_first_line(exc)}") from exc


# --------------------------------------------------------------------------------- alias history


def alias_history_path(settings: Settings) -> Path:
    return (settings.paths.home / "registry" / "alias_history.jsonl").resolve()


@contextlib.contextmanager
def _model_lock(settings: Settings, registered_model: str) -> Iterator[None]:
    """One writer of a model's aliases at a time: read-compare-move-append never interleave.

    ``tasks/locks.py``: a lock file on this machine, the ``aftersales-registry`` concurrency limit
    on a Prefect server (so runs on other machines wait too).
    """
    with hold(settings, f"registry-{registered_model}", limit="registry", label=f"the aliases of {registered_model}"):
        yield


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
    interval_low: float | None = None  # paired bootstrap interval of challenger - champion (promotions)
    interval_high: float | None = None
    window: str | None = None  # the matured window both were scored on
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
    moved = next((e for e in events if e.alias == CHAMPION and e.from_version and e.to_version), None)
    if moved is not None and registry.get(PREVIOUS_CHAMPION) != moved.from_version:
        # a champion moved by hand keeps the way back, like a promotion does
        events.append(_move_alias(client, settings, model, PREVIOUS_CHAMPION, moved.from_version, "demoted",
                                  note=f"champion moved by hand from v{moved.from_version} to v{moved.to_version}"))
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
    notes: list[str] = field(default_factory=list)


def find_existing_version(
    client: MlflowClient, name: str, data_hash: str, code: str, config_hash: str
) -> ModelVersion | None:
    """A version trained on the same data with the same code and config, if any (oldest wins)."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if not_found(exc):
            return None
        raise RegistryUnreachableError(f"the registry cannot be searched: {_first_line(exc)}") from exc
    matches = [
        v
        for v in versions
        if v.tags.get("train_data_hash") == data_hash
        and v.tags.get("code_version") == code
        and v.tags.get("training_config_hash") == config_hash
    ]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def identical_version(model: str, settings: Settings, splits: DataSplits, rule: RuleSpec | None,
                      calibration_share: float = 0.0, code: str | None = None) -> RegisteredVersion | None:
    """The version already trained on exactly these rows with this code and configuration, with the
    test metrics and notes it was registered with; asked before fitting, so a rerun on unchanged
    data skips a fit whose result is known (``log_training_run`` makes the same match after one).
    ``calibration_share`` 0: the rolling-origin fit's (``fit_as_of``)."""
    from tasks.models.evaluation import prefixed
    from tasks.models.training import training_config_hash

    client = configure(settings)
    name = settings.registered_model_name(model)
    data_hash = training_data_hash(splits, settings.mlflow.dedupe_significant_digits)
    code = code or code_version()
    found = find_existing_version(client, name, data_hash, code,
                                  training_config_hash(settings, rule, calibration_share))
    if found is None or found.run_id is None:
        return None
    metrics = dict(client.get_run(found.run_id).data.metrics)
    with contextlib.suppress(MlflowException, OSError):  # the parent run's own metrics still stand
        for scorer, values in mlflow.artifacts.load_dict(f"runs:/{found.run_id}/metrics/test_metrics.json").items():
            metrics |= prefixed(values, SCORER_PREFIX.get(scorer, f"{scorer}_test_"))
    notes: list[str] = []
    with contextlib.suppress(MlflowException, OSError):
        notes = mlflow.artifacts.load_text(f"runs:/{found.run_id}/notes.txt").splitlines()
    return RegisteredVersion(
        model=model, registered_model=name, version=str(found.version), run_id=found.run_id, is_new=False,
        aliases=sorted(a for a, v in current_aliases(client, name).items() if v == str(found.version)),
        train_data_hash=data_hash, code_version=code, metrics=metrics, notes=notes)


def _significant(values: np.ndarray, digits: int) -> np.ndarray:
    """Floats rounded to ``digits`` significant digits (NaN and inf unchanged)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(values))))
        return np.where(np.isfinite(scale) & (values != 0), np.round(values * scale) / scale, values)


def training_data_hash(splits: DataSplits, digits: int = 6) -> str:
    """What the model was trained and judged on, equal for equal data however it was computed.

    Per split: the column names and dtypes, and the sorted per-row hashes of features, label and
    cutoff, floats to ``digits`` significant digits. Two reads of unchanged data are not
    bit-identical: DuckDB sums in parallel, so an average such as a mean unit price differs in its
    last bit from run to run (37.99 vs 37.989999999999995), and rows come in no fixed order.
    Hashing the exact values in their order made every retrain look like new data (issue 14.3).
    """
    digest = hashlib.sha256()
    for split, (X, y, t) in splits.parts().items():
        frame = X.assign(__label=np.asarray(y))
        if t is not None:
            frame["__cutoff"] = np.asarray(t)
        digest.update(split.encode())
        digest.update(json.dumps([[str(c), str(d)] for c, d in frame.dtypes.items()]).encode())
        floats = [c for c, d in frame.dtypes.items() if pd.api.types.is_float_dtype(d)]
        if floats:
            frame[floats] = _significant(frame[floats].to_numpy(dtype=float), digits)
        rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        digest.update(np.sort(rows).tobytes())
    return digest.hexdigest()


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
    from tasks.templates import render

    return render("data_profile.html.j2", model=model,
                  label_rates=label_rates.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0),
                  columns=describe.to_html(float_format=lambda v: f"{v:.4g}", border=0))


def _pip_requirements() -> list[str]:
    version = importlib.metadata.version
    return [
        f"mlflow=={mlflow.__version__}",
        f"xgboost-cpu=={version('xgboost-cpu')}",
        f"scikit-learn=={version('scikit-learn')}",
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
    import mlflow.data
    from mlflow.models import infer_signature

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
    from tasks.models.evaluation import (
        plot_calibration,
        plot_feature_importance,
        plot_pr_curves,
        plot_shap_summary,
        sample_rows,
    )

    y = np.asarray(splits.y_test, dtype=float)
    mlflow.log_figure(
        plot_feature_importance(trained.importance(), title=f"{model}: feature importance ({trained.importance_kind})"),
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


BASELINE_RUNS = {
    "model_raw": ("booster, uncalibrated", "the same XGBoost before calibration"),
    "baseline_logreg": ("baseline: logistic regression", "a logistic regression on the same features"),
    "baseline_rule": ("baseline: one-line rule", "ranks by one feature (training.baseline_rules)"),
}


def _prefect_tags() -> dict[str, str]:
    """The Prefect flow run that logged an MLflow run: one click from MLflow back to Prefect."""
    tags: dict[str, str] = {}
    if "prefect" not in sys.modules:
        return tags
    with contextlib.suppress(Exception):
        from prefect.runtime import flow_run

        if flow_run.id:
            tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name)}
            if flow_run.ui_url:
                tags["prefect.flow_run_url"] = str(flow_run.ui_url)
    return tags


def _what_changed(client: MlflowClient, name: str, data_hash: str, code: str, config_hash: str) -> str:
    """Against the latest version: which of data, code and training settings differ."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return "unknown"
    if not versions:
        return "first version"
    last = max(versions, key=lambda v: int(v.version))
    changed = [what for what, tag, value in (("data", "train_data_hash", data_hash), ("code", "code_version", code),
                                             ("training settings", "training_config_hash", config_hash))
               if last.tags.get(tag) != value]
    return f"vs v{last.version}: " + (", ".join(changed) + " changed" if changed else "nothing changed")


def _description(model: str, splits: DataSplits, metrics: Mapping[str, float], changed: str,
                 kind: str = "XGBoost trees") -> str:
    """Markdown shown on the run and the version in the MLflow UI."""
    windows = pd.DataFrame([{"split": split, "window": _window(t), "rows": f"{len(y):,}",
                             "positives": f"{int(np.asarray(y).sum()):,}"}
                            for split, (_, y, t) in splits.parts().items()])
    scorers = [("model", "model"), *((k, v[0]) for k, v in BASELINE_RUNS.items())]
    scores = pd.DataFrame([{"test window": label, **{name: metrics.get(SCORER_PREFIX[scorer] + m, math.nan)
                                                     for name, m in (("ROC-AUC", "roc_auc"), ("PR-AUC", "pr_auc"),
                                                                     ("Brier", "brier"), ("lift@k", "lift_at_k"))}}
                           for scorer, label in scorers if f"{SCORER_PREFIX[scorer]}roc_auc" in metrics])
    return (f"**{model}** risk model ({kind}, calibrated). {changed}.\n\n{windows.to_markdown(index=False)}\n\n"
            f"{scores.to_markdown(index=False, floatfmt='.3f')}")


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

    Same training data (``training_data_hash``: content, not row order) + code version + training
    config -> the existing version is returned and nothing is logged (MLflow would otherwise add a
    duplicate version, mlflow #19036). A new version becomes ``challenger``; the first version of a
    model is also ``champion``. The parent run holds the model's metrics; the uncalibrated booster
    and each baseline are child runs with the same metric names, so the MLflow UI compares them.
    """
    from mlflow.models import infer_signature

    from tasks.models.evaluation import evaluate_scores, prefixed
    from tasks.models.training import OUTPUTS, score_window, training_config_hash

    client = configure(settings)
    name = settings.registered_model_name(model)
    data_hash = training_data_hash(splits, settings.mlflow.dedupe_significant_digits)
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
        changed = _what_changed(client, name, data_hash, code, config_hash)
        experiment_id = ensure_experiment(client, settings, model)
        # after a rolling-origin fit the test rows are inside the refit: use its out-of-time scores
        scores = splits.test_scores if splits.test_scores is not None else score_window(trained, baselines,
                                                                                         splits.X_test)
        results = evaluate_scores(splits.y_test, scores, settings.training.top_k)
        metrics: dict[str, float] = {}
        for scorer, values in results.items():
            metrics.update(prefixed(values, SCORER_PREFIX[scorer]))
        kind = "XGBoost linear booster" if trained.model.linear is not None else "XGBoost trees"
        description = _description(model, splits, metrics, changed, kind)
        run_tags = {
            MODEL_TAG: model,
            "train_data_hash": data_hash,
            "code_version": code,
            "training_config_hash": config_hash,
            "what_changed": changed,
            "mlflow.note.content": description,
            **_prefect_tags(),
            **{f"window_{s}": _window(t) for s, (_, _, t) in splits.parts().items()},
        }
        nested = mlflow.active_run() is not None
        run_name = f"train-{model}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, nested=nested) as run:
            mlflow.set_tags(run_tags)
            _log_params(model, trained, splits, rule)
            mlflow.log_metrics({**prefixed(results["model"], SCORER_PREFIX["model"]), **trained.extra_metrics,
                                "fit_seconds": trained.fit_seconds})
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
            for scorer, (label, what) in BASELINE_RUNS.items():
                if scorer not in results:
                    continue
                with mlflow.start_run(experiment_id=experiment_id, run_name=f"{model}: {label}", nested=True):
                    mlflow.set_tags({MODEL_TAG: model, "scorer": scorer, "mlflow.note.content": what,
                                     "train_data_hash": data_hash, **_prefect_tags()})
                    if scorer == "baseline_rule" and rule is not None:
                        mlflow.log_param("rule", rule.describe())
                    mlflow.log_metrics(prefixed(results[scorer], SCORER_PREFIX["model"]))
        version_tags = {
            "train_data_hash": data_hash,
            "code_version": code,
            "training_config_hash": config_hash,
            "run_id": run.info.run_id,
            "window_test": run_tags["window_test"],
            "what_changed": changed,
            **{f"test_{m}": f"{results['model'][m]:.6g}" for m in VERSION_TAG_METRICS},
        }
        registered = mlflow.register_model(info.model_uri, name, tags=version_tags)
        version = str(registered.version)
        with contextlib.suppress(MlflowException):
            client.update_model_version(name, version, description=description)
        client.set_registered_model_tag(name, MODEL_TAG, model)
        first = len(client.search_model_versions(f"name = '{name}'")) == 1
        if first:
            with contextlib.suppress(MlflowException):
                client.update_registered_model(name, description=(
                    f"aftersales {model} risk model. Aliases: champion (what the daily scoring run loads), "
                    "challenger (the latest trained version), previous_champion (where `aftersales rollback` "
                    "goes). Every version's description says its data windows, test metrics vs baselines and "
                    "what changed."))
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
    interval_low: float | None = None  # improvement in the metric's good direction, paired bootstrap
    interval_high: float | None = None
    calibration_low: float | None = None  # challenger ECE - champion ECE
    calibration_high: float | None = None
    window: str | None = None
    rows: int = 0
    clusters: int = 0


def paired_bootstrap(y: np.ndarray, champion: np.ndarray, challenger: np.ndarray, groups: np.ndarray | None,
                     metric: str, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Improvement in ``metric`` (good direction) and challenger - champion ECE over paired resamples.

    Both models are scored on the same resampled rows in each draw; whole customers are resampled
    (a customer's rows at several cutoffs are not independent). Draws where a metric is undefined
    (a single class) are dropped.
    """
    from tasks.models.evaluation import classification_metrics, higher_is_better

    rng = np.random.default_rng(seed)
    keys = groups if groups is not None else np.arange(y.size)
    _, index = np.unique(keys, return_inverse=True)
    order = np.argsort(index, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(index))[:-1]) if y.size else []
    sign = 1.0 if higher_is_better(metric) else -1.0
    gains, calibration = [], []
    for _ in range(draws):
        rows = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        ch = classification_metrics(y[rows], challenger[rows], 1)
        cp = classification_metrics(y[rows], champion[rows], 1)
        gains.append(sign * (ch[metric] - cp[metric]))
        calibration.append(ch["ece"] - cp["ece"])
    gains_arr, cal_arr = np.asarray(gains, dtype=float), np.asarray(calibration, dtype=float)
    return gains_arr[np.isfinite(gains_arr)], cal_arr[np.isfinite(cal_arr)]


def _score_alias(name: str, alias: str, X: pd.DataFrame) -> np.ndarray:
    """Load ``models:/<name>@<alias>`` and score through pyfunc, as the scoring flow would."""
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
    inner = loaded.unwrap_python_model()
    return np.asarray(loaded.predict(inner.model_input(X)), dtype=float)


def compare(champion: float, challenger: float, metric: str, margin: float) -> tuple[bool, float]:
    """(challenger better by more than margin?, improvement in the metric's good direction)."""
    from tasks.models.evaluation import higher_is_better

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
        from tasks.models.evaluation import prefixed

        mlflow.log_params({"metric": result.metric, "margin": result.margin, "test_rows": len(X_test),
                           "window": result.window or "", "customers": result.clusters,
                           "calibration_margin": settings.training.promotion_calibration_margin,
                           "confidence": settings.training.promotion_confidence})
        metrics = {
            **prefixed(result.champion_metrics, "champion_test_"),
            **prefixed(result.challenger_metrics, "challenger_test_"),
        }
        if result.improvement is not None:
            metrics["improvement"] = result.improvement
        for key in ("interval_low", "interval_high", "calibration_low", "calibration_high"):
            value = getattr(result, key)
            if value is not None and math.isfinite(value):
                metrics[f"improvement_{key}" if key.startswith("interval") else f"ece_difference_{key[12:]}"] = value
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
            "last_comparison_interval": _interval_text(result.interval_low, result.interval_high),
            "last_comparison_window": str(result.window or "n/a"),
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)


def _interval_text(low: float | None, high: float | None) -> str:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    return f"[{low:+.4f}, {high:+.4f}]"


def decide_promotion(improvement: float, gains: np.ndarray, calibration: np.ndarray, margin: float,
                     calibration_margin: float, confidence: float) -> tuple[str, float, float, float, float]:
    """(decision, interval of the improvement, interval of the ECE difference) by evidence.

    Promoted only when the lower end of the improvement's interval clears ``margin`` AND the upper
    end of challenger ECE - champion ECE stays below ``calibration_margin`` (non-inferior calibration).
    """
    alpha = 1 - confidence
    if not math.isfinite(improvement) or gains.size < 20:
        return "not_comparable", math.nan, math.nan, math.nan, math.nan
    low, high = (float(q) for q in np.quantile(gains, [alpha / 2, 1 - alpha / 2]))
    cal_low, cal_high = ((float(q) for q in np.quantile(calibration, [alpha / 2, 1 - alpha / 2]))
                         if calibration.size else (math.nan, math.nan))
    better = low > margin
    calibrated = math.isfinite(cal_high) and cal_high < calibration_margin
    return ("promoted" if better and calibrated else "kept_champion"), low, high, cal_low, cal_high


def promote(
    model: str,
    settings: Settings,
    X_test: pd.DataFrame,
    y_test: pd.Series,
    force: bool = False,
    reason: str = "",
    groups: pd.Series | np.ndarray | None = None,
    window: str | None = None,
) -> PromotionResult:
    """Score champion and challenger on the same window; move ``champion`` only on evidence.

    A paired bootstrap (``promotion_bootstrap`` draws, whole ``groups`` — customers — resampled)
    gives the interval of the improvement in ``promotion_metric`` (lower is better for brier) and of
    challenger ECE - champion ECE. The challenger wins when the improvement's interval lies above
    ``promotion_margin`` and its calibration is non-inferior (``promotion_calibration_margin``).
    ``force`` moves it regardless. The old champion becomes ``previous_champion``. The decision,
    intervals and window go to the alias history, the MLflow comparison run and the versions' tags.
    A missing alias gives a result with a clear message, not an exception.
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

        from tasks.models.evaluation import classification_metrics

        cfg = settings.training
        top_k = cfg.top_k
        y_arr = np.asarray(y_test, dtype=float)
        p_challenger = _score_alias(name, CHALLENGER, X_test)
        p_champion = _score_alias(name, CHAMPION, X_test) if champion_v else None
        challenger_metrics = classification_metrics(y_arr, p_challenger, top_k)
        champion_metrics = classification_metrics(y_arr, p_champion, top_k) if p_champion is not None else {}
        if current_aliases(client, name) != aliases:
            raise RegistryError(f"Aliases of {name} changed while comparing; run promote again.")
        challenger_score = challenger_metrics[metric]
        champion_score = champion_metrics.get(metric, math.nan)
        _, improvement = compare(champion_score, challenger_score, metric, margin)
        group_arr = None if groups is None else np.asarray(groups).astype(str)
        evidence: tuple[str, float, float, float, float] = ("not_comparable", *([math.nan] * 4))
        if p_champion is not None and math.isfinite(improvement):
            gains, calibration = paired_bootstrap(y_arr, p_champion, p_challenger, group_arr, metric,
                                                  cfg.promotion_bootstrap, cfg.seed)
            evidence = decide_promotion(improvement, gains, calibration, margin, cfg.promotion_calibration_margin,
                                        cfg.promotion_confidence)
        decision = "forced" if force else evidence[0]
        low, high, cal_low, cal_high = evidence[1:]
        promoted = decision in ("forced", "promoted")
        why = ""
        if decision == "kept_champion":
            why = (f" (the interval does not clear the margin {margin})" if not low > margin else
                   f" (calibration not non-inferior: ECE difference up to {cal_high:+.4f} >= "
                   f"{cfg.promotion_calibration_margin})")
        verb = {
            "forced": "forced to champion",
            "promoted": "promoted to champion",
            "kept_champion": "not promoted" + why,
            "not_comparable": f"not promoted: {metric} is undefined on this window (single class?)",
        }[decision]
        level = f"{cfg.promotion_confidence:.0%}"
        message = (
            f"{name}: challenger v{challenger_v} {verb}; {metric} challenger {challenger_score:.4f} vs "
            f"champion {'v' + champion_v if champion_v else 'none'} {champion_score:.4f} "
            f"(improvement {improvement:+.4f}, {level} paired bootstrap interval {_interval_text(low, high)}, "
            f"margin {margin}; ECE difference {_interval_text(cal_low, cal_high)}"
            f"{'; window ' + window if window else ''}; {len(y_arr)} rows)."
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
            interval_low=_finite_or_none(low),
            interval_high=_finite_or_none(high),
            calibration_low=_finite_or_none(cal_low),
            calibration_high=_finite_or_none(cal_high),
            window=window,
            rows=len(y_arr),
            clusters=len(np.unique(group_arr)) if group_arr is not None else len(y_arr),
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
            "interval_low": result.interval_low,
            "interval_high": result.interval_high,
            "window": window,
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


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


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


# ------------------------------------------------------------------------------ manual moves


@dataclass
class ChampionMove:
    """A champion moved by a person (rollback, promote --to): what changed, for one line of output."""

    model: str
    registered_model: str
    from_version: str | None
    to_version: str
    message: str


def _versions(client: MlflowClient, name: str) -> list[str]:
    return sorted((str(v.version) for v in client.search_model_versions(f"name = '{name}'")), key=int)


def set_champion(model: str, settings: Settings, version: str, reason: str = "manual_promotion",
                 note: str = "") -> ChampionMove:
    """Make ``version`` the champion now, without a comparison; the old champion becomes
    ``previous_champion``. Recorded with the actor like every move."""
    client = configure(settings)
    name = settings.registered_model_name(model)
    with _model_lock(settings, name):
        _record_manual_moves(client, settings, model, name)
        aliases = current_aliases(client, name)
        if not aliases and not _is_registered(client, name):
            raise ModelNotFoundError(f"No registered model {name!r}: train and register it first.")
        known = _versions(client, name)
        if str(version) not in known:
            raise RegistryError(f"{name} has no version {version} (versions: {', '.join(known) or 'none'}).")
        champion = aliases.get(CHAMPION)
        if champion == str(version):
            return ChampionMove(model, name, champion, str(version), f"{name} v{version} is already champion.")
        if champion is not None:
            _move_alias(client, settings, model, PREVIOUS_CHAMPION, champion, "demoted", note=note)
        _move_alias(client, settings, model, CHAMPION, str(version), reason, note=note)
    was = f"v{champion}" if champion else "none"
    return ChampionMove(model, name, champion, str(version),
                        f"{name}: champion is now v{version} (was {was}; previous_champion = {was}).")


def rollback(model: str, settings: Settings) -> ChampionMove:
    """Champion back to ``previous_champion`` (which becomes the version rolled back from)."""
    client = configure(settings)
    name = settings.registered_model_name(model)
    with _model_lock(settings, name):
        _record_manual_moves(client, settings, model, name)
        target = current_aliases(client, name).get(PREVIOUS_CHAMPION)
    if target is None:
        raise RegistryError(f"{name} has no previous_champion to roll back to; choose a version with "
                            f"`aftersales promote {model} --to VERSION` (versions: `aftersales models`).")
    return set_champion(model, settings, target, reason="rollback", note="aftersales rollback")


# ---------------------------------------------------------------------------------- Prefect tasks


def _task_wrappers() -> dict[str, Any]:
    """Thin Prefect tasks, built on first use: importing Prefect costs seconds that ``aftersales
    models`` (a plain read of the registry) should not pay."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return {
        "log_training_run_task": task(name="log-training-run", cache_policy=NO_CACHE)(log_training_run),
        "promote_task": task(name="promote-model", cache_policy=NO_CACHE)(promote),
        "list_models_task": task(name="list-models", cache_policy=NO_CACHE)(list_models),
    }


_TASKS: dict[str, Any] = {}


def __getattr__(name: str) -> Any:  # PEP 562: ``from tasks.models.registry import promote_task`` still works
    if name in ("log_training_run_task", "promote_task", "list_models_task"):
        if not _TASKS:
            _TASKS.update(_task_wrappers())
        return _TASKS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALIASES",
    "AliasNotFoundError",
    "ChampionMove",
    "ModelNotFoundError",
    "PromotionResult",
    "RegisteredVersion",
    "RegistryError",
    "RegistryUnreachableError",
    "alias_history",
    "alias_history_path",
    "code_version",
    "detect_manual_moves",
    "list_models",
    "log_refused_run",
    "log_training_run",
    "promote",
    "resolve_alias",
    "rollback",
    "set_champion",
    "training_data_hash",
]
