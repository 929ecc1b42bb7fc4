"""Text models: the lexicon, weak labels, the hand-checked evaluation set, sentiment on a later
window, the classifier against the keyword baseline, and point-in-time text features."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.settings import Settings
from schemas.text import COMPLAINT_REASONS, COMPLAINTS, TEXT_INSIGHTS_TABLE, TextFeatures, complaint_column
from tasks.data.warehouse import Warehouse
from tasks.insight.text import (
    Lexicon,
    detect_language,
    keyword_documents,
    load_eval_set,
    load_lexicon,
    load_texts,
    score_texts,
    store_insights,
    text_features,
    train_text_models,
    weak_labels,
)

SHOP = {"customers": 8_000, "seed": 7}  # the shop every text/alert/report test reads


def shop_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ingested synthetic shop, built once per session and shared by the test modules."""
    from tasks.data.ingest import ingest_batch
    from tasks.data.synthetic import generate_shop

    base = tmp_path_factory.getbasetemp() / f"shop-{SHOP['customers']}-{SHOP['seed']}"
    done = base / "warehouse.duckdb"
    if not done.exists():
        generate_shop(base / "data", **SHOP)
        wh = Warehouse(base / "building.duckdb")
        ingest_batch(base / "data", wh, Settings())
        wh.close()
        (base / "building.duckdb").rename(done)
    return done


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shop_warehouse(tmp_path_factory)


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return load_lexicon(Settings().text.lexicon_file)


@pytest.fixture(scope="module")
def trained(shop: Path):
    wh = Warehouse(shop, read_only=True)
    try:
        texts = load_texts(wh)
    finally:
        wh.close()
    settings = Settings()
    return texts, train_text_models(texts, settings), settings


# ---- lexicon ------------------------------------------------------------------------------------
def test_lexicon_matches_words_in_both_languages(lexicon: Lexicon) -> None:
    texts = pd.Series(["The parcel is still not here, tracking stuck", "尺码偏小，穿不上", "Love it",
                       "The box arrived crushed", "客服态度很差"])
    langs = pd.Series(["en", "zh", "en", "en", "zh"])
    assert lexicon.predict(texts, langs).tolist() == [
        "logistics_late", "size_fit", "other", "damaged_packaging", "service_attitude"]


def test_english_keywords_match_whole_words_only(lexicon: Lexicon) -> None:
    hits = lexicon.hits(pd.Series(["latest model", "arrived late"]), pd.Series(["en", "en"]))
    assert hits.loc[0, "logistics_late"] == 0 and hits.loc[1, "logistics_late"] == 1


def test_ties_go_to_the_category_listed_first(lexicon: Lexicon) -> None:
    hits = pd.DataFrame([[0] * len(lexicon.categories)], columns=list(lexicon.categories))
    hits.loc[0, ["size_fit", "logistics_late"]] = 1
    assert lexicon.classify(hits)[0].iloc[0] == "size_fit"  # size_fit is listed before logistics_late


def test_lexicon_rejects_unknown_categories() -> None:
    with pytest.raises(ValueError, match="categories"):
        Lexicon({"categories": ["size_fit", "other"]})
    spec = {"categories": COMPLAINT_REASONS, "weak_labels": {"returns": {"size_fit": "sizing"}}}
    with pytest.raises(ValueError, match="unknown categories"):
        Lexicon(spec)


def test_keywords_become_training_documents(lexicon: Lexicon) -> None:
    docs = keyword_documents(lexicon)
    assert set(docs["y"]) == set(COMPLAINT_REASONS) and set(docs["language"]) == {"en", "zh"}


def test_language_is_detected_when_missing() -> None:
    texts = pd.Series(["发货太慢", "too slow", "ok"])
    assert detect_language(texts, pd.Series([None, None, "zh"])).tolist() == ["zh", "en", "zh"]


