"""A run: attempts and their errors, the step timeline, live while it runs; retry and cancel."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, ServerSentEvent, Template
from litestar.response.sse import ServerSentEventMessage
from markupsafe import escape

from api.dashboard.render import is_fragment_request, page
from api.dashboard.web import BASE_PATH, signed_in
from api.state import ApiState, ensure_sent, state_of
from app.services import dashboard, run_control
from app.services.dashboard_sessions import SignedIn
from app.services.run_stream import RunEvent, Snapshot, parse_event_id, read_watched
from app.services.run_stream import run_events as stream_run_events

USER = {"user": Provide(signed_in, sync_to_thread=True)}


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


def _read(state: ApiState, user: SignedIn, run_id: uuid.UUID, after_seq: int) -> Snapshot:
    return read_watched(state.session_factory, user.user_id, run_id, after_seq, state.clock.now())


@get(f"{BASE_PATH}/runs/{{run_id:uuid}}/events", dependencies=USER, include_in_schema=False)
async def run_events(
    request: Request[Any, Any, State],
    user: NamedDependency[SignedIn],
    run_id: FromPath[uuid.UUID],
    after: FromQuery[str | None] = None,
) -> ServerSentEvent:
    """The run events stream (app.services.run_stream), as the page uses it: `changed` when the
    run's status or a step changes (the page then re-reads its body), `delta` with the streamed
    text as escaped HTML, `end` when the run has ended.

    `after` (the event id the page was rendered at) skips what the page already shows; a
    reconnecting browser's `Last-Event-ID` wins over it.
    """
    last_event_id = request.headers.get("last-event-id") or after
    messages = await page_events(state_of(request), user, run_id, last_event_id)
    return ServerSentEvent(messages, headers={"cache-control": "no-store", "x-accel-buffering": "no"})


async def page_events(
    state: ApiState, user: SignedIn, run_id: uuid.UUID, last_event_id: str | None
) -> AsyncIterator[ServerSentEventMessage]:
    """The page's messages after `last_event_id` (NotFound, before any, for a stranger's run)."""

    async def read(after_seq: int) -> Snapshot:
        return await anyio.to_thread.run_sync(_read, state, user, run_id, after_seq)

    first = await read(parse_event_id(last_event_id)[0])
    events = stream_run_events(
        state.feed, run_id, read, first, last_event_id, step_view=lambda step: None, run_view=lambda run: None
    )
    return _page_events(events)


async def _page_events(events: AsyncIterator[RunEvent | None]) -> AsyncIterator[ServerSentEventMessage]:
    async for event in events:
        if event is None:
            yield ServerSentEventMessage(data=None, comment="keep-alive")
        elif event.event == "delta":
            text = str(escape(str(event.data.get("text", ""))))
            yield ServerSentEventMessage(data=text, event="delta", id=event.id)
        elif event.event == "end":
            yield ServerSentEventMessage(data="end", event="end", id=event.id)
        else:  # status, step
            yield ServerSentEventMessage(data=event.event, event="changed", id=event.id)


@post(
    f"{BASE_PATH}/runs/{{run_id:uuid}}/retry", dependencies=USER, sync_to_thread=True, include_in_schema=False
)
def retry_run(
    request: Request[Any, Any, State], user: NamedDependency[SignedIn], run_id: FromPath[uuid.UUID]
) -> Redirect:
    """A new run of the failed run's task; the browser goes to it (or, when Redis refuses its
    message, to the 503 page that says it is saved and leads to it: the reconciler sends it)."""
    state = state_of(request)
    with state.session_factory.begin() as session:
        run, dispatch = run_control.retry_run(session, user.user_id, run_id, now=state.clock.now())
    ensure_sent([dispatch], state.send([dispatch]), run.task_id, run.status)
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
