"""The day's list in each customer's own language: for the board, and as the CSV hand-out.

Language is a property of the customer (the ``customers`` table), not a global setting: the
action, the "why" and the suggested message of a task are put in that customer's language from
the playbook, the reason catalogue and the board's phrase files (``schemas/defaults/board/
phrases.<language>.yaml``); customers whose language is missing or neither en nor zh get
``board.default_language``.

To do that after the scoring run, ``task_risks`` keeps every task's scored risks with their top
three reason codes and values (``record_task_risks``). The "why" of a task is the top three
reasons of the risk it targets, in words that read as a risk (``tasks.models.explain.row_phrases``),
never more than three and never mixing two orders' facts.

``write_handout`` writes the CSV a shop can push into its own helpdesk: agent columns only, in
each customer's language, due time with its time zone (``tasks.csv``); the internal columns go
to a separate analysts' file (``tasks_analysts.csv``). A drift-flagged or held day gets a
``NOTICE.txt`` in words an agent can act on; the ML detail stays in the engineers' notes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from schemas.board import TASK_RISKS_TABLE, TaskRisks
from schemas.monitoring import DRIFT_RUNS_TABLE, GATE_TABLE
from schemas.settings import Settings, get_settings
from schemas.tasks import PHRASE_SEPARATOR, REASON_COLUMNS, REASON_COUNT, TAG_SEPARATOR, ScoredRows, TaskList
from tasks.care.playbook import Playbook, load_playbook
from tasks.data.warehouse import Warehouse, open_warehouse
from tasks.insight.tags import TagBook, load_tag_book
from tasks.models.explain import Language, ReasonCatalogue, load_reason_catalogue, row_phrases

LANGUAGES: tuple[Language, ...] = ("en", "zh")
AGENT_COLUMNS = ["task_id", "run_date", "rank", "queue", "queue_rank", "due_by", "time_zone", "customer_id",
                 "language", "order_id", "risk", "action", "channel", "why", "message", "other_risks",
                 "related_orders", "segment", "tags"]
AGENT_FILE, ANALYSTS_FILE, NOTICE_FILE = "tasks.csv", "tasks_analysts.csv", "NOTICE.txt"
SCORE_AREA = "score"  # drift of the scores themselves, not of one feature


# ---- phrase files ----------------------------------------------------------------------------
class DriftWords(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flag: str
    hold: str
    joiner: str
    areas: dict[str, str]


class Phrases(BaseModel):
    """One language's board words (``phrases.<language>.yaml``)."""

    model_config = ConfigDict(extra="forbid")
    language_name: str
    ui: dict[str, str]
    outcomes: dict[str, str]
    channels: dict[str, str]
    languages: dict[str, str]
    messages: dict[str, str]
    drift: DriftWords

    def t(self, key: str, **fields: Any) -> str:
        """A UI phrase with its fields filled in."""
        text = self.ui[key]
        return text.format(**fields) if fields else text

    def channel(self, code: str) -> str:
        return self.channels.get(code, code.replace("_", " "))


class PhraseError(ValueError):
    """A phrase file is missing or invalid; the message names the file."""


def load_phrases(folder: Path | str) -> dict[str, Phrases]:
    """Every ``phrases.<language>.yaml`` of the folder; each must have the keys of the English one."""
    folder = Path(folder)
    books: dict[str, Phrases] = {}
    for path in sorted(folder.glob("phrases.*.yaml")):
        try:
            books[path.name.split(".")[1]] = Phrases.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        except Exception as exc:  # yaml or pydantic: either way the file is unusable
            raise PhraseError(f"{path}: {exc}") from exc
    if "en" not in books:
        raise PhraseError(f"{folder}: no phrases.en.yaml")
    reference = books["en"]
    for lang, book in books.items():
        for part in ("ui", "outcomes", "channels", "languages", "messages"):
            missing = sorted(set(getattr(reference, part)) - set(getattr(book, part)))
            if missing:
                raise PhraseError(f"{folder / f'phrases.{lang}.yaml'}: {part} lacks {missing}")
    return books


