"""Promotion by evidence: a paired, customer-clustered bootstrap and a calibration non-inferiority check."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient
from test_registry import MODEL, fitted, reg, register  # noqa: F401 (fixtures)

from tasks.models.registry import alias_history, decide_promotion, paired_bootstrap, promote, resolve_alias
from tests.md_tables import row_starting, table_rows

pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")


def scores(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels from a latent risk; two models that see it through independent noise of equal size."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(risk - 1.2)))).astype(float)
    a = 1 / (1 + np.exp(-(risk + rng.normal(0, noise, n) - 1.2)))
    b = 1 / (1 + np.exp(-(risk + rng.normal(0, noise, n) - 1.2)))
    return y, a, b


def test_a_challenger_no_better_than_noise_is_not_promoted():
    # the single-window point estimate can favour either; the interval must straddle zero
    y, champion, challenger = scores(600, seed=3, noise=0.8)
    groups = np.repeat(np.arange(300), 2)  # each customer at two cutoffs
    gains, calibration = paired_bootstrap(y, champion, challenger, groups, "pr_auc", 400, seed=1)
    decision, low, high, _, _ = decide_promotion(float(np.median(gains)), gains, calibration, 0.005, 0.03, 0.95)
    assert decision == "kept_champion" and low < 0 < high
    assert high - low > 0.05, "PR-AUC on a few hundred rows is this uncertain"


def test_a_clearly_better_but_miscalibrated_challenger_is_not_promoted():
    from sklearn.isotonic import IsotonicRegression

    y, noisy, _ = scores(3000, seed=4, noise=1.5)
    champion = IsotonicRegression(out_of_bounds="clip").fit(noisy, y).predict(noisy)  # weaker, calibrated
    _, _, sharper = scores(3000, seed=4, noise=0.2)
    gains, calibration = paired_bootstrap(y, champion, sharper, None, "pr_auc", 300, seed=2)
    assert decide_promotion(float(np.median(gains)), gains, calibration, 0.005, 0.03, 0.95)[0] == "promoted"
    halved = sharper / 2  # same ranking, every probability halved
    gains, calibration = paired_bootstrap(y, champion, halved, None, "pr_auc", 300, seed=2)
    decision, low, _, cal_low, _ = decide_promotion(float(np.median(gains)), gains, calibration, 0.005, 0.03, 0.95)
    assert low > 0.005 and cal_low > 0.03 and decision == "kept_champion"


def test_the_decision_interval_and_window_reach_history_and_mlflow(reg, fitted):  # noqa: F811
    register(reg, fitted, "bad")
    register(reg, fitted, "good")
    splits = fitted["good"][0]
    groups = np.arange(len(splits.y_test)) // 3
    result = promote(MODEL, reg, splits.X_test, splits.y_test, groups=groups, window="2026-03-01..2026-03-31")
    assert result.promoted and result.interval_low > reg.training.promotion_margin, result.message
    assert result.clusters == groups.max() + 1 and "paired bootstrap interval" in result.message
    name = reg.registered_model_name(MODEL)
    assert str(resolve_alias(name, "champion", reg).version) == "2"
    move = alias_history(reg, name).iloc[-1]
    assert move["reason"] == "promoted" and move["window"] == "2026-03-01..2026-03-31"
    assert move["interval_low"] == pytest.approx(result.interval_low)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.metrics["improvement_interval_low"] == pytest.approx(result.interval_low)
    assert run.data.params["window"] == "2026-03-01..2026-03-31"
    tags = client.get_model_version(name, "2").tags
    assert tags["last_comparison_window"] == "2026-03-01..2026-03-31" and tags["last_comparison_interval"] != "n/a"


def test_promotion_report_sets_champion_and_challenger_side_by_side() -> None:
    import math

    from flows.promote import promotion_markdown
    from tasks.models.registry import PromotionResult

    result = PromotionResult(model=MODEL, registered_model="m", decision="promoted", promoted=True, message="better",
                             metric="roc_auc", margin=0.005, champion_version="1", challenger_version="2",
                             champion_score=0.7512, challenger_score=0.8, champion_metrics={"ece": 0.0123})
    text = promotion_markdown(MODEL, result, 0.95)
    assert table_rows(text)[0] == ["", "version", "roc_auc", "ECE"]
    assert row_starting(text, "champion") == ["champion", "1", "0.7512", "0.0123"]
    assert row_starting(text, "challenger") == ["challenger", "2", "0.8", "n/a"]  # no ECE logged

    first = PromotionResult(model=MODEL, registered_model="m", decision="no_champion", promoted=True, message="first",
                            metric="pr_auc", margin=0.005, challenger_version="1", champion_score=math.nan,
                            challenger_score=0.4, challenger_metrics={"ece": 0.02})
    text = promotion_markdown(MODEL, first, 0.95)
    assert row_starting(text, "champion") == ["champion", "n/a", "n/a", "n/a"]
    assert row_starting(text, "challenger") == ["challenger", "1", "0.4", "0.02"]
