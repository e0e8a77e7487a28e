"""JSON views of the domain objects (the contract's "Task and run" shapes)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import overload

from api.schemas.responses import MeView, RunView, ScheduleView, TaskView
from app.models import Task, TaskRun, User
from app.services.credits import used_this_month
from app.webhooks.deliveries import webhook_view


@overload
def iso(moment: datetime) -> str: ...
@overload
def iso(moment: None) -> None: ...
@overload
def iso(moment: datetime | None) -> str | None: ...


def iso(moment: datetime | None) -> str | None:
    """An instant on the wire: ISO 8601 UTC with Z, milliseconds."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def schedule_view(task: Task) -> ScheduleView | None:
    if task.cron is None:
        return None
    return {"enabled": task.schedule_enabled, "cron": task.cron, "timezone": task.timezone or ""}


def task_view(task: Task, recent_runs: Sequence[TaskRun] | None = None) -> TaskView:
    view: TaskView = {
        "id": str(task.id),
        "title": task.title,
        "goal": task.description,
        "agentType": task.agent_type,
        "status": task.status,
        "priority": task.priority,
        "schedule": schedule_view(task),
        "webhook": webhook_view(task),
        "agentConfig": task.agent_config,
        "nextRunAt": iso(task.next_run_at),
        "lastRunAt": iso(task.last_run_at),
        "tokensUsed": task.tokens_used,
        "promptTokens": task.prompt_tokens,
        "completionTokens": task.completion_tokens,
        "cachedTokens": task.cached_tokens,
        "creditsUsed": task.credits_used,
        "result": task.result,
        "error": task.error,
        "createdAt": iso(task.created_at),
        "updatedAt": iso(task.updated_at),
    }
    if recent_runs is not None:
        view["recentRuns"] = [run_view(run) for run in recent_runs]
    return view


def run_view(run: TaskRun) -> RunView:
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


def me_view(user: User, now: datetime) -> MeView:
    used = used_this_month(user.credits_used, user.credits_period, now)
    return {
        "id": str(user.id),
        "email": user.email,
        "plan": user.plan,
        "monthlyCredits": user.monthly_credits,
        "creditsUsed": used,
        "creditsReserved": user.credits_reserved,
        "creditsRemaining": max(0, user.monthly_credits - used - user.credits_reserved),
        "maxConcurrentRuns": user.max_concurrent_runs,
        "runningRuns": user.running_runs,
    }
