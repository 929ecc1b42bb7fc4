"""The care board's work, without HTTP: accounts, the day's queues, claims, outcomes and the audit.

Why an in-memory day: DuckDB lets one process write a file at a time, and opening it costs tens of
milliseconds. The board therefore loads the day once (tasks in each customer's language, the
customers' recent history, claims and outcomes) and serves pages from memory; it opens the
warehouse again only to write (one short transaction, retried politely while another process
holds the file) or when the file has changed under it (a scoring run, an ingested outcome file).
While a scoring run holds its lock the board keeps serving what it has and does not touch the file.

Writes are idempotent and audited: claiming a task you hold, or recording an outcome already
recorded with the same note, changes nothing; every change appends a ``board_audit`` row (who,
when, what was there, what is there now). A claim is a row with the task as primary key, so two
people can never hold one task, whichever process they came through. Outcomes land in the
warehouse ``outcomes`` table at once, where ``aftersales uplift`` reads them. Control customers
are never on the board: it reads ``task_list`` only, and refuses any task id not on the day's list.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from schemas.board import AUDIT_DDL, AUDIT_TABLE, CLAIMS_DDL, CLAIMS_TABLE, OUTCOME_BATCH
from schemas.settings import BoardAccount, Settings
from schemas.sources import OUTCOMES
from schemas.tasks import TASK_TABLE, TaskList
from tasks.care.export import DriftNotice, Wording, agent_rows, as_json, drift_notice, records
from tasks.data.warehouse import Warehouse

# what an agent clicks -> the code stored in ``outcomes`` (schemas.sources.OUTCOMES)
BOARD_OUTCOMES = {"reached": "contacted", "not_reached": "no_answer", "resolved": "resolved",
                  "declined": "declined", "escalated": "escalated"}
STORED_TO_BOARD = {v: k for k, v in BOARD_OUTCOMES.items()}
NOT_FINAL = {"no_answer"}  # the task stays open: try again
STATUSES = ("open", "claimed", "done", "overdue", "mine")
assert set(BOARD_OUTCOMES.values()) <= set(OUTCOMES)

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_hex(8))


# ---- accounts --------------------------------------------------------------------------------
class AccountError(ValueError):
    """The accounts file cannot be used, or an account is invalid."""


def accounts_path(settings: Settings) -> Path:
    return settings.board.accounts_file or settings.board_dir / "accounts.yaml"


def load_accounts(settings: Settings) -> dict[str, BoardAccount]:
    """Accounts from the file (``board.accounts_file``) and from settings (``board.accounts``)."""
    path = accounts_path(settings)
    accounts: dict[str, BoardAccount] = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for user, spec in (raw.get("accounts") or {}).items():
                accounts[str(user)] = BoardAccount.model_validate(spec)
        except (yaml.YAMLError, ValueError, AttributeError) as exc:
            raise AccountError(f"{path}: {exc}") from exc
    accounts.update(settings.board.accounts)
    for user, account in accounts.items():
        if not account.name:
            account.name = user
    return accounts


def add_account(settings: Settings, user: str, password: str, *, role: str = "agent",
                queues: list[str] | None = None, language: str = "en", name: str | None = None) -> Path:
    """Add or replace an account in the accounts file, the password hashed (argon2id); file mode 0600."""
    if not user or any(c.isspace() for c in user):
        raise AccountError("a user name is one word")
    if len(password) < 8:
        raise AccountError("a password has at least 8 characters")
    account = BoardAccount(name=name or user, role=role, queues=list(queues or []), language=language,
                           password_hash=_hasher.hash(password))
    path = accounts_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw: dict[str, Any] = {}
    if path.exists():
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    raw.setdefault("accounts", {})[user] = account.model_dump()
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("# Care board accounts: add with `aftersales board add-account`. Passwords are argon2 hashes.\n")
        yaml.safe_dump(raw, handle, allow_unicode=True, sort_keys=True)
    os.replace(tmp, path)
    return path


def verify_password(accounts: dict[str, BoardAccount], user: str, password: str) -> BoardAccount | None:
    """The account if the password matches; the same work is done for an unknown user."""
    account = accounts.get(user)
    try:
        _hasher.verify(account.password_hash if account else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return account


def session_secret(settings: Settings) -> str:
    """The key that signs session cookies: kept in a 0600 file, created on first use."""
    path = settings.board.secret_key_file or settings.board_dir / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


# ---- the warehouse, politely -----------------------------------------------------------------
class WarehouseBusy(RuntimeError):
    """Another process holds the warehouse (e.g. the morning run); nothing was written."""


def _locked(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "used by another process" in text


def scoring_running(settings: Settings) -> bool:
    """A scoring run holds its lock (``tasks.data.warehouse.run_lock``): leave the file alone."""
    folder = settings.warehouse_path.parent / "locks"
    for lock in folder.glob("score-*.lock") if folder.is_dir() else []:
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    return False


@contextmanager
def warehouse(settings: Settings, *, write: bool, wait: bool = True, ensure_tables: bool = True
              ) -> Iterator[Warehouse]:
    """A short-lived connection; while another process holds the file, retry with growing waits."""
    cfg = settings.board
    pause = cfg.lock_wait_seconds
    tries = cfg.lock_retries if wait else 1
    for attempt in range(tries):
        if not scoring_running(settings):
            try:
                wh = Warehouse(settings.warehouse_path, read_only=not write, threads=1,
                               memory_limit=settings.warehouse.memory_limit, ensure_tables=ensure_tables)
                break
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _locked(exc):
                    raise
        if attempt + 1 < tries:
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
    else:
        raise WarehouseBusy("the warehouse is in use by another process")
    try:
        yield wh
    finally:
        wh.close()


def file_signature(path: Path) -> tuple[Any, ...]:
    """Changes whenever a process commits to the warehouse (main file or its write-ahead log)."""
    out: list[Any] = []
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            st = p.stat()
            out += [st.st_mtime_ns, st.st_size]
        except FileNotFoundError:
            out += [None, None]
    return tuple(out)


# ---- the day in memory -----------------------------------------------------------------------
def naive_utc(now: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(now)
    return (stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp).as_unit("us")


def latest_day(wh: Warehouse) -> pd.Timestamp | None:
    if not wh.has_table(TASK_TABLE):
        return None
    day = wh.scalar(f'SELECT max("{TaskList.run_date}") FROM "{TASK_TABLE}"')
    return None if day is None else pd.Timestamp(day).normalize()


_HISTORY_SQL = {
    "orders": """
        SELECT o.customer_id, o.order_id, o.ordered_at AS ts, o.total_amount AS amount,
               CASE WHEN o.status = 'cancelled' AND coalesce(o.updated_at, o.ordered_at) <= $day THEN 'cancelled'
                    WHEN o.delivered_at <= $day THEN 'delivered'
                    WHEN o.shipped_at <= $day THEN 'shipped' ELSE 'placed' END AS status
        FROM orders o SEMI JOIN _board_customers c ON o.customer_id = c.customer_id
        WHERE o.ordered_at <= $day AND o.ordered_at > $start""",
    "deliveries": """
        SELECT o.customer_id, o.order_id, o.ordered_at AS ts, o.promised_at AS promised,
               CASE WHEN o.shipped_at <= $day THEN o.shipped_at END AS shipped,
               CASE WHEN o.delivered_at <= $day THEN o.delivered_at END AS delivered, o.carrier,
               CASE WHEN o.delivered_at <= $day AND o.promised_at IS NOT NULL
                    THEN greatest(date_diff('day', o.promised_at, o.delivered_at), 0)
                    WHEN o.promised_at < $day AND NOT (o.delivered_at <= $day)
                    THEN date_diff('day', o.promised_at, $day) END AS days_late
        FROM orders o SEMI JOIN _board_customers c ON o.customer_id = c.customer_id
        WHERE o.ordered_at <= $day AND o.ordered_at > $start AND coalesce(o.status, '') <> 'cancelled'""",
    "returns": """
        SELECT o.customer_id, r.order_id, r.requested_at AS ts, r.reason_code AS reason,
               r.refund_amount AS refund,
               CASE WHEN coalesce(r.updated_at, r.requested_at) <= $day THEN r.status ELSE 'requested' END AS status
        FROM returns r JOIN orders o ON o.order_id = r.order_id
        SEMI JOIN _board_customers c ON o.customer_id = c.customer_id
        WHERE r.requested_at <= $day AND r.requested_at > $start""",
    "tickets": """
        SELECT t.customer_id, t.order_id, t.opened_at AS ts, t.channel, t.category,
               CASE WHEN t.first_response_at <= $day THEN t.first_response_at END AS first_reply,
               CASE WHEN t.resolved_at <= $day THEN t.resolved_at END AS resolved,
               CASE WHEN t.resolved_at <= $day THEN t.satisfaction END AS rating, t.text
        FROM tickets t SEMI JOIN _board_customers c ON t.customer_id = c.customer_id
        WHERE t.opened_at <= $day AND t.opened_at > $start""",
    "reviews": """
        SELECT o.customer_id, v.order_id, v.created_at AS ts, v.score, v.text
        FROM reviews v JOIN orders o ON o.order_id = v.order_id
        SEMI JOIN _board_customers c ON o.customer_id = c.customer_id
        WHERE v.created_at <= $day AND v.created_at > $start""",
}


def customer_history(wh: Warehouse, customer_ids: list[str], day: pd.Timestamp, days: int,
                     rows: int) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per customer and kind (orders, deliveries, returns, tickets, reviews), the latest ``rows``
    rows of the ``days`` before the run date, as known on the run date."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {c: {k: [] for k in _HISTORY_SQL} for c in customer_ids}
    if not customer_ids:
        return out
    wh.register("_board_customers", pd.DataFrame({"customer_id": customer_ids}))
    params = {"day": day.to_pydatetime(), "start": (day - pd.Timedelta(days=days)).to_pydatetime()}
    try:
        for kind, sql in _HISTORY_SQL.items():
            table = "orders" if kind == "deliveries" else kind
            if not wh.has_table(table):
                continue
            found = records(wh, f"SELECT * FROM ({sql}) QUALIFY row_number() OVER "
                                f"(PARTITION BY customer_id ORDER BY ts DESC) <= {int(rows)} "
                                "ORDER BY customer_id, ts DESC", params)
            for record in found:
                out[record.pop("customer_id")][kind].append(record)
    finally:
        wh.unregister("_board_customers")
    return out


@dataclass
class Day:
    """What the board serves for one run date, loaded from the warehouse in one go."""

    run_date: pd.Timestamp | None
    tasks: list[dict[str, Any]] = field(default_factory=list)  # rank order
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)  # task_id -> agent, claimed_at
    outcomes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task_id -> rows, oldest first
    notice: DriftNotice | None = None
    queues: list[str] = field(default_factory=list)


def load_day(wh: Warehouse, run_date: pd.Timestamp | None, wording: Wording, settings: Settings) -> Day:
    """The day's list in each customer's language, history, claims, outcomes and drift notice."""
    day = run_date if run_date is not None else latest_day(wh)
    if day is None or not wh.has_table(TASK_TABLE):
        return Day(run_date=day)
    when = [day.to_pydatetime()]
    tasks = records(wh, f'SELECT * FROM "{TASK_TABLE}" WHERE "{TaskList.run_date}" = ? ORDER BY "{TaskList.rank}"',
                    when)
    rows = agent_rows(wh, tasks, wording)
    cfg = settings.board
    out = Day(run_date=day, tasks=rows, by_id={r["task_id"]: r for r in rows},
              history=customer_history(wh, [r["customer_id"] for r in rows], day, cfg.history_days,
                                       cfg.history_rows),
              notice=drift_notice(wh, day, wording.catalogue),
              queues=sorted({r["queue"] for r in rows}))
    if wh.has_table(CLAIMS_TABLE):
        claims = records(wh, f'SELECT task_id, agent, claimed_at FROM "{CLAIMS_TABLE}" WHERE run_date = ?', when)
        out.claims = {r["task_id"]: {"agent": r["agent"], "claimed_at": r["claimed_at"]} for r in claims}
    if rows and wh.has_table("outcomes"):
        outcomes = records(wh, f'SELECT x.task_id, x.outcome, x.recorded_at, x.note FROM outcomes x SEMI JOIN '
                                f'"{TASK_TABLE}" t ON t.task_id = x.task_id AND t."{TaskList.run_date}" = ? '
                                "ORDER BY x.recorded_at, x.outcome", when)
        for r in outcomes:
            out.outcomes.setdefault(r.pop("task_id"), []).append(r)
    return out


# ---- status, scope and filters ---------------------------------------------------------------
def is_done(outcomes: list[dict[str, Any]]) -> bool:
    return any(o["outcome"] not in NOT_FINAL for o in outcomes)


def status_of(day: Day, task: dict[str, Any], now: datetime) -> dict[str, Any]:
    """open / claimed / done, who holds it, and whether it is overdue (not done, past its due time)."""
    outcomes = day.outcomes.get(task["task_id"], [])
    claim = day.claims.get(task["task_id"])
    done = is_done(outcomes)
    return {"status": "done" if done else "claimed" if claim else "open", "holder": claim["agent"] if claim else None,
            "overdue": (not done) and task["due_utc"] is not None and task["due_utc"] < now, "outcomes": outcomes}


def in_scope(account: BoardAccount, task: dict[str, Any]) -> bool:
    """A lead sees every queue; an agent sees their own."""
    return account.role == "lead" or task["queue"] in account.queues


@dataclass(frozen=True)
class Filters:
    queue: str = ""
    risk: str = ""
    language: str = ""
    status: str = ""


def worklist(day: Day, account: BoardAccount, user: str, filters: Filters,
             now: datetime) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The tasks the filters keep, in priority order, and the counts of the person's scope.

    One tight pass over the day (thousands of tasks, every page view): states are built only for
    the rows a page shows (``status_of``).
    """
    now = now.to_pydatetime() if isinstance(now, pd.Timestamp) else now
    lead = account.role == "lead"
    queues = set(account.queues)
    done_ids = {tid for tid, outcomes in day.outcomes.items() if is_done(outcomes)}
    claims = day.claims
    status = filters.status
    opened = done = overdue = 0
    kept: list[dict[str, Any]] = []
    for task in day.tasks:
        if not lead and task["queue"] not in queues:
            continue
        tid = task["task_id"]
        is_done_ = tid in done_ids
        late = not is_done_ and task["due_utc"] is not None and task["due_utc"] < now
        done += is_done_
        opened += not is_done_
        overdue += late
        if (filters.queue and task["queue"] != filters.queue) or (filters.risk and task["risk_code"] != filters.risk):
            continue
        if filters.language and task["language_code"] != filters.language:
            continue
        if status and not (
            (status == "done" and is_done_) or (status == "overdue" and late)
            or (status == "open" and not is_done_ and tid not in claims)
            or (status == "claimed" and not is_done_ and tid in claims)
            or (status == "mine" and claims.get(tid, {}).get("agent") == user)
        ):
            continue
        kept.append(task)
    return kept, {"open": opened, "done": done, "overdue": overdue}


