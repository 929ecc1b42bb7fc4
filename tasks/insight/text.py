"""Review, ticket and return texts: negative sentiment and complaint reasons, in English and Chinese.

Why character n-grams: TF-IDF over character 1-4-grams needs no tokenizer, so one model reads
Chinese without word segmentation and English with its spelling variants, and it runs offline.

Why weak labels: nobody labels complaint texts by hand, but the shop's own codes say a lot about
them. A return's ``reason_code`` and a ticket's ``category`` label their texts; a bad review
borrows the reason of a return or complaint ticket on the same order; a 4-5 star review is "no
complaint" (``other``); what is still unlabelled but matched by the keyword lexicon takes the
lexicon's answer (the only source for ``price_value``). The classifier learns from all of it and
generalises beyond the keywords; where it is unsure (or the text is too short) the lexicon
decides. Sentiment is learned from review scores (<= ``labels.negative_review_max_score``
negative, >= 4 positive) and tested on a later time window.

Point in time: every text is scored as it was written, and ``text_features`` only counts texts
created by the cutoff; the models themselves are trained on all texts up to ``text.train_until``
(default: everything), so set that date for strict backtests of the risk models.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from schemas.settings import Settings, TextSettings
from schemas.text import (
    COMPLAINT_REASONS,
    COMPLAINTS,
    NO_COMPLAINT,
    TEXT_INSIGHTS_TABLE,
    TextFeatures,
    TextInsights,
    complaint_column,
)
from tasks.data.warehouse import Warehouse

TEXT = "text"  # the one input column of the text pipelines (also their MLflow signature)
LANGS = ("en", "zh")
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
POSITIVE_MIN_SCORE = 4  # reviews scoring this or more are positive (and "no complaint")
MIN_SENTIMENT_TEXTS = 20
US_PER_DAY = 86_400_000_000


class TextModelError(RuntimeError):
    """The warehouse holds too little text to train a model; the message says what is missing."""


# ---- lexicon -----------------------------------------------------------------------------------
class Lexicon:
    """Keyword lexicon per category and language, the weak-label maps and the category words."""

    def __init__(self, spec: dict[str, Any], source: str = "<dict>"):
        self.source = source
        self.categories: tuple[str, ...] = tuple(spec["categories"])
        if sorted(self.categories) != sorted(COMPLAINT_REASONS):
            raise ValueError(f"{source}: categories must be exactly {COMPLAINT_REASONS}, got {self.categories}")
        self.labels: dict[str, dict[str, str]] = spec.get("labels", {})
        self.reason_phrases: dict[str, dict[str, str]] = spec.get("reason_phrases", {})
        self.weak_labels: dict[str, dict[str, str]] = spec.get("weak_labels", {})
        for table, mapping in self.weak_labels.items():
            bad = {code: cat for code, cat in mapping.items() if cat not in self.categories}
            if bad:
                raise ValueError(f"{source}: weak_labels.{table} maps to unknown categories {bad}")
        self.keywords: dict[str, dict[str, list[str]]] = {}  # language -> category -> words
        self.patterns: dict[str, dict[str, re.Pattern[str]]] = {}
        for category, by_lang in (spec.get("keywords") or {}).items():
            if category not in self.categories:
                raise ValueError(f"{source}: keywords for unknown category {category!r}")
            for lang, words in (by_lang or {}).items():
                words = [str(w) for w in words or []]
                self.keywords.setdefault(lang, {})[category] = words
                pattern = _keyword_pattern(words, lang)
                if pattern is not None:
                    self.patterns.setdefault(lang, {})[category] = pattern

    def label(self, category: str, language: str = "en") -> str:
        return self.labels.get(category, {}).get(language, category.replace("_", " "))

    def hits(self, texts: pd.Series, languages: pd.Series) -> pd.DataFrame:
        """Keyword hits per category (columns in tie-break order); a text is matched with the
        lexicon of its language, or with every lexicon when the language is unknown."""
        lower = texts.fillna("").astype(str).str.lower()
        langs = languages.reindex(texts.index)
        out = pd.DataFrame(0, index=texts.index, columns=list(self.categories), dtype=np.int64)
        for lang, by_category in self.patterns.items():
            mask = (langs == lang) | ~langs.isin(list(self.patterns))
            if not mask.any():
                continue
            for category, pattern in by_category.items():
                out.loc[mask, category] += lower[mask].str.count(pattern).to_numpy()
        return out

    def classify(self, hits: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
        """(category, hits of the winner, share of all hits): most hits wins, ties go to the
        category listed first, no hit at all is ``other``."""
        values = hits[list(self.categories)].to_numpy()
        best = values.argmax(axis=1)
        top = values.max(axis=1)
        total = values.sum(axis=1)
        cats = np.array(self.categories, dtype=object)[best]
        cats = np.where(top > 0, cats, "other")
        share = np.where(total > 0, top / np.maximum(total, 1), 0.0)
        return (pd.Series(cats, index=hits.index, dtype=object), pd.Series(top, index=hits.index),
                pd.Series(share, index=hits.index))

    def predict(self, texts: pd.Series, languages: pd.Series) -> pd.Series:
        return self.classify(self.hits(texts, languages))[0]


def _keyword_pattern(words: Sequence[str], lang: str) -> re.Pattern[str] | None:
    """One alternation per category, longest keyword first; English keywords match whole words."""
    words = sorted({w.lower().strip() for w in words if w and w.strip()}, key=len, reverse=True)
    if not words:
        return None
    body = "|".join(re.escape(w) for w in words)
    if lang == "zh":
        return re.compile(f"(?:{body})")
    return re.compile(rf"(?<![0-9a-z])(?:{body})(?![0-9a-z])")


def load_lexicon(path: Path | str) -> Lexicon:
    with open(path, encoding="utf-8") as fh:
        return Lexicon(yaml.safe_load(fh), source=str(path))


def detect_language(texts: pd.Series, given: pd.Series | None = None) -> pd.Series:
    """The stored language when it is en/zh, else ``zh`` for text with CJK characters, else ``en``."""
    detected = pd.Series(np.where(texts.fillna("").str.contains(CJK), "zh", "en"), index=texts.index)
    if given is None:
        return detected
    given = given.reindex(texts.index)
    return given.where(given.isin(LANGS), detected).astype(object)


# ---- texts from the warehouse -----------------------------------------------------------------
def _texts_sql() -> str:
    """Every non-empty review, ticket and return text with what the shop's codes say about it."""
    return """
    WITH single_product AS (
        SELECT order_id, any_value(product_id) AS product_id FROM order_items
        GROUP BY order_id HAVING count(DISTINCT product_id) = 1),
    order_return AS (
        SELECT order_id, arg_min(reason_code, requested_at) AS order_return_reason, min(requested_at) AS order_return_at
        FROM returns WHERE reason_code IS NOT NULL GROUP BY order_id),
    order_ticket AS (
        SELECT order_id, arg_min(category, opened_at) AS order_ticket_category, min(opened_at) AS order_ticket_at
        FROM tickets WHERE order_id IS NOT NULL AND category IS NOT NULL GROUP BY order_id)
    SELECT 'review' AS source, r.review_id AS source_id, coalesce(r.customer_id, o.customer_id) AS customer_id,
           r.order_id, coalesce(r.product_id, sp.product_id) AS product_id, r.created_at, r.language, r.text,
           CAST(r.score AS DOUBLE) AS score, NULL::VARCHAR AS code, x.order_return_reason,
           k.order_ticket_category, x.order_return_at, k.order_ticket_at
    FROM reviews r LEFT JOIN orders o USING (order_id) LEFT JOIN single_product sp USING (order_id)
         LEFT JOIN order_return x USING (order_id) LEFT JOIN order_ticket k USING (order_id)
    WHERE trim(coalesce(r.text, '')) <> ''
    UNION ALL
    SELECT 'ticket', t.ticket_id, t.customer_id, t.order_id, sp.product_id, t.opened_at, t.language, t.text,
           NULL, t.category, NULL, NULL, NULL, NULL
    FROM tickets t LEFT JOIN single_product sp USING (order_id)
    WHERE trim(coalesce(t.text, '')) <> ''
    UNION ALL
    SELECT 'return', x.return_id, o.customer_id, x.order_id, coalesce(x.product_id, sp.product_id),
           x.requested_at, NULL, x.reason_text, NULL, x.reason_code, NULL, NULL, NULL, NULL
    FROM returns x LEFT JOIN orders o USING (order_id) LEFT JOIN single_product sp USING (order_id)
    WHERE trim(coalesce(x.reason_text, '')) <> ''
    ORDER BY created_at, source, source_id"""


