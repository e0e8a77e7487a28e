"""Live events of runs, fanned out in each API process from one Postgres listener and one Redis
subscription, however many clients watch.

`RunFeed` is the hub: the process's `RunWaiter` connection (LISTEN) hands it every run-events
and run-finished notification, and it holds one Redis pub/sub connection, subscribed to the
delta channel of each run that has at least one watcher (unsubscribed when the last leaves).
Each watcher is a `Watch`: a queue of wake-ups. `app.services.run_stream` turns a watch into the
run's ordered events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.services.run_deltas import deltas_channel
from app.services.run_events import MISSED

logger = logging.getLogger(__name__)

_CHANNEL_PREFIX = deltas_channel("")
#: A subscription kept so the pub/sub connection exists before any watcher comes.
_IDLE_CHANNEL = deltas_channel("-")
#: How long stopping may wait for the subscriber task and each connection to close (seconds).
STOP_WAIT_S = 3.0
#: Wake-ups a slow watcher may have pending; beyond it, they collapse into one re-read.
WATCH_QUEUE_MAX = 256


@dataclass(frozen=True, slots=True)
class Poke:
    """Postgres says the run changed (or notifications may have been missed): read it again."""


@dataclass(frozen=True, slots=True)
class Delta:
    id: str
    index: int
    text: str


@dataclass(eq=False)
class Watch:
    run_id: str
    queue: asyncio.Queue[Poke | Delta] = field(default_factory=lambda: asyncio.Queue(WATCH_QUEUE_MAX))

    def put(self, item: Poke | Delta) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:  # it reads Postgres and Redis again, which covers everything
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    self.queue.get_nowait()
            self.queue.put_nowait(Poke())


class RunFeed:
    """One per API process; see the module docstring."""

    def __init__(self, redis_url: str) -> None:
        self.redis: Redis = Redis.from_url(redis_url)
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self._watches: dict[str, set[Watch]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def watching(self) -> int:
        """Watchers in this process (for tests and metrics)."""
        return sum(len(watches) for watches in self._watches.values())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._pump_deltas(), name="run-deltas-subscriber")

    async def stop(self) -> None:
        """Stop within a few seconds, whatever the Redis connection is doing."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=STOP_WAIT_S)
        for close in (self._pubsub.aclose, self.redis.aclose):
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(close(), timeout=STOP_WAIT_S)

    def on_notification(self, channel: str, payload: str) -> None:
        """From the process's Postgres listener (same event loop)."""
        if payload == MISSED:
            for watches in self._watches.values():
                for watch in watches:
                    watch.put(Poke())
            return
        for watch in self._watches.get(payload, ()):
            watch.put(Poke())

    @contextlib.asynccontextmanager
    async def watch(self, run_id: uuid.UUID) -> AsyncIterator[Watch]:
        key = str(run_id)
        watch = Watch(key)
        first = key not in self._watches
        self._watches.setdefault(key, set()).add(watch)
        try:
            if first:
                await self._subscribe(deltas_channel(key))
            yield watch
        finally:
            watches = self._watches.get(key)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[key]
                    await self._unsubscribe(deltas_channel(key))

    async def _subscribe(self, channel: str) -> None:
        try:
            await self._pubsub.subscribe(channel)
        except (RedisError, OSError):
            logger.warning("could not subscribe to %s; live deltas come with the next re-read", channel)

    async def _unsubscribe(self, channel: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.unsubscribe(channel)

    async def _pump_deltas(self) -> None:
        while True:
            try:
                await self._pubsub.subscribe(_IDLE_CHANNEL, *(deltas_channel(r) for r in self._watches))
                while True:
                    message = await self._pubsub.get_message(timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        self._deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:  # a cancellation the Redis client turned into an error
                    return
                # Redis going away is expected (one line); anything else keeps its traceback.
                lost = isinstance(exc, RedisError | OSError)
                logger.warning("run-deltas subscription lost (%s); reconnecting", exc, exc_info=not lost)
                self.on_notification("", MISSED)
                await asyncio.sleep(1.0)

    def _deliver(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        watches = self._watches.get(channel.removeprefix(_CHANNEL_PREFIX))
        if not watches:
            return
        try:
            data = json.loads(message["data"])
            delta = Delta(str(data["id"]), int(data["index"]), str(data["text"]))
        except (ValueError, KeyError, TypeError):
            return
        for watch in watches:
            watch.put(delta)
