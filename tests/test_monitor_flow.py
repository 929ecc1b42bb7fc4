"""The drift gate in the scoring flow and the ``monitor`` flow's retrain triggers, end to end.

Real Prefect flow runs on the session's test server, a real SQLite MLflow registry and DuckDB files.
The shop is generated, ingested and trained once; the planted shift (a new, always-late carrier and
tripled electronics prices over the last 60 days) lives in a copy of its warehouse.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
from mlflow import MlflowClient
from test_monitoring import (
    RUN_DATE,
    plant_late_carrier,
    plant_price_change,
    shifted_copy,
    trained_shop,
)

from flows.runtime import run_flow_state
from schemas.monitoring import DECISIONS_TABLE, GATE_TABLE
from schemas.settings import get_settings, reset_settings_cache
from tasks.data.warehouse import Warehouse

pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")

DAY = pd.Timestamp(RUN_DATE).date()


@dataclass
class Shop:
    home: Path
    stable: Path
    shifted: Path


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, prefect_api: None) -> Iterator[Shop]:
    root = tmp_path_factory.mktemp("monitor-flow")
    with trained_shop(root) as stable:
        yield Shop(root / "home", stable,
                   shifted_copy(stable, root / "shifted.duckdb", plant_late_carrier, plant_price_change))


@pytest.fixture
def use(shop: Shop, monkeypatch: pytest.MonkeyPatch):
    """Point the flows at one of the shop's warehouses, with extra ``AFTERSALES_*`` settings."""

    def choose(warehouse: Path, **env: str):
        monkeypatch.setenv("AFTERSALES_PATHS__WAREHOUSE", str(warehouse))
        for key, value in env.items():
            monkeypatch.setenv(f"AFTERSALES_MONITORING__{key.upper()}", value)
        reset_settings_cache()
        return get_settings()

    yield choose
    reset_settings_cache()


def query(path: Path, sql: str, params: list | None = None) -> pd.DataFrame:
    wh = Warehouse(path)
    try:
        return wh.query(sql, params or [])
    finally:
        wh.close()


def flow_runs(flow_name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))


def score(**kwargs) -> dict:
    from flows.score import score_flow

    state = run_flow_state(score_flow, run_date=DAY, **kwargs)
    assert not state.is_failed(), state.message
    return state.result()


def test_without_drift_the_scoring_run_is_unchanged(shop: Shop, use) -> None:
    settings = use(shop.stable, gate="hold")
    result = score()
    assert result["drift_gate"]["action"] == "none" and result["tasks"] > 0
    assert result["summary"].startswith("## Care tasks for"), "no banner when nothing drifted"
    folder = settings.reports_dir / "tasks" / RUN_DATE
    assert not (folder / "HELD.md").exists() and not (folder / "DRIFT_WARNING.md").exists()
    gate = query(shop.stable, f"SELECT * FROM {GATE_TABLE}")
    assert gate[["action", "severe", "held", "flagged"]].values.tolist() == [["none", False, False, False]]


def test_severe_drift_ships_the_list_flagged(shop: Shop, use) -> None:
    from flows.score import score_flow

    settings = use(shop.shifted, gate="flag")
    state = run_flow_state(score_flow, run_date=DAY)
    assert state.is_completed() and state.name == "Flagged", "not a plain green Completed (issue 14.6)"
    assert "shipped flagged" in state.message
    result = state.result()
    gate = result["drift_gate"]
    assert gate["action"] == "flag" and gate["severe"] and set(gate["models"]) == {"return", "negative_review"}
    assert result["tasks"] > 0, "a flagged list still ships"
    assert result["summary"].startswith("> **Drift warning:**") and "carrier" in result["summary"]
    notice = settings.reports_dir / "tasks" / RUN_DATE / "DRIFT_WARNING.md"
    assert notice.exists() and "carrier_late_rate" in notice.read_text()
    row = query(shop.shifted, f"SELECT * FROM {GATE_TABLE}").iloc[0]
    assert row["flagged"] and not row["held"] and "return" in row["models"]
    runs = [r for r in flow_runs("score") if str(r.id) == row["flow_run_id"]]
    assert runs and "drift:flag" in runs[0].tags, "the scoring run is marked in Prefect"
    assert runs[0].state_name == "Flagged" and runs[0].name == f"score-{RUN_DATE}", "named by flow and date"


