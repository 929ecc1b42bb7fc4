"""Train the risk model (XGBoost + calibration) and its two baselines on plain ``X``/``y``.

Inputs are a feature DataFrame (numeric columns and pandas ``category`` columns), a 0/1 label
Series and, for the rolling-origin steps, folds given as row positions; nothing here knows how the
training sets or folds were built. The result is one object, ``AftersalesModel``, that the registry
logs as an MLflow pyfunc and the scoring step loads back: it returns calibrated probabilities and,
on request, the booster's per-feature contributions.

The steps of a fit (``tasks.models.backtest.fit_as_of`` runs them in order): ``tune_booster``
compares the configurations of ``training.grid`` on the older origins with ``xgboost.cv`` (folds
given, rounds chosen on the folds' mean evaluation curve); ``out_of_fold`` scores every origin with a
model trained on its purged rows; ``fit_calibrator`` maps those out-of-time scores to rates; the
refit uses every matured row with the chosen configuration and rounds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import mlflow.pyfunc
import numpy as np
import pandas as pd
import xgboost as xgb
from prefect import task
from prefect.cache_policies import NO_CACHE
from scipy.optimize import brentq
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from schemas.derived import CUTOFF, LABEL
from schemas.settings import BoosterConfig, Settings
from tasks.models.features import map_unseen_levels

CALIBRATION_SHARE = 0.5
"""``train_model`` only: share of the validation rows (its latest cutoffs) kept apart to fit the calibrator."""

MISSING_CATEGORY = "__missing__"
ISOTONIC_TIE_BREAK = 1e-9
EARLY_STOPPING_METRIC = {"pr_auc": "aucpr", "roc_auc": "auc", "brier": "logloss", "log_loss": "logloss"}
CONSTANT_TOLERANCE = 1e-6
RECENTRE_LIMIT = 8.0
"""Largest log-odds shift ``Calibrator.recentre`` will search (a factor of ~3,000 in the odds)."""
"""Probabilities spread less than this over a population are one constant: no ranking at all."""
Output = Literal["probability", "raw_probability", "margin", "contributions"]
OUTPUTS: tuple[str, ...] = ("probability", "raw_probability", "margin", "contributions")


# ------------------------------------------------------------------------------ feature handling


def categorical_columns(X: pd.DataFrame) -> list[str]:
    """Columns the model treats as categories: pandas ``category`` plus any string/object column."""
    return [
        c
        for c, dtype in X.dtypes.items()
        if isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_string_dtype(dtype)
        or pd.api.types.is_object_dtype(dtype)
    ]


def category_levels(X: pd.DataFrame) -> dict[str, list[str]]:
    """Sorted string levels seen in training; an unseen level is scored as `unknown` (map_unseen_levels)."""
    levels: dict[str, list[str]] = {}
    for column in categorical_columns(X):
        values = X[column].astype("string").dropna().unique()
        levels[column] = sorted(str(v) for v in values)
    return levels


def prepare_features(X: pd.DataFrame, features: list[str], categories: Mapping[str, list[str]]) -> pd.DataFrame:
    """The frame the booster sees: training column order, numeric as float, fixed category levels.

    Accepts category, string or object columns for categorical features (the pyfunc signature uses
    strings, see ``to_model_input``), so both the training frame and a scoring frame work.
    """
    missing = [c for c in features if c not in X.columns]
    if missing:
        raise KeyError(f"input lacks feature columns: {missing}")
    X = map_unseen_levels(X, {c: levels for c, levels in categories.items() if c in features})  # not to 'missing'
    out: dict[str, Any] = {}
    for column in features:
        values = X[column]
        if column in categories:
            if isinstance(values.dtype, pd.CategoricalDtype) and all(isinstance(c, str) for c in values.cat.categories):
                out[column] = values.cat.set_categories(categories[column])  # cheap re-levelling
            else:
                out[column] = pd.Categorical(values.astype("string"), categories=categories[column])
        elif values.dtype == "float64":
            out[column] = values  # already what the booster takes: no copy
        else:
            out[column] = pd.to_numeric(values, errors="coerce").astype("float64")
    return pd.DataFrame(out, index=X.index)


def to_model_input(X: pd.DataFrame, features: list[str], categories: Mapping[str, list[str]]) -> pd.DataFrame:
    """The frame MLflow's schema accepts: numeric as float64, categories as plain strings.

    MLflow cannot enforce a schema on pandas ``category`` columns (mlflow #12910) and refuses
    int64 -> double, so the model is signed with this form and casts back inside ``predict``.
    """
    out: dict[str, Any] = {}
    for column in features:
        if column in categories:
            out[column] = _as_text(X[column])
        else:
            out[column] = pd.to_numeric(X[column], errors="coerce").astype("float64")
    return pd.DataFrame(out, index=X.index)


def _as_text(values: pd.Series) -> pd.Series:
    """Plain Python strings, None for a null; a categorical column through its few levels (a scoring
    day's 500k rows cast one by one to Arrow strings and back took ~0.3 s a column)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        levels = np.array([*(str(level) for level in values.cat.categories), None], dtype=object)
        return pd.Series(levels[values.cat.codes.to_numpy()], index=values.index, dtype=object)  # -1: None
    text = values.astype("string").astype(object)
    return text.where(text.notna(), None)


def signed_log1p(values: Any) -> Any:
    """Log scale that keeps the sign and zero: counts, money and days become near-additive in it."""
    return np.sign(values) * np.log1p(np.abs(values))


class LinearDesign:
    """The numeric matrix XGBoost's linear booster needs and trees do not.

    Per feature: numeric -> signed log, median for missing plus a missing indicator (where training
    had missing values), standardised; category -> one column per level with at least
    ``min_level_share`` of the rows (missing is a level; rarer and unseen levels share a column).
    Fitted on the training frame's features only (no labels). One scikit-learn transformer per
    feature, so every design column knows the feature it came from: contributions add back up to
    features, and reasons read the same as a tree model's.
    """

    def __init__(self, prepared: pd.DataFrame, categories: Mapping[str, list[str]], min_level_share: float):
        self.features = list(prepared.columns)
        parts = []
        for feature in self.features:
            if feature in categories:
                steps = make_pipeline(
                    FunctionTransformer(_categories_as_text, feature_names_out="one-to-one"),
                    OneHotEncoder(categories=[[*categories[feature], MISSING_CATEGORY]],
                                  handle_unknown="infrequent_if_exist", min_frequency=min_level_share or None,
                                  sparse_output=False, dtype=np.float32))
            else:
                steps = make_pipeline(
                    FunctionTransformer(signed_log1p, feature_names_out="one-to-one"),
                    SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                    StandardScaler())
            parts.append((feature, steps, [feature]))
        self.encoder = ColumnTransformer(parts, sparse_threshold=0.0).fit(prepared)
        self.owner = np.empty(sum(s.stop - s.start for s in self.encoder.output_indices_.values()), dtype=np.int64)
        for position, feature in enumerate(self.features):
            self.owner[self.encoder.output_indices_[feature]] = position

    def transform(self, prepared: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.encoder.transform(prepared[self.features]), dtype=np.float32)

    def by_feature(self, values: np.ndarray) -> np.ndarray:
        """Design columns summed per feature (rows x design columns -> rows x features)."""
        out = np.zeros((values.shape[0], len(self.features)), dtype=float)
        np.add.at(out.T, self.owner, np.asarray(values, dtype=float).T)
        return out


# ----------------------------------------------------------------------------------- calibration


class Calibrator:
    """Maps raw scores to calibrated probabilities.

    ``isotonic``: monotone step function (needs many positives to be smooth and trustworthy);
    ``sigmoid``: Platt scaling, a logistic regression on the raw log-odds (robust on small sets);
    ``identity``: used only when the calibration rows hold a single class.
    ``scale="score"`` calibrates a score that is not a probability (the one-line rule): Platt then
    reads the standardised score instead of its log-odds, so the rule's ranking is kept exactly.
    """

    def __init__(self, method: Literal["isotonic", "sigmoid", "identity"],
                 scale: Literal["probability", "score"] = "probability"):
        self.method = method
        self.scale = scale
        self._model: Any = None
        self.bounds = (0.0, 1.0)
        self._centre, self._spread = 0.0, 1.0

    def _platt_input(self, raw: np.ndarray) -> np.ndarray:
        if self.scale == "probability":
            return _logit(raw).reshape(-1, 1)
        return ((raw - self._centre) / self._spread).reshape(-1, 1)

    def fit(self, p_raw: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> Calibrator:
        p_raw, y = np.asarray(p_raw, dtype=float), np.asarray(y, dtype=float)
        # never exactly 0 or 1: a step fitted on n rows cannot justify more than ~1/(2n) certainty,
        # and a hard 0 for a row that then turns positive makes log-loss explode
        self.bounds = (0.5 / max(y.size, 1), 1 - 0.5 / max(y.size, 1))
        if self.scale == "score":
            self._centre = float(np.mean(p_raw)) if p_raw.size else 0.0
            self._spread = float(np.std(p_raw)) or 1.0
        if self.method == "isotonic":
            self._model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
                p_raw, y, sample_weight=sample_weight)
        elif self.method == "sigmoid":
            self._model = LogisticRegression(C=1e6).fit(self._platt_input(p_raw), y, sample_weight=sample_weight)
        return self

    @property
    def slope(self) -> float:
        """Platt's slope: > 0 when a higher raw score means a higher rate (NaN for other methods)."""
        return float(self._model.coef_[0, 0]) if self.method == "sigmoid" else float("nan")

    def describe(self) -> str:
        text = f"sigmoid (Platt, slope {self.slope:.3g})" if self.method == "sigmoid" else self.method
        offset = self.recentring
        return f"{text}, recentred {offset:+.2f} log-odds on the newest matured window" if offset else text

    @property
    def recentring(self) -> float:
        """Log-odds added after the map (0 for calibrators pickled before it existed)."""
        return float(getattr(self, "offset", 0.0))

    def recentre(self, p_raw: np.ndarray, rate: float) -> Calibrator:
        """Shift the map's log-odds so that its mean over ``p_raw`` is ``rate``.

        The map is learnt on the folds' out-of-time scores, but the registered booster is refitted on
        more and newer rows, so its scores sit elsewhere: on Complete Journey the Platt map (slope 1.3,
        learnt on fold models that under-predicted a rising churn rate) doubled the refit's mean (.086
        for a .056 rate, ECE .03-.06). Re-anchoring on the newest matured window, whose rate is the
        nearest known to the run date, keeps the map's shape and fixes its level (ECE .007-.015).
        """
        self.offset = 0.0
        p_raw = np.asarray(p_raw, dtype=float)
        if p_raw.size == 0 or not 0.0 < rate < 1.0 or (self.method == "identity" and self.scale == "score"):
            return self

        def gap(offset: float) -> float:
            self.offset = offset
            return float(np.mean(self.stepped(p_raw))) - rate

        low, high = gap(-RECENTRE_LIMIT), gap(RECENTRE_LIMIT)
        self.offset = brentq(gap, -RECENTRE_LIMIT, RECENTRE_LIMIT, xtol=1e-6) if low < 0 < high else 0.0
        return self

    def _shifted(self, p: np.ndarray) -> np.ndarray:
        offset = self.recentring
        if not offset:
            return p
        return np.clip(1.0 / (1.0 + np.exp(-(_logit(p) + offset))), *self.bounds)

    def stepped(self, p_raw: np.ndarray) -> np.ndarray:
        """The calibrated values without the isotonic tie-break (what a collapse check must look at)."""
        p_raw = np.asarray(p_raw, dtype=float)
        if self.method == "isotonic":
            mapped = np.clip(np.asarray(self._model.predict(p_raw), dtype=float), *self.bounds)
        elif self.method == "sigmoid":
            mapped = self._model.predict_proba(self._platt_input(p_raw))[:, 1]
        else:
            mapped = p_raw
        return self._shifted(mapped)

    def transform(self, p_raw: np.ndarray) -> np.ndarray:
        p_raw = np.asarray(p_raw, dtype=float)
        if self.method == "isotonic":
            # Isotonic steps tie many rows; a negligible share of the raw score breaks the ties in
            # the booster's order, so ranking metrics (AUC, AP, top-k) equal the booster's own.
            tie_break = p_raw if self.scale == "probability" else 0.5 + np.arctan(p_raw) / np.pi
            return self.stepped(p_raw) + ISOTONIC_TIE_BREAK * tie_break
        return self.stepped(p_raw)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q))


