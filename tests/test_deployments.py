"""deploy/prefect.yaml is valid for Prefect 3.8.8 and deploys to a real Prefect API as written.

The static checks read the YAML itself (not only through ``flows.deployments``), so a loader bug
cannot hide a bad file. The API tests apply the deployments to the session's real test server:
once as ``aftersales serve`` builds them (``flow.to_deployment``) and once with ``prefect deploy``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.deployments import PREFECT_FILE, PROJECT_DIR, DeploymentFileError, load_deployments

RAW: dict[str, Any] = yaml.safe_load(PREFECT_FILE.read_text(encoding="utf-8"))
DEPLOYMENTS: list[dict[str, Any]] = RAW["deployments"]
NAMES = [d["name"] for d in DEPLOYMENTS]


@pytest.fixture(scope="module")
def entrypoint_flows() -> Iterator[dict[str, Any]]:
    """Each deployment's flow, loaded the way a Prefect worker loads it: the entrypoint path from the
    project directory, no placeholder flow if an import fails. The loader leaves the script's folder
    on sys.path and its module in sys.modules; both are put back afterwards."""
    from prefect.flows import load_flow_from_entrypoint

    path, modules = list(sys.path), set(sys.modules)
    here = Path.cwd()
    try:
        os.chdir(PROJECT_DIR)
        yield {d["name"]: load_flow_from_entrypoint(d["entrypoint"], use_placeholder_flow=False)
               for d in DEPLOYMENTS}
    finally:
        os.chdir(here)
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            if "." not in name and (name.startswith("__prefect_loader") or
                                    (PROJECT_DIR / "flows" / f"{name}.py").exists()):
                del sys.modules[name]


def test_file_passes_prefects_own_model() -> None:
    """The model `prefect deploy` validates the file with (a failure there only prints and skips)."""
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(RAW)
    assert [d.name for d in model.deployments] == NAMES
    assert all(d.work_pool and d.work_pool.name == "aftersales" for d in model.deployments)


@pytest.mark.parametrize("name", NAMES)
def test_entrypoint_flow_accepts_the_parameters(name: str, entrypoint_flows: dict[str, Any]) -> None:
    raw = next(d for d in DEPLOYMENTS if d["name"] == name)
    flow = entrypoint_flows[name]
    params = raw.get("parameters") or {}
    flow.validate_parameters(params)
    for schedule in raw.get("schedules") or []:
        flow.validate_parameters({**params, **(schedule.get("parameters") or {})})
    # `aftersales serve` imports the same flow by module path
    spec = load_deployments(names=[name])[0]
    assert spec.import_flow().name == flow.name


def test_schedules_are_utc_crons_with_unique_slugs() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    slugs = []
    for d in DEPLOYMENTS:
        assert d.get("schedules"), f"{d['name']} has no schedule"
        for s in d["schedules"]:
            assert set(s) <= {"cron", "timezone", "slug", "active", "parameters"}, s
            assert s["timezone"] == "UTC", f"{d['name']}: {s}"
            CronSchedule(cron=s["cron"], timezone=s["timezone"])  # raises on a bad cron
            slugs.append(s["slug"])
    assert all(slugs) and len(set(slugs)) == len(slugs), slugs


def test_scoring_runs_one_at_a_time() -> None:
    score = next(d for d in DEPLOYMENTS if d["entrypoint"] == "flows/score.py:score_flow")
    assert score["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


def test_monitor_deployment_iff_monitor_flow() -> None:
    assert ("daily-monitor" in NAMES) == (PROJECT_DIR / "flows" / "monitor.py").is_file()


@pytest.mark.parametrize("schedule, error", [
    ({"cron": "0 6 * * *", "timezone": "Europe/Berlin", "slug": "a"}, "timezone must be 'UTC'"),
    ({"cron": "0 6 * * *", "timezone": "UTC"}, "needs a slug"),
    ({"cron": "0 25 * * *", "timezone": "UTC", "slug": "a"}, "invalid cron"),
    ({"interval": 3600, "timezone": "UTC", "slug": "a"}, "only cron schedules"),
])
def test_loader_rejects_what_prefect_or_we_would_not_want(tmp_path: Path, schedule: dict[str, Any],
                                                          error: str) -> None:
    bad = {"deployments": [{"name": "x", "entrypoint": "flows/score.py:score_flow", "schedules": [schedule]}]}
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(DeploymentFileError, match=error):
        load_deployments(path)


def test_loader_rejects_duplicate_slugs_and_missing_entrypoints(tmp_path: Path) -> None:
    schedule = {"cron": "0 6 * * *", "timezone": "UTC", "slug": "same"}
    twice = {"deployments": [{"name": n, "entrypoint": "flows/score.py:score_flow", "schedules": [schedule]}
                             for n in ("a", "b")]}
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(twice), encoding="utf-8")
    with pytest.raises(DeploymentFileError, match="slugs must be unique"):
        load_deployments(path)
    path.write_text(yaml.safe_dump({"deployments": [{"name": "a", "entrypoint": "flows/nope.py:f"}]}),
                    encoding="utf-8")
    with pytest.raises(DeploymentFileError, match="does not exist"):
        load_deployments(path)


def _check_on_server(expected_pool: str | None) -> None:
    """Every deployment of the file exists on the API with its schedules, parameters and limit."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for spec in load_deployments():
            flow = spec.import_flow()
            stored = client.read_deployment_by_name(f"{flow.name}/{spec.name}")
            assert stored.work_pool_name == expected_pool
            assert stored.parameters == spec.parameters
            assert stored.global_concurrency_limit and stored.global_concurrency_limit.limit == spec.concurrency_limit
            assert stored.concurrency_options and stored.concurrency_options.collision_strategy == "ENQUEUE"
            got = sorted((s.slug, s.schedule.cron, s.schedule.timezone, s.active) for s in stored.schedules)
            assert got == sorted((s.slug, s.cron, "UTC", True) for s in spec.schedules)


