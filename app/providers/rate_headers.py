"""What a provider's 429 says about when to call again (pure functions, no I/O).

`Retry-After` is seconds or an HTTP date (RFC 9110); OpenAI's `x-ratelimit-reset-requests` and
`x-ratelimit-reset-tokens` are Go-style durations: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

RESET_HEADERS = ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_retry_after(value: str, now_s: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta-seconds or an HTTP date); None if bad."""
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None or moment.tzinfo is None:
        return None
    now = time.time() if now_s is None else now_s
    return max(0.0, moment.timestamp() - now)


def parse_duration(value: str) -> float | None:
    """Seconds in a Go-style duration (`6m0s`, `20ms`, `1.5s`); a bare number is seconds."""
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    return total if position == len(value) and position > 0 else None


def rate_limit_wait_s(headers: Mapping[str, str], now_s: float | None = None) -> float | None:
    """How long a 429 asks us to wait: the longest of what its headers say; None if they don't."""
    waits: list[float] = []
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        parsed = parse_retry_after(retry_after, now_s)
        if parsed is not None:
            waits.append(parsed)
    for name in RESET_HEADERS:
        reset = headers.get(name)
        if reset is not None:
            parsed = parse_duration(reset)
            if parsed is not None:
                waits.append(parsed)
    return max(waits) if waits else None


def provider_error_code(body: bytes) -> str | None:
    """The `error.code` (or `error.type`) of an OpenAI-style error body, if any."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None
    for field in ("code", "type"):
        value = error.get(field)
        if isinstance(value, str) and value:
            return value
    return None
