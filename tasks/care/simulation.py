"""A synthetic shop with a planted effect per care action, run through the real care loop.

Why: the uplift report, the holdout and the treatment-aware monitor can only be trusted if they
recover an effect we planted. Each day, orders are delivered to customers who recur every
``order_gap_days`` on average (their outcome windows overlap); each order has a true return
probability, which the "model" reports exactly (a perfectly calibrated model), and a top reason
that makes the real playbook pick one of three actions. The real ``build_task_list`` and
``write_task_list`` run every day against a DuckDB warehouse (holds, cool-down, capacity), so the
control group is drawn and held exactly as in production. A listed order's return probability is
then multiplied by (1 - the action's planted effect): a positive effect prevents returns, zero does
nothing, a negative one backfires. Some held-out customers are contacted anyway (the helpdesk
records an outcome inside their hold, and they get the effect): the contamination the report must
flag. Returns land in the ``returns`` table within the 30-day window, so the real uplift SQL reads
them.

``monitoring_rows`` gives every (order, day) scored with its label and treatment flag, for the
realised-performance check with and without the untreated filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas.settings import Settings
from schemas.tasks import ScoredRows
from tasks.care.interventions import build_task_list, load_assignments, load_history, write_task_list
from tasks.care.playbook import load_playbook
from tasks.care.treatment import treatment_mask
from tasks.data.warehouse import Warehouse
from tasks.models.explain import default_catalogue

# the top reason that makes the default playbook choose each action for a return risk
REASON_OF_ACTION = {
    "size_guide_exchange": ("size_sensitive_share", 0.9),
    "product_help": ("max_product_return_rate", 0.4),
    "return_check_in": ("order_value", 80.0),
}


@dataclass
class PlantedShop:
    customers: int = 3000
    days: int = 56
    start: str = "2026-03-02"
    order_gap_days: float = 14.0
    effects: dict[str, float] = field(default_factory=lambda: {
        "size_guide_exchange": 0.50, "product_help": 0.0, "return_check_in": -0.20})
    action_mix: dict[str, float] = field(default_factory=lambda: {
        "size_guide_exchange": 0.6, "product_help": 0.2, "return_check_in": 0.2})
    probability: tuple[float, float] = (0.30, 0.70)
    contamination_share: float = 0.05
    control_share: float = 0.3
    seed: int = 0


@dataclass
class SimulationTruth:
    orders: pd.DataFrame  # order_id, customer_id, day, probability, action, listed, held, contacted, returned
    contaminations: pd.DataFrame  # customer_id, at: every contact of a held-out customer we planted
    end: pd.Timestamp


def settings_for(shop: PlantedShop, home: Path) -> Settings:
    """Production settings, with a capacity nobody hits and the shop's control share."""
    return Settings(paths={"home": home}, scoring={"control_share": shop.control_share,
                                                   "queue_capacity": {"default": 1_000_000}, "seed": shop.seed + 11})


def daily_orders(shop: PlantedShop, rng: np.random.Generator) -> pd.DataFrame:
    """Each customer orders every ``order_gap_days`` on average; the action is fixed per order by its reason."""
    days = np.arange(shop.days)
    rate = 1.0 / shop.order_gap_days
    hits = rng.uniform(size=(shop.customers, shop.days)) < rate
    customer, day = np.nonzero(hits)
    n = customer.size
    actions = list(shop.action_mix)
    weights = np.asarray([shop.action_mix[a] for a in actions], dtype=float)
    frame = pd.DataFrame({
        "order_id": [f"s{shop.seed}-o{i:07d}" for i in range(n)],
        "customer_id": [f"s{shop.seed}-c{c:06d}" for c in customer],
        "day": pd.Timestamp(shop.start) + pd.to_timedelta(days[day], unit="D"),
        "probability": rng.uniform(*shop.probability, n),
        "action": np.asarray(actions)[rng.choice(len(actions), n, p=weights / weights.sum())],
    })
    return frame.sort_values(["day", "order_id"], kind="mergesort").reset_index(drop=True)


def scored_rows(day_orders: pd.DataFrame) -> pd.DataFrame:
    reasons = day_orders["action"].map(REASON_OF_ACTION)
    return pd.DataFrame({
        ScoredRows.run_date: day_orders["day"], ScoredRows.risk: "return",
        ScoredRows.customer_id: day_orders["customer_id"], ScoredRows.order_id: day_orders["order_id"],
        ScoredRows.probability: day_orders["probability"], ScoredRows.value_at_stake: 100.0,
        ScoredRows.model_version: "simulated v1",
        "reason_1": reasons.map(lambda r: r[0]), "reason_1_value": reasons.map(lambda r: r[1]),
        "reason_2": None, "reason_2_value": None, "reason_3": None, "reason_3_value": None,
    })


