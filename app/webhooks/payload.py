"""The body of a webhook: `{"type", "timestamp", "data": <run view>}`, compact JSON.

`data` is the run as `GET /api/runs/{id}` shows it (the tests hold the two together), except
that a `result` over `RESULT_MAX_BYTES` is cut to that size, with `resultTruncated: true`; the
full result stays at `GET /api/runs/{id}`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from app.models import TaskRun

#: A run's result longer than this (UTF-8 bytes) is truncated in the payload.
RESULT_MAX_BYTES = 64 * 1024


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def truncate_utf8(text: str, max_bytes: int) -> tuple[str, bool]:
    """`text` cut to at most `max_bytes` UTF-8 bytes on a character boundary, and whether it was."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text, False
    return encoded[:max_bytes].decode(errors="ignore"), True


def run_data(run: TaskRun) -> dict[str, Any]:
    """The run view (api.schemas.views.run_view, which app/ cannot import: the unit test
    test_the_payload_carries_the_run_view keeps the two the same), with the result capped."""
    result, truncated = (None, False) if run.result is None else truncate_utf8(run.result, RESULT_MAX_BYTES)
    return {
        "id": str(run.id),
        "taskId": str(run.task_id),
        "trigger": run.trigger,
        "scheduledFor": iso(run.scheduled_for),
        "status": run.status,
        "priority": run.priority,
        "attempts": min(run.attempts, run.max_attempts),
        "maxAttempts": run.max_attempts,
        "queuedAt": iso(run.queued_at),
        "startedAt": iso(run.started_at),
        "finishedAt": iso(run.finished_at),
        "tokensUsed": run.tokens_used,
        "promptTokens": run.prompt_tokens,
        "completionTokens": run.completion_tokens,
        "cachedTokens": run.cached_tokens,
        "steps": run.step_count,
        "creditsUsed": run.credits_used,
        "tokensOverBudget": run.tokens_over_budget,
        "result": result,
        "resultTruncated": truncated,
        "error": run.error,
    }


def event_body(event: str, occurred_at: datetime, run: TaskRun) -> str:
    """The exact bytes (as text) that are signed and sent."""
    payload = {"type": event, "timestamp": iso(occurred_at), "data": run_data(run)}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
