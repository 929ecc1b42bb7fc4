"""Contracts of the derived tables built from the warehouse: feature frames and training sets.

These pandera models are also the feature registry: every feature is declared once, here, with
its plain-English description and the source tables it reads (``metadata``). The feature code in
``tasks/models/features.py`` must produce exactly these columns (the models are strict and ordered), and
``schemas/defaults/feature_catalogue.csv`` is generated from them.

Every numeric feature is a float so that "unknown" is NaN everywhere (XGBoost reads it as
missing): a feature whose optional source (returns, tickets, reviews, events) has no rows at the
cutoff is NaN rather than a misleading 0. ``needs`` names the optional sources without which a
feature is unknown; it defaults to the optional sources among ``sources``.

Besides the source tables, a feature may read a *derived* table (``DERIVED_SOURCES``): the text
features read ``text_insights``, the per-text sentiment and complaint reason written by
``aftersales text``. A derived table is always optional: a shop that never ran the flow, or whose
table has no text written by the cutoff, gets NaN for those features, never an error.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import pandera.pandas as pa
from pandera.typing.pandas import Series

from schemas.sources import TABLES
from schemas.text import COMPLAINTS, TEXT_INSIGHTS_TABLE, complaint_column

ModelName = Literal["return", "negative_review", "churn"]
Entity = Literal["order", "customer"]
FeatureKind = Literal["count", "rate", "flag", "days", "numeric", "money", "categorical"]

MODEL_ENTITY: dict[str, Entity] = {"return": "order", "negative_review": "order", "churn": "customer"}
ENTITY_KEY: dict[Entity, str] = {"order": "order_id", "customer": "customer_id"}
UNKNOWN = "unknown"  # the category level of a missing or unseen value
# when the shop can act on an order (``tasks.models.features.orders_as_of_sql`` says which applies)
MOMENTS: tuple[str, ...] = ("shipped", "delivered", "overdue", "ordered")
NO_MOMENT = "none"
CUTOFF = "cutoff"
LABEL = "label"


@dataclass(frozen=True)
class FeatureWindows:
    """The look-back windows and smoothing that define what a feature means.

    Why here and not in ``Settings``: a window is part of a feature's definition (``orders_90d``
    names it) and a trained model depends on it, so changing one is a new feature, recorded in the
    catalogue, not a run-time knob that silently shifts a champion's inputs.
    """

    pre_purchase_days: int = 7  # behaviour "before purchase"
    activity_days: int = 30  # sessions, events, cart adds "lately"
    recent_days: int = 90  # tickets / trend windows
    frequency_days: tuple[int, ...] = (30, 90, 180, 365)  # orders_<n>d
    monetary_days: tuple[int, ...] = (90, 365)  # value_<n>d
    smoothing_strength: float = 20.0  # pseudo-observations pulling a small product towards its category
    customer_smoothing_strength: float = 5.0  # pseudo-orders pulling a customer's return rate to the shop's
    bulk_quantile: float = 0.99  # a line above this quantile of the shop's line quantities is wholesale-scale
    tenure_censor_days: int = 90  # a customer first seen this soon after the data begins may be older


WINDOWS = FeatureWindows()


# tables written by the project's own flows that features may read; always optional
DERIVED_SOURCES: tuple[str, ...] = (TEXT_INSIGHTS_TABLE,)


def _meta(kind: FeatureKind, sources: tuple[str, ...], needs: tuple[str, ...] | None) -> dict[str, Any]:
    unknown = [s for s in sources if s not in TABLES and s not in DERIVED_SOURCES]
    if unknown:
        raise ValueError(f"unknown source tables {unknown}")
    if needs is None:
        needs = tuple(s for s in sources if s in DERIVED_SOURCES or TABLES[s].optional_source)
    return {"kind": kind, "sources": sources, "needs": needs}


def count(description: str, *sources: str, needs: tuple[str, ...] | None = None) -> Any:
    """A non-negative count."""
    return pa.Field(nullable=True, ge=0, description=description, metadata=_meta("count", sources, needs))


def rate(description: str, *sources: str, needs: tuple[str, ...] | None = None) -> Any:
    """A share or probability in [0, 1]."""
    return pa.Field(
        nullable=True, ge=0, le=1, description=description, metadata=_meta("rate", sources, needs)
    )


def flag(description: str, *sources: str, needs: tuple[str, ...] | None = None) -> Any:
    """A yes/no fact as 0/1."""
    return pa.Field(nullable=True, isin=[0, 1], description=description, metadata=_meta("flag", sources, needs))


def days(description: str, *sources: str, signed: bool = False, needs: tuple[str, ...] | None = None) -> Any:
    """A duration in (fractional) days; non-negative unless ``signed``."""
    checks: dict[str, Any] = {} if signed else {"ge": 0}
    return pa.Field(nullable=True, description=description, metadata=_meta("days", sources, needs), **checks)


def money(description: str, *sources: str, needs: tuple[str, ...] | None = None) -> Any:
    """A non-negative amount in the shop's currency."""
    return pa.Field(nullable=True, ge=0, description=description, metadata=_meta("money", sources, needs))