@lru_cache(maxsize=8)
def _cached_phrases(folder: str) -> dict[str, Phrases]:
    return load_phrases(folder)


# ---- everything the words come from, loaded once ---------------------------------------------
@dataclass(frozen=True)
class Wording:
    playbook: Playbook
    catalogue: ReasonCatalogue
    phrases: dict[str, Phrases]
    tag_book: TagBook | None
    default_language: Language
    zone: ZoneInfo

    @classmethod
    def from_settings(cls, settings: Settings) -> Wording:
        catalogue = load_reason_catalogue(settings.reason_phrases_file)
        try:
            tag_book = load_tag_book(settings.analytics.tags.rules_file)
        except (OSError, ValueError):
            tag_book = None  # tags are then shown by name, underscores as spaces
        return cls(playbook=load_playbook(settings.playbook_file, catalogue), catalogue=catalogue,
                   phrases=_cached_phrases(str(settings.board.phrases_dir)), tag_book=tag_book,
                   default_language=settings.board.default_language, zone=ZoneInfo(settings.board.timezone))

    def language_of(self, code: Any) -> Language:
        """A customer's language code as one the words exist in."""
        return code if code in LANGUAGES else self.default_language

    def tag_words(self, tags: Any, language: Language) -> str:
        if not isinstance(tags, str) or not tags.strip():
            return ""
        names = [t.strip() for t in tags.split(TAG_SEPARATOR) if t.strip()]
        if self.tag_book is None:
            return ", ".join(t.replace("_", " ") for t in names)
        return ", ".join(self.tag_book.label(t, language) for t in names)

    def segment_words(self, name: Any, language: Language) -> str:
        """The segment's name in the customer's language (the run named it in the shop's language)."""
        if not isinstance(name, str):
            return ""
        return name if self.tag_book is None else self.tag_book.segment_label(name, language)

    def tag_service(self, tags: Any, language: Language) -> list[str]:
        """The service each of the customer's tags promises ("Dedicated channel and fast response")."""
        if self.tag_book is None or not isinstance(tags, str):
            return []
        wanted = {t.strip() for t in tags.split(TAG_SEPARATOR)}
        return [t.service(language) for t in self.tag_book.tags if t.name in wanted and t.service is not None]

    def risk_words(self, risk: str, language: Language) -> str:
        return self.catalogue.risks[risk].text(language)


