"""The closed vocabularies stored as text columns (kept readable for the seed's SQL)."""

from __future__ import annotations

from enum import StrEnum


class Plan(StrEnum):
    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"


#: Monthly credits a plan starts with; enterprise is set per user.
PLAN_CREDITS: dict[Plan, int] = {Plan.FREE: 100, Plan.PRO: 12_000, Plan.ENTERPRISE: 100_000}
#: Runs of one user that may run at once, by plan (`plan set --concurrency` sets another).
PLAN_CONCURRENCY: dict[Plan, int] = {Plan.FREE: 1, Plan.PRO: 5, Plan.ENTERPRISE: 20}


class Priority(StrEnum):
    URGENT = "urgent"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class TaskStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


#: A run in one of these states is finished and never changes again.
FINAL_RUN_STATUSES = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.SKIPPED}
)


class StepKind(StrEnum):
    PLAN = "plan"
    STEP = "step"
    FINAL = "final"


class StepStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class Trigger(StrEnum):
    API = "api"
    SCHEDULE = "schedule"
    MANUAL = "manual"


def sql_in(values: type[StrEnum]) -> str:
    """The body of a CHECK constraint allowing exactly the enum's values."""
    return ", ".join(f"'{member.value}'" for member in values)
