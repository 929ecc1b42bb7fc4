"""Small hand-made shops in the canonical export layout (one CSV per table), for regression tests
of the text, alerts and report flows on what real exports look like: a marketplace that exports
reviews but no returns or tickets, a shop without a returns source, a shop with one stray late row.

Texts are short, plain customer phrases in English and Chinese; a seeded generator spreads them
over the weeks so that volumes look like a small real shop's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

GOOD = ["Great quality, fits perfectly and arrived quickly", "Love it, exactly as pictured",
        "Works well, good value for the price", "Comfortable and well made, would buy again",
        "Nice colour and the material feels sturdy", "质量很好，物流很快，很满意", "做工不错，和描述一致，好评",
        "Does the job, very happy with it", "Perfect gift, my sister loved it", "包装完好，东西很好用"]
BAD = ["Stopped working after two days, very disappointed", "Cheap material, fell apart after one wash",
       "Arrived late and the box was crushed", "Runs two sizes small, had to send it back",
       "Nothing like the photos, looks cheap", "质量太差了，用了两天就坏了", "尺码偏小，穿不上，失望",
       "Waste of money, broke the first time I used it", "Colour is completely different from the listing",
       "客服态度很差，问题一直没解决"]
RETURN_TEXTS = {"size_fit": "too small, need a bigger size", "quality_defect": "stopped working",
                "damaged_in_transit": "arrived broken", "not_as_described": "not as pictured"}


def write_shop(out: Path, *, start: str = "2025-01-06", weeks: int = 40, orders_per_day: int = 12,
               products: int = 30, returns: bool = True, tickets: bool = False, stray_order_days: int | None = None,
               review_share: float = 0.35, seed: int = 3) -> Path:
    """Write ``customers``, ``products``, ``orders``, ``order_items``, ``reviews`` (and ``returns`` /
    ``tickets`` when asked) CSVs to ``out``; ``stray_order_days`` adds one cancelled order that many
    days after everything else (a stray late row)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    days = pd.date_range(start, periods=weeks * 7, freq="D")
    n = len(days) * orders_per_day
    ordered = np.repeat(days.to_numpy(), orders_per_day) + pd.to_timedelta(rng.integers(8 * 3600, 22 * 3600, n), "s")
    customers = pd.DataFrame({"customer_id": [f"C{i:05d}" for i in range(n // 3 + 1)]})
    cust = rng.integers(0, len(customers), n)
    prod = pd.DataFrame({"product_id": [f"P{i:03d}" for i in range(products)],
                         "name": [f"Product {i}" for i in range(products)],
                         "category": rng.choice(["apparel", "home", "electronics"], products)})
    ordered = pd.to_datetime(ordered)
    delivered = ordered + pd.to_timedelta(rng.integers(2, 6, n), "D")
    orders = pd.DataFrame({"order_id": [f"O{i:06d}" for i in range(n)], "customer_id": customers["customer_id"].
                           to_numpy()[cust], "ordered_at": ordered, "promised_at": ordered + pd.Timedelta(days=5),
                           "shipped_at": ordered + pd.Timedelta(days=1), "delivered_at": delivered,
                           "status": "delivered", "total_amount": rng.integers(10, 200, n).astype(float),
                           "carrier": rng.choice(["FastShip", "PostCo"], n)})
    end = delivered.max()
    keep = orders["delivered_at"] <= end - pd.Timedelta(days=0)
    orders = orders[keep]
    items = pd.DataFrame({"order_id": orders["order_id"], "line_no": 1,
                          "product_id": prod["product_id"].to_numpy()[rng.integers(0, products, len(orders))],
                          "quantity": 1, "unit_price": orders["total_amount"]})
    reviewed = orders.sample(frac=review_share, random_state=seed)
    score = rng.choice([1, 2, 3, 4, 5], len(reviewed), p=[0.1, 0.07, 0.08, 0.25, 0.5])
    text = [BAD[rng.integers(len(BAD))] if s <= 2 else GOOD[rng.integers(len(GOOD))] for s in score]
    reviews = pd.DataFrame({"review_id": [f"R{i:06d}" for i in range(len(reviewed))],
                            "order_id": reviewed["order_id"].to_numpy(), "score": score,
                            "created_at": reviewed["delivered_at"].to_numpy() + pd.to_timedelta(
                                rng.integers(3600, 5 * 86400, len(reviewed)), "s"),
                            "text": text})
    last_review = reviews["created_at"].max()
    orders = orders[orders["ordered_at"] <= last_review]
    items = items[items["order_id"].isin(orders["order_id"])]
    reviews = reviews[reviews["order_id"].isin(orders["order_id"])]
    if stray_order_days is not None:
        stray = orders.iloc[[-1]].copy()
        stray["order_id"] = "O-STRAY"
        stray["ordered_at"] = last_review + pd.Timedelta(days=stray_order_days)
        stray[["promised_at", "shipped_at", "delivered_at"]] = pd.NaT
        stray["status"] = "cancelled"
        orders = pd.concat([orders, stray], ignore_index=True)
        items = pd.concat([items, pd.DataFrame({"order_id": ["O-STRAY"], "line_no": [1],
                                                "product_id": [prod["product_id"].iloc[0]], "quantity": [1],
                                                "unit_price": [stray["total_amount"].iloc[0]]})], ignore_index=True)
    customers = customers[customers["customer_id"].isin(orders["customer_id"])]
    customers.to_csv(out / "customers.csv", index=False)
    prod.to_csv(out / "products.csv", index=False)
    orders.to_csv(out / "orders.csv", index=False)
    items.to_csv(out / "order_items.csv", index=False)
    reviews.to_csv(out / "reviews.csv", index=False)
    delivered_orders = orders[orders["status"] == "delivered"]
    if returns:
        ret = delivered_orders.sample(frac=0.08, random_state=seed + 1)
        codes = rng.choice(list(RETURN_TEXTS), len(ret))
        pd.DataFrame({"return_id": [f"X{i:05d}" for i in range(len(ret))], "order_id": ret["order_id"].to_numpy(),
                      "requested_at": ret["delivered_at"].to_numpy() + pd.to_timedelta(
                          rng.integers(86400, 10 * 86400, len(ret)), "s"),
                      "reason_code": codes, "reason_text": [RETURN_TEXTS[c] for c in codes]}).pipe(
            lambda f: f[f["requested_at"] <= last_review]).to_csv(out / "returns.csv", index=False)
    if tickets:
        tk = delivered_orders.sample(frac=0.05, random_state=seed + 2)
        pd.DataFrame({"ticket_id": [f"T{i:05d}" for i in range(len(tk))], "customer_id": tk["customer_id"].to_numpy(),
                      "order_id": tk["order_id"].to_numpy(), "opened_at": tk["delivered_at"].to_numpy(),
                      "category": "delivery", "text": "where is my parcel"}).to_csv(out / "tickets.csv", index=False)
    return out


def ingest_shop(data: Path, warehouse: Path) -> Path:
    """Ingest a written shop into a fresh DuckDB file (a real ingestion run)."""
    from schemas.settings import Settings
    from tasks.data.ingest import ingest_batch
    from tasks.data.warehouse import Warehouse

    wh = Warehouse(warehouse)
    try:
        ingest_batch(data, wh, Settings(), as_of=pd.Timestamp("2030-01-01"))
    finally:
        wh.close()
    return warehouse
