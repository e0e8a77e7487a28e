"""The event generator itself: keep-alive comments when idle, and ids that never go back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from app.models import RunStep, TaskRun
from app.services.run_deltas import deltas_key
from app.services.run_feed import RunFeed
from app.services.run_stream import Snapshot, parse_event_id, run_events


def _run(status: str, status_seq: int) -> TaskRun:
    return TaskRun(id=uuid.uuid4(), status=status, attempts=1, status_seq=status_seq)


def _step(index: int, status: str, seq: int, start_seq: int) -> RunStep:
    return RunStep(index=index, status=status, seq=seq, start_seq=start_seq, started_at=datetime.now(UTC))


def _events(
    feed: RunFeed, run: TaskRun, snapshots: list[Snapshot], last_event_id: str | None
) -> AsyncIterator[object]:
    """The run's events, each read of the run answered by the next of `snapshots`."""

    async def read(after_seq: int) -> Snapshot:
        return snapshots.pop(0)

    return run_events(
        feed,
        run.id,
        read,
        Snapshot(run, []),
        last_event_id,
        step_view=lambda s: {"index": s.index, "status": s.status},
        run_view=lambda r: {"status": r.status},
        keepalive_s=0.2,
    )


def test_an_idle_stream_sends_keepalives_and_a_poke_reads_the_run_again(settings):
    async def scenario() -> list[object]:
        feed = RunFeed(settings.broker_url)
        await feed.start()
        run = _run("running", 1)
        snapshots = [
            Snapshot(_run("running", 1), [_step(0, "running", 2, 2)]),
            Snapshot(_run("completed", 4), [_step(0, "completed", 3, 2)]),
        ]
        events = _events(feed, run, snapshots, None)
        seen: list[object] = []
        async for event in events:  # ends after `end`
            seen.append(None if event is None else (event.id, event.event))
        await feed.stop()
        return seen

    seen = asyncio.run(scenario())
    assert seen[:2] == [("1-0", "status"), ("2-0", "step")]
    assert seen[2] is None  # a keep-alive comment after 0.2 s without news, then a re-read
    assert seen[3] == ("3-0", "step")
    assert seen[-2:] == [("4-0", "status"), ("4-end", "end")]
    ids = [parse_event_id(e[0]) for e in seen if e is not None]
    assert ids == sorted(ids)


def test_event_ids_parse_and_bad_ones_start_over():
    assert parse_event_id(None) == (0, 0)
    assert parse_event_id("12-3") == (12, 3)
    assert parse_event_id("12-end") > parse_event_id("12-999999")
    assert parse_event_id("garbage") == (0, 0)


def test_a_stream_resumed_in_the_middle_of_a_step_gets_the_rest_of_its_pieces(settings):
    async def scenario() -> list[tuple[str, str]]:
        feed = RunFeed(settings.broker_url)
        await feed.start()
        run = _run("running", 1)
        key = deltas_key(run.id)
        for n, text in enumerate(["one ", "two ", "three"], start=1):
            await feed.redis.xadd(key, {"index": "0", "text": text}, id=f"2-{n}")
        snapshots = [
            Snapshot(_run("running", 1), []),  # the running step was written at 2: not after it
            Snapshot(_run("completed", 4), [_step(0, "completed", 3, 2)]),
        ]
        events = _events(feed, run, snapshots, "2-1")  # the client saw the step start and its first piece
        seen = [(event.id, event.event) async for event in events if event is not None]
        await feed.redis.delete(key)
        await feed.stop()
        return seen

    seen = asyncio.run(scenario())
    assert seen == [("2-2", "delta"), ("2-3", "delta"), ("3-0", "step"), ("4-0", "status"), ("4-end", "end")]
