"""Scoring as of a run date with whichever versions hold ``champion`` when the run starts.

The champions are resolved once per run (never cached across runs: a promotion made by hand in
the MLflow UI is honoured by the next run) and pinned by version for the rest of it, so every row
of one list comes from the same models. Explanations are computed only for the rows that can
make the list, because exact TreeSHAP costs a thousand times more than a prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from schemas.derived import MODEL_ENTITY
from schemas.settings import Settings
from schemas.tables import SCORES_TABLE  # noqa: F401 (re-exported: score and monitoring import it here)
from schemas.tasks import REASON_COUNT, ScoredRows
from tasks.data.warehouse import Warehouse
from tasks.models.datasets import feature_columns, scoring_frame
from tasks.models.explain import top_reasons
from tasks.models.registry import (
    AliasNotFoundError,
    ModelNotFoundError,
    RegistryError,
    RegistryUnreachableError,
    configure,
    resolve_alias,
)

CHAMPION = "champion"


class ScoringError(RuntimeError):
    """Scoring cannot start; the message says why in words (no model, no registry)."""


class ModelRefusedError(ScoringError):
    """One model cannot be trusted for this run (its inputs break its signature, its scores are constant)."""


@dataclass
class Champion:
    model: str
    registered_model: str
    version: str
    scorer: Any  # the AftersalesModel inside the pyfunc: predict_proba + contributions
    pyfunc: Any = None  # the MLflow model: predict() enforces the signature the version was logged with

    @property
    def label(self) -> str:
        return f"{self.registered_model} v{self.version}"


def _model_file(local: Path) -> str:
    """The file a python-function model is unpickled from, as its MLmodel names it."""
    try:
        from mlflow.models import Model

        conf = Model.load(str(local)).flavors.get("python_function", {})
    except Exception:  # MLmodel itself unreadable
        return "MLmodel"
    return str(conf.get("python_model") or conf.get("model_path") or "MLmodel")


def load_version(settings: Settings, model: str, version: str) -> Champion:
    """Download one version and load it; an unreadable artifact names the model, version and file."""
    import mlflow.artifacts

    name = settings.registered_model_name(model)
    uri = f"models:/{name}/{version}"
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except (MlflowException, OSError, ConnectionError) as exc:
        raise ScoringError(f"model {name} v{version}: its files cannot be fetched from the registry at "
                           f"{settings.tracking_uri}: {str(exc).splitlines()[0][:200]}") from exc
    try:
        loaded = mlflow.pyfunc.load_model(str(local))
        scorer = loaded.unwrap_python_model()
    except Exception as exc:  # truncated or garbage pickle, missing file, foreign class
        raise ModelRefusedError(
            f"model {name} v{version}: file {_model_file(local)} cannot be read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:150] if str(exc) else 'no detail'}); the artifact is corrupt or incomplete. "
            f"Retrain, or move champion to a good version (aftersales rollback {model})") from exc
    return Champion(model, name, str(version), scorer, loaded)


def find_champions(settings: Settings, models: list[str]) -> tuple[dict[str, Champion], dict[str, str]]:
    """Each model's champion resolved now and loaded; models without one are skipped with the reason.

    An unreachable registry is not a reason to skip: it raises, naming the registry's address.
    """
    champions: dict[str, Champion] = {}
    skipped: dict[str, str] = {}
    try:
        configure(settings)
        for model in models:
            name = settings.registered_model_name(model)
            try:
                version = str(resolve_alias(name, CHAMPION, settings).version)
            except ModelNotFoundError:
                skipped[model] = "no champion: no version registered yet (train registers one or says why not)"
                continue
            except AliasNotFoundError as exc:
                skipped[model] = f"no champion ({exc})"
                continue
            try:
                champions[model] = load_version(settings, model, version)
            except ModelRefusedError as exc:
                skipped[model] = str(exc)
    except RegistryUnreachableError as exc:
        raise ScoringError(str(exc)) from exc
    except RegistryError as exc:
        raise ScoringError(f"no champion to score with: {exc}") from exc
    except (MlflowException, OSError, ConnectionError) as exc:
        raise ScoringError(f"the registry at {settings.tracking_uri} cannot be reached or read: "
                           f"{str(exc).splitlines()[0][:300]}") from exc
    return champions, skipped


def load_champions(settings: Settings, models: list[str]) -> dict[str, Champion]:
    """Resolve ``models:/<name>@champion`` now and load exactly that version; every model must have one."""
    champions, skipped = find_champions(settings, models)
    if skipped:
        raise ScoringError("no champion to score with: " + "; ".join(f"{m}: {why}" for m, why in skipped.items()))
    return champions


# ------------------------------------------------------------------------------- signature checks


def check_signature(champion: Champion, frame: pd.DataFrame) -> None:
    """The scoring frame against the input signature the version was logged with, before any cast.

    A missing column, or a column whose values are not of the signed type (text where numbers are
    signed, numbers where text is signed), refuses the model with the column named. Without this,
    a cast would turn such values into missing ones and the model would score on them silently.
    """
    schema = champion.pyfunc.metadata.get_input_schema() if champion.pyfunc is not None else None
    if schema is None:
        return
    inputs = schema.inputs
    missing = [spec.name for spec in inputs if spec.name not in frame.columns and spec.required]
    if missing:
        raise ModelRefusedError(f"model {champion.label} needs input column(s) {', '.join(missing)} that the "
                                "scoring data lacks (features changed since it was trained?)")
    wrong = []
    for spec in inputs:
        if spec.name not in frame.columns:
            continue
        values = frame[spec.name]
        kind = getattr(spec.type, "name", str(spec.type))  # MLflow 3.17 prints DataType.double
        numeric = pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)
        if kind in ("double", "float", "long", "integer", "boolean") and not numeric:
            present = values.dropna()
            converted = pd.to_numeric(present, errors="coerce")
            if converted.isna().any():
                example = present[converted.isna()].iloc[0]
                wrong.append(f"{spec.name} (signed {kind}, got text such as {str(example)[:30]!r})")
        elif kind == "string" and numeric and values.notna().any():
            wrong.append(f"{spec.name} (signed string, got {values.dtype})")
    if wrong:
        raise ModelRefusedError(f"model {champion.label}: input of the wrong type in {'; '.join(wrong)}")


def predict(champion: Champion, features: pd.DataFrame) -> np.ndarray:
    """Calibrated probabilities through MLflow's pyfunc, which enforces the signature too."""
    if champion.pyfunc is None:  # a champion built by hand (benchmarks): the python model directly
        return np.asarray(champion.scorer.predict_proba(features), dtype=float)
    try:
        return np.asarray(champion.pyfunc.predict(champion.scorer.model_input(features)), dtype=float)
    except MlflowException as exc:
        detail = str(exc)
        detail = detail.split("Error:", 1)[-1].strip().splitlines()[0][:300] if "Error:" in detail else detail[:300]
        raise ModelRefusedError(f"model {champion.label} refused its input: {detail}") from exc


