"""The live pieces of a run's streamed answers: a per-run Redis stream, never Postgres.

While a step's answer streams from the provider, its pieces are buffered per run and written
at most every `DELTA_FLUSH_S` (and when the step ends) as one entry of the run's Redis stream
`agentsched:run:<id>:deltas`, bounded with `MAXLEN ~ DELTA_STREAM_MAXLEN`, and published on
the run's channel for live event streams. An entry's id is `<start seq>-<n>`: the event number
of the step's start (app.services.run_steps), then the entry's number within the step, so a
run's deltas order after its step's start and before its end, and `Last-Event-ID` can resume
inside a step. The stream expires `DELTA_TTL_S` after the run's attempt ends (while a run goes
on, at least `DELTA_TTL_S - DELTA_EXPIRY_REFRESH_S` after its latest entry). Deltas are best
effort: a Redis error drops them (the step's output, in Postgres, has the whole answer).

One writer per process: worker threads only append to their run's buffer; a daemon thread
(`DeltaPublisher`'s flusher) writes every run's pending entries in one pipeline per round, on
one Redis connection, so a process makes a few round trips a second for all its runs instead
of one per run every `DELTA_FLUSH_S`, and entry ids (assigned under the lock, written in that
order by the one thread) stay increasing per run. `flush` and `end_attempt` still return only
once their run's pieces are in Redis (or `DELTA_WAIT_S` passed), because the step's end event
must follow its pieces.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import RedisError

from app.agents.steps import ModelCall

logger = logging.getLogger(__name__)

DELTA_FLUSH_S = 0.25
DELTA_STREAM_MAXLEN = 5_000
DELTA_TTL_S = 3_600
#: A running run's stream has its expiry pushed back to `DELTA_TTL_S` at most this often.
DELTA_EXPIRY_REFRESH_S = 60.0
#: How long `flush` and `end_attempt` wait for the flusher at most (Redis hung: go on without).
DELTA_WAIT_S = 2.0


def deltas_key(run_id: uuid.UUID | str) -> str:
    return f"agentsched:run:{run_id}:deltas"


def deltas_channel(run_id: uuid.UUID | str) -> str:
    return f"agentsched:run-deltas:{run_id}"


@dataclass
class _Entry:
    entry_id: str
    index: int
    text: str


@dataclass
class _Buffer:
    start_seq: int
    index: int
    pieces: list[str] = field(default_factory=list)
    entries: int = 0
    #: Entries with their ids, not yet written (sealed from `pieces`).
    ready: list[_Entry] = field(default_factory=list)
    #: When the stream's expiry was last set (monotonic); 0: never.
    expiry_set_at: float = 0.0
    ending: bool = False

    def seal(self) -> None:
        """Turn the pending pieces into the step's next entry."""
        if self.pieces:
            self.entries += 1
            self.ready.append(_Entry(f"{self.start_seq}-{self.entries}", self.index, "".join(self.pieces)))
            self.pieces.clear()


@dataclass
class _Write:
    """What one round writes for one run."""

    run_id: uuid.UUID
    entries: list[_Entry]
    expire: bool


