"""Pure time maths for five-field cron expressions evaluated in IANA timezones.

Syntax: ``minute hour day-of-month month day-of-week``; each field is a comma list of ``*``,
``N``, ``A-B``, ``*/S``, ``A-B/S`` or ``A/S`` (A to the field maximum). Months ``JAN``-``DEC``
and days ``SUN``-``SAT`` may be used by name (any case); 0 and 7 are both Sunday. As in Vixie
cron, a day-of-week range may end on Sunday written as 0 (``SAT-SUN`` and ``5-0`` mean 6-7 and
5-7), ``SUN-SUN`` is Sunday alone, and a range that wraps past Sunday (``FRI-MON``) is refused
with the two ranges to write instead. The macros
``@yearly @annually @monthly @weekly @daily @midnight @hourly`` stand for their usual five
fields. Day matching follows Vixie cron: if either day field starts with ``*`` a day must match
both fields, otherwise (both restricted) it matches when either matches, so ``0 0 1,15 * MON``
fires on the 1st, the 15th and every Monday. Anything else (seconds fields, ``@reboot``,
``L``/``W``/``#``/``?``, out-of-range values, expressions that can never fire) is rejected.

Slots are local wall-clock minutes in the schedule's timezone; each maps to one UTC instant:

* Spring gap (local time does not exist): the slot fires at the first instant after the gap
  (02:30 on a spring-forward night fires at 03:00 local); several slots of one gap collapse
  into that single fire. When the hour field covers all 24 hours (``*``) gap slots are simply
  absent, because the next hourly slot follows anyway.
* Autumn overlap (local time occurs twice): the slot fires once, at its first occurrence
  (zoneinfo ``fold=0``), so an hourly job has one hour without a run that night. A search that
  starts inside the second pass does not fire the repeated wall times again.

This mapping never decreases as wall time advances, so "the next fire strictly after ``after``"
is the first matching wall minute whose instant is later than ``after``. Every function is
pure: the caller passes the current time. Parsed schedules are cached. For a burst over many
tasks, group tasks by ``(expr, timezone, next_run_at)`` and compute once per group, or call
:func:`next_fire_cached`, which memoises exact ``(expr, timezone, after)`` triples.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from app.errors import InvalidCronExpression, InvalidTimezone

MAX_EXPRESSION_LENGTH = 200
_MINUTE = timedelta(minutes=1)
_CRON_FIELD = "schedule.cron"
_NUMBER = re.compile(r"[0-9]{1,4}")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTH_NAMES = {name: i for i, name in enumerate(_MONTHS, 1)}
_DAY_NAMES = {name: i for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (name, low, high, names) in field order.
_FIELDS: tuple[tuple[str, int, int, Mapping[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTH_NAMES),
    ("day-of-week", 0, 7, _DAY_NAMES),
)
_MAX_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # index = month, leap February
_EXCLUDED_ZONES = frozenset({"localtime", "Factory"})  # host-dependent / placeholder entries


def _invalid(message: str) -> InvalidCronExpression:
    return InvalidCronExpression({_CRON_FIELD: message})


def _next_table(values: frozenset[int], high: int) -> tuple[int, ...]:
    """``table[x]`` = smallest value >= x, or -1; indexes 0..high+1."""
    return tuple(min((v for v in values if v >= x), default=-1) for x in range(high + 2))


def _prev_table(values: frozenset[int], high: int) -> tuple[int, ...]:
    """``table[x]`` = largest value <= x, or -1; indexes 0..high."""
    return tuple(max((v for v in values if v <= x), default=-1) for x in range(high + 1))


@dataclass(frozen=True, slots=True)
class _Spec:
    """A parsed expression as lookup tables, so searches skip by field instead of by minute."""

    next_minute: tuple[int, ...]
    prev_minute: tuple[int, ...]
    next_hour: tuple[int, ...]
    prev_hour: tuple[int, ...]
    next_month: tuple[int, ...]
    prev_month: tuple[int, ...]
    dom_mask: int
    dow_mask: int
    next_dom: tuple[int, ...]
    prev_dom: tuple[int, ...]
    days_and: bool  # Vixie: a day field starting with "*" makes the day test an AND
    dom_only: bool  # every weekday allowed under AND: the day-of-month tables decide
    every_hour: bool  # gap slots are absent rather than moved to the end of the gap


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A validated cron expression bound to a timezone; build it with :func:`parse_schedule`."""

    expr: str
    timezone: str
    zone: ZoneInfo = field(repr=False, compare=False)
    spec: _Spec = field(repr=False, compare=False)


def _parse_value(token: str, name: str, low: int, high: int, names: Mapping[str, int]) -> int:
    if _NUMBER.fullmatch(token):
        value = int(token)
    elif token.upper() in names:
        return names[token.upper()]
    else:
        hint = f" (or a name such as {next(iter(names))})" if names else ""
        raise _invalid(f"{name} value '{token}' is not a number {low}-{high}{hint}")
    if not low <= value <= high:
        raise _invalid(f"{name} value {value} out of range {low}-{high}")
    return value


