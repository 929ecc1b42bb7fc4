"""Contracts of the care-task layer: scored rows in, the daily task list and control group out.

``ScoredRows`` is what the scoring flow hands over: one row per scored entity and risk, with a
calibrated probability, the value at stake and the three features that pushed the risk up most.
``TaskList`` is what customer-care agents receive: one row per customer and day, in plain words.
``ControlGroup`` is the same row for customers held out on purpose (never contacted), so that
the effect of the care tasks can be measured (``tasks/care/uplift.py``).

Every column name of this layer is declared here once; code refers to ``TaskList.why`` etc.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd
import pandera.pandas as pa
from pandera.typing.pandas import Series

from schemas.sources import OUTCOMES

RISKS = ("return", "negative_review", "late_delivery", "churn")
ORDER_RISKS = ("return", "negative_review", "late_delivery")  # scored per order; churn per customer
REASON_COUNT = 3

TASK_TABLE = "task_list"
CONTROL_TABLE = "control_group"
ASSIGNMENT_TABLE = "control_assignments"
ALL_RISKS = "all"  # the risk of a universal holdout's assignment: no proactive contact at all
TAG_SEPARATOR = ","
PHRASE_SEPARATOR = "; "
NO_UNDERSCORE = r"^[^_]*$"  # agent-facing text never shows an identifier


class ScoredRows(pa.DataFrameModel):
    """One row per scored entity and risk, as the scoring flow produces it."""

    run_date: Series[pd.Timestamp] = pa.Field(description="day the list is for (midnight, naive UTC)")
    risk: Series[str] = pa.Field(isin=RISKS)
    customer_id: Series[str] = pa.Field(str_length={"min_value": 1})
    order_id: Series[str] = pa.Field(nullable=True, description="null for churn")
    probability: Series[float] = pa.Field(ge=0, le=1, description="calibrated probability")
    value_at_stake: Series[float] = pa.Field(
        ge=0, description="order value x margin (order risks); customer expected value (churn)")
    model_version: Series[str] = pa.Field(str_length={"min_value": 1})
    reason_1: Series[str] = pa.Field(nullable=True, description="feature pushing the risk up most")
    reason_1_value: Series[object] = pa.Field(nullable=True)
    reason_2: Series[str] = pa.Field(nullable=True)
    reason_2_value: Series[object] = pa.Field(nullable=True)
    reason_3: Series[str] = pa.Field(nullable=True)
    reason_3_value: Series[object] = pa.Field(nullable=True)
    segment: Optional[Series[str]] = pa.Field(nullable=True)  # noqa: UP045 (pandera needs Optional)
    tags: Optional[Series[str]] = pa.Field(nullable=True, description="comma-separated tag names")  # noqa: UP045

    class Config:
        coerce = True
        strict = False  # the scoring flow may carry extra columns (features, cutoff)

    @pa.dataframe_check(error="order risks need an order_id; churn rows must have none")
    def order_id_matches_risk(cls, df: pd.DataFrame) -> pd.Series:
        order_risk = df["risk"].isin(ORDER_RISKS)
        return order_risk == df["order_id"].notna()

    @pa.dataframe_check(error="one row per run_date, risk, customer and order")
    def one_row_per_entity(cls, df: pd.DataFrame) -> pd.Series:
        return ~df.duplicated(["run_date", "risk", "customer_id", "order_id"], keep=False)


REASON_COLUMNS: tuple[tuple[str, str], ...] = (
    (ScoredRows.reason_1, ScoredRows.reason_1_value),
    (ScoredRows.reason_2, ScoredRows.reason_2_value),
    (ScoredRows.reason_3, ScoredRows.reason_3_value),
)
assert len(REASON_COLUMNS) == REASON_COUNT


class TaskList(pa.DataFrameModel):
    """The care team's list for one day: one task per customer, ranked by expected value."""

    # for people
    task_id: Series[str] = pa.Field(unique=True, description="hash of run_date and customer_id")
    run_date: Series[pd.Timestamp]
    rank: Series[int] = pa.Field(ge=1, description="priority over the whole list (1 = first)")
    queue: Series[str] = pa.Field(str_length={"min_value": 1})
    queue_rank: Series[int] = pa.Field(ge=1, description="priority within the queue")
    action: Series[str] = pa.Field(str_matches=NO_UNDERSCORE)
    channel: Series[str]
    due_by: Series[pd.Timestamp] = pa.Field(description="run_date + the rule's SLA hours")
    customer_id: Series[str] = pa.Field(str_length={"min_value": 1})
    order_id: Series[str] = pa.Field(nullable=True, description="order of the leading risk")
    risk: Series[str] = pa.Field(str_matches=NO_UNDERSCORE, description="leading risk in words")
    probability: Series[float] = pa.Field(ge=0, le=1, description="of the leading risk, rounded")
    value_at_stake: Series[float] = pa.Field(ge=0)
    expected_value: Series[float] = pa.Field(
        description="probability x value at stake x effect - action cost (probability x effect when the data "
        "carries no amounts for the risk)")
    why: Series[str] = pa.Field(str_matches=NO_UNDERSCORE, description="reasons of every risk, in words")
    other_risks: Series[str] = pa.Field(nullable=True, str_matches=NO_UNDERSCORE)
    related_orders: Series[str] = pa.Field(nullable=True, description="other orders the task covers")
    tags: Series[str] = pa.Field(nullable=True)
    segment: Series[str] = pa.Field(nullable=True)
    model_versions: Series[str] = pa.Field(description="risk=version for every model used")
    # for machines (uplift, cool-down, audits)
    risk_code: Series[str] = pa.Field(isin=RISKS, description="leading risk")
    risks: Series[str] = pa.Field(description="every risk merged into the task, comma-separated")
    action_id: Series[str]
    rule: Series[str] = pa.Field(description="playbook rule that chose the action")
    action_cost: Series[float] = pa.Field(ge=0)
    peak_probability: Series[float] = pa.Field(
        ge=0, le=1, description="highest probability among the customer's risks (unrounded; cool-down)")
    effect: Series[float] = pa.Field(
        ge=-1, le=1, description="share of the loss the action is expected to prevent (used in expected value)")
    effect_source: Series[str] = pa.Field(
        description="where the effect comes from: the playbook's prior, or the prior updated by measured uplift")

    class Config:
        coerce = True
        strict = True
        ordered = True

    @pa.dataframe_check(error="one task per customer per day")
    def one_task_per_customer(cls, df: pd.DataFrame) -> pd.Series:
        return ~df.duplicated(["run_date", "customer_id"], keep=False)