def refuse_constant(champion: Champion, probability: np.ndarray, settings: Settings) -> None:
    """The same probability for a whole scored population means a broken model or broken inputs."""
    if len(probability) >= settings.scoring.constant_check_min_rows and np.ptp(probability) == 0:
        raise ModelRefusedError(f"model {champion.label} gave every one of {len(probability):,} rows the same "
                                f"probability {probability[0]:.4f}: a broken model or inputs (every feature "
                                f"missing?); its scores were not used")


def value_at_stake(model: str, frame: pd.DataFrame, settings: Settings, cap: float | None = None) -> pd.Series:
    """What a bad outcome costs, on one scale for every risk: the margin it loses.

    An order risk (return, bad review, late delivery) puts the order's margin at stake; churn puts
    the margin the customer would bring in ``scoring.churn_value_days`` (their spend rate over the
    last year times those days: a lost customer's value does not end with the 90-day label window,
    and with the horizon alone a typical win-back contact never paid for itself on a real grocer).
    Both are then capped at ``cap`` (``stake_cap``), so a wholesale basket or a big spender counts
    like a large ordinary one and the probability decides the rest.
    """
    cfg = settings.scoring
    if MODEL_ENTITY[model] == "order":
        value = frame["order_value"].fillna(0).clip(lower=0) * cfg.margin_rate
    else:
        yearly = frame["value_365d"].fillna(0)
        per_day = yearly.where(yearly > 0, frame["avg_order_value"].fillna(0)) / 365.0
        value = per_day.clip(lower=0) * cfg.churn_value_days * cfg.margin_rate
    return value if cap is None else value.clip(upper=cap)


