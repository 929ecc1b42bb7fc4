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


def test_yardstick_definitions_match_the_platform(tmp_path_factory):
    """The yardstick re-implements populations and labels; on a synthetic shop they equal the platform's."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import real_exports
    from shared_shop import shop_copy

    from schemas.settings import Settings
    from tasks.data.warehouse import Warehouse
    from tasks.models.labels import labels

    path, _ = shop_copy(tmp_path_factory, "real-exports")
    tables, _ = real_exports.load_warehouse(path)
    cutoffs = [pd.Timestamp("2026-05-04"), pd.Timestamp("2026-07-13")]
    wh = Warehouse(path)
    try:
        for task in ("churn", "return", "negative_review"):
            key = "customer_id" if task == "churn" else "order_id"
            for cutoff in cutoffs:
                ours = real_exports.population_and_labels(tables, task, cutoff, "platform")
                theirs = labels(wh, task, cutoff, Settings())
                assert len(ours) > 0 and ours["label"].sum() > 0, (task, cutoff)
                merged = ours.assign(k=ours[key].astype(str)).merge(
                    theirs.assign(k=theirs[key].astype(str)), on="k", how="outer", indicator=True)
                assert (merged["_merge"] == "both").all(), (task, cutoff, merged["_merge"].value_counts())
                assert (merged["label_x"] == merged["label_y"]).all(), (task, cutoff)
                if task != "churn":  # the judges' reading for exports without delivery dates runs too
                    judged = real_exports.population_and_labels(tables, task, cutoff, "judge")
                    assert len(judged) > 0 and set(judged["label"]) <= {0, 1}, (task, cutoff)
    finally:
        wh.close()