def test_severe_drift_holds_the_list_but_keeps_the_scores(shop: Shop, use) -> None:
    settings = use(shop.shifted, gate="hold")
    result = score()
    assert result["drift_gate"]["action"] == "hold" and result["tasks"] == 0 and result["control"] == 0
    assert result["summary"].startswith("> **Task list held: severe drift.**")
    day = pd.Timestamp(RUN_DATE).to_pydatetime()
    assert query(shop.shifted, "SELECT count(*) AS n FROM task_list WHERE run_date = ?", [day])["n"][0] == 0
    assert query(shop.shifted, "SELECT count(*) AS n FROM scores WHERE run_date = ?", [day])["n"][0] > 100
    folder = settings.reports_dir / "tasks" / RUN_DATE
    assert pd.read_csv(folder / "tasks.csv").empty
    held = (folder / "HELD.md").read_text()
    assert "task list held" in held and "days_late" in held and not (folder / "DRIFT_WARNING.md").exists()
    row = query(shop.shifted, f"SELECT * FROM {GATE_TABLE}").iloc[0]
    assert row["held"] and "severe drift" in row["reason"]


def test_the_monitor_reuses_the_gates_statistics_only_while_they_describe_the_days_scores(shop: Shop, use) -> None:
    from tasks.monitoring.checks import drift_for_day, stored_gate_drift

    def verdicts(results: dict) -> dict:
        return {m: (r.model_version, r.status, r.current_rows,
                    [(c.feature, c.psi, c.p_value, c.status, c.reason) for c in r.checks]) for m, r in results.items()}

    settings = use(shop.shifted, gate="flag")
    score()
    wh = Warehouse(shop.shifted)
    try:
        stored, fresh = stored_gate_drift(wh, settings, RUN_DATE), drift_for_day(wh, settings, RUN_DATE)
        assert stored is not None and verdicts(stored) == verdicts(fresh)
        assert stored["return"].severe(settings.monitoring) and "carrier_late_rate" in stored["return"].drifted
        lenient = settings.monitoring.model_copy(update={"psi_drift": 50.0, "missing_delta": 1.0, "unseen_share": 1.0})
        lenient_limits = settings.model_copy(update={"monitoring": lenient})
        rejudged = stored_gate_drift(wh, lenient_limits, RUN_DATE)
        assert rejudged["return"].drifted == [], "the verdicts are judged again under today's limits"
        day = pd.Timestamp(RUN_DATE).to_pydatetime()
        wh.con.execute("UPDATE scores SET model_version = 'aftersales-return v9' "
                       "WHERE run_date = ? AND risk = 'return'", [day])
        assert stored_gate_drift(wh, settings, RUN_DATE) is None, "scores of another version: computed again"
    finally:
        wh.close()
    use(shop.shifted, gate="off")
    score()  # rescoring without a gate forgets the earlier run's verdicts
    wh = Warehouse(shop.shifted)
    try:
        assert stored_gate_drift(wh, get_settings(), RUN_DATE) is None
        assert wh.scalar("SELECT count(*) FROM monitoring_runs WHERE run_date = ?", [day]) == 0
    finally:
        wh.close()


