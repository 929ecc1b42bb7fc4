"""`aftersales board`: the web page where care agents work the day's list and record what happened.

A user-facing entry point like the CLI: FastAPI routes over the plain functions of
``tasks/care/board.py``, Jinja2 templates and one stylesheet from ``schemas/defaults/board/``, no
JavaScript. Safe by default: it binds to 127.0.0.1, every page needs a signed-in account
(argon2-hashed passwords), the session is a signed cookie (HttpOnly, SameSite=Lax), every form
post carries the session's CSRF token and is refused without it, pages may not be framed, and the
access log names the route template ("/tasks/{task_id}"), never an id, a query or a note.
"""

import ipaddress
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from fastapi import FastAPI

    from schemas.settings import Settings

LOG = logging.getLogger("aftersales.board")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# no `from __future__ import annotations` here: FastAPI reads the route annotations (Request, Form)
# at definition time, and they are imported inside the factory
def create_app(settings: "Settings | None" = None, *, run_date: Any = None,
               now: Callable[[], datetime] | None = None) -> "FastAPI":
    """The board's ASGI app over the configured warehouse (``run_date``: pin a day; default the latest list)."""
    import contextlib
    import hmac
    import secrets
    import time
    from urllib.parse import urlencode

    import pandas as pd
    from fastapi import FastAPI, Form, Query, Request
    from fastapi.responses import HTMLResponse, RedirectResponse, Response
    from fastapi.staticfiles import StaticFiles
    from fastapi.templating import Jinja2Templates
    from starlette.middleware.sessions import SessionMiddleware

    from schemas.settings import get_settings
    from tasks.care.board import (
        BOARD_OUTCOMES,
        STATUSES,
        STORED_TO_BOARD,
        BoardStore,
        Change,
        Filters,
        WarehouseBusy,
        accounts_path,
        load_accounts,
        session_secret,
        status_of,
        verify_password,
        worklist,
    )
    from tasks.care.export import LANGUAGES, Wording

    settings = settings or get_settings()
    cfg = settings.board
    wording = Wording.from_settings(settings)
    store = BoardStore(settings, wording, run_date=run_date, now=now)
    with contextlib.suppress(WarehouseBusy):  # another process holds the file: the first page waits for it
        store.day()  # load the day now, not on the first agent's request
    templates = Jinja2Templates(directory=str(cfg.phrases_dir / "templates"))
    zone = wording.zone
    accounts_cache: dict[str, Any] = {"mtime": object(), "accounts": {}}

    def accounts() -> dict[str, Any]:
        """Re-read when the file changes, so an account added with the CLI works without a restart."""
        path = accounts_path(settings)
        mtime = path.stat().st_mtime_ns if path.exists() else None
        if mtime != accounts_cache["mtime"]:
            accounts_cache.update(mtime=mtime, accounts=load_accounts(settings))
        return accounts_cache["accounts"]

    def local(ts: Any, fmt: str = "%Y-%m-%d %H:%M") -> str:
        if ts is None or (not isinstance(ts, str) and pd.isna(ts)):
            return ""
        stamp = pd.Timestamp(ts)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
        return stamp.tz_convert(zone).strftime(fmt)

    def words(code: Any) -> str:
        return "" if code is None or (isinstance(code, float) and pd.isna(code)) else str(code).replace("_", " ")

    templates.env.filters.update(local=local, words=words)

    def csrf(request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    def csrf_ok(request: Request, token: str | None) -> bool:
        expected = request.session.get("csrf")
        return bool(expected and token and hmac.compare_digest(str(expected), str(token)))

    def signed_in(request: Request) -> tuple[str, Any] | None:
        user = request.session.get("user")
        account = accounts().get(user) if user else None
        return (user, account) if account is not None else None

    def ui_lang(request: Request, account: Any = None) -> str:
        lang = request.session.get("lang") or (account.language if account else cfg.default_language)
        return lang if lang in wording.phrases else "en"

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        who = signed_in(request)
        lang = ui_lang(request, who[1] if who else None)
        t = wording.phrases[lang]
        try:
            day = store.day() if who else None
        except WarehouseBusy:
            day = None
        notice = day.notice.text(t) if day is not None and day.notice is not None else None
        flash = request.session.pop("flash", None)
        return templates.TemplateResponse(request, name, {
            "t": t, "ui_lang": lang, "user": who[0] if who else None, "account": who[1] if who else None,
            "csrf": csrf(request), "day": day, "notice": notice, "flash": flash, "zone": str(zone.key),
            "languages": {code: wording.phrases[code].language_name for code in wording.phrases},
            "wording": wording, **context}, status_code=status)

    def refuse(request: Request) -> HTMLResponse:
        return page(request, "message.html", 403, message_key="forbidden")

    def back(path: str) -> RedirectResponse:
        return RedirectResponse(path, status_code=303)

    def flash(request: Request, key: str, **fields: Any) -> None:
        who = signed_in(request)
        request.session["flash"] = wording.phrases[ui_lang(request, who[1] if who else None)].t(key, **fields)

    def name_of(user: str | None) -> str:
        account = accounts().get(user) if user else None
        return account.name if account is not None else (user or "")

    app = FastAPI(title="aftersales care board", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def log_and_harden(request: Request, call_next: Any) -> Response:
        """Security headers on every answer; one log line per request without ids or personal data."""
        start = time.perf_counter()
        route = "-"
        try:
            response = await call_next(request)
        except WarehouseBusy:
            response = page(request, "message.html", 503, message_key="busy")
        except Exception as exc:  # the type only: a message or traceback could carry a customer's data
            route = getattr(request.scope.get("route"), "path", "-")
            LOG.error("%s %s failed: %s", request.method, route, type(exc).__name__)
            response = HTMLResponse("Internal error", status_code=500)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        route = getattr(request.scope.get("route"), "path", route)
        LOG.info("%s %s %s %.0f ms", request.method, route, response.status_code, (time.perf_counter() - start) * 1e3)
        return response

    app.add_middleware(SessionMiddleware, secret_key=session_secret(settings), session_cookie="aftersales_board",
                       max_age=int(cfg.session_hours * 3600), same_site="lax", https_only=cfg.https_only)
    app.mount("/static", StaticFiles(directory=str(cfg.phrases_dir / "static")), name="static")

    # ---- signing in ------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return page(request, "login.html")

    @app.post("/login", response_model=None)
    def login(request: Request, user: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
              csrf_token: Annotated[str, Form()] = "") -> Response:
        if not csrf_ok(request, csrf_token):
            return refuse(request)
        account = verify_password(accounts(), user.strip(), password)
        if account is None:
            return page(request, "login.html", 401, error=True)
        request.session.clear()  # a fresh session and token at every sign-in
        request.session.update(user=user.strip(), csrf=secrets.token_urlsafe(32), lang=account.language)
        return back("/tasks")

    @app.post("/logout", response_model=None)
    def logout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
        if not csrf_ok(request, csrf_token):
            return refuse(request)
        request.session.clear()
        return back("/login")

    @app.post("/language", response_model=None)
    def language(request: Request, lang: Annotated[str, Form()] = "en", csrf_token: Annotated[str, Form()] = "",
                 next_path: Annotated[str, Form(alias="next")] = "/tasks") -> Response:
        if not csrf_ok(request, csrf_token):
            return refuse(request)
        if lang in wording.phrases:
            request.session["lang"] = lang
        return back(next_path if next_path.startswith("/") and not next_path.startswith("//") else "/tasks")

    # ---- the list --------------------------------------------------------------------------
    @app.get("/", response_model=None)
    def home() -> Response:
        return back("/tasks")

    @app.get("/tasks", response_model=None)
    def tasks(request: Request, queue: str = "", risk: str = "", language: str = "", status: str = "",
              page_no: Annotated[int, Query(alias="page")] = 1) -> Response:
        who = signed_in(request)
        if who is None:
            return back("/login")
        user, account = who
        filters = Filters(queue=queue, risk=risk, language=language if language in LANGUAGES else "",
                          status=status if status in STATUSES else "")
        day = store.day()
        now = store.now()
        rows, counts = worklist(day, account, user, filters, now)
        size = max(cfg.page_size, 1)
        pages = max(1, -(-len(rows) // size))
        current = min(max(page_no, 1), pages)
        shown = [(task, status_of(day, task, now)) for task in rows[(current - 1) * size: current * size]]
        queues = [q for q in day.queues if account.role == "lead" or q in account.queues]
        query = {k: v for k, v in {"queue": filters.queue, "risk": filters.risk, "language": filters.language,
                                   "status": filters.status}.items() if v}
        return page(request, "tasks.html", rows=shown, counts=counts, filters=filters, queues=queues,
                    statuses=STATUSES, risks=list(wording.catalogue.risks), page_no=current, pages=pages,
                    total=len(rows), query=urlencode(query), name_of=name_of)

    # ---- one task --------------------------------------------------------------------------
    def task_or_none(request: Request, task_id: str) -> tuple[str, Any, dict[str, Any]] | None:
        who = signed_in(request)
        if who is None:
            return None
        task = store.task(who[1], task_id)
        return (who[0], who[1], task) if task is not None else None

    @app.get("/tasks/{task_id}", response_model=None)
    def task_page(request: Request, task_id: str) -> Response:
        if signed_in(request) is None:
            return back("/login")
        found = task_or_none(request, task_id)
        if found is None:
            return page(request, "message.html", 404, message_key="not_found")
        _user, account, task = found
        day = store.day()
        state = status_of(day, task, store.now())
        recorded = [{**o, "label": STORED_TO_BOARD.get(o["outcome"], o["outcome"])} for o in state["outcomes"]]
        people = {u: a.name for u, a in accounts().items()
                  if a.role == "lead" or task["queue"] in a.queues}
        return page(request, "task.html", task=task, state=state, recorded=recorded,
                    history=day.history.get(task["customer_id"], {}), outcomes=list(BOARD_OUTCOMES),
                    holder_name=name_of(state["holder"]), people=people,
                    service=wording.tag_service(task["tag_codes"], ui_lang(request, account)))

    def after_write(request: Request, task_id: str, change: Change, done_key: str | None = None,
                    **fields: Any) -> Response:
        if change.refused == "taken":
            flash(request, "taken", name=name_of(change.holder))
        elif change.refused == "not_lead":
            flash(request, "not_allowed")
        elif done_key:
            flash(request, done_key, **fields)
        return back(f"/tasks/{task_id}")

    def posted(request: Request, task_id: str, token: str) -> tuple[str, Any, dict[str, Any]] | Response:
        """The signed-in person and the task, or the answer that refuses the post."""
        if signed_in(request) is None:
            return back("/login")
        if not csrf_ok(request, token):
            return refuse(request)
        found = task_or_none(request, task_id)
        return found if found is not None else page(request, "message.html", 404, message_key="not_found")

    @app.post("/tasks/{task_id}/claim", response_model=None)
    def claim(request: Request, task_id: str, csrf_token: Annotated[str, Form()] = "") -> Response:
        found = posted(request, task_id, csrf_token)
        if isinstance(found, Response):
            return found
        user, account, task = found
        return after_write(request, task_id, store.claim(account, user, task))

    @app.post("/tasks/{task_id}/release", response_model=None)
    def release(request: Request, task_id: str, csrf_token: Annotated[str, Form()] = "") -> Response:
        found = posted(request, task_id, csrf_token)
        if isinstance(found, Response):
            return found
        user, account, task = found
        return after_write(request, task_id, store.release(account, user, task))

    @app.post("/tasks/{task_id}/assign", response_model=None)
    def assign(request: Request, task_id: str, csrf_token: Annotated[str, Form()] = "",
               to: Annotated[str, Form()] = "") -> Response:
        found = posted(request, task_id, csrf_token)
        if isinstance(found, Response):
            return found
        user, account, task = found
        target = to.strip() or None
        if target is not None and target not in accounts():
            return page(request, "message.html", 404, message_key="not_found")
        change = store.assign(account, user, task, target)
        return after_write(request, task_id, change, "assigned", name=name_of(target) or "-")

    @app.post("/tasks/{task_id}/outcome", response_model=None)
    def outcome(request: Request, task_id: str, csrf_token: Annotated[str, Form()] = "",
                outcome: Annotated[str, Form()] = "", note: Annotated[str, Form()] = "") -> Response:
        found = posted(request, task_id, csrf_token)
        if isinstance(found, Response):
            return found
        user, account, task = found
        if outcome not in BOARD_OUTCOMES:
            return page(request, "message.html", 404, message_key="not_found")
        change = store.record(account, user, task, outcome, note[:2000])
        t = wording.phrases[ui_lang(request, account)]
        key = "saved" if change.changed else "already_saved"
        return after_write(request, task_id, change, key, outcome=t.outcomes[outcome])

    return app


# ---- the command -----------------------------------------------------------------------------
board_cli = typer.Typer(help="The care team's board: a web page to work the day's list and record outcomes.",
                        add_completion=False)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@board_cli.callback(invoke_without_command=True)
def board(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="interface to bind (default: settings, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: settings)")] = None,
    run_date: Annotated[datetime | None, typer.Option("--date", help="show this day's list (default: the latest)")]
    = None,
) -> None:
    """Serve the board (agents sign in with accounts made by `aftersales board add-account`)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from schemas.settings import get_settings
    from tasks.care.board import load_accounts

    settings = get_settings()
    host = host or settings.board.host
    port = port or settings.board.port
    if not load_accounts(settings):
        typer.echo("No accounts yet: add one first, e.g.\n  aftersales board add-account lead --role lead", err=True)
        raise typer.Exit(2)
    if not _is_loopback(host):
        typer.echo(f"Listening on {host}, not only this machine: put it behind HTTPS (and set "
                   "board.https_only) before agents use it over a network.", err=True)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    app = create_app(settings, run_date=run_date.date() if run_date else None)
    typer.echo(f"care board on http://{host}:{port}/ (Ctrl+C to stop)")
    # uvicorn's own access log prints paths with ids and query strings: off; the app logs route templates
    uvicorn.run(app, host=host, port=port, access_log=False, server_header=False, log_level="info")


@board_cli.command("add-account")
def add_account_command(
    user: Annotated[str, typer.Argument(help="user name (one word)")],
    role: Annotated[str, typer.Option(help="agent or lead")] = "agent",
    queues: Annotated[list[str] | None, typer.Option("--queue", help="a queue the agent works; repeatable")] = None,
    language: Annotated[str, typer.Option(help="interface language: en or zh")] = "en",
    name: Annotated[str | None, typer.Option(help="name shown on the board")] = None,
    password_stdin: Annotated[bool, typer.Option(help="read the password from standard input")] = False,
) -> None:
    """Add (or replace) an account; the password is asked for twice and stored only as an argon2 hash."""
    import sys

    from schemas.settings import get_settings
    from tasks.care.board import AccountError, add_account

    if role not in ("agent", "lead") or language not in ("en", "zh"):
        typer.echo("--role is agent or lead; --language is en or zh", err=True)
        raise typer.Exit(2)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        path = add_account(get_settings(), user, password, role=role, queues=queues, language=language, name=name)
    except AccountError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"account {user} ({role}{', queues ' + ', '.join(queues) if queues else ''}) saved in {path}")


@board_cli.command("accounts")
def list_accounts() -> None:
    """List the board's accounts (never their password hashes)."""
    from schemas.settings import get_settings
    from tasks.care.board import load_accounts

    for user, account in sorted(load_accounts(get_settings()).items()):
        typer.echo(f"{user}\t{account.role}\t{','.join(account.queues) or '-'}\t{account.language}\t{account.name}")

