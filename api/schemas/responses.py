"""Response shapes (TypedDicts: the views build plain dicts, OpenAPI documents these).

A view that gains a key must gain it here too (mypy says so); a key that is not always present
is `NotRequired`. Statuses and priorities are documented as the enums of `app.models.enums`.
(No `from __future__ import annotations` here: TypedDict sees `NotRequired` only when evaluated.)
"""

from typing import Annotated, Any, NotRequired, TypedDict

from litestar.params import KwargDefinition

from app.models.enums import Plan, Priority, RunStatus, TaskStatus

#: An instant on the wire: ISO 8601 UTC with `Z`, milliseconds.
IsoTime = Annotated[
    str, KwargDefinition(format="date-time", description="ISO 8601 UTC, e.g. 2026-03-08T14:00:00.000Z")
]
Id = Annotated[str, KwargDefinition(format="uuid")]
TaskStatusName = Annotated[str, KwargDefinition(enum=[status.value for status in TaskStatus])]
RunStatusName = Annotated[str, KwargDefinition(enum=[status.value for status in RunStatus])]
PriorityName = Annotated[str, KwargDefinition(enum=[priority.value for priority in Priority])]
TriggerName = Annotated[str, KwargDefinition(enum=["api", "schedule", "manual"])]
PlanName = Annotated[str, KwargDefinition(enum=[plan.value for plan in Plan])]
#: A failure: `{code, message}` (and, for some codes, more detail).
ErrorDetail = Annotated[dict[str, Any], KwargDefinition(description="{code, message}")]


class ErrorBody(TypedDict):
    """Every error answer: a stable code, a sentence, and for invalid input each bad field."""

    error: str
    message: str
    fields: NotRequired[dict[str, str]]


class ScheduleView(TypedDict):
    enabled: bool
    cron: str
    timezone: str


class RunView(TypedDict):
    id: Id
    taskId: Id
    trigger: TriggerName
    scheduledFor: IsoTime | None
    status: RunStatusName
    priority: PriorityName
    attempts: int
    maxAttempts: int
    queuedAt: IsoTime | None
    startedAt: IsoTime | None
    finishedAt: IsoTime | None
    tokensUsed: int
    #: The token kinds as the provider reported them (cached tokens are part of promptTokens).
    promptTokens: int
    completionTokens: int
    cachedTokens: int
    #: Steps completed (GET /api/runs/{id}/steps lists them).
    steps: int
    creditsUsed: int
    tokensOverBudget: NotRequired[int]
    result: str | None
    error: ErrorDetail | None


class TaskView(TypedDict):
    id: Id
    title: str
    goal: str
    agentType: str
    status: TaskStatusName
    priority: PriorityName
    schedule: ScheduleView | None
    #: `{url, events, disabled, disabledAt}`, or null.
    webhook: dict[str, Any] | None
    agentConfig: dict[str, Any]
    nextRunAt: IsoTime | None
    lastRunAt: IsoTime | None
    tokensUsed: int
    promptTokens: int
    completionTokens: int
    cachedTokens: int
    creditsUsed: int
    result: str | None
    error: ErrorDetail | None
    createdAt: IsoTime
    updatedAt: IsoTime
    #: On GET /api/tasks/{id} and the task-control answers: the 10 most recent runs.
    recentRuns: NotRequired[list[RunView]]


class MeView(TypedDict):
    id: Id
    email: str
    plan: PlanName
    monthlyCredits: int
    creditsUsed: int
    creditsReserved: int
    creditsRemaining: int
    #: Runs of the caller that may run at once, and how many are running now.
    maxConcurrentRuns: int
    runningRuns: int


class TaskPage(TypedDict):
    items: list[TaskView]
    nextCursor: str | None


class RunPage(TypedDict):
    items: list[RunView]
    nextCursor: str | None


class ScheduledTask(TypedDict):
    """201 from POST /api/agent/execute with an enabled schedule."""

    taskId: Id
    status: TaskStatusName
    schedule: ScheduleView | None
    nextRunAt: IsoTime | None


class QueuedRun(TypedDict):
    """202: the run is queued (or, for a waiting request, still going)."""

    taskId: Id
    runId: Id
    status: RunStatusName


class FinishedRun(TypedDict):
    """200 from a waiting POST /api/agent/execute: the run ended within the wait."""

    taskId: Id
    runId: Id
    status: RunStatusName
    result: str | None
    error: ErrorDetail | None
    tokensUsed: int
    creditsUsed: int


class SchedulePreview(TypedDict):
    cron: str
    timezone: str
    runs: list[IsoTime]


class SchedulingHealth(TypedDict):
    status: str
    scheduledTasks: int
    tasksCurrentlyDue: int
    timestamp: IsoTime


class SchedulingPass(TypedDict):
    status: str
    runsQueued: int
    runsSkipped: int
    timestamp: IsoTime


class QueueFigures(TypedDict):
    waiting: int
    active: int
    completed: int
    failed: int
    delayed: int


class Orchestrator(TypedDict):
    running: bool
    activeAgents: int
    queuedTasks: int
    completedToday: int
    failedToday: int
    uptimeSeconds: int


class QueueStats(TypedDict):
    queues: dict[str, QueueFigures]
    totals: QueueFigures
    orchestrator: Orchestrator
    lateness: NotRequired[dict[str, Any]]
    slots: NotRequired[dict[str, Any]]
    #: Flow control: waitingForSlot, waitingForProviderBudget, providerRateLimitedToday.
    flowControl: NotRequired[dict[str, int]]


class Health(TypedDict):
    status: str
    database: str
    redis: str
