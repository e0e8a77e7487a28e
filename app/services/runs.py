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

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.models import Task, TaskRun
from app.models.enums import RunStatus, Trigger
from app.services import credits
from app.services.dispatch import Dispatch
from app.services.task_input import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_MS

RUN_FINISHED_CHANNEL = "agentsched_run_finished"


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


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended. `error_code` None means completed."""

    tokens: int
    result: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool = False


def new_run(
    task: Task,
    *,
    trigger: Trigger,
    scheduled_for: datetime | None = None,
    status: RunStatus = RunStatus.QUEUED,
) -> TaskRun:
    """A run row for `task`, with its limits copied so later task edits don't change it."""
    config = task.agent_config or {}
    return TaskRun(
        id=uuid.uuid4(),
        task_id=task.id,
        user_id=task.user_id,
        trigger=trigger.value,
        scheduled_for=scheduled_for,
        status=status.value,
        priority=task.priority,
        attempts=0,
        max_attempts=1 + int(config.get("maxRetries", DEFAULT_MAX_RETRIES)),
        timeout_ms=int(config.get("timeout", DEFAULT_TIMEOUT_MS)),
        cancel_requested=False,
        tokens_used=0,
        credits_used=0,
        credits_reserved=0,
    )


_CLAIM = text(
    """
    UPDATE task_runs AS r
       SET status = 'running',
           attempts = r.attempts + 1,
           started_at = COALESCE(r.started_at, :now),
           lease_expires_at = :now + (r.timeout_ms + :grace_ms) * interval '1 millisecond',
           not_before = NULL
      FROM tasks AS t
     WHERE r.id = :run_id
       AND t.id = r.task_id
       AND ((r.status = 'queued' AND NOT r.cancel_requested
             AND (r.not_before IS NULL OR r.not_before <= :now))
            OR (r.status = 'running' AND r.lease_expires_at < :now))
    RETURNING r.id, r.task_id, r.user_id, r.priority, r.attempts, r.max_attempts, r.timeout_ms,
              r.credits_reserved, r.tokens_used, t.description, t.agent_type,
              t.agent_config ->> 'model', t.cron IS NULL, r.cancel_requested
    """
)

_TASK_FOLLOWS_RUN = text(
    """
    UPDATE tasks SET status = :status, updated_at = :now
     WHERE id = :task_id AND cron IS NULL AND status <> 'cancelled'
    """
)

_HOLD_CREDITS = text("UPDATE task_runs SET credits_reserved = :amount WHERE id = :run_id")


def claim_run(
    session: Session, run_id: uuid.UUID, *, now: datetime, lease_grace_ms: int
) -> ClaimedRun | None:
    """Take the run for one attempt, or None when it is not ours to run (duplicate, late, done)."""
    row = session.execute(_CLAIM, {"run_id": run_id, "now": now, "grace_ms": lease_grace_ms}).first()
    if row is None:
        return None
    claimed = ClaimedRun(*row)  # type: ignore[arg-type]
    if claimed.one_off:
        session.execute(_TASK_FOLLOWS_RUN, {"task_id": claimed.task_id, "status": "running", "now": now})
    return claimed


def hold_credits(session: Session, claimed: ClaimedRun, amount: int, now: datetime) -> ClaimedRun | None:
    """Reserve the run's budget on its first attempt; None when the user's credits can't cover it."""
    if claimed.reserved:
        return claimed
    if not credits.reserve(session, claimed.user_id, amount, now):
        return None
    session.execute(_HOLD_CREDITS, {"run_id": claimed.run_id, "amount": amount})
    return ClaimedRun(**{**_as_dict(claimed), "reserved": amount})


def _as_dict(claimed: ClaimedRun) -> dict[str, Any]:
    return {name: getattr(claimed, name) for name in ClaimedRun.__slots__}


_REQUEUE = text(
    """
    UPDATE task_runs
       SET status = 'queued', not_before = :not_before, lease_expires_at = NULL,
           message_sent_at = NULL, message_id = NULL,
           tokens_used = :tokens, error = CAST(:error AS jsonb)
     WHERE id = :run_id AND status = 'running' AND attempts = :attempt
    RETURNING id
    """
)

_FINISH = text(
    """
    UPDATE task_runs
       SET status = :status, finished_at = :now, lease_expires_at = NULL,
           tokens_used = :tokens, credits_used = :charge, credits_reserved = 0,
           result = :result, error = CAST(:error AS jsonb)
     WHERE id = :run_id AND status = 'running' AND attempts = :attempt
    RETURNING id
    """
)

_TASK_RESULT = text(
    """
    UPDATE tasks
       SET status = CASE WHEN cron IS NULL AND status <> 'cancelled' THEN :status ELSE status END,
           result = :result, error = CAST(:error AS jsonb),
           tokens_used = tokens_used + :tokens, credits_used = credits_used + :charge,
           last_run_at = :now, updated_at = :now
     WHERE id = :task_id
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
            "error": _error_json(outcome),
        },
    ).first()
    if row is None:
        return None
    if claimed.one_off:
        session.execute(_TASK_FOLLOWS_RUN, {"task_id": claimed.task_id, "status": "queued", "now": now})
    return Dispatch(claimed.run_id, claimed.priority, delay_ms)


def finish(
    session: Session,
    claimed: ClaimedRun,
    outcome: Outcome,
    *,
    tokens_per_credit: int,
    now: datetime,
) -> bool:
    """End the run for good: charge it once, record the outcome on run and task, notify waiters.

    False when the attempt had lost its claim (nothing is written then).
    """
    if outcome.error_code is None:
        status = RunStatus.COMPLETED
    elif outcome.error_code == "cancelled":
        status = RunStatus.CANCELLED
    else:
        status = RunStatus.FAILED
    tokens = claimed.tokens_before + outcome.tokens
    charge = credits.cost_of(tokens, tokens_per_credit)
    if claimed.reserved:
        charge = min(charge, claimed.reserved)
    error = _error_json(outcome)
    row = session.execute(
        _FINISH,
        {
            "run_id": claimed.run_id,
            "attempt": claimed.attempt,
            "status": status.value,
            "now": now,
            "tokens": tokens,
            "charge": charge,
            "result": outcome.result,
            "error": error,
        },
    ).first()
    if row is None:
        return False
    credits.settle(
        session,
        user_id=claimed.user_id,
        run_id=claimed.run_id,
        reserved=claimed.reserved,
        tokens=tokens,
        tokens_per_credit=tokens_per_credit,
        now=now,
    )
    session.execute(
        _TASK_RESULT,
        {
            "task_id": claimed.task_id,
            "status": status.value,
            "result": outcome.result,
            "error": error,
            "tokens": tokens,
            "charge": charge,
            "now": now,
        },
    )
    notify_finished(session, claimed.run_id)
    return True


def notify_finished(session: Session, run_id: uuid.UUID) -> None:
    """Wake whoever waits for this run (delivered by Postgres at commit)."""
    session.execute(
        text("SELECT pg_notify(:channel, :run_id)"),
        {"channel": RUN_FINISHED_CHANNEL, "run_id": str(run_id)},
    )
