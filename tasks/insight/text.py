"""Review, ticket and return texts: negative sentiment and complaint reasons, in English and Chinese.

Features: TF-IDF over word 1-2-grams and character 1-4-grams side by side (``text.analyzer``).
Words carry English sentiment; character n-grams need no tokenizer, so the same model reads Chinese
without word segmentation and English with its spelling variants, offline. Every run also logs the
time-split ROC-AUC of word, char and word+char on the shop's own later reviews.

Why weak labels: nobody labels complaint texts by hand, but the shop's own codes say a lot about
them. A return's ``reason_code`` and a ticket's ``category`` label their texts; a bad review
borrows the reason of a return or complaint ticket on the same order filed by the review's own
time (never a later one); what is still unlabelled but matched by the keyword lexicon takes the
lexicon's answer (the only source for ``price_value`` and ``food_taste``). The classifier learns
from all of it; where it is unsure (or the text is too short), or where it did not beat the
lexicon on the hand-checked texts of a language, the lexicon decides. Sentiment is learned from
review scores (<= ``labels.negative_review_max_score`` negative, >= 4 positive).

Point in time (``text.crossfit``, on by default): the prediction stored for a text comes from
models trained only on texts created before the text's period (expanding-window cross-fitting,
periods of ``text.crossfit_freq``), so ``text_insights`` never holds an in-sample prediction and a
text's row does not change when later texts, returns or tickets arrive. Texts of the first periods,
before enough history exists, keep their review score (known when written) and the lexicon's reason.
The models logged to MLflow are fitted on all texts up to ``text.train_until`` (default: all).
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
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.pipeline import FeatureUnion, Pipeline
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
# words of two or more letters outside CJK: an unsegmented Chinese clause is not a word (characters
# n-grams read Chinese); on real JD phone reviews this kept word+char at char's ROC-AUC
WORD_TOKEN = r"(?u)\b(?:(?![\u3400-\u9fff\uf900-\ufaff])[^\W\d_]){2,}\b"
POSITIVE_MIN_SCORE = 4  # reviews scoring this or more are positive (and "no complaint")
MIN_SENTIMENT_TEXTS = 20
Analyzer = Literal["word", "char", "word+char"]
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
def linked_reasons(texts: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(return reason, ticket category) of each text's order, only where that return or ticket was
    filed by the text's own ``created_at``: a label is never borrowed from what came later."""
    created = texts["created_at"]

    def known(code: str, at: str) -> pd.Series:
        if code not in texts:
            return pd.Series(pd.NA, index=texts.index, dtype=object)
        when = pd.to_datetime(texts[at]) if at in texts else pd.Series(pd.NaT, index=texts.index)
        return texts[code].where(when.notna() & (when <= created))

    return known("order_return_reason", "order_return_at"), known("order_ticket_category", "order_ticket_at")


def weak_labels(texts: pd.DataFrame, lexicon: Lexicon, hits: pd.DataFrame,
                negative_max_score: int) -> tuple[pd.Series, pd.Series]:
    """(label, where it came from: ``code`` or ``lexicon``); unlabelled texts are missing.

    Returns and tickets take their code's category. A bad review takes the reason of a return on
    the same order filed by the review's time, else of a complaint ticket on it (a ticket mapped to
    ``other`` says nothing about the review), else a lexicon match with a single winner. A good
    review is ``other`` only through the praise rule at scoring, never as a training label.
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
    return_reason, ticket_category = linked_reasons(texts)
    from_return = return_reason.map(returns_map)
    from_ticket = ticket_category.map(tickets_map).where(lambda s: s != "other")
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
def _vectorizer(cfg: TextSettings, analyzer: Analyzer) -> Any:
    """TF-IDF of word 1..``word_ngram_max``-grams, character n-grams, or both side by side.

    Words carry English sentiment ("not worth", "stopped working") that character n-grams only
    approximate; character n-grams read Chinese without word segmentation and survive misspellings.
    """
    word = TfidfVectorizer(analyzer="word", ngram_range=(1, cfg.word_ngram_max), min_df=cfg.min_df,
                           token_pattern=WORD_TOKEN, max_features=cfg.word_max_features, sublinear_tf=True,
                           lowercase=True, dtype=np.float32)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(cfg.ngram_min, cfg.ngram_max), min_df=cfg.min_df,
                           max_features=cfg.max_features, sublinear_tf=True, lowercase=True, dtype=np.float32)
    if analyzer == "word":
        return word
    if analyzer == "char":
        return char
    return FeatureUnion([("word", word), ("char", char)])


def text_pipeline(cfg: TextSettings, c: float, analyzer: Analyzer | None = None) -> Pipeline:
    """TF-IDF + logistic regression over the one column ``text`` (pure sklearn, so the logged
    MLflow model loads anywhere)."""
    return Pipeline([
        ("features", ColumnTransformer([("tfidf", _vectorizer(cfg, analyzer or cfg.analyzer), TEXT)])),
        ("model", LogisticRegression(C=c, max_iter=2_000, class_weight="balanced")),
    ])


def as_input(texts: pd.Series | Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({TEXT: pd.Series(texts).fillna("").astype(str).to_numpy()})


def _cap(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    return frame if len(frame) <= rows else frame.sample(rows, random_state=seed).sort_index()


def fit_pipeline(cfg: TextSettings, c: float, texts: pd.Series, y: pd.Series,
                 analyzer: Analyzer | None = None) -> Pipeline:
    """Fit single-threaded: scipy's L-BFGS with two BLAS threads on two shared cores ran ~10x slower."""
    with threadpool_limits(1):
        return text_pipeline(cfg, c, analyzer).fit(as_input(texts), y.to_numpy())


