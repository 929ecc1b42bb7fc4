"""Service-quality scores: curves, the scoring file, shrinkage, the planted slow team, small teams, the flow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from shared_shop import RUN, shop_copy

from schemas.analytics import SERVICE_DIMENSIONS_TABLE, SERVICE_SCORES_TABLE, ServiceScores
from schemas.settings import Settings
from tasks.data.synthetic import PLANTED_FILE
from tasks.data.warehouse import Warehouse
from tasks.insight.service_quality import (
    DEFAULT_SCORES_FILE,
    Dimension,
    Prior,
    ServiceScoreError,
    estimate_prior,
    load_score_book,
    service_scores,
    shrink,
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return shop_copy(tmp_path_factory, "service")


def dim(**kw) -> Dimension:
    base = {"label": {"en": "x", "zh": "x"}, "measure": "satisfaction", "weight": 1.0, "target": 4.5, "worst": 2.5}
    return Dimension.model_validate(base | kw)


# ---- the scoring system -------------------------------------------------------------------------------
def test_curves_give_100_at_the_standard_and_0_at_worst() -> None:
    linear = dim()
    assert linear.score([4.5, 2.5, 3.5, 5.0, 1.0]).tolist() == [100.0, 0.0, 50.0, 100.0, 0.0]
    hours = dim(measure="first_response_hours", target=2, worst=32, scale="log")  # lower is better
    assert hours.score([2, 32, 8, 1]).tolist() == pytest.approx([100.0, 0.0, 50.0, 100.0])
    s = dim(curve="logistic").score([4.5, 3.5, 2.5])
    assert s[0] == pytest.approx(95.0) and s[1] == pytest.approx(50.0) and s[2] == pytest.approx(5.0)


def test_the_default_file_loads_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    book = load_score_book()
    assert set(book.dimensions) == {"first_response", "resolution", "first_contact_resolution", "repeat_complaints",
                                    "escalations", "satisfaction"}
    assert sum(d.weight for d in book.dimensions.values()) == pytest.approx(1.0)
    data = yaml.safe_load(DEFAULT_SCORES_FILE.read_text(encoding="utf-8"))
    data["dimensions"]["satisfaction"]["weight"] = 0.9
    bad = tmp_path / "scores.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ServiceScoreError, match="add up to 1"):
        load_score_book(bad)


def test_shrinkage_pulls_small_groups_harder_and_widens_their_interval() -> None:
    rng = np.random.default_rng(0)
    groups = pd.Series(["big"] * 400 + ["mid"] * 400 + ["tiny"] * 3)
    values = pd.Series(np.r_[rng.normal(3.0, 1.0, 400), rng.normal(4.0, 1.0, 400), [5.0, 5.0, 5.0]])
    prior = estimate_prior(values, groups, cap=500.0)
    assert 0 < prior.strength < 500
    stats = shrink(values, groups, prior, z=1.645)
    pull = (stats["raw"] - stats["shrunk"]).abs()
    assert pull["tiny"] > 10 * pull["big"]
    assert (stats["high"] - stats["low"])["tiny"] > 3 * (stats["high"] - stats["low"])["big"]
    none = shrink(values, groups, Prior(prior.mean, prior.within_var, 0.0), z=1.645)
    assert np.allclose(none["shrunk"], none["raw"])


# ---- on generated data -------------------------------------------------------------------------------------
def add_tiny_team(wh: Warehouse, when: pd.Timestamp) -> None:
    """Three flawless tickets of a brand-new team: too few to be ranked, whatever they look like."""
    customers = wh.query("SELECT customer_id FROM customers ORDER BY 1 LIMIT 3")["customer_id"]
    opened = [when - pd.Timedelta(days=20 + i) for i in range(3)]
    wh.append("tickets", pd.DataFrame({
        "ticket_id": [f"TINY{i}" for i in range(3)], "customer_id": customers.to_numpy(), "channel": "chat",
        "category": "usage_question", "opened_at": opened, "first_response_at": [t + pd.Timedelta(minutes=5)
                                                                                  for t in opened],
        "resolved_at": [t + pd.Timedelta(hours=1) for t in opened], "agent_id": "AG9999", "team": "Team Tiny",
        "escalated": False, "reopened": False, "satisfaction": 5.0, "updated_at": [t + pd.Timedelta(hours=1)
                                                                                    for t in opened]}))


def test_the_planted_slow_team_ranks_last_and_a_tiny_team_is_not_ranked(shop, tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    shutil.copy(shop[0], path)
    settings = Settings()
    wh = Warehouse(path)
    try:
        add_tiny_team(wh, RUN)
        run = service_scores(wh, RUN, settings)
    finally:
        wh.close()
    slow = json.loads((shop[1] / PLANTED_FILE).read_text())["signals"]["slow_team"]["team"]
    window = run.scores[run.scores["period"] == "window"]
    teams = window[window["grouping"] == "team"].set_index("group_value")
    print("\n" + teams[["tickets", "score", "score_low", "score_high", "raw_score", "rank"]].to_string())
    ranked = teams[teams["ranked"]]
    assert ranked.loc[slow, "rank"] == ranked["rank"].max() == len(ranked)
    assert ranked.loc[slow, "score_high"] < ranked.drop(index=slow)["score_low"].min()  # clearly, not by noise
    tiny = teams.loc["Team Tiny"]
    assert not tiny["ranked"] and pd.isna(tiny["rank"]) and tiny["tickets"] == 3
    assert tiny["raw_score"] > tiny["score"]  # flawless on paper, pulled toward the mean
    assert tiny["score"] < ranked["score"].max()  # never above the best ranked team on three tickets
    assert (tiny["score_high"] - tiny["score_low"]) > (ranked["score_high"] - ranked["score_low"]).max()
    agents = window[window["grouping"] == "agent"]
    assert not agents.loc[agents["tickets"] < settings.analytics.service.min_tickets, "ranked"].any()
    weekly = run.scores[(run.scores["period"] == "week") & (run.scores["grouping"] == "team")]
    assert weekly["period_start"].nunique() == settings.analytics.service.trend_weeks
    assert (weekly["period_start"].dt.weekday == 0).all()
    worst_weeks = weekly[weekly["group_value"] != "Team Tiny"].loc[lambda w: w.groupby("period_start")["score"]
                                                                   .idxmin()]
    assert (worst_weeks["group_value"] == slow).mean() >= 0.75  # the slow team trails most weeks
    ServiceScores.validate(run.scores)


def test_service_scores_flow_end_to_end(shop, settings: Settings, prefect_api: None) -> None:
    from flows.service_scores import service_scores_flow

    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shop[0], settings.warehouse_path)
    result = service_scores_flow(run_date=RUN.date())
    again = service_scores_flow(run_date=RUN.date())
    assert result == again
    assert result["team_ranking"][-1]["team"] == "Team Pine" and len(result["team_ranking"]) == 4
    wh = Warehouse(settings.warehouse_path, read_only=True)
    try:
        scores = ServiceScores.validate(wh.table(SERVICE_SCORES_TABLE))
        dims = wh.table(SERVICE_DIMENSIONS_TABLE)
    finally:
        wh.close()
    assert set(scores["grouping"]) == {"overall", "team", "agent", "channel", "product_category"}
    assert scores["run_date"].nunique() == 1
    assert set(dims["dimension"]) == set(load_score_book().dimensions)
    report = Path(result["report"]).read_text(encoding="utf-8")
    assert "Team Pine" in report and "not ranked" in report
    assert "data:image/png;base64," in report and "first_response" not in report.split("<img")[0]