def is_constant(p: np.ndarray, tolerance: float = CONSTANT_TOLERANCE) -> bool:
    """True when probabilities do not rank anything: their spread is below ``tolerance``."""
    p = np.asarray(p, dtype=float)
    return p.size == 0 or float(np.ptp(p)) < tolerance


def calibration_method(positives: float, settings: Settings) -> Literal["isotonic", "sigmoid"]:
    """Platt when positives are few, isotonic only with ``isotonic_min_positives`` of them (or as set)."""
    chosen = settings.training.calibration
    if chosen != "auto":
        return chosen
    return "isotonic" if positives >= settings.training.isotonic_min_positives else "sigmoid"


def fit_calibrator(p_raw: np.ndarray, y: np.ndarray, settings: Settings, weights: np.ndarray | None = None,
                   scale: Literal["probability", "score"] = "probability") -> Calibrator:
    """The calibrator for out-of-time scores, never one that collapses distinct scores into one value.

    An isotonic map that turns the spread of raw scores into a single step (a handful of positives
    can do that) is replaced by Platt scaling, which is strictly monotone when its slope is positive.
    """
    y = np.asarray(y, dtype=float)
    if not _two_classes(y):
        return Calibrator("identity", scale)
    method = calibration_method(float(np.sum(y if weights is None else y * (weights > 0))), settings)
    calibrator = Calibrator(method, scale).fit(p_raw, y, weights)
    if method == "isotonic" and is_constant(calibrator.stepped(p_raw)) and not is_constant(p_raw):
        calibrator = Calibrator("sigmoid", scale).fit(p_raw, y, weights)
    return calibrator