def stake_cap(wh: Warehouse | None, model: str, frame: pd.DataFrame, run_date: pd.Timestamp,
              settings: Settings) -> float | None:
    """The shop's cap on value at stake: the ``value_cap_quantile`` of the same value over the shop.

    Order risks: over the orders placed in the year before the run date (a day's population is too
    small to estimate a tail; without a warehouse, the scored rows). Churn: over the day's population.
    """
    q = settings.scoring.value_cap_quantile
    if MODEL_ENTITY[model] == "order" and wh is not None:
        totals = wh.query("SELECT total_amount FROM orders WHERE ordered_at <= ? AND ordered_at > ?",
                          [run_date.to_pydatetime(), (run_date - pd.Timedelta(days=365)).to_pydatetime()])
        values = value_at_stake(model, totals.rename(columns={"total_amount": "order_value"}), settings)
    else:
        values = value_at_stake(model, frame, settings)
    return float(values.quantile(q)) if len(values) else None


def risk_of_rows(model: str, frame: pd.DataFrame) -> pd.Series:
    """Overdue orders of the review model are the late-delivery watch."""
    if model == "negative_review":
        if "moment" in frame:
            late_watch = frame["moment"].astype("string").eq("overdue")
        else:
            late_watch = frame["is_delivered"].fillna(0).eq(0)
        return pd.Series(np.where(late_watch, "late_delivery", "negative_review"), index=frame.index)
    return pd.Series(model, index=frame.index)


