"""The live pieces of a run's streamed answers: a per-run Redis stream, never Postgres.

While a step's answer streams from the provider, its pieces are buffered per run and flushed at
most every `DELTA_FLUSH_S` (and when the step ends) as one entry of the run's Redis stream
`agentsched:run:<id>:deltas`, bounded with `MAXLEN ~ DELTA_STREAM_MAXLEN`, and published on
the run's channel for live event streams. An entry's id is `<start seq>-<n>`: the event number
of the step's start (app.services.run_steps), then the entry's number within the step, so a
run's deltas order after its step's start and before its end, and `Last-Event-ID` can resume
inside a step. The stream expires `DELTA_TTL_S` after the run's attempt ends (and, while a run
goes on, that long after its latest entry). Deltas are best effort: a Redis error drops them
(the step's output, in Postgres, has the whole answer).
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


def deltas_key(run_id: uuid.UUID | str) -> str:
    return f"agentsched:run:{run_id}:deltas"


def deltas_channel(run_id: uuid.UUID | str) -> str:
    return f"agentsched:run-deltas:{run_id}"


@dataclass
class _Buffer:
    start_seq: int
    index: int
    pieces: list[str] = field(default_factory=list)
    entries: int = 0
    flushed_at: float = 0.0


class DeltaPublisher:
    """Buffers each thread's pieces per run and writes them to Redis; see the module docstring."""

    def __init__(self, redis_client: Redis, *, flush_s: float = DELTA_FLUSH_S) -> None:
        self.redis = redis_client
        self.flush_s = flush_s
        self._local = threading.local()

    def _buffers(self) -> dict[uuid.UUID, _Buffer]:
        buffers: dict[uuid.UUID, _Buffer] | None = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        return buffers

    def publish(self, run_id: uuid.UUID, start_seq: int | None, call: ModelCall, piece: str) -> None:
        """One piece of step `call`'s answer, which started as event `start_seq`."""
        if start_seq is None or not piece:
            return
        buffers = self._buffers()
        buffer = buffers.get(run_id)
        if buffer is None or buffer.start_seq != start_seq:
            if buffer is not None:
                self._write(run_id, buffer)
            buffer = buffers[run_id] = _Buffer(start_seq, call.index, flushed_at=time.monotonic())
        buffer.pieces.append(piece)
        if time.monotonic() - buffer.flushed_at >= self.flush_s:
            self._write(run_id, buffer)

    def flush(self, run_id: uuid.UUID) -> None:
        """Write what is buffered for the run (the step is ending)."""
        buffer = self._buffers().get(run_id)
        if buffer is not None:
            self._write(run_id, buffer)

    def end_attempt(self, run_id: uuid.UUID) -> None:
        """The attempt ended: flush, forget, and let the stream expire `DELTA_TTL_S` from now."""
        buffer = self._buffers().pop(run_id, None)
        if buffer is None:
            return
        self._write(run_id, buffer)
        try:
            self.redis.expire(deltas_key(run_id), DELTA_TTL_S)
        except RedisError:
            logger.debug("run %s: could not set its deltas' expiry", run_id, exc_info=True)

    def _write(self, run_id: uuid.UUID, buffer: _Buffer) -> None:
        buffer.flushed_at = time.monotonic()
        if not buffer.pieces:
            return
        text = "".join(buffer.pieces)
        buffer.pieces.clear()
        buffer.entries += 1
        entry_id = f"{buffer.start_seq}-{buffer.entries}"
        key = deltas_key(run_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(
            key,
            {"index": buffer.index, "text": text},
            id=entry_id,
            maxlen=DELTA_STREAM_MAXLEN,
            approximate=True,
        )
        pipe.expire(key, DELTA_TTL_S)
        pipe.publish(
            deltas_channel(run_id), json.dumps({"id": entry_id, "index": buffer.index, "text": text})
        )
        try:
            pipe.execute()
        except RedisError:
            logger.warning("run %s: could not publish a streamed piece; dropped", run_id, exc_info=True)
