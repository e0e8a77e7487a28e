"""Request bodies (pydantic models): what OpenAPI documents is what validation enforces.

Pydantic reports every bad field of a body at once, and `api/errors.py` turns its report into
our `{error, message, fields}` body. Models forbid unknown fields (documented as
`additionalProperties: false`). The handler hands `to_payload()` to the domain parser in
`app.services.task_input`, which applies defaults and the rules between fields.

To add a field: declare it here with a type from `api.schemas.fields` (or one as strict), give
it its camelCase alias, and read it in the domain parser.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.schemas.fields import (
    AgentTypeName,
    CronExpression,
    GoalText,
    ModelName,
    OptionalTitleText,
    TimezoneName,
    TitleText,
    WholeNumber,
)
from app.services.task_input import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_MS,
    MAX_RETRIES_RANGE,
    TIMEOUT_MS_RANGE,
)

#: The values of `app.models.enums.Priority` (a Literal, so strict validation takes JSON strings).
PriorityName = Literal["urgent", "high", "medium", "low"]
#: Webhook events (the contract's list; `app.webhooks` decides which runs send them).
WebhookEvent = Literal["run.completed", "run.failed", "run.cancelled", "run.skipped"]
WEBHOOK_URL_MAX_CHARS = 2_000
WEBHOOK_URL_PATTERN = "^https?://[^\\x00]+$"
WebhookUrl = Annotated[
    str,
    StringConstraints(max_length=WEBHOOK_URL_MAX_CHARS, pattern=WEBHOOK_URL_PATTERN),
    Field(
        description="http(s) only; a host that resolves to a private address is refused "
        "unless WEBHOOK_ALLOW_PRIVATE=true.",
        json_schema_extra={"format": "uri"},
    ),
]


class RequestBody(BaseModel):
    """Base of every request body: unknown fields are errors, inputs are never echoed back."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, populate_by_name=False)

    def to_payload(self) -> dict[str, Any]:
        """The fields the client sent, under their wire names, for the domain parser."""
        return self.model_dump(by_alias=True, exclude_unset=True)


class ScheduleBody(RequestBody):
    enabled: bool = Field(default=True, description="false stores the schedule paused")
    cron: CronExpression
    timezone: TimezoneName | None = None


class AgentConfigBody(RequestBody):
    timeout: Annotated[WholeNumber, Field(ge=TIMEOUT_MS_RANGE[0], le=TIMEOUT_MS_RANGE[1])] = Field(
        default=DEFAULT_TIMEOUT_MS, description="Deadline of one attempt, in milliseconds."
    )
    max_retries: Annotated[WholeNumber, Field(ge=MAX_RETRIES_RANGE[0], le=MAX_RETRIES_RANGE[1])] = Field(
        default=DEFAULT_MAX_RETRIES, alias="maxRetries", description="Retries after a failed attempt."
    )
    model: ModelName | None = None


class WebhookBody(RequestBody):
    url: WebhookUrl
    events: Annotated[list[WebhookEvent], Field(min_length=1)] | None = Field(
        default=None, description="default run.completed and run.failed"
    )


class ExecuteBody(RequestBody):
    """POST /api/agent/execute."""

    goal: GoalText
    agent_type: AgentTypeName = Field(alias="agentType")
    title: OptionalTitleText | None = None
    priority: PriorityName | None = Field(default=None, description="default medium")
    run_async: bool = Field(
        default=False,
        alias="async",
        description="true: answer 202 at once; false: wait for the run up to min(timeout, 60 s)",
    )
    schedule: ScheduleBody | None = Field(
        default=None, description="With `enabled` true the task is scheduled and nothing runs now."
    )
    agent_config: AgentConfigBody | None = Field(default=None, alias="agentConfig")
    webhook: WebhookBody | None = None


class SchedulePatch(RequestBody):
    enabled: bool | None = Field(default=None, description="false pauses, true resumes from now")
    cron: CronExpression | None = None
    timezone: TimezoneName | None = None


class TaskPatchBody(RequestBody):
    """PATCH /api/tasks/{id}: only the fields given change."""

    title: TitleText | None = None
    priority: PriorityName | None = None
    schedule: SchedulePatch | None = Field(
        default=None, description="A new cron or timezone recomputes nextRunAt."
    )
    webhook: WebhookBody | None = Field(default=None, description="null removes the task's webhook")