def keyword_documents(lexicon: Lexicon) -> pd.DataFrame:
    """Every lexicon keyword as a one-line training document of its category, so the classifier
    knows the human vocabulary even where the shop's own texts never used it."""
    rows = [(word, lang, category) for lang, by_cat in lexicon.keywords.items()
            for category, words in by_cat.items() for word in words]
    return pd.DataFrame(rows, columns=[TEXT, "language", "y"])


def _macro_f1(y_true: pd.Series, y_pred: pd.Series) -> float:
    labels = sorted(set(y_true))
    if not labels:
        return float("nan")
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def predict_negative(model: Pipeline, texts: pd.Series) -> np.ndarray:
    """P(negative) per text."""
    if len(texts) == 0:
        return np.zeros(0)
    classes = list(model.classes_)
    with threadpool_limits(1):
        return model.predict_proba(as_input(texts))[:, classes.index(1)]


def predict_complaints(model: Pipeline | None, texts: pd.Series, languages: pd.Series, lexicon: Lexicon,
                       cfg: TextSettings, model_languages: Sequence[str] | None = None) -> pd.DataFrame:
    """Complaint reason per text: the classifier (only for ``model_languages``, default all), or
    the lexicon where the classifier is unsure, the text is shorter than ``min_chars``, or the
    classifier did not beat the lexicon for the text's language."""
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
    allowed = np.ones(len(texts), dtype=bool) if model_languages is None else \
        languages.reindex(texts.index).isin(list(model_languages)).to_numpy()
    use_lexicon = (((confidence < cfg.min_confidence) | short) & (lex_top.to_numpy() > 0)) | ~allowed
    out["complaint"] = np.where(use_lexicon, out["complaint"].to_numpy(), classes[best])
    out["complaint_confidence"] = np.where(use_lexicon, out["complaint_confidence"].to_numpy(), confidence)
    out["method"] = np.where(use_lexicon, "lexicon", "model")
    return out


def complaint_training_data(texts: pd.DataFrame, lexicon: Lexicon, negative_max_score: int) -> pd.DataFrame:
    """The weakly labelled texts (text, language, created_at, y, origin), oldest first."""
    hits = lexicon.hits(texts[TEXT], texts["language"])
    label, origin = weak_labels(texts, lexicon, hits, negative_max_score)
    data = texts.loc[label.notna(), [TEXT, "language", "created_at"]].assign(
        y=label[label.notna()], origin=origin[label.notna()])
    return data.sort_values("created_at", kind="stable")


def fit_complaint_model(data: pd.DataFrame, lexicon: Lexicon, cfg: TextSettings) -> Pipeline | None:
    """Weak labels plus the lexicon's keywords as documents; None when the data has one class."""
    if data["y"].nunique() < 2:
        return None
    sample = pd.concat([_cap(data, cfg.max_train_texts, cfg.seed), keyword_documents(lexicon)], ignore_index=True)
    return fit_pipeline(cfg, cfg.complaint_c, sample[TEXT], sample["y"])


