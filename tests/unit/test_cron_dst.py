"""Cron across daylight-saving changes: a spring gap fires once after it, an autumn overlap once."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.cron import next_fire, parse_schedule
from tests.support.cron import NY, fires, utc, utcs

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
