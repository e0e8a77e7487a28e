"""A worker process stops gracefully however it is asked.

`dramatiq actors` stops a worker process on its first SIGTERM and kills it (exit at once) on the
second. Stopping the whole process group (systemd's default, Ctrl-C in a terminal, `./run dev`
stopping) delivers two: one from the group signal, one forwarded by Dramatiq's main process. So
the worker process keeps the first and ignores the TERMs that follow within `REPEAT_WINDOW_S`;
a TERM after that still stops it at once, and SIGKILL always does.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)

#: TERMs this soon after the first are the same request, delivered twice.
REPEAT_WINDOW_S = 10.0


def stop_once_on_sigterm(on_stop: Callable[[], None] | None = None) -> None:
    """Wrap this process's SIGTERM handler (main thread only) as described above; `on_stop` is
    called at the first TERM (Dramatiq itself starts stopping up to a second later)."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return
    first_at: list[float] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        if first_at and time.monotonic() - first_at[0] < REPEAT_WINDOW_S:
            logger.info("already stopping (in-flight steps finish, the rest are handed back)")
            return
        first_at[:] = [time.monotonic()]
        if on_stop is not None:
            on_stop()
        previous(signum, frame)

    signal.signal(signal.SIGTERM, handle)
