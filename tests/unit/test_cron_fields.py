"""Cron fields: day and month matching, names, steps, lists, Vixie day-of-week ranges, macros."""

from __future__ import annotations

import pytest

from app.cron import parse_schedule
from app.errors import InvalidCronExpression
from tests.support.cron import NY, fires, utc, utcs

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