def score_model(wh: Warehouse, champion: Champion, run_date: pd.Timestamp, settings: Settings,
                frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """The model's population at the run date with probability, risk and value at stake.

    ``frame``: that population's ``scoring_frame`` when already built (``scoring_frames``).
    """
    frame = scoring_frame(wh, champion.model, run_date, settings) if frame is None else frame.copy()
    if frame.empty:  # the same columns, so downstream steps need no special case
        return frame.assign(probability=pd.Series(dtype=float), risk=pd.Series(dtype=str),
                            value_at_stake=pd.Series(dtype=float), model_version=pd.Series(dtype=str))
    features = feature_columns(champion.model)
    check_signature(champion, frame)
    probability = np.clip(predict(champion, frame[features]), 0.0, 1.0)
    refuse_constant(champion, probability, settings)
    frame["probability"] = probability
    frame["risk"] = risk_of_rows(champion.model, frame)
    cap = stake_cap(wh, champion.model, frame, run_date, settings)
    frame["value_at_stake"] = value_at_stake(champion.model, frame, settings, cap)
    frame["model_version"] = champion.label
    return frame


def scoring_funnel(scored: dict[str, pd.DataFrame], settings: Settings) -> dict[str, dict[str, int]]:
    """Per model: rows scored and rows at or above ``scoring.min_probability``.

    Why: "4 tasks" for 2,417 scored customers reads like a fault; most rows of a well-calibrated model
    with a 5 % base rate sit below the floor, and the user should see that is where they went.
    """
    floor = settings.scoring.min_probability
    return {model: {"rows": len(frame), "above_floor": int((frame["probability"] >= floor).sum())}
            for model, frame in scored.items()}


def customers_above_floor(scored: dict[str, pd.DataFrame], settings: Settings) -> int:
    """Distinct customers with any row at or above ``scoring.min_probability``: the funnel's first step
    (before ``list_candidates`` keeps each risk's best, where a big day loses most of them)."""
    floor = settings.scoring.min_probability
    ids = [frame.loc[frame["probability"] >= floor, "customer_id"].astype(str) for frame in scored.values()]
    return int(pd.concat(ids).nunique()) if ids else 0


def list_candidates(scored: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Rows that can reach the list: above the floor and among the best by expected value.

    Per risk, at most ``explain_headroom`` times the day's total capacity (by probability x value,
    by probability alone when the data carries no amounts for it): cool-downs, the
    one-task-per-customer merge and the control draw remove some, the rest never make it.
    """
    cfg = settings.scoring
    limit = int(cfg.explain_headroom * sum(cfg.queue_capacity.values()))
    eligible = np.flatnonzero((scored["probability"] >= cfg.min_probability).to_numpy())
    # ranked by positions, and only the kept rows of the wide frame copied: sorting all 500k rows of
    # ~70 columns to keep a few thousand took most of this step
    ranking = scored[["risk", "probability", "value_at_stake"]].iloc[eligible].reset_index(drop=True)
    value = ranking["value_at_stake"].astype(float)
    priced = value.gt(0).groupby(ranking["risk"]).transform("any").astype(bool)
    gain = ranking["probability"] * value.where(priced, 1.0)  # no amounts for a risk: its probability ranks
    ranked = gain.sort_values(ascending=False, kind="stable")
    kept = ranked.groupby(ranking["risk"], sort=False).head(limit).index
    return scored.iloc[eligible[kept]]


def explain(candidates: pd.DataFrame, champion: Champion) -> pd.DataFrame:
    """The top positive drivers of each candidate row, from the model's own contributions."""
    features = feature_columns(champion.model)
    if candidates.empty:
        return pd.DataFrame(index=candidates.index)
    contributions = champion.scorer.contributions(candidates[features])
    return top_reasons(contributions, features, candidates[features], k=REASON_COUNT)


def scored_rows(candidates: pd.DataFrame, reasons: pd.DataFrame, run_date: pd.Timestamp,
                tags: pd.DataFrame | None) -> pd.DataFrame:
    """Candidates in the task list's input contract (``ScoredRows``)."""
    out = pd.DataFrame({
        ScoredRows.run_date: run_date,
        ScoredRows.risk: candidates["risk"],
        ScoredRows.customer_id: candidates["customer_id"].astype(str),
        ScoredRows.order_id: candidates.get("order_id"),
        ScoredRows.probability: candidates["probability"].astype(float),
        ScoredRows.value_at_stake: candidates["value_at_stake"].astype(float),
        ScoredRows.model_version: candidates["model_version"],
    }, index=candidates.index)
    out = out.join(reasons)
    if tags is not None and len(tags):  # agents read the segment's name, not its id
        named = tags.assign(segment=tags["segment_name"].fillna(tags["segment"]))
        out = out.merge(named[[ScoredRows.customer_id, ScoredRows.tags, ScoredRows.segment]], how="left",
                        on=ScoredRows.customer_id)
    return out.reset_index(drop=True)


def scores_table(scored: pd.DataFrame, run_date: pd.Timestamp) -> pd.DataFrame:
    """Every scored row (not only candidates), for monitoring and realised performance later."""
    return pd.DataFrame({
        "run_date": run_date,
        "risk": scored["risk"].to_numpy(),
        "model_version": scored["model_version"].to_numpy(),
        "customer_id": scored["customer_id"].astype(str).to_numpy(),
        "order_id": (scored["order_id"].astype(str).to_numpy() if "order_id" in scored
                     else np.full(len(scored), None)),
        "probability": scored["probability"].to_numpy(),
        "value_at_stake": scored["value_at_stake"].to_numpy(),
    })
