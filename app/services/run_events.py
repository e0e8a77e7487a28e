"""Waiting for a run to finish without polling Postgres: LISTEN on the run-finished channel.

One listening connection per API process; each waiter registers a future for its run id,
re-reads the run once after registering (so a finish just before registration is not missed)
and then sleeps until the notification or its deadline. Should the listening connection drop,
every waiter is woken to re-read, and the listener reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import psycopg
from sqlalchemy.engine import make_url

from app.services.runs import RUN_EVENTS_CHANNEL, RUN_FINISHED_CHANNEL

logger = logging.getLogger(__name__)

#: What listeners are told after the connection was re-established: notifications may be lost.
MISSED = "*"
#: Re-read the run at least this often even without a notification (a safety net, not a poll loop).
SAFETY_RECHECK_S = 5.0


def libpq_conninfo(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class RunWaiter:
    def __init__(self, database_url: str) -> None:
        self._conninfo = libpq_conninfo(database_url)
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[str, str], None]] = []

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="run-finished-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._wake_all()

    async def wait(self, run_id: str, timeout_s: float, is_finished: Callable[[], Awaitable[bool]]) -> bool:
        """True once the run has finished; False when `timeout_s` passes first."""
        deadline = time.monotonic() + timeout_s
        loop = asyncio.get_running_loop()
        while True:
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(run_id, set()).add(future)
            try:
                if await is_finished():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, timeout=min(remaining, SAFETY_RECHECK_S))
            finally:
                waiters = self._waiters.get(run_id)
                if waiters is not None:
                    waiters.discard(future)
                    if not waiters:
                        del self._waiters[run_id]

    def add_listener(self, callback: Callable[[str, str], None]) -> None:
        """Also hand `callback` every notification (channel, payload) of the run-finished and
        run-events channels, from this one connection; (`MISSED`, `MISSED`) after a reconnect.
        Call before `start`."""
        self._listeners.append(callback)

    def _tell_listeners(self, channel: str, payload: str) -> None:
        for callback in self._listeners:
            try:
                callback(channel, payload)
            except Exception:
                logger.exception("a run-notification listener failed")

    def _wake(self, run_id: str) -> None:
        for future in self._waiters.pop(run_id, ()):
            if not future.done():
                future.set_result(None)

    def _wake_all(self) -> None:
        for run_id in list(self._waiters):
            self._wake(run_id)

    async def _listen_forever(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {RUN_FINISHED_CHANNEL}")
                    if self._listeners:
                        await conn.execute(f"LISTEN {RUN_EVENTS_CHANNEL}")
                    self._wake_all()  # anything finished while we were not listening
                    self._tell_listeners(MISSED, MISSED)
                    async for notification in conn.notifies():
                        if notification.channel == RUN_FINISHED_CHANNEL:
                            self._wake(notification.payload)
                        self._tell_listeners(notification.channel, notification.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Postgres going away is expected (one line); anything else keeps its traceback.
                lost = isinstance(exc, psycopg.OperationalError | OSError)
                logger.warning(
                    "run-finished listener lost its connection (%s); reconnecting",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    exc_info=not lost,
                )
                self._wake_all()
                await asyncio.sleep(1.0)