# ---- weak labels -------------------------------------------------------------------------------
def test_weak_labels_come_from_codes_linked_orders_and_the_lexicon(lexicon: Lexicon) -> None:
    at = pd.Timestamp("2026-03-10")
    texts = pd.DataFrame({
        "source": ["return", "ticket", "ticket", "review", "review", "review", "review", "review"],
        "text": ["box crushed", "where is it", "invoice please", "awful", "way too expensive", "great!", "meh",
                 "awful too"],
        "language": ["en"] * 8,
        "created_at": [at] * 8,
        "code": ["damaged_in_transit", "delivery", "payment", None, None, None, None, None],
        "score": [np.nan, np.nan, np.nan, 1, 2, 5, 3, 1],
        "order_return_reason": [None, None, None, "size_fit", None, None, None, "size_fit"],
        "order_return_at": [pd.NaT, pd.NaT, pd.NaT, at - pd.Timedelta(days=1), pd.NaT, pd.NaT, pd.NaT,
                            at + pd.Timedelta(days=1)],  # the last return was filed after its review
        "order_ticket_category": [None, None, None, "delivery", None, None, None, None],
        "order_ticket_at": [pd.NaT, pd.NaT, pd.NaT, at, pd.NaT, pd.NaT, pd.NaT, pd.NaT],
    })
    hits = lexicon.hits(texts["text"], texts["language"])
    label, origin = weak_labels(texts, lexicon, hits, negative_max_score=2)
    assert label.tolist()[:5] == ["damaged_packaging", "logistics_late", "other", "size_fit", "price_value"]
    assert origin.tolist()[:5] == ["code", "code", "code", "code", "lexicon"]
    assert pd.isna(label.iloc[5]) and pd.isna(label.iloc[6])  # praise and 3 stars teach nothing
    assert pd.isna(label.iloc[7])  # a reason filed after the review is never borrowed


def test_food_and_taste_complaints_are_their_own_reason(lexicon: Lexicon) -> None:
    texts = pd.Series(["外卖送到都凉了，米饭还夹生", "菜太咸了，不好吃", "The crackers tasted stale and bland",
                       "送餐太慢了，等了一个多小时"])
    langs = pd.Series(["zh", "zh", "en", "zh"])
    assert lexicon.predict(texts, langs).tolist() == ["food_taste", "food_taste", "food_taste", "logistics_late"]
    assert "food_taste" in COMPLAINTS and lexicon.reason_phrases["food_taste"]["zh"]


# ---- the hand-checked evaluation set -------------------------------------------------------------
def test_evaluation_set_is_balanced_bilingual_and_not_from_the_generator() -> None:
    from tasks.data.synthetic import FRAMES, PHRASES

    ev = load_eval_set(Settings().text.eval_file)
    assert 100 <= len(ev) <= 150
    assert set(ev["language"]) == {"en", "zh"}
    per = ev.groupby(["language", "category"]).size()
    assert set(per.index.get_level_values("category")) == set(COMPLAINT_REASONS) and per.min() >= 5
    assert ev["text"].is_unique
    bank = [s for t in PHRASES.values() for pair in t.values() for group in pair for s in group]
    bank += [s for lang in FRAMES.values() for slot in lang.values() for group in slot for s in group]
    core = [re.sub(r"\{p\}", "", s).strip(" .。!！") for s in bank]
    for text in ev["text"]:
        assert not any(len(c) >= 6 and c in text for c in core), f"eval text reuses a generator phrase: {text}"


# ---- models on the generated shop ------------------------------------------------------------------
def test_sentiment_separates_a_later_window(trained) -> None:
    _, models, _ = trained
    assert models.sentiment.n_test > 100 and models.sentiment.n_train > models.sentiment.n_test
    assert models.sentiment.test_roc_auc > 0.85


def test_classifier_beats_the_keyword_baseline_in_both_languages(trained) -> None:
    _, models, _ = trained
    m = models.eval_metrics
    for lang in ("en", "zh"):
        assert m[f"eval_rows_{lang}"] >= 40
        assert m[f"eval_macro_f1_{lang}"] > m[f"eval_macro_f1_lexicon_{lang}"], (lang, m)


def test_classifier_learns_the_weak_labels_better_than_the_lexicon(trained) -> None:
    _, models, _ = trained
    v = models.complaints.validation
    assert v["weak_valid_rows"] > 200 and v["weak_valid_macro_f1"] > v["weak_valid_macro_f1_lexicon"]
    assert models.complaints.class_counts.get("price_value", 0) > 0  # only the lexicon can teach it


def test_every_text_is_scored_and_praise_is_no_complaint(trained) -> None:
    texts, models, settings = trained
    insights = score_texts(texts, models, settings)
    assert len(insights) == len(texts) and insights["source_id"].is_unique
    praise = texts["score"] >= 4
    assert (insights.loc[praise.to_numpy(), "complaint"] == "other").all()
    bad = (texts["score"] <= 2).to_numpy()
    assert insights.loc[bad, "negative"].mean() > 0.9 and insights.loc[praise.to_numpy(), "negative"].mean() < 0.1