def test_crossing_a_threshold_triggers_exactly_one_retrain_then_cools_down(shop: Shop, use) -> None:
    from flows.monitor import monitor_flow

    # embedded mode: a subflow, whatever deployments other tests registered on the shared test server
    settings = use(shop.shifted, retrain="subflow")
    assert flow_runs("retrain") == []
    state = run_flow_state(monitor_flow, run_date=DAY)
    assert not state.is_failed(), state.message
    result = state.result()
    decisions = {d["model"]: d for d in result["decisions"]}
    assert decisions["return"]["decision"] == decisions["negative_review"]["decision"] == "retrain"
    assert decisions["churn"]["decision"] == "none"
    assert "drifted_features" in decisions["return"]["crossed"]
    retrains = flow_runs("retrain")
    assert len(retrains) == 1 and retrains[0].state.is_completed()
    assert decisions["return"]["flow_run_id"] == decisions["negative_review"]["flow_run_id"] == str(retrains[0].id)
    assert retrains[0].parameters["models"] == ["return", "negative_review"], "only the models that crossed"
    client = MlflowClient(settings.tracking_uri)
    assert str(client.get_model_version_by_alias("aftersales-return", "challenger").version) == "2"

    again = run_flow_state(monitor_flow, run_date=DAY).result()
    assert {d["model"]: d["decision"] for d in again["decisions"]} == {
        "return": "cooldown", "negative_review": "cooldown", "churn": "none"}
    assert len(flow_runs("retrain")) == 1, "no second retrain inside the cool-down"

    log = query(shop.shifted, f"SELECT * FROM {DECISIONS_TABLE} ORDER BY decided_at, model")
    assert len(log) == 6 and log["decision"].tolist().count("retrain") == 2
    first = log[(log["model"] == "return") & (log["decision"] == "retrain")].iloc[0]
    assert first["crossed"] == "drifted_features" and first["trigger"] == "subflow"
    assert first["model_version"] == "aftersales-return v1" and first["monitor_flow_run_id"]
    evidence = {c["check"]: c for c in json.loads(first["checks"])}
    assert evidence["drifted_features"]["value"] >= 3 and evidence["drifted_features"]["threshold"] == 3
    cooled = log[(log["model"] == "return") & (log["decision"] == "cooldown")].iloc[0]
    assert str(retrains[0].id) in cooled["reason"]

    report = Path(result["report"])
    html = report.read_text()
    assert report.parent == settings.reports_dir / "monitoring" and html.count("data:image/png;base64,") >= 4
    assert "carrier_late_rate" in html and "retrain" in html


def test_with_a_deployment_on_the_server_the_trigger_runs_the_deployment(shop: Shop, use) -> None:
    from prefect.client.orchestration import get_client

    from flows.monitor import monitor_flow
    from flows.train import retrain_flow

    use(shop.shifted, cooldown_days="0")
    deployment_id = retrain_flow.to_deployment(name="weekly-retrain").apply()
    try:
        result = run_flow_state(monitor_flow, run_date=DAY).result()
        chosen = [d for d in result["decisions"] if d["decision"] == "retrain"]
        assert {d["model"] for d in chosen} == {"return", "negative_review"}
        assert {d["trigger"] for d in chosen} == {"deployment"}
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(chosen[0]["flow_run_id"]))
        assert run.deployment_id == deployment_id and run.parameters["models"] == ["return", "negative_review"]
        assert "triggered-by-monitor" in run.tags
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


def test_a_retrain_that_cannot_start_is_recorded_as_failed(shop: Shop, use) -> None:
    from flows.monitor import monitor_flow

    use(shop.shifted, cooldown_days="0", retrain="deployment", retrain_deployment="retrain/no-such-deployment")
    result = run_flow_state(monitor_flow, run_date=DAY).result()
    failed = {d["model"]: d for d in result["decisions"] if d["decision"] == "failed"}
    assert set(failed) == {"return", "negative_review"} and failed["return"]["flow_run_id"] is None
    assert "the retrain failed" in failed["return"]["reason"]
    log = query(shop.shifted, f"SELECT decision FROM {DECISIONS_TABLE} WHERE decision = 'failed'")
    assert len(log) == 2


def test_cli_monitor_prints_the_verdicts(shop: Shop, use) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    use(shop.shifted)
    out = CliRunner().invoke(app, ["monitor", "--date", RUN_DATE])
    assert out.exit_code == 0, out.output
    assert "severe drift" in out.output and "cooldown" in out.output and "report:" in out.output