def simulate(shop: PlantedShop, wh: Warehouse, settings: Settings, out_dir: Path) -> SimulationTruth:
    """Run the care loop day by day, then write the orders and returns it caused into the warehouse."""
    rng = np.random.default_rng(shop.seed)
    orders = daily_orders(shop, rng)
    catalogue = default_catalogue()
    playbook = load_playbook(settings.playbook_file, catalogue)
    listed: dict[str, str] = {}
    held_orders: set[str] = set()
    contacts = []
    for day, part in orders.groupby("day", sort=True):
        history, held = load_history(wh, day, settings)
        tasks, control = build_task_list(scored_rows(part), playbook, settings, history, day, catalogue=catalogue,
                                         held_out=held, assignments=load_assignments(wh, day))
        write_task_list(wh, tasks, control, day, out_dir, settings)
        listed.update(zip(tasks["order_id"], tasks["action_id"], strict=True))
        held_orders.update(control["order_id"])
        # the helpdesk reaches some held-out customers anyway, three days later, inside their hold
        first_day = control[control["assigned_on"] == day]
        reached = first_day[rng.uniform(size=len(first_day)) < shop.contamination_share]
        contacts += [{"task_id": f"helpdesk-{c}-{day:%Y%m%d}", "customer_id": c, "outcome": "contacted",
                      "recorded_at": day + pd.Timedelta(days=3), "order_id": o}
                     for c, o in zip(reached["customer_id"], reached["order_id"], strict=True)]
    contaminated_orders = {c["order_id"] for c in contacts}
    orders["listed"] = orders["order_id"].isin(listed)
    orders["held"] = orders["order_id"].isin(held_orders)
    orders["contacted"] = orders["order_id"].isin(contaminated_orders)
    # the action a listed or re-contacted order actually received: its playbook action
    treated = orders["listed"] | orders["contacted"]
    effect = orders["action"].map(shop.effects).where(treated, 0.0)
    truth = np.clip(orders["probability"] * (1 - effect), 0, 1)
    orders["returned"] = rng.uniform(size=len(orders)) < truth
    end = orders["day"].max() + pd.Timedelta(days=31)
    write_source_rows(wh, orders, end, rng)
    contaminations = pd.DataFrame(contacts, columns=["task_id", "customer_id", "outcome", "recorded_at", "order_id"])
    if len(contaminations):
        wh.append("outcomes", contaminations[["task_id", "customer_id", "outcome", "recorded_at"]])
    return SimulationTruth(orders, contaminations.rename(columns={"recorded_at": "at"}), end)


def write_source_rows(wh: Warehouse, orders: pd.DataFrame, end: pd.Timestamp, rng: np.random.Generator) -> None:
    """Orders (delivered the day they are scored) and their returns within 30 days; one late row sets the clock."""
    ordered = orders["day"] - pd.Timedelta(days=3)
    wh.append("customers", pd.DataFrame({"customer_id": orders["customer_id"].unique()}))
    wh.append("orders", pd.DataFrame({
        "order_id": [*orders["order_id"], "clock"], "customer_id": [*orders["customer_id"], "clock"],
        "ordered_at": [*ordered, end], "delivered_at": [*orders["day"], end],
        "total_amount": [*([100.0] * len(orders)), 1.0]}))
    returned = orders[orders["returned"]]
    when = returned["day"] + pd.to_timedelta(rng.integers(1, 29, len(returned)), unit="D")
    wh.append("returns", pd.DataFrame({"return_id": [*("r" + returned["order_id"]), "clock"],
                                       "order_id": [*returned["order_id"], "clock"],
                                       "requested_at": [*when, end]}))


def monitoring_rows(wh: Warehouse, truth: SimulationTruth, settings: Settings) -> pd.DataFrame:
    """Each scored order on its day with its label and whether care touched it (the real treatment mask)."""
    rows = truth.orders.rename(columns={"day": "run_date"})
    rows = rows.assign(label=rows["returned"].astype(int))
    rows["treated"] = treatment_mask(wh, rows, "return", settings, cutoff_column="run_date")
    return rows[["run_date", "customer_id", "order_id", "probability", "label", "treated", "listed", "held",
                 "contacted", "action"]]


def run(shop: PlantedShop, home: Path) -> tuple[Settings, Warehouse, SimulationTruth]:
    """A fresh warehouse under ``home`` with the simulated shop in it (the caller closes the warehouse)."""
    settings = settings_for(shop, home)
    wh = Warehouse(home / "warehouse.duckdb")
    truth = simulate(shop, wh, settings, home / "tasks")
    return settings, wh, truth


def summary(truth: SimulationTruth) -> dict[str, Any]:
    o = truth.orders
    return {"orders": len(o), "listed": int(o["listed"].sum()), "held": int(o["held"].sum()),
            "contaminations": len(truth.contaminations), "customers": o["customer_id"].nunique()}
