"""IANA timezones for schedules, and how a local wall-clock slot maps to one UTC instant.

* Spring gap (local time does not exist): the slot fires at the first instant after the gap
  (02:30 on a spring-forward night fires at 03:00 local); several slots of one gap collapse
  into that single fire. When the hour field covers all 24 hours (``*``) gap slots are simply
  absent, because the next hourly slot follows anyway.
* Autumn overlap (local time occurs twice): the slot fires once, at its first occurrence
  (zoneinfo ``fold=0``), so an hourly job has one hour without a run that night. A search that
  starts inside the second pass does not fire the repeated wall times again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from app.errors import InvalidTimezone

_EXCLUDED_ZONES = frozenset({"localtime", "Factory"})  # host-dependent / placeholder entries


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


def utc_offset(zone: ZoneInfo, wall: datetime) -> timedelta:
    """The UTC offset of ``wall`` (naive local time) in ``zone``, honouring its ``fold``."""
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


def resolve_slot(
    zone: ZoneInfo, wall: datetime, every_hour: bool
) -> tuple[datetime | None, tuple[datetime, datetime] | None]:
    """Map a slot's wall time to its UTC fire instant (None: absent) and, for a gap, its walls.

    Existing and repeated times use the first occurrence (``fold=0``). A time in a spring gap
    fires at the transition instant, unless the hour field is ``*``. The second item is
    ``(gap_start_wall, gap_end_wall)`` for a gap slot, so searches can jump over the gap.
    """
    first = utc_offset(zone, wall)
    second = utc_offset(zone, wall.replace(fold=1))
    if first >= second:  # exists; in an overlap fold=0 is the earlier, larger offset
        return (wall - first).replace(tzinfo=UTC), None
    transition = _gap_bounds(zone, wall, first, second)
    walls = (transition + first, transition + second)
    return (None if every_hour else transition.replace(tzinfo=UTC)), walls
