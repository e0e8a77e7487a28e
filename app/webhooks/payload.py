"""The body of a webhook: `{"type", "timestamp", "data": <run view>}`, compact JSON.

`data` is the run as `GET /api/runs/{id}` shows it (`app.services.run_views`), except
that a `result` over `RESULT_MAX_BYTES` is cut to that size, with `resultTruncated: true`; the
full result stays at `GET /api/runs/{id}`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from app.models import TaskRun
from app.services.run_views import run_view
from app.wire import iso

#: A run's result longer than this (UTF-8 bytes) is truncated in the payload.
RESULT_MAX_BYTES = 64 * 1024


def truncate_utf8(text: str, max_bytes: int) -> tuple[str, bool]:
    """`text` cut to at most `max_bytes` UTF-8 bytes on a character boundary, and whether it was."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text, False
    return encoded[:max_bytes].decode(errors="ignore"), True


def run_data(run: TaskRun) -> dict[str, Any]:
    """The run view with the result capped at `RESULT_MAX_BYTES`."""
    view = run_view(run)
    truncated = False
    if run.result is not None:
        view["result"], truncated = truncate_utf8(run.result, RESULT_MAX_BYTES)
    view["resultTruncated"] = truncated
    return view


def event_body(event: str, occurred_at: datetime, run: TaskRun) -> str:
    """The exact bytes (as text) that are signed and sent."""
    payload = {"type": event, "timestamp": iso(occurred_at), "data": run_data(run)}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