# --------------------------------------------------------------------------------- pyfunc model


class AftersalesModel(mlflow.pyfunc.PythonModel):
    """Booster + calibrator + feature list + category levels: the one object scoring needs.

    ``predict(context, X, params={"output": ...})``:
      * ``probability`` (default): calibrated probability, 1-d array;
      * ``raw_probability``: the booster's own probability (skewed by ``scale_pos_weight``);
      * ``margin``: the booster's log-odds;
      * ``contributions``: DataFrame of per-feature contributions to the log-odds (TreeSHAP via
        XGBoost ``pred_contribs``) plus a ``bias`` column; rows sum to ``margin``.
    Input may carry extra columns (ids, cutoff); only ``features`` are used, in training order.
    """

    def __init__(
        self,
        booster: xgb.Booster,
        calibrator: Calibrator,
        features: list[str],
        categories: dict[str, list[str]],
        nthread: int,
        design: LinearDesign | None = None,
    ):
        self.booster = booster
        self.calibrator = calibrator
        self.features = list(features)
        self.categories = {k: list(v) for k, v in categories.items()}
        self.nthread = nthread
        self.design = design

    @property
    def linear(self) -> LinearDesign | None:
        """The linear booster's design (None for trees, and for models pickled before it existed)."""
        return getattr(self, "design", None)

    def prepare(self, X: pd.DataFrame) -> pd.DataFrame | np.ndarray:
        """What the booster reads: the typed frame for trees, the design matrix for the linear booster."""
        prepared = prepare_features(X, self.features, self.categories)
        return prepared if self.linear is None else self.linear.transform(prepared)

    def booster_output(self, prepared: pd.DataFrame | np.ndarray, margin: bool = False) -> np.ndarray:
        """The booster on prepared rows (XGBoost has no in-place prediction for gblinear)."""
        if self.linear is None:
            kind = "margin" if margin else "value"
            return np.asarray(self.booster.inplace_predict(prepared, predict_type=kind), dtype=float)
        matrix = xgb.DMatrix(prepared, nthread=self.nthread)
        return np.asarray(self.booster.predict(matrix, output_margin=margin), dtype=float)

    def model_input(self, X: pd.DataFrame) -> pd.DataFrame:
        """Cast a feature frame to the signed input form (call before ``pyfunc.predict``)."""
        return to_model_input(X, self.features, self.categories)

    def margin(self, X: pd.DataFrame) -> np.ndarray:
        return self.booster_output(self.prepare(X), margin=True)

    def raw_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.booster_output(self.prepare(X))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.calibrator.transform(self.raw_proba(X))

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Exact TreeSHAP per feature (log-odds of the uncalibrated booster) + ``bias``.

        For the linear booster XGBoost gives coefficient x standardised value per design column
        (a feature's share against the average row); they are summed back to their feature.
        Costly for trees (~1-7k rows/s on 2 cores): call it on the rows that make the list.
        """
        matrix = xgb.DMatrix(self.prepare(X), enable_categorical=True, nthread=self.nthread)
        values = np.asarray(self.booster.predict(matrix, pred_contribs=True), dtype=float)
        if self.linear is not None:
            values = np.column_stack([self.linear.by_feature(values[:, :-1]), values[:, -1]])
        return pd.DataFrame(values, columns=[*self.features, "bias"], index=X.index)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        output = (params or {}).get("output", "probability")
        if output == "probability":
            return self.predict_proba(model_input)
        if output == "raw_probability":
            return self.raw_proba(model_input)
        if output == "margin":
            return self.margin(model_input)
        if output == "contributions":
            return self.contributions(model_input)
        raise ValueError(f"unknown output {output!r}; choose one of {OUTPUTS}")


# ----------------------------------------------------------------------------------------- data


@dataclass
class DataSplits:
    """Train/validation/test rows as plain X/y, with the cutoff of each row when known.

    The cutoffs only describe the windows (run tags, label rate per cutoff) and order the
    validation split; they are never features. After a rolling-origin fit (``fit_as_of``):
    ``train`` = the rows the registered model was refitted on (every matured cutoff), ``valid`` =
    the origins' evaluated rows whose out-of-fold scores fitted its calibrator, ``test`` = the
    newest origin's rows, and ``test_scores`` = the honest out-of-time scores of model and
    baselines on them (the registered model has seen those rows, so it must not be re-scored there).
    """

    X_train: pd.DataFrame
    y_train: pd.Series
    X_valid: pd.DataFrame
    y_valid: pd.Series
    X_test: pd.DataFrame
    y_test: pd.Series
    t_train: pd.Series | None = None
    t_valid: pd.Series | None = None
    t_test: pd.Series | None = None
    test_scores: dict[str, np.ndarray] | None = None

    @classmethod
    def from_frames(
        cls,
        train: pd.DataFrame,
        valid: pd.DataFrame,
        test: pd.DataFrame,
        features: list[str],
        label: str = LABEL,
        time_column: str | None = CUTOFF,
    ) -> DataSplits:
        """Cut three training-set frames (entity id, cutoff, features, label) into X/y/t."""

        def times(frame: pd.DataFrame) -> pd.Series | None:
            return frame[time_column] if time_column and time_column in frame.columns else None

        return cls(
            train[features],
            train[label],
            valid[features],
            valid[label],
            test[features],
            test[label],
            times(train),
            times(valid),
            times(test),
        )

    def parts(self) -> dict[str, tuple[pd.DataFrame, pd.Series, pd.Series | None]]:
        return {
            "train": (self.X_train, self.y_train, self.t_train),
            "valid": (self.X_valid, self.y_valid, self.t_valid),
            "test": (self.X_test, self.y_test, self.t_test),
        }

    def data_hash(self) -> str:
        """Content hash of every split (values, column names, dtypes; not the index)."""
        digest = hashlib.sha256()
        for name, (X, y, t) in self.parts().items():
            digest.update(name.encode())
            for frame in (X, y.to_frame("label"), None if t is None else t.to_frame("cutoff")):
                if frame is None:
                    continue
                digest.update(json.dumps([[str(c), str(d)] for c, d in frame.dtypes.items()]).encode())
                digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        return digest.hexdigest()


# ------------------------------------------------------------------------------------- training


@dataclass
class TrainedModel:
    """The fitted model and what the run log needs to describe how it was fitted."""

    model: AftersalesModel
    params: dict[str, Any]
    best_iteration: int
    scale_pos_weight: float
    n_train: int
    n_early_stopping: int
    n_calibration: int
    validation_split: str  # time | random | shared (train_model), rolling-origin (fit_as_of)
    calibration_method: str
    calibration_share: float
    fit_seconds: float
    notes: list[str] = field(default_factory=list)
    extra_params: dict[str, Any] = field(default_factory=dict)  # chosen configuration, plan, folds
    extra_metrics: dict[str, float] = field(default_factory=dict)  # intervals, tuning curves' best scores

    @property
    def features(self) -> list[str]:
        return self.model.features

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(X)

    def raw_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.raw_proba(X)

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.model.contributions(X)

    @property
    def importance_kind(self) -> str:
        return "total gain" if self.model.linear is None else "|coefficient| per standardised input"

    def importance(self) -> dict[str, float]:
        """Total gain per feature (features never split on get 0); for the linear booster the sum of
        its design columns' absolute coefficients (inputs are standardised, so they compare)."""
        if (design := self.model.linear) is not None:
            weights = self.model.booster.get_score(importance_type="weight")
            coefficients = np.array([abs(float(weights.get(f"f{i}", 0.0))) for i in range(design.owner.size)])
            return dict(zip(self.features, design.by_feature(coefficients[None, :])[0].tolist(), strict=True))
        gain = self.model.booster.get_score(importance_type="total_gain")
        return {f: float(gain.get(f, 0.0)) for f in self.features}


def class_weight(negatives: float, positives: float, how: str) -> float:
    """Weight of a positive row: full balance, its square root (gentler on rare, noisy labels), or none."""
    ratio = negatives / positives
    return {"balanced": ratio, "sqrt": float(np.sqrt(ratio)), "none": 1.0}[how]


def xgb_params(settings: Settings, scale_pos_weight: float) -> dict[str, Any]:
    """Booster parameters from settings; fixed seed and thread count make reruns identical."""
    cfg = settings.training.xgb
    return {
        "objective": "binary:logistic",
        "eval_metric": EARLY_STOPPING_METRIC[settings.training.promotion_metric],
        "tree_method": "hist",
        "max_depth": cfg.max_depth,
        "learning_rate": cfg.learning_rate,
        "min_child_weight": cfg.min_child_weight,
        "subsample": cfg.subsample,
        "colsample_bytree": cfg.colsample_bytree,
        "reg_lambda": cfg.reg_lambda,
        "max_bin": cfg.max_bin,
        "nthread": cfg.nthread,
        "seed": settings.training.seed,
        "scale_pos_weight": scale_pos_weight,
    }


def _two_classes(y: np.ndarray) -> bool:
    return np.unique(y).size == 2


def split_validation(
    y_valid: pd.Series,
    valid_time: pd.Series | None,
    share: float,
    seed: int,
) -> tuple[np.ndarray, Literal["time", "random", "shared"]]:
    """Boolean mask of validation rows used for calibration; the rest drive early stopping.

    By time when ``valid_time`` (e.g. the cutoff per row) has at least two distinct values: the
    latest cutoffs calibrate, so the calibrator sees the period closest to scoring. Otherwise (e.g.
    ``datasets.time_split`` gives one validation cutoff) a seeded random split of that cutoff's
    rows: still disjoint rows for the two steps, from the same period. If either part would hold
    a single class, both steps share the whole validation set (reported as ``shared``): early
    stopping then slightly favours the calibration rows, the lesser evil against no calibration.
    """
    n = len(y_valid)
    y = np.asarray(y_valid, dtype=float)
    mask = np.zeros(n, dtype=bool)
    mode: Literal["time", "random", "shared"] = "random"
    if valid_time is not None and pd.Series(valid_time).nunique() >= 2:
        times = pd.Series(np.asarray(valid_time)).reset_index(drop=True)
        counts = times.value_counts().sort_index(ascending=False)
        cumulative = counts.cumsum().to_numpy()
        # the number of latest cutoffs whose rows come closest to the share (at least one, never all)
        n_latest = int(np.clip(np.argmin(np.abs(cumulative - share * n)) + 1, 1, len(counts) - 1))
        mask = times.isin(counts.index[:n_latest]).to_numpy()
        mode = "time"
    else:
        rng = np.random.default_rng(seed)
        mask[rng.permutation(n)[: round(share * n)]] = True
    if not (_two_classes(y[mask]) and _two_classes(y[~mask])):
        return np.ones(n, dtype=bool), "shared"
    return mask, mode


def train_model(
    X_train: pd.DataFrame,
    y_train: pd.Series,
    X_valid: pd.DataFrame,
    y_valid: pd.Series,
    settings: Settings,
    valid_time: pd.Series | None = None,
    calibration_share: float = CALIBRATION_SHARE,
) -> TrainedModel:
    """XGBoost with early stopping, class weighting and a calibrator, as one scoring object.

    Early stopping and calibration use disjoint parts of the validation window (see
    ``split_validation``): tuning the number of trees and the probability map on the same rows
    would make the calibrated probabilities look better on validation than they are.
    ``scale_pos_weight`` (negatives/positives on train) makes the trees see the rare class; it
    distorts raw probabilities, which is exactly what the calibrator then undoes.
    """
    started = time.perf_counter()
    y_tr = np.asarray(y_train, dtype=float)
    if not _two_classes(y_tr):
        raise ValueError("training labels hold a single class; nothing to learn")
    features = list(X_train.columns)
    categories = category_levels(X_train)
    positives = float(y_tr.sum())
    scale_pos_weight = class_weight(y_tr.size - positives, positives, settings.training.class_weighting)
    params = xgb_params(settings, scale_pos_weight)
    cfg = settings.training.xgb

    cal_mask, mode = split_validation(y_valid, valid_time, calibration_share, settings.training.seed)
    es_mask = ~cal_mask if mode != "shared" else cal_mask
    notes = [] if mode != "shared" else ["early stopping and calibration share the validation set"]
    X_es, y_es = X_valid.iloc[es_mask], np.asarray(y_valid, dtype=float)[es_mask]
    X_cal, y_cal = X_valid.iloc[cal_mask], np.asarray(y_valid, dtype=float)[cal_mask]

    dtrain = xgb.QuantileDMatrix(
        prepare_features(X_train, features, categories),
        label=y_tr,
        enable_categorical=True,
        max_bin=cfg.max_bin,
        nthread=cfg.nthread,
    )
    des = xgb.QuantileDMatrix(
        prepare_features(X_es, features, categories),
        label=y_es,
        enable_categorical=True,
        ref=dtrain,
        nthread=cfg.nthread,
    )
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=cfg.n_estimators,
        evals=[(des, "valid")],
        early_stopping_rounds=cfg.early_stopping_rounds,
        verbose_eval=False,
    )
    best_iteration = int(getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1))
    booster = booster[: best_iteration + 1]  # keep only the trees early stopping chose
    del dtrain, des

    uncalibrated = AftersalesModel(booster, Calibrator("identity"), features, categories, cfg.nthread)
    calibrator = fit_calibrator(uncalibrated.raw_proba(X_cal), y_cal, settings)
    method = calibrator.describe()
    model = AftersalesModel(booster, calibrator, features, categories, cfg.nthread)
    return TrainedModel(
        model=model,
        params=params,
        best_iteration=best_iteration,
        scale_pos_weight=scale_pos_weight,
        n_train=len(X_train),
        n_early_stopping=int(es_mask.sum()),
        n_calibration=int(cal_mask.sum()),
        validation_split=mode,
        calibration_method=method,
        calibration_share=calibration_share,
        fit_seconds=time.perf_counter() - started,
        notes=notes,
    )