def numeric(description: str, *sources: str, needs: tuple[str, ...] | None = None, **checks: Any) -> Any:
    """Any other number (a difference, a score, hours)."""
    return pa.Field(nullable=True, description=description, metadata=_meta("numeric", sources, needs), **checks)


def categorical(description: str, *sources: str) -> Any:
    """A pandas ``category`` with sorted levels including ``unknown``; never null."""
    return pa.Field(nullable=False, description=description, metadata=_meta("categorical", sources, ()))


def key(description: str, unique: bool = False) -> Any:
    return pa.Field(nullable=False, str_length={"min_value": 1}, unique=unique, description=description)


PRE = WINDOWS.pre_purchase_days
TI = TEXT_INSIGHTS_TABLE
# complaint reasons with their own count feature: the ones structured data does not already carry
# (lateness and damage in transit show in the delivery features, price_value has only lexicon
# weak labels); 4 of 7 keep the feature count modest
TEXT_COMPLAINTS: tuple[str, ...] = ("size_fit", "quality_defect", "not_as_described", "service_attitude")
# what every text feature says about where its values come from (and the text models' own horizon)
TEXT_NOTE = (
    "; from the per-text predictions of `aftersales text`, counting only texts created by the cutoff "
    "(the text models themselves are fitted on texts up to text.train_until, by default all texts: "
    "set it no later than the earliest training cutoff for a strict backtest); empty when "
    "text_insights is missing or has no text by the cutoff")


class _Derived(pa.DataFrameModel):
    class Config:
        coerce = True
        strict = True
        ordered = True


