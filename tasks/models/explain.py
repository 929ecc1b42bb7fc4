"""Why a row is risky, in words a care agent can use.

Two steps. ``top_reasons`` turns a model's per-feature contributions (XGBoost ``pred_contribs``,
log-odds) into the names and values of the k features that pushed the risk UP most; features that
pushed it down are no reason to call anybody, so rows with fewer positive drivers get nulls.
``phrase`` / ``phrase_reasons`` turn those names and values into short phrases through the
editable catalogue ``schemas/defaults/reasons.yaml`` (English and Chinese).

A phrase must read as a risk to the person who reads it, so a reason is left out (``None``) when
its words would not: the value is missing, it reads as zero ("delivered 0 days ago", "waits 0
hours") and the catalogue has no ``zero`` words for it, or it lies outside the range in which the
feature is a risk (``min``/``max``: "waits 1 hour for a first reply" reassures, it does not warn).
A feature the catalogue does not know (added after it was written), or a value that cannot be put
in words, is told by the feature's *group*, so a raw feature name never reaches an agent.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from schemas.settings import DEFAULTS_DIR
from schemas.tasks import PHRASE_SEPARATOR, REASON_COLUMNS, REASON_COUNT, RISKS

Language = Literal["en", "zh"]
DEFAULT_REASONS_FILE = DEFAULTS_DIR / "reasons.yaml"
UNKNOWN_VALUES = {"", "unknown", "nan", "none"}
BIAS_COLUMN = "bias"
_SAMPLE_VALUES: tuple[Any, ...] = (1.0, "sample")


# ---- the catalogue ---------------------------------------------------------------------------
# English templates say "{value} orders"; a value of 1 reads "1 order" (Chinese needs no plural)
ONE_OF_MANY = re.compile(
    r"(?<![\d.])1 ((?:\w+ )?)(order|ticket|hour|time|day|review|return|view|item|session|unit|text|complaint|"
    r"cart|week|event|line|action|contact|visit)s\b")

class Phrase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    en: str
    zh: str

    def text(self, language: Language) -> str:
        return self.zh if language == "zh" else self.en


class Implied(BaseModel):
    """A reason that says nothing new beside another: ``feature`` among the same row's reasons at
    ``min`` or more ("no orders in the last 30 days" beside "last order 45 days ago")."""

    model_config = ConfigDict(extra="forbid")
    feature: str
    min: float


class FeaturePhrase(BaseModel):
    """A feature's templates. ``min``/``max``: the values that read as a risk (others are no reason to
    call); ``zero``: the words for a value that reads as zero (without them such a value is no reason);
    a missing template or a value that does not format uses the group phrase."""

    model_config = ConfigDict(extra="forbid")
    group: str
    en: str | None = None
    zh: str | None = None
    min: float | None = None
    max: float | None = None
    zero: Phrase | None = None
    implied_by: Implied | None = None

    def template(self, language: Language) -> str | None:
        return self.zh if language == "zh" else self.en


class ReasonCatalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fallback_group: str
    no_reason: Phrase
    risks: dict[str, Phrase]
    groups: dict[str, Phrase]
    patterns: dict[str, str] = {}
    values: dict[str, dict[str, Phrase]] = {}
    features: dict[str, FeaturePhrase]

    @model_validator(mode="after")
    def _consistent(self) -> ReasonCatalogue:
        problems = [f"risk {r!r} has no words" for r in RISKS if r not in self.risks]
        if self.fallback_group not in self.groups:
            problems.append(f"fallback_group {self.fallback_group!r} is not a group")
        problems += [f"pattern {p!r} names unknown group {g!r}" for p, g in self.patterns.items()
                     if g not in self.groups]
        for name, fp in self.features.items():
            if fp.group not in self.groups:
                problems.append(f"feature {name!r}: unknown group {fp.group!r}")
            if fp.implied_by is not None and fp.implied_by.feature not in self.features:
                problems.append(f"feature {name!r}: implied_by names unknown feature {fp.implied_by.feature!r}")
            for lang in ("en", "zh"):
                template = fp.template(lang)  # type: ignore[arg-type]
                if template is not None and not _formats(template):
                    problems.append(f"feature {name!r}: {lang} template {template!r} does not format")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def group_of(self, feature: str) -> str:
        """The feature's group: listed, else the first name pattern it contains, else the fallback."""
        if feature in self.features:
            return self.features[feature].group
        for pattern, group in self.patterns.items():
            if pattern in feature:
                return group
        return self.fallback_group


