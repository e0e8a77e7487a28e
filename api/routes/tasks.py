"""Reading tasks, runs and the caller's account."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, Parameter

from api.auth import USER_AUTH
from api.schemas.openapi import errors
from api.schemas.responses import MeView, RunPage, RunView, TaskPage, TaskView
from api.schemas.views import me_view, run_view, task_view
from api.state import state_of
from app.models.enums import TaskStatus
from app.services import tasks

Limit = Annotated[
    int, Parameter(ge=1, le=tasks.PAGE_MAX, description=f"items per page, at most {tasks.PAGE_MAX}")
]
Status = Annotated[
    str | None,  # checked by the service; a TaskStatus type would read `status=null` as no filter
    Parameter(
        description="only tasks in this status",
        schema_extra={"oneOf": None, "type": "string", "enum": [status.value for status in TaskStatus]},
    ),
]
Cursor = Annotated[
    str | None,
    Parameter(
        description="`nextCursor` of the previous page",
        schema_extra={"oneOf": None, "type": "string", "pattern": tasks.CURSOR_PATTERN},
    ),
]


@get(
    "/api/tasks",
    **USER_AUTH,
    sync_to_thread=True,
    responses=errors(400, 401, 429, 503),
)
def list_tasks(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    status: Status = None,
    limit: Limit = tasks.PAGE_DEFAULT,
    cursor: Cursor = None,
) -> TaskPage:
    """The caller's tasks, newest first."""
    with state_of(request).session_factory() as session:
        page = tasks.list_tasks(session, user_id, status=status, limit=limit, cursor=cursor)
        return {"items": [task_view(task) for task in page.items], "nextCursor": page.next_cursor}


@get(
    "/api/tasks/{task_id:uuid}",
    **USER_AUTH,
    sync_to_thread=True,
    responses=errors(401, 404, 429, 503),
)
def get_task(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    task_id: FromPath[uuid.UUID],
) -> TaskView:
    """One task with its most recent runs."""
    with state_of(request).session_factory() as session:
        task = tasks.get_task(session, user_id, task_id)
        return task_view(task, tasks.recent_runs(session, task.id))


@get(
    "/api/tasks/{task_id:uuid}/runs",
    **USER_AUTH,
    sync_to_thread=True,
    responses=errors(400, 401, 404, 429, 503),
)
def list_task_runs(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    task_id: FromPath[uuid.UUID],
    limit: Limit = tasks.PAGE_DEFAULT,
    cursor: Cursor = None,
) -> RunPage:
    """The task's runs, newest first."""
    with state_of(request).session_factory() as session:
        page = tasks.list_runs(session, user_id, task_id, limit=limit, cursor=cursor)
        return {"items": [run_view(run) for run in page.items], "nextCursor": page.next_cursor}


@get(
    "/api/runs/{run_id:uuid}",
    **USER_AUTH,
    sync_to_thread=True,
    responses=errors(401, 404, 429, 503),
)
def get_run(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    run_id: FromPath[uuid.UUID],
) -> RunView:
    """One run."""
    with state_of(request).session_factory() as session:
        return run_view(tasks.get_run(session, user_id, run_id))


@get(
    "/api/me",
    **USER_AUTH,
    sync_to_thread=True,
    responses=errors(401, 429, 503),
)
def me(request: Request[Any, Any, State], user_id: NamedDependency[uuid.UUID]) -> MeView:
    """The caller's account and credits."""
    state = state_of(request)
    with state.session_factory() as session:
        return me_view(tasks.get_user(session, user_id), state.clock.now())
