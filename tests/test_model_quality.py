"""Model behaviour on the synthetic shop: each model against its baselines on the same test window
(the newest rolling origin, scored by models trained before it), and the planted drivers among what
the model relies on. Directions and relations, not exact numbers."""

from __future__ import annotations

import pytest

from flows.train import fit_model
from schemas.settings import Settings
from tasks.data.ingest import ingest_batch
from tasks.data.synthetic import generate_shop
from tasks.data.warehouse import Warehouse
from tasks.models.evaluation import classification_metrics

CUSTOMERS = 12_000  # big enough for a test window with >100 positives per order model
PLANTED_DRIVERS = {
    # see docs/synthetic-shop.md: return-policy views, size charts not viewed, product and past return rates
    "return": {"return_policy_views_before", "return_policy_views_after", "size_sensitive_items_unviewed",
               "max_product_return_rate", "customer_return_rate", "customer_past_returns"},
    # the late carrier drives bad reviews
    "negative_review": {"is_late", "days_late", "carrier_late_rate", "carrier"},
    # unresolved / escalated tickets and bad reviews drive churn
    "churn": {"bad_reviews", "days_since_bad_experience", "escalated_tickets", "unresolved_tickets",
              "mean_review_score"},
}


@pytest.fixture(scope="module")
def settings_for_shop(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("quality")
    generate_shop(home / "data", customers=CUSTOMERS, seed=11)
    wh = Warehouse(home / "warehouse.duckdb")
    ingest_batch(home / "data", wh, Settings())
    wh.close()
    return Settings(paths={"home": home, "warehouse": home / "warehouse.duckdb"})


@pytest.fixture(scope="module")
def evaluated(settings_for_shop: Settings) -> dict[str, dict]:
    out = {}
    for model in ("return", "negative_review", "churn"):
        fit = fit_model(model, settings_for_shop)
        assert fit.registrable, fit.refusal
        splits, trained, scores = fit.splits, fit.trained, fit.splits.test_scores
        metrics = {name: classification_metrics(splits.y_test, p, 200) for name, p in scores.items()}
        drivers = (trained.contributions(splits.X_test).drop(columns="bias").abs().mean()
                   .sort_values(ascending=False))
        out[model] = {"metrics": metrics, "drivers": list(drivers.index), "positives": int(splits.y_test.sum()),
                      "intervals": fit.intervals.set_index(["scorer", "metric"])}
    return out


def test_churn_model_beats_both_baselines(evaluated: dict) -> None:
    m = evaluated["churn"]["metrics"]
    for metric in ("roc_auc", "pr_auc"):
        assert m["model"][metric] > m["baseline_logreg"][metric], (metric, m)
        assert m["model"][metric] > m["baseline_rule"][metric], (metric, m)


def test_return_model_beats_the_rule_and_is_no_worse_than_the_logistic_baseline(evaluated: dict) -> None:
    """The planted return drivers multiply hazards (close to additive in log-odds): on ~1,000 test orders
    (~250 returns) the trees and a logistic regression tie (ROC-AUC .773 vs .776, paired difference
    -.003 [-.017, +.011] at 95 %). The rule is beaten clearly; the logistic regression must not be better
    beyond the paired interval (its upper end above zero), nor by more than .02 ROC-AUC."""
    m, intervals = evaluated["return"]["metrics"], evaluated["return"]["intervals"]
    for metric in ("roc_auc", "pr_auc"):
        assert m["model"][metric] > m["baseline_rule"][metric] + 0.03, (metric, m)
        difference = intervals.loc[("model-baseline_logreg", metric)]
        assert difference["high"] > 0 and difference["value"] > -0.02, (metric, difference.to_dict())


def test_negative_review_model_beats_the_rule_and_matches_the_logistic_baseline(evaluated: dict) -> None:
    """On this shop the review signal is close to additive (lateness), so a logistic regression on the
    same features is as good as the trees: within the noise of ~150 test positives, not better."""
    m = evaluated["negative_review"]["metrics"]
    assert evaluated["negative_review"]["positives"] >= 100
    for metric in ("roc_auc", "pr_auc"):
        assert m["model"][metric] > m["baseline_rule"][metric], (metric, m)
    assert m["model"]["roc_auc"] > m["baseline_logreg"]["roc_auc"] - 0.02, m
    assert m["model"]["pr_auc"] > m["baseline_logreg"]["pr_auc"] - 0.04, m


@pytest.mark.parametrize("model", ["return", "negative_review", "churn"])
def test_planted_drivers_are_among_the_top_features(evaluated: dict, model: str) -> None:
    top = evaluated[model]["drivers"][:10]
    found = PLANTED_DRIVERS[model] & set(top)
    assert found, (model, top)


def test_calibrated_probabilities_are_no_worse_than_raw(evaluated: dict) -> None:
    for model, result in evaluated.items():
        m = result["metrics"]
        assert m["model"]["brier"] <= m["model_raw"]["brier"] + 1e-3, (model, m["model"], m["model_raw"])


def test_top_k_lift_is_real(evaluated: dict) -> None:
    for model, result in evaluated.items():
        assert result["metrics"]["model"]["lift_at_k"] > 1.0, model

