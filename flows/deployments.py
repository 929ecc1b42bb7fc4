"""The deployments of ``deploy/prefect.yaml`` as Python objects.

One reading of the file serves three users, so they cannot drift apart: ``prefect deploy`` (reads the
YAML itself), ``aftersales serve`` (builds the same deployments with ``flow.to_deployment`` and serves
them from one process) and the tests (check entrypoints, parameters, schedules and limits, and apply
the deployments to a real Prefect API).

Why this reads the YAML itself rather than through Prefect (checked on prefect 3.8.8): Prefect has
no public loader of prefect.yaml. ``prefect.deployments.base`` only writes the file; the CLI's reader,
``cli/deploy/_config.py::_load_deploy_configs_and_actions``, is private, validates with the private
``PrefectYamlModel`` that ignores unknown keys (``extra="ignore"``), and on a validation error prints
a warning and carries on with zero deployments. Fed this project's file with a misspelt
``entrypont``, a missing entrypoint file, ``collision_strategy: WHATEVER`` and cron ``61 6 * * *``,
it accepted all four; the loader here refuses each, naming the deployment and the key. Building
uses Prefect's public ``flow.to_deployment``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFECT_FILE = PROJECT_DIR / "deploy" / "prefect.yaml"
AUTOMATIONS_FILE = PROJECT_DIR / "deploy" / "automations.yaml"
NOTIFICATION_BLOCK = "aftersales-notify"
SCHEDULE_TIMEZONE = "UTC"  # local-time crons run twice or not at all when DST changes (Prefect #7381)


class DeploymentFileError(ValueError):
    """prefect.yaml says something Prefect 3 would reject, or that this project does not allow."""


@dataclass(frozen=True)
class ScheduleSpec:
    """One cron schedule; the slug lets ``prefect deploy`` update it in place instead of adding a copy."""

    cron: str
    slug: str
    timezone: str = SCHEDULE_TIMEZONE
    active: bool = True
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_prefect(self) -> Any:
        """The ``prefect.schedules.Cron`` object ``flow.to_deployment(schedules=...)`` takes."""
        from prefect.schedules import Cron

        return Cron(self.cron, timezone=self.timezone, active=self.active, parameters=dict(self.parameters),
                    slug=self.slug)


@dataclass(frozen=True)
class DeploymentSpec:
    """One entry of ``deployments:`` in prefect.yaml, checked."""

    name: str
    entrypoint: str
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: tuple[ScheduleSpec, ...] = ()
    description: str | None = None
    concurrency_limit: int | None = None
    collision_strategy: str | None = None
    work_pool: str | None = None
    work_queue: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def entrypoint_path(self) -> Path:
        return PROJECT_DIR / self.entrypoint.rsplit(":", 1)[0]

    @property
    def module_entrypoint(self) -> str:
        """``flows/score.py:score_flow`` → ``flows.score:score_flow``: importable from any directory."""
        path, func = self.entrypoint.rsplit(":", 1)
        return f"{path.removesuffix('.py').replace('/', '.')}:{func}"

    def import_flow(self) -> Any:
        """The flow object, imported as a module of the installed package (no script loading)."""
        module, func = self.module_entrypoint.split(":")
        return getattr(importlib.import_module(module), func)

    def concurrency(self) -> Any:
        """What ``to_deployment(concurrency_limit=...)`` takes: an int, or a limit with its strategy."""
        if self.concurrency_limit is None or self.collision_strategy is None:
            return self.concurrency_limit
        from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

        return ConcurrencyLimitConfig(limit=self.concurrency_limit,
                                      collision_strategy=ConcurrencyLimitStrategy(self.collision_strategy))

    def to_deployment(self, flow: Any | None = None, parameters: dict[str, Any] | None = None,
                      work_pool: bool = False) -> Any:
        """The same deployment as ``prefect deploy`` makes of this entry, as a ``RunnerDeployment``.

        Without ``work_pool`` it is a served deployment (``aftersales serve`` runs it in-process);
        with it, it is bound to the entry's work pool and queue, like ``prefect deploy``.
        """
        from prefect.deployments.runner import EntrypointType

        flow = flow or self.import_flow()
        return flow.to_deployment(
            name=self.name,
            schedules=[s.to_prefect() for s in self.schedules],
            parameters={**self.parameters, **(parameters or {})},
            concurrency_limit=self.concurrency(),
            description=self.description,
            tags=list(self.tags) or None,
            work_pool_name=self.work_pool if work_pool else None,
            work_queue_name=self.work_queue if work_pool else None,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )


def _schedule(raw: Any, where: str) -> ScheduleSpec:
    if not isinstance(raw, dict) or not raw.get("cron"):
        raise DeploymentFileError(f"{where}: only cron schedules are used here, got {raw!r}")
    unknown = set(raw) - {"cron", "slug", "timezone", "active", "parameters"}
    if unknown:
        raise DeploymentFileError(f"{where}: unknown schedule keys {sorted(unknown)}")
    if raw.get("timezone") != SCHEDULE_TIMEZONE:
        raise DeploymentFileError(f"{where}: timezone must be {SCHEDULE_TIMEZONE!r} (got {raw.get('timezone')!r}); "
                                  "local-time crons double or skip runs when clocks change")
    if not raw.get("slug"):
        raise DeploymentFileError(f"{where}: every schedule needs a slug, or each `prefect deploy` adds a copy")
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=str(raw["cron"]), timezone=raw["timezone"])
    except ValueError as exc:
        raise DeploymentFileError(f"{where}: invalid cron {raw['cron']!r}: {exc}") from exc
    return ScheduleSpec(cron=str(raw["cron"]), slug=str(raw["slug"]), timezone=raw["timezone"],
                        active=bool(raw.get("active", True)), parameters=dict(raw.get("parameters") or {}))


def _deployment(raw: dict[str, Any]) -> DeploymentSpec:
    name = raw.get("name")
    if not name:
        raise DeploymentFileError(f"a deployment without a name: {raw!r}")
    entrypoint = raw.get("entrypoint") or ""
    if entrypoint.count(":") != 1 or not entrypoint.split(":")[0].endswith(".py"):
        raise DeploymentFileError(f"{name}: entrypoint must be <file.py>:<flow function>, got {entrypoint!r}")
    limit = raw.get("concurrency_limit")
    strategy = None
    if isinstance(limit, dict):
        limit, strategy = limit.get("limit"), limit.get("collision_strategy")
        if strategy not in (None, "ENQUEUE", "CANCEL_NEW"):
            raise DeploymentFileError(f"{name}: collision_strategy must be ENQUEUE or CANCEL_NEW, got {strategy!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DeploymentFileError(f"{name}: concurrency limit must be a positive integer, got {limit!r}")
    pool = raw.get("work_pool") or {}
    schedules = tuple(_schedule(s, f"{name}, schedule {i + 1}") for i, s in enumerate(raw.get("schedules") or []))
    spec = DeploymentSpec(name=name, entrypoint=entrypoint, parameters=dict(raw.get("parameters") or {}),
                          schedules=schedules, description=raw.get("description"), concurrency_limit=limit,
                          collision_strategy=strategy, work_pool=pool.get("name"),
                          work_queue=pool.get("work_queue_name"), tags=tuple(raw.get("tags") or ()))
    if not spec.entrypoint_path.is_file():
        raise DeploymentFileError(f"{name}: entrypoint file {spec.entrypoint_path} does not exist")
    return spec


def load_deployments(path: Path = PREFECT_FILE, names: Iterable[str] | None = None) -> list[DeploymentSpec]:
    """Every deployment of the file (or the named ones), checked; errors name the deployment and key."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    specs = [_deployment(raw) for raw in data.get("deployments") or []]
    seen_names = [s.name for s in specs]
    if len(set(seen_names)) != len(seen_names):
        raise DeploymentFileError(f"deployment names must be unique: {seen_names}")
    slugs = [sch.slug for s in specs for sch in s.schedules]
    if len(set(slugs)) != len(slugs):
        raise DeploymentFileError(f"schedule slugs must be unique: {slugs}")
    if names:
        wanted = list(names)
        missing = sorted(set(wanted) - set(seen_names))
        if missing:
            raise DeploymentFileError(f"no deployment named {missing} in {path}; there are {seen_names}")
        specs = [s for s in specs if s.name in wanted]
    return specs


