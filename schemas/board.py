"""Contracts of the care board: what each task's risks were, who works a task, and what changed.

``TaskRisks`` keeps, for every task of a day, each of the customer's scored risks with its top
three reasons as codes and values (the lead row flagged), so the board and the hand-out can put
the action and the "why" in each customer's own language. ``BoardClaims`` says who works a task
(at most one person). ``BoardAudit`` records every change made through the board: who, when, what.
What happened to a task goes to the ``outcomes`` source table (``schemas.sources.Outcomes``).
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing.pandas import Series

from schemas.tasks import RISKS

TASK_RISKS_TABLE = "task_risks"
CLAIMS_TABLE = "board_claims"
AUDIT_TABLE = "board_audit"
AUDIT_ACTIONS = ("claim", "release", "reassign", "outcome", "note")
OUTCOME_BATCH = "board"  # the outcomes table's _batch_id for rows recorded on the board


class _Table(pa.DataFrameModel):
    class Config:
        coerce = True
        strict = True
        ordered = True


class TaskRisks(_Table):
    """One row per task and scored risk of its customer; reason values kept as text."""

    run_date: Series[pd.Timestamp]
    task_id: Series[str] = pa.Field(str_length={"min_value": 1})
    customer_id: Series[str] = pa.Field(str_length={"min_value": 1})
    risk: Series[str] = pa.Field(isin=RISKS)
    order_id: Series[str] = pa.Field(nullable=True)
    probability: Series[float] = pa.Field(ge=0, le=1)
    lead: Series[bool] = pa.Field(description="the risk the task's action targets")
    reason_1: Series[str] = pa.Field(nullable=True)
    reason_1_value: Series[str] = pa.Field(nullable=True)
    reason_2: Series[str] = pa.Field(nullable=True)
    reason_2_value: Series[str] = pa.Field(nullable=True)
    reason_3: Series[str] = pa.Field(nullable=True)
    reason_3_value: Series[str] = pa.Field(nullable=True)

    @pa.dataframe_check(error="one lead risk per task")
    def one_lead_per_task(cls, df: pd.DataFrame) -> pd.Series:
        leads = df[df["lead"]].groupby("task_id").size()
        return df["task_id"].map(leads).fillna(0).eq(1)


class BoardClaims(_Table):
    """Who works a task: one row per claimed task (a released task has none)."""

    task_id: Series[str] = pa.Field(str_length={"min_value": 1}, unique=True)
    run_date: Series[pd.Timestamp]
    agent: Series[str] = pa.Field(str_length={"min_value": 1})
    claimed_at: Series[pd.Timestamp]


class BoardAudit(_Table):
    """Every change made on the board, appended, never rewritten."""

    changed_at: Series[pd.Timestamp] = pa.Field(description="UTC")
    agent: Series[str] = pa.Field(description="who made the change")
    action: Series[str] = pa.Field(isin=AUDIT_ACTIONS)
    task_id: Series[str]
    run_date: Series[pd.Timestamp]
    before: Series[str] = pa.Field(nullable=True, description="JSON of what was there")
    after: Series[str] = pa.Field(nullable=True, description="JSON of what is there now")


CLAIMS_DDL = (f'CREATE TABLE IF NOT EXISTS "{CLAIMS_TABLE}" (task_id VARCHAR PRIMARY KEY, run_date TIMESTAMP, '
              "agent VARCHAR NOT NULL, claimed_at TIMESTAMP NOT NULL)")
AUDIT_DDL = (f'CREATE TABLE IF NOT EXISTS "{AUDIT_TABLE}" (changed_at TIMESTAMP NOT NULL, agent VARCHAR NOT NULL, '
             "action VARCHAR NOT NULL, task_id VARCHAR, run_date TIMESTAMP, before VARCHAR, after VARCHAR)")
