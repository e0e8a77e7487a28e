"""Cron validation: an invalid expression or timezone says what is wrong."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from app.cron import parse_schedule, validate_timezone
from app.errors import InvalidCronExpression, InvalidTimezone
from tests.support.cron import fires, utcs

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
