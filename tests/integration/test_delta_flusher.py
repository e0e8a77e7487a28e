"""The delta flusher: one writer thread per process, pieces whole and in order on real Redis."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import cast

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.agents.steps import ModelCall
from app.services.run_deltas import DELTA_TTL_S, DeltaPublisher, deltas_channel, deltas_key


def _call(index: int) -> ModelCall:
    return ModelCall(index=index, kind="step", title=f"step {index}", prompt="", max_tokens=10, model=None)


def _entries(client: redis.Redis, run_id: uuid.UUID) -> list[tuple[tuple[int, int], int, str]]:
    """The run's stream as ((start seq, n), index, text), in stream order."""
    rows = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(deltas_key(run_id)))
    entries = []
    for entry_id, fields in rows:
        start_seq, n = entry_id.decode().split("-")
        entries.append(((int(start_seq), int(n)), int(fields[b"index"]), fields[b"text"].decode()))
    return entries


def _text_of(client: redis.Redis, run_id: uuid.UUID, index: int) -> str:
    return "".join(text for _, i, text in _entries(client, run_id) if i == index)


@pytest.fixture
def publisher(redis_client: redis.Redis) -> Iterator[DeltaPublisher]:
    deltas = DeltaPublisher(redis_client, flush_s=0.02)
    yield deltas
    deltas.close()