class OrderFeatures(_Derived):
    """One row per order placed by the cutoff; every value as known at the cutoff."""

    order_id: Series[str] = key("the order", unique=True)
    customer_id: Series[str] = key("who placed it")
    # the order itself
    order_value: Series[float] = money("total amount paid for the order", "orders")
    discount_share: Series[float] = rate(
        "discount as a share of the pre-discount order value (order discount, else the sum of line "
        "discounts)", "orders", "order_items")
    shipping_fee: Series[float] = money("shipping fee charged", "orders")
    n_items: Series[float] = count("units bought (sum of line quantities)", "order_items")
    n_lines: Series[float] = count("order lines", "order_items")
    mean_unit_price: Series[float] = money("unit price averaged over units", "order_items")
    max_unit_price: Series[float] = money("highest unit price in the order", "order_items")
    max_line_quantity: Series[float] = count("largest quantity on one line of the order", "order_items")
    units_per_line: Series[float] = numeric("units per order line", "order_items", ge=0)
    bulk_line_share: Series[float] = rate(
        f"share of the order's lines whose quantity is above the {WINDOWS.bulk_quantile:.0%} quantile of the "
        "shop's line quantities as of the cutoff (wholesale-scale lines)", "orders", "order_items")
    value_vs_customer_median: Series[float] = numeric(
        "order value over the median value of the customer's other orders placed by the cutoff; empty "
        "without another order", "orders", ge=0)
    items_vs_customer_median: Series[float] = numeric(
        "units in the order over the median units of the customer's other orders placed by the cutoff; "
        "empty without another order", "orders", "order_items", ge=0)
    size_bracketing: Series[float] = count(
        "products bought in more than one size in the same order (buy several, keep one)", "order_items")
    size_sensitive_share: Series[float] = rate(
        "share of units whose product is size-sensitive", "order_items", "products")
    max_product_return_rate: Series[float] = rate(
        "highest historical return rate among the order's products: returned lines over lines of settled "
        "orders (delivered by the cutoff; placed, in a shop without delivery dates), a line counting as "
        "returned with a return requested, or its order cancelled, by the cutoff; smoothed towards the "
        f"category rate with {WINDOWS.smoothing_strength:g} pseudo-lines",
        "orders", "order_items", "products", "returns")
    mean_product_return_rate: Series[float] = rate(
        "mean of the smoothed product return rates over the order's lines",
        "orders", "order_items", "products", "returns")
    max_category_return_rate: Series[float] = rate(
        "highest historical return rate among the order's categories, smoothed towards the shop rate",
        "orders", "order_items", "products", "returns")
    mean_category_return_rate: Series[float] = rate(
        "mean of the smoothed category return rates over the order's lines",
        "orders", "order_items", "products", "returns")
    product_past_returns: Series[float] = count(
        "returned or cancelled lines of the order's products (each product once) among settled orders, as "
        "known at the cutoff", "orders", "order_items", "returns")
    product_past_sales: Series[float] = count(
        "lines of the order's products (each product once) in settled orders by the cutoff: how much "
        "history the product return rates stand on", "orders", "order_items")
    main_category: Series[pd.CategoricalDtype] = categorical(
        "category holding most of the order's value", "order_items", "products")
    payment_type: Series[pd.CategoricalDtype] = categorical("how the order was paid", "orders")
    region: Series[pd.CategoricalDtype] = categorical(
        "delivery region (the customer's region when the order has none)", "orders", "customers")
    carrier: Series[pd.CategoricalDtype] = categorical("carrier delivering the order", "orders")
    # delivery as known at the cutoff
    moment: Series[pd.CategoricalDtype] = categorical(
        "when the shop can act on the order at this cutoff: shipped, delivered or overdue within the last "
        "moment window (labels.moment_window_days; overdue again every labels.overdue_repeat_days), ordered "
        "(a shop without shipment or delivery dates), else none", "orders")
    days_since_order: Series[float] = days("days from placing the order to the cutoff", "orders")
    promised_days: Series[float] = days("delivery time promised at purchase, in days", "orders")
    handling_days: Series[float] = days(
        "days from placing the order to its shipment; empty when not shipped by the cutoff or without "
        "shipment dates", "orders")
    is_delivered: Series[float] = flag("delivered by the cutoff", "orders")
    days_since_delivery: Series[float] = days(
        "days from delivery to the cutoff; empty when not delivered by then", "orders")
    days_late: Series[float] = days(
        "days delivered after the promised date (negative: early); for an order still undelivered at "
        "the cutoff, days overdue so far (0 before the promised date)", "orders", signed=True)
    is_late: Series[float] = flag("delivered after its promised date, or overdue at the cutoff", "orders")
    carrier_late_rate: Series[float] = rate(
        "share of the carrier's orders delivered late or overdue as known at the cutoff, smoothed "
        "towards the shop's late rate", "orders")
    # behaviour around the purchase
    size_chart_views_before: Series[float] = count(
        f"size-chart views by the customer in the {PRE} days before purchase", "orders", "events")
    return_policy_views_before: Series[float] = count(
        f"return-policy views by the customer in the {PRE} days before purchase", "orders", "events")
    size_chart_views_after: Series[float] = count(
        "size-chart views by the customer after purchase, up to the cutoff", "orders", "events")
    return_policy_views_after: Series[float] = count(
        "return-policy views by the customer after purchase, up to the cutoff", "orders", "events")
    size_sensitive_items_unviewed: Series[float] = count(
        f"size-sensitive units bought without viewing that product's size chart in the {PRE} days "
        "before purchase", "orders", "order_items", "products", "events")
    cart_adds_before: Series[float] = count(
        f"add-to-cart events by the customer in the {PRE} days before purchase", "orders", "events")
    cart_removes_before: Series[float] = count(
        f"remove-from-cart events by the customer in the {PRE} days before purchase", "orders", "events")
    support_contacts_after: Series[float] = count(
        "contact-support events by the customer after purchase, up to the cutoff", "orders", "events")
    # service on this order
    order_tickets: Series[float] = count("tickets about this order opened by the cutoff", "tickets")
    order_unresolved_tickets: Series[float] = count(
        "tickets about this order still unresolved at the cutoff", "tickets")
    order_ticket_wait_hours: Series[float] = numeric(
        "longest wait for a first response among this order's tickets, counting a still-unanswered "
        "ticket up to the cutoff; empty without tickets", "tickets", ge=0)
    order_review_score: Series[float] = numeric(
        "lowest score of this order's reviews written by the cutoff; empty without a review",
        "reviews", ge=1, le=5)
    # the customer's history as known at the cutoff (other orders only)
    customer_prior_orders: Series[float] = count(
        "orders the customer placed before this one", "orders")
    customer_past_returns: Series[float] = count(
        "the customer's other settled orders (delivered by the cutoff; placed, in a shop without delivery "
        "dates) with a return requested, or cancelled, by the cutoff", "orders", "returns")
    customer_return_rate: Series[float] = rate(
        "share of the customer's other settled orders returned or cancelled; empty without such orders",
        "orders", "returns")
    customer_return_rate_smoothed: Series[float] = rate(
        "the same share smoothed towards the shop's order return rate with "
        f"{WINDOWS.customer_smoothing_strength:g} pseudo-orders (a first order gets the shop rate)",
        "orders", "returns")
    customer_tickets: Series[float] = count("tickets the customer opened by the cutoff", "tickets")
    customer_complaints: Series[float] = count(
        "of those, complaints (delivery, product defect or service complaint)", "tickets")
    customer_escalated_tickets: Series[float] = count(
        "the customer's tickets known to be escalated at the cutoff", "tickets")
    customer_unresolved_tickets: Series[float] = count(
        "the customer's tickets unresolved at the cutoff", "tickets")
    customer_reviews: Series[float] = count(
        "reviews on the customer's orders written by the cutoff", "orders", "reviews")
    customer_bad_reviews: Series[float] = count(
        "of those, bad reviews (score at or below the negative-review threshold)", "orders", "reviews")
    # what the texts said (reviews, tickets, return reasons) as of the cutoff
    order_negative_text_count: Series[float] = count(
        "reviews, tickets and return reasons about this order that the sentiment model finds negative"
        + TEXT_NOTE, TI)
    customer_negative_text_count: Series[float] = count(
        "the customer's reviews, tickets and return reasons (any order) that the sentiment model finds "
        "negative" + TEXT_NOTE, TI)
    customer_negative_text_share: Series[float] = rate(
        "share of the customer's texts that are negative; empty without a text" + TEXT_NOTE, TI)
    customer_days_since_negative_text: Series[float] = days(
        "days since the customer's latest negative text; empty without one" + TEXT_NOTE, TI)
    customer_complaint_size_fit_count: Series[float] = count(
        "the customer's texts whose complaint reason is size or fit" + TEXT_NOTE, TI)
    customer_complaint_quality_defect_count: Series[float] = count(
        "the customer's texts whose complaint reason is a quality defect" + TEXT_NOTE, TI)
    customer_complaint_not_as_described_count: Series[float] = count(
        "the customer's texts whose complaint reason is an item not as described" + TEXT_NOTE, TI)
    customer_complaint_service_attitude_count: Series[float] = count(
        "the customer's texts whose complaint reason is the service staff's attitude" + TEXT_NOTE, TI)
    customer_tenure_days: Series[float] = days(
        "days from sign-up (or first order) to the cutoff; empty when that start lies in the first "
        f"{WINDOWS.tenure_censor_days} days of the shop's data (the customer may be older than the data)",
        "customers", "orders")
    customer_tenure_censored: Series[float] = flag(
        f"the customer was first seen in the first {WINDOWS.tenure_censor_days} days of the shop's data, "
        "so their tenure is unknown (not 'new')", "customers", "orders")


