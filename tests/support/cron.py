"""Helpers for the cron tests: UTC instants from short ISO strings, and a schedule's next fires."""

from __future__ import annotations

from datetime import UTC, datetime

from app.cron import next_fires, parse_schedule

NY = "America/New_York"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def fires(expr: str, tz: str, after: str | datetime, count: int = 5) -> list[datetime]:
    start = utc(after) if isinstance(after, str) else after
    return next_fires(parse_schedule(expr, tz), start, count)


def utcs(*texts: str) -> list[datetime]:
    return [utc(text) for text in texts]
