"""The run view: a run as `GET /api/runs/{id}` shows it (CONTRACT "Task and run"), and as the
`data` of a webhook and the `end` event carry it.

The API documents its shape as `api.schemas.responses.RunView`; a key added here is added there
too (tests/unit/test_run_views.py holds the two together).
"""

from __future__ import annotations

from typing import Any

from app.models import TaskRun
from app.wire import iso


def run_view(run: TaskRun) -> dict[str, Any]:
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
        "result": run.result,
        "error": run.error,
    }
