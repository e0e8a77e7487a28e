"""Run leases held by heartbeat, and handing runs back when a worker stops.

A claim gives its run a lease of `RUN_LEASE_S`. Each worker process keeps one `LeaseKeeper`:
every `RUN_HEARTBEAT_S` a daemon thread renews the leases of all the runs the process executes
in ONE statement (fenced on each run's attempt). A worker that dies stops renewing, so its runs'
leases lapse within `RUN_LEASE_S` and the reconciler sends them again, whatever their timeouts.

A stopping worker calls `begin_stop(grace_s)`: no attempt starts another model call (it hands its
run back instead: `hand_back`, which releases the lease and queues the run at once without
using up an attempt), and model calls still in flight are cut at the grace.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.clock import Clock
from app.providers import call_deadline
from app.services.dispatch import Dispatch
from app.services.run_rows import status_is
from app.services.runs import RUN_EVENTS_CHANNEL

logger = logging.getLogger(__name__)

_RUNNING = status_is("running")

_RENEW = text(
    f"""
    UPDATE task_runs AS r
       SET lease_expires_at = :now + :lease_ms * interval '1 millisecond'
      FROM unnest(CAST(:run_ids AS uuid[]), CAST(:attempts AS integer[])) AS held(run_id, attempt)
     WHERE r.id = held.run_id AND r.attempts = held.attempt AND {status_is("running", "r")}
    """
)

# Back to the queue at once, lease released; the attempt is given back too (this worker made no
# decision about the run, so it must not use up one of its retries).
_HAND_BACK = text(
    f"""
    WITH handed AS (
        UPDATE task_runs
           SET status = 'queued', attempts = attempts - 1, lease_expires_at = NULL,
               not_before = NULL, message_sent_at = NULL, message_id = NULL,
               event_seq = event_seq + 1, status_seq = event_seq + 1
         WHERE id = :run_id AND {_RUNNING} AND attempts = :attempt
        RETURNING id, task_id, priority, watched_until > :now AS watched
    ), task_follows AS (
        UPDATE tasks SET status = 'queued', updated_at = :now
         WHERE id = (SELECT task_id FROM handed) AND cron IS NULL AND status = 'running'
    )
    SELECT priority, CASE WHEN watched THEN pg_notify(:channel, CAST(id AS text)) END FROM handed
    """
)


def hand_back(session: Session, run_id: uuid.UUID, attempt: int, now: datetime) -> Dispatch | None:
    """Queue the run again for another worker, now; None when the attempt had lost its claim."""
    row = session.execute(
        _HAND_BACK, {"run_id": run_id, "attempt": attempt, "now": now, "channel": RUN_EVENTS_CHANNEL}
    ).first()
    return None if row is None else Dispatch(run_id, row.priority)


class LeaseKeeper:
    """The leases of the runs this process executes; see the module docstring."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        clock: Clock,
        *,
        lease_s: float,
        heartbeat_s: float,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.clock = clock
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        #: Called on every heartbeat (the worker also tells the broker it is alive).
        self.on_beat = on_beat
        self.stopping = threading.Event()
        self._held: dict[uuid.UUID, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    @contextlib.contextmanager
    def holding(self, run_id: uuid.UUID, attempt: int) -> Iterator[None]:
        """Keep the run's lease renewed while the block runs."""
        with self._lock:
            self._held[run_id] = attempt
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat_forever, name="run-leases", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                if self._held.get(run_id) == attempt:
                    del self._held[run_id]

    def held(self) -> dict[uuid.UUID, int]:
        with self._lock:
            return dict(self._held)

    def renew(self) -> int:
        """Renew every held lease in one statement; the number renewed."""
        held = self.held()
        if not held:
            return 0
        with self.session_factory.begin() as session:
            result = session.execute(
                _RENEW,
                {
                    "run_ids": list(held),
                    "attempts": list(held.values()),
                    "now": self.clock.now(),
                    "lease_ms": int(self.lease_s * 1000),
                },
            )
        return int(getattr(result, "rowcount", 0) or 0)

    def begin_stop(self, grace_s: float) -> None:
        """No new model calls from now on; calls in flight are cut after `grace_s` seconds."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        call_deadline.set_stop_deadline(time.monotonic() + grace_s)
        logger.info(
            "stopping: %d run(s) in flight get %.0f s to finish their step", len(self.held()), grace_s
        )

    def close(self) -> None:
        self._closed.set()

    def _beat_forever(self) -> None:
        while not self._closed.wait(self.heartbeat_s):
            try:
                self.renew()
            except SQLAlchemyError:
                logger.warning("could not renew run leases; trying again next beat", exc_info=True)
            if self.on_beat is not None:
                try:
                    self.on_beat()
                except Exception:
                    logger.warning("worker heartbeat hook failed", exc_info=True)
