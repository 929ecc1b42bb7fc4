"""Every script in benchmarks/ runs in its --smoke mode (tiny sizes), so none can rot unnoticed.

``benchmarks/score.py`` stopped running on main once (ImportError after a rename) and nobody saw it
(issue 11.17). This test finds the scripts by listing the folder: a new benchmark is covered the
day it is added, and must offer ``--smoke``. Only that it runs and prints its figures is checked;
speed targets are the scripts' own business.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))
# scripts whose smoke run has its own test asserting its figures (run once, not twice)
OWN_SMOKE_TEST = {"ingest.py": "test_ingest_benchmark.py"}


def test_there_are_benchmarks() -> None:
    assert {p.name for p in BENCHMARKS} >= {"generate.py", "ingest.py", "score.py", "train.py"}
    for script, test in OWN_SMOKE_TEST.items():  # smoke runs checked elsewhere must be checked somewhere
        assert (Path(__file__).parent / test).exists(), script


@pytest.mark.parametrize("script", [p for p in BENCHMARKS if p.name not in OWN_SMOKE_TEST], ids=lambda p: p.name)
def test_benchmark_runs_in_smoke_mode(script: Path, tmp_path: Path) -> None:
    assert "--smoke" in script.read_text(encoding="utf-8"), f"{script.name} needs a --smoke mode"
    # the session's settings stay out, its thread share (conftest.py, under pytest-xdist) stays in
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AFTERSALES_") or k.endswith(("__NTHREAD", "THREADS"))} | {
        "AFTERSALES_PATHS__HOME": str(tmp_path / "home"), "PYTHONPATH": str(script.parents[1]),
        # smoke figures mean nothing: the cheapest training that still has an older origin to tune on
        "AFTERSALES_SPLIT__MAX_CUTOFFS": "90", "AFTERSALES_SPLIT__BACKTEST_ORIGINS": "2",
        "AFTERSALES_TRAINING__GRID": '[{"max_depth": 2, "learning_rate": 0.1, "min_leaf_share": 0.01}]',
        "AFTERSALES_TRAINING__BOOTSTRAP_RESAMPLES": "100"}
    done = subprocess.run([sys.executable, str(script), "--smoke"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "Traceback" not in done.stderr
    assert any(ch.isdigit() for ch in done.stdout), "a benchmark prints figures"