def model_languages(model: Pipeline | None, lexicon: Lexicon, eval_set: pd.DataFrame | None,
                    cfg: TextSettings) -> tuple[list[str], dict[str, float]]:
    """Languages whose classifier (with its lexicon fallback) beats the bare keyword lexicon on the
    hand-checked set; the others are left to the lexicon. Without a checked set, every language."""
    if model is None:
        return [], {}
    if eval_set is None or eval_set.empty:
        return list(LANGS), {}
    metrics, _ = evaluate_complaints(model, lexicon, eval_set, cfg)
    chosen = [lang for lang in LANGS if f"eval_macro_f1_{lang}" not in metrics
              or metrics[f"eval_macro_f1_{lang}"] > metrics[f"eval_macro_f1_lexicon_{lang}"]]
    return chosen, metrics


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


def evaluate_complaints(model: Pipeline | None, lexicon: Lexicon, eval_set: pd.DataFrame, cfg: TextSettings,
                        languages: Sequence[str] | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """Macro-F1 per language of the shipped classifier (with its lexicon fallback, and only for
    ``languages``), of the bare classifier and of the keyword baseline, plus every row's predictions."""
    rows = eval_set.reset_index(drop=True)
    system = predict_complaints(model, rows[TEXT], rows["language"], lexicon, cfg, languages)
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


# ---- cross-fitting: every stored prediction comes from a model of earlier texts -----------------
@dataclass
class Fold:
    """The models that score texts created in [start, end): trained only on texts (and the weak
    labels known at their time) created before ``start``."""

    start: pd.Timestamp
    end: pd.Timestamp | None
    sentiment: Pipeline | None
    complaint: Pipeline | None
    languages: list[str]  # languages whose complaint reasons come from the classifier
    train_reviews: int = 0
    train_weak_labels: int = 0


def fold_starts(created: pd.Series, cfg: TextSettings, until: pd.Timestamp | None = None) -> list[pd.Timestamp]:
    """Period starts (``text.crossfit_freq``, anchored at the first text's period) after the first
    period, up to the last text; none after ``until`` (no training text may be newer)."""
    if created.empty:
        return []
    first, last = pd.Timestamp(created.min()), pd.Timestamp(created.max())
    anchor = first.to_period(_period_freq(cfg.crossfit_freq)).start_time
    starts = [s for s in pd.date_range(anchor, last, freq=cfg.crossfit_freq) if s > first]
    if until is not None:
        starts = [s for s in starts if s <= until + pd.Timedelta(microseconds=1)]
    return starts


def _period_freq(freq: str) -> str:
    """The period alias of a date-range start alias (MS -> M, QS -> Q, W-MON -> W-SUN)."""
    return {"MS": "M", "QS": "Q", "YS": "Y", "W-MON": "W-SUN"}.get(freq, freq)


def fit_fold(train: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp | None, lexicon: Lexicon,
             eval_set: pd.DataFrame | None, cfg: TextSettings, negative_max_score: int) -> Fold:
    """Both models from texts created before ``start`` (``train`` holds only those)."""
    assert train.empty or train["created_at"].max() < start, "a fold may only learn from earlier texts"
    y = sentiment_labels(train, negative_max_score)
    reviews = train.loc[y.notna(), [TEXT]].assign(y=y[y.notna()].astype(int))
    sentiment = None
    if len(reviews) >= cfg.crossfit_min_reviews and reviews["y"].value_counts().min() >= cfg.crossfit_min_class:
        sample = _cap(reviews, cfg.max_train_texts, cfg.seed)
        sentiment = fit_pipeline(cfg, cfg.sentiment_c, sample[TEXT], sample["y"])
    data = complaint_training_data(train, lexicon, negative_max_score)
    enough = len(data) >= cfg.crossfit_min_weak_labels and (data["origin"] == "code").any()
    complaint = fit_complaint_model(data, lexicon, cfg) if enough else None  # as train_complaints decides
    languages, _ = model_languages(complaint, lexicon, eval_set, cfg)
    return Fold(start, end, sentiment, complaint, languages, len(reviews), len(data))


def crossfit(texts: pd.DataFrame, lexicon: Lexicon, eval_set: pd.DataFrame | None, cfg: TextSettings,
             negative_max_score: int, until: pd.Timestamp | None = None) -> list[Fold]:
    """Expanding-window cross-fitting: one fold per period, each trained on all earlier texts."""
    starts = fold_starts(texts["created_at"], cfg, until)
    folds = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else None
        train = texts[texts["created_at"] < start]
        folds.append(fit_fold(train, start, end, lexicon, eval_set, cfg, negative_max_score))
    return folds


def fold_of(created: pd.Series, folds: Sequence[Fold]) -> np.ndarray:
    """Index of the fold that scores each text (-1: created before the first fold, no model yet)."""
    starts = np.array([np.datetime64(f.start, "us") for f in folds], dtype="datetime64[us]")
    values = pd.to_datetime(created).to_numpy(dtype="datetime64[us]")
    return np.searchsorted(starts, values, side="right") - 1


# ---- the reported models: time-split evaluation and the deployed all-data fit --------------------
@dataclass
class SentimentResult:
    model: Pipeline | None
    test_roc_auc: float
    split_at: pd.Timestamp | None
    n_train: int
    n_test: int
    test_negative_share: float
    fit_seconds: float
    analyzer_roc_auc: dict[str, float] = field(default_factory=dict)
    analyzer: str = "word+char"


def compare_analyzers(data: pd.DataFrame, split_at: pd.Timestamp, cfg: TextSettings) -> dict[str, float]:
    """Time-split ROC-AUC of each analyzer on the same later window (logged, so the configured
    ``text.analyzer`` can be checked on the shop's own reviews)."""
    train, test = data[data["created_at"] < split_at], data[data["created_at"] >= split_at]
    if train["y"].nunique() < 2 or test["y"].nunique() < 2:
        return {}
    sample = _cap(train, cfg.max_train_texts, cfg.seed)
    out = {}
    for analyzer in cfg.compare_analyzers:
        model = fit_pipeline(cfg, cfg.sentiment_c, sample[TEXT], sample["y"], analyzer)
        out[analyzer] = float(roc_auc_score(test["y"], predict_negative(model, test[TEXT])))
    return out


def later_window_start(data: pd.DataFrame, cfg: TextSettings) -> pd.Timestamp:
    """Start of the test window: the last ``sentiment_test_days`` days, or, when those hold only
    good or only bad reviews (a quiet or very happy shop), the latest ``validation_share`` of them."""
    split_at = data["created_at"].max() - pd.Timedelta(days=cfg.sentiment_test_days)
    if data.loc[data["created_at"] >= split_at, "y"].nunique() == 2:
        return split_at
    ordered = data.sort_values("created_at", kind="stable")
    n_test = max(int(len(ordered) * cfg.validation_share), 1)
    while n_test < len(ordered) and ordered["y"].iloc[-n_test:].nunique() < 2:
        n_test = min(len(ordered), n_test * 2)
    return ordered["created_at"].iloc[-n_test]


def train_sentiment(texts: pd.DataFrame, cfg: TextSettings, negative_max_score: int) -> SentimentResult:
    """Report ROC-AUC on the later window, then refit on all reviews (the deployed model also knows
    the newest vocabulary)."""
    y = sentiment_labels(texts, negative_max_score)
    data = texts.loc[y.notna(), [TEXT, "created_at"]].assign(y=y[y.notna()].astype(int))
    if len(data) < MIN_SENTIMENT_TEXTS or data["y"].nunique() < 2:
        raise TextModelError(
            f"sentiment needs at least {MIN_SENTIMENT_TEXTS} reviews with text, both bad (score <= "
            f"{negative_max_score}) and good (>= {POSITIVE_MIN_SCORE}); found {len(data)}")
    split_at = later_window_start(data, cfg)
    train, test = data[data["created_at"] < split_at], data[data["created_at"] >= split_at]
    auc = float("nan")
    compared = compare_analyzers(data, split_at, cfg)
    if cfg.analyzer in compared:
        auc = compared[cfg.analyzer]
    elif train["y"].nunique() == 2 and test["y"].nunique() == 2:
        sample = _cap(train, cfg.max_train_texts, cfg.seed)
        early = fit_pipeline(cfg, cfg.sentiment_c, sample[TEXT], sample["y"])
        auc = float(roc_auc_score(test["y"], predict_negative(early, test[TEXT])))
    started = time.perf_counter()
    sample = _cap(data, cfg.max_train_texts, cfg.seed)
    model = fit_pipeline(cfg, cfg.sentiment_c, sample[TEXT], sample["y"])
    return SentimentResult(model, auc, split_at, len(train), len(test), float(test["y"].mean()) if len(test) else 0.0,
                           time.perf_counter() - started, compared, cfg.analyzer)


@dataclass
class ComplaintResult:
    model: Pipeline | None
    class_counts: dict[str, int]
    label_origins: dict[str, int]
    validation: dict[str, float] = field(default_factory=dict)
    fit_seconds: float = 0.0
    languages: list[str] = field(default_factory=list)  # where the classifier beat the lexicon
    note: str | None = None  # one line on what the data did not support


def train_complaints(texts: pd.DataFrame, lexicon: Lexicon, cfg: TextSettings,
                     negative_max_score: int) -> ComplaintResult:
    """Fit on weak labels plus the lexicon's keywords as documents; validate on the latest
    ``validation_share`` of code-labelled texts (lexicon-labelled ones would only measure agreement
    with the lexicon) when there are any; refit on all."""
    data = complaint_training_data(texts, lexicon, negative_max_score)
    counts = {k: int(v) for k, v in data["y"].value_counts().items()}
    origins = {k: int(v) for k, v in data["origin"].value_counts().items()}
    if not (data["origin"] == "code").any():
        return ComplaintResult(None, counts, origins, note=(
            "no returns or tickets with reason codes to learn complaint reasons from: they come from the "
            "keyword lexicon"))
    if data["y"].nunique() < 2:
        return ComplaintResult(None, counts, origins, note="the weak labels hold a single complaint reason: "
                                                           "complaint reasons come from the keyword lexicon")
    n_valid = int(len(data) * cfg.validation_share)
    validation: dict[str, float] = {}
    if n_valid and data.iloc[:-n_valid]["y"].nunique() >= 2:
        train, valid = data.iloc[:-n_valid], data.iloc[-n_valid:]
        valid = valid[valid["origin"] == "code"]
        if len(valid):
            early = fit_complaint_model(train, lexicon, cfg)
            predicted = predict_complaints(early, valid[TEXT], valid["language"], lexicon, cfg)["complaint"]
            validation = {"weak_valid_macro_f1": _macro_f1(valid["y"], predicted),
                          "weak_valid_macro_f1_lexicon": _macro_f1(valid["y"], lexicon.predict(valid[TEXT],
                                                                                                valid["language"])),
                          "weak_valid_rows": float(len(valid))}
    started = time.perf_counter()
    model = fit_complaint_model(data, lexicon, cfg)
    return ComplaintResult(model, counts, origins, validation, time.perf_counter() - started)


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
    folds: list[Fold] = field(default_factory=list)
    run_id: str | None = None

    def metrics(self) -> dict[str, float]:
        out = {"sentiment_test_roc_auc": self.sentiment.test_roc_auc,
               "sentiment_train_reviews": float(self.sentiment.n_train),
               "sentiment_test_reviews": float(self.sentiment.n_test),
               "sentiment_test_negative_share": self.sentiment.test_negative_share,
               "sentiment_fit_seconds": self.sentiment.fit_seconds,
               "complaint_fit_seconds": self.complaints.fit_seconds,
               "texts": float(self.n_texts), "crossfit_folds": float(len(self.folds))}
        out |= {f"sentiment_test_roc_auc_{k.replace('+', '_')}": v for k, v in self.sentiment.analyzer_roc_auc.items()}
        out |= {f"complaint_{k}": v for k, v in self.complaints.validation.items()}
        out |= {f"complaint_{k}": v for k, v in self.eval_metrics.items()}
        out |= {f"complaint_model_used_{lang}": float(lang in self.complaints.languages) for lang in LANGS}
        out |= {f"weak_labels_{k}": float(v) for k, v in self.complaints.class_counts.items()}
        return {k: v for k, v in out.items() if v is not None and np.isfinite(v)}


def train_text_models(texts: pd.DataFrame, settings: Settings) -> TextModels:
    """The deployed models from the warehouse's texts (up to ``text.train_until``), evaluated, and
    the cross-fitted folds that score every stored text from earlier texts only."""
    cfg = settings.text
    lexicon = load_lexicon(cfg.lexicon_file)
    until = pd.Timestamp(cfg.train_until) if cfg.train_until else None
    train = texts[texts["created_at"] <= until] if until is not None else texts
    neg_max = settings.labels.negative_review_max_score
    sentiment = train_sentiment(train, cfg, neg_max)
    complaints = train_complaints(train, lexicon, cfg, neg_max)
    eval_set = load_eval_set(cfg.eval_file) if cfg.eval_file is not None and Path(cfg.eval_file).exists() else None
    eval_metrics: dict[str, float] = {}
    eval_rows = None
    complaints.languages, _ = model_languages(complaints.model, lexicon, eval_set, cfg)
    if eval_set is not None:
        eval_metrics, eval_rows = evaluate_complaints(complaints.model, lexicon, eval_set, cfg, complaints.languages)
    if complaints.model is not None and complaints.note is None and set(complaints.languages) != set(LANGS):
        left = [lang for lang in LANGS if lang not in complaints.languages]
        complaints.note = (f"the classifier did not beat the keyword lexicon on the checked texts for "
                           f"{', '.join(left)}: complaint reasons there come from the lexicon")
    folds = crossfit(texts, lexicon, eval_set, cfg, neg_max, until) if cfg.crossfit else []
    return TextModels(sentiment, complaints, lexicon, eval_metrics, eval_rows, len(train), until, folds)


def _no_model_sentiment(texts: pd.DataFrame, negative_max_score: int) -> np.ndarray:
    """Before any model could exist: a review's own score (known when it was written: 1 bad, 0 good),
    else unknown (NaN, so not counted as negative), also for a middling review."""
    return sentiment_labels(texts, negative_max_score).to_numpy()


def score_texts(texts: pd.DataFrame, models: TextModels, settings: Settings) -> pd.DataFrame:
    """``text_insights`` rows: every text's P(negative) and complaint reason as they could have been
    known when it was written: from its cross-fitting fold (models of earlier texts only; with
    ``text.crossfit`` off, the deployed models), a 4-5 star review's reason is ``other`` (it mentions
    delivery or quality to praise them), and the weak label borrows only what was filed by then."""
    cfg = settings.text
    neg_max = settings.labels.negative_review_max_score
    n = len(texts)
    p_neg = np.full(n, np.nan)
    complaint = pd.DataFrame({"complaint": "other", "complaint_confidence": 0.0, "method": "lexicon"},
                             index=texts.index)
    trained_until = pd.Series(pd.NaT, index=texts.index, dtype="datetime64[us]")
    if cfg.crossfit:
        which = fold_of(texts["created_at"], models.folds) if models.folds else np.full(n, -1)
        plan = [(i, models.folds[i]) for i in range(len(models.folds))] + [(-1, None)]
    else:
        which = np.zeros(n, dtype=int)
        plan = [(0, Fold(pd.Timestamp.min, None, models.sentiment.model, models.complaints.model,
                         models.complaints.languages))]
    for i, fold in plan:
        mask = which == i
        if not mask.any():
            continue
        part = texts[mask]
        if fold is not None and fold.sentiment is not None:
            p_neg[mask] = predict_negative(fold.sentiment, part[TEXT])
        else:
            p_neg[mask] = _no_model_sentiment(part, neg_max)
        complaint.loc[part.index] = predict_complaints(
            fold.complaint if fold is not None else None, part[TEXT], part["language"], models.lexicon, cfg,
            fold.languages if fold is not None else None).to_numpy()
        if fold is not None and cfg.crossfit:
            trained_until[mask] = fold.start
    praise = ((texts["source"] == "review") & (texts["score"] >= POSITIVE_MIN_SCORE)).to_numpy()
    complaint.loc[praise, ["complaint", "complaint_confidence", "method"]] = ["other", 1.0, "score"]
    hits = models.lexicon.hits(texts[TEXT], texts["language"])
    weak, _ = weak_labels(texts, models.lexicon, hits, neg_max)
    p_neg = np.clip(p_neg, 0.0, 1.0)
    frame = pd.DataFrame({
        "source": texts["source"], "source_id": texts["source_id"], "customer_id": texts["customer_id"],
        "order_id": texts["order_id"], "product_id": texts["product_id"], "created_at": texts["created_at"],
        "language": texts["language"], "negative_probability": p_neg,
        "negative": np.nan_to_num(p_neg, nan=0.0) >= cfg.negative_threshold, "complaint": complaint["complaint"],
        "complaint_confidence": np.clip(complaint["complaint_confidence"].astype(float), 0.0, 1.0),
        "method": complaint["method"], "weak_label": weak, "trained_until": trained_until,
        "model_run_id": models.run_id,
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
    experiment_id = ensure_experiment(client, settings, settings.text.experiment, (
        "aftersales review and ticket text: one run per training of the sentiment and complaint models, "
        "with its settings, weak-label counts, metrics, both models, the lexicon and the evaluation rows."))
    cfg = settings.text
    name = f"text-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    requirements = [f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}", f"numpy=={np.__version__}"]
    example = as_input(["The parcel arrived late and the box was crushed.", "尺码偏小，穿不上"])
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"aftersales_model": "text", "code_version": code_version()})
        mlflow.log_params({
            "analyzer": cfg.analyzer, "char_ngram_range": f"{cfg.ngram_min}-{cfg.ngram_max}",
            "word_ngram_range": f"1-{cfg.word_ngram_max}", "min_df": cfg.min_df,
            "max_features": cfg.max_features, "word_max_features": cfg.word_max_features,
            "sentiment_c": cfg.sentiment_c, "complaint_c": cfg.complaint_c,
            "sentiment_test_days": cfg.sentiment_test_days, "sentiment_split_at": str(models.sentiment.split_at),
            "min_confidence": cfg.min_confidence, "negative_threshold": cfg.negative_threshold,
            "train_until": str(models.trained_until) if models.trained_until is not None else "all",
            "crossfit": cfg.crossfit, "crossfit_freq": cfg.crossfit_freq,
            "complaint_languages_model": ",".join(models.complaints.languages) or "none",
            "complaint_languages_lexicon": ",".join(lang for lang in LANGS if lang not in models.complaints.languages)
            or "none",
            "negative_review_max_score": settings.labels.negative_review_max_score,
            "lexicon_file": Path(cfg.lexicon_file).name,
            **{f"weak_label_origin_{k}": v for k, v in models.complaints.label_origins.items()},
        })
        mlflow.log_metrics(models.metrics())
        mlflow.log_artifact(str(cfg.lexicon_file), "lexicon")
        if models.eval_rows is not None:
            mlflow.log_text(models.eval_rows.to_csv(index=False), "evaluation/complaint_eval_predictions.csv")
        if models.folds:
            mlflow.log_text(folds_table(models.folds).to_csv(index=False), "crossfit/folds.csv")
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


