"""The same-resource baselines of `inflight`: bare Dramatiq actors doing a streamed run's I/O, nothing else.

`dramatiq benchmarks.stream_actors --processes 2 --threads 256`, with `STREAM_BASELINE=threads` or
`asyncio`. The actors take the product's run messages (its actor names and queues), so
`benchmarks.inflight --worker-module benchmarks.stream_actors` measures them exactly as it measures
the product. Per message, with no SQLAlchemy, no agent runtime, no provider, no rate limits, no
leases: the run's 11 Postgres statements (`benchmarks.run_statements`: the product's own SQL and
values), its four chat completions streamed from the same model server (the same request shape;
each answer's SSE chunks parsed, its pieces collected), and the pieces written to the run's Redis
stream at most every 0.25 s of a call and at its end, as the product's delta flusher batches them,
with the stream's expiry set at the run's end. A pool of 16 Postgres connections per process,
what the product's workers hold in this benchmark.

* `threads`: each Dramatiq worker thread does its run itself: blocking `http.client` (one
  keep-alive connection a thread), psycopg's `ConnectionPool`, redis-py.
* `asyncio`: Dramatiq's `AsyncIO` middleware with an `async def` actor: the worker thread waits
  while the run executes on the process's event loop, with aiohttp, psycopg's
  `AsyncConnectionPool` and `redis.asyncio` (the candidate the issue names for what threads can't
  reach).

Neither is a product: they show what these resources give on this machine, so that the product's
figure reads as a ratio.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.parse
import uuid
from datetime import UTC, datetime
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from app.models.enums import Priority
from app.services.dispatch import actor_name, queue_name
from app.services.run_deltas import DELTA_STREAM_MAXLEN, DELTA_TTL_S, deltas_key
from benchmarks.run_statements import (
    CALLS,
    CLAIM,
    CLAIMED_ATTEMPT,
    CLAIMED_RESERVED,
    END,
    ENDED_RUN_USER,
    FINISH,
    START,
    claim_params,
    end_params,
    finish_params,
    start_params,
)

MODE = os.environ.get("STREAM_BASELINE", "threads")
POOL_CONNECTIONS = 16
#: Both pools: a fixed 16 autocommit connections, opened by the first run.
POOL_OPTIONS: dict[str, Any] = {
    "min_size": POOL_CONNECTIONS,
    "max_size": POOL_CONNECTIONS,
    "kwargs": {"autocommit": True},
    "open": False,
}
FLUSH_S = 0.25
MODEL = "bench-model"

broker = RedisBroker(url=os.environ["REDIS_URL"])  # type: ignore[no-untyped-call]
if MODE == "asyncio":
    from dramatiq.middleware.asyncio import AsyncIO

    broker.add_middleware(AsyncIO())
elif MODE != "threads":
    raise SystemExit(f"STREAM_BASELINE must be threads or asyncio, not {MODE!r}")
dramatiq.set_broker(broker)

_BASE = urllib.parse.urlsplit(os.environ["LLM_BASE_URL"].rstrip("/") + "/chat/completions")
_DATABASE = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")


def _request(question: str) -> bytes:
    return json.dumps(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are a careful agent. Goal: benchmark run."},
                {"role": "user", "content": question},
            ],
            "max_tokens": 1_000,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


def _content(line: bytes) -> str:
    """The piece of text an SSE `data:` line carries ('' for none, the usage chunk, [DONE])."""
    if not line.startswith(b"data:"):
        return ""
    data = line[5:].strip()
    if data == b"[DONE]":
        return ""
    choices = json.loads(data).get("choices") or []
    return "".join((c.get("delta") or {}).get("content") or "" for c in choices)


#: XADD's bound on a run's stream, as the product's.
BOUNDED: dict[str, Any] = {"maxlen": DELTA_STREAM_MAXLEN, "approximate": True}


def entry_fields(entry: dict[str, str]) -> dict[Any, Any]:
    return {"text": entry["text"]}


class _Pieces:
    """A call's pieces, cut into stream entries at most every FLUSH_S."""

    def __init__(self, start_seq: int) -> None:
        self.start_seq, self.entries = start_seq, 0
        self.pending: list[str] = []
        self.answer: list[str] = []
        self.flushed_at = time.monotonic()

    def add(self, piece: str) -> dict[str, str] | None:
        self.pending.append(piece)
        self.answer.append(piece)
        if time.monotonic() - self.flushed_at >= FLUSH_S:
            return self.take()
        return None

    def take(self) -> dict[str, str] | None:
        if not self.pending:
            return None
        self.entries += 1
        entry = {"id": f"{self.start_seq}-{self.entries}", "text": "".join(self.pending)}
        self.pending, self.flushed_at = [], time.monotonic()
        return entry


# --- threads ----------------------------------------------------------------------------------