# ------------------------------------------------------------------------- rolling-origin fitting


Folds = list[tuple[np.ndarray, np.ndarray]]
"""Rolling origins as (training row positions, evaluated row positions) into one X/y."""

SELECTION = {"roc_auc": ("auc", True), "pr_auc": ("aucpr", True), "log_loss": ("logloss", False)}


def min_child_weight(y: np.ndarray, scale_pos_weight: float, share: float) -> float:
    """``share`` of the rows' total hessian at the start of boosting: a leaf must hold that much
    information, whatever the number of rows or the base rate (floored at half a row's worth)."""
    y = np.asarray(y, dtype=float)
    positives = float(y.sum())
    weight = (y.size - positives) + positives * scale_pos_weight
    rate = positives * scale_pos_weight / weight if weight else 0.5
    return max(0.5, share * weight * rate * (1 - rate))


def booster_params(settings: Settings, config: BoosterConfig, scale_pos_weight: float,
                   child_weight: float) -> dict[str, Any]:
    """Booster parameters of one grid point; shared parts and the seed come from ``training.xgb``.

    The linear booster runs ``shotgun`` on one thread: with more threads its updates race and a rerun
    differs in the 7th digit; ``coord_descent``, the deterministic one, took 50x longer here
    (9 s a round on 40k x 374).
    """
    metric, _ = SELECTION[settings.training.selection_metric]
    if config.booster == "gblinear":
        return {"objective": "binary:logistic", "booster": "gblinear", "updater": "shotgun",
                "feature_selector": "cyclic", "eval_metric": metric, "learning_rate": config.learning_rate,
                "reg_lambda": config.l2, "reg_alpha": 0.0, "nthread": 1,
                "seed": settings.training.seed, "scale_pos_weight": scale_pos_weight}
    return xgb_params(settings, scale_pos_weight) | {
        "eval_metric": metric, "max_depth": config.max_depth, "learning_rate": config.learning_rate,
        "min_child_weight": child_weight}