def folds_table(folds: Sequence[Fold]) -> pd.DataFrame:
    """What each cross-fitting fold learnt from and which texts it scored (for the MLflow run)."""
    return pd.DataFrame([{"scores_from": f.start, "scores_until": f.end, "train_reviews": f.train_reviews,
                          "train_weak_labels": f.train_weak_labels, "sentiment_model": f.sentiment is not None,
                          "complaint_model": f.complaint is not None,
                          "complaint_model_languages": ",".join(f.languages)} for f in folds])


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
    """The figures a person wants after ``aftersales text``, and one line per thing the data did
    not support."""
    m = models.metrics()
    notes = [models.complaints.note] if models.complaints.note else []
    if not np.isfinite(models.sentiment.test_roc_auc):
        notes.append(f"sentiment has no later window with both good and bad reviews "
                     f"(last {models.sentiment.n_test} reviews): no test ROC-AUC")
    best = max(models.sentiment.analyzer_roc_auc.items(), key=lambda kv: kv[1], default=None)
    configured = models.sentiment.analyzer_roc_auc.get(models.sentiment.analyzer)
    if best and configured is not None and best[1] > configured + 0.005:
        notes.append(f"on this shop's later reviews the '{best[0]}' analyzer scored ROC-AUC {best[1]:.3f} against "
                     f"{configured:.3f} for the configured one (text.analyzer)")
    warmup = next((f.start for f in models.folds if f.sentiment is not None), None)
    if models.folds and warmup is None:
        notes.append("too few reviews for any cross-fitted sentiment model: stored texts use review scores only")
    return {"texts": models.n_texts, "stored": stored, "run_id": models.run_id,
            "sentiment_test_roc_auc": m.get("sentiment_test_roc_auc"),
            "sentiment_analyzers": models.sentiment.analyzer_roc_auc,
            "complaint_eval": {k.removeprefix("complaint_eval_"): v for k, v in m.items()
                               if k.startswith("complaint_eval_")},
            "complaint_languages": models.complaints.languages,
            "complaint_model": models.complaints.model is not None,
            "complaint_weak_validation": models.complaints.validation,
            "weak_labels": models.complaints.class_counts,
            "folds": len(models.folds), "first_model_period": str(warmup.date()) if warmup is not None else None,
            "notes": notes}


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
