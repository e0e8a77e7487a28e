"""PATCH a task, run it now, cancel it."""

from __future__ import annotations

import functools
import uuid
from typing import Any

import anyio
from litestar import Request, Response, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from api.auth import USER_AUTH
from api.idempotency import IdempotencyKey, idempotent
from api.schemas.openapi import answer, errors
from api.schemas.requests import TaskPatchBody
from api.schemas.responses import QueuedRun, TaskView
from api.schemas.views import task_view
from api.state import ensure_sent, state_of
from app.services import task_control
from app.services.task_input import TaskUpdate, parse_task_update
from app.services.tasks import recent_runs


@patch(
    "/api/tasks/{task_id:uuid}",
    **USER_AUTH,
    responses=errors(400, 401, 404, 413, 429, 503),
)
async def update_task(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    task_id: FromPath[uuid.UUID],
    data: JSONBody[TaskPatchBody],
) -> TaskView:
    """Change title, priority or schedule (enabled false pauses, true resumes)."""
    state = state_of(request)
    payload = data.to_payload()
    # A webhook's host is resolved (DNS) to check its address: off the event loop.
    update = await anyio.to_thread.run_sync(
        functools.partial(parse_task_update, allow_private_webhooks=state.settings.webhook_allow_private),
        payload,
    )

    def apply(update: TaskUpdate) -> TaskView:
        with state.session_factory.begin() as session:
            task = task_control.update_task(
                session, user_id, task_id, update, settings=state.settings, now=state.clock.now()
            )
            return task_view(task, recent_runs(session, task.id))

    return await anyio.to_thread.run_sync(apply, update)


@post(
    "/api/tasks/{task_id:uuid}/run",
    **USER_AUTH,
    status_code=202,
    responses={202: answer(QueuedRun, "The run is queued."), **errors(401, 404, 409, 422, 429, 503)},
)
async def run_task_now(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    task_id: FromPath[uuid.UUID],
    idempotency_key: IdempotencyKey = None,
) -> Response[dict[str, Any]]:
    """Queue a run now, outside the schedule (once per `Idempotency-Key`)."""
    state = state_of(request)

    def run_now() -> Response[dict[str, Any]]:
        with state.session_factory.begin() as session:
            run, dispatch = task_control.run_now(session, user_id, task_id, now=state.clock.now())
        ensure_sent([dispatch], state.send([dispatch]), task_id, run.status)
        return Response({"taskId": str(task_id), "runId": str(run.id), "status": run.status}, status_code=202)

    async def queue_run() -> Response[dict[str, Any]]:
        return await anyio.to_thread.run_sync(run_now)

    return await idempotent(request, user_id, idempotency_key, queue_run)


@post(
    "/api/tasks/{task_id:uuid}/cancel",
    **USER_AUTH,
    sync_to_thread=True,
    status_code=200,
    responses=errors(401, 404, 429, 503),
)
def cancel_task(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    task_id: FromPath[uuid.UUID],
) -> TaskView:
    """Cancel queued runs, stop a running one at its next model call, disable the schedule."""
    state = state_of(request)
    with state.session_factory.begin() as session:
        task = task_control.cancel_task(
            session, user_id, task_id, settings=state.settings, now=state.clock.now()
        )
        return task_view(task, recent_runs(session, task.id))