def _backwards(name: str, span: str, start: int, first: str, last: str) -> str:
    if name != "day-of-week":
        return f"{name} range '{span}' runs backwards"
    # Vixie cron rejects a range that wraps past Sunday too; say how to write it instead.
    saturday, sunday = ("6", "0") if _NUMBER.fullmatch(first) else ("SAT", "SUN")
    head = {7: "", 6: f"{first},"}.get(start, f"{first}-{saturday},")
    return (
        f"day-of-week range '{span}' wraps past Sunday, which cron does not allow; "
        f"write it as '{head}{sunday}-{last}'"
    )


def _parse_field(text: str, name: str, low: int, high: int, names: Mapping[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise _invalid(f"{name} field '{text}' has an empty list item")
        span, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text) or int(step_text) < 1:
                raise _invalid(f"{name} step '{step_text}' in '{part}' must be a whole number >= 1")
            step = int(step_text)
        if span == "*":
            start, end = low, high
        elif "-" in span:
            first, _, last = span.partition("-")
            start = _parse_value(first, name, low, high, names)
            end = _parse_value(last, name, low, high, names)
            if name == "day-of-week" and end == 0 and start > 0:
                end = 7  # as Vixie cron: a range may end on Sunday as 0 (FRI-SUN, 5-0 = 5-7)
            if start > end:
                raise _invalid(_backwards(name, span, start, first, last))
        else:
            start = _parse_value(span, name, low, high, names)
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _parse_spec(expr: str) -> _Spec:
    if not expr.strip():
        raise _invalid("cron expression is empty")
    if len(expr) > MAX_EXPRESSION_LENGTH:
        raise _invalid(f"cron expression is {len(expr)} characters, at most 200 allowed")
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() == "@reboot":
            raise _invalid("@reboot is not supported; only time-based schedules are")
        if text.lower() not in _MACROS:
            raise _invalid(f"unknown macro '{text}'; known: {', '.join(_MACROS)}")
        text = _MACROS[text.lower()]
    parts = text.split()
    if len(parts) != 5:
        extra = " (a seconds or year field is not supported)" if len(parts) in (6, 7) else ""
        raise _invalid(
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}{extra}"
        )
    minutes, hours, doms, months, dows = (
        _parse_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)
    )
    dows = frozenset(d % 7 for d in dows)
    days_and = parts[2].startswith("*") or parts[4].startswith("*")
    # With AND days, a (month, day-of-month) pair must exist; every date then falls on every
    # weekday sooner or later. With OR days, any weekday in any month matches.
    if days_and and not any(d <= _MAX_DAYS[m] for m in months for d in doms):
        raise _invalid(
            f"expression never fires: day-of-month {','.join(map(str, sorted(doms)))} "
            f"does not occur in month {','.join(map(str, sorted(months)))}"
        )
    return _Spec(
        next_minute=_next_table(minutes, 59),
        prev_minute=_prev_table(minutes, 59),
        next_hour=_next_table(hours, 23),
        prev_hour=_prev_table(hours, 23),
        next_month=_next_table(months, 12),
        prev_month=_prev_table(months, 12),
        dom_mask=sum(1 << d for d in doms),
        dow_mask=sum(1 << d for d in dows),
        next_dom=_next_table(doms, 31),
        prev_dom=_prev_table(doms, 31),
        days_and=days_and,
        dom_only=days_and and len(dows) == 7,
        every_hour=len(hours) == 24,
    )


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones()) - _EXCLUDED_ZONES


def known_timezones() -> frozenset[str]:
    """The IANA names a schedule may use."""
    return _known_zones()


@lru_cache(maxsize=1024)
def _load_zone(name: str) -> ZoneInfo | None:
    if name not in _known_zones():
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # listed but unreadable
        return None


