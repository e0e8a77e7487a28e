"""A task's schedule: storing it and keeping `next_run_at` right when it changes."""

from __future__ import annotations

from datetime import datetime

from app.cron import next_fire, parse_schedule
from app.models import Task


def apply_schedule(task: Task, *, enabled: bool, cron: str, timezone: str, now: datetime) -> None:
    """Set the task's schedule; an enabled one gets the next fire time after `now`."""
    schedule = parse_schedule(cron, timezone)
    task.cron = schedule.expr
    task.timezone = schedule.timezone
    task.schedule = {"enabled": enabled, "cron": schedule.expr, "timezone": schedule.timezone}
    task.schedule_enabled = enabled
    task.next_run_at = next_fire(schedule, now) if enabled else None
