"""A run's life as an ordered stream of events: `status`, `step`, `delta`, `end`.

Every status change and step write of a run takes the run's next event number (`event_seq`,
see app.services.run_steps), so the run's Postgres events are ordered by it: a status event's
id is `<status_seq>-0`, a step event's `<seq>-0` (its latest write; a replay shows each step
once, as it is now). A delta's id is its Redis stream id, `<start seq of its step>-<n>`, so it
falls after its step's start and before its end. `end` is `<status_seq>-end`. An event id given
back (`Last-Event-ID`) resumes after that event; with none, the stream replays the run's
status and steps, then goes on live. A finished run answers its history and `end` at once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from app.models import RunStep, TaskRun
from app.models.enums import FINAL_RUN_STATUSES, StepStatus
from app.services import tasks
from app.services.run_deltas import deltas_key
from app.services.run_feed import Delta, Poke, RunFeed, Watch
from app.services.run_steps import steps_after, watch_run

#: An idle stream sends a comment this often, so proxies keep it open (seconds).
KEEPALIVE_S = 15.0
_END = 2**62
_MAX_ENTRY = 18446744073709551615
_FINAL = {status.value for status in FINAL_RUN_STATUSES}


@dataclass(frozen=True, slots=True)
class RunEvent:
    id: str
    event: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Snapshot:
    run: TaskRun
    #: The run's steps written after the event number asked for, in the order written.
    steps: Sequence[RunStep]


def read_watched(
    session_factory: sessionmaker[Session],
    user_id: uuid.UUID,
    run_id: uuid.UUID,
    after_seq: int,
    now: datetime,
) -> Snapshot:
    """Mark the run watched (its writes notify, and its steps' pieces are published, from then
    on), then read it: a write either notifies or is in what is read. NotFound for a stranger's run."""
    with session_factory.begin() as session:
        watch_run(session, user_id, run_id, now)
    with session_factory() as session:
        run = tasks.get_run(session, user_id, run_id)
        return Snapshot(run, list(steps_after(session, run_id, after_seq)))


#: Reads the run and its steps written after an event number (raises NotFound for a stranger).
ReadSnapshot = Callable[[int], Awaitable[Snapshot]]


def parse_event_id(value: str | None) -> tuple[int, int]:
    """`Last-Event-ID` as (event number, delta number); anything unreadable starts over."""
    if not value:
        return (0, 0)
    major, _, minor = value.strip().partition("-")
    try:
        return (max(0, int(major)), _END if minor == "end" else max(0, int(minor or 0)))
    except ValueError:
        return (0, 0)


class _Cursor:
    def __init__(self, position: tuple[int, int]) -> None:
        self.position = position
        #: A resumed stream has seen a status already; a new one starts with the current status.
        self.status_sent = position != (0, 0)
        #: Steps seen running: their start's event number → index.
        self.open_steps: dict[int, int] = {}
        if position != (0, 0) and position[1] != _END:
            # Resumed after a step's start or one of its pieces: that step may still be running,
            # and its row (written at that number) is not read again, so keep its pieces coming.
            # When the number was a status or a step's end, no piece carries it: nothing comes.
            self.open_steps[position[0]] = -1

    def passed(self, position: tuple[int, int]) -> bool:
        return position <= self.position


async def run_events(
    feed: RunFeed,
    run_id: uuid.UUID,
    read: ReadSnapshot,
    first: Snapshot,
    last_event_id: str | None,
    *,
    step_view: Callable[[RunStep], Any],
    run_view: Callable[[TaskRun], Any],
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[RunEvent | None]:
    """The run's events after `last_event_id`; None stands for a keep-alive comment."""
    cursor = _Cursor(parse_event_id(last_event_id))
    # `first` (read to answer 404 before the stream starts) came before the watch: read again
    # once watching, so that nothing written in between is missed.
    snapshot: Snapshot | None = first if first.run.status in _FINAL else None
    async with feed.watch(run_id) as watch:
        while True:
            if snapshot is None:
                snapshot = await read(cursor.position[0])
            async for event in _catch_up(feed, run_id, snapshot, cursor, step_view):
                yield event
            if snapshot.run.status in _FINAL:
                yield RunEvent(f"{snapshot.run.status_seq}-end", "end", run_view(snapshot.run))
                return
            snapshot = None
            async for live in _live(watch, cursor, keepalive_s):
                yield live


async def _catch_up(
    feed: RunFeed, run_id: uuid.UUID, snapshot: Snapshot, cursor: _Cursor, step_view: Callable[[RunStep], Any]
) -> AsyncIterator[RunEvent]:
    run = snapshot.run
    items: list[tuple[int, RunStep | None]] = [(step.seq, step) for step in snapshot.steps if step.seq > 0]
    if run.status_seq > cursor.position[0] or not cursor.status_sent:
        items.append((run.status_seq, None))
    for seq, step in sorted(items, key=lambda item: (item[0], item[1] is None)):
        if step is None:
            cursor.status_sent = True
            cursor.position = max(cursor.position, (seq, 0))
            yield RunEvent(f"{seq}-0", "status", {"status": run.status, "attempt": run.attempts})
            continue
        if cursor.passed((seq, 0)):
            continue
        if step.status == StepStatus.RUNNING.value:
            cursor.open_steps[step.start_seq] = step.index
        elif step.start_seq in cursor.open_steps:
            for delta in await _deltas(feed, run_id, step.start_seq, cursor):
                yield delta
            cursor.open_steps.pop(step.start_seq, None)
        cursor.position = (seq, 0)
        yield RunEvent(f"{seq}-0", "step", step_view(step))
    for start_seq in sorted(cursor.open_steps):
        for delta in await _deltas(feed, run_id, start_seq, cursor):
            yield delta


async def _deltas(feed: RunFeed, run_id: uuid.UUID, start_seq: int, cursor: _Cursor) -> list[RunEvent]:
    """The step's pieces in Redis after the cursor (none when Redis cannot be read)."""
    low = max(cursor.position, (start_seq, 0))
    try:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await feed.redis.xrange(  # type: ignore[assignment]
            deltas_key(run_id), f"({low[0]}-{low[1]}", f"{start_seq}-{_MAX_ENTRY}"
        )
    except (RedisError, OSError):
        return []
    events = []
    for entry_id, fields in entries:
        key = entry_id.decode()
        text = fields.get(b"text", b"").decode()
        events.append(RunEvent(key, "delta", {"index": int(fields.get(b"index", b"0")), "text": text}))
        cursor.position = parse_event_id(key)
    return events


async def _live(watch: Watch, cursor: _Cursor, keepalive_s: float) -> AsyncIterator[RunEvent | None]:
    """Deltas as they come, until Postgres says the run changed (or a keep-alive is due)."""
    while True:
        try:
            item = await asyncio.wait_for(watch.queue.get(), timeout=keepalive_s)
        except TimeoutError:
            yield None
            return  # and read the run again: a safety net should a notification be lost
        if isinstance(item, Poke):
            return
        assert isinstance(item, Delta)
        position = parse_event_id(item.id)
        if position[0] in cursor.open_steps and not cursor.passed(position):
            cursor.position = position
            yield RunEvent(item.id, "delta", {"index": item.index, "text": item.text})
        elif position[0] > cursor.position[0]:
            return  # a step whose start we have not read yet: read it (and its pieces) first
