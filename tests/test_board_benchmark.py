"""The board benchmark's smoke mode runs end to end and prints its figures (no timing is asserted here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_board_benchmark_smoke_prints_percentiles(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "benchmarks/board.py", "--smoke", "--keep", str(tmp_path / "bench")],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"kind\s+n\s+p50 ms\s+p95 ms\s+p99 ms", out), out
    for kind in ("list \\(lead\\)", "task page", "all pages"):
        assert re.search(rf"{kind}\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+", out), (kind, out)
    day = re.search(r"([\d,]+) tasks on the day; 1\d\d requests", out)
    assert day and day.group(1) == "150", out  # the day holds exactly the tasks asked for (--smoke: 150)
    assert "pages p95" in out and "200 ms target" in out
    log = (tmp_path / "bench" / "board.log").read_text()
    assert "GET /tasks/{task_id} 200" in log and "Traceback" not in log