# ---- task_risks: each task's scored risks with their reasons ---------------------------------
def _text(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return str(value)


def task_risks(scored: pd.DataFrame, tasks: pd.DataFrame) -> pd.DataFrame:
    """``TaskRisks`` rows: each task's customer's scored rows, the one the task leads with flagged."""
    columns = list(TaskRisks.to_schema().columns)
    if tasks.empty or scored.empty:
        return TaskRisks.validate(pd.DataFrame({c: pd.Series(dtype=object) for c in columns}).astype(
            {"probability": float, "lead": bool, "run_date": "datetime64[us]"}))
    keys = tasks[[TaskList.task_id, TaskList.customer_id, TaskList.risk_code, TaskList.order_id]].rename(
        columns={TaskList.risk_code: "_lead_risk", TaskList.order_id: "_lead_order"})
    rows = scored.merge(keys, on=ScoredRows.customer_id, how="inner")
    same_order = (rows[ScoredRows.order_id].fillna("") == rows["_lead_order"].fillna(""))
    rows["lead"] = (rows[ScoredRows.risk] == rows["_lead_risk"]) & same_order
    out = pd.DataFrame({
        "run_date": pd.to_datetime(rows[ScoredRows.run_date]).dt.normalize().astype("datetime64[us]"),
        "task_id": rows[TaskList.task_id], "customer_id": rows[ScoredRows.customer_id],
        "risk": rows[ScoredRows.risk], "order_id": rows[ScoredRows.order_id].astype(object),
        "probability": rows[ScoredRows.probability].astype(float), "lead": rows["lead"].astype(bool)})
    for name, value in REASON_COLUMNS:
        out[name] = rows[name].map(_text).astype(object)
        out[value] = rows[value].map(_text).astype(object)
    out = out.sort_values(["task_id", "lead", "probability"], ascending=[True, False, False], kind="mergesort")
    return TaskRisks.validate(out.reset_index(drop=True), lazy=True)


def write_task_risks(wh: Warehouse, risks: pd.DataFrame, run_date: Any) -> None:
    """Replace the day's rows (re-running a date replaces them, like the list itself)."""
    day = pd.Timestamp(run_date).normalize()
    wh.replace_partition(TASK_RISKS_TABLE, risks, where={"run_date": day.to_pydatetime()})


@task(name="record-task-risks", cache_policy=NO_CACHE)
def record_task_risks_task(settings: Settings, scored: pd.DataFrame, tasks: pd.DataFrame, run_date: Any) -> int:
    risks = task_risks(scored, tasks)
    with open_warehouse(settings) as wh:
        write_task_risks(wh, risks, run_date)
    return len(risks)


def records(wh: Warehouse, sql: str, params: Any = None) -> list[dict[str, Any]]:
    """Rows as dicts of plain Python values, straight from DuckDB (no DataFrame on the way: the board
    reads thousands of rows at a time)."""
    cursor = wh.con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def load_task_risks(wh: Warehouse, run_date: Any) -> list[dict[str, Any]]:
    if not wh.has_table(TASK_RISKS_TABLE):
        return []
    return records(wh, f'SELECT * FROM "{TASK_RISKS_TABLE}" WHERE run_date = ? ORDER BY task_id, lead DESC, '
                       "probability DESC", [pd.Timestamp(run_date).normalize().to_pydatetime()])


def customer_languages(wh: Warehouse, customer_ids: Iterable[str]) -> dict[str, str | None]:
    """Each customer's language code as the customers table has it."""
    ids = pd.DataFrame({"customer_id": pd.Series(list(customer_ids), dtype=object).astype(str)})
    if ids.empty or not wh.has_table("customers"):
        return {}
    wh.register("_wanted_customers", ids)
    try:
        found = wh.con.execute('SELECT c.customer_id, c.language FROM customers c SEMI JOIN "_wanted_customers" w '
                               "ON c.customer_id = w.customer_id").fetchall()
    finally:
        wh.unregister("_wanted_customers")
    return dict(found)


# ---- one task in its customer's language -----------------------------------------------------
def as_datetime(value: Any) -> datetime | None:
    """A naive UTC datetime (what the warehouse stores) from a Timestamp, datetime or None."""
    if value is None or value is pd.NaT or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def due_text(due_by: Any, zone: ZoneInfo) -> str:
    """``2026-11-03T08:00+08:00``: the stored (naive UTC) due time in the shop's time zone."""
    due = as_datetime(due_by)
    return "" if due is None else due.replace(tzinfo=UTC).astimezone(zone).isoformat(timespec="minutes")


def row_reasons(row: Mapping[str, Any], catalogue: ReasonCatalogue, language: Language,
                memo: dict[tuple[Any, ...], str | None] | None = None) -> list[str]:
    """A row's reasons in words (``explain.row_phrases``), at most ``REASON_COUNT``."""
    return row_phrases([(row.get(name), row.get(value)) for name, value in REASON_COLUMNS], catalogue, language,
                       memo)[:REASON_COUNT]


def why_words(lead: Mapping[str, Any] | None, wording: Wording, language: Language, fallback: str,
              memo: dict[tuple[Any, ...], str | None] | None = None) -> list[str]:
    """The top three reasons of the lead risk, in words that read as a risk (at most three)."""
    if lead is None:
        return [fallback] if fallback else []
    return row_reasons(lead, wording.catalogue, language, memo) or [wording.catalogue.no_reason.text(language)]


def other_risk_words(others: list[Mapping[str, Any]], wording: Wording, language: Language) -> str:
    seen: dict[str, None] = {}
    for row in others:
        seen[f"{wording.risk_words(row['risk'], language)} {float(row['probability']):.0%}"] = None
    return PHRASE_SEPARATOR.join(seen)


def localise(tasks: pd.DataFrame | list[dict[str, Any]], risks: list[dict[str, Any]], languages: Mapping[str, Any],
             wording: Wording) -> list[dict[str, Any]]:
    """One row per task with every agent column, its words in the customer's language.

    Besides ``AGENT_COLUMNS``: ``language_code`` (en/zh as used), ``risk_code``, ``action_id``,
    ``due_utc`` (naive UTC) and ``why_list`` (the reasons as a list) for the board.
    """
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in risks:
        by_task.setdefault(row["task_id"], []).append(row)
    out: list[dict[str, Any]] = []
    memo: dict[tuple[Any, ...], str | None] = {}  # the same reason and value recur across thousands of tasks
    zone_name = str(wording.zone.key)
    for t in tasks.to_dict("records") if isinstance(tasks, pd.DataFrame) else tasks:
        code = languages.get(t[TaskList.customer_id])
        lang = wording.language_of(code)
        rows = by_task.get(t[TaskList.task_id], [])
        lead = next((r for r in rows if r["lead"]), None)
        others = [r for r in rows if not r["lead"]]
        why = why_words(lead, wording, lang, "" if lead else str(t.get(TaskList.why) or ""), memo)
        phrases = wording.phrases.get(lang, wording.phrases["en"])
        out.append({
            "task_id": t[TaskList.task_id], "run_date": f"{as_datetime(t[TaskList.run_date]):%Y-%m-%d}",
            "rank": int(t[TaskList.rank]), "queue": t[TaskList.queue], "queue_rank": int(t[TaskList.queue_rank]),
            "due_by": due_text(t[TaskList.due_by], wording.zone), "time_zone": zone_name,
            "customer_id": t[TaskList.customer_id], "language": code if isinstance(code, str) else "",
            "order_id": t[TaskList.order_id] if isinstance(t[TaskList.order_id], str) else "",
            "risk": wording.risk_words(t[TaskList.risk_code], lang),
            "action": wording.playbook.action_text(t[TaskList.action_id], lang)
            if t[TaskList.action_id] in wording.playbook.actions else t[TaskList.action],
            "channel": phrases.channel(t[TaskList.channel]),
            "why": PHRASE_SEPARATOR.join(why),
            "message": phrases.messages.get(t[TaskList.action_id], ""),
            "other_risks": other_risk_words(others, wording, lang) if rows else (t.get(TaskList.other_risks) or ""),
            "related_orders": t[TaskList.related_orders] if isinstance(t[TaskList.related_orders], str) else "",
            "segment": wording.segment_words(t[TaskList.segment], lang),
            "tags": wording.tag_words(t[TaskList.tags], lang),
            # for the board
            "language_code": lang, "risk_code": t[TaskList.risk_code], "action_id": t[TaskList.action_id],
            "channel_code": t[TaskList.channel], "tag_codes": t[TaskList.tags] if isinstance(t[TaskList.tags], str)
            else "", "due_utc": as_datetime(t[TaskList.due_by]), "why_list": why,
            "others": [{"risk": r["risk"], "probability": float(r["probability"]), "order_id": r["order_id"],
                        "reasons": row_reasons(r, wording.catalogue, lang, memo)} for r in others],
        })
    return out


# ---- the drift notice for agents -------------------------------------------------------------
@dataclass(frozen=True)
class DriftNotice:
    action: str  # flag | hold
    areas: tuple[str, ...]  # reason groups (or "score") that moved

    def text(self, phrases: Phrases) -> str:
        words = [phrases.drift.areas.get(a, phrases.drift.areas.get("other", a)) for a in self.areas]
        joined = phrases.drift.joiner.join(dict.fromkeys(words)) or phrases.drift.areas.get("other", "")
        return (phrases.drift.hold if self.action == "hold" else phrases.drift.flag).format(areas=joined)


def drift_notice(wh: Warehouse, run_date: Any, catalogue: ReasonCatalogue, max_areas: int = 3) -> DriftNotice | None:
    """What moved, as reason groups, when the day's drift gate flagged or held the list."""
    day = pd.Timestamp(run_date).normalize().to_pydatetime()
    if not wh.has_table(GATE_TABLE):
        return None
    gate = wh.query(f'SELECT action FROM "{GATE_TABLE}" WHERE run_date = ? AND (flagged OR held)', [day])
    if gate.empty:
        return None
    areas: dict[str, int] = {}
    if wh.has_table(DRIFT_RUNS_TABLE):
        runs = wh.query(f'SELECT drifted_features, score_drift FROM "{DRIFT_RUNS_TABLE}" WHERE run_date = ? '
                        "AND severe AND source = 'score'", [day])
        for row in runs.itertuples():
            for feature in str(row.drifted_features or "").split(","):
                if feature.strip():
                    group = catalogue.group_of(feature.strip())
                    areas[group] = areas.get(group, 0) + 1
            if row.score_drift:
                areas[SCORE_AREA] = areas.get(SCORE_AREA, 0) + 1
    ranked = sorted(areas, key=lambda a: (-areas[a], a))[:max_areas]
    return DriftNotice(str(gate["action"].iloc[0]), tuple(ranked))


# ---- the hand-out ----------------------------------------------------------------------------
def _write_atomically(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def agent_rows(wh: Warehouse, tasks: pd.DataFrame | list[dict[str, Any]], wording: Wording) -> list[dict[str, Any]]:
    """The day's tasks in each customer's language (agent columns plus the board's extras)."""
    rows = tasks.to_dict("records") if isinstance(tasks, pd.DataFrame) else tasks
    if not rows:
        return []
    day = as_datetime(rows[0][TaskList.run_date])
    languages = customer_languages(wh, [r[TaskList.customer_id] for r in rows])
    return localise(rows, load_task_risks(wh, day), languages, wording)


def write_handout(wh: Warehouse, tasks: pd.DataFrame, folder: Path,
                  settings: Settings | None = None) -> dict[str, Path]:
    """``tasks.csv`` (agent columns, customers' languages, due time with zone) and ``tasks_analysts.csv``.

    Both UTF-8 with BOM, so spreadsheet tools show Chinese correctly. A flagged or held day also
    gets ``NOTICE.txt`` in every board language; a re-run without drift removes it.
    """
    settings = settings or get_settings()
    wording = Wording.from_settings(settings)
    folder.mkdir(parents=True, exist_ok=True)
    agent = pd.DataFrame(agent_rows(wh, tasks, wording), columns=AGENT_COLUMNS)
    paths = {"csv": folder / AGENT_FILE, "analysts_csv": folder / ANALYSTS_FILE}
    _write_atomically(paths["csv"], lambda p: agent.to_csv(p, index=False, encoding="utf-8-sig"))
    _write_atomically(paths["analysts_csv"], lambda p: tasks.to_csv(p, index=False, encoding="utf-8-sig"))
    day = tasks[TaskList.run_date].iloc[0] if len(tasks) else pd.Timestamp(folder.name)
    notice = drift_notice(wh, day, wording.catalogue)
    (folder / NOTICE_FILE).unlink(missing_ok=True)
    if notice is not None:
        text = "\n".join(notice.text(p) for p in wording.phrases.values()) + "\n"
        (folder / NOTICE_FILE).write_text(text, encoding="utf-8")
        paths["notice"] = folder / NOTICE_FILE
    return paths


def as_json(value: Mapping[str, Any] | None) -> str | None:
    """Audit values as JSON (dates as ISO text)."""
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
