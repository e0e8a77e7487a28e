"""Cron time maths: shared vectors, daylight-saving tables, validation and a randomised oracle."""

from __future__ import annotations

import functools
import itertools
import json
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from app.cron import (
    CronSchedule,
    latest_fire_at_or_before,
    next_fire,
    next_fire_cached,
    next_fires,
    parse_schedule,
    validate_timezone,
)
from app.errors import InvalidCronExpression, InvalidTimezone

NY = "America/New_York"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def fires(expr: str, tz: str, after: str | datetime, count: int = 5) -> list[datetime]:
    start = utc(after) if isinstance(after, str) else after
    return next_fires(parse_schedule(expr, tz), start, count)


def utcs(*texts: str) -> list[datetime]:
    return [utc(text) for text in texts]


# --- shared vectors -------------------------------------------------------------------------


def _vector_file() -> Path | None:
    # tests/data/cron-vectors.json is the contract's vector file, copied in; CRON_VECTORS may name another.
    candidates = [
        os.environ.get("CRON_VECTORS", ""),
        str(Path(__file__).resolve().parents[1] / "data" / "cron-vectors.json"),
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def _vector_cases() -> list[Any]:
    path = _vector_file()
    if path is None:
        return [pytest.param(None, id="vectors-missing")]
    cases = json.loads(path.read_text())
    return [pytest.param(case, id=f"{case['id']}-{case['expr']}-{case['tz']}") for case in cases]


def _accepted_readings(case: dict[str, Any]) -> list[list[datetime]]:
    """`next`; for a case marked `contested`, also either day-field reading (OR and AND)."""
    readings = [utcs(*case["next"])]
    if case.get("contested"):
        zone = ZoneInfo(case["tz"])
        for day_or in (True, False):
            it = croniter(case["expr"], utc(case["start_utc"]).astimezone(zone), day_or=day_or)
            readings.append([it.get_next(datetime).astimezone(UTC) for _ in case["next"]])
    return readings


@pytest.mark.parametrize("case", _vector_cases())
def test_shared_vector(case: dict[str, Any] | None) -> None:
    if case is None:
        pytest.fail("tests/data/cron-vectors.json is missing")
    got = fires(case["expr"], case["tz"], case["start_utc"], len(case["next"]))
    assert got in _accepted_readings(case)


# --- daylight saving: spring gap ------------------------------------------------------------

SPRING = [
    # New York 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00Z).
    ("30 2 * * *", NY, "2026-03-07T12:00Z", ["2026-03-08T07:00Z", "2026-03-09T06:30Z"]),
    ("0 2 * * *", NY, "2026-03-07T12:00Z", ["2026-03-08T07:00Z", "2026-03-09T06:00Z"]),
    ("*/15 2 * * *", NY, "2026-03-08T00:00Z", ["2026-03-08T07:00Z", "2026-03-09T06:00Z"]),
    ("* 2 * * *", NY, "2026-03-08T00:00Z", ["2026-03-08T07:00Z", "2026-03-09T06:00Z"]),
    (
        "30 1-3 * * *",
        NY,
        "2026-03-08T05:00Z",
        ["2026-03-08T06:30Z", "2026-03-08T07:00Z", "2026-03-08T07:30Z"],
    ),
    (
        "30 */2 * * *",
        NY,
        "2026-03-08T05:00Z",
        ["2026-03-08T05:30Z", "2026-03-08T07:00Z", "2026-03-08T08:30Z"],
    ),
    # Hour field "*" (or all 24 hours): the 02:30 slot is simply absent.
    (
        "30 * * * *",
        NY,
        "2026-03-08T05:00Z",
        ["2026-03-08T05:30Z", "2026-03-08T06:30Z", "2026-03-08T07:30Z"],
    ),
    (
        "30 0-23 * * *",
        NY,
        "2026-03-08T05:00Z",
        ["2026-03-08T05:30Z", "2026-03-08T06:30Z", "2026-03-08T07:30Z"],
    ),
    (
        "*/20 * * * *",
        NY,
        "2026-03-08T06:30Z",
        ["2026-03-08T06:40Z", "2026-03-08T07:00Z", "2026-03-08T07:20Z"],
    ),
    # London 2026-03-29: 01:00 GMT jumps to 02:00 BST (01:00Z).
    (
        "30 1 * * *",
        "Europe/London",
        "2026-03-28T12:00Z",
        ["2026-03-29T01:00Z", "2026-03-30T00:30Z"],
    ),
    (
        "0 * * * *",
        "Europe/London",
        "2026-03-28T23:30Z",
        ["2026-03-29T00:00Z", "2026-03-29T01:00Z", "2026-03-29T02:00Z"],
    ),
    # Sydney 2026-10-04: 02:00 AEST jumps to 03:00 AEDT (2026-10-03T16:00Z).
    (
        "30 2 * * *",
        "Australia/Sydney",
        "2026-10-02T00:00Z",
        ["2026-10-02T16:30Z", "2026-10-03T16:00Z", "2026-10-04T15:30Z"],
    ),
    (
        "*/20 2 * * *",
        "Australia/Sydney",
        "2026-10-03T15:00Z",
        ["2026-10-03T16:00Z", "2026-10-04T15:00Z", "2026-10-04T15:20Z"],
    ),
    (
        "0 * * * *",
        "Australia/Sydney",
        "2026-10-03T14:30Z",
        ["2026-10-03T15:00Z", "2026-10-03T16:00Z", "2026-10-03T17:00Z"],
    ),
]


@pytest.mark.parametrize(("expr", "tz", "after", "expected"), SPRING)
def test_a_slot_in_the_spring_gap_fires_once_after_the_gap(
    expr: str, tz: str, after: str, expected: list[str]
) -> None:
    assert fires(expr, tz, after, len(expected)) == utcs(*expected)


def test_the_fire_after_a_collapsed_gap_fire_is_the_next_real_slot() -> None:
    schedule = parse_schedule("* 2 * * *", NY)
    assert next_fire(schedule, utc("2026-03-08T07:00Z")) == utc("2026-03-09T06:00Z")


# --- daylight saving: autumn overlap --------------------------------------------------------

AUTUMN = [
    # New York 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:xx EDT = 05:xxZ, EST = 06:xxZ.
    (
        "0 * * * *",
        "2026-11-01T03:30Z",
        ["2026-11-01T04:00Z", "2026-11-01T05:00Z", "2026-11-01T07:00Z", "2026-11-01T08:00Z"],
    ),
    (
        "*/15 * * * *",
        "2026-11-01T04:50Z",
        [
            "2026-11-01T05:00Z",
            "2026-11-01T05:15Z",
            "2026-11-01T05:30Z",
            "2026-11-01T05:45Z",
            "2026-11-01T07:00Z",
            "2026-11-01T07:15Z",
        ],
    ),
    ("30 1 * * *", "2026-10-31T12:00Z", ["2026-11-01T05:30Z", "2026-11-02T06:30Z"]),
    ("30 1 * * *", "2026-11-01T05:20Z", ["2026-11-01T05:30Z", "2026-11-02T06:30Z"]),
    # Starting inside the second pass: the repeated times have fired already.
    ("30 1 * * *", "2026-11-01T06:20Z", ["2026-11-02T06:30Z"]),
    ("0 1 * * *", "2026-11-01T06:20Z", ["2026-11-02T06:00Z"]),
    ("*/15 * * * *", "2026-11-01T06:20Z", ["2026-11-01T07:00Z", "2026-11-01T07:15Z"]),
    ("0 * * * *", "2026-11-01T06:00Z", ["2026-11-01T07:00Z"]),
    ("0 2 * * *", "2026-11-01T06:20Z", ["2026-11-01T07:00Z", "2026-11-02T07:00Z"]),
]


@pytest.mark.parametrize(("expr", "after", "expected"), AUTUMN)
def test_a_repeated_local_time_fires_only_at_its_first_occurrence(
    expr: str, after: str, expected: list[str]
) -> None:
    assert fires(expr, NY, after, len(expected)) == utcs(*expected)


def test_an_hourly_job_has_one_hour_without_a_run_on_the_autumn_night() -> None:
    night = fires("0 * * * *", NY, "2026-11-01T00:00Z", 24)
    assert utc("2026-11-01T06:00Z") not in night
    gaps = [b - a for a, b in itertools.pairwise(night)]
    assert gaps.count(timedelta(hours=2)) == 1
    assert all(gap == timedelta(hours=1) for gap in gaps if gap != timedelta(hours=2))


def test_after_may_be_given_in_local_time_in_the_second_pass() -> None:
    second_pass = datetime(2026, 11, 1, 1, 20, fold=1, tzinfo=ZoneInfo(NY))
    assert second_pass.astimezone(UTC) == utc("2026-11-01T06:20Z")
    assert fires("30 1 * * *", NY, second_pass, 1) == utcs("2026-11-02T06:30Z")
    first_pass = second_pass.replace(fold=0)
    assert fires("30 1 * * *", NY, first_pass, 1) == utcs("2026-11-01T05:30Z")


def test_london_autumn_overlap_fires_at_the_first_pass() -> None:
    expected = utcs("2026-10-25T00:30Z", "2026-10-26T01:30Z")
    assert fires("30 1 * * *", "Europe/London", "2026-10-24T12:00Z", 2) == expected


# --- latest missed slot ---------------------------------------------------------------------

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


# --- fields, names, day rule ----------------------------------------------------------------

FIELDS = [
    # Vixie: both day fields restricted -> either matches (2026-01-01 is a Thursday).
    (
        "0 0 1,15 * 1",
        "2026-01-01T00:00Z",
        [
            "2026-01-05",
            "2026-01-12",
            "2026-01-15",
            "2026-01-19",
            "2026-01-26",
            "2026-02-01",
            "2026-02-02",
        ],
    ),
    ("0 0 13 * FRI", "2026-01-01T00:00Z", ["2026-01-02", "2026-01-09", "2026-01-13", "2026-01-16"]),
    # A day field starting with "*" makes the test an AND (Vixie's DOM_STAR/DOW_STAR).
    ("0 0 */2 * 1", "2026-01-01T00:00Z", ["2026-01-05", "2026-01-19", "2026-02-09", "2026-02-23"]),
    ("0 0 * * 1", "2026-01-01T00:00Z", ["2026-01-05", "2026-01-12", "2026-01-19"]),
    ("0 0 1 * *", "2026-01-01T00:00Z", ["2026-02-01", "2026-03-01"]),
    ("0 0 * * 5-7", "2026-01-15T00:00Z", ["2026-01-16", "2026-01-17", "2026-01-18", "2026-01-23"]),
    (
        "0 0 * * FRI-SUN",
        "2026-01-15T00:00Z",
        ["2026-01-16", "2026-01-17", "2026-01-18", "2026-01-23"],
    ),
    ("0 0 1 jan-mar/2 *", "2026-01-15T00:00Z", ["2026-03-01", "2027-01-01"]),
    ("0 0 31 * *", "2026-01-15T00:00Z", ["2026-01-31", "2026-03-31", "2026-05-31"]),
    ("0 0 29 2 *", "2026-01-01T00:00Z", ["2028-02-29", "2032-02-29", "2036-02-29"]),
    ("0 0 29 2 *", "2096-03-01T00:00Z", ["2104-02-29"]),
]


@pytest.mark.parametrize(("expr", "after", "expected_days"), FIELDS)
def test_day_and_month_fields(expr: str, after: str, expected_days: list[str]) -> None:
    expected = [utc(f"{day}T00:00Z") for day in expected_days]
    assert fires(expr, "UTC", after, len(expected)) == expected


def test_names_steps_and_lists() -> None:
    assert fires("0 9 * JAN MON-FRI", "UTC", "2026-01-30T12:00Z", 2) == utcs(
        "2027-01-01T09:00Z", "2027-01-04T09:00Z"
    )
    assert fires("5/20 9,17 * * *", "UTC", "2026-01-15T09:30Z", 3) == utcs(
        "2026-01-15T09:45Z", "2026-01-15T17:05Z", "2026-01-15T17:25Z"
    )


def test_leap_day_in_a_timezone() -> None:
    assert fires("0 0 29 2 *", "Asia/Tokyo", "2026-01-01T00:00Z", 1) == utcs("2028-02-28T15:00Z")


@pytest.mark.parametrize("dow", ["0", "7", "SUN", "sun", "Sun"])
def test_seven_zero_and_sun_are_sunday(dow: str) -> None:
    got = fires(f"0 12 * * {dow}", "UTC", "2026-01-15T00:00Z", 2)
    assert got == utcs("2026-01-18T12:00Z", "2026-01-25T12:00Z")


# Vixie cron (cronie's get_range): a range ending in 0 after a later start ends on Sunday as 7;
# any other backwards range is an error. 2026-01-04 is a Sunday.
DAY_OF_WEEK_RANGES = [
    ("SUN-SUN", "Sun"),
    ("0-SUN", "Sun"),
    ("SUN-0", "Sun"),
    ("0-0", "Sun"),
    ("7-7", "Sun"),
    ("7-0", "Sun"),
    ("sun-sun", "Sun"),
    ("SAT-SUN", "Sat Sun"),
    ("6-0", "Sat Sun"),
    ("6-7", "Sat Sun"),
    ("SAT-7", "Sat Sun"),
    ("5-0", "Fri Sat Sun"),
    ("FRI-SUN", "Fri Sat Sun"),
    ("5-0/2", "Fri Sun"),
    ("MON-SUN", "Mon Tue Wed Thu Fri Sat Sun"),
    ("1-0", "Mon Tue Wed Thu Fri Sat Sun"),
    ("0-7", "Mon Tue Wed Thu Fri Sat Sun"),
    ("SUN-SAT", "Mon Tue Wed Thu Fri Sat Sun"),
    ("SUN-MON", "Mon Sun"),
    ("0-6/3", "Wed Sat Sun"),
    ("FRI-SAT,SUN-MON", "Mon Fri Sat Sun"),
    ("SAT-SUN,SUN", "Sat Sun"),
]


@pytest.mark.parametrize(("dow", "days"), DAY_OF_WEEK_RANGES)
def test_day_of_week_ranges_name_the_days_vixie_cron_does(dow: str, days: str) -> None:
    got = fires(f"0 12 * * {dow}", "UTC", "2026-01-04T00:00Z", 14)
    assert got[0] >= utc("2026-01-04T12:00Z")
    two_weeks = [fire for fire in got if fire < utc("2026-01-18T00:00Z")]
    names = [fire.strftime("%a") for fire in two_weeks]
    assert names[: len(names) // 2] == names[len(names) // 2 :]  # the same days each week
    assert set(names) == set(days.split())
    assert all(fire.hour == 12 and fire.minute == 0 for fire in got)


@pytest.mark.parametrize(
    ("dow", "suggestion"),
    [
        ("FRI-MON", "'FRI-SAT,SUN-MON'"),
        ("5-1", "'5-6,0-1'"),
        ("SAT-FRI", "'SAT,SUN-FRI'"),
        ("7-1", "'0-1'"),
        ("THU-TUE/2", "'THU-SAT,SUN-TUE'"),
    ],
)
def test_a_day_of_week_range_that_wraps_past_sunday_says_how_to_write_it(dow: str, suggestion: str) -> None:
    with pytest.raises(InvalidCronExpression) as caught:
        parse_schedule(f"0 9 * * {dow}", "UTC")
    message = caught.value.fields["schedule.cron"]
    assert f"day-of-week range '{dow.split('/')[0]}' wraps past Sunday" in message
    assert suggestion in message


def test_only_the_day_of_week_field_ends_a_range_on_zero() -> None:
    with pytest.raises(InvalidCronExpression, match="minute range '5-0' runs backwards"):
        parse_schedule("5-0 * * * *", "UTC")


@pytest.mark.parametrize(
    ("macro", "expr"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_macros_mean_their_five_fields(macro: str, expr: str) -> None:
    assert fires(macro, NY, "2026-03-07T12:00Z", 4) == fires(expr, NY, "2026-03-07T12:00Z", 4)


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


# --- validation -----------------------------------------------------------------------------

INVALID = [
    ("", "empty"),
    ("   ", "empty"),
    ("* * * * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 6"),
    ("0 0 9 * * * 2026", "got 7"),
    ("* * * *", "got 4"),
    ("@reboot", "@reboot is not supported"),
    ("@every 5m", "unknown macro '@every 5m'"),
    ("61 * * * *", "minute value 61 out of range 0-59"),
    ("-1 * * * *", "minute value '' is not a number"),
    ("* 24 * * *", "hour value 24 out of range 0-23"),
    ("* * 0 * *", "day-of-month value 0 out of range 1-31"),
    ("* * 32 * *", "day-of-month value 32 out of range 1-31"),
    ("* * * 13 *", "month value 13 out of range 1-12"),
    ("* * * * 8", "day-of-week value 8 out of range 0-7"),
    ("* * * FOO *", "month value 'FOO' is not a number 1-12"),
    ("* * * * MONDAY", "day-of-week value 'MONDAY'"),
    ("hello world foo bar baz", "minute value 'hello'"),
    ("*/0 * * * *", "minute step '0'"),
    ("*/x * * * *", "minute step 'x'"),
    ("30-10 * * * *", "minute range '30-10' runs backwards"),
    ("1,,2 * * * *", "empty list item"),
    ("0 0 L * *", "day-of-month value 'L'"),
    ("0 0 ? * *", "day-of-month value '?'"),
    ("0 0 * * 1#2", "day-of-week value '1#2'"),
    ("0 0 15W * *", "day-of-month value '15W'"),
    ("x" * 201, "at most 200"),
    ("0 0 30 2 *", "never fires"),
    ("0 0 31 4,6,9,11 *", "never fires"),
    ("0 0 30 2 */2", "never fires"),
]


@pytest.mark.parametrize(("expr", "message"), INVALID)
def test_an_invalid_expression_says_what_is_wrong(expr: str, message: str) -> None:
    with pytest.raises(InvalidCronExpression) as caught:
        parse_schedule(expr, "UTC")
    assert message in caught.value.fields["schedule.cron"]
    assert caught.value.code == "invalid_cron"


def test_a_day_of_week_keeps_an_impossible_date_alive() -> None:
    # Both day fields restricted: Feb 30 never comes, but Mondays in February do.
    assert fires("0 0 30 2 1", "UTC", "2026-01-01T00:00Z", 2) == utcs(
        "2026-02-02T00:00Z", "2026-02-09T00:00Z"
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Mars/Base", "unknown timezone 'Mars/Base'"),
        ("", "timezone is required"),
        ("utc", "unknown timezone 'utc'"),
        ("localtime", "unknown timezone 'localtime'"),
        ("../../etc/passwd", "unknown timezone"),
        ("/usr/share/zoneinfo/UTC", "unknown timezone"),
        ("America", "unknown timezone 'America'"),
    ],
)
def test_an_invalid_timezone_says_what_is_wrong(name: str, message: str) -> None:
    with pytest.raises(InvalidTimezone) as caught:
        parse_schedule("0 9 * * *", name)
    assert message in caught.value.fields["schedule.timezone"]
    with pytest.raises(InvalidTimezone) as caught:
        validate_timezone(name, field="user.timezone")
    assert message in caught.value.fields["user.timezone"]


@pytest.mark.parametrize("name", ["UTC", "Europe/London", "Asia/Kathmandu", "Etc/GMT+5"])
def test_valid_timezones_load(name: str) -> None:
    assert validate_timezone(name) == ZoneInfo(name)


# --- randomised check against a brute-force oracle ------------------------------------------

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
