"""The features benchmark runs end to end in its smoke mode (a tiny generated shop)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_features_benchmark_smoke() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "features.py"), "--smoke"],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    for model in ("return", "negative_review", "churn"):
        assert f"== {model}:" in done.stdout, done.stdout
    assert "rows per entity" in done.stdout and "one feature query over every entity" in done.stdout
