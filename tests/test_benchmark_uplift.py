"""The uplift coverage benchmark runs in its smoke mode and prints a coverage line per unit and action."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_uplift_coverage_benchmark_smoke() -> None:
    out = subprocess.run([sys.executable, "benchmarks/uplift_coverage.py", "--smoke"], cwd=ROOT, capture_output=True,
                         text=True, timeout=900, check=True).stdout
    rows = re.findall(r"^(first assignment per customer|every order \(customer-days\))\s+(\w+)\s+(-?[\d.]+)\s+"
                      r"(\d+)\s+([\d.]+)\s+([\d.]+)", out, flags=re.M)
    assert len(rows) == 6, out
    for unit, _action, _planted, seeds, cover, width in rows:
        assert int(seeds) == 20 and 0.0 <= float(cover) <= 1.0 and float(width) > 0
        if unit.startswith("first"):
            assert float(cover) >= 0.8, out  # 95% nominal; 20 seeds leave room for chance
