"""PATCH a task, run it now, cancel it."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
from litestar import Request, Response, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from api.auth import current_user_id
from api.body import read_json
from api.idempotency import idempotent
from api.schemas.views import task_view
from api.state import ApiState
from app.services import task_control
from app.services.task_input import TaskUpdate, parse_task_update
from app.services.tasks import recent_runs

USER = {"user_id": Provide(current_user_id, sync_to_thread=True)}


@patch("/api/tasks/{task_id:uuid}", dependencies=USER)
async def update_task(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    task_id: FromPath[uuid.UUID],
) -> dict[str, Any]:
    """Change title, priority or schedule (enabled false pauses, true resumes)."""
    state: ApiState = request.app.state.api
    update = parse_task_update(await read_json(request))

    def apply(update: TaskUpdate) -> dict[str, Any]:
        with state.session_factory.begin() as session:
            task = task_control.update_task(
                session, user_id, task_id, update, settings=state.settings, now=state.clock.now()
            )
            return task_view(task, recent_runs(session, task.id))

    return await anyio.to_thread.run_sync(apply, update)


@post("/api/tasks/{task_id:uuid}/run", dependencies=USER)
async def run_task_now(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    task_id: FromPath[uuid.UUID],
) -> Response[dict[str, Any]]:
    """Queue a run now, outside the schedule (once per `Idempotency-Key`)."""
    state: ApiState = request.app.state.api

    def run_now() -> Response[dict[str, Any]]:
        with state.session_factory.begin() as session:
            run, dispatch = task_control.run_now(session, user_id, task_id, now=state.clock.now())
        state.send([dispatch])
        return Response({"taskId": str(task_id), "runId": str(run.id), "status": run.status}, status_code=202)

    async def answer() -> Response[dict[str, Any]]:
        return await anyio.to_thread.run_sync(run_now)

    return await idempotent(request, user_id, answer)


@post("/api/tasks/{task_id:uuid}/cancel", dependencies=USER, sync_to_thread=True)
def cancel_task(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    task_id: FromPath[uuid.UUID],
) -> Response[dict[str, Any]]:
    """Cancel queued runs, stop a running one at its next model call, disable the schedule."""
    state: ApiState = request.app.state.api
    with state.session_factory.begin() as session:
        task = task_control.cancel_task(
            session, user_id, task_id, settings=state.settings, now=state.clock.now()
        )
        view = task_view(task, recent_runs(session, task.id))
    return Response(view, status_code=200)