class ControlGroup(TaskList):
    """Customers held out on purpose: the task they would have received, never sent."""

    within_capacity: Series[bool] = pa.Field(
        description="expected value high enough to have fit its queue's capacity (the fair comparison)")
    held_for: Series[str] = pa.Field(isin=[*RISKS, ALL_RISKS], description="risk held out for (all: universal)")
    assigned_on: Series[pd.Timestamp] = pa.Field(description="first day of the hold this row sits in")
    held_until: Series[pd.Timestamp] = pa.Field(description="end of the hold: no contact before")


AGENT_TEXT_COLUMNS = (TaskList.action, TaskList.risk, TaskList.why, TaskList.other_risks)


class ControlAssignments(pa.DataFrameModel):
    """Who is held out, for which risk, until when: one row per customer, risk and assignment.

    The draw is a seeded hash of (seed, customer, risk, period), so it never changes when a day is
    re-run; once drawn, the customer stays uncontacted for that risk (``risk`` = ``all``: for any
    proactive contact) until ``window_end``, the end of the outcome window that began on
    ``assigned_on``. Only held-out customers are stored; everyone else is contacted as usual.
    """

    customer_id: Series[str] = pa.Field(str_length={"min_value": 1})
    risk: Series[str] = pa.Field(isin=[*RISKS, ALL_RISKS])
    period: Series[int] = pa.Field(ge=0, description="assignment period: days since 1970-01-01 // period length")
    assigned_on: Series[pd.Timestamp] = pa.Field(description="first run date the customer was held out")
    window_end: Series[pd.Timestamp] = pa.Field(description="assigned_on + the outcome window: no contact before")
    scope: Series[str] = pa.Field(isin=["per_risk", "universal"])
    task_id: Series[str] = pa.Field(description="the control row of the first day (control_group.task_id)")

    class Config:
        coerce = True
        strict = True
        ordered = True

    @pa.dataframe_check(error="one open assignment per customer, risk and start day")
    def one_per_start(cls, df: pd.DataFrame) -> pd.Series:
        return ~df.duplicated(["customer_id", "risk", "assigned_on"], keep=False)


class OutcomeImport(pa.DataFrameModel):
    """A row of a helpdesk export of what agents did, after the mapping file (``aftersales outcomes import``).

    Either ``task_id`` or ``customer_id`` names the task: a customer alone is matched to their
    latest task (or control row) before ``recorded_at``. Stored in the ``outcomes`` table.
    """

    task_id: Series[str] = pa.Field(nullable=True)
    customer_id: Series[str] = pa.Field(nullable=True)
    outcome: Series[str] = pa.Field(isin=OUTCOMES)
    recorded_at: Series[pd.Timestamp] = pa.Field(description="when the agent acted")
    note: Series[str] = pa.Field(nullable=True)
    agent_id: Series[str] = pa.Field(nullable=True)

    class Config:
        coerce = True
        strict = False
