"""A run's life in Postgres: created queued, claimed atomically, finished once.

The claim is one conditional UPDATE: a queued run whose backoff has passed, or a running run
whose lease has expired (its worker died). `attempts` is the fencing token: an attempt may
only finish the run while `attempts` still equals its own number, so a worker that comes back
from the dead after its run was claimed again cannot overwrite the newer attempt.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.db import engine_of, execute_one
from app.models import Task, TaskRun
from app.models.enums import RunStatus, Trigger
from app.services import concurrency, credits
from app.services.dispatch import Dispatch
from app.services.run_rows import status_is
from app.services.task_input import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_MS
from app.webhooks.outbox import insert_deliveries_sql, send_committed, stash_row

RUN_FINISHED_CHANNEL = "agentsched_run_finished"

#: Notified (payload: the run id) on every status change and step write of a run while it is
#: watched (`watched_until`); each takes the run's next `event_seq` (the order of its live
#: events, app.services.run_stream).
RUN_EVENTS_CHANNEL = "agentsched_run_events"


_RUNNING = status_is("running")


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    run_id: uuid.UUID
    task_id: uuid.UUID
    user_id: uuid.UUID
    priority: str
    attempt: int
    max_attempts: int
    timeout_ms: int
    #: Credits held for the run (reserved at its first claim).
    reserved: int
    #: Tokens spent by earlier attempts.
    tokens_before: int
    goal: str
    agent_type: str
    model: str | None
    one_off: bool
    #: Set when the task was cancelled while this run was running (its worker may have died since).
    cancel_requested: bool
    #: The slot a scheduled run was created for (None for api and manual runs).
    scheduled_for: datetime | None = None
    #: Steps completed by earlier attempts (0: nothing to resume from, no need to read them).
    steps_completed: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended. `error_code` None means completed."""

    tokens: int
    result: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool = False


def run_limits(agent_config: dict[str, Any] | None) -> tuple[int, int]:
    """(max attempts, timeout in ms) of a run of a task with this agentConfig."""
    config = agent_config or {}
    return 1 + int(config.get("maxRetries", DEFAULT_MAX_RETRIES)), int(
        config.get("timeout", DEFAULT_TIMEOUT_MS)
    )


def new_run(
    task: Task,
    *,
    trigger: Trigger,
    scheduled_for: datetime | None = None,
    status: RunStatus = RunStatus.QUEUED,
) -> TaskRun:
    """A run row for `task`, with its limits copied so later task edits don't change it."""
    max_attempts, timeout_ms = run_limits(task.agent_config)
    return TaskRun(
        id=uuid.uuid4(),
        task_id=task.id,
        user_id=task.user_id,
        trigger=trigger.value,
        scheduled_for=scheduled_for,
        status=status.value,
        priority=task.priority,
        attempts=0,
        max_attempts=max_attempts,
        timeout_ms=timeout_ms,
        cancel_requested=False,
        tokens_used=0,
        credits_used=0,
        credits_reserved=0,
    )


# The claim, in one statement (one round trip): lock the run if it is ours to take, admit it
# against its user's concurrency limit or park it (app.services.concurrency), hold its
# credits if this is its first attempt (min(:amount, what is left), when at least 1 is left;
# credits.hold_ctes), mark it running, and let a one-off task
# follow. A concurrent claim of the same run waits on the row lock, then finds it taken.
#: The user whose credits the claim holds: only on a run's first live attempt.
_FIRST_CLAIM_USER = """SELECT user_id FROM target
                        WHERE credits_reserved = 0 AND attempts < max_attempts
                          AND NOT cancel_requested"""
