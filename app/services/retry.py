"""Retry backoff: exponential, capped, with jitter so retries of many runs spread out."""

from __future__ import annotations

import random


def backoff_ms(attempt: int, *, min_ms: int, max_ms: int, rng: random.Random | None = None) -> int:
    """Delay before the attempt that follows failed attempt number `attempt` (1-based).

    The ceiling doubles each attempt from `min_ms` up to `max_ms`; the delay is drawn from the
    upper half of it ("equal jitter"), so delays grow attempt over attempt and never exceed the cap.
    """
    ceiling = min(max_ms, min_ms * 2 ** min(max(attempt - 1, 0), 32))
    draw = (rng or random).random()
    return int(ceiling / 2 + draw * ceiling / 2)