@dataclass
class Tuning:
    """The grid compared on the older origins: the chosen configuration, its rounds and every score.

    ``boosters`` are the chosen configuration's fold models cut at the chosen rounds: the older
    origins' out-of-fold scores come from them without fitting again.
    """

    config: BoosterConfig
    rounds: int
    params: dict[str, Any]
    table: pd.DataFrame  # one row per configuration: depth, learning rate, leaf share, rounds, score, std
    metric: str
    boosters: list[xgb.Booster] = field(default_factory=list)

    def describe(self) -> str:
        row = self.table.loc[self.table["chosen"]].iloc[0]
        return (f"{self.config.describe()}, {self.rounds} rounds (mean {self.metric} {row['score']:.4f} "
                f"over {int(row['folds'])} origin(s))")


class FoldMatrix:
    """The features of the whole frame as one XGBoost matrix, built once; folds are slices of it.

    ``for_config`` gives the matrix a grid point reads: this one for trees, the linear design of
    the same rows (built once, on first use) for ``gblinear``.
    """

    def __init__(self, X: pd.DataFrame, y: pd.Series | np.ndarray, settings: Settings):
        self.features = list(X.columns)
        self.categories = category_levels(X)
        self.y = np.asarray(y, dtype=float)
        self.nthread = settings.training.xgb.nthread
        self.design: LinearDesign | None = None
        self._prepared = prepare_features(X, self.features, self.categories)
        self._min_level_share = settings.training.linear_min_level_share
        self._linear: FoldMatrix | None = None
        self.matrix = xgb.DMatrix(self._prepared, label=self.y, enable_categorical=True, nthread=self.nthread)

    def for_config(self, config: BoosterConfig) -> FoldMatrix:
        if config.booster != "gblinear" or self.design is not None:
            return self
        if self._linear is None:  # the same rows, prepared once, through the linear design
            linear = copy.copy(self)
            linear.design = LinearDesign(self._prepared, self.categories, self._min_level_share)
            linear.matrix = xgb.DMatrix(linear.design.transform(self._prepared), label=self.y, nthread=self.nthread)
            self._linear = linear
        return self._linear

    def rows(self, positions: np.ndarray) -> xgb.DMatrix:
        return self.matrix.slice(np.asarray(positions, dtype=np.int64))