def validate_timezone(name: str, field: str = "schedule.timezone") -> ZoneInfo:
    """Return the zone for an IANA name or raise :class:`InvalidTimezone` for ``field``."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidTimezone({field: "timezone is required, an IANA name such as 'Europe/London'"})
    zone = _load_zone(name)
    if zone is None:
        raise InvalidTimezone(
            {field: f"unknown timezone '{name[:100]}'; use an IANA name such as 'Europe/London'"}
        )
    return zone


@lru_cache(maxsize=4096)
def parse_schedule(expr: str, timezone: str) -> CronSchedule:
    """Parse and validate; raises :class:`InvalidCronExpression` or :class:`InvalidTimezone`."""
    if not isinstance(expr, str):
        raise _invalid("cron expression must be a string")
    spec = _parse_spec(expr)
    return CronSchedule(expr=expr, timezone=timezone, zone=validate_timezone(timezone), spec=spec)


def _scan_days(spec: _Spec, year: int, month: int, days: range) -> int:
    """The first day in ``days`` (ascending or descending) that matches, or -1."""
    if not days:
        return -1
    weekday = (calendar.weekday(year, month, days.start) + 1) % 7  # cron: Sunday is 0
    for day in days:
        in_dom = bool(spec.dom_mask >> day & 1)
        in_dow = bool(spec.dow_mask >> weekday & 1)
        if (in_dom and in_dow) if spec.days_and else (in_dom or in_dow):
            return day
        weekday = (weekday + days.step) % 7
    return -1


def _next_day(spec: _Spec, year: int, month: int, day: int) -> int:
    last = calendar.monthrange(year, month)[1]
    if spec.dom_only:
        found = spec.next_dom[day] if day <= last else -1
        return found if found <= last else -1
    return _scan_days(spec, year, month, range(day, last + 1))


def _prev_day(spec: _Spec, year: int, month: int, day: int) -> int:
    day = min(day, calendar.monthrange(year, month)[1])
    if spec.dom_only:
        return spec.prev_dom[day] if day >= 1 else -1
    return _scan_days(spec, year, month, range(day, 0, -1))


def _next_wall(spec: _Spec, start: datetime) -> datetime | None:
    """The first matching wall-clock minute at or after ``start`` (naive, whole minute)."""
    y, mo, d, h, mi = start.year, start.month, start.day, start.hour, start.minute
    while y <= 9999:
        found = spec.next_month[mo]
        if found < 0:
            y, mo, d, h, mi = y + 1, 1, 1, 0, 0
            continue
        if found != mo:
            mo, d, h, mi = found, 1, 0, 0
        found = _next_day(spec, y, mo, d)
        if found < 0:
            mo, d, h, mi = mo + 1, 1, 0, 0
            continue
        if found != d:
            d, h, mi = found, 0, 0
        found = spec.next_hour[h]
        if found < 0:
            d, h, mi = d + 1, 0, 0
            continue
        if found != h:
            h, mi = found, 0
        found = spec.next_minute[mi]
        if found < 0:
            h, mi = h + 1, 0
            continue
        return datetime(y, mo, d, h, found)
    return None


def _prev_wall(spec: _Spec, start: datetime, floor_year: int) -> datetime | None:
    """The last matching wall-clock minute at or before ``start``, not before ``floor_year``."""
    y, mo, d, h, mi = start.year, start.month, start.day, start.hour, start.minute
    while y >= floor_year:
        found = spec.prev_month[mo]
        if found < 0:
            y, mo, d, h, mi = y - 1, 12, 31, 23, 59
            continue
        if found != mo:
            mo, d, h, mi = found, 31, 23, 59
        found = _prev_day(spec, y, mo, d)
        if found < 0:
            mo, d, h, mi = mo - 1, 31, 23, 59
            continue
        if found != d:
            d, h, mi = found, 23, 59
        found = spec.prev_hour[h] if h >= 0 else -1
        if found < 0:
            d, h, mi = d - 1, 23, 59
            continue
        if found != h:
            h, mi = found, 59
        found = spec.prev_minute[mi] if mi >= 0 else -1
        if found < 0:
            h, mi = h - 1, 59
            continue
        return datetime(y, mo, d, h, found)
    return None


def _offset(zone: ZoneInfo, wall: datetime) -> timedelta:
    offset = zone.utcoffset(wall)
    assert offset is not None  # a ZoneInfo always knows its offset
    return offset


def _gap_bounds(zone: ZoneInfo, wall: datetime, before: timedelta, after: timedelta) -> datetime:
    """The transition instant (naive UTC) of the gap that contains ``wall``; binary search."""
    low = wall - after  # still on the old offset
    low_s, high_s = 0, int((after - before).total_seconds())  # wall - before: on the new one
    while high_s - low_s > 1:
        mid = (low_s + high_s) // 2
        probe = (low + timedelta(seconds=mid)).replace(tzinfo=UTC).astimezone(zone)
        if probe.utcoffset() == before:
            low_s = mid
        else:
            high_s = mid
    return low + timedelta(seconds=high_s)


def _resolve(
    zone: ZoneInfo, wall: datetime, every_hour: bool
) -> tuple[datetime | None, tuple[datetime, datetime] | None]:
    """Map a slot's wall time to its UTC fire instant (None: absent) and, for a gap, its walls.

    Existing and repeated times use the first occurrence (``fold=0``). A time in a spring gap
    fires at the transition instant, unless the hour field is ``*``. The second item is
    ``(gap_start_wall, gap_end_wall)`` for a gap slot, so searches can jump over the gap.
    """
    first = _offset(zone, wall)
    second = _offset(zone, wall.replace(fold=1))
    if first >= second:  # exists; in an overlap fold=0 is the earlier, larger offset
        return (wall - first).replace(tzinfo=UTC), None
    transition = _gap_bounds(zone, wall, first, second)
    walls = (transition + first, transition + second)
    return (None if every_hour else transition.replace(tzinfo=UTC)), walls


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
        candidate = _next_wall(spec, cursor)
        if candidate is None:
            raise ValueError(f"cron '{schedule.expr}' has no fire time before year 10000")
        fire, gap = _resolve(zone, candidate, spec.every_hour)
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
    cursor = (naive_now + _offset(zone, local_now)).replace(second=0, microsecond=0)
    floor_year = max(1, not_before.year - 1)  # wall times may be up to a day off UTC
    while True:
        candidate = _prev_wall(spec, cursor, floor_year)
        if candidate is None:
            return None
        fire, gap = _resolve(zone, candidate, spec.every_hour)
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