def test_pieces_of_many_runs_on_many_threads_arrive_whole_and_in_order(
    publisher: DeltaPublisher, redis_client: redis.Redis
) -> None:
    runs = [uuid.uuid4() for _ in range(24)]
    steps = ((1, 0), (3, 1), (5, 2))  # (start seq, step index)
    failures: list[str] = []

    def one_run(run_id: uuid.UUID) -> None:
        for start_seq, index in steps:
            pieces = [f"{run_id.hex[:4]}:{index}:{n} " for n in range(40)]
            for n, piece in enumerate(pieces):
                publisher.publish(run_id, start_seq, _call(index), piece)
                if n % 8 == 0:
                    time.sleep(0.005)
            publisher.flush(run_id)
            # flush returns only once the step's pieces are in Redis (its end event follows them)
            if _text_of(redis_client, run_id, index) != "".join(pieces):
                failures.append(f"run {run_id} step {index}: incomplete after flush")
        publisher.end_attempt(run_id)

    threads = [threading.Thread(target=one_run, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    for run_id in runs:
        entries = _entries(redis_client, run_id)
        ids = [entry_id for entry_id, _, _ in entries]
        assert ids == sorted(ids)
        for (start_seq, _), index, _ in entries:
            assert (start_seq, index) in steps
        for start_seq, index in steps:
            numbers = [n for (seq, n), _, _ in entries if seq == start_seq]
            assert numbers == list(range(1, len(numbers) + 1))
            assert _text_of(redis_client, run_id, index) == "".join(
                f"{run_id.hex[:4]}:{index}:{n} " for n in range(40)
            )
        assert 0 < redis_client.ttl(deltas_key(run_id)) <= DELTA_TTL_S


def test_end_attempt_writes_what_is_buffered_and_sets_the_expiry(redis_client: redis.Redis) -> None:
    deltas = DeltaPublisher(redis_client, flush_s=60)  # no tick would come in time
    run_id = uuid.uuid4()
    try:
        deltas.publish(run_id, 4, _call(1), "half ")
        deltas.publish(run_id, 6, _call(2), "next step ")  # the first step's piece goes first
        deltas.publish(run_id, 6, _call(2), "answer")
        deltas.end_attempt(run_id)
        assert _entries(redis_client, run_id) == [((4, 1), 1, "half "), ((6, 1), 2, "next step answer")]
        assert DELTA_TTL_S - 5 < redis_client.ttl(deltas_key(run_id)) <= DELTA_TTL_S
        deltas.end_attempt(run_id)  # nothing left: returns at once
        deltas.flush(uuid.uuid4())  # a run that never streamed
    finally:
        deltas.close()


def test_pieces_reach_the_stream_and_the_channel_within_the_flush_interval(
    publisher: DeltaPublisher, redis_client: redis.Redis
) -> None:
    run_id = uuid.uuid4()
    pubsub = redis_client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(deltas_channel(run_id))
    try:
        assert pubsub.get_message(timeout=2) is not None  # the subscription's confirmation
        publisher.publish(run_id, 2, _call(0), "live")
        message = pubsub.get_message(timeout=2)
        assert message is not None
        assert message["data"] == b'{"id": "2-1", "index": 0, "text": "live"}'
        assert _entries(redis_client, run_id) == [((2, 1), 0, "live")]
    finally:
        pubsub.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_with_redis_unavailable_pieces_are_dropped_logged_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=_closed_port(), retry=Retry(NoBackoff(), 0))
    deltas = DeltaPublisher(unreachable, flush_s=0.02, wait_s=3)
    run_id = uuid.uuid4()
    caplog.set_level(logging.WARNING, logger="app.services.run_deltas")
    try:
        started = time.monotonic()
        for n in range(20):
            deltas.publish(run_id, 1, _call(0), f"piece {n} ")
        deltas.flush(run_id)
        deltas.publish(run_id, 3, _call(1), "more")
        deltas.end_attempt(run_id)
        assert time.monotonic() - started < 2  # a refused connection fails the round at once
    finally:
        deltas.close()
    assert any("could not publish the streamed pieces" in r.getMessage() for r in caplog.records)
    assert not deltas._buffers  # the run's buffer is forgotten all the same


def test_a_hung_redis_holds_a_step_end_no_longer_than_the_wait(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        hung = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.5)
        deltas = DeltaPublisher(hung, flush_s=60, wait_s=0.3)
        run_id = uuid.uuid4()
        caplog.set_level(logging.WARNING, logger="app.services.run_deltas")
        try:
            deltas.publish(run_id, 1, _call(0), "stuck")
            started = time.monotonic()
            deltas.flush(run_id)
            assert 0.25 < time.monotonic() - started < 1.0
        finally:
            deltas.close()
    assert any("not written in time" in r.getMessage() for r in caplog.records)


def test_an_attempt_whose_pieces_are_written_ends_without_waiting_and_its_stream_still_expires(
    redis_client: redis.Redis,
) -> None:
    """The last step's flush wrote every piece: the attempt's end only has the expiry left to set,
    which no event waits for, so it hands that to the flusher and returns at once."""
    deltas = DeltaPublisher(redis_client, flush_s=60)
    run_id = uuid.uuid4()
    try:
        deltas.publish(run_id, 3, _call(1), "all of it")
        deltas.flush(run_id)  # the step's end: waits until the piece is in Redis
        assert _entries(redis_client, run_id) == [((3, 1), 1, "all of it")]
        redis_client.persist(deltas_key(run_id))  # (the first write sets one; the end sets it again)
        round_before = deltas._rounds_done
        deltas.end_attempt(run_id)
        assert deltas._rounds_done == round_before  # returned before the round that sets the expiry
        deadline = time.monotonic() + 5
        while redis_client.ttl(deltas_key(run_id)) < 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert DELTA_TTL_S - 5 < redis_client.ttl(deltas_key(run_id)) <= DELTA_TTL_S
    finally:
        deltas.close()


def test_a_round_wakes_the_callers_it_served_and_only_them(redis_client: redis.Redis) -> None:
    """Each waiting caller has its own lock; a round releases those whose pieces it wrote."""
    deltas = DeltaPublisher(redis_client, flush_s=60)
    runs = [uuid.uuid4() for _ in range(16)]
    try:
        threads = []
        for number, run_id in enumerate(runs):
            deltas.publish(run_id, 1, _call(0), f"piece {number}")
            threads.append(threading.Thread(target=deltas.flush, args=(run_id,)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert not any(thread.is_alive() for thread in threads)
        assert [_text_of(redis_client, run_id, 0) for run_id in runs] == [f"piece {n}" for n in range(16)]
        assert deltas._waiters == []  # nobody left waiting, nobody woken for nothing
    finally:
        deltas.close()


def test_pieces_of_a_step_nobody_watched_go_to_the_stream_only(
    publisher: DeltaPublisher, redis_client: redis.Redis
) -> None:
    """No PUBLISH for a step whose run nobody watched as it started; the next, watched, step's
    pieces are published again."""
    run_id = uuid.uuid4()
    pubsub = redis_client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(deltas_channel(run_id))
    try:
        assert pubsub.get_message(timeout=2) is not None  # the subscription's confirmation
        publisher.publish(run_id, 2, _call(0), "quiet ", live=False)
        publisher.publish(run_id, 2, _call(0), "piece", live=False)
        publisher.flush(run_id)
        assert _entries(redis_client, run_id) == [((2, 1), 0, "quiet piece")]
        assert pubsub.get_message(timeout=0.3) is None
        publisher.publish(run_id, 5, _call(1), "watched")
        message = pubsub.get_message(timeout=2)
        assert message is not None
        assert message["data"] == b'{"id": "5-1", "index": 1, "text": "watched"}'
    finally:
        pubsub.close()
