"""Per-user concurrency: at most `users.max_concurrent_runs` of a user's runs are `running`.

How it holds across every worker process without a thread or a connection waiting:

* `users.running_runs` counts the user's running runs. Triggers on `task_runs` keep it (every
  change into or out of `running`, from any statement; migration 0006), so no path can forget
  to give a slot back.
* The claim (`app.services.runs._CLAIM`) locks the user's row and admits a queued run only while
  `running_runs < max_concurrent_runs` (`ADMISSION_CTES`). The lock makes that test and the
  increment one step for all claimers of that user. A run over the limit is *parked* instead:
  it stays `queued`, its attempt count is unchanged, its message is acked, and it waits as a row
  (`parked_at` set, no message) — no worker thread, no connection, and no place in Redis ahead
  of other users' runs (fair share: a user's backlog drains into Postgres at the speed of
  one cheap statement per message, then stops taking turns on the queue).
* When a run of the user leaves `running` (finished, retried, handed back), its worker then
  calls `release_after` (a second statement, so it sees every park committed before it got the
  user's row): it takes the user's parked runs in priority then FIFO order, as many as there
  are free slots, and their messages are sent. A released run that finds its slot taken again
  (another of the user's runs got there first) is parked again; nothing is lost.
* Safety net: `release_stranded` (the reconciler's round) releases parked runs of users with
  free slots, for whatever no worker released (a raised limit, a worker that died in between).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db import engine_of, execute_one
from app.errors import InvalidInput
from app.models.enums import PLAN_CONCURRENCY, Plan
from app.services.dispatch import Dispatch

logger = logging.getLogger(__name__)

#: A parked run of a user with a free slot this long is released by the reconciler (an ending
#: run releases the next one within milliseconds; this is for what nothing released).
STRANDED_AFTER = timedelta(seconds=5)

#: Inserted into the claim after its `candidate` CTE (the run, locked, if it could be taken):
#: `target` is the candidate when its user has a free slot (a lease-expired running run already
#: holds one); otherwise `parked` parks it. Expects `:now`.
ADMISSION_CTES = """
    slot AS (
        SELECT u.id, (c.status = 'running' OR u.running_runs < u.max_concurrent_runs) AS free
          FROM users AS u JOIN candidate AS c ON u.id = c.user_id
           FOR UPDATE OF u
    ), target AS (
        SELECT c.* FROM candidate AS c, slot WHERE slot.free
    ), parked AS (
        UPDATE task_runs AS r
           SET parked_at = :now, message_id = NULL, message_sent_at = NULL
          FROM candidate AS c, slot
         WHERE r.id = c.id AND c.status = 'queued' AND NOT slot.free
        RETURNING r.id
    )"""

_RANKS = "ARRAY['urgent', 'high', 'medium', 'low']::text[]"


def _ready_count(at_least_as_urgent_as: str | None = None) -> str:
    """SQL: runs of user `u` with a message out that may start now (queued, not parked, not
    waiting out a retry's backoff), counted up to a cap; with a priority (a SQL expression),
    only those at least that urgent."""
    rank = ""
    if at_least_as_urgent_as is not None:
        rank = (
            f"AND array_position({_RANKS}, q.priority::text)"
            f" <= array_position({_RANKS}, CAST({at_least_as_urgent_as} AS text))"
        )
    return f"""(SELECT count(*) FROM (SELECT 1 FROM task_runs AS q
                    WHERE q.user_id = u.id AND q.status = 'queued' AND q.parked_at IS NULL
                      AND (q.not_before IS NULL OR q.not_before <= :now) {rank}
                    LIMIT 1000) AS ready)"""


_READY_COUNT = _ready_count()
#: A new run of priority `:priority` may not go ahead of the runs on their way that are at
#: least as urgent; less urgent ones don't hold it back (Redis' priority queues put it first).
_READY_AHEAD = _ready_count(":priority")

#: CTEs for a statement creating a run of `:user_id`: whether the user's slots are all taken,
#: by running runs and by runs already on their way (so a user's burst goes to Redis only as
#: far as their limit reaches, and the rest waits here: fair share). The unlocked look is enough
#: to go ahead (the claim admits or parks the run anyway); to park the run at once, the user's
#: row is locked and looked at again, so that every ending run's release (which needs that row)
#: comes after this run is visible as parked.
FULL_AT_CREATION = f"""
    full_hint AS (
        SELECT u.running_runs + {_READY_AHEAD} >= u.max_concurrent_runs AS is_full
          FROM users AS u WHERE u.id = :user_id
    ), user_full AS (
        SELECT u.running_runs + {_READY_AHEAD} >= u.max_concurrent_runs AS is_full
          FROM users AS u
         WHERE u.id = :user_id AND (SELECT is_full FROM full_hint)
           FOR UPDATE
    )"""
#: The expression (after FULL_AT_CREATION) that says the new run is to be parked.
USER_FULL = "COALESCE((SELECT is_full FROM user_full), false)"

_PRIORITY_ORDER = f"array_position({_RANKS}, r.priority::text)"

# Release up to the user's free slots' worth of parked runs, best priority first, then oldest.
_RELEASE = text(
    f"""
    WITH slot AS (
        SELECT u.id, GREATEST(u.max_concurrent_runs - u.running_runs - {_READY_COUNT}, 0) AS free
          FROM users AS u WHERE u.id = :user_id
           FOR UPDATE
    ), next AS (
        SELECT r.id FROM task_runs AS r
         WHERE r.user_id = :user_id AND r.status = 'queued' AND r.parked_at IS NOT NULL
           AND NOT r.cancel_requested
         ORDER BY {_PRIORITY_ORDER}, r.queued_at, r.id
         LIMIT (SELECT free FROM slot)
           FOR UPDATE OF r SKIP LOCKED
    )
    UPDATE task_runs AS r
       SET parked_at = NULL, message_id = NULL, message_sent_at = NULL
      FROM next WHERE r.id = next.id
    RETURNING r.id, r.priority, r.not_before
    """
)

# The user of a run that is not running any more and was not just parked: the one whose end
# may have freed a slot.
_ENDED_RUN_USER = text(
    """
    SELECT r.user_id FROM task_runs AS r
     WHERE r.id = :run_id AND r.status <> 'running' AND r.parked_at IS NULL
       AND EXISTS (SELECT 1 FROM task_runs AS w
                    WHERE w.user_id = r.user_id AND w.status = 'queued' AND w.parked_at IS NOT NULL)
    """
)

_STRANDED_USERS = text(
    f"""
    SELECT DISTINCT w.user_id FROM task_runs AS w JOIN users AS u ON u.id = w.user_id
     WHERE w.status = 'queued' AND w.parked_at IS NOT NULL AND w.parked_at <= :cutoff
       AND u.running_runs + {_READY_COUNT} < u.max_concurrent_runs
    """
)

_COUNTS = text(
    """
    SELECT count(*) FILTER (WHERE parked_at IS NOT NULL) FROM task_runs WHERE status = 'queued'
    """
)


def plan_concurrency(plan: str) -> int:
    return PLAN_CONCURRENCY[Plan(plan)]


def _dispatches(session: Session, user_id: uuid.UUID, now: datetime) -> list[Dispatch]:
    rows: Sequence[tuple[uuid.UUID, str, datetime | None]] = session.execute(
        _RELEASE, {"user_id": user_id, "now": now}
    ).all()
    dispatches = []
    for run_id, priority, not_before in rows:
        delay_ms = 0
        if not_before is not None and not_before > now:
            delay_ms = int((not_before - now).total_seconds() * 1000)
        dispatches.append(Dispatch(run_id, priority, delay_ms))
    return dispatches


def release_waiting(session: Session, user_id: uuid.UUID, now: datetime) -> list[Dispatch]:
    """Unpark as many of the user's waiting runs as they have free slots; their messages to send."""
    return _dispatches(session, user_id, now)


def release_after(session: Session, run_id: uuid.UUID, now: datetime) -> list[Dispatch]:
    """After a delivery of `run_id`: if the run left `running`, release its user's next runs."""
    user_id = session.scalar(_ENDED_RUN_USER, {"run_id": run_id})
    if user_id is None:
        return []
    return _dispatches(session, user_id, now)


def release_after_delivery(
    session_factory: sessionmaker[Session], run_id: uuid.UUID, now: datetime
) -> list[Dispatch]:
    """`release_after` in its own (autocommit) unit of work; on a database error, nothing (the
    reconciler's `release_stranded` catches up)."""
    try:
        ended = execute_one(engine_of(session_factory), _ENDED_RUN_USER, {"run_id": run_id})
        if ended is None:  # the common case: one short statement, no session
            return []
        with session_factory.begin() as session:
            return _dispatches(session, ended[0], now)
    except SQLAlchemyError:
        logger.warning(
            "run %s: could not release its user's waiting runs; the reconciler will", run_id, exc_info=True
        )
        return []


def release_stranded(session: Session, now: datetime) -> list[Dispatch]:
    """Release parked runs (parked a while ago) of every user who has a free slot."""
    dispatches: list[Dispatch] = []
    cutoff = now - STRANDED_AFTER
    for user_id in session.scalars(_STRANDED_USERS, {"cutoff": cutoff, "now": now}).all():
        dispatches.extend(_dispatches(session, user_id, now))
    return dispatches


def set_limit(session: Session, user_id: uuid.UUID, limit: int) -> None:
    """Change the user's limit. A lower one lets running runs finish; a higher one lets waiting
    runs start when the reconciler next releases them (`release_stranded`)."""
    if limit < 0:
        raise InvalidInput({"concurrency": "must be 0 or more"})
    session.execute(
        text("UPDATE users SET max_concurrent_runs = :limit WHERE id = :user_id"),
        {"limit": limit, "user_id": user_id},
    )


def waiting_for_slot(session: Session) -> int:
    """Runs parked until one of their user's runs ends."""
    return int(session.scalar(_COUNTS) or 0)
