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

One writer per process: worker threads only append to their run's queue (no lock: a deque's
append is atomic, and a lock taken for every piece by hundreds of threads convoys behind the
GIL); a daemon thread (`DeltaPublisher`'s flusher) numbers the pieces into entries and writes
every run's entries in one pipeline per round, on one Redis connection. So a process makes a few
round trips a second for all its runs instead of one per run every `DELTA_FLUSH_S`, and entry
ids, assigned and written by that one thread, stay increasing per run. `flush` and
`end_attempt` still return only once their run's pieces are in Redis (or `DELTA_WAIT_S` passed),
because the step's end event must follow its pieces; an attempt's end whose pieces are all
written (its last step's flush wrote them) leaves the expiry to the next round and returns at
once. Each waiting caller sleeps on a lock of its own, released by the round that served it
(a condition's `notify_all` woke every waiting thread at every round, hundreds a second).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
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
#: The flusher's pause after each round, for more waiting runs to share the next one.
DELTA_COALESCE_S = 0.002


def deltas_key(run_id: uuid.UUID | str) -> str:
    return f"agentsched:run:{run_id}:deltas"


def deltas_channel(run_id: uuid.UUID | str) -> str:
    return f"agentsched:run-deltas:{run_id}"


@dataclass
class _Entry:
    entry_id: str
    index: int
    text: str
    #: Published on the run's channel too (someone watched the run when its step started).
    live: bool = True


@dataclass(eq=False)
class _Buffer:
    """One run's pieces on their way to Redis."""

    #: (start seq, step index, piece, live): appended by the run's thread, taken by the flusher.
    pieces: deque[tuple[int, int, str, bool]] = field(default_factory=deque)
    #: The flusher's own: the step of the last entry, its number in that step, the expiry's age.
    start_seq: int = -1
    entries: int = 0
    expiry_set_at: float = 0.0
    #: The last round that took pieces from here (they are in Redis once it is done).
    taken_in: int = 0
    #: `end_attempt` asked: write, set the expiry, forget the run.
    ending: bool = False

    def take(self) -> list[_Entry]:
        """The queued pieces as entries: one per step, numbered on from the step's last entry."""
        entries: list[_Entry] = []
        texts: list[str] = []
        index = 0
        live = True
        for _ in range(len(self.pieces)):  # only what is there now; appends may go on meanwhile
            start_seq, piece_index, piece, live_piece = self.pieces.popleft()
            if start_seq != self.start_seq:
                if texts:
                    entries.append(self._entry(index, texts, live))
                self.start_seq, self.entries, texts = start_seq, 0, []
            index, live = piece_index, live_piece
            texts.append(piece)
        if texts:
            entries.append(self._entry(index, texts, live))
        return entries

    def _entry(self, index: int, texts: list[str], live: bool) -> _Entry:
        self.entries += 1
        return _Entry(f"{self.start_seq}-{self.entries}", index, "".join(texts), live)


@dataclass
class _Write:
    """What one round writes for one run."""

    run_id: uuid.UUID
    entries: list[_Entry]
    expire: bool


class DeltaPublisher:
    """Queues runs' pieces and writes them to Redis from one thread; see the module docstring."""

    def __init__(
        self, redis_client: Redis, *, flush_s: float = DELTA_FLUSH_S, wait_s: float = DELTA_WAIT_S
    ) -> None:
        self.redis = redis_client
        self.flush_s = flush_s
        self.wait_s = wait_s
        #: Guards the set of runs, `_due`, the round counters and the flusher's start.
        self._lock = threading.Lock()
        #: The flusher waits on `_work` (pieces due, a new run); each caller waits on a lock of its
        #: own in `_waiters` (its round, the lock the flusher releases once that round is done), so
        #: a round wakes only the callers it served, not every thread that waits.
        self._work = threading.Condition(self._lock)
        self._waiters: list[tuple[int, threading.Lock]] = []
        self._buffers: dict[uuid.UUID, _Buffer] = {}
        #: Runs whose pieces a caller waits for (`flush`, `end_attempt`) or, with `flush_s` 0, any.
        self._due: set[uuid.UUID] = set()
        self._rounds_started = 0
        self._rounds_done = 0
        self._next_tick = 0.0
        self._thread: threading.Thread | None = None
        self._closed = False

    def publish(
        self, run_id: uuid.UUID, start_seq: int | None, call: ModelCall, piece: str, *, live: bool = True
    ) -> None:
        """One piece of step `call`'s answer, which started as event `start_seq`.

        `live`: also publish it on the run's channel, for live event streams. False when nobody
        watched the run as the step started: the piece still goes to the run's stream, where an
        event stream that starts watching mid-step reads it, at the latest with the step's end.
        """
        if start_seq is None or not piece:
            return
        buffer = self._buffers.get(run_id)
        if buffer is None:
            with self._lock:
                buffer = self._buffers.setdefault(run_id, _Buffer())
                self._ensure_flusher()
                self._work.notify()  # an idle flusher starts ticking
        buffer.pieces.append((start_seq, call.index, piece, live))
        if self.flush_s <= 0:
            with self._lock:
                self._due.add(run_id)
                self._work.notify()

    def flush(self, run_id: uuid.UUID) -> None:
        """Return once what is queued for the run is written (the step is ending)."""
        self._wait_for(run_id, ending=False)

    def end_attempt(self, run_id: uuid.UUID) -> None:
        """The attempt ended: flush, forget, and let the stream expire `DELTA_TTL_S` from now."""
        self._wait_for(run_id, ending=True)

    def close(self) -> None:
        """Write what is pending and stop the flusher (tests; a worker's flusher is a daemon)."""
        with self._lock:
            self._closed = True
            self._work.notify()
            thread = self._thread
        if thread is not None:
            thread.join(self.wait_s + 1)

    def _wait_for(self, run_id: uuid.UUID, *, ending: bool) -> None:
        with self._lock:
            buffer = self._buffers.get(run_id)
            if buffer is None:
                return
            buffer.ending = buffer.ending or ending
            if ending or buffer.pieces:  # (the expiry is set by the next round, waited for or not)
                self._due.add(run_id)
                self._ensure_flusher()
                self._work.notify()
            if buffer.pieces:
                # A round that started already may have missed these pieces: wait for the next.
                target = self._rounds_started + 1
            elif buffer.taken_in > self._rounds_done:
                target = buffer.taken_in  # the round writing its last pieces is under way
            else:
                return  # every piece is in Redis already (an attempt's end after its last step's)
            written = threading.Lock()
            written.acquire()
            self._waiters.append((target, written))
        if not written.acquire(timeout=self.wait_s):
            logger.warning("run %s: its streamed pieces were not written in time; going on", run_id)

    def _release_waiters(self) -> None:
        """Wake the callers whose round is done. Called with the lock held."""
        done = self._rounds_done
        waiting = []
        for target, written in self._waiters:
            if target <= done:
                written.release()
            else:
                waiting.append((target, written))
        self._waiters = waiting

    def _ensure_flusher(self) -> None:
        """Start the flusher thread (again, should it have died). Called with the lock held."""
        if self._thread is None or not self._thread.is_alive():
            self._closed = False
            self._thread = threading.Thread(target=self._flush_loop, name="delta-flusher", daemon=True)
            self._thread.start()

    def _flush_loop(self) -> None:
        while True:
            with self._lock:
                chosen = self._next_round()
                if chosen is None:
                    return
                self._rounds_started += 1
                round_number = self._rounds_started
            try:
                writes = self._take(chosen, round_number)
                if writes:
                    self._write(writes)
            except Exception:  # never let the flusher die: every run of the process needs it
                logger.exception("the delta flusher failed a round; its pieces are dropped")
            finally:
                with self._lock:
                    self._rounds_done = round_number
                    self._release_waiters()
            # Let the steps ending meanwhile gather for the next round: a round a step's end cost
            # a Redis round trip and two thread switches each. runs_throughput in turns (2 x 8
            # threads, offline): 102 / 98 -> 107 / 102 runs/s, worker 9.3 / 9.5 -> 8.8 / 9.2 ms a run.
            time.sleep(DELTA_COALESCE_S)

    def _next_round(self) -> list[tuple[uuid.UUID, _Buffer]] | None:
        """Wait for due runs or the next tick; the runs to look at. None: closed and drained.

        Called with the lock held; ending runs leave the set of runs here.
        """
        while True:
            now = time.monotonic()
            periodic = self.flush_s > 0 and bool(self._buffers)
            tick = periodic and now >= self._next_tick
            if self._due or tick or self._closed:
                break
            # Idle (no runs, or every piece due at once): sleep until `publish` or a waiter.
            self._work.wait(self._next_tick - now if periodic else None)
        if tick or self._closed:
            self._next_tick = now + self.flush_s
            run_ids = list(self._buffers)
        else:
            run_ids = list(self._due)
        self._due.clear()
        chosen = [(run_id, buffer) for run_id in run_ids if (buffer := self._buffers.get(run_id))]
        for run_id, buffer in chosen:
            if buffer.ending:
                del self._buffers[run_id]
        if self._closed and not any(buffer.pieces or buffer.ending for _, buffer in chosen):
            return None
        return chosen

    def _take(self, chosen: list[tuple[uuid.UUID, _Buffer]], round_number: int) -> list[_Write]:
        now = time.monotonic()
        writes = []
        for run_id, buffer in chosen:
            if buffer.pieces:  # before taking them: a `flush` that finds none waits for this round
                buffer.taken_in = round_number
            entries = buffer.take()
            expire = buffer.ending or (bool(entries) and now - buffer.expiry_set_at >= DELTA_EXPIRY_REFRESH_S)
            if expire:
                buffer.expiry_set_at = now
            if entries or expire:
                writes.append(_Write(run_id, entries, expire))
        return writes

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
                if entry.live:
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
