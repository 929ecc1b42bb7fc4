"""Segments: k choice, stable ids, names, planted groups as segments, and the flow end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from shared_shop import RUN, shop_copy

from schemas.analytics import (
    CUSTOMER_TAGS_TABLE,
    SEGMENT_CENTROIDS_TABLE,
    SEGMENT_PROFILES_TABLE,
    TAG_HISTORY_TABLE,
    CustomerTags,
    SegmentProfiles,
    TagHistory,
)
from schemas.settings import Settings
from tasks.data.synthetic import ARCHETYPES_FILE
from tasks.data.warehouse import Warehouse
from tasks.insight.segments import PreviousRun, Scaling, choose_k, match_segments, name_segments, segment_customers
from tasks.insight.tags import TagBook, behaviour_features, current_tags, evaluate_tags, load_tag_book


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return shop_copy(tmp_path_factory, "segments")


@pytest.fixture(scope="module")
def book() -> TagBook:
    return load_tag_book()


@pytest.fixture(scope="module")
def inputs(shop, book: TagBook) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    wh = Warehouse(shop[0], read_only=True)
    try:
        features = behaviour_features(wh, RUN, Settings())
    finally:
        wh.close()
    long, _ = evaluate_tags(features, book)
    truth = pd.read_csv(shop[1] / ARCHETYPES_FILE)
    return features, long, truth


# ---- pure parts --------------------------------------------------------------------------------------
def test_k_is_the_best_silhouette_unless_the_previous_k_is_close() -> None:
    silhouettes = {3: 0.30, 4: 0.34, 5: 0.35}
    assert choose_k(silhouettes, None, 0.02) == 5
    assert choose_k(silhouettes, 4, 0.02) == 4
    assert choose_k(silhouettes, 3, 0.02) == 5


def test_matching_keeps_ids_of_moved_centroids_and_gives_new_ones_fresh_ids() -> None:
    previous = pd.DataFrame({"a": [0.0, 5.0, 10.0], "b": [0.0, 5.0, 0.0]}, index=["S1", "S2", "S3"])
    scaling = Scaling(pd.Series({"a": 0.0, "b": 0.0}), pd.Series({"a": 1.0, "b": 1.0}))
    new = pd.DataFrame({"a": [10.2, 0.1, 5.1, 30.0], "b": [0.1, -0.2, 4.9, 30.0]})  # shuffled, plus one far away
    sizes = pd.Series([50, 60, 40, 10])
    ids = match_segments(new, previous, scaling, max_distance=1.5, sizes=sizes)
    assert ids == {0: "S3", 1: "S1", 2: "S2", 3: "S4"}
    first = match_segments(new, None, scaling, 1.5, sizes)
    assert first == {1: "S1", 0: "S2", 2: "S3", 3: "S4"}  # first run: by size


def test_names_follow_the_patterns_in_file_order(book: TagBook) -> None:
    features = [f.feature for f in book.segment_features]
    z = pd.DataFrame(0.0, index=["S1", "S2", "S3", "S4"], columns=features)
    z.loc["S1", "avg_discount_share"] = 3.0
    z.loc["S2", ["orders_365d", "value_365d"]] = [1.2, 1.4]
    z.loc["S2", "complaints_per_order"] = 1.6  # loud, but "Loyal high spenders" comes first in the file
    z.loc["S3", "recency_days"] = -0.1
    z.loc["S4", ["recency_days", "return_rate"]] = [0.9, 0.8]
    names = name_segments(z, book, threshold=0.5, language="en")
    assert names["S1"] == "Discount hunters"
    assert names["S2"] == "Loyal high spenders"
    assert names["S3"] == "Average customers"
    assert names["S4"] == "Frequent returners"
    assert len(set(names.values())) == 4 and all("_" not in n for n in names.values())


# ---- planted groups ------------------------------------------------------------------------------------
def home_segment(assignments: pd.DataFrame, truth: pd.DataFrame, archetype: str) -> tuple[str, float, float]:
    """The segment most members of an archetype fall into, the share of them in it, and its purity."""
    a = assignments.merge(truth, on="customer_id")
    members = a[a["archetype"] == archetype]
    top = members["segment"].value_counts()
    segment = str(top.index[0])
    purity = float((a.loc[a["segment"] == segment, "archetype"] == archetype).mean())
    return segment, float(top.iloc[0] / len(members)), purity


def test_planted_groups_form_their_own_named_segments(inputs, book: TagBook) -> None:
    features, long, truth = inputs
    settings = Settings()
    seg = segment_customers(features, long, book, settings, RUN)
    cfg = settings.analytics.segments
    assert cfg.k_min <= seg.k <= cfg.k_max
    assert seg.silhouettes[seg.k] == max(seg.silhouettes.values())  # no previous run: the best k
    names = seg.profiles.set_index("segment")["segment_name"]
    for archetype, name, tag in (("discount_hunter", "Discount hunters", "Price sensitive"),
                                 ("new_adopter", "New-product adopters", "New-product adopter")):
        segment, share, purity = home_segment(seg.assignments, truth, archetype)
        assert share >= 0.6, (archetype, share)
        assert purity >= 0.6, (archetype, purity)
        assert names[segment] == name
        assert tag in seg.profiles.set_index("segment").loc[segment, "dominant_tags"]
    SegmentProfiles.validate(seg.profiles)
    assert seg.profiles["customer_share"].sum() == pytest.approx(1.0)
    assert seg.profiles["value_share"].sum() == pytest.approx(1.0)


def test_segment_ids_stay_put_on_slightly_changed_data(inputs, book: TagBook) -> None:
    features, long, truth = inputs
    settings = Settings()
    first = segment_customers(features, long, book, settings, RUN)
    previous = PreviousRun(first.centroids.pivot(index="segment", columns="feature", values="value"),
                           first.profiles.set_index("segment")["segment_name"].to_dict())
    changed = features.sample(frac=0.95, random_state=3)  # 5% of customers gone ...
    changed = changed.assign(value_365d=changed["value_365d"] * 1.03)  # ... and everyone spent a little more
    second = segment_customers(changed, long, book, settings, RUN + pd.Timedelta(days=7), previous)
    assert second.k == first.k and second.matched_previous == first.k
    assert second.profiles["segment_name"].tolist() == first.profiles["segment_name"].tolist()
    both = first.assignments.merge(second.assignments, on="customer_id")
    assert (both["segment_x"] == both["segment_y"]).mean() >= 0.95
    hunters_first = home_segment(first.assignments, truth, "discount_hunter")[0]
    assert home_segment(second.assignments, truth, "discount_hunter")[0] == hunters_first


# ---- the flow ------------------------------------------------------------------------------------------
def test_segments_flow_end_to_end(shop, settings: Settings, prefect_api: None) -> None:
    from flows.segments import segments_flow

    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shop[0], settings.warehouse_path)
    first = segments_flow(run_date=RUN.date())
    second = segments_flow(run_date=(RUN + pd.Timedelta(days=7)).date())
    again = segments_flow(run_date=(RUN + pd.Timedelta(days=7)).date())  # a rerun replaces its date
    assert first["k"] == second["k"] and [s["segment_name"] for s in first["segments"]] == [
        s["segment_name"] for s in second["segments"]]
    assert again["gained"] == second["gained"] and again["lost"] == second["lost"]
    assert second["gained"] + second["lost"] > 0  # a week later some customers went dormant
    assert "churn_risk" in first["skipped_tags"]

    wh = Warehouse(settings.warehouse_path, read_only=True)
    try:
        snapshot = wh.query(f'SELECT * FROM "{CUSTOMER_TAGS_TABLE}"')
        assert snapshot.groupby("run_date").size().tolist() == [first["customers"], second["customers"]]
        CustomerTags.validate(snapshot)
        SegmentProfiles.validate(wh.query(f'SELECT * FROM "{SEGMENT_PROFILES_TABLE}"'))
        history = TagHistory.validate(wh.table(TAG_HISTORY_TABLE))
        assert history["gained_at"].min() == RUN and (history["lost_at"] == RUN + pd.Timedelta(days=7)).any()
        assert wh.query(f'SELECT DISTINCT run_date FROM "{SEGMENT_CENTROIDS_TABLE}"')["run_date"].nunique() == 2
        latest = current_tags(wh)
        assert len(latest) == second["customers"] and latest["segment"].notna().mean() > 0.9
    finally:
        wh.close()

    report = Path(second["report"]).read_text(encoding="utf-8")
    assert "Discount hunters" in report and "data:image/png;base64," in report
    assert "price_sensitive" not in report.split("<img")[0]  # people read labels, not identifiers
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name("aftersales-segments")
    assert experiment.tags["mlflow.note.content"].startswith("aftersales customer segments")  # not a risk model's
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3 and all(r.data.params["criterion"] == "silhouette" for r in runs)
    assert {r.info.run_id for r in runs} >= {first["mlflow_run_id"], second["mlflow_run_id"]}
    assert all(np.isfinite(r.data.metrics["silhouette"]) for r in runs)