class DeltaPublisher:
    """Buffers runs' pieces and writes them to Redis from one thread; see the module docstring."""

    def __init__(
        self, redis_client: Redis, *, flush_s: float = DELTA_FLUSH_S, wait_s: float = DELTA_WAIT_S
    ) -> None:
        self.redis = redis_client
        self.flush_s = flush_s
        self.wait_s = wait_s
        self._lock = threading.Lock()
        #: The flusher waits on `_work` (pieces due, a new run), callers on `_written` (a round done).
        self._work = threading.Condition(self._lock)
        self._written = threading.Condition(self._lock)
        self._buffers: dict[uuid.UUID, _Buffer] = {}
        #: Runs whose pieces a caller waits for (`flush`, `end_attempt`) or, with `flush_s` 0, any.
        self._due: set[uuid.UUID] = set()
        self._rounds_started = 0
        self._rounds_done = 0
        self._next_tick = 0.0
        self._thread: threading.Thread | None = None
        self._closed = False

    def publish(self, run_id: uuid.UUID, start_seq: int | None, call: ModelCall, piece: str) -> None:
        """One piece of step `call`'s answer, which started as event `start_seq`."""
        if start_seq is None or not piece:
            return
        with self._lock:
            buffer = self._buffers.get(run_id)
            if buffer is None:
                buffer = self._buffers[run_id] = _Buffer(start_seq, call.index)
                self._work.notify_all()  # an idle flusher starts ticking
            elif buffer.start_seq != start_seq:  # a new step: the last one's pieces go first
                buffer.seal()
                buffer.start_seq, buffer.index, buffer.entries = start_seq, call.index, 0
            buffer.pieces.append(piece)
            if self.flush_s <= 0:
                self._due.add(run_id)
                self._work.notify_all()
            self._ensure_flusher()

    def flush(self, run_id: uuid.UUID) -> None:
        """Return once what is buffered for the run is written (the step is ending)."""
        self._wait_for(run_id, ending=False)

    def end_attempt(self, run_id: uuid.UUID) -> None:
        """The attempt ended: flush, forget, and let the stream expire `DELTA_TTL_S` from now."""
        self._wait_for(run_id, ending=True)

    def close(self) -> None:
        """Write what is pending and stop the flusher (tests; a worker's flusher is a daemon)."""
        with self._lock:
            self._closed = True
            self._work.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(self.wait_s + 1)

    def _wait_for(self, run_id: uuid.UUID, *, ending: bool) -> None:
        with self._lock:
            buffer = self._buffers.get(run_id)
            if buffer is None or not (ending or buffer.pieces or buffer.ready):
                return
            buffer.ending = buffer.ending or ending
            self._due.add(run_id)
            self._ensure_flusher()
            self._work.notify_all()
            # A round that started already may have missed these pieces: wait for the next one.
            target = self._rounds_started + 1
            if not self._written.wait_for(lambda: self._rounds_done >= target, self.wait_s):
                logger.warning("run %s: its streamed pieces were not written in time; going on", run_id)

    def _ensure_flusher(self) -> None:
        """Start the flusher thread (again, should it have died). Called with the lock held."""
        if self._thread is None or not self._thread.is_alive():
            self._closed = False
            self._thread = threading.Thread(target=self._flush_loop, name="delta-flusher", daemon=True)
            self._thread.start()

    def _flush_loop(self) -> None:
        while True:
            with self._lock:
                writes = self._next_round()
                if writes is None:
                    return
                self._rounds_started += 1
                round_number = self._rounds_started
            try:
                if writes:
                    self._write(writes)
            except Exception:  # never let the flusher die: every run of the process needs it
                logger.exception("the delta flusher failed a round; its pieces are dropped")
            finally:
                with self._lock:
                    self._rounds_done = round_number
                    self._written.notify_all()

    def _next_round(self) -> list[_Write] | None:
        """Wait for due runs or the next tick, then take what to write. None: closed and drained."""
        while True:
            now = time.monotonic()
            periodic = self.flush_s > 0 and bool(self._buffers)
            tick = periodic and now >= self._next_tick
            if self._due or tick or self._closed:
                break
            # Idle (no buffers, or every piece due at once): sleep until `publish` or a waiter.
            self._work.wait(self._next_tick - now if periodic else None)
        if tick or self._closed:
            self._next_tick = now + self.flush_s
            chosen = list(self._buffers)
        else:
            chosen = list(self._due)
        self._due.clear()
        writes = [write for run_id in chosen if (write := self._take(run_id, now)) is not None]
        if self._closed and not writes:
            return None
        return writes

    def _take(self, run_id: uuid.UUID, now: float) -> _Write | None:
        buffer = self._buffers.get(run_id)
        if buffer is None:
            return None
        buffer.seal()
        entries, buffer.ready = buffer.ready, []
        expire = buffer.ending or (bool(entries) and now - buffer.expiry_set_at >= DELTA_EXPIRY_REFRESH_S)
        if expire:
            buffer.expiry_set_at = now
        if buffer.ending:
            del self._buffers[run_id]
        if not entries and not expire:
            return None
        return _Write(run_id, entries, expire)

    def _write(self, writes: list[_Write]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for write in writes:
            key = deltas_key(write.run_id)
            channel = deltas_channel(write.run_id)
            for entry in write.entries:
                pipe.xadd(
                    key,
                    {"index": entry.index, "text": entry.text},
                    id=entry.entry_id,
                    maxlen=DELTA_STREAM_MAXLEN,
                    approximate=True,
                )
                pipe.publish(
                    channel, json.dumps({"id": entry.entry_id, "index": entry.index, "text": entry.text})
                )
            if write.expire:
                pipe.expire(key, DELTA_TTL_S)
        try:
            results = pipe.execute(raise_on_error=False)
        except RedisError:
            logger.warning(
                "could not publish the streamed pieces of %d runs (run %s, ...); dropped",
                len(writes),
                writes[0].run_id,
                exc_info=True,
            )
            return
        failed = [result for result in results if isinstance(result, Exception)]
        if failed:
            logger.warning(
                "%d of %d delta writes failed (runs %s, ...): %s",
                len(failed),
                len(results),
                writes[0].run_id,
                failed[0],
            )
