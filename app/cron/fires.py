"""When a schedule fires: the next instants after a time, and the latest one before it.

The slot-to-instant mapping (:mod:`app.cron.zones`) never decreases as wall time advances, so
"the next fire strictly after ``after``" is the first matching wall minute whose instant is later
than ``after``. Every function is pure: the caller passes the current time. For a burst over many
tasks, group tasks by ``(expr, timezone, next_run_at)`` and compute once per group, or call
:func:`next_fire_cached`, which memoises exact ``(expr, timezone, after)`` triples.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache

from app.cron.schedule import CronSchedule, parse_schedule
from app.cron.walls import next_wall, prev_wall
from app.cron.zones import resolve_slot, utc_offset

_MINUTE = timedelta(minutes=1)


def _ceil_minute(value: datetime) -> datetime:
    floored = value.replace(second=0, microsecond=0)
    return floored if floored == value else floored + _MINUTE


def _aware_utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def next_fire(schedule: CronSchedule, after: datetime) -> datetime:
    """The first fire instant strictly after ``after`` (tz-aware), as an aware UTC datetime."""
    after = _aware_utc(after, "after")
    spec, zone = schedule.spec, schedule.zone
    wall = after.astimezone(zone).replace(tzinfo=None, fold=0)
    cursor = wall.replace(second=0, microsecond=0) + _MINUTE
    while True:
        candidate = next_wall(spec, cursor)
        if candidate is None:
            raise ValueError(f"cron '{schedule.expr}' has no fire time before year 10000")
        fire, gap = resolve_slot(zone, candidate, spec.every_hour)
        if fire is not None and fire > after:
            return fire
        # Already fired (or absent): a gap is passed in one jump, other slots one by one.
        cursor = _ceil_minute(gap[1]) if gap else candidate + _MINUTE


def next_fires(schedule: CronSchedule, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire instants after ``after``, ascending."""
    fires: list[datetime] = []
    for _ in range(count):
        after = next_fire(schedule, after)
        fires.append(after)
    return fires


def latest_fire_at_or_before(schedule: CronSchedule, now: datetime, not_before: datetime) -> datetime | None:
    """The latest fire instant ``s`` with ``not_before <= s <= now``, or None.

    Used after downtime: of all missed slots only the latest is run.
    """
    now = _aware_utc(now, "now")
    not_before = _aware_utc(not_before, "not_before")
    if now < not_before:
        return None
    spec, zone = schedule.spec, schedule.zone
    naive_now = now.replace(tzinfo=None)
    local_now = now.astimezone(zone).replace(tzinfo=None, fold=0)
    # In an overlap's second pass, the repeated times up to now + first offset have fired.
    cursor = (naive_now + utc_offset(zone, local_now)).replace(second=0, microsecond=0)
    floor_year = max(1, not_before.year - 1)  # wall times may be up to a day off UTC
    while True:
        candidate = prev_wall(spec, cursor, floor_year)
        if candidate is None:
            return None
        fire, gap = resolve_slot(zone, candidate, spec.every_hour)
        if fire is not None and fire <= now:
            return fire if fire >= not_before else None
        cursor = _ceil_minute(gap[0]) - _MINUTE if gap else candidate - _MINUTE


def next_fire_cached(expr: str, timezone: str, after: datetime) -> datetime:
    """:func:`next_fire` memoised on the exact ``(expr, timezone, after)``; same semantics.

    ``after`` is keyed as UTC: two local datetimes in one zone that differ only in ``fold``
    compare and hash equal, yet are different instants.
    """
    return _next_fire_memo(expr, timezone, _aware_utc(after, "after"))


@lru_cache(maxsize=65536)
def _next_fire_memo(expr: str, timezone: str, after: datetime) -> datetime:
    return next_fire(parse_schedule(expr, timezone), after)
