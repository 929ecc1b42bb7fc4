"""The canonical after-sales data model: one pandera model per source table.

Every column name used anywhere in the project is declared here once. ``TABLES`` adds what a
pandera model cannot say by itself: which columns form the key, which few columns are required
in a user's export (everything else may be missing and is added empty), which columns are
timestamps, which column orders versions of a row, and which keys point at other tables.

Key uniqueness is checked on the whole staged batch in the warehouse (files are validated in
chunks, so a per-chunk ``unique`` would miss duplicates that straddle chunks and would flag both
copies instead of the superseded one).

These models are the declaration; ingestion compiles them to DuckDB SQL (``tasks/data/checks.py``)
and a test proves the compiled checks agree with pandera's own. Checks are row-level: a failure
in a non-nullable (required) column rejects the row, a failure in a nullable (optional) column
clears that value and keeps the row. Columns with ``metadata={"personal": True}`` may hold
personal data: their values never appear in logs, errors or reports (the quarantine table in the
warehouse keeps them).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa
from pandera.typing.pandas import Series

RETURN_REASONS = [
    "size_fit",
    "quality_defect",
    "not_as_described",
    "damaged_in_transit",
    "late_delivery",
    "changed_mind",
    "other",
]
EVENT_TYPES = [
    "product_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "view_size_chart",
    "view_return_policy",
    "contact_support",
    "checkout",
]
ORDER_STATUSES = ["placed", "shipped", "delivered", "cancelled"]
PAYMENT_TYPES = ["card", "paypal", "wallet", "cod", "bank_transfer", "bnpl", "other"]
TICKET_CHANNELS = ["chat", "email", "phone", "social", "marketplace", "other"]
TICKET_CATEGORIES = [
    "delivery",
    "product_defect",
    "size_fit",
    "return_refund",
    "usage_question",
    "payment",
    "account",
    "complaint_service",
    "other",
]
RETURN_STATUSES = ["requested", "approved", "rejected", "refunded"]
OUTCOMES = ["contacted", "resolved", "returned_anyway", "no_answer", "declined"]
LANGUAGES = ["en", "zh", "other"]


PERSONAL = {"personal": True}


def not_before(later: str, earlier: str):
    """A row-level time order: ``later`` may not lie before ``earlier`` (missing values pass).

    The columns travel as check statistics so that the SQL compiler reads the same declaration.
    """

    def check(cls, df: pd.DataFrame) -> pd.Series:
        return ~(df[later] < df[earlier]).fillna(False)

    check.__name__ = f"{later}_not_before_{earlier}"
    return pa.dataframe_check(check, error=f"{later} before {earlier}",
                              statistics={"later": later, "earlier": earlier})


class _Base(pa.DataFrameModel):
    class Config:
        coerce = True  # values arrive already parsed by tasks.data.ingest; this only aligns precision
        strict = "filter"


class Customers(_Base):
    customer_id: Series[str] = pa.Field(str_length={"min_value": 1})
    signup_at: Series[pd.Timestamp] = pa.Field(nullable=True)
    region: Series[str] = pa.Field(nullable=True)
    language: Series[str] = pa.Field(nullable=True, isin=LANGUAGES)
    birth_year: Series[float] = pa.Field(nullable=True, ge=1900, le=2020)
    updated_at: Series[pd.Timestamp] = pa.Field(nullable=True)


class Products(_Base):
    product_id: Series[str] = pa.Field(str_length={"min_value": 1})
    name: Series[str] = pa.Field(nullable=True)
    category: Series[str] = pa.Field(nullable=True)
    brand: Series[str] = pa.Field(nullable=True)
    size_sensitive: Series[pd.BooleanDtype] = pa.Field(nullable=True)
    list_price: Series[float] = pa.Field(nullable=True, ge=0)
    unit_cost: Series[float] = pa.Field(nullable=True, ge=0)
    launched_at: Series[pd.Timestamp] = pa.Field(nullable=True)
    updated_at: Series[pd.Timestamp] = pa.Field(nullable=True)


class Orders(_Base):
    order_id: Series[str] = pa.Field(str_length={"min_value": 1})
    customer_id: Series[str] = pa.Field(str_length={"min_value": 1})
    ordered_at: Series[pd.Timestamp]
    promised_at: Series[pd.Timestamp] = pa.Field(nullable=True)
    shipped_at: Series[pd.Timestamp] = pa.Field(nullable=True)
    delivered_at: Series[pd.Timestamp] = pa.Field(nullable=True)
    status: Series[str] = pa.Field(nullable=True, isin=ORDER_STATUSES)
    total_amount: Series[float] = pa.Field(ge=0)
    discount_amount: Series[float] = pa.Field(nullable=True, ge=0)
    shipping_fee: Series[float] = pa.Field(nullable=True, ge=0)
    payment_type: Series[str] = pa.Field(nullable=True, isin=PAYMENT_TYPES)
    region: Series[str] = pa.Field(nullable=True)
    carrier: Series[str] = pa.Field(nullable=True)
    updated_at: Series[pd.Timestamp] = pa.Field(nullable=True)

    delivered_after_ordered = not_before("delivered_at", "ordered_at")
    promised_after_ordered = not_before("promised_at", "ordered_at")
    shipped_after_ordered = not_before("shipped_at", "ordered_at")


class OrderItems(_Base):
    order_id: Series[str] = pa.Field(str_length={"min_value": 1})
    line_no: Series[int] = pa.Field(ge=1)
    product_id: Series[str] = pa.Field(str_length={"min_value": 1})
    quantity: Series[int] = pa.Field(ge=1)  # upper limit: settings.ingest.max_line_quantity
    unit_price: Series[float] = pa.Field(ge=0)
    discount_amount: Series[float] = pa.Field(nullable=True, ge=0)
    size: Series[str] = pa.Field(nullable=True)


class Returns(_Base):
    return_id: Series[str] = pa.Field(str_length={"min_value": 1})
    order_id: Series[str] = pa.Field(str_length={"min_value": 1})
    product_id: Series[str] = pa.Field(nullable=True)
    requested_at: Series[pd.Timestamp]
    reason_code: Series[str] = pa.Field(nullable=True, isin=RETURN_REASONS)
    reason_text: Series[str] = pa.Field(nullable=True, metadata=PERSONAL)
    refund_amount: Series[float] = pa.Field(nullable=True, ge=0)
    status: Series[str] = pa.Field(nullable=True, isin=RETURN_STATUSES)
    refunded_at: Series[pd.Timestamp] = pa.Field(nullable=True)
    updated_at: Series[pd.Timestamp] = pa.Field(nullable=True)

    refunded_after_requested = not_before("refunded_at", "requested_at")


class Tickets(_Base):
    ticket_id: Series[str] = pa.Field(str_length={"min_value": 1})
    customer_id: Series[str] = pa.Field(str_length={"min_value": 1})
    order_id: Series[str] = pa.Field(nullable=True)
    channel: Series[str] = pa.Field(nullable=True, isin=TICKET_CHANNELS)
    category: Series[str] = pa.Field(nullable=True, isin=TICKET_CATEGORIES)
    opened_at: Series[pd.Timestamp]
    first_response_at: Series[pd.Timestamp] = pa.Field(nullable=True)
    resolved_at: Series[pd.Timestamp] = pa.Field(nullable=True)
    agent_id: Series[str] = pa.Field(nullable=True)
    team: Series[str] = pa.Field(nullable=True)
    escalated: Series[pd.BooleanDtype] = pa.Field(nullable=True)
    reopened: Series[pd.BooleanDtype] = pa.Field(nullable=True)
    satisfaction: Series[float] = pa.Field(nullable=True, isin=[1, 2, 3, 4, 5])
    text: Series[str] = pa.Field(nullable=True, metadata=PERSONAL)
    language: Series[str] = pa.Field(nullable=True, isin=LANGUAGES)
    updated_at: Series[pd.Timestamp] = pa.Field(nullable=True)

    resolved_after_opened = not_before("resolved_at", "opened_at")
    responded_after_opened = not_before("first_response_at", "opened_at")


class Reviews(_Base):
    review_id: Series[str] = pa.Field(str_length={"min_value": 1})
    order_id: Series[str] = pa.Field(str_length={"min_value": 1})
    customer_id: Series[str] = pa.Field(nullable=True)
    product_id: Series[str] = pa.Field(nullable=True)
    score: Series[int] = pa.Field(ge=1, le=5)
    created_at: Series[pd.Timestamp]
    text: Series[str] = pa.Field(nullable=True, metadata=PERSONAL)
    language: Series[str] = pa.Field(nullable=True, isin=LANGUAGES)


class Events(_Base):
    event_id: Series[str] = pa.Field(str_length={"min_value": 1})
    customer_id: Series[str] = pa.Field(nullable=True)
    session_id: Series[str] = pa.Field(nullable=True)
    event_type: Series[str] = pa.Field(isin=EVENT_TYPES)
    product_id: Series[str] = pa.Field(nullable=True)
    occurred_at: Series[pd.Timestamp]


class Outcomes(_Base):
    """What happened to a care task; the control group has no outcome rows."""

    task_id: Series[str] = pa.Field(str_length={"min_value": 1})
    customer_id: Series[str] = pa.Field(str_length={"min_value": 1})
    outcome: Series[str] = pa.Field(isin=OUTCOMES)
    recorded_at: Series[pd.Timestamp]
    note: Series[str] = pa.Field(nullable=True, metadata=PERSONAL)


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]


@dataclass(frozen=True)
class TableSpec:
    """What ingestion needs to know about a source table beyond its column types."""

    name: str
    model: type[pa.DataFrameModel]
    key: tuple[str, ...]
    required: tuple[str, ...]
    version_column: str | None = None
    foreign_keys: tuple[ForeignKey, ...] = ()
    optional_source: bool = False
    derived_key: bool = False  # key may be missing and is then hashed from the row
    future_allowed: tuple[str, ...] = ()  # timestamps that may lie after the batch (a promise)
    upper_limits: tuple[tuple[str, str], ...] = ()  # (column, field of settings.ingest holding its maximum)

    @property
    def columns(self) -> list[str]:
        return list(self.model.to_schema().columns)

    @property
    def timestamp_columns(self) -> list[str]:
        return [c for c, col in self.model.to_schema().columns.items() if "datetime" in str(col.dtype)]

    @property
    def personal_columns(self) -> list[str]:
        """Columns whose values may identify a person: never logged or shown in reports."""
        return [c for c, col in self.model.to_schema().columns.items() if (col.metadata or {}).get("personal")]


def _fk(col: str, parent: str, parent_col: str | None = None) -> ForeignKey:
    return ForeignKey((col,), parent, (parent_col or col,))


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in [
        TableSpec("customers", Customers, ("customer_id",), ("customer_id",), "updated_at"),
        TableSpec("products", Products, ("product_id",), ("product_id",), "updated_at"),
        TableSpec(
            "orders",
            Orders,
            ("order_id",),
            ("order_id", "customer_id", "ordered_at", "total_amount"),
            "updated_at",
            (_fk("customer_id", "customers"),),
            future_allowed=("promised_at",),
        ),
        TableSpec(
            "order_items",
            OrderItems,
            ("order_id", "line_no"),
            ("order_id", "line_no", "product_id", "quantity", "unit_price"),
            None,
            (_fk("order_id", "orders"), _fk("product_id", "products")),
            upper_limits=(("quantity", "max_line_quantity"),),
        ),
        TableSpec(
            "returns",
            Returns,
            ("return_id",),
            ("return_id", "order_id", "requested_at"),
            "updated_at",
            (_fk("order_id", "orders"),),
            optional_source=True,
        ),
        TableSpec(
            "tickets",
            Tickets,
            ("ticket_id",),
            ("ticket_id", "customer_id", "opened_at"),
            "updated_at",
            (_fk("customer_id", "customers"),),
            optional_source=True,
        ),
        TableSpec(
            "reviews",
            Reviews,
            ("review_id",),
            ("review_id", "order_id", "score", "created_at"),
            None,
            (_fk("order_id", "orders"),),
            optional_source=True,
        ),
        TableSpec(
            "events",
            Events,
            ("event_id",),
            ("event_type", "occurred_at"),
            None,
            (),
            optional_source=True,
            derived_key=True,
        ),
        TableSpec(
            "outcomes",
            Outcomes,
            ("task_id", "outcome"),
            ("task_id", "customer_id", "outcome", "recorded_at"),
            None,
            (),
            optional_source=True,
        ),
    ]
}

SOURCE_TABLES = [t for t in TABLES if t != "outcomes"]
