"""Operator endpoints (CRON_SECRET): the cron-service hook and queue statistics; /metrics."""

from __future__ import annotations

from typing import Any, cast

import dramatiq
from litestar import Request, Response, get, post
from litestar.datastructures import State

from api.auth import CRON_AUTH
from api.schemas.openapi import errors
from api.schemas.responses import QueueStats, SchedulingHealth, SchedulingPass
from api.state import SendLog, ensure_all_sent, state_of
from app.services.scheduling import run_scheduling_pass, scheduling_health
from app.services.stats import queue_stats
from app.wire import iso


@get(
    "/api/cron/check-scheduled-tasks",
    **CRON_AUTH,
    sync_to_thread=True,
    responses=errors(401, 429, 503),
)
def scheduling_status(request: Request[Any, Any, State]) -> SchedulingHealth:
    """Scheduling health: how many tasks are scheduled and how many are due now."""
    state = state_of(request)
    with state.session_factory() as session:
        return cast(SchedulingHealth, scheduling_health(session, state.clock.now()))


@post(
    "/api/cron/check-scheduled-tasks",
    **CRON_AUTH,
    sync_to_thread=True,
    status_code=200,
    responses=errors(401, 429, 503),
)
def check_scheduled_tasks(request: Request[Any, Any, State]) -> Response[SchedulingPass]:
    """Run one scheduling pass now (for an external cron service).

    The pass commits each batch of runs before it sends their messages, so when Redis refuses
    them the tick has happened all the same: the runs are saved and queued, their tasks' next
    fires have moved on, and the reconciler sends the messages once Redis is back. The answer
    is then CONTRACT "When a dependency is down"'s 503 `unavailable` with Retry-After, as for
    the other POSTs whose run could not be sent, not `ok`, whose `runsQueued` would say runs
    are on their way that are not; its message says they are saved, and that calling again
    (as Retry-After invites) makes no second run: a slot runs once, and those tasks are no
    longer due.
    """
    state = state_of(request)
    now = state.clock.now()
    send = SendLog(state.send)
    result = run_scheduling_pass(
        state.session_factory,
        now=now,
        send=send,
        redis_client=dramatiq.get_broker().client,  # type: ignore[attr-defined]
    )
    ensure_all_sent(send.batches, repeat="calling again makes no second run of their slots")
    return Response(
        {
            "status": "ok",
            "runsQueued": result.runs_queued,
            "runsSkipped": result.runs_skipped,
            "timestamp": iso(now),
        },
        status_code=200,
    )


@get(
    "/api/queue/stats",
    **CRON_AUTH,
    sync_to_thread=True,
    responses=errors(401, 429, 503),
)
def stats(request: Request[Any, Any, State]) -> QueueStats:
    """Queue and orchestrator figures."""
    state = state_of(request)
    with state.session_factory() as session:
        redis_client = dramatiq.get_broker().client  # type: ignore[attr-defined]
        return cast(QueueStats, dict(queue_stats(redis_client, session, state.clock.now())))
