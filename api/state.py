"""What the handlers share: settings, sessions, the run waiter and the API-key cache."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from litestar.connection import ASGIConnection
from sqlalchemy.orm import Session, sessionmaker

from app.clock import SYSTEM_CLOCK, Clock
from app.errors import RunNotSent, RunsNotSent
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


def unsent_runs(dispatches: Sequence[Dispatch], sent: Sent) -> list[uuid.UUID]:
    """The runs of `dispatches` whose message did not reach Redis, `sent` being what the sender
    answered for them. (A run held by its user's concurrency limit has no message yet: it is
    not among `dispatches`.)"""
    if len(sent) == len(dispatches):  # a sender answers only runs it was given, each once
        return []
    sent_runs = {run_id for run_id, _ in sent}
    return [dispatch.run_id for dispatch in dispatches if dispatch.run_id not in sent_runs]


def ensure_sent(dispatches: Sequence[Dispatch], sent: Sent, task_id: uuid.UUID, status: str) -> None:
    """`RunNotSent` (a 503) unless every run message reached Redis: CONTRACT "When a dependency
    is down" answers 503 while Redis is unreachable, though the run itself is saved."""
    unsent = unsent_runs(dispatches, sent)
    if unsent:
        raise RunNotSent(task_id, unsent[0], status)


def ensure_all_sent(batches: Iterable[tuple[Sequence[Dispatch], Sent]], *, repeat: str) -> None:
    """`RunsNotSent` (a 503, as `ensure_sent`) unless every message of runs of many tasks (a bulk
    action, a scheduling pass) reached Redis; `batches` pairs what was given to the sender with
    what it answered. `repeat` says what the same request again would do."""
    unsent = [run_id for dispatches, sent in batches for run_id in unsent_runs(dispatches, sent)]
    if unsent:
        raise RunsNotSent(
            unsent,
            f"Redis is unavailable: {len(unsent)} run(s) are saved and queued, and start once "
            f"Redis is back; {repeat}",
        )


class SendLog:
    """A `send` that keeps each batch it was given with what it answered, for `ensure_all_sent`
    once a service that sends batch by batch (the scheduling pass, which sends on a helper
    thread while it claims the next batch, and ignores the answers) has returned."""

    def __init__(self, send: Callable[[Sequence[Dispatch]], Sent]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self.batches: list[tuple[Sequence[Dispatch], Sent]] = []

    def __call__(self, dispatches: Sequence[Dispatch]) -> Sent:
        sent = self._send(dispatches)
        with self._lock:
            self.batches.append((dispatches, sent))
        return sent
