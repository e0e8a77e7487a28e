"""Pure time maths for five-field cron expressions evaluated in IANA timezones.

One concept per module: :mod:`~app.cron.syntax` (what an expression may say),
:mod:`~app.cron.zones` (timezones, and how a wall-clock slot maps to UTC across daylight-saving
changes), :mod:`~app.cron.walls` (searching matching wall-clock minutes),
:mod:`~app.cron.schedule` (an expression bound to its timezone) and :mod:`~app.cron.fires`
(next and latest fire instants). Slots are local wall-clock minutes in the schedule's timezone;
each maps to one UTC instant. Parsed schedules are cached. This package re-exports the public
names, so callers import from ``app.cron``.
"""

from app.cron.fires import latest_fire_at_or_before, next_fire, next_fire_cached, next_fires
from app.cron.schedule import CronSchedule, parse_schedule
from app.cron.syntax import MAX_EXPRESSION_LENGTH
from app.cron.zones import known_timezones, validate_timezone

__all__ = [
    "MAX_EXPRESSION_LENGTH",
    "CronSchedule",
    "known_timezones",
    "latest_fire_at_or_before",
    "next_fire",
    "next_fire_cached",
    "next_fires",
    "parse_schedule",
    "validate_timezone",
]
