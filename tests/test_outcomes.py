"""Outcomes come back: a helpdesk export through a mapping file, validated, tied to tasks, idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.settings import ScoringSettings, Settings, get_settings, reset_settings_cache
from tasks.care.interventions import build_task_list, write_task_list
from tasks.care.outcomes import OutcomeImportError, import_outcomes, import_report
from tasks.care.playbook import load_playbook
from tasks.care.uplift import contamination
from tasks.data.warehouse import Warehouse
from tasks.models.explain import default_catalogue
from tests.md_tables import row_starting, table_rows

DAY = pd.Timestamp("2026-10-05")
MAPPING = """
tables:
  outcomes:
    rename: {Ticket: task_id, Kunde: customer_id, Ergebnis: outcome, Zeit: recorded_at, Agent: agent_id,
             Notiz: note}
    values:
      outcome: {erreicht: contacted, geloest: resolved, keine Antwort: no_answer, abgelehnt: declined}
    timestamp_formats: {recorded_at: "%d.%m.%Y %H:%M"}
    timezone: Europe/Berlin
"""


def _settings(home: Path) -> Settings:
    return Settings(paths={"home": home}, scoring=ScoringSettings(control_share=0.3,
                                                                   queue_capacity={"default": 1000}))


def _lists(wh: Warehouse, settings: Settings, home: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(3)
    n = 60
    scored = pd.DataFrame({
        "run_date": DAY, "risk": "return", "customer_id": [f"c{i:03d}" for i in range(n)],
        "order_id": [f"o{i:03d}" for i in range(n)], "probability": rng.uniform(0.5, 0.9, n),
        "value_at_stake": 100.0, "model_version": "1", "reason_1": "size_sensitive_share", "reason_1_value": 0.9,
        "reason_2": None, "reason_2_value": None, "reason_3": None, "reason_3_value": None})
    catalogue = default_catalogue()
    tasks, control = build_task_list(scored, load_playbook(catalogue=catalogue), settings, catalogue=catalogue)
    write_task_list(wh, tasks, control, DAY, home / "out", settings)
    return tasks, control


def _export(path: Path, tasks: pd.DataFrame, control: pd.DataFrame) -> list[dict]:
    rows = [
        {"Ticket": tasks["task_id"].iloc[0], "Kunde": "", "Ergebnis": "erreicht", "Zeit": "06.10.2026 10:15",
         "Agent": "a1", "Notiz": "NA"},                                             # 1 by task id; "NA" is text
        {"Ticket": "", "Kunde": tasks["customer_id"].iloc[1], "Ergebnis": "geloest", "Zeit": "07.10.2026 09:00",
         "Agent": "a2", "Notiz": "exchange sent"},                                  # 2 by customer + date
        {"Ticket": "", "Kunde": control["customer_id"].iloc[0], "Ergebnis": "erreicht",
         "Zeit": "08.10.2026 12:00", "Agent": "a3", "Notiz": ""},                   # 3 a held-out customer!
        {"Ticket": "nope", "Kunde": "", "Ergebnis": "erreicht", "Zeit": "06.10.2026 10:00", "Agent": "a1",
         "Notiz": ""},                                                              # 4 unknown task
        {"Ticket": tasks["task_id"].iloc[2], "Kunde": "", "Ergebnis": "erreicht", "Zeit": "2026-10-06",
         "Agent": "a1", "Notiz": ""},                                               # 5 wrong time format
        {"Ticket": tasks["task_id"].iloc[3], "Kunde": "", "Ergebnis": "vielleicht", "Zeit": "06.10.2026 11:00",
         "Agent": "a1", "Notiz": ""},                                               # 6 unknown outcome code
        {"Ticket": "", "Kunde": "", "Ergebnis": "erreicht", "Zeit": "06.10.2026 11:00", "Agent": "a1",
         "Notiz": ""},                                                              # 7 names no task
        {"Ticket": "", "Kunde": tasks["customer_id"].iloc[4], "Ergebnis": "erreicht", "Zeit": "01.09.2026 11:00",
         "Agent": "a1", "Notiz": ""},                                               # 8 before any task
        {"Ticket": tasks["task_id"].iloc[0], "Kunde": "", "Ergebnis": "erreicht", "Zeit": "05.10.2026 08:00",
         "Agent": "a1", "Notiz": "earlier copy"},                                   # 9 duplicate of row 1, older
        {"Ticket": tasks["task_id"].iloc[5], "Kunde": "c999", "Ergebnis": "abgelehnt",
         "Zeit": "06.10.2026 11:00", "Agent": "a1", "Notiz": ""},                   # 10 customer differs from task's
    ]
    pd.DataFrame(rows).to_csv(path, sep=";", index=False)
    return rows


def test_a_helpdesk_export_is_tied_to_tasks_quarantined_where_wrong_and_idempotent(tmp_path: Path):
    settings = _settings(tmp_path / "home")
    mapping = tmp_path / "helpdesk.yaml"
    mapping.write_text(MAPPING.replace("tables:", 'tables:', 1).replace("    rename:", '    csv_delimiter: ";"\n'
                                                                         "    rename:"), encoding="utf-8")
    wh = Warehouse(tmp_path / "w.duckdb")
    try:
        tasks, control = _lists(wh, settings, tmp_path)
        assert len(control) > 0
        export = tmp_path / "helpdesk_export.csv"
        _export(export, tasks, control)

        result = import_outcomes(wh, export, settings, mapping, as_of="2026-10-10")
        assert (result.rows_in, result.valid, result.quarantined) == (10, 3, 7)
        assert (result.inserted, result.matched_by_customer, result.control_contacts) == (3, 2, 1)
        stored = wh.query("SELECT * FROM outcomes ORDER BY recorded_at")
        assert stored["task_id"].tolist()[0] == tasks["task_id"].iloc[0]
        assert stored.loc[0, "note"] == "NA" and stored.loc[0, "agent_id"] == "a1"
        assert stored.loc[0, "recorded_at"] == pd.Timestamp("2026-10-06 08:15"), "Berlin time stored as UTC"
        assert set(stored["outcome"]) == {"contacted", "resolved"}
        q = wh.query("SELECT * FROM quarantine WHERE table_name = 'outcomes' ORDER BY source_row, check_name")
        assert sorted(q["source_row"].unique()) == [4, 5, 6, 7, 8, 9, 10]
        checks = dict(zip(q["source_row"], q["check_name"], strict=True))
        assert checks[4] == "unknown_task" and checks[5].startswith("parse_") and checks[8] == "no_task"
        assert checks[7] == "names_a_task" and checks[9] == "duplicate_key" and checks[10] == "task_customer"
        assert "isin" in checks[6] and "not one of the allowed codes" in q.loc[q["source_row"] == 6, "reason"].iloc[0]
        assert json.loads(q.loc[q["source_row"] == 4, "row_json"].iloc[0])["Ticket"] == "nope"
        report = import_report(result)
        assert row_starting(report, "4")[1:4] == ["task_id", "unknown_task", "nope"], report
        assert [row[0] for row in table_rows(report)[1:]] == sorted([row[0] for row in table_rows(report)[1:]], key=int)

        again = import_outcomes(wh, export, settings, mapping, as_of="2026-10-10")
        assert (again.inserted, again.updated, again.unchanged) == (0, 0, 3)
        assert wh.row_count("outcomes") == 3
        assert wh.scalar("SELECT count(DISTINCT source_row) FROM quarantine") == 7, "re-import never duplicates"

        flagged = contamination(wh, settings)
        assert control["customer_id"].iloc[0] in set(flagged.loc[flagged["kind"] == "contamination", "customer_id"])
    finally:
        wh.close()


def test_an_export_without_the_needed_columns_is_refused_before_any_write(tmp_path: Path):
    settings = _settings(tmp_path / "home")
    wh = Warehouse(tmp_path / "w.duckdb")
    try:
        bad = tmp_path / "export.csv"
        pd.DataFrame({"Kunde": ["c1"], "Zeit": ["2026-10-06"]}).to_csv(bad, index=False)
        with pytest.raises(OutcomeImportError, match=r"export.csv.*\['outcome'"):
            import_outcomes(wh, bad, settings)
        assert wh.row_count("outcomes") == 0
    finally:
        wh.close()


def test_the_cli_command_runs_the_flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api):
    from typer.testing import CliRunner

    from flows.cli import app

    home = tmp_path / "home"
    monkeypatch.setenv("AFTERSALES_PATHS__HOME", str(home))
    monkeypatch.setenv("AFTERSALES_SCORING__CONTROL_SHARE", "0.3")
    reset_settings_cache()
    settings = get_settings()
    wh = Warehouse(settings.warehouse_path)
    try:
        tasks, _ = _lists(wh, settings, tmp_path)
    finally:
        wh.close()
    export = tmp_path / "outcomes.csv"
    pd.DataFrame({"task_id": tasks["task_id"].head(3), "outcome": "contacted",
                  "recorded_at": "2026-10-06T10:00:00Z", "agent_id": "a1"}).to_csv(export, index=False)
    out = CliRunner().invoke(app, ["outcomes", "import", str(export)])
    assert out.exit_code == 0, out.output
    assert "3 valid (3 new" in out.output and "report:" in out.output
    missing = CliRunner().invoke(app, ["outcomes", "import", str(tmp_path / "missing.csv")])
    assert missing.exit_code == 1 and "no such file" in " ".join(missing.output.split())
    reset_settings_cache()