class CustomerFeatures(_Derived):
    """One row per customer with an order placed by the cutoff; every value as known at the cutoff."""

    customer_id: Series[str] = key("the customer", unique=True)
    recency_days: Series[float] = days("days since the customer's last order", "orders")
    orders_total: Series[float] = count("orders placed by the cutoff", "orders")
    orders_30d: Series[float] = count("orders placed in the 30 days before the cutoff", "orders")
    orders_90d: Series[float] = count("orders placed in the 90 days before the cutoff", "orders")
    orders_180d: Series[float] = count("orders placed in the 180 days before the cutoff", "orders")
    orders_365d: Series[float] = count("orders placed in the 365 days before the cutoff", "orders")
    order_trend_90d: Series[float] = numeric(
        "orders in the last 90 days minus orders in the 90 days before those", "orders")
    value_90d: Series[float] = money("amount spent in the 90 days before the cutoff", "orders")
    value_365d: Series[float] = money("amount spent in the 365 days before the cutoff", "orders")
    value_trend_90d: Series[float] = numeric(
        "amount spent in the last 90 days minus the amount in the 90 days before those", "orders")
    avg_order_value: Series[float] = money("mean order amount", "orders")
    order_value_cv: Series[float] = numeric(
        "variability of order amounts (standard deviation over mean); empty for a one-time buyer", "orders", ge=0)
    value_per_active_month: Series[float] = money(
        "amount spent by the cutoff per month since the first order (at least one month)", "orders")
    distinct_products: Series[float] = count("different products bought by the cutoff", "orders", "order_items")
    mean_days_between_orders: Series[float] = days(
        "mean gap between consecutive orders; empty for a one-time buyer", "orders")
    median_days_between_orders: Series[float] = days(
        "median gap between consecutive orders; empty for a one-time buyer", "orders")
    gap_ratio: Series[float] = numeric(
        "days since the last order over the customer's own mean gap between orders (above 1: later than "
        "usual); empty for a one-time buyer", "orders", ge=0)
    median_gap_ratio: Series[float] = numeric(
        "days since the last order over the customer's own median gap; empty for a one-time buyer", "orders", ge=0)
    avg_discount_share: Series[float] = rate("mean discount share of the customer's orders", "orders")
    late_deliveries: Series[float] = count(
        "orders delivered late, or overdue at the cutoff", "orders")
    late_delivery_rate: Series[float] = rate(
        "late deliveries over orders delivered or overdue at the cutoff", "orders")
    returns_total: Series[float] = count(
        "settled orders (delivered by the cutoff; placed, in a shop without delivery dates) with a return "
        "requested, or cancelled, by the cutoff", "orders", "returns")
    return_rate: Series[float] = rate(
        "share of settled orders returned or cancelled by the cutoff; empty without a settled order",
        "orders", "returns")
    tickets_total: Series[float] = count("tickets opened by the cutoff", "tickets")
    tickets_90d: Series[float] = count("tickets opened in the 90 days before the cutoff", "tickets")
    complaints_total: Series[float] = count(
        "complaint tickets (delivery, product defect or service complaint)", "tickets")
    unresolved_tickets: Series[float] = count("tickets unresolved at the cutoff", "tickets")
    escalated_tickets: Series[float] = count("tickets known to be escalated at the cutoff", "tickets")
    mean_satisfaction: Series[float] = numeric(
        "mean satisfaction (1-5) of tickets resolved and rated by the cutoff", "tickets", ge=1, le=5)
    mean_first_response_hours: Series[float] = numeric(
        "mean hours to a first response over tickets answered by the cutoff", "tickets", ge=0)
    reviews_total: Series[float] = count("reviews written by the cutoff", "orders", "reviews")
    mean_review_score: Series[float] = numeric(
        "mean review score (1-5); empty without reviews", "orders", "reviews", ge=1, le=5)
    bad_reviews: Series[float] = count(
        "reviews at or below the negative-review threshold", "orders", "reviews")
    days_since_bad_experience: Series[float] = days(
        "days since the latest late or overdue delivery, bad review or escalated ticket; empty if "
        "none (uses whichever of reviews and tickets exist)", "orders", "reviews", "tickets", needs=())
    negative_text_count: Series[float] = count(
        "reviews, tickets and return reasons the sentiment model finds negative" + TEXT_NOTE, TI)
    negative_text_share: Series[float] = rate(
        "share of the customer's texts that are negative; empty without a text" + TEXT_NOTE, TI)
    days_since_negative_text: Series[float] = days(
        "days since the latest negative text; empty without one" + TEXT_NOTE, TI)
    complaint_size_fit_count: Series[float] = count(
        "texts whose complaint reason is size or fit" + TEXT_NOTE, TI)
    complaint_quality_defect_count: Series[float] = count(
        "texts whose complaint reason is a quality defect" + TEXT_NOTE, TI)
    complaint_not_as_described_count: Series[float] = count(
        "texts whose complaint reason is an item not as described" + TEXT_NOTE, TI)
    complaint_service_attitude_count: Series[float] = count(
        "texts whose complaint reason is the service staff's attitude" + TEXT_NOTE, TI)
    sessions_30d: Series[float] = count("browsing sessions in the 30 days before the cutoff", "events")
    events_30d: Series[float] = count("behaviour events in the 30 days before the cutoff", "events")
    cart_adds_30d: Series[float] = count("add-to-cart events in the 30 days before the cutoff", "events")
    abandoned_carts_30d: Series[float] = count(
        "sessions in the last 30 days with an add-to-cart but no checkout", "events")
    tenure_days: Series[float] = days(
        "days from sign-up (or first order) to the cutoff; empty when that start lies in the first "
        f"{WINDOWS.tenure_censor_days} days of the shop's data (the customer may be older than the data)",
        "customers", "orders")
    tenure_censored: Series[float] = flag(
        f"the customer was first seen in the first {WINDOWS.tenure_censor_days} days of the shop's data, "
        "so their tenure is unknown (not 'new')", "customers", "orders")
    is_one_time_buyer: Series[float] = flag("exactly one order placed by the cutoff", "orders")
    region: Series[pd.CategoricalDtype] = categorical(
        "region of the latest order (else the customer's region)", "orders", "customers")
    payment_type: Series[pd.CategoricalDtype] = categorical("payment type of the latest order", "orders")