_CLAIM = text(
    f"""
    WITH locked_run AS (
        SELECT id, task_id, user_id, status, credits_reserved, attempts, max_attempts, cancel_requested
          FROM task_runs
         WHERE id = :run_id
           AND ((status = 'queued' AND NOT cancel_requested
                 AND (not_before IS NULL OR not_before <= :now))
                OR (status = 'running' AND lease_expires_at < :now))
           FOR UPDATE
    ), task_lock AS (
        -- A one-off task follows its run (task_follows): its row is locked here, before the
        -- user's (slot), in the order every run end takes (run -> task -> user); a claim that
        -- took the user first deadlocked with the finish of another run of the same task.
        SELECT t.id FROM tasks AS t
         WHERE t.id = (SELECT task_id FROM locked_run) AND t.cron IS NULL
           FOR NO KEY UPDATE
    ), candidate AS (
        SELECT * FROM locked_run WHERE (SELECT count(*) FROM task_lock) >= 0
    ), {concurrency.ADMISSION_CTES}, {credits.hold_ctes(_FIRST_CLAIM_USER)}, claimed AS (
        UPDATE task_runs AS r
           SET status = 'running',
               attempts = r.attempts + 1,
               started_at = COALESCE(r.started_at, :now),
               -- a lease, renewed by the worker's heartbeat (app.services.leases)
               lease_expires_at = :now + :lease_ms * interval '1 millisecond',
               not_before = NULL, parked_at = NULL,
               event_seq = r.event_seq + 1, status_seq = r.event_seq + 1,
               credits_reserved = COALESCE((SELECT amount FROM held), r.credits_reserved)
          FROM target, tasks AS t
         WHERE r.id = target.id AND t.id = r.task_id
        RETURNING r.id, r.task_id, r.user_id, r.priority, r.attempts, r.max_attempts, r.timeout_ms,
                  r.credits_reserved, r.tokens_used, t.description, t.agent_type,
                  t.agent_config ->> 'model' AS model, t.cron IS NULL AS one_off, r.cancel_requested,
                  r.scheduled_for, r.step_count
    ), task_follows AS (
        UPDATE tasks SET status = 'running', updated_at = :now
         WHERE id = (SELECT task_id FROM claimed WHERE one_off) AND status <> 'cancelled'
    )
    SELECT claimed.* FROM claimed
      LEFT JOIN LATERAL (SELECT pg_notify(:events_channel, CAST(w.id AS text)) FROM task_runs AS w
                          WHERE w.id = claimed.id AND w.watched_until > :now) AS notified ON true
    """
)


def claim_run(
    db: Session | Engine, run_id: uuid.UUID, *, now: datetime, lease_ms: int, reservation: int
) -> ClaimedRun | None:
    """Take the run for one attempt, or None when it is not ours to run (duplicate, late, done).

    On its first attempt the run also holds min(`reservation`, the credits left) credits, when
    at least 1 is left; `ClaimedRun.reserved` is 0 when it could not. Given an engine, the claim
    is its own unit of work (`app.db.execute_one`: the worker claims once a delivery).
    """
    params = {
        "run_id": run_id,
        "now": now,
        "lease_ms": lease_ms,
        "events_channel": RUN_EVENTS_CHANNEL,
        "amount": reservation,
        "period": credits.month_of(now),
    }
    row = execute_one(db, _CLAIM, params) if isinstance(db, Engine) else db.execute(_CLAIM, params).first()
    if row is None:
        return None
    return ClaimedRun(*row)


_REQUEUE = text(
    f"""
    WITH requeued AS (
        UPDATE task_runs
           SET status = 'queued', not_before = :not_before, lease_expires_at = NULL,
               message_sent_at = NULL, message_id = NULL,
               tokens_used = :tokens, error = CAST(:error AS jsonb),
               attempt_errors = COALESCE(attempt_errors, '[]'::jsonb) || jsonb_build_array(
                   jsonb_build_object('attempt', CAST(:attempt AS int), 'error', CAST(:error AS jsonb),
                                     'at', CAST(:now AS timestamptz))),
               event_seq = event_seq + 1, status_seq = event_seq + 1
         WHERE id = :run_id AND {_RUNNING} AND attempts = :attempt
        RETURNING id, task_id, watched_until > :now AS watched
    ), task_follows AS (
        -- The totals of the task include the tokens of attempts whose run waits for a retry:
        -- each step's tokens are added to its run and task as the step completes
        -- (app.services.run_steps), so neither a retry nor a crash loses them.
        UPDATE tasks
           SET status = CASE WHEN cron IS NULL AND status <> 'cancelled' THEN 'queued'
                             ELSE status END,
               updated_at = :now
         WHERE id = (SELECT task_id FROM requeued)
    )
    SELECT id, CASE WHEN watched THEN pg_notify(:events_channel, CAST(id AS text)) END FROM requeued
    """
)

