"""What moment populations and the newer features cost and bring: build time of training sets over
daily order cutoffs, rows per order, and ROC-AUC with and without the newer features.

For each model: training rows over daily cutoffs (order models) or weekly ones (churn) ending at
the latest cutoff whose labels have matured, built with ``build_training_set`` (the code training
uses) and timed; then a plain time split (the latest ``--test-days`` of cutoffs are the test set,
training stops a label horizon before them) and the same XGBoost (fixed parameters, no tuning) on
all features and on the features without the newer ones (``NEWER``), with the gain share of the
newer features. A yardstick of this branch's features, not the platform's training procedure.

    python benchmarks/features.py --customers 5000           # generate + ingest a shop, then measure
    python benchmarks/features.py --warehouse path/to/warehouse.duckdb --days 365
    python benchmarks/features.py --smoke                    # a tiny shop, seconds (run by the tests)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import xgboost as xgb
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from schemas.derived import MODEL_ENTITY  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from tasks.data.warehouse import Warehouse  # noqa: E402
from tasks.models.datasets import build_training_set, feature_columns  # noqa: E402
from tasks.models.features import customer_features, order_features  # noqa: E402
from tasks.models.labels import MODELS, label_horizon_days, label_matured, latest_matured_cutoff  # noqa: E402

# features this branch added (the others may have changed meaning: settled-order histories, censored tenure)
NEWER = {
    "order": ["moment", "handling_days", "max_line_quantity", "units_per_line", "bulk_line_share",
              "value_vs_customer_median", "items_vs_customer_median", "product_past_returns",
              "product_past_sales", "customer_return_rate_smoothed", "customer_tenure_censored"],
    "customer": ["value_trend_90d", "order_value_cv", "value_per_active_month", "distinct_products",
                 "median_days_between_orders", "gap_ratio", "median_gap_ratio", "tenure_censored"],
}
PARAMS = {"objective": "binary:logistic", "eval_metric": "auc", "max_depth": 3, "eta": 0.05,
          "min_child_weight": 5, "subsample": 0.9, "colsample_bytree": 0.8, "seed": 7, "nthread": 2}
ROUNDS = 300


def build_shop(customers: int, seed: int, folder: Path) -> Path:
    from tasks.data.ingest import ingest_batch
    from tasks.data.synthetic import generate_shop

    generate_shop(folder / "data", customers=customers, seed=seed, dirty_share=0.0)
    wh = Warehouse(folder / "warehouse.duckdb")
    try:
        ingest_batch(folder / "data", wh, Settings())
    finally:
        wh.close()
    return folder / "warehouse.duckdb"


def cutoffs_for(wh: Warehouse, model: str, settings: Settings, days: int) -> list[pd.Timestamp]:
    latest = latest_matured_cutoff(wh, model, settings)
    if latest is None:
        return []
    step = 1 if MODEL_ENTITY[model] == "order" else 7
    first = pd.Timestamp(wh.scalar("SELECT min(ordered_at) FROM orders")).ceil("D")
    grid = [latest - pd.Timedelta(days=k) for k in range(0, days, step)]
    return sorted(c for c in grid if c > first and label_matured(wh, model, c, settings))


def time_features(wh: Warehouse, model: str, cutoff: pd.Timestamp, settings: Settings, validate: bool) -> float:
    """Seconds of one feature query of the whole population kind (all its entities), for the split of cost."""
    call = order_features if MODEL_ENTITY[model] == "order" else customer_features
    start = time.perf_counter()
    call(wh, cutoff, None, settings, validate=validate)
    return time.perf_counter() - start


def fit_auc(train: pd.DataFrame, test: pd.DataFrame, features: list[str]) -> tuple[float, dict[str, float]]:
    dtrain = xgb.DMatrix(train[features], train["label"], enable_categorical=True)
    booster = xgb.train(PARAMS, dtrain, ROUNDS)
    p = booster.predict(xgb.DMatrix(test[features], enable_categorical=True))
    gain = booster.get_score(importance_type="total_gain")
    total = sum(gain.values()) or 1.0
    return float(roc_auc_score(test["label"], p)), {k: v / total for k, v in gain.items()}


def measure(wh: Warehouse, model: str, settings: Settings, days: int, test_days: int) -> dict | None:
    cutoffs = cutoffs_for(wh, model, settings, days)
    if len(cutoffs) < 3:
        print(f"{model}: fewer than 3 matured cutoffs, skipped")
        return None
    start = time.perf_counter()
    frame = build_training_set(wh, model, cutoffs, settings)
    took = time.perf_counter() - start
    key = "order_id" if MODEL_ENTITY[model] == "order" else "customer_id"
    per_entity = frame.groupby(key).size()
    out = {"model": model, "cutoffs": len(cutoffs), "rows": len(frame), "seconds": took,
           "per_cutoff": took / len(cutoffs), "rows_per_entity": per_entity.describe()[["mean", "max"]].to_dict()}
    if "moment" in frame:
        out["moments"] = frame["moment"].astype(str).value_counts().to_dict()
    last = max(cutoffs)
    out["query_seconds"] = {v: time_features(wh, model, last, settings, v) for v in (True, False)}
    test_start = last - pd.Timedelta(days=test_days - 1)
    horizon = pd.Timedelta(days=label_horizon_days(model, settings.labels))
    test = frame[frame["cutoff"] >= test_start]
    train = frame[frame["cutoff"] + horizon < test_start]
    if train["label"].nunique() < 2 or test["label"].nunique() < 2:
        print(f"{model}: a split has a single class, no AUC")
        return out
    features = feature_columns(model)
    newer = [f for f in NEWER[MODEL_ENTITY[model]] if f in features]
    auc_all, gain = fit_auc(train, test, features)
    auc_old, _ = fit_auc(train, test, [f for f in features if f not in newer])
    out.update(train_rows=len(train), test_rows=len(test), test_positives=int(test["label"].sum()),
               auc_all=auc_all, auc_without_newer=auc_old,
               newer_gain={f: round(gain.get(f, 0.0), 4) for f in newer},
               newer_gain_share=sum(gain.get(f, 0.0) for f in newer),
               top=sorted(gain.items(), key=lambda kv: -kv[1])[:8])
    return out


def report(result: dict) -> None:
    print(f"\n== {result['model']}: {result['cutoffs']} cutoffs, {result['rows']:,} rows, "
          f"build {result['seconds']:.1f} s ({result['per_cutoff']:.2f} s per cutoff)")
    spread = result['rows_per_entity']
    print(f"   rows per entity: mean {spread['mean']:.2f}, max {spread['max']:.0f}")
    if "moments" in result:
        print(f"   moments: {result['moments']}")
    q = result["query_seconds"]
    print(f"   one feature query over every entity: {q[True]:.2f} s validated, {q[False]:.2f} s without pandera")
    if "auc_all" in result:
        print(f"   time split: {result['train_rows']:,} train rows, {result['test_rows']:,} test rows "
              f"({result['test_positives']} positive)")
        print(f"   ROC-AUC all features {result['auc_all']:.4f} | without the newer ones "
              f"{result['auc_without_newer']:.4f} | change {result['auc_all'] - result['auc_without_newer']:+.4f}")
        print(f"   gain share of the newer features {result['newer_gain_share']:.1%}: "
              + ", ".join(f"{k} {v:.1%}" for k, v in sorted(result["newer_gain"].items(), key=lambda kv: -kv[1])))
        print("   top features: " + ", ".join(f"{k} {v:.1%}" for k, v in result["top"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", type=Path, help="an ingested warehouse (copied first, read only)")
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--days", type=int, default=365, help="days of cutoffs, ending at the latest matured one")
    parser.add_argument("--test-days", type=int, default=60, help="latest days of cutoffs that form the test set")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--smoke", action="store_true", help="a tiny generated shop and a short window")
    args = parser.parse_args(argv)
    if args.smoke:
        args.customers, args.days, args.test_days = 300, 40, 15
    settings = Settings()
    with tempfile.TemporaryDirectory() as folder:
        if args.warehouse:
            path = Path(folder) / "warehouse.duckdb"
            shutil.copy(args.warehouse, path)
        else:
            path = build_shop(args.customers, args.seed, Path(folder))
        wh = Warehouse(path, read_only=True)
        try:
            for model in args.models:
                result = measure(wh, model, settings, args.days, args.test_days)
                if result:
                    report(result)
        finally:
            wh.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
