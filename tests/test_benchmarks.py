"""Every script in benchmarks/ runs in its --smoke mode (tiny sizes), so none can rot unnoticed.

``benchmarks/score.py`` stopped running on main once (ImportError after a rename) and nobody saw it
(issue 11.17). This test finds the scripts by listing the folder: a new benchmark is covered the
day it is added, and must offer ``--smoke``. Only that it runs and prints its figures is checked;
speed targets are the scripts' own business.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

BENCHMARKS = sorted(p for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")
                    if not p.name.startswith("_"))  # _children.py: a helper the scripts share
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


def test_a_benchmarks_child_ends_with_its_parent() -> None:
    """A benchmark killed mid-setup must not leave its spawned child training on the shared cores."""
    root = Path(__file__).resolve().parents[1]
    code = "import time; from benchmarks._children import in_child; in_child(time.sleep, 300)"
    parent = subprocess.Popen([sys.executable, "-c", code], env=os.environ | {"PYTHONPATH": str(root)})
    try:
        spawned: list = []
        for _ in range(600):  # the child is up once it runs spawn_main
            spawned = [c for c in psutil.Process(parent.pid).children()
                       if "spawn_main" in " ".join(c.cmdline())]
            if spawned:
                break
            time.sleep(0.1)
        assert spawned, "the parent never started its child"
        time.sleep(1.0)  # the child is past its imports and sleeping in target
        parent.kill()
        parent.wait()
        _, alive = psutil.wait_procs(spawned, timeout=30)
        assert not alive, f"child {[c.pid for c in alive]} outlived its killed parent"
    finally:
        parent.kill()
        for child in spawned:  # a failed run leaves no sleeper behind
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
