"""Validation of a task request: every offending field is named, nothing is written on error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.agents.registry import AGENT_TYPES, agent_names
from app.errors import InvalidInput
from app.models.enums import Priority
from app.webhooks.addresses import WebhookConfig, parse_webhook

GOAL_MAX_CHARS = 20_000
TITLE_MAX_CHARS = 200
TIMEOUT_MS_RANGE = (1_000, 3_600_000)
DEFAULT_TIMEOUT_MS = 300_000
MAX_RETRIES_RANGE = (0, 10)
DEFAULT_MAX_RETRIES = 3
MODEL_MAX_CHARS = 200

#: A request without `async` waits for its run at most this long (then answers 202).
SYNC_WAIT_CAP_MS = 60_000

EXECUTE_FIELDS = frozenset(
    {"goal", "agentType", "title", "priority", "async", "schedule", "agentConfig", "webhook"}
)
SCHEDULE_FIELDS = frozenset({"enabled", "cron", "timezone"})
AGENT_CONFIG_FIELDS = frozenset({"timeout", "maxRetries", "model"})


@dataclass(frozen=True, slots=True)
class ScheduleInput:
    enabled: bool
    cron: str
    timezone: str


@dataclass(frozen=True, slots=True)
class ExecuteRequest:
    goal: str
    agent_type: str
    title: str
    priority: Priority
    wait: bool
    schedule: ScheduleInput | None
    agent_config: dict[str, Any]
    webhook: WebhookConfig | None = None

    @property
    def wait_s(self) -> float:
        """How long the request waits for its run: min(timeout, 60 s)."""
        return min(int(self.agent_config["timeout"]), SYNC_WAIT_CAP_MS) / 1000


class _Errors:
    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def add(self, field: str, problem: str) -> None:
        self.fields.setdefault(field, problem)

    def unknown(self, payload: Mapping[str, Any], allowed: frozenset[str], prefix: str = "") -> None:
        for name in payload:
            if name not in allowed:
                self.add(prefix + name, "unknown field")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_text(errors: _Errors, payload: Mapping[str, Any], field: str, max_chars: int) -> str | None:
    value = payload.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        errors.add(field, "must be a string")
        return None
    if len(value) > max_chars:
        errors.add(field, f"must be at most {max_chars} characters")
        return None
    return value.strip() or None


def _goal(errors: _Errors, payload: Mapping[str, Any]) -> str:
    goal = payload.get("goal")
    if goal is None:
        errors.add("goal", "is required")
    elif not isinstance(goal, str):
        errors.add("goal", "must be a string")
    elif not goal.strip():
        errors.add("goal", "must not be empty")
    elif len(goal) > GOAL_MAX_CHARS:
        errors.add("goal", f"must be at most {GOAL_MAX_CHARS} characters (got {len(goal)})")
    else:
        return goal.strip()
    return ""


def _agent_type(errors: _Errors, payload: Mapping[str, Any]) -> str:
    agent_type = payload.get("agentType")
    valid = ", ".join(agent_names())
    if agent_type is None:
        errors.add("agentType", f"is required; one of {valid}")
    elif not isinstance(agent_type, str) or agent_type not in AGENT_TYPES:
        errors.add("agentType", f"unknown agent type {agent_type!r}; valid: {valid}")
    else:
        return agent_type
    return ""


def parse_priority(errors: _Errors | None, value: Any, field: str = "priority") -> Priority:
    if value is None:
        return Priority.MEDIUM
    valid = ", ".join(p.value for p in Priority)
    try:
        return Priority(value) if isinstance(value, str) else Priority("?")
    except ValueError:
        if errors is None:
            raise InvalidInput({field: f"must be one of {valid}"}) from None
        errors.add(field, f"must be one of {valid}")
        return Priority.MEDIUM


def _int_in_range(
    errors: _Errors, config: Mapping[str, Any], name: str, bounds: tuple[int, int], default: int
) -> int:
    value = config.get(name, default)
    field = f"agentConfig.{name}"
    if not _is_int(value):
        errors.add(field, "must be an integer")
        return default
    low, high = bounds
    if not low <= value <= high:
        errors.add(field, f"must be between {low:,} and {high:,} (got {value:,})")
        return default
    return int(value)


def _agent_config(errors: _Errors, payload: Mapping[str, Any]) -> dict[str, Any]:
    config = payload.get("agentConfig")
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        errors.add("agentConfig", "must be an object")
        config = {}
    errors.unknown(config, AGENT_CONFIG_FIELDS, "agentConfig.")
    result: dict[str, Any] = {
        "timeout": _int_in_range(errors, config, "timeout", TIMEOUT_MS_RANGE, DEFAULT_TIMEOUT_MS),
        "maxRetries": _int_in_range(errors, config, "maxRetries", MAX_RETRIES_RANGE, DEFAULT_MAX_RETRIES),
    }
    model = config.get("model")
    if model is not None:
        if not isinstance(model, str) or not model.strip() or len(model) > MODEL_MAX_CHARS:
            errors.add(
                "agentConfig.model",
                f"must be a non-empty string of at most {MODEL_MAX_CHARS} characters",
            )
        else:
            result["model"] = model.strip()
    return result


def parse_schedule_input(
    errors: _Errors, value: Any, default_timezone: str, *, partial: bool = False
) -> dict[str, Any] | None:
    """Shape-check a schedule object; the cron maths validates expression and timezone."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        errors.add("schedule", "must be an object with enabled, cron and timezone")
        return None
    errors.unknown(value, SCHEDULE_FIELDS, "schedule.")
    out: dict[str, Any] = {}
    enabled = value.get("enabled", None if partial else True)
    if enabled is not None:
        if not isinstance(enabled, bool):
            errors.add("schedule.enabled", "must be true or false")
        out["enabled"] = enabled
    cron = value.get("cron")
    if cron is None:
        if not partial:
            errors.add("schedule.cron", 'is required, e.g. "0 9 * * *"')
    elif not isinstance(cron, str):
        errors.add("schedule.cron", "must be a string")
    else:
        out["cron"] = cron.strip()
    timezone = value.get("timezone")
    if timezone is None:
        if not partial:
            out["timezone"] = default_timezone
    elif not isinstance(timezone, str):
        errors.add("schedule.timezone", "must be a string (an IANA name such as America/New_York)")
    else:
        out["timezone"] = timezone.strip()
    return out


