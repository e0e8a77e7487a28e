"""JSON views of the domain objects (the contract's "Task and run" shapes)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from api.schemas.responses import MeView, RunView, ScheduleView, TaskView
from app.models import Task, TaskRun, User
from app.services import run_views
from app.services.credits import used_this_month
from app.webhooks.deliveries import webhook_view
from app.wire import iso


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
    return cast(RunView, run_views.run_view(run))


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
