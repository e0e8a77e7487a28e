"""Search a parsed expression's tables for matching local wall-clock minutes (no timezone)."""

from __future__ import annotations

import calendar
from datetime import datetime

from app.cron.syntax import Spec


def _scan_days(spec: Spec, year: int, month: int, days: range) -> int:
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


def _next_day(spec: Spec, year: int, month: int, day: int) -> int:
    last = calendar.monthrange(year, month)[1]
    if spec.dom_only:
        found = spec.next_dom[day] if day <= last else -1
        return found if found <= last else -1
    return _scan_days(spec, year, month, range(day, last + 1))


def _prev_day(spec: Spec, year: int, month: int, day: int) -> int:
    day = min(day, calendar.monthrange(year, month)[1])
    if spec.dom_only:
        return spec.prev_dom[day] if day >= 1 else -1
    return _scan_days(spec, year, month, range(day, 0, -1))


def next_wall(spec: Spec, start: datetime) -> datetime | None:
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


def prev_wall(spec: Spec, start: datetime, floor_year: int) -> datetime | None:
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