# The end of a run, in one statement: fenced on the attempt, the run's outcome, its one charge,
# the user's credits released and charged, the task's totals, and the notification to waiters.
_FINISH = text(
    f"""
    WITH finished AS (
        UPDATE task_runs
           SET status = :status, finished_at = :now, lease_expires_at = NULL,
               tokens_used = :tokens, credits_used = :charge, credits_reserved = 0,
               tokens_over_budget = :over_budget,
               -- the last attempt of a dead worker is claimed as attempt max+1 only to be failed
               attempts = LEAST(attempts, max_attempts),
               event_seq = event_seq + 1, status_seq = event_seq + 1,
               result = :result, error = CAST(:error AS jsonb)
         WHERE id = :run_id AND {_RUNNING} AND attempts = :attempt
        RETURNING id, task_id, user_id
    ), {credits.PAYER_CTE}, charged AS (
        INSERT INTO credit_ledger (user_id, run_id, kind, amount, tokens, period)
        SELECT f.user_id, f.id, 'charge', :charge, :tokens, payer.period
          FROM finished AS f, payer WHERE :charge > 0
        {credits.CHARGE_CONFLICT}
        RETURNING amount
    ), settled AS (
        UPDATE users SET {credits.settle_set("COALESCE((SELECT sum(amount) FROM charged), 0)")}
         WHERE id = (SELECT user_id FROM finished)
    ), task_result AS (
        UPDATE tasks
           SET status = CASE WHEN status = 'cancelled' THEN status
                             WHEN cron IS NULL THEN :status
                             ELSE 'pending' END,
               result = :result, error = CAST(:error AS jsonb),
               -- (the task's tokens were added step by step: app.services.run_steps)
               credits_used = credits_used + :charge,
               last_run_at = :now, updated_at = :now
         WHERE id = (SELECT task_id FROM finished)
    ), webhook AS ({insert_deliveries_sql("finished", "'run.' || CAST(:status AS text)")})
    SELECT id, pg_notify(:channel, CAST(id AS text)),
           (SELECT webhook.id FROM webhook) AS delivery_id,
           (SELECT webhook.message_id FROM webhook) AS delivery_message_id
      FROM finished
    """
)


def _error_json(outcome: Outcome) -> str | None:
    if outcome.error_code is None:
        return None
    return json.dumps({"code": outcome.error_code, "message": outcome.error_message or ""})


def retry_later(
    session: Session, claimed: ClaimedRun, outcome: Outcome, *, delay_ms: int, now: datetime
) -> Dispatch | None:
    """Put the run back in the queue for another attempt after `delay_ms`."""
    row = session.execute(
        _REQUEUE,
        {
            "run_id": claimed.run_id,
            "attempt": claimed.attempt,
            "not_before": now + timedelta(milliseconds=delay_ms),
            "tokens": claimed.tokens_before + outcome.tokens,
            "attempt_tokens": outcome.tokens,
            "error": _error_json(outcome),
            "now": now,
            "events_channel": RUN_EVENTS_CHANNEL,
        },
    ).first()
    if row is None:
        return None
    return Dispatch(claimed.run_id, claimed.priority, delay_ms)


def finish(
    db: Session | sessionmaker[Session],
    claimed: ClaimedRun,
    outcome: Outcome,
    *,
    tokens_per_credit: int,
    now: datetime,
) -> bool:
    """End the run for good: charge it once, record the outcome on run and task, notify waiters.

    Tokens past what the reservation pays for are not charged; they are recorded as
    `tokens_over_budget`. False when the attempt had lost its claim (nothing is written then).
    Given a session factory, the end is its own unit of work (`app.db.execute_one`: the worker
    ends a run in one statement) and its webhook's message goes out as soon as it returns.
    """
    if outcome.error_code is None:
        status = RunStatus.COMPLETED
    elif outcome.error_code == "cancelled":
        status = RunStatus.CANCELLED
    else:
        status = RunStatus.FAILED
    tokens = claimed.tokens_before + outcome.tokens
    params = {
        "run_id": claimed.run_id,
        "attempt": claimed.attempt,
        "status": status.value,
        "now": now,
        "tokens": tokens,
        "attempt_tokens": outcome.tokens,
        "over_budget": credits.tokens_over_budget(tokens, claimed.reserved * tokens_per_credit),
        "charge": credits.charge_for(tokens, tokens_per_credit, claimed.reserved),
        "reserved": claimed.reserved,
        "period": credits.month_of(now),
        "result": outcome.result,
        "error": _error_json(outcome),
        "channel": RUN_FINISHED_CHANNEL,
    }
    if isinstance(db, Session):
        row = db.execute(_FINISH, params).first()
        if row is not None:  # the webhook's message goes out after the commit
            stash_row(db, row.delivery_id, row.delivery_message_id)
        return row is not None
    ended = execute_one(engine_of(db), _FINISH, params)
    if ended is not None:  # (id, notified, delivery id, delivery message id), committed
        send_committed(db, ended[2], ended[3])
    return ended is not None


def notify_finished(session: Session, run_id: uuid.UUID) -> None:
    """Wake whoever waits for this run (delivered by Postgres at commit).

    Its status changed: that takes the run's next event number, for its live event stream.
    """
    session.execute(
        text("UPDATE task_runs SET event_seq = event_seq + 1, status_seq = event_seq + 1 WHERE id = :run_id"),
        {"run_id": run_id},
    )
    session.execute(
        text("SELECT pg_notify(:channel, :run_id)"),
        {"channel": RUN_FINISHED_CHANNEL, "run_id": str(run_id)},
    )