FEATURE_MODELS: dict[Entity, type[_Derived]] = {"order": OrderFeatures, "customer": CustomerFeatures}


def _check_window_names(w: FeatureWindows) -> None:
    """Feature names that spell a window (``orders_90d``) must agree with ``WINDOWS``."""
    names = set(CustomerFeatures.to_schema().columns)
    expected = {f"orders_{d}d" for d in w.frequency_days} | {f"value_{d}d" for d in w.monetary_days}
    expected |= {f"tickets_{w.recent_days}d", f"order_trend_{w.recent_days}d", f"value_trend_{w.recent_days}d",
                 f"sessions_{w.activity_days}d",
                 f"events_{w.activity_days}d", f"cart_adds_{w.activity_days}d",
                 f"abandoned_carts_{w.activity_days}d"}
    missing = expected - names
    if missing or w.recent_days not in w.frequency_days or w.recent_days not in w.monetary_days:
        raise ValueError(f"feature windows and names disagree: {sorted(missing)}")


_check_window_names(WINDOWS)


def _check_text_features() -> None:
    """The declared complaint-count features are exactly ``TEXT_COMPLAINTS`` (the SQL builds them)."""
    if not set(TEXT_COMPLAINTS) <= set(COMPLAINTS):
        raise ValueError(f"TEXT_COMPLAINTS {TEXT_COMPLAINTS} must be complaint reasons of {COMPLAINTS}")
    for model, prefix in ((OrderFeatures, "customer_"), (CustomerFeatures, "")):
        names = set(model.to_schema().columns)
        declared = {c for c in COMPLAINTS if f"{prefix}{complaint_column(c)}" in names}
        if declared != set(TEXT_COMPLAINTS):
            raise ValueError(f"{model.__name__}: complaint counts {sorted(declared)} != {TEXT_COMPLAINTS}")