def _fold_curves(params: dict[str, Any], folds: list[tuple[xgb.DMatrix, xgb.DMatrix]], max_rounds: int,
                 patience: int, maximize: bool) -> tuple[np.ndarray, list[xgb.Booster]]:
    """Boost every fold in lockstep, scoring only the evaluated rows each round (``xgboost.cv`` also
    scores the training rows every round, which costs more than the boosting on small windows);
    stop when the mean over folds has not improved for ``patience`` rounds."""
    boosters = [xgb.Booster(params, [train, evaluate]) for train, evaluate in folds]
    curve: list[float] = []
    best = 0
    for round_ in range(max_rounds):
        scores = []
        for booster, (train, evaluate) in zip(boosters, folds, strict=True):
            booster.update(train, round_)
            scores.append(float(booster.eval(evaluate, "eval", round_).rsplit(":", 1)[1]))
        curve.append(float(np.mean(scores)))
        if (curve[-1] > curve[best]) if maximize else (curve[-1] < curve[best]):
            best = round_
        if round_ - best >= patience:
            break
    return np.asarray(curve[: best + 1]), [b[: best + 1] for b in boosters]


def _converged_linear(params: dict[str, Any], folds: list[tuple[xgb.DMatrix, xgb.DMatrix]], max_rounds: int,
                      tolerance: float) -> tuple[int, list[xgb.Booster]]:
    """Linear boosters on every fold, updated in lockstep until no fold's training log loss falls by
    more than ``tolerance`` in a round. Judged on the training rows, not the evaluated ones: a base
    rate that drifts between the two made the evaluated log loss best after one round (seen on a real
    export), which is no fit at all."""
    boosters = [xgb.Booster(params, [train]) for train, _ in folds]
    previous = np.full(len(folds), np.inf)
    for round_ in range(max_rounds):
        losses = np.empty(len(folds))
        for position, (booster, (train, _)) in enumerate(zip(boosters, folds, strict=True)):
            booster.update(train, round_)
            losses[position] = float(booster.eval(train, "train", round_).rsplit(":", 1)[1])
        if np.max(previous - losses) < tolerance:
            return round_ + 1, boosters
        previous = losses
    return max_rounds, boosters


