"""POST /api/agent/execute: create a task and run it now (waiting or not), or schedule it."""

from __future__ import annotations

import functools
import uuid
from typing import Any

import anyio
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody

from api.auth import USER_AUTH
from api.idempotency import IdempotencyKey, idempotent
from api.schemas.openapi import answer, errors
from api.schemas.requests import ExecuteBody
from api.schemas.responses import FinishedRun, QueuedRun, ScheduledTask
from api.schemas.views import run_view, schedule_view
from api.state import ApiState, ensure_sent, state_of
from app.services.task_input import ExecuteRequest, parse_execute_request
from app.services.tasks import CreatedTask, create_task, get_run, is_finished
from app.wire import iso


def _create(state: ApiState, user_id: uuid.UUID, request: ExecuteRequest) -> CreatedTask:
    if request.schedule is None:  # one statement: no BEGIN/COMMIT round trips
        with state.autocommit_sessions() as session:
            created = create_task(session, user_id, request, state.clock.now())
    else:
        with state.session_factory.begin() as session:
            created = create_task(session, user_id, request, state.clock.now())
    sent = state.send_recorded(created.dispatches)  # after commit: the row exists before its message
    ensure_sent(created.dispatches, sent, created.task_id, created.status)
    return created


@post(
    "/api/agent/execute",
    **USER_AUTH,
    status_code=202,
    responses={
        200: answer(FinishedRun, "Waited for the run, which ended: its outcome."),
        201: answer(ScheduledTask, "Scheduled: nothing runs now."),
        202: answer(QueuedRun, "Queued (async), or still going when the wait ended."),
        **errors(400, 401, 413, 422, 429, 503),
    },
)
async def execute(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    data: JSONBody[ExecuteBody],
    idempotency_key: IdempotencyKey = None,
) -> Response[Any]:
    """Create a task. Scheduled: 201. Async: 202 with the queued run. Otherwise wait for it.

    With an `Idempotency-Key`, a repeat within 24 h answers the first answer again.
    """
    return await idempotent(request, user_id, idempotency_key, lambda: _execute(request, user_id, data))


async def _execute(request: Request[Any, Any, State], user_id: uuid.UUID, data: ExecuteBody) -> Response[Any]:
    state = state_of(request)
    payload = data.to_payload()
    parse = functools.partial(
        parse_execute_request,
        default_timezone=state.settings.default_timezone,
        allow_private_webhooks=state.settings.webhook_allow_private,
    )
    # A webhook's host is resolved (DNS) to check its address: off the event loop.
    off_loop = isinstance(payload, dict) and "webhook" in payload
    parsed = await anyio.to_thread.run_sync(parse, payload) if off_loop else parse(payload)
    created = await anyio.to_thread.run_sync(_create, state, user_id, parsed)
    task, run_id = created.task, created.run_id
    if run_id is None:
        assert task is not None
        return Response(
            {
                "taskId": str(task.id),
                "status": task.status,
                "schedule": schedule_view(task),
                "nextRunAt": iso(task.next_run_at),
            },
            status_code=201,
        )
    queued = {"taskId": str(created.task_id), "runId": str(run_id), "status": created.status}
    if not parsed.wait:
        return Response(queued, status_code=202)
    return await _wait_for(state, user_id, run_id, parsed.wait_s, queued)


async def _wait_for(
    state: ApiState,
    user_id: NamedDependency[uuid.UUID],
    run_id: uuid.UUID,
    timeout_s: float,
    queued: dict[str, Any],
) -> Response[dict[str, Any]]:
    def read() -> Any:
        with state.session_factory() as session:
            return get_run(session, user_id, run_id)

    async def finished() -> bool:
        return is_finished(await anyio.to_thread.run_sync(read))

    if not await state.waiter.wait(str(run_id), timeout_s, finished):
        return Response(queued, status_code=202)
    view = run_view(await anyio.to_thread.run_sync(read))
    return Response(
        {
            "taskId": view["taskId"],
            "runId": view["id"],
            "status": view["status"],
            "result": view["result"],
            "error": view["error"],
            "tokensUsed": view["tokensUsed"],
            "creditsUsed": view["creditsUsed"],
        },
        status_code=200,
    )
