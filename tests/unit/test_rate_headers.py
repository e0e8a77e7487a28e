"""Reading a provider's 429: Retry-After (seconds or HTTP date) and x-ratelimit-reset-* durations."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from app.providers.rate_headers import (
    parse_duration,
    parse_retry_after,
    provider_error_code,
    rate_limit_wait_s,
)

NOW = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("1.5s", 1.5),
        ("500us", 0.0005),
        ("2", 2.0),
        ("0.25", 0.25),
    ],
)
def test_reset_durations(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "soon", "1x", "s", "1s junk", "-"])
def test_bad_reset_durations_are_none(value):
    assert parse_duration(value) is None


def test_retry_after_in_seconds_and_as_an_http_date():
    assert parse_retry_after("7", NOW) == 7.0
    later = format_datetime(datetime(2026, 12, 1, 9, 0, 30, tzinfo=UTC), usegmt=True)
    assert later.endswith("GMT")
    assert parse_retry_after(later, NOW) == pytest.approx(30.0)
    earlier = format_datetime(datetime(2026, 12, 1, 8, 0, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(earlier, NOW) == 0.0
    assert parse_retry_after("next tuesday", NOW) is None


def test_the_longest_wait_named_wins():
    headers = {"retry-after": "2", "x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
    assert rate_limit_wait_s(headers, NOW) == 360.0
    assert rate_limit_wait_s({"x-ratelimit-reset-requests": "20ms"}, NOW) == pytest.approx(0.02)
    assert rate_limit_wait_s({}, NOW) is None
    assert rate_limit_wait_s({"retry-after": "garbage"}, NOW) is None


def test_the_error_code_of_an_openai_error_body():
    assert (
        provider_error_code(b'{"error": {"code": "insufficient_quota", "type": "x"}}') == "insufficient_quota"
    )
    assert provider_error_code(b'{"error": {"code": null, "type": "requests"}}') == "requests"
    assert provider_error_code(b"not json") is None
    assert provider_error_code(b'["error"]') is None