def _mean_eval(boosters: list[xgb.Booster], folds: list[tuple[xgb.DMatrix, xgb.DMatrix]], metric: str) -> float:
    """Mean over folds of one of the boosters' evaluation metrics on the evaluated rows."""
    values = []
    for booster, (_, evaluate) in zip(boosters, folds, strict=True):
        found = re.search(rf"eval-{re.escape(metric)}:(\S+)", booster.eval(evaluate, "eval"))
        assert found is not None, f"{metric} missing from the booster's evaluation"
        values.append(float(found.group(1)))
    return float(np.mean(values))


def tune_booster(data: FoldMatrix, folds: Folds, settings: Settings, scale_pos_weight: float) -> Tuning:
    """Every configuration of ``training.grid`` on the same folds; the best mean score wins (the
    configuration listed first on a tie, so list simpler ones first).

    Trees stop where the folds' *mean* curve of the selection metric stops improving: their rounds
    are their regularisation. The linear booster is regularised by ``l2``; its rounds run until it
    has converged on its training rows (``_converged_linear``), else its margins stay shrunk and the
    calibrator, fitted on the folds' scores, would stretch the refit's (seen on a real export:
    Platt slope 2.1 after 23 rounds chosen by ROC-AUC, the list's mean probability twice the rate).
    """
    _, maximize = SELECTION[settings.training.selection_metric]
    matrices: dict[int, list[tuple[xgb.DMatrix, xgb.DMatrix]]] = {}
    rows, best = [], None
    for position, config in enumerate(settings.training.grid):
        source = data.for_config(config)
        if id(source) not in matrices:
            matrices[id(source)] = [(source.rows(train), source.rows(evaluate)) for train, evaluate in folds]
        params = booster_params(settings, config, scale_pos_weight,
                                min_child_weight(data.y, scale_pos_weight, config.min_leaf_share))
        if config.booster == "gblinear":  # l2 regularises; rounds only converge, then the folds judge
            params["eval_metric"] = [params["eval_metric"], "logloss"]
            rounds, boosters = _converged_linear(params, matrices[id(source)], settings.training.max_rounds,
                                                 settings.training.linear_tolerance)
            score = _mean_eval(boosters, matrices[id(source)], params["eval_metric"][0])
        else:
            curve, boosters = _fold_curves(params, matrices[id(source)], settings.training.max_rounds,
                                           settings.training.xgb.early_stopping_rounds, maximize)
            rounds, score = len(curve), float(curve[-1])
        rows.append({"configuration": config.short(), "booster": config.booster, "max_depth": config.max_depth,
                     "learning_rate": config.learning_rate, "min_leaf_share": config.min_leaf_share,
                     "l2": config.l2, "min_child_weight": params.get("min_child_weight", float("nan")),
                     "rounds": rounds, "score": score, "folds": len(folds)})
        if best is None or (score > best[0] + 1e-9 if maximize else score < best[0] - 1e-9):
            best = (score, config, rounds, params, boosters, position)
    assert best is not None, "training.grid is empty"
    table = pd.DataFrame(rows)
    table["chosen"] = [position == best[5] for position in range(len(rows))]
    return Tuning(config=best[1], rounds=best[2], params=best[3], table=table,
                  metric=settings.training.selection_metric, boosters=best[4])


def fit_booster(data: FoldMatrix, positions: np.ndarray | None, params: dict[str, Any], rounds: int) -> xgb.Booster:
    """A booster on the given rows (all when None) with a fixed number of rounds (no early stopping:
    the rounds were chosen out of time)."""
    matrix = data.matrix if positions is None else data.rows(positions)
    return xgb.train(params, matrix, num_boost_round=max(1, rounds), verbose_eval=False)


def raw_scores(booster: xgb.Booster, data: FoldMatrix, positions: np.ndarray) -> np.ndarray:
    return np.asarray(booster.predict(data.rows(positions)), dtype=float)


def origin_weights(origin_index: np.ndarray, n_origins: int, decay: float) -> np.ndarray:
    """Calibration weight of each row by its origin: the newest 1, each older one ``decay`` times less."""
    return np.power(float(decay), (n_origins - 1) - np.asarray(origin_index, dtype=float))


# ------------------------------------------------------------------------------------ baselines


@dataclass(frozen=True)
class RuleSpec:
    """A one-line rule: rank by one column, e.g. ``RuleSpec("recency_days")`` for churn."""

    column: str
    higher_is_riskier: bool = True

    def describe(self) -> str:
        return f"{self.column} {'descending' if self.higher_is_riskier else 'ascending'} = riskier first"


class RuleModel:
    """Score = the rule column (sign by direction); a calibrator turns it into a rate.

    Missing values get the training median. Platt on the standardised score (or isotonic with its
    tie-break) keeps the rule's ranking, so AUC/precision@k are the rule's own while Brier/ECE are
    comparable with the model.
    """

    def __init__(self, spec: RuleSpec):
        self.spec = spec
        self.fill_value = 0.0
        self.calibrator = Calibrator("identity", scale="score")

    def score(self, X: pd.DataFrame) -> np.ndarray:
        values = pd.to_numeric(X[self.spec.column], errors="coerce").astype("float64")
        values = values.fillna(self.fill_value).to_numpy()
        return values if self.spec.higher_is_riskier else -values

    def fit(self, X: pd.DataFrame, y: pd.Series | None = None) -> RuleModel:
        """Learn the fill value; with ``y``, also a calibrator on these same rows (in-sample)."""
        if self.spec.column not in X.columns:
            raise KeyError(f"rule column {self.spec.column!r} is not a feature")
        median = pd.to_numeric(X[self.spec.column], errors="coerce").median()
        self.fill_value = 0.0 if pd.isna(median) else float(median)
        if y is not None:
            self.calibrator = Calibrator("isotonic", scale="score").fit(self.score(X), np.asarray(y, dtype=float))
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return np.clip(self.calibrator.transform(self.score(X)), 0.0, 1.0)


