"""The ingestion benchmark runs at a tiny size, so it cannot rot (figures: benchmarks/ingest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ingest_benchmark_smoke() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ingest.py"), "--smoke"], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for label in ("read only (Arrow batches)", "bare DuckDB load", "validated ingestion", "ratio to reading alone",
                  "peak memory"):
        assert label in out, label
    assert "identical: yes" in out, "the quarantine holds exactly the planted dirty rows"
    assert "re-run changed                           0 rows" in out