def load_texts(wh: Warehouse) -> pd.DataFrame:
    """All texts of the warehouse, one row each, with a language (stored or detected)."""
    frame = wh.query(_texts_sql())
    frame["language"] = detect_language(frame[TEXT], frame["language"])
    frame["created_at"] = pd.to_datetime(frame["created_at"])
    return frame.reset_index(drop=True)


# ---- weak labels -------------------------------------------------------------------------------
def weak_labels(texts: pd.DataFrame, lexicon: Lexicon, hits: pd.DataFrame,
                negative_max_score: int) -> tuple[pd.Series, pd.Series]:
    """(label, where it came from: ``code`` or ``lexicon``); unlabelled texts are missing.

    Returns and tickets take their code's category. A bad review takes the reason of a return on
    the same order, else of a complaint ticket on it (a ticket mapped to ``other`` says nothing
    about the review), else a lexicon match with a single winner. A good review is ``other``.
    """
    returns_map = lexicon.weak_labels.get("returns", {})
    tickets_map = lexicon.weak_labels.get("tickets", {})
    source = texts["source"]
    label = pd.Series(pd.NA, index=texts.index, dtype=object)
    label[source == "return"] = texts["code"].map(returns_map)[source == "return"]
    label[source == "ticket"] = texts["code"].map(tickets_map)[source == "ticket"]
    origin = pd.Series(np.where(label.notna(), "code", pd.NA), index=texts.index, dtype=object)

    review = source == "review"
    score = texts["score"]
    bad = review & (score <= negative_max_score)
    from_return = texts["order_return_reason"].map(returns_map)
    from_ticket = texts["order_ticket_category"].map(tickets_map).where(lambda s: s != "other")
    linked = from_return.where(from_return.notna() & (from_return != "other"), from_ticket)
    label[bad & linked.notna()] = linked[bad & linked.notna()]
    origin[bad & linked.notna()] = "code"

    values = hits[list(lexicon.categories)].to_numpy()
    top = values.max(axis=1)
    single = (values == top[:, None]).sum(axis=1) == 1
    lex_cat, _, _ = lexicon.classify(hits)
    not_good = review & (score < POSITIVE_MIN_SCORE)
    by_lexicon = not_good & label.isna() & pd.Series((top > 0) & single, index=texts.index) & (lex_cat != "other")
    label[by_lexicon] = lex_cat[by_lexicon]
    origin[by_lexicon] = "lexicon"
    return label, origin