def _categories_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype("string").fillna(MISSING_CATEGORY).astype(object)


def logistic_pipeline(X: pd.DataFrame, seed: int) -> Pipeline:
    """Impute + scale numerics, one-hot categories, a plain logistic regression (no class weights:
    its probabilities stay rates, and it is the yardstick a user would fit first)."""
    categorical = categorical_columns(X)
    numeric = [c for c in X.columns if c not in categorical]
    encoder = ColumnTransformer(
        [
            (
                "num",
                make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()),
                numeric,
            ),
            (
                "cat",
                make_pipeline(
                    FunctionTransformer(_categories_as_text, feature_names_out="one-to-one"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                categorical,
            ),
        ]
    )
    classifier = LogisticRegression(max_iter=1000, random_state=seed)
    return Pipeline([("encode", encoder), ("classify", classifier)])


def fit_logistic(X: pd.DataFrame, y: pd.Series | np.ndarray, settings: Settings) -> tuple[Pipeline, str | None]:
    """The logistic baseline, on a seeded sample of ``training.logistic_max_rows`` rows when larger
    (the note says so); a training set with one class gets none (None, reason)."""
    y = np.asarray(y, dtype=int)
    note = None
    if y.size > settings.training.logistic_max_rows:
        keep = np.sort(np.random.default_rng(settings.training.seed).choice(
            y.size, settings.training.logistic_max_rows, replace=False))
        X, y = X.iloc[keep], y[keep]
        note = f"logistic regression fitted on a seeded sample of {y.size:,} rows"
    with warnings.catch_warnings():  # a few thousand rows may stop a little short of full convergence
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        return logistic_pipeline(X, settings.training.seed).fit(X, y), note


@dataclass
class Baselines:
    """What the model must beat, scored the same way on the same window."""

    logreg: Pipeline
    rule: RuleModel
    logreg_calibrator: Calibrator = field(default_factory=lambda: Calibrator("identity"))

    def raw(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        """Uncalibrated scores: the logistic regression's own probability and the rule's column."""
        return {
            "baseline_logreg": self.logreg.predict_proba(X[list(self.logreg.feature_names_in_)])[:, 1],
            "baseline_rule": self.rule.score(X),
        }

    def predict(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        raw = self.raw(X)
        return {
            "baseline_logreg": self.logreg_calibrator.transform(raw["baseline_logreg"]),
            "baseline_rule": np.clip(self.rule.calibrator.transform(raw["baseline_rule"]), 0.0, 1.0),
        }


def train_baselines(X_train: pd.DataFrame, y_train: pd.Series, settings: Settings, rule: RuleSpec) -> Baselines:
    """Fit the logistic-regression and one-line-rule baselines on the model's training rows.

    Calibration in-sample (the rule's isotonic map; the plain logistic regression is left as is);
    ``fit_as_of`` replaces both with calibrators fitted out of time, like the model's.
    """
    logreg, _ = fit_logistic(X_train, y_train, settings)
    return Baselines(logreg=logreg, rule=RuleModel(rule).fit(X_train, y_train))


def score_window(trained: TrainedModel, baselines: Baselines | None, X_test: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every scorer on the same test rows: calibrated model, raw booster, baselines."""
    scores = {"model": trained.predict_proba(X_test), "model_raw": trained.raw_proba(X_test)}
    if baselines is not None:
        scores.update(baselines.predict(X_test))
    return scores


def training_config_hash(settings: Settings, rule: RuleSpec | None, calibration_share: float) -> str:
    """Hash of the settings that change the fitted model (seed, booster grid, calibration, rule, split).

    ``split.as_of`` is left out: it changes the data, which the data hash covers; so are
    ``split.frame_threads`` and ``split.feature_batch_rows``, which change how fast the frame is
    built, not what it holds.
    """
    # an allow-list: settings added later (plots, samples, other models' rules) must not split reruns
    relevant = settings.training.model_dump(mode="json", include={
        "seed", "xgb", "grid", "max_rounds", "selection_metric", "calibration", "isotonic_min_positives",
        "calibration_decay", "class_weighting", "logistic_max_rows"})
    relevant["split"] = settings.split.model_dump(mode="json", exclude={"as_of", "frame_threads", "feature_batch_rows"})
    relevant["rule"] = None if rule is None else [rule.column, rule.higher_is_riskier]
    relevant["calibration_share"] = calibration_share
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- Prefect tasks


@task(name="train-model", cache_policy=NO_CACHE)
def train_model_task(
    X_train: pd.DataFrame,
    y_train: pd.Series,
    X_valid: pd.DataFrame,
    y_valid: pd.Series,
    settings: Settings,
    valid_time: pd.Series | None = None,
) -> TrainedModel:
    return train_model(X_train, y_train, X_valid, y_valid, settings, valid_time=valid_time)


@task(name="train-baselines", cache_policy=NO_CACHE)
def train_baselines_task(X_train: pd.DataFrame, y_train: pd.Series, settings: Settings, rule: RuleSpec) -> Baselines:
    return train_baselines(X_train, y_train, settings, rule)
