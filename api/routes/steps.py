"""A run's steps, and its live events as server-sent events."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from litestar import Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from api.auth import USER_AUTH
from api.schemas.openapi import errors
from api.schemas.steps import StepsPage, step_view
from api.schemas.views import run_view
from api.state import state_of
from app.services import tasks
from app.services.run_steps import list_steps
from app.services.run_stream import RunEvent, Snapshot, parse_event_id, read_watched, run_events

LastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        description="resume after this event (the `id:` of the last event received)",
        max_length=64,
    ),
]


@get(
    "/api/runs/{run_id:uuid}/steps",
    **USER_AUTH,
    sync_to_thread=True,
    responses=errors(401, 404, 429, 503),
)
def get_run_steps(
    request: Request[Any, Any, State], user_id: NamedDependency[uuid.UUID], run_id: FromPath[uuid.UUID]
) -> StepsPage:
    """The run's steps in order: plan, each step, final."""
    with state_of(request).session_factory() as session:
        tasks.get_run(session, user_id, run_id)
        return {"items": [step_view(step) for step in list_steps(session, run_id)]}


@get(
    "/api/runs/{run_id:uuid}/events",
    **USER_AUTH,
    media_type="text/event-stream",
    responses=errors(401, 404, 429, 503),
)
async def get_run_events(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    run_id: FromPath[uuid.UUID],
    last_event_id: LastEventId = None,
) -> ServerSentEvent:
    """`text/event-stream` of the run's life: `status`, `step`, `delta`, `end` (then it closes)."""
    state = state_of(request)

    def read(after_seq: int) -> Snapshot:
        return read_watched(state.session_factory, user_id, run_id, after_seq, state.clock.now())

    async def read_async(after_seq: int) -> Snapshot:
        return await anyio.to_thread.run_sync(read, after_seq)

    first = await read_async(parse_event_id(last_event_id)[0])  # 404 before the stream starts
    events = run_events(
        state.feed, run_id, read_async, first, last_event_id, step_view=step_view, run_view=run_view
    )
    return ServerSentEvent(_messages(events), headers={"X-Accel-Buffering": "no"})


async def _messages(events: AsyncIterator[RunEvent | None]) -> AsyncIterator[ServerSentEventMessage]:
    async for event in events:
        if event is None:
            yield ServerSentEventMessage(data=None, comment="keep-alive")
        else:
            yield ServerSentEventMessage(data=json.dumps(event.data), event=event.event, id=event.id)