def sentiment_labels(texts: pd.DataFrame, negative_max_score: int) -> pd.Series:
    """1 for a bad review, 0 for a good one, missing for 3 stars and for tickets and returns."""
    score = texts["score"].where(texts["source"] == "review")
    out = pd.Series(np.nan, index=texts.index)
    out[score <= negative_max_score] = 1.0
    out[score >= POSITIVE_MIN_SCORE] = 0.0
    return out


# ---- models ------------------------------------------------------------------------------------
def text_pipeline(cfg: TextSettings, c: float) -> Pipeline:
    """Character n-gram TF-IDF + logistic regression over the one column ``text`` (pure sklearn,
    so the logged MLflow model loads anywhere)."""
    tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(cfg.ngram_min, cfg.ngram_max), min_df=cfg.min_df,
                            max_features=cfg.max_features, sublinear_tf=True, lowercase=True, dtype=np.float32)
    return Pipeline([
        ("features", ColumnTransformer([("tfidf", tfidf, TEXT)])),
        ("model", LogisticRegression(C=c, max_iter=2_000, class_weight="balanced")),
    ])


def as_input(texts: pd.Series | Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({TEXT: pd.Series(texts).fillna("").astype(str).to_numpy()})


def _cap(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    return frame if len(frame) <= rows else frame.sample(rows, random_state=seed).sort_index()


def fit_pipeline(cfg: TextSettings, c: float, texts: pd.Series, y: pd.Series) -> Pipeline:
    """Fit single-threaded: scipy's L-BFGS with two BLAS threads on two shared cores ran ~10x slower."""
    with threadpool_limits(1):
        return text_pipeline(cfg, c).fit(as_input(texts), y.to_numpy())


def keyword_documents(lexicon: Lexicon) -> pd.DataFrame:
    """Every lexicon keyword as a one-line training document of its category, so the classifier
    knows the human vocabulary even where the shop's own texts never used it."""
    rows = [(word, lang, category) for lang, by_cat in lexicon.keywords.items()
            for category, words in by_cat.items() for word in words]
    return pd.DataFrame(rows, columns=[TEXT, "language", "y"])


def _macro_f1(y_true: pd.Series, y_pred: pd.Series) -> float:
    labels = sorted(set(y_true))
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


@dataclass
class SentimentResult:
    model: Pipeline
    test_roc_auc: float
    split_at: pd.Timestamp
    n_train: int
    n_test: int
    test_negative_share: float
    fit_seconds: float


def train_sentiment(texts: pd.DataFrame, cfg: TextSettings, negative_max_score: int) -> SentimentResult:
    """Fit on reviews before the later window, report ROC-AUC on it, then refit on all reviews
    (the deployed model also knows the newest vocabulary)."""
    y = sentiment_labels(texts, negative_max_score)
    data = texts.loc[y.notna(), [TEXT, "created_at"]].assign(y=y[y.notna()].astype(int))
    if len(data) < MIN_SENTIMENT_TEXTS or data["y"].nunique() < 2:
        raise TextModelError(
            f"sentiment needs at least {MIN_SENTIMENT_TEXTS} reviews with text, both bad (score <= "
            f"{negative_max_score}) and good (>= {POSITIVE_MIN_SCORE}); found {len(data)}")
    split_at = data["created_at"].max() - pd.Timedelta(days=cfg.sentiment_test_days)
    train, test = data[data["created_at"] < split_at], data[data["created_at"] >= split_at]
    auc = float("nan")
    if train["y"].nunique() == 2 and test["y"].nunique() == 2:
        sample = _cap(train, cfg.max_train_texts, cfg.seed)
        early = fit_pipeline(cfg, cfg.sentiment_c, sample[TEXT], sample["y"])
        auc = float(roc_auc_score(test["y"], predict_negative(early, test[TEXT])))
    started = time.perf_counter()
    sample = _cap(data, cfg.max_train_texts, cfg.seed)
    model = fit_pipeline(cfg, cfg.sentiment_c, sample[TEXT], sample["y"])
    return SentimentResult(model, auc, split_at, len(train), len(test), float(test["y"].mean()) if len(test) else 0.0,
                           time.perf_counter() - started)


def predict_negative(model: Pipeline, texts: pd.Series) -> np.ndarray:
    """P(negative) per text."""
    if len(texts) == 0:
        return np.zeros(0)
    classes = list(model.classes_)
    with threadpool_limits(1):
        return model.predict_proba(as_input(texts))[:, classes.index(1)]


@dataclass
class ComplaintResult:
    model: Pipeline | None
    class_counts: dict[str, int]
    label_origins: dict[str, int]
    validation: dict[str, float] = field(default_factory=dict)
    fit_seconds: float = 0.0


def predict_complaints(model: Pipeline | None, texts: pd.Series, languages: pd.Series, lexicon: Lexicon,
                       cfg: TextSettings) -> pd.DataFrame:
    """Complaint reason per text: the classifier, or the lexicon where the classifier is unsure
    (or the text is shorter than ``min_chars``) and the lexicon has a keyword for it."""
    lex_cat, lex_top, lex_share = lexicon.classify(lexicon.hits(texts, languages))
    out = pd.DataFrame({"complaint": lex_cat, "complaint_confidence": lex_share.astype(float),
                        "method": "lexicon"}, index=texts.index)
    if model is None or len(texts) == 0:
        return out
    with threadpool_limits(1):
        proba = model.predict_proba(as_input(texts))
    classes = np.array(model.classes_, dtype=object)
    best = proba.argmax(axis=1)
    confidence = proba.max(axis=1)
    short = texts.fillna("").str.strip().str.len().to_numpy() < cfg.min_chars
    use_lexicon = ((confidence < cfg.min_confidence) | short) & (lex_top.to_numpy() > 0)
    out["complaint"] = np.where(use_lexicon, out["complaint"].to_numpy(), classes[best])
    out["complaint_confidence"] = np.where(use_lexicon, out["complaint_confidence"].to_numpy(), confidence)
    out["method"] = np.where(use_lexicon, "lexicon", "model")
    return out


def train_complaints(texts: pd.DataFrame, lexicon: Lexicon, cfg: TextSettings,
                     negative_max_score: int) -> ComplaintResult:
    """Fit on weak labels plus the lexicon's keywords as documents; validate on the latest
    ``validation_share`` of code-labelled texts (lexicon-labelled ones would only measure agreement
    with the lexicon); refit on all."""
    hits = lexicon.hits(texts[TEXT], texts["language"])
    label, origin = weak_labels(texts, lexicon, hits, negative_max_score)
    data = texts.loc[label.notna(), [TEXT, "language", "created_at"]].assign(y=label[label.notna()],
                                                                             origin=origin[label.notna()])
    counts = {k: int(v) for k, v in data["y"].value_counts().items()}
    origins = {k: int(v) for k, v in data["origin"].value_counts().items()}
    if data["y"].nunique() < 2:
        return ComplaintResult(None, counts, origins)
    data = data.sort_values("created_at", kind="stable")
    n_valid = int(len(data) * cfg.validation_share)
    keywords = keyword_documents(lexicon)
    validation: dict[str, float] = {}
    if n_valid and data.iloc[:-n_valid]["y"].nunique() >= 2:
        train, valid = data.iloc[:-n_valid], data.iloc[-n_valid:]
        valid = valid[valid["origin"] == "code"]
        sample = pd.concat([_cap(train, cfg.max_train_texts, cfg.seed), keywords], ignore_index=True)
        early = fit_pipeline(cfg, cfg.complaint_c, sample[TEXT], sample["y"])
        predicted = predict_complaints(early, valid[TEXT], valid["language"], lexicon, cfg)["complaint"]
        validation = {"weak_valid_macro_f1": _macro_f1(valid["y"], predicted),
                      "weak_valid_macro_f1_lexicon": _macro_f1(valid["y"], lexicon.predict(valid[TEXT],
                                                                                            valid["language"])),
                      "weak_valid_rows": float(len(valid))}
    started = time.perf_counter()
    sample = pd.concat([_cap(data, cfg.max_train_texts, cfg.seed), keywords], ignore_index=True)
    model = fit_pipeline(cfg, cfg.complaint_c, sample[TEXT], sample["y"])
    return ComplaintResult(model, counts, origins, validation, time.perf_counter() - started)


def load_eval_set(path: Path | str) -> pd.DataFrame:
    """The hand-checked evaluation texts: columns text, language, category."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {TEXT, "language", "category"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    unknown = set(frame["category"]) - set(COMPLAINT_REASONS)
    if unknown:
        raise ValueError(f"{path}: unknown categories {sorted(unknown)}")
    return frame


def evaluate_complaints(model: Pipeline | None, lexicon: Lexicon, eval_set: pd.DataFrame,
                        cfg: TextSettings) -> tuple[dict[str, float], pd.DataFrame]:
    """Macro-F1 per language of the shipped classifier (with its lexicon fallback), of the bare
    classifier and of the keyword baseline, plus every row's three predictions."""
    rows = eval_set.reset_index(drop=True)
    system = predict_complaints(model, rows[TEXT], rows["language"], lexicon, cfg)
    rows = rows.assign(classifier=system["complaint"], method=system["method"],
                       lexicon=lexicon.predict(rows[TEXT], rows["language"]))
    if model is not None:
        with threadpool_limits(1):
            rows["bare_classifier"] = model.predict(as_input(rows[TEXT]))
    else:
        rows["bare_classifier"] = rows["lexicon"]
    metrics: dict[str, float] = {}
    for lang, part in rows.groupby("language"):
        metrics[f"eval_macro_f1_{lang}"] = _macro_f1(part["category"], part["classifier"])
        metrics[f"eval_macro_f1_bare_{lang}"] = _macro_f1(part["category"], part["bare_classifier"])
        metrics[f"eval_macro_f1_lexicon_{lang}"] = _macro_f1(part["category"], part["lexicon"])
        metrics[f"eval_rows_{lang}"] = float(len(part))
    return metrics, rows


# ---- training, scoring and storing --------------------------------------------------------------
@dataclass
class TextModels:
    sentiment: SentimentResult
    complaints: ComplaintResult
    lexicon: Lexicon
    eval_metrics: dict[str, float]
    eval_rows: pd.DataFrame | None
    n_texts: int
    trained_until: pd.Timestamp | None
    run_id: str | None = None

    def metrics(self) -> dict[str, float]:
        out = {"sentiment_test_roc_auc": self.sentiment.test_roc_auc,
               "sentiment_train_reviews": float(self.sentiment.n_train),
               "sentiment_test_reviews": float(self.sentiment.n_test),
               "sentiment_test_negative_share": self.sentiment.test_negative_share,
               "sentiment_fit_seconds": self.sentiment.fit_seconds,
               "complaint_fit_seconds": self.complaints.fit_seconds,
               "texts": float(self.n_texts)}
        out |= {f"complaint_{k}": v for k, v in self.complaints.validation.items()}
        out |= {f"complaint_{k}": v for k, v in self.eval_metrics.items()}
        out |= {f"weak_labels_{k}": float(v) for k, v in self.complaints.class_counts.items()}
        return {k: v for k, v in out.items() if v is not None and np.isfinite(v)}


def train_text_models(texts: pd.DataFrame, settings: Settings) -> TextModels:
    """Both models from the warehouse's texts (up to ``text.train_until``), evaluated."""
    cfg = settings.text
    lexicon = load_lexicon(cfg.lexicon_file)
    until = pd.Timestamp(cfg.train_until) if cfg.train_until else None
    train = texts[texts["created_at"] <= until] if until is not None else texts
    if until is not None and "order_return_at" in train:  # a review may not borrow a reason filed later
        train = train.assign(
            order_return_reason=train["order_return_reason"].where(train["order_return_at"] <= until),
            order_ticket_category=train["order_ticket_category"].where(train["order_ticket_at"] <= until))
    neg_max = settings.labels.negative_review_max_score
    sentiment = train_sentiment(train, cfg, neg_max)
    complaints = train_complaints(train, lexicon, cfg, neg_max)
    eval_metrics: dict[str, float] = {}
    eval_rows = None
    if cfg.eval_file is not None and Path(cfg.eval_file).exists():
        eval_metrics, eval_rows = evaluate_complaints(complaints.model, lexicon, load_eval_set(cfg.eval_file), cfg)
    return TextModels(sentiment, complaints, lexicon, eval_metrics, eval_rows, len(train), until)


def score_texts(texts: pd.DataFrame, models: TextModels, settings: Settings) -> pd.DataFrame:
    """``text_insights`` rows: every text's P(negative) and complaint reason (a 4-5 star review
    mentions delivery or quality to praise them, so its reason is ``other``, decided by the score)."""
    cfg = settings.text
    p_neg = predict_negative(models.sentiment.model, texts[TEXT])
    complaints = predict_complaints(models.complaints.model, texts[TEXT], texts["language"], models.lexicon, cfg)
    praise = ((texts["source"] == "review") & (texts["score"] >= POSITIVE_MIN_SCORE)).to_numpy()
    complaints.loc[praise, ["complaint", "complaint_confidence", "method"]] = ["other", 1.0, "score"]
    hits = models.lexicon.hits(texts[TEXT], texts["language"])
    weak, _ = weak_labels(texts, models.lexicon, hits, settings.labels.negative_review_max_score)
    frame = pd.DataFrame({
        "source": texts["source"], "source_id": texts["source_id"], "customer_id": texts["customer_id"],
        "order_id": texts["order_id"], "product_id": texts["product_id"], "created_at": texts["created_at"],
        "language": texts["language"], "negative_probability": np.clip(p_neg, 0.0, 1.0),
        "negative": p_neg >= cfg.negative_threshold, "complaint": complaints["complaint"],
        "complaint_confidence": np.clip(complaints["complaint_confidence"].astype(float), 0.0, 1.0),
        "method": complaints["method"], "weak_label": weak, "model_run_id": models.run_id,
    })
    return TextInsights.validate(frame)


def store_insights(wh: Warehouse, insights: pd.DataFrame) -> int:
    """Replace ``text_insights`` (every run rescores every text, so the table is rebuilt)."""
    wh.replace_table(TEXT_INSIGHTS_TABLE, insights)
    return len(insights)


def log_text_run(models: TextModels, settings: Settings) -> str:
    """One MLflow run in ``<prefix>-text``: settings, weak-label counts, metrics, both models,
    the lexicon and the evaluation rows."""
    import mlflow
    import mlflow.sklearn
    import sklearn
    from mlflow.models import infer_signature

    from tasks.models.registry import code_version, configure, ensure_experiment

    client = configure(settings)
    experiment_id = ensure_experiment(client, settings, settings.text.experiment)
    cfg = settings.text
    name = f"text-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    requirements = [f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}", f"numpy=={np.__version__}"]
    example = as_input(["The parcel arrived late and the box was crushed.", "尺码偏小，穿不上"])
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"aftersales_model": "text", "code_version": code_version()})
        mlflow.log_params({
            "ngram_range": f"{cfg.ngram_min}-{cfg.ngram_max}", "analyzer": "char_wb", "min_df": cfg.min_df,
            "max_features": cfg.max_features, "sentiment_c": cfg.sentiment_c, "complaint_c": cfg.complaint_c,
            "sentiment_test_days": cfg.sentiment_test_days, "sentiment_split_at": str(models.sentiment.split_at),
            "min_confidence": cfg.min_confidence, "negative_threshold": cfg.negative_threshold,
            "train_until": str(models.trained_until) if models.trained_until is not None else "all",
            "negative_review_max_score": settings.labels.negative_review_max_score,
            "lexicon_file": Path(cfg.lexicon_file).name,
            **{f"weak_label_origin_{k}": v for k, v in models.complaints.label_origins.items()},
        })
        mlflow.log_metrics(models.metrics())
        mlflow.log_artifact(str(cfg.lexicon_file), "lexicon")
        if models.eval_rows is not None:
            mlflow.log_text(models.eval_rows.to_csv(index=False), "evaluation/complaint_eval_predictions.csv")
        # cloudpickle: skops (the default) stores each of the vocabulary's n-grams as its own array,
        # ~10x slower; a signature instead of an input example skips a reload to validate it
        for name, model in (("sentiment", models.sentiment.model), ("complaint", models.complaints.model)):
            if model is None:
                continue
            with threadpool_limits(1):
                signature = infer_signature(example, model.predict(example))
            with _quiet_logger("mlflow.sklearn"):  # its warning about pickle is the choice made above
                mlflow.sklearn.log_model(model, name=name, signature=signature, pip_requirements=requirements,
                                         serialization_format="cloudpickle")
        return run.info.run_id


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def summary(models: TextModels, stored: int) -> dict[str, Any]:
    """The figures a person wants after ``aftersales text``."""
    m = models.metrics()
    return {"texts": models.n_texts, "stored": stored, "run_id": models.run_id,
            "sentiment_test_roc_auc": m.get("sentiment_test_roc_auc"),
            "complaint_eval": {k.removeprefix("complaint_eval_"): v for k, v in m.items()
                               if k.startswith("complaint_eval_")},
            "complaint_weak_validation": models.complaints.validation,
            "weak_labels": models.complaints.class_counts}