if MODE == "threads":
    import redis
    from psycopg_pool import ConnectionPool

    _pool = ConnectionPool(_DATABASE, **POOL_OPTIONS)
    _pool_lock = threading.Lock()
    _redis = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(
            os.environ["REDIS_URL"], max_connections=POOL_CONNECTIONS, timeout=None
        )
    )
    _local = threading.local()

    def _pg() -> ConnectionPool:
        with _pool_lock:
            if _pool.closed:
                _pool.open(wait=True)
        return _pool

    def _execute(sql: str, params: dict[str, Any]) -> Any:
        with _pg().connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _http() -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(_local, "http", None)
        if conn is None:
            conn = _local.http = http.client.HTTPConnection(_BASE.hostname or "", _BASE.port, timeout=60)
        return conn

    def _write(key: str, entry: dict[str, str]) -> None:
        _redis.xadd(key, entry_fields(entry), id=entry["id"], **BOUNDED)

    def _call(key: str, question: str, start_seq: int) -> str:
        conn = _http()
        conn.request(
            "POST", _BASE.path, body=_request(question), headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        pieces = _Pieces(start_seq)
        while line := response.readline():
            piece = _content(line)
            if piece and (entry := pieces.add(piece)) is not None:
                _write(key, entry)
        if (entry := pieces.take()) is not None:
            _write(key, entry)
        return "".join(pieces.answer)

    def run_threads(run_id: str) -> None:
        run, now = uuid.UUID(run_id), datetime.now(UTC)
        claimed = _execute(CLAIM, claim_params(run, now))
        if not claimed:
            return
        attempt, reserved = claimed[0][CLAIMED_ATTEMPT], claimed[0][CLAIMED_RESERVED]
        key = deltas_key(run)
        for index, kind, title, question in CALLS:
            started = _execute(START, start_params(run, attempt, index, kind, title, datetime.now(UTC)))
            began = time.monotonic()
            answer = _call(key, question, int(started[0][0] or index))
            latency_ms = int(1000 * (time.monotonic() - began))
            _execute(END, end_params(run, attempt, index, answer, MODEL, latency_ms, datetime.now(UTC)))
        _execute(FINISH, finish_params(run, attempt, reserved, datetime.now(UTC)))
        _redis.expire(key, DELTA_TTL_S)
        _execute(ENDED_RUN_USER, {"run_id": run})

    for _priority in Priority:
        dramatiq.actor(  # type: ignore[call-overload]
            run_threads, actor_name=actor_name(_priority), queue_name=queue_name(_priority)
        )


# --- asyncio ----------------------------------------------------------------------------------

if MODE == "asyncio":
    import asyncio

    import aiohttp
    import redis.asyncio as aredis
    from psycopg_pool import AsyncConnectionPool

    class _Loop:
        """The event loop's own clients, made on it the first time a run needs them."""

        pool: AsyncConnectionPool[Any] | None = None
        session: aiohttp.ClientSession | None = None
        redis: aredis.Redis | None = None
        lock: asyncio.Lock | None = None

    async def _clients() -> tuple[AsyncConnectionPool[Any], aiohttp.ClientSession, aredis.Redis]:
        if _Loop.lock is None:
            _Loop.lock = asyncio.Lock()
        async with _Loop.lock:
            if _Loop.pool is None:
                pool = AsyncConnectionPool(_DATABASE, **POOL_OPTIONS)
                await pool.open(wait=True)
                _Loop.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1_000))
                _Loop.redis = aredis.Redis(
                    connection_pool=aredis.BlockingConnectionPool.from_url(
                        os.environ["REDIS_URL"], max_connections=POOL_CONNECTIONS, timeout=None
                    )
                )
                _Loop.pool = pool
        assert _Loop.session is not None
        assert _Loop.redis is not None
        return _Loop.pool, _Loop.session, _Loop.redis

    async def _aexecute(pool: AsyncConnectionPool[Any], sql: str, params: dict[str, Any]) -> Any:
        async with pool.connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()

    async def _acall(
        session: aiohttp.ClientSession, red: aredis.Redis, key: str, question: str, start_seq: int
    ) -> str:
        pieces = _Pieces(start_seq)
        url = f"{_BASE.scheme}://{_BASE.netloc}{_BASE.path}"
        async with session.post(
            url, data=_request(question), headers={"Content-Type": "application/json"}
        ) as reply:
            async for line in reply.content:
                piece = _content(line)
                if piece and (entry := pieces.add(piece)) is not None:
                    await red.xadd(key, entry_fields(entry), id=entry["id"], **BOUNDED)
        if (entry := pieces.take()) is not None:
            await red.xadd(key, entry_fields(entry), id=entry["id"], **BOUNDED)
        return "".join(pieces.answer)

    async def run_asyncio(run_id: str) -> None:
        pool, session, red = await _clients()
        run = uuid.UUID(run_id)
        claimed = await _aexecute(pool, CLAIM, claim_params(run, datetime.now(UTC)))
        if not claimed:
            return
        attempt, reserved = claimed[0][CLAIMED_ATTEMPT], claimed[0][CLAIMED_RESERVED]
        key = deltas_key(run)
        for index, kind, title, question in CALLS:
            started = await _aexecute(
                pool, START, start_params(run, attempt, index, kind, title, datetime.now(UTC))
            )
            began = time.monotonic()
            answer = await _acall(session, red, key, question, int(started[0][0] or index))
            latency_ms = int(1000 * (time.monotonic() - began))
            await _aexecute(
                pool, END, end_params(run, attempt, index, answer, MODEL, latency_ms, datetime.now(UTC))
            )
        await _aexecute(pool, FINISH, finish_params(run, attempt, reserved, datetime.now(UTC)))
        await red.expire(key, DELTA_TTL_S)
        await _aexecute(pool, ENDED_RUN_USER, {"run_id": run})

    for _priority in Priority:
        dramatiq.actor(  # type: ignore[call-overload]
            run_asyncio, actor_name=actor_name(_priority), queue_name=queue_name(_priority)
        )
