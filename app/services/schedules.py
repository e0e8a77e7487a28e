"""A task's schedule: storing it, keeping `next_run_at` right, and the rules of a preview."""

from __future__ import annotations

from datetime import UTC, datetime

from app.cron import CronSchedule, next_fire, next_fires, parse_schedule
from app.errors import InvalidCronExpression, InvalidInput
from app.models import Task

#: A preview's `after` must lie in [PREVIEW_AFTER_MIN, PREVIEW_AFTER_MAX): wide enough for any
#: real use, and far enough from the calendar's ends (years 1 and 9999) that 100 fire times of
#: the rarest expression (29 February, every 4 to 8 years) always exist.
PREVIEW_AFTER_MIN = datetime(1900, 1, 1, tzinfo=UTC)
PREVIEW_AFTER_MAX = datetime(9000, 1, 1, tzinfo=UTC)
#: The same bounds as a regular expression on the ISO 8601 text (its year), for the API schema.
PREVIEW_AFTER_YEAR_PATTERN = r"^(19[0-9]{2}|[2-8][0-9]{3})-"
PREVIEW_COUNT_RANGE = (1, 100)
PREVIEW_DEFAULT_COUNT = 5


def apply_schedule(task: Task, *, enabled: bool, cron: str, timezone: str, now: datetime) -> None:
    """Set the task's schedule; an enabled one gets the next fire time after `now`."""
    schedule = parse_schedule(cron, timezone)
    task.cron = schedule.expr
    task.timezone = schedule.timezone
    task.schedule = {"enabled": enabled, "cron": schedule.expr, "timezone": schedule.timezone}
    task.schedule_enabled = enabled
    task.next_run_at = _next_fire_or_invalid(schedule, now, "schedule.cron") if enabled else None


def _next_fire_or_invalid(schedule: CronSchedule, after: datetime, field: str) -> datetime:
    try:
        return next_fire(schedule, after)
    except (ValueError, OverflowError):
        raise InvalidCronExpression({field: "has no fire time left before the year 9999"}) from None


def parse_preview_after(text: str, field: str = "after") -> datetime:
    """An ISO 8601 instant within the preview bounds; naive times are UTC.

    A `+` that arrived unencoded in a query string reads as a space, so a space is taken for one.
    """
    candidate = text.strip().upper().replace(" ", "+")
    try:
        moment = datetime.fromisoformat(candidate.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput({field: "must be an ISO 8601 time, e.g. 2026-03-08T00:00:00Z"}) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        in_range = PREVIEW_AFTER_MIN <= moment < PREVIEW_AFTER_MAX
    except OverflowError:  # an offset that pushes the instant off the calendar
        in_range = False
    if not in_range:
        raise InvalidInput({field: "must be between 1900-01-01T00:00:00Z and 9000-01-01T00:00:00Z"})
    return moment


def preview_fires(schedule: CronSchedule, after: datetime, count: int) -> list[datetime]:
    """The next `count` fire times after `after`; a 400 on `after` if the calendar runs out."""
    try:
        return next_fires(schedule, after, count)
    except (ValueError, OverflowError):
        raise InvalidInput(
            {"after": "leaves no room for that many fire times before the year 9999"}
        ) from None
