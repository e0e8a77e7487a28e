"""One asyncio event loop per process, in a daemon thread, for the I/O many threads wait on.

A worker process runs hundreds of runs on as many threads, each mostly waiting for a streamed
model answer. When each thread reads its own socket, every chunk of every answer wakes a thread
and hands it the GIL (~13 a call); with 256 threads the handoffs cost more CPU than the runs,
and connections to Postgres stay held while their threads wait for the GIL. Here the reads
happen on one loop instead: a calling thread submits a coroutine and sleeps until its result
(one wake-up per call). The loop starts on first use and again in a forked child (the parent's
loop thread does not survive a fork).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

LOOP_THREAD_NAME = "agentsched-io-loop"

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None


def io_loop() -> asyncio.AbstractEventLoop:
    """This process's I/O loop, started when first asked for."""
    global _loop, _pid
    loop = _loop
    if loop is not None and _pid == os.getpid():
        return loop
    with _lock:
        if _loop is None or _pid != os.getpid():
            _loop = asyncio.new_event_loop()
            _pid = os.getpid()
            started = threading.Event()
            thread = threading.Thread(
                target=_serve, args=(_loop, started), name=LOOP_THREAD_NAME, daemon=True
            )
            thread.start()
            started.wait()
        return _loop


def _serve(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    loop.run_forever()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run the coroutine on the I/O loop and wait for its result in this thread.

    The coroutine must bound its own time (every caller here runs under a deadline). A
    `KeyboardInterrupt` or other interruption of the waiting thread cancels it.
    """
    if threading.current_thread().name == LOOP_THREAD_NAME:
        coroutine.close()
        raise RuntimeError("io_loop.run called from the I/O loop itself (it would wait forever)")
    future = asyncio.run_coroutine_threadsafe(coroutine, io_loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise
