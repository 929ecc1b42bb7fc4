"""Shared fixtures: a throw-away Prefect API, MLflow store and warehouse per test session.

Real parts only: flows run against Prefect's test harness (a real, temporary API server),
MLflow against a SQLite registry in a temp dir, the warehouse in a real DuckDB file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="aftersales-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_HOME / "prefect"))
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    # .ci/run runs the suite on pytest-xdist workers: each gets its own Prefect home (database, profiles),
    # so no two processes share one SQLite file; the MLflow stores and warehouses are per test already
    os.environ["PREFECT_HOME"] = str(Path(os.environ["PREFECT_HOME"]) / worker)
    # ...and its share of the cores: XGBoost's OpenMP threads spin while they wait, so two workers each
    # fitting on every core took twice the CPU of one (ci run of 91f99c2: 6,814 s of tests in 3,482 s
    # wall on 2 cores, against 3,425 s serial). Commands the tests start as subprocesses inherit it.
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    for _name in ("AFTERSALES_TRAINING__XGB__NTHREAD", "AFTERSALES_WAREHOUSE__THREADS",
                  "AFTERSALES_SPLIT__FRAME_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_name, str(_share))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("DISABLE_PANDERA_IMPORT_WARNING", "True")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.pop("PREFECT_API_URL", None)
# Order models take daily cutoffs, the newest split.max_cutoffs of them (150): feature SQL per cutoff
# made every trained test shop cost minutes. The suite keeps 120 (four origins of 14 days, purged by a
# 45-day horizon, still fit); tests about the cap set their own value. README figures: the default.
os.environ.setdefault("AFTERSALES_SPLIT__MAX_CUTOFFS", "120")
os.environ.pop("AFTERSALES_CONFIG", None)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One real temporary Prefect API for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings pointing every path at a fresh temp folder (warehouse, MLflow, reports)."""
    from schemas.settings import Settings, reset_settings_cache

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AFTERSALES_PATHS__HOME", str(tmp_path / "home"))
    reset_settings_cache()
    yield Settings()
    reset_settings_cache()