def _formats(template: str) -> bool:
    for sample in _SAMPLE_VALUES:
        try:
            template.format(value=sample)
            return True
        except (ValueError, TypeError, KeyError, IndexError):
            continue
    return False


class CatalogueError(ValueError):
    """The reason catalogue file is invalid (the message names the file and the entry)."""


def load_reason_catalogue(path: Path | str = DEFAULT_REASONS_FILE) -> ReasonCatalogue:
    """Read and validate ``reasons.yaml``; errors name the file and the offending feature."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return ReasonCatalogue.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise CatalogueError(f"{path}: {exc}") from exc


@lru_cache(maxsize=4)
def _cached_catalogue(path: str) -> ReasonCatalogue:
    return load_reason_catalogue(path)


def default_catalogue() -> ReasonCatalogue:
    return _cached_catalogue(str(DEFAULT_REASONS_FILE))


# ---- top reasons -----------------------------------------------------------------------------
def top_reasons(
    contributions: np.ndarray | pd.DataFrame,
    feature_names: Sequence[str],
    feature_values: pd.DataFrame,
    k: int = REASON_COUNT,
) -> pd.DataFrame:
    """Names and values of the k largest POSITIVE contributions per row (nulls where fewer).

    ``contributions`` has one column per feature in ``feature_names`` order, optionally followed
    by XGBoost's bias column (or a ``bias`` column of a DataFrame), which is never a reason.
    Returns ``reason_1, reason_1_value, ...`` indexed like ``feature_values``.
    """
    names = list(feature_names)
    if isinstance(contributions, pd.DataFrame):
        contrib = contributions.drop(columns=BIAS_COLUMN, errors="ignore")[names].to_numpy(dtype=float)
    else:
        contrib = np.asarray(contributions, dtype=float)
        if contrib.ndim == 2 and contrib.shape[1] == len(names) + 1:
            contrib = contrib[:, :-1]
    if contrib.ndim != 2 or contrib.shape != (len(feature_values), len(names)):
        raise ValueError(f"contributions of shape {contrib.shape} do not match {len(feature_values)} rows "
                         f"x {len(names)} features")
    columns = _reason_columns(k)
    n_rows, n_features = contrib.shape
    kk = min(k, n_features)
    if n_rows == 0 or kk == 0:
        return pd.DataFrame({c: pd.Series([None] * n_rows, dtype=object) for c in columns},
                            index=feature_values.index)
    safe = np.where(np.isnan(contrib), -np.inf, contrib)
    idx = np.argpartition(-safe, kk - 1, axis=1)[:, :kk]
    top = np.take_along_axis(safe, idx, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    positive = np.take_along_axis(top, order, axis=1) > 0
    reasons = np.asarray(names, dtype=object)[idx]
    values = np.take_along_axis(feature_values[names].to_numpy(dtype=object), idx, axis=1)
    reasons[~positive] = None
    values[~positive] = None
    data: dict[str, Any] = {}
    for i in range(k):
        name_col, value_col = columns[2 * i], columns[2 * i + 1]
        data[name_col] = reasons[:, i] if i < kk else np.full(n_rows, None, dtype=object)
        data[value_col] = values[:, i] if i < kk else np.full(n_rows, None, dtype=object)
    return pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in data.items()}).set_axis(feature_values.index)


def _reason_columns(k: int) -> list[str]:
    if k <= REASON_COUNT:
        return [c for pair in REASON_COLUMNS[:k] for c in pair]
    return [c for i in range(1, k + 1) for c in (f"reason_{i}", f"reason_{i}_value")]


# ---- phrases ---------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in UNKNOWN_VALUES


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _display_value(catalogue: ReasonCatalogue, reason: str, value: Any, language: Language) -> Any:
    """A category's display name (catalogue, else underscores to spaces); numbers unchanged."""
    number = _as_number(value)
    if number is not None:
        return number
    text = str(value)
    named = catalogue.values.get(reason, {}).get(text)
    return named.text(language) if named else re.sub(r"_+", " ", text)


def _reads_as_zero(template: str, shown: float) -> bool:
    """The value would be written as zero ("0 days", "0%", "+0 orders") by this template."""
    if "{value" not in template:  # words without the number ("parcel already delivered")
        return shown == 0
    try:
        text = template.format(value=shown)
        return text in (template.format(value=0.0), template.format(value=-0.0))
    except (ValueError, TypeError, KeyError, IndexError):
        return shown == 0