# ---- features for the risk models ---------------------------------------------------------------
def _text_features_sql(complaints: Sequence[str]) -> str:
    counts = ",\n".join(
        f"count(*) FILTER (WHERE complaint = '{c}')::DOUBLE AS {complaint_column(c)}" for c in complaints)
    return f"""
    SELECT customer_id,
           count(*)::DOUBLE AS text_count,
           count(*) FILTER (WHERE negative)::DOUBLE AS negative_text_count,
           date_diff('microsecond', max(created_at) FILTER (WHERE negative), $cutoff) / {US_PER_DAY}.0
               AS days_since_negative_text,
           {counts},
           max(created_at) FILTER (WHERE complaint <> 'other') AS last_complaint_at
    FROM "{TEXT_INSIGHTS_TABLE}"
    WHERE created_at <= $cutoff AND customer_id IS NOT NULL
    GROUP BY customer_id ORDER BY customer_id"""


def text_features(wh: Warehouse, cutoff: Any) -> pd.DataFrame:
    """Per customer with at least one text created by ``cutoff``: text and negative-text counts,
    share negative, days since the last negative text, one count per complaint reason and the
    dominant reason (most texts; ties: the reason listed first in ``COMPLAINTS``; ``none``).

    Join: left-join on ``customer_id`` to the customer features of the same cutoff; a customer
    without a row wrote nothing by then (counts 0, ``days_since_negative_text`` NaN, dominant
    ``none``). Empty frame (same columns) when ``aftersales text`` has not run.
    """
    cutoff = pd.Timestamp(cutoff)
    if cutoff.tzinfo is not None:
        cutoff = cutoff.tz_convert("UTC").tz_localize(None)
    columns = list(TextFeatures.to_schema().columns)
    if not wh.has_table(TEXT_INSIGHTS_TABLE):
        return TextFeatures.validate(pd.DataFrame({c: pd.Series(dtype=float) for c in columns}).astype(
            {"customer_id": str, "dominant_complaint": str}))
    raw = wh.query(_text_features_sql(COMPLAINTS), {"cutoff": cutoff.to_pydatetime()})
    counts = raw[[complaint_column(c) for c in COMPLAINTS]].to_numpy()
    dominant = np.array(COMPLAINTS, dtype=object)[counts.argmax(axis=1)] if len(raw) else np.array([], dtype=object)
    raw["dominant_complaint"] = np.where(counts.max(axis=1, initial=0) > 0, dominant, NO_COMPLAINT) if len(raw) else []
    raw["negative_text_share"] = raw["negative_text_count"] / raw["text_count"]
    raw["days_since_negative_text"] = raw["days_since_negative_text"].clip(lower=0)
    return TextFeatures.validate(raw[columns])