# ---- point-in-time features ------------------------------------------------------------------------
def _insight(cust: str, at: str, complaint: str, negative: bool, source_id: str) -> dict:
    return {"source": "review", "source_id": source_id, "customer_id": cust, "order_id": None, "product_id": None,
            "created_at": pd.Timestamp(at), "language": "en", "negative_probability": 0.9 if negative else 0.1,
            "negative": negative, "complaint": complaint, "complaint_confidence": 0.8, "method": "model",
            "weak_label": None, "model_run_id": None}


def test_text_features_count_only_texts_known_by_the_cutoff(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh.duckdb")
    assert text_features(wh, "2026-03-01").empty  # before the text flow has run
    store_insights(wh, pd.DataFrame([
        _insight("c1", "2026-01-05", "size_fit", True, "r1"),
        _insight("c1", "2026-02-20", "size_fit", True, "r2"),
        _insight("c1", "2026-02-25", "logistics_late", False, "r3"),
        _insight("c1", "2026-03-05", "logistics_late", True, "r4"),  # after the cutoff
        _insight("c2", "2026-02-01", "other", False, "r5"),
        _insight("c3", "2026-04-01", "quality_defect", True, "r6"),  # after the cutoff: no row at all
    ]))
    feats = text_features(wh, "2026-03-01").set_index("customer_id")
    TextFeatures.validate(feats.reset_index())
    assert sorted(feats.index) == ["c1", "c2"]
    c1 = feats.loc["c1"]
    assert (c1["text_count"], c1["negative_text_count"]) == (3, 2)
    assert c1[complaint_column("size_fit")] == 2 and c1[complaint_column("logistics_late")] == 1
    assert c1["dominant_complaint"] == "size_fit" and c1["days_since_negative_text"] == pytest.approx(9)
    assert feats.loc["c2", "dominant_complaint"] == "none" and np.isnan(feats.loc["c2", "days_since_negative_text"])
    later = text_features(wh, "2026-03-10").set_index("customer_id")
    assert later.loc["c1", "text_count"] == 4 and later.loc["c1", "dominant_complaint"] == "size_fit"
    assert set(COMPLAINTS) == {c.removeprefix("complaint_").removesuffix("_count")
                               for c in feats.columns if c.startswith("complaint_")}
    wh.close()


def test_insights_table_is_replaced_on_each_run(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh.duckdb")
    rows = pd.DataFrame([_insight("c1", "2026-01-05", "size_fit", True, "r1")])
    store_insights(wh, rows)
    store_insights(wh, rows)
    assert wh.row_count(TEXT_INSIGHTS_TABLE) == 1
    wh.close()


# ---- no leakage: cross-fitted predictions ------------------------------------------------------------
def _months_of_texts(months: int = 7, per_month: int = 90, seed: int = 5) -> pd.DataFrame:
    """Reviews and return notes over ``months`` months (the layout ``load_texts`` returns)."""
    from small_shops import BAD, GOOD, RETURN_TEXTS

    rng = np.random.default_rng(seed)
    rows = []
    for m in range(months):
        for i in range(per_month):
            hours = pd.Timedelta(hours=int(rng.integers(0, 27 * 24)))
            at = pd.Timestamp("2026-01-01") + pd.DateOffset(months=m) + hours
            score = int(rng.choice([1, 2, 4, 5], p=[0.2, 0.1, 0.3, 0.4]))
            rows.append({"source": "review", "source_id": f"R{m}-{i}", "customer_id": f"C{i % 50}",
                         "order_id": f"O{m}-{i}", "product_id": "P1", "created_at": at,
                         "text": (BAD if score <= 2 else GOOD)[int(rng.integers(10))] + f" ({i % 7})",
                         "score": float(score), "code": None, "order_return_reason": None,
                         "order_ticket_category": None, "order_return_at": pd.NaT, "order_ticket_at": pd.NaT})
            if i % 4 == 0:
                code = list(RETURN_TEXTS)[i % 4 + (m % 4) if i % 4 + (m % 4) < 4 else 0]
                rows.append({**rows[-1], "source": "return", "source_id": f"X{m}-{i}", "text": RETURN_TEXTS[code],
                             "score": np.nan, "code": code, "created_at": at + pd.Timedelta(days=2)})
    frame = pd.DataFrame(rows)
    frame["language"] = detect_language(frame["text"])
    return frame.sort_values("created_at", ignore_index=True)


@pytest.fixture(scope="module")
def crossfit_settings() -> Settings:
    return Settings(text={"crossfit_freq": "MS", "compare_analyzers": ()})


def _row_view(insights: pd.DataFrame) -> pd.DataFrame:
    cols = ["negative_probability", "negative", "complaint", "complaint_confidence", "method", "weak_label",
            "trained_until"]
    return insights.set_index("source_id")[cols].sort_index()


def test_a_stored_prediction_does_not_change_when_later_texts_and_returns_arrive(crossfit_settings) -> None:
    texts = _months_of_texts()
    bad = texts[(texts["source"] == "review") & (texts["score"] <= 2)
                & (texts["created_at"] >= "2026-05-01") & (texts["created_at"] < "2026-05-20")].iloc[0]
    early = texts[texts["created_at"] <= bad["created_at"]].reset_index(drop=True)
    later = texts.copy()
    # a return on the bad review's order, filed a week after the review, arrives with the later texts
    later.loc[later["source_id"] == bad["source_id"], ["order_return_reason", "order_return_at"]] = [
        "size_fit", bad["created_at"] + pd.Timedelta(days=7)]
    before = score_texts(early, train_text_models(early, crossfit_settings), crossfit_settings)
    after = score_texts(later, train_text_models(later, crossfit_settings), crossfit_settings)
    pd.testing.assert_frame_equal(_row_view(before), _row_view(after).loc[_row_view(before).index])
    row = after.set_index("source_id").loc[bad["source_id"]]
    assert row["weak_label"] != "size_fit"  # the later return's reason is not borrowed
    assert row["trained_until"] <= pd.Timestamp("2026-05-01")  # scored by a model of earlier texts
    assert after["trained_until"].notna().mean() > 0.5  # most texts did get a model's prediction


def test_no_text_is_scored_by_a_model_that_saw_it(crossfit_settings) -> None:
    from tasks.insight.text import crossfit, fold_of, load_lexicon

    texts = _months_of_texts(months=5)
    models = train_text_models(texts, crossfit_settings)
    insights = score_texts(texts, models, crossfit_settings)
    scored = insights[insights["trained_until"].notna()]
    assert len(scored) and (scored["created_at"] >= scored["trained_until"]).all()
    first = insights[insights["trained_until"].isna()]
    assert len(first) and (first["created_at"] < models.folds[0].start).all()  # only the warm-up period
    assert first.loc[first["source"] == "review", "negative_probability"].isin([0.0, 1.0]).all()  # review scores
    folds = crossfit(texts, load_lexicon(crossfit_settings.text.lexicon_file), None, crossfit_settings.text, 2)
    which = fold_of(texts["created_at"], folds)
    for i, fold in enumerate(folds):  # a fold scores only texts at or after its start, never its training texts
        assert (texts.loc[which == i, "created_at"] >= fold.start).all()
        assert fold.train_reviews == int(((texts["created_at"] < fold.start) & (texts["source"] == "review")
                                          & (texts["score"] != 3)).sum())


# ---- a marketplace that exports reviews only ------------------------------------------------------------
def test_reviews_only_shop_learns_sentiment_and_leaves_complaints_to_the_lexicon(tmp_path: Path) -> None:
    from small_shops import ingest_shop, write_shop

    from tasks.insight.text import summary

    path = ingest_shop(write_shop(tmp_path / "data", returns=False, tickets=False), tmp_path / "wh.duckdb")
    wh = Warehouse(path, read_only=True)
    try:
        texts = load_texts(wh)
    finally:
        wh.close()
    assert set(texts["source"]) == {"review"}
    settings = Settings()
    models = train_text_models(texts, settings)
    assert models.sentiment.model is not None and models.sentiment.test_roc_auc > 0.9
    assert models.complaints.model is None and "keyword lexicon" in models.complaints.note
    insights = score_texts(texts, models, settings)
    assert len(insights) == len(texts) and set(insights["method"]) <= {"lexicon", "score"}
    notes = summary(models, len(insights))["notes"]
    assert len(notes) >= 1 and all("\n" not in n for n in notes)