def _webhook(errors: _Errors, payload: Mapping[str, Any], allow_private: bool) -> WebhookConfig | None:
    config, problems = parse_webhook(payload.get("webhook"), allow_private=allow_private)
    for field, problem in problems.items():
        errors.add(field, problem)
    return config


def parse_execute_request(
    payload: Any, *, default_timezone: str, allow_private_webhooks: bool = False
) -> ExecuteRequest:
    """Validate a POST /api/agent/execute body; raise `InvalidInput` naming every bad field."""
    if not isinstance(payload, Mapping):
        raise InvalidInput({"body": "must be a JSON object"})
    errors = _Errors()
    errors.unknown(payload, EXECUTE_FIELDS)
    goal = _goal(errors, payload)
    agent_type = _agent_type(errors, payload)
    title = _optional_text(errors, payload, "title", TITLE_MAX_CHARS)
    priority = parse_priority(errors, payload.get("priority"))
    wait = payload.get("async", False)
    if not isinstance(wait, bool):
        errors.add("async", "must be true or false")
    schedule = parse_schedule_input(errors, payload.get("schedule"), default_timezone)
    config = _agent_config(errors, payload)
    webhook = _webhook(errors, payload, allow_private_webhooks)
    schedule_input = None
    if schedule is not None and not errors.fields:
        schedule_input = _validated_schedule(errors, schedule)
    if errors.fields:
        raise InvalidInput(errors.fields)
    return ExecuteRequest(
        goal=goal,
        agent_type=agent_type,
        title=title or default_title(goal),
        priority=priority,
        wait=not wait,
        schedule=schedule_input,
        agent_config=config,
        webhook=webhook,
    )


def _validated_schedule(errors: _Errors, schedule: dict[str, Any]) -> ScheduleInput | None:
    from app.cron import parse_schedule

    try:
        parsed = parse_schedule(schedule["cron"], schedule["timezone"])
    except InvalidInput as exc:
        for field, problem in exc.fields.items():
            errors.add(field, problem)
        return None
    return ScheduleInput(enabled=bool(schedule["enabled"]), cron=parsed.expr, timezone=parsed.timezone)


def default_title(goal: str, max_chars: int = 80) -> str:
    first_line = goal.strip().splitlines()[0] if goal.strip() else "Task"
    return first_line if len(first_line) <= max_chars else first_line[: max_chars - 1].rstrip() + "…"


UPDATE_FIELDS = frozenset({"title", "priority", "schedule", "webhook"})


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    title: str | None
    priority: Priority | None
    #: Only the schedule keys that were given (enabled, cron, timezone).
    schedule: dict[str, Any] | None
    #: Whether `webhook` was given; with `webhook` None it removes the task's webhook.
    webhook_given: bool = False
    webhook: WebhookConfig | None = None


def parse_task_update(payload: Any, *, allow_private_webhooks: bool = False) -> TaskUpdate:
    """Validate a PATCH /api/tasks/{id} body; every offending field is named."""
    if not isinstance(payload, Mapping):
        raise InvalidInput({"body": "must be a JSON object"})
    errors = _Errors()
    errors.unknown(payload, UPDATE_FIELDS)
    title = _optional_text(errors, payload, "title", TITLE_MAX_CHARS)
    if "title" in payload and payload["title"] is not None and title is None and "title" not in errors.fields:
        errors.add("title", "must not be empty")
    priority = parse_priority(errors, payload["priority"]) if "priority" in payload else None
    schedule = parse_schedule_input(errors, payload.get("schedule"), "", partial=True)
    if schedule:
        _check_partial_schedule(errors, schedule)
    webhook = _webhook(errors, payload, allow_private_webhooks)
    if errors.fields:
        raise InvalidInput(errors.fields)
    return TaskUpdate(
        title=title, priority=priority, schedule=schedule, webhook_given="webhook" in payload, webhook=webhook
    )


def _check_partial_schedule(errors: _Errors, schedule: dict[str, Any]) -> None:
    """Check whichever of cron and timezone were given, each on its own."""
    from app.cron import parse_schedule, validate_timezone

    timezone_ok = True
    if schedule.get("timezone"):
        try:
            validate_timezone(schedule["timezone"])
        except InvalidInput as exc:
            timezone_ok = False
            for field, problem in exc.fields.items():
                errors.add(field, problem)
    if schedule.get("cron") is not None:
        try:
            parse_schedule(
                schedule["cron"],
                schedule.get("timezone") if timezone_ok and schedule.get("timezone") else "UTC",
            )
        except InvalidInput as exc:
            for field, problem in exc.fields.items():
                errors.add(field, problem)
