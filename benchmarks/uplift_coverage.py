"""Coverage of the uplift intervals over repeated seeds, per planted action effect.

    .venv/bin/python benchmarks/uplift_coverage.py                 # 400 seeds, 3000 customers, 8 weeks
    .venv/bin/python benchmarks/uplift_coverage.py --loop 5        # plus 5 seeds through the real care loop
    .venv/bin/python benchmarks/uplift_coverage.py --smoke         # what the test runs

A shop like ``tasks/care/simulation.py``: customers order every two weeks, each with their own
return propensity (so a customer's orders are correlated), and each order's reason picks one of
three actions with a planted effect (50% of returns prevented, none, 20% more). The control draw
is the care list's own: a seeded hash of customer, risk and period (``hash_uniform``), below the
control share.

For each seed and action it computes the relative-effect interval the uplift report gives
(statsmodels, log-adjusted risk ratio) on two units of analysis:

- first assignment per customer (what ``tasks/care/uplift.py`` does), and
- every scored order as an independent trial (the old customer-day analysis),

and prints how often each interval covers the planted effect (nominal 95%), and its mean width.
``--loop N`` also runs N seeds through the real task list, warehouse and uplift report (slow: the
pandera checks of each day's list dominate) and prints their coverage.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.care.interventions import assignment_period, hash_uniform
from tasks.care.simulation import PlantedShop, daily_orders, run
from tasks.care.uplift import two_arms, uplift_analysis

CONFIDENCE = 0.95
SEED_SALT = 11  # the control seed ``simulation.settings_for`` gives the list


def design_sample(shop: PlantedShop) -> pd.DataFrame:
    """Orders with arm, planted outcome and whether the order is its customer's first unit."""
    rng = np.random.default_rng(shop.seed)
    orders = daily_orders(shop, rng)
    propensity = {c: rng.uniform(*shop.probability) for c in orders["customer_id"].unique()}
    orders["probability"] = orders["customer_id"].map(propensity)
    period = orders["day"].map(lambda d: assignment_period(d, 28))
    seed = shop.seed + SEED_SALT
    orders["control"] = [hash_uniform(seed, c, "return", p) < shop.control_share
                         for c, p in zip(orders["customer_id"], period, strict=True)]
    first = ~orders.duplicated("customer_id")
    # a customer keeps the arm of their first assignment for its 30-day window
    start = orders.groupby("customer_id")["day"].transform("min")
    in_first_window = orders["day"] < start + pd.Timedelta(days=30)
    first_arm = orders["customer_id"].map(orders.loc[first].set_index("customer_id")["control"])
    orders["control"] = np.where(in_first_window, first_arm, orders["control"])
    effect = orders["action"].map(shop.effects).where(~orders["control"], 0.0)
    orders["returned"] = rng.uniform(size=len(orders)) < orders["probability"] * (1 - effect)
    orders["first_unit"] = first
    return orders


def intervals(orders: pd.DataFrame) -> pd.DataFrame:
    """Per action and unit of analysis: the relative effect and its interval."""
    rows = []
    for unit, part in (("first assignment per customer", orders[orders["first_unit"]]),
                       ("every order (customer-days)", orders)):
        for action, g in part.groupby("action"):
            t, c = g[~g["control"]], g[g["control"]]
            s = two_arms(int(t["returned"].sum()), len(t), int(c["returned"].sum()), len(c), CONFIDENCE)
            rows.append({"unit": unit, "action": action, "effect": s["effect"], "low": s["effect_low"],
                         "high": s["effect_high"], "n": len(g)})
    return pd.DataFrame(rows)


def coverage(results: pd.DataFrame, effects: dict[str, float]) -> pd.DataFrame:
    results = results.assign(planted=results["action"].map(effects))
    results["covered"] = (results["low"] <= results["planted"]) & (results["planted"] <= results["high"])
    results["width"] = results["high"] - results["low"]
    return (results.groupby(["unit", "action"])
            .agg(seeds=("covered", "size"), coverage=("covered", "mean"), mean_width=("width", "mean"),
                 mean_estimate=("effect", "mean"), planted=("planted", "first"), units=("n", "mean"))
            .reset_index())


def loop_coverage(shop: PlantedShop, seeds: int) -> pd.DataFrame:
    """The same, through the real care loop and uplift report (first assignment per customer)."""
    rows = []
    for seed in range(seeds):
        planted = PlantedShop(**{**vars(shop), "seed": 10_000 + seed, "contamination_share": 0.0})
        with tempfile.TemporaryDirectory() as home:
            settings, wh, _ = run(planted, Path(home))
            try:
                by_action = uplift_analysis(wh, settings).by_action
            finally:
                wh.close()
        for r in by_action.itertuples():
            rows.append({"unit": "real loop, first assignment", "action": r.action_id, "effect": r.effect,
                         "low": r.effect_low, "high": r.effect_high, "n": r.n_treated + r.n_control})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=400)
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--days", type=int, default=56)
    parser.add_argument("--loop", type=int, default=0, help="seeds through the real care loop (slow)")
    parser.add_argument("--smoke", action="store_true", help="a few small seeds (the test)")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.customers, args.days = 20, 600, 28
    shop = PlantedShop(customers=args.customers, days=args.days)
    started = time.perf_counter()
    results = pd.concat([intervals(design_sample(PlantedShop(**{**vars(shop), "seed": s})))
                         for s in range(args.seeds)], ignore_index=True)
    if args.loop:
        results = pd.concat([results, loop_coverage(PlantedShop(customers=min(args.customers, 1500),
                                                                days=min(args.days, 42)), args.loop)])
    table = coverage(results, shop.effects)
    print(f"uplift interval coverage ({CONFIDENCE:.0%} nominal), {args.seeds} seeds, {args.customers} customers, "
          f"{args.days} days, control share {shop.control_share}; {time.perf_counter() - started:.1f} s")
    print(f"{'unit of analysis':32s} {'action':22s} {'planted':>8s} {'seeds':>6s} {'coverage':>9s} "
          f"{'width':>7s} {'estimate':>9s} {'units':>7s}")
    for r in table.itertuples():
        print(f"{r.unit:32s} {r.action:22s} {r.planted:8.2f} {r.seeds:6d} {r.coverage:9.3f} {r.mean_width:7.3f} "
              f"{r.mean_estimate:9.3f} {r.units:7.0f}")


if __name__ == "__main__":
    main()