def test_served_deployments_apply_to_a_real_api(prefect_api: None) -> None:
    """What `aftersales serve` registers; applying twice keeps one schedule per slug."""
    for _ in range(2):
        for spec in load_deployments():
            spec.to_deployment().apply()
    _check_on_server(expected_pool=None)


def test_prefect_deploy_all_with_the_file(prefect_api: None, entrypoint_flows: dict[str, Any]) -> None:
    """`prefect --no-prompt deploy --all --prefect-file deploy/prefect.yaml`, in-process, to the real API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.testing.cli import invoke_and_assert

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name="aftersales", type="process"))
    for _ in range(2):  # a second deploy updates by slug instead of adding schedules
        invoke_and_assert(["--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE)],
                          expected_output_contains=[f"/{n}' successfully created" for n in NAMES],
                          temp_dir=str(PROJECT_DIR), echo=False)
    _check_on_server(expected_pool="aftersales")


def test_monitor_retrains_through_a_deployment_of_this_file(entrypoint_flows: dict[str, Any]) -> None:
    """The monitor starts `monitoring.retrain_deployment` on a server: it must be one of ours."""
    from schemas.settings import Settings

    names = {f"{flow.name}/{name}" for name, flow in entrypoint_flows.items()}
    assert Settings().monitoring.retrain_deployment in names


def test_serve_refuses_without_a_server(tmp_path: Path) -> None:
    """Cron never fires on a temporary server: `aftersales serve` says so and exits instead of idling."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path),
                                                                             "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "serve"], cwd=PROJECT_DIR, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "PREFECT_API_URL is not set" in done.stderr and "prefect server start" in done.stderr


def test_compose_binds_to_loopback_with_auth_and_no_default_secrets() -> None:
    """Issue 16.4: nothing published on all interfaces, both UIs behind auth, no password in the file."""
    import re

    text = (PROJECT_DIR / "deploy" / "compose.yaml").read_text(encoding="utf-8")
    compose = yaml.safe_load(text)
    published = [port for service in compose["services"].values() for port in service.get("ports") or []]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published), published
    assert "PREFECT_SERVER_API_AUTH_STRING" in compose["services"]["prefect-server"]["environment"]
    assert "--app-name basic-auth" in compose["services"]["mlflow"]["command"]
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "PREFECT_API_AUTH_STRING"):
        uses = re.findall(r"\$\{" + secret + r"(:[?-][^}]*)?\}", text)
        assert uses and all(u.startswith(":?") for u in uses), f"{secret} must come from the environment"
    assert "change-me" not in text and "POSTGRES_PASSWORD: mlflow" not in text


def test_prefect_basic_auth_refuses_strangers_on_a_real_server(tmp_path: Path) -> None:
    """The auth switch compose.yaml uses, on a real `prefect server start` bound to 127.0.0.1."""
    import socket
    import subprocess
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(tmp_path), "PREFECT_SERVER_API_AUTH_STRING": "aftersales:s3cret",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def status(auth: bool) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/flows/filter", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        if auth:
            import base64

            request.add_header("Authorization", "Basic " + base64.b64encode(b"aftersales:s3cret").decode())
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if status(True) == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the Prefect server did not start"
            time.sleep(1)
        assert status(False) == 401
    finally:
        server.send_signal(2)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def test_the_deploy_step_refuses_without_an_inbox(tmp_path: Path) -> None:
    """Issue 14.5: daily-ingest's inbox is a setting checked at deploy time, in one line."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERSALES_PREFECT__")} | {
        "AFTERSALES_PATHS__HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "deploy"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "prefect.inbox is not set" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    missing = env | {"AFTERSALES_PREFECT__INBOX": str(tmp_path / "nowhere")}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "deploy"], cwd=tmp_path, env=missing,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is not a folder" in done.stderr


def test_automations_and_limits_are_created_once_on_a_real_api(prefect_api: None) -> None:
    """Issue 14.6: the deploy step makes an Apprise notification block and the automations that
    notify of flagged/held lists; running it twice keeps one of each."""
    from prefect.client.orchestration import get_client

    from flows.deployments import ensure_automations

    for _ in range(2):
        names = ensure_automations("json://127.0.0.1:9/aftersales")  # nothing listens: only stored here
    assert names == ["aftersales task list flagged or held", "aftersales flow run failed"]
    with get_client(sync_client=True) as client:
        flagged = client.read_automations_by_name(names[0])
        assert len(flagged) == 1
        assert set(flagged[0].trigger.expect) == {"aftersales.task-list.flag", "aftersales.task-list.hold"}
        assert flagged[0].actions[0].type == "send-notification"
    assert ensure_automations(None) == []
