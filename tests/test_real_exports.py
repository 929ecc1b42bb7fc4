"""The real-exports yardstick runs on its committed sample and compares both scorers row for row."""

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_real_exports_smoke(tmp_path):
    out = tmp_path / "metrics.csv"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_exports.py"), "--smoke", "--csv", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out)
    both = table[table["rows"] == "both"].set_index("scorer")
    assert set(both.index) == {"platform", "logistic"}
    assert both.loc["platform", "n"] == both.loc["logistic", "n"] > 0
    assert both.loc["platform", "positives"] == both.loc["logistic", "positives"] > 0
    for scorer in both.index:
        for metric in ("roc_auc", "pr_auc", "brier", "p@100", "p@1%"):
            assert math.isfinite(both.loc[scorer, metric]), (scorer, metric)
    assert "not scored by the platform: 0" in done.stdout