def api_problem(allow_ephemeral: bool = False) -> str | None:
    """Why serving here would not run schedules: no Prefect server configured (unless the embedded,
    scheduler-less one is explicitly allowed), or the configured one does not answer."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return None if allow_ephemeral else "PREFECT_API_URL is not set"
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    return None if error is None else f"the Prefect API at {url} does not answer ({error})"


def on_ephemeral_server() -> bool:
    """True when Prefect would start its own temporary server (no scheduler: cron never fires)."""
    from prefect.settings import PREFECT_API_URL

    return not PREFECT_API_URL.value()


def serve(specs: list[DeploymentSpec], overrides: dict[str, dict[str, Any]] | None = None) -> None:
    """Serve the deployments from this process until interrupted: the scheduler on the server creates
    the runs, this process executes them (in subprocesses, in this working directory and environment)."""
    from prefect import serve as prefect_serve

    overrides = overrides or {}
    deployments = [spec.to_deployment(parameters=overrides.get(spec.name)) for spec in specs]
    prefect_serve(*deployments)


# ------------------------------------------------------------------------------ the deploy step


def ensure_concurrency_limits(settings: Any) -> dict[str, int]:
    """The global concurrency limits every warehouse writer and alias move takes on a server
    (``tasks/locks.py``): ``<prefix>warehouse`` (readers one slot, a writer all) and
    ``<prefix>registry`` (one at a time). Created, or their size corrected; returns name -> limit."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    wanted = {f"{settings.prefect.limit_prefix}warehouse": settings.prefect.warehouse_slots,
              f"{settings.prefect.limit_prefix}registry": 1}
    with get_client(sync_client=True) as client:
        for name, limit in wanted.items():
            try:
                existing = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
                continue
            if existing.limit != limit or not existing.active:
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit, active=True))
    return wanted


