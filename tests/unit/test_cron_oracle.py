"""Cron time maths checked on seeded random schedules against a brute-force oracle."""

from __future__ import annotations

import functools
import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from app.cron import latest_fire_at_or_before, next_fires, parse_schedule
from tests.support.cron import NY

ZONES = [
    "UTC",
    NY,
    "Europe/London",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Santiago",
    "Asia/Kathmandu",
    "America/Sao_Paulo",
    "Asia/Kolkata",
]
MINUTES = ["*", "0", "30", "*/15", "0,30", "15-45/15", "*/7", "45", "5/20"]
HOURS = ["*", "1", "2", "*/2", "1-3", "0-23", "9,17", "23", "0", "0-3"]
DOMS = ["*", "*", "*", "1", "1,15", "*/2", "31", "29", "10-20"]
MONTHS = ["*", "*", "*", "JAN-JUN", "3,4,9,10,11", "*/3", "oct-dec"]
DOWS = ["*", "*", "*", "MON-FRI", "0", "7", "1,3,5", "SAT"]


NIGHT_HOURS = ["*", "*", "0", "1", "2", "3", "1-3", "0-3", "*/2", "0-23", "2,3", "23"]


@functools.lru_cache
def _transitions(tz: str, year: int) -> list[datetime]:
    zone, instants, previous = ZoneInfo(tz), [], None
    moment = datetime(year, 1, 1, tzinfo=UTC)
    while moment.year == year:
        offset = moment.astimezone(zone).utcoffset()
        if previous is not None and offset != previous:
            instants.append(moment)
        previous, moment = offset, moment + timedelta(minutes=15)
    return instants


def _random_cases(count: int, seed: int = 20260308) -> list[tuple[str, str, datetime]]:
    """Seeded combos; most start a few hours before a transition with every-day night fields."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        tz = rng.choice(ZONES)
        year = rng.choice([2019, 2026])
        near = _transitions(tz, year) or [datetime(year, 6, 1, tzinfo=UTC)]
        if rng.random() < 0.7:
            parts = [MINUTES, NIGHT_HOURS, ["*"], ["*"], ["*"]]
            base = rng.choice(near)
        else:
            parts = [MINUTES, HOURS, DOMS, MONTHS, DOWS]
            base = datetime(year, rng.randint(1, 12), rng.randint(1, 28), tzinfo=UTC)
        expr = " ".join(rng.choice(part) for part in parts)
        low = rng.choice([-8 * 3600, -3600])  # some start inside the gap or the second pass
        start = base + timedelta(seconds=rng.randint(low, 2 * 3600))
        cases.append((expr, tz, start))
    return cases


def _oracle(expr: str, tz: str, start: datetime, days: int) -> list[datetime]:
    """Every fire from a minute-by-minute walk over wall times, mapped by the contract's rules."""
    zone = ZoneInfo(tz)
    (minutes, hours, doms, months, dows), _ = croniter.expand(expr)
    raw = expr.split()

    def allowed(values: list[Any], low: int, high: int) -> set[int]:
        return set(range(low, high + 1)) if values == ["*"] else {int(v) for v in values}

    mins, hrs = allowed(minutes, 0, 59), allowed(hours, 0, 23)
    dom_set, month_set = allowed(doms, 1, 31), allowed(months, 1, 12)
    dow_set = {v % 7 for v in allowed(dows, 0, 6)}
    days_and = raw[2].startswith("*") or raw[4].startswith("*")
    found: set[datetime] = set()
    first = start.astimezone(zone).date() - timedelta(days=1)
    for offset in range(days + 2):
        day = first + timedelta(days=offset)
        in_dom, in_dow = day.day in dom_set, (day.weekday() + 1) % 7 in dow_set
        if day.month not in month_set or not ((in_dom and in_dow) if days_and else (in_dom or in_dow)):
            continue
        for hour in sorted(hrs):
            for minute in sorted(mins):
                fire = _oracle_instant(zone, datetime(day.year, day.month, day.day, hour, minute))
                if isinstance(fire, tuple):  # in a gap: moved to its end, or absent if hour is *
                    if len(hrs) == 24:
                        continue
                    fire = fire[0]
                found.add(fire)
    return sorted(f for f in found if f > start)


def _oracle_instant(zone: ZoneInfo, wall: datetime) -> datetime | tuple[datetime]:
    """A real wall time -> its first occurrence; a gap time -> (first instant after the gap,)."""
    real = []
    for fold in (0, 1):
        instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == wall:
            real.append(instant)
    if real:
        return min(real)
    probe = min(wall.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1))
    while probe.astimezone(zone).replace(tzinfo=None) <= wall:
        probe += timedelta(minutes=1)
    return (probe,)


def _matches(expr: str, wall: datetime) -> bool:
    fields = expr.split()
    days_and = fields[2].startswith("*") or fields[4].startswith("*")
    return bool(croniter.match(expr, wall, day_or=not days_and))


@pytest.mark.parametrize(("expr", "tz", "start"), _random_cases(400))
def test_random_schedules_agree_with_a_brute_force_oracle(expr: str, tz: str, start: datetime) -> None:
    zone = ZoneInfo(tz)
    schedule = parse_schedule(expr, tz)
    got = next_fires(schedule, start, 5)

    assert all(a < b for a, b in itertools.pairwise([start, *got]))
    walls = [fire.astimezone(zone).replace(tzinfo=None) for fire in got]
    assert len(set(walls)) == len(walls), "two fires share a local wall time"
    for fire, wall in zip(got, walls, strict=True):
        just_before = (fire - timedelta(microseconds=1)).astimezone(zone)
        gap_shifted = just_before.utcoffset() != fire.astimezone(zone).utcoffset()
        assert gap_shifted or _matches(expr, wall), f"{wall} does not match {expr}"

    horizon = 4
    safe_end = start + timedelta(days=horizon - 2)
    expected = [f for f in _oracle(expr, tz, start, horizon) if f <= safe_end]
    within = [f for f in got if f <= safe_end]
    assert within == expected[: len(within)]
    if len(within) < len(got):
        assert within == expected

    now = got[2] + (got[3] - got[2]) / 2
    assert latest_fire_at_or_before(schedule, now, start + timedelta(microseconds=1)) == got[2]
    assert latest_fire_at_or_before(schedule, got[0] - timedelta(microseconds=1), start) in (
        None,
        start,
    )
