"""What the handlers share: settings, sessions, the run waiter and the API-key cache."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from litestar.connection import ASGIConnection
from sqlalchemy.orm import Session, sessionmaker

from app.clock import SYSTEM_CLOCK, Clock
from app.errors import RunNotSent
from app.services.dispatch import Dispatch
from app.services.run_events import RunWaiter
from app.services.run_feed import RunFeed
from app.settings import Settings

#: (run id, message id) of each run message that reached Redis.
Sent = list[tuple[uuid.UUID, str]]

#: How long a verified API key is trusted without asking Postgres again (seconds).
API_KEY_CACHE_TTL_S = 10.0


@dataclass
class ApiKeyCache:
    """Verified key hashes, so a busy client costs one lookup per TTL, not one per request.

    An entry lives `ttl_s` at most, so a key revoked through another API process stops working
    here within that time; the process that revokes a key forgets it at once.
    """

    ttl_s: float = API_KEY_CACHE_TTL_S
    #: key hash -> (user id, key id, monotonic expiry)
    _entries: dict[str, tuple[uuid.UUID, uuid.UUID, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key_hash: str) -> uuid.UUID | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[2] <= time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, user_id: uuid.UUID, key_id: uuid.UUID, checked_at: float) -> None:
        """Trust the key until `ttl_s` after `checked_at` (`time.monotonic()` before the lookup
        began), so a revocation committed while the lookup ran is also seen within `ttl_s`."""
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key_hash] = (user_id, key_id, checked_at + self.ttl_s)

    def forget(self, key_id: uuid.UUID) -> None:
        with self._lock:
            for key_hash in [h for h, entry in self._entries.items() if entry[1] == key_id]:
                del self._entries[key_hash]


@dataclass
class ApiState:
    settings: Settings
    session_factory: sessionmaker[Session]
    #: Sessions whose every statement commits on its own (for single-statement units of work).
    autocommit_sessions: sessionmaker[Session]
    waiter: RunWaiter
    #: Send run messages, then record on each run that its message was sent; returns the
    #: (run id, message id) of each message that reached Redis.
    send: Callable[[Sequence[Dispatch]], Sent]
    #: Send run messages whose rows already record their message ids (returns as `send`).
    send_recorded: Callable[[Sequence[Dispatch]], Sent]
    clock: Clock = SYSTEM_CLOCK
    keys: ApiKeyCache = field(default_factory=ApiKeyCache)
    #: Live run events, fanned out from the waiter's listener and one Redis subscription.
    feed: RunFeed = field(default=None)  # type: ignore[assignment]


def state_of(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiState:
    """The process's `ApiState` (`create_app` keeps it as `app.state.api`)."""
    state: ApiState = connection.app.state.api
    return state


def ensure_sent(dispatches: Sequence[Dispatch], sent: Sent, task_id: uuid.UUID, status: str) -> None:
    """`RunNotSent` (a 503) unless every run message reached Redis: CONTRACT "When a dependency
    is down" answers 503 while Redis is unreachable, though the run itself is saved. (A run held
    by its user's concurrency limit has no message yet: nothing to check.)"""
    sent_runs = {run_id for run_id, _ in sent}
    for dispatch in dispatches:
        if dispatch.run_id not in sent_runs:
            raise RunNotSent(task_id, dispatch.run_id, status)
