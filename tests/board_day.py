"""A care-board day on the shared generated shop: real customers (en and zh), real orders and history,
a task list and control group written by the real code, with the reasons the issue complained about."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas.settings import Settings
from tasks.care.export import task_risks, write_task_risks
from tasks.care.interventions import build_task_list, write_task_list
from tasks.care.playbook import load_playbook
from tasks.data.warehouse import Warehouse
from tasks.models.explain import load_reason_catalogue

DAY = pd.Timestamp("2026-09-01")  # outcome windows (30 days) close before the shop's data ends (2026-11-01)
ZONE = "Asia/Shanghai"
BAD_REASONS = [("days_since_delivery", "0.0"), ("mean_first_response_hours", "0.0"), ("size_sensitive_share", "0.8")]


def board_env(home: Path, warehouse: Path, **extra: str) -> dict[str, str]:
    """Environment of a board installation in ``home`` (the CLI, the server and write_handout read it)."""
    return {"AFTERSALES_PATHS__HOME": str(home), "AFTERSALES_PATHS__WAREHOUSE": str(warehouse),
            "AFTERSALES_BOARD__TIMEZONE": ZONE, "AFTERSALES_SCORING__CONTROL_SHARE": "0.3",
            "AFTERSALES_SCORING__QUEUE_CAPACITY": '{"default": 10000}', "AFTERSALES_SCORING__MIN_PROBABILITY": "0.1",
            "AFTERSALES_BOARD__LOCK_RETRIES": "3", "AFTERSALES_BOARD__LOCK_WAIT_SECONDS": "0.05", **extra}


def use_env(monkeypatch: Any, env: dict[str, str]) -> Settings:
    """Apply the environment and return the settings a process started with it would see."""
    from schemas.settings import get_settings, reset_settings_cache

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    return get_settings()


def scored_rows(wh: Warehouse, n: int = 150, seed: int = 3) -> pd.DataFrame:
    """Return risk on orders delivered in the two weeks before the day, churn risk for some of them."""
    orders = wh.query("""SELECT customer_id, order_id, total_amount FROM orders
                         WHERE delivered_at > ? - INTERVAL 14 DAY AND delivered_at <= ? AND total_amount > 40
                         QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY order_id) = 1
                         ORDER BY customer_id LIMIT ?""", [DAY.to_pydatetime(), DAY.to_pydatetime(), n])
    rng = np.random.default_rng(seed)
    rows = []
    for i, r in enumerate(orders.itertuples()):
        reasons = BAD_REASONS if i % 3 else [("days_late", 4.0), ("carrier", "Slowpost"), ("order_value", 99.0)]
        risk = "late_delivery" if i % 5 == 1 else "return"  # another queue ("delivery")
        rows.append({"run_date": DAY, "risk": risk, "customer_id": r.customer_id, "order_id": r.order_id,
                     "probability": float(rng.uniform(0.3, 0.9)), "value_at_stake": float(r.total_amount) * 0.35,
                     "model_version": "aftersales-return v1",
                     **{f"reason_{k + 1}": reasons[k][0] for k in range(3)},
                     **{f"reason_{k + 1}_value": reasons[k][1] for k in range(3)}})
        if i % 4 == 0:  # a second risk of the same customer: stays out of the "why"
            rows.append({"run_date": DAY, "risk": "churn", "customer_id": r.customer_id, "order_id": None,
                         "probability": 0.2, "value_at_stake": 10.0, "model_version": "aftersales-churn v1",
                         "reason_1": "days_since_order", "reason_1_value": 9.0, "reason_2": "orders_90d",
                         "reason_2_value": 0.0, "reason_3": None, "reason_3_value": None})
    return pd.DataFrame(rows)


def write_day(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Score rows, build and store the day's list the way the scoring flow does; (tasks, control, scored)."""
    catalogue = load_reason_catalogue(settings.reason_phrases_file)
    playbook = load_playbook(settings.playbook_file, catalogue)
    wh = Warehouse(settings.warehouse_path)
    try:
        scored = scored_rows(wh)
        tasks, control = build_task_list(scored, playbook, settings, run_date=DAY, catalogue=catalogue)
        write_task_risks(wh, task_risks(scored, tasks), DAY)
        write_task_list(wh, tasks, control, DAY, settings.reports_dir / "tasks")
    finally:
        wh.close()
    return tasks, control, scored