# ---- Prefect tasks ------------------------------------------------------------------------------
@task(name="load-texts", cache_policy=NO_CACHE)
def load_texts_task(settings: Settings) -> pd.DataFrame:
    from tasks.data.warehouse import open_warehouse

    with open_warehouse(settings, read_only=True) as wh:
        return load_texts(wh)


@task(name="train-text-models", cache_policy=NO_CACHE)
def train_text_models_task(texts: pd.DataFrame, settings: Settings) -> TextModels:
    return train_text_models(texts, settings)


@task(name="log-text-run", cache_policy=NO_CACHE)
def log_text_run_task(models: TextModels, settings: Settings) -> str:
    return log_text_run(models, settings)


@task(name="score-texts", cache_policy=NO_CACHE)
def score_and_store_task(texts: pd.DataFrame, models: TextModels, settings: Settings) -> int:
    from tasks.data.warehouse import open_warehouse

    insights = score_texts(texts, models, settings)
    with open_warehouse(settings) as wh:
        return store_insights(wh, insights)


def reason_phrase(category: str, lexicon: Lexicon, language: str = "en") -> str:
    """Plain words for a complaint reason in the care task list."""
    return lexicon.reason_phrases.get(category, {}).get(language, lexicon.label(category, language))


def dumps_quotes(quotes: Sequence[str]) -> str:
    return json.dumps(list(quotes), ensure_ascii=False)
