"""Redis refusing run messages, for the tests of what each surface answers then."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis


@contextlib.contextmanager
def redis_refusing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The broker's Redis refuses every enqueue while inside (the rest of the API still reaches it)."""
    from actors import broker

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("Redis is down")

    with monkeypatch.context() as patched:
        patched.setattr(broker.client, "pipeline", unreachable)
        patched.setattr(broker.client, "eval", unreachable)
        yield
