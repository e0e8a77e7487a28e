"""The reconciler: Postgres is the truth, Redis only carries ids; make Redis agree again.

(a) A queued run whose message was never sent (the process died between commit and send, or
    Redis was down) or was lost (Redis restarted without persistence, or was flushed) is sent
    again once it has waited `grace_ms`. A message is lost when its id is in neither the
    queue's `.msgs` hash nor its delay queue's. A retry's backoff is kept: the new message is
    delayed until the run's `not_before`.
(b) A run still `running` after its lease expired belonged to a worker that died (leases are
    renewed by a heartbeat, so this is `RUN_LEASE_S` after the death, not the run's deadline);
    it gets a new message, and the worker that takes it claims it again (counting an attempt;
    with none left the claim fails it as `worker_lost`) and resumes it from its recorded steps.
(d) First of all, the messages a dead worker had prefetched (held in its Dramatiq ack set, so
    they look present) go back on their queues (app.services.dead_workers).
(c) A run parked for a user slot whose user has a free slot again (a raised limit, a worker that
    died between a run's end and the release) is released and sent.

Sending again is always safe: a run is claimed by one atomic UPDATE, so a second message for
the same run finds nothing to claim. One reconciler works at a time (a Postgres advisory lock);
others return at once.

Known and harmless: a delayed message is moved by a worker from `<queue>.DQ` to `<queue>` under
a new Redis id when its eta passes; if no worker takes it within the grace (a backlog), it looks
lost and is sent once more.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from sqlalchemy import Row, text
from sqlalchemy.orm import Session, sessionmaker

from app.services.concurrency import release_stranded
from app.services.dead_workers import requeue_dead_workers_messages
from app.services.dispatch import Dispatch, queue_name
from app.services.run_rows import status_is
from app.services.stats import delayed_messages_key, messages_key

logger = logging.getLogger(__name__)

#: pg_try_advisory_xact_lock key held by the reconciler at work ("agentsched reconcile").
RECONCILE_LOCK_KEY = 0x61_67_73_63_72_65_63
#: Runs looked at, and checked in Redis, per round trip.
RECONCILE_BATCH = 2_000

# Candidates come off ix_task_runs_unfinished (status, queued_at), oldest first.
_QUEUED = text(
    """
    SELECT id, priority, message_id, not_before
      FROM task_runs
     WHERE status = 'queued' AND NOT cancel_requested AND parked_at IS NULL
       AND queued_at <= :cutoff
       AND (message_sent_at IS NULL OR message_sent_at <= :cutoff)
     ORDER BY queued_at
    """
)

# The claim takes a running run whose lease has expired; `lease_expires_at` already includes
# the lease grace. A running row without a lease (none is written so) gets one computed here.
_STUCK = text(
    """
    SELECT id, priority, message_id, message_sent_at,
           COALESCE(lease_expires_at,
                    started_at + (timeout_ms + :lease_grace_ms) * interval '1 millisecond') AS lease_end
      FROM task_runs
     WHERE status = 'running'
       AND COALESCE(lease_expires_at,
                    started_at + (timeout_ms + :lease_grace_ms) * interval '1 millisecond') < :now
    """
)

_MARK_RESENT_RUNNING = text(
    f"""
    UPDATE task_runs AS r
       SET message_sent_at = :now, message_id = s.message_id
      FROM unnest(CAST(:run_ids AS uuid[]), CAST(:message_ids AS text[])) AS s(run_id, message_id)
     WHERE r.id = s.run_id AND {status_is("running", "r")}
    """
)

Sender = Callable[[Sequence[Dispatch]], Sequence[tuple[uuid.UUID, str]]]


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    #: Queued runs past the grace whose message was looked for.
    checked: int = 0
    #: Queued runs whose message had never been sent.
    unsent: int = 0
    #: Queued runs whose message was gone from Redis.
    lost: int = 0
    #: Running runs past their lease (dead worker).
    stuck: int = 0
    #: Messages that reached Redis.
    sent: int = 0
    #: False when another reconciler held the lock and this one did nothing.
    ran: bool = True
    #: Messages that dead workers had prefetched, put back on their queues.
    requeued: int = 0

    def __add__(self, other: ReconcileResult) -> ReconcileResult:
        return ReconcileResult(
            self.checked + other.checked,
            self.unsent + other.unsent,
            self.lost + other.lost,
            self.stuck + other.stuck,
            self.sent + other.sent,
            self.ran and other.ran,
            self.requeued + other.requeued,
        )


def reconcile(
    session_factory: sessionmaker[Session],
    *,
    now: datetime,
    redis_client: Redis,
    send: Sender,
    grace_ms: int,
    lease_grace_ms: int,
    batch_size: int = RECONCILE_BATCH,
    dead_worker_ms: int | None = None,
) -> ReconcileResult:
    """Send again what Redis lost or never got, and what dead workers left running.

    With `dead_worker_ms`, the messages held by workers whose broker heartbeat is older than that
    go back on their queues first (app.services.dead_workers).
    """
    cutoff = now - timedelta(milliseconds=grace_ms)
    with session_factory() as session, session.begin():
        locked: bool = session.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": RECONCILE_LOCK_KEY}
        ).scalar_one()
        if not locked:
            logger.debug("another reconciler is at work; skipping this round")
            return ReconcileResult(ran=False)
        total = ReconcileResult()
        if dead_worker_ms is not None:
            total += _requeue_dead(redis_client, now, dead_worker_ms)
        queued = session.execute(_QUEUED.execution_options(yield_per=batch_size), {"cutoff": cutoff})
        for rows in queued.partitions():
            total += _resend_queued(rows, redis_client, send, now)
        stuck = session.execute(_STUCK, {"now": now, "lease_grace_ms": lease_grace_ms}).all()
        for start in range(0, len(stuck), batch_size):
            chunk = stuck[start : start + batch_size]
            total += _resend_stuck(session_factory, chunk, redis_client, send, now, cutoff)
    # Runs waiting for a user slot that no ending run released (app.services.concurrency).
    with session_factory.begin() as session:
        released = release_stranded(session, now)
    if released:
        logger.info("reconciler: %d run(s) waiting for a user slot released", len(released))
        total += ReconcileResult(sent=len(send(released)))
    if total.unsent or total.lost or total.stuck:
        logger.warning(
            "reconciler: %d queued run(s) never sent, %d lost from Redis, %d stuck past their "
            "lease; %d message(s) sent again",
            total.unsent,
            total.lost,
            total.stuck,
            total.sent,
        )
    return total


def _requeue_dead(redis_client: Redis, now: datetime, dead_worker_ms: int) -> ReconcileResult:
    dead = requeue_dead_workers_messages(
        redis_client, now_ms=int(now.timestamp() * 1000), timeout_ms=dead_worker_ms
    )
    if dead.workers:
        logger.warning(
            "reconciler: %d dead worker(s); %d message(s) they held put back on their queues",
            dead.workers,
            dead.requeued,
        )
    return ReconcileResult(requeued=dead.requeued)


def _missing(redis_client: Redis, rows: Sequence[tuple[str, str | None]]) -> list[bool]:
    """For each (priority, message id): True when Redis holds no such message (queued or delayed)."""
    pipe = redis_client.pipeline(transaction=False)
    for priority, message_id in rows:
        if message_id is not None:
            queue = queue_name(priority)
            pipe.hexists(messages_key(queue), message_id)
            pipe.hexists(delayed_messages_key(queue), message_id)
    replies = iter(pipe.execute())
    found: list[bool] = []
    for _, message_id in rows:
        found.append(message_id is None or not (next(replies) | next(replies)))
    return found


def _delay_ms(not_before: datetime | None, now: datetime) -> int:
    if not_before is None or not_before <= now:
        return 0
    return int((not_before - now) / timedelta(milliseconds=1))


def _resend_queued(
    rows: Sequence[Row[Any]], redis_client: Redis, send: Sender, now: datetime
) -> ReconcileResult:
    missing = _missing(redis_client, [(row.priority, row.message_id) for row in rows])
    dispatches: list[Dispatch] = []
    unsent = lost = 0
    for row, gone in zip(rows, missing, strict=True):
        if not gone:
            continue
        if row.message_id is None:
            unsent += 1
        else:
            lost += 1
        dispatches.append(Dispatch(row.id, row.priority, _delay_ms(row.not_before, now)))
    sent = send(dispatches) if dispatches else []
    return ReconcileResult(checked=len(rows), unsent=unsent, lost=lost, sent=len(sent))


def _resend_stuck(
    session_factory: sessionmaker[Session],
    rows: Sequence[Row[Any]],
    redis_client: Redis,
    send: Sender,
    now: datetime,
    cutoff: datetime,
) -> ReconcileResult:
    """A stuck run gets one new message; another only if that one is lost too."""
    missing = _missing(redis_client, [(row.priority, row.message_id) for row in rows])
    dispatches: list[Dispatch] = []
    for row, gone in zip(rows, missing, strict=True):
        run_id, priority, sent_at, lease_end = row.id, row.priority, row.message_sent_at, row.lease_end
        replaced = sent_at is not None and sent_at > lease_end
        if replaced and not (gone and sent_at <= cutoff):
            continue  # its new message is waiting in Redis for a worker
        logger.info("run %s: running past its lease (worker lost); sending it again", run_id)
        dispatches.append(Dispatch(run_id, priority))
    if not dispatches:
        return ReconcileResult()
    sent = send(dispatches)
    if sent:
        with session_factory.begin() as session:
            session.execute(
                _MARK_RESENT_RUNNING,
                {
                    "run_ids": [run_id for run_id, _ in sent],
                    "message_ids": [message_id for _, message_id in sent],
                    "now": now,
                },
            )
    return ReconcileResult(stuck=len(dispatches), sent=len(sent))