def ensure_automations(notify_url: str | None, path: Path = AUTOMATIONS_FILE) -> list[str]:
    """The automations of ``deploy/automations.yaml``, sending to an Apprise notification block made
    from ``notify_url``; replaced by name, so running the deploy step twice keeps one of each."""
    if not notify_url:
        return []
    # AppriseNotificationBlock is an interface in Prefect 3 (it refuses to save). SlackWebhook is its
    # built-in concrete block whose notify hands its URL to Apprise as given, so any Apprise URL works and
    # the server knows the block type when the automation fires.
    from prefect.blocks.notifications import SlackWebhook
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    block_id = SlackWebhook(url=notify_url).save(NOTIFICATION_BLOCK, overwrite=True)
    text = Path(path).read_text(encoding="utf-8").replace("{{ notification_block_id }}", str(block_id))
    names = []
    with get_client(sync_client=True) as client:
        for raw in yaml.safe_load(text)["automations"]:
            automation = AutomationCore.model_validate(raw)
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            client.create_automation(automation)
            names.append(automation.name)
    return names


def inbox_problem(settings: Any) -> str | None:
    """daily-ingest reads the inbox of the settings: it must be a folder where the deploy runs."""
    inbox = settings.prefect.inbox
    if inbox is None:
        return ("prefect.inbox is not set: daily-ingest would have no folder to read at 04:00. Set "
                "AFTERSALES_PREFECT__INBOX (or [prefect] inbox in aftersales.toml) to the folder the exports "
                "arrive in, on the deploying machine and on every worker")
    if not Path(inbox).is_dir():
        return f"prefect.inbox {inbox} is not a folder: create it (or correct the setting) before deploying"
    return None