def phrase(reason: str | None, value: Any, language: Language = "en",
           catalogue: ReasonCatalogue | None = None) -> str | None:
    """One reason in words, e.g. ``days_late, 3.0 -> "parcel 3 days late"``.

    None when there is no reason or its words would not read as a risk (see the module docstring).
    """
    if reason is None or _is_missing(reason):
        return None
    catalogue = catalogue or default_catalogue()
    group_phrase = catalogue.groups[catalogue.group_of(reason)].text(language)
    spec = catalogue.features.get(reason)
    if spec is None:
        return group_phrase
    if _is_missing(value):
        return None
    shown = _display_value(catalogue, reason, value, language)
    template = spec.template(language)
    if isinstance(shown, float):
        zero = shown == 0 or (template is not None and _reads_as_zero(template, shown))
        if zero and spec.zero is not None:
            return spec.zero.text(language)
        if zero or (spec.min is not None and shown < spec.min) or (spec.max is not None and shown > spec.max):
            return None
    if template is None:
        return group_phrase
    try:
        text = template.format(value=shown)
    except (ValueError, TypeError, KeyError, IndexError):
        return group_phrase
    if language == "en":
        text = ONE_OF_MANY.sub(r"1 \1\2", text)  # "1 orders" -> "1 order"
    return text if "_" not in text else group_phrase


def reason_phrases(df: pd.DataFrame, catalogue: ReasonCatalogue | None = None,
                   language: Language = "en") -> list[list[str]]:
    """Per row, ``row_phrases`` of ``reason_1..3`` (empty list without reasons)."""
    catalogue = catalogue or default_catalogue()
    pairs = [(df[n].tolist(), df[v].tolist()) for n, v in REASON_COLUMNS if n in df.columns]
    memo: dict[tuple[Any, ...], str | None] = {}
    return [row_phrases([(names[i], values[i]) for names, values in pairs], catalogue, language, memo)
            for i in range(len(df))]


def row_phrases(reasons: Sequence[tuple[Any, Any]], catalogue: ReasonCatalogue, language: Language = "en",
                memo: dict[tuple[Any, ...], str | None] | None = None) -> list[str]:
    """One row's (reason, value) pairs in rank order as distinct phrases, without a reason that does
    not read as a risk or that the row's other reasons already imply (``implied_by``). ``memo``
    keeps phrases across rows: lists repeat the same few (reason, value) pairs."""
    memo = {} if memo is None else memo
    named = {name: value for name, value in reasons if isinstance(name, str)}
    texts: list[str] = []
    for name, value in reasons:
        if _implied(catalogue, name, named):
            continue
        key = (name, value, language)
        try:
            text = memo[key]
        except (KeyError, TypeError):  # TypeError: an unhashable value, phrased each time
            text = phrase(name, value, language, catalogue)
            with contextlib.suppress(TypeError):
                memo[key] = text
        if text and text not in texts:
            texts.append(text)
    return texts


def _implied(catalogue: ReasonCatalogue, reason: Any, row: dict[str, Any]) -> bool:
    spec = catalogue.features[reason].implied_by if isinstance(reason, str) and reason in catalogue.features else None
    if spec is None or spec.feature not in row:
        return False
    value = _as_number(row[spec.feature])
    return value is not None and value >= spec.min


def phrase_reasons(df: pd.DataFrame, catalogue: ReasonCatalogue | None = None,
                   language: Language = "en") -> pd.Series:
    """The "why" of each row: its reason phrases joined with ``"; "`` (a generic phrase if none)."""
    catalogue = catalogue or default_catalogue()
    none = catalogue.no_reason.text(language)
    texts = [PHRASE_SEPARATOR.join(p) if p else none for p in reason_phrases(df, catalogue, language)]
    return pd.Series(texts, index=df.index, dtype="str", name="why")


def risk_words(risk: str, language: Language = "en", catalogue: ReasonCatalogue | None = None) -> str:
    catalogue = catalogue or default_catalogue()
    return catalogue.risks[risk].text(language)


@task(name="top-reasons", cache_policy=NO_CACHE)
def top_reasons_task(contributions: np.ndarray | pd.DataFrame, feature_names: Sequence[str],
                     feature_values: pd.DataFrame, k: int = REASON_COUNT) -> pd.DataFrame:
    return top_reasons(contributions, feature_names, feature_values, k)
