"""A run: attempts and their errors, the step timeline, live while it runs; retry and cancel."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from litestar.response import Redirect, ServerSentEvent, Template
from litestar.response.sse import ServerSentEventMessage
from sqlalchemy import select

from api.dashboard.render import is_fragment_request, page
from api.dashboard.web import BASE_PATH, signed_in, state_of
from api.state import ApiState
from app.errors import NotFound
from app.models import TaskRun
from app.models.enums import RunStatus
from app.services import dashboard, run_control
from app.services.dashboard_sessions import SignedIn

USER = {"user": Provide(signed_in, sync_to_thread=True)}

#: Without a step notification, a live run is re-read this often (seconds).
LIVE_RECHECK_S = 1.0
#: A stream ends after this long even if the run has not (the browser reconnects).
STREAM_MAX_S = 15 * 60


def _detail(state: ApiState, user: SignedIn, run_id: uuid.UUID) -> dashboard.RunDetail:
    with state.session_factory() as session:
        return dashboard.run_detail(session, user.user_id, run_id)


@get(f"{BASE_PATH}/runs/{{run_id:uuid}}", dependencies=USER, sync_to_thread=True, include_in_schema=False)
def run_page(
    request: Request[Any, Any, State], user: NamedDependency[SignedIn], run_id: FromPath[uuid.UUID]
) -> Template:
    detail = _detail(state_of(request), user, run_id)
    context = {"user": user, "detail": detail, "run": detail.run, "task": detail.task}
    if is_fragment_request(request, "run-body"):
        return page("_run_body.html", context)
    return page("run.html", context)


@get(
    f"{BASE_PATH}/runs/{{run_id:uuid}}/body", dependencies=USER, sync_to_thread=True, include_in_schema=False
)
def run_body(
    request: Request[Any, Any, State], user: NamedDependency[SignedIn], run_id: FromPath[uuid.UUID]
) -> Template:
    """The `#run-body` fragment: status, attempts, steps, result (what the live page re-reads)."""
    detail = _detail(state_of(request), user, run_id)
    return page("_run_body.html", {"user": user, "detail": detail, "run": detail.run, "task": detail.task})


def _version(state: ApiState, user: SignedIn, run_id: uuid.UUID) -> tuple[Any, ...] | None:
    """What changes whenever the run does: status, attempt, tokens and its event counter."""
    columns: list[Any] = [TaskRun.status, TaskRun.attempts, TaskRun.tokens_used]
    for name in ("event_seq", "step_count"):
        if hasattr(TaskRun, name):
            columns.append(getattr(TaskRun, name))
    with state.session_factory() as session:
        row = session.execute(
            select(*columns).where(TaskRun.id == run_id, TaskRun.user_id == user.user_id)
        ).first()
    return None if row is None else tuple(row)


@get(f"{BASE_PATH}/runs/{{run_id:uuid}}/events", dependencies=USER, include_in_schema=False)
async def run_events(
    request: Request[Any, Any, State], user: NamedDependency[SignedIn], run_id: FromPath[uuid.UUID]
) -> ServerSentEvent:
    """`changed` whenever the run changes (the page then re-reads its body), `end` when it ends.

    Woken by the run-finished notification; between those, the run is re-read every second.
    """
    state = state_of(request)
    first = await anyio.to_thread.run_sync(_version, state, user, run_id)
    if first is None:
        raise NotFound("run not found")

    async def changes() -> AsyncIterator[ServerSentEventMessage]:
        last: tuple[Any, ...] | None = None
        counter = 0
        deadline = anyio.current_time() + STREAM_MAX_S
        while anyio.current_time() < deadline:
            version = await anyio.to_thread.run_sync(_version, state, user, run_id)
            if version is None:
                return
            finished = version[0] not in (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
            if version != last:
                counter += 1
                last = version
                if not finished:
                    yield ServerSentEventMessage(event="changed", data=str(version[0]), id=str(counter))
            if finished:
                yield ServerSentEventMessage(event="end", data=str(version[0]), id=str(counter + 1))
                return

            # Sleep until the run-finished notification or the next re-read, whichever comes first
            # (a finish just before we registered is caught by that re-read).
            await state.waiter.wait(str(run_id), LIVE_RECHECK_S, _not_yet)

    return ServerSentEvent(changes(), headers={"cache-control": "no-store", "x-accel-buffering": "no"})


async def _not_yet() -> bool:
    return False


@post(
    f"{BASE_PATH}/runs/{{run_id:uuid}}/retry", dependencies=USER, sync_to_thread=True, include_in_schema=False
)
def retry_run(
    request: Request[Any, Any, State], user: NamedDependency[SignedIn], run_id: FromPath[uuid.UUID]
) -> Redirect:
    """A new run of the failed run's task; the browser goes to it."""
    state = state_of(request)
    with state.session_factory.begin() as session:
        run, dispatch = run_control.retry_run(session, user.user_id, run_id, now=state.clock.now())
    state.send([dispatch])
    return Redirect(f"{BASE_PATH}/runs/{run.id}", status_code=303)


@post(
    f"{BASE_PATH}/runs/{{run_id:uuid}}/cancel",
    dependencies=USER,
    sync_to_thread=True,
    include_in_schema=False,
)
def cancel_run(
    request: Request[Any, Any, State], user: NamedDependency[SignedIn], run_id: FromPath[uuid.UUID]
) -> Redirect:
    state = state_of(request)
    with state.session_factory.begin() as session:
        run_control.cancel_run(session, user.user_id, run_id, settings=state.settings, now=state.clock.now())
    return Redirect(f"{BASE_PATH}/runs/{run_id}", status_code=303)
