"""A cron expression bound to its timezone, validated once and cached."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from zoneinfo import ZoneInfo

from app.cron.syntax import Spec, invalid_expression, parse_spec
from app.cron.zones import validate_timezone


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A validated cron expression bound to a timezone; build it with :func:`parse_schedule`."""

    expr: str
    timezone: str
    zone: ZoneInfo = field(repr=False, compare=False)
    spec: Spec = field(repr=False, compare=False)


@lru_cache(maxsize=4096)
def parse_schedule(expr: str, timezone: str) -> CronSchedule:
    """Parse and validate; raises :class:`InvalidCronExpression` or :class:`InvalidTimezone`."""
    if not isinstance(expr, str):
        raise invalid_expression("cron expression must be a string")
    spec = parse_spec(expr)
    return CronSchedule(expr=expr, timezone=timezone, zone=validate_timezone(timezone), spec=spec)
