"""Hard deadlines for model calls made on the process's I/O loop (app.io_loop).

`timeout_s` of a model call is a deadline for the whole call, whatever the server does: a
server that trickles bytes, even in its headers, cannot hold a call past it. A call runs inside
`cut_at(deadline)`, an `asyncio.timeout_at` on the loop (the loop's clock is `time.monotonic`),
so every connect, write and read of the call ends by then. When the worker starts stopping,
`set_stop_deadline` moves every call's cut to the stop's grace, in-flight calls included
(app.services.leases.LeaseKeeper.begin_stop).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app import io_loop

#: When the worker is stopping: every call of the process ends by then (monotonic).
_stop_deadline: float | None = None
#: The cuts of the calls in flight on the I/O loop (touched on the loop only).
_cuts: set[asyncio.Timeout] = set()


def set_stop_deadline(deadline: float | None) -> None:
    """Cut every call of this process at `deadline` (monotonic), in flight or not; None lifts it."""
    global _stop_deadline
    _stop_deadline = deadline
    if deadline is not None and _cuts:
        io_loop.io_loop().call_soon_threadsafe(_move_cuts, deadline)


def _move_cuts(deadline: float) -> None:
    for cut in _cuts:
        when = cut.when()
        if when is None or when > deadline:
            cut.reschedule(deadline)


@asynccontextmanager
async def cut_at(deadline: float) -> AsyncIterator[None]:
    """The block ends by `deadline` (or the stop deadline, if sooner) with `TimeoutError`."""
    if _stop_deadline is not None:
        deadline = min(deadline, _stop_deadline)
    async with asyncio.timeout_at(deadline) as cut:
        _cuts.add(cut)
        try:
            yield
        finally:
            _cuts.discard(cut)