# ---- writes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    """What a write did: ``changed`` False means it was already so (idempotent)."""

    changed: bool
    holder: str | None = None  # who holds the task afterwards
    refused: str | None = None  # "taken" (someone else holds it), "not_lead", "unknown_outcome"


def _ensure_board_tables(wh: Warehouse) -> None:
    wh.con.execute(CLAIMS_DDL)
    wh.con.execute(AUDIT_DDL)


def _audit(wh: Warehouse, at: pd.Timestamp, agent: str, action: str, task: dict[str, Any], run_date: pd.Timestamp,
           before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    wh.con.execute(f'INSERT INTO "{AUDIT_TABLE}" VALUES (?, ?, ?, ?, ?, ?, ?)',
                   [at.to_pydatetime(), agent, action, task["task_id"], run_date.to_pydatetime(),
                    as_json(before), as_json(after)])


def _holder(wh: Warehouse, task_id: str) -> str | None:
    return wh.scalar(f'SELECT agent FROM "{CLAIMS_TABLE}" WHERE task_id = ?', [task_id])


def claim_in(wh: Warehouse, task: dict[str, Any], run_date: pd.Timestamp, user: str, at: pd.Timestamp) -> Change:
    """Take a free task; a task held by someone else stays theirs (their name comes back)."""
    with wh.transaction():
        holder = _holder(wh, task["task_id"])
        if holder == user:
            return Change(False, user)
        if holder is not None:
            return Change(False, holder, "taken")
        wh.con.execute(f'INSERT INTO "{CLAIMS_TABLE}" VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING',
                       [task["task_id"], run_date.to_pydatetime(), user, at.to_pydatetime()])
        holder = _holder(wh, task["task_id"])
        if holder != user:
            return Change(False, holder, "taken")
        _audit(wh, at, user, "claim", task, run_date, None, {"agent": user})
    return Change(True, user)


def release_in(wh: Warehouse, task: dict[str, Any], run_date: pd.Timestamp, user: str, at: pd.Timestamp,
               lead: bool = False) -> Change:
    """Give a task back (its holder, or a lead)."""
    with wh.transaction():
        holder = _holder(wh, task["task_id"])
        if holder is None:
            return Change(False, None)
        if holder != user and not lead:
            return Change(False, holder, "taken")
        wh.con.execute(f'DELETE FROM "{CLAIMS_TABLE}" WHERE task_id = ?', [task["task_id"]])
        _audit(wh, at, user, "release", task, run_date, {"agent": holder}, None)
    return Change(True, None)


def assign_in(wh: Warehouse, task: dict[str, Any], run_date: pd.Timestamp, lead: str, to: str | None,
              at: pd.Timestamp) -> Change:
    """A lead gives the task to someone (or to nobody)."""
    with wh.transaction():
        holder = _holder(wh, task["task_id"])
        if holder == to:
            return Change(False, holder)
        if to is None:
            wh.con.execute(f'DELETE FROM "{CLAIMS_TABLE}" WHERE task_id = ?', [task["task_id"]])
        elif holder is None:
            wh.con.execute(f'INSERT INTO "{CLAIMS_TABLE}" VALUES (?, ?, ?, ?)',
                           [task["task_id"], run_date.to_pydatetime(), to, at.to_pydatetime()])
        else:
            wh.con.execute(f'UPDATE "{CLAIMS_TABLE}" SET agent = ?, claimed_at = ? WHERE task_id = ?',
                           [to, at.to_pydatetime(), task["task_id"]])
        _audit(wh, at, lead, "reassign", task, run_date, {"agent": holder} if holder else None,
               {"agent": to} if to else None)
    return Change(True, to)


def record_in(wh: Warehouse, task: dict[str, Any], run_date: pd.Timestamp, user: str, outcome: str, note: str,
              at: pd.Timestamp, lead: bool = False) -> Change:
    """Record what happened (claiming a free task on the way); the same outcome and note twice is one row."""
    code = BOARD_OUTCOMES.get(outcome)
    if code is None:
        return Change(False, None, "unknown_outcome")
    note_value = note.strip() or None
    with wh.transaction():
        holder = _holder(wh, task["task_id"])
        if holder is not None and holder != user and not lead:
            return Change(False, holder, "taken")
        if holder is None:
            wh.con.execute(f'INSERT INTO "{CLAIMS_TABLE}" VALUES (?, ?, ?, ?)',
                           [task["task_id"], run_date.to_pydatetime(), user, at.to_pydatetime()])
            _audit(wh, at, user, "claim", task, run_date, None, {"agent": user})
            holder = user
        existing = wh.query("SELECT note FROM outcomes WHERE task_id = ? AND outcome = ?", [task["task_id"], code])
        if len(existing):
            before = existing["note"].iloc[0]
            before = None if pd.isna(before) else before
            if before == note_value:
                return Change(False, holder)
            wh.con.execute("UPDATE outcomes SET note = ?, _loaded_at = ? WHERE task_id = ? AND outcome = ?",
                           [note_value, at.to_pydatetime(), task["task_id"], code])
            _audit(wh, at, user, "note", task, run_date, {"outcome": outcome, "note": before},
                   {"outcome": outcome, "note": note_value})
            return Change(True, holder)
        wh.con.execute("INSERT INTO outcomes (task_id, customer_id, outcome, recorded_at, note, agent_id, _valid_from, "
                       "_batch_id, _loaded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [task["task_id"], task["customer_id"], code, at.to_pydatetime(), note_value, user,
                        at.to_pydatetime(), OUTCOME_BATCH, at.to_pydatetime()])
        _audit(wh, at, user, "outcome", task, run_date, None, {"outcome": outcome, "note": note_value})
    return Change(True, holder)


# ---- the store the web app talks to ----------------------------------------------------------
class BoardStore:
    """The day in memory, refreshed when the warehouse changes; writes go through at once."""

    def __init__(self, settings: Settings, wording: Wording | None = None, run_date: Any = None,
                 now: Callable[[], datetime] | None = None):
        self.settings = settings
        self.wording = wording or Wording.from_settings(settings)
        self.pinned = None if run_date is None else pd.Timestamp(run_date).normalize()
        self.clock = now or (lambda: datetime.now(UTC))
        self._load_lock = threading.Lock()  # one reload at a time; pages never wait for one
        self._write_lock = threading.Lock()  # one write at a time (DuckDB has one writer anyway)
        self._day: Day | None = None
        self._signature: tuple[Any, ...] | None = None
        # the source tables are checked on the first write only: each check is ~30 small statements, and
        # under load every statement waits for the GIL behind page rendering (a write took 750 ms at p50)
        self._tables_checked = False

    def now(self) -> pd.Timestamp:
        return naive_utc(self.clock())

    # reading
    def day(self) -> Day:
        """The loaded day, reloaded when another process changed the warehouse.

        Only the first load waits: while a reload or a write is under way, or another process holds
        the file, pages are served from the day already in memory.
        """
        current = self._day
        if current is not None and (self._write_lock.locked()
                                    or file_signature(self.settings.warehouse_path) == self._signature):
            return current
        if not self._load_lock.acquire(blocking=current is None):
            return current  # type: ignore[return-value]
        try:
            if self._day is None or file_signature(self.settings.warehouse_path) != self._signature:
                try:
                    self._reload(wait=self._day is None)
                except WarehouseBusy:
                    if self._day is None:
                        raise
            return self._day  # type: ignore[return-value]
        finally:
            self._load_lock.release()

    def _reload(self, wait: bool) -> None:
        if not self.settings.warehouse_path.exists():
            self._day, self._signature = Day(run_date=self.pinned), file_signature(self.settings.warehouse_path)
            return
        with warehouse(self.settings, write=False, wait=wait) as wh:
            self._day = load_day(wh, self.pinned, self.wording, self.settings)
        self._signature = file_signature(self.settings.warehouse_path)

    def task(self, account: BoardAccount, task_id: str) -> dict[str, Any] | None:
        """The task if it is on the day's list and in the person's scope (else None: never a control row)."""
        task = self.day().by_id.get(task_id)
        return task if task is not None and in_scope(account, task) else None

    # writing
    def _write(self, action: Callable[[Warehouse, pd.Timestamp, pd.Timestamp], Change]) -> Change:
        self.day()  # loaded (the first time, waiting for the file)
        with self._write_lock, self._load_lock:
            day = self._day
            if day is None or day.run_date is None:
                raise WarehouseBusy("no task list loaded yet")
            before = file_signature(self.settings.warehouse_path)
            at = self.now()
            with warehouse(self.settings, write=True, ensure_tables=not self._tables_checked) as wh:
                if not self._tables_checked:
                    _ensure_board_tables(wh)
                    self._tables_checked = True
                change = action(wh, day.run_date, at)
                if change.changed or change.refused == "taken":
                    self._refresh_state(wh, day)  # replaces the dicts whole: readers see before or after
            # our own write: keep serving from memory unless someone else wrote since we loaded
            self._signature = file_signature(self.settings.warehouse_path) if before == self._signature else None
            return change

    def _refresh_state(self, wh: Warehouse, day: Day) -> None:
        """Claims and outcomes of the day again (small), inside the write's connection."""
        when = [day.run_date.to_pydatetime()] if day.run_date is not None else [None]
        claims = records(wh, f'SELECT task_id, agent, claimed_at FROM "{CLAIMS_TABLE}" WHERE run_date = ?', when)
        outcomes = records(wh, f'SELECT x.task_id, x.outcome, x.recorded_at, x.note FROM outcomes x SEMI JOIN '
                               f'"{TASK_TABLE}" t ON t.task_id = x.task_id AND t."{TaskList.run_date}" = ? '
                               "ORDER BY x.recorded_at, x.outcome", when)
        by_task: dict[str, list[dict[str, Any]]] = {}
        for r in outcomes:
            by_task.setdefault(r.pop("task_id"), []).append(r)
        day.claims = {r["task_id"]: {"agent": r["agent"], "claimed_at": r["claimed_at"]} for r in claims}
        day.outcomes = by_task

    def claim(self, account: BoardAccount, user: str, task: dict[str, Any]) -> Change:
        return self._write(lambda wh, day, at: claim_in(wh, task, day, user, at))

    def release(self, account: BoardAccount, user: str, task: dict[str, Any]) -> Change:
        return self._write(lambda wh, day, at: release_in(wh, task, day, user, at, account.role == "lead"))

    def assign(self, account: BoardAccount, user: str, task: dict[str, Any], to: str | None) -> Change:
        if account.role != "lead":
            return Change(False, None, "not_lead")
        return self._write(lambda wh, day, at: assign_in(wh, task, day, user, to, at))

    def record(self, account: BoardAccount, user: str, task: dict[str, Any], outcome: str, note: str) -> Change:
        return self._write(lambda wh, day, at: record_in(wh, task, day, user, outcome, note, at,
                                                         account.role == "lead"))
