"""Cron fire instants: the latest missed slot, exclusive and aware times, the memo, the schedule."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from app.cron import CronSchedule, latest_fire_at_or_before, next_fire, next_fire_cached, parse_schedule
from tests.support.cron import NY, utc

LATEST = [
    ("0 9 * * *", "UTC", "2026-01-15T10:00Z", "2026-01-10T00:00Z", "2026-01-15T09:00Z"),
    ("0 9 * * *", "UTC", "2026-01-15T09:00Z", "2026-01-10T00:00Z", "2026-01-15T09:00Z"),
    ("0 9 * * *", "UTC", "2026-01-15T10:00Z", "2026-01-15T09:00Z", "2026-01-15T09:00Z"),
    ("0 9 * * *", "UTC", "2026-01-15T10:00Z", "2026-01-15T09:00:01Z", None),
    ("0 9 * * *", "UTC", "2026-01-15T08:00Z", "2026-01-15T09:00Z", None),
    ("0 0 29 2 *", "UTC", "2026-06-01T00:00Z", "2020-01-01T00:00Z", "2024-02-29T00:00Z"),
    ("0 0 29 2 *", "UTC", "2026-06-01T00:00Z", "2024-03-01T00:00Z", None),
    ("30 2 * * *", NY, "2026-03-08T07:00Z", "2026-03-08T00:00Z", "2026-03-08T07:00Z"),
    ("30 2 * * *", NY, "2026-03-08T06:59Z", "2026-03-08T00:00Z", None),
    ("30 * * * *", NY, "2026-03-08T07:29Z", "2026-03-08T00:00Z", "2026-03-08T06:30Z"),
    ("30 1 * * *", NY, "2026-11-01T06:40Z", "2026-11-01T00:00Z", "2026-11-01T05:30Z"),
    ("*/15 * * * *", NY, "2026-11-01T06:40Z", "2026-11-01T00:00Z", "2026-11-01T05:45Z"),
    ("0 * * * *", NY, "2026-11-01T06:59Z", "2026-11-01T00:00Z", "2026-11-01T05:00Z"),
    ("0 2 * * *", NY, "2026-11-01T06:59Z", "2026-11-01T00:00Z", None),
]


@pytest.mark.parametrize(("expr", "tz", "now", "not_before", "expected"), LATEST)
def test_latest_fire_at_or_before(
    expr: str, tz: str, now: str, not_before: str, expected: str | None
) -> None:
    got = latest_fire_at_or_before(parse_schedule(expr, tz), utc(now), utc(not_before))
    assert got == (utc(expected) if expected else None)


def test_the_after_time_is_exclusive_to_the_microsecond() -> None:
    schedule = parse_schedule("0 9 * * *", "UTC")
    assert next_fire(schedule, utc("2026-01-15T09:00Z")) == utc("2026-01-16T09:00Z")
    assert next_fire(schedule, utc("2026-01-15T08:59:59.999999Z")) == utc("2026-01-15T09:00Z")


def test_results_are_aware_utc_and_naive_input_is_refused() -> None:
    schedule = parse_schedule("*/5 * * * *", "Asia/Kathmandu")
    result = next_fire(schedule, utc("2026-01-15T10:07:30Z"))
    assert result.tzinfo is UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(schedule, datetime(2026, 1, 15, 10, 7))


def test_cached_next_fire_keeps_exact_semantics() -> None:
    for after in ("2026-01-15T09:00Z", "2026-01-15T08:59:59.999Z", "2026-11-01T06:20Z"):
        for _ in range(2):
            cached = next_fire_cached("0 9 * * *", NY, utc(after))
            assert cached == next_fire(parse_schedule("0 9 * * *", NY), utc(after))


def test_the_cache_tells_the_two_passes_of_a_repeated_hour_apart() -> None:
    # Same-zone datetimes differing only in fold compare and hash equal; the cache must not.
    first_pass = datetime(2026, 11, 1, 1, 20, fold=0, tzinfo=ZoneInfo(NY))
    second_pass = first_pass.replace(fold=1)
    assert next_fire_cached("30 1 * * *", NY, first_pass) == utc("2026-11-01T05:30Z")
    assert next_fire_cached("30 1 * * *", NY, second_pass) == utc("2026-11-02T06:30Z")


def test_a_schedule_keeps_its_expression_and_timezone() -> None:
    schedule = parse_schedule("0 9 * * MON-FRI", "Europe/London")
    assert isinstance(schedule, CronSchedule)
    assert (schedule.expr, schedule.timezone) == ("0 9 * * MON-FRI", "Europe/London")
    assert schedule == parse_schedule("0 9 * * MON-FRI", "Europe/London")