_check_text_features()


class _Labelled(pa.DataFrameModel):
    """The columns a training set adds to the feature frame."""

    cutoff: Series[pd.Timestamp] = pa.Field(nullable=False, description="as-of date of the features")
    label: Series[int] = pa.Field(isin=[0, 1], description="outcome after the cutoff")


def _with_cutoff(entity: Entity, with_label: bool) -> pa.DataFrameSchema:
    """Keys, cutoff, features (and label) in that order."""
    features = FEATURE_MODELS[entity].to_schema()
    extra = _Labelled.to_schema().columns
    keys = [c for c, col in features.columns.items() if not (col.metadata or {}).get("kind")]
    columns = {}
    for c in keys:  # an entity recurs across cutoffs: unique per (entity, cutoff) instead
        columns[c] = copy.deepcopy(features.columns[c])
        columns[c].unique = False
    columns[CUTOFF] = extra[CUTOFF]
    columns.update({c: col for c, col in features.columns.items() if c not in keys})
    if with_label:
        columns[LABEL] = extra[LABEL]
    return pa.DataFrameSchema(columns, strict=True, ordered=True, coerce=True, unique=[ENTITY_KEY[entity], CUTOFF],
                              name=f"{entity}_{'training' if with_label else 'scoring'}_set")


def training_set_schema(model: ModelName) -> pa.DataFrameSchema:
    """Keys, ``cutoff``, the model's features and ``label`` in {0, 1}."""
    return _with_cutoff(MODEL_ENTITY[model], with_label=True)


def scoring_frame_schema(model: ModelName) -> pa.DataFrameSchema:
    """The training-set columns without ``label``: what the scoring flow feeds the model."""
    return _with_cutoff(MODEL_ENTITY[model], with_label=False)
