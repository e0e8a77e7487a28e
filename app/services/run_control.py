"""Steering single runs (and many at once, for operators): cancel a run, retry a failed one.

A retry is a new run of the same task (trigger `manual`), so the failed run keeps its history.
Cancelling a queued run ends it at once and releases its credits; a running one is asked to stop
at its next model call. Cancelling the only run of a one-off task cancels the task, as
POST /api/tasks/{id}/cancel does.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import metrics
from app.errors import Conflict, NotFound
from app.models import Task, TaskRun
from app.models.enums import RunStatus
from app.services import task_control
from app.services.dispatch import Dispatch
from app.settings import Settings
from app.webhooks.outbox import record_run_events

#: At most this many runs in one bulk action.
BULK_MAX = 200


@dataclass
class BulkResult:
    done: list[uuid.UUID] = field(default_factory=list)
    #: run id -> why it was left alone
    skipped: dict[uuid.UUID, str] = field(default_factory=dict)
    dispatches: list[Dispatch] = field(default_factory=list)


def _run_for_update(session: Session, run_id: uuid.UUID, user_id: uuid.UUID | None) -> TaskRun:
    query = select(TaskRun).where(TaskRun.id == run_id)
    if user_id is not None:
        query = query.where(TaskRun.user_id == user_id)
    run = session.scalar(query.with_for_update())
    if run is None:
        raise NotFound("run not found")
    return run


def retry_run(
    session: Session, user_id: uuid.UUID | None, run_id: uuid.UUID, *, now: datetime
) -> tuple[TaskRun, Dispatch]:
    """Queue a new run of a failed run's task; the caller commits, then sends.

    `user_id` None acts for an operator (any user's run).
    """
    run = _run_for_update(session, run_id, user_id)
    if run.status != RunStatus.FAILED.value:
        raise Conflict(f"only a failed run can be retried (this one is {run.status})")
    return task_control.run_now(session, run.user_id, run.task_id, now=now)


def cancel_run(
    session: Session,
    user_id: uuid.UUID | None,
    run_id: uuid.UUID,
    *,
    settings: Settings,
    now: datetime,
) -> TaskRun:
    """Cancel one queued or running run (`user_id` None: an operator, any user's run).

    Locks run(s) -> task -> user, the rule of app.services.task_control.
    """
    query = select(TaskRun).where(TaskRun.id == run_id)
    if user_id is not None:
        query = query.where(TaskRun.user_id == user_id)
    found = session.scalar(query)
    if found is None:
        raise NotFound("run not found")
    task_control.lock_for_cancel(session, [found.task_id])
    run = _run_for_update(session, run_id, user_id)
    session.refresh(run)
    if run.status not in (RunStatus.QUEUED.value, RunStatus.RUNNING.value):
        raise Conflict(f"the run has already ended ({run.status})")
    task = session.get(Task, run.task_id, populate_existing=True)
    assert task is not None
    if task.cron is None:
        task_control.cancel_task(session, run.user_id, task.id, settings=settings, now=now)
        session.refresh(run)
        return run
    if run.status == RunStatus.RUNNING.value:
        run.cancel_requested = True
    else:
        task_control.end_queued_run(
            session, task, run, settings=settings, now=now, message="the run was cancelled"
        )
        record_run_events(session, [run.id], "run.cancelled", now)  # its webhook, if subscribed
        metrics.RUNS.labels("cancelled", task.agent_type).inc()
    session.flush()
    return run


def bulk_retry(session: Session, run_ids: Sequence[uuid.UUID], *, now: datetime) -> BulkResult:
    """An operator's retry of many failed runs (any user's); one new run per task at most."""
    result = BulkResult()
    seen_tasks: set[uuid.UUID] = set()
    for run_id in list(dict.fromkeys(run_ids))[:BULK_MAX]:
        try:
            with session.begin_nested():
                run = _run_for_update(session, run_id, None)
                if run.task_id in seen_tasks:
                    result.skipped[run_id] = "its task is already being retried"
                    continue
                _, dispatch = retry_run(session, None, run_id, now=now)
                seen_tasks.add(run.task_id)
        except (Conflict, NotFound) as exc:
            result.skipped[run_id] = exc.message
            continue
        result.done.append(run_id)
        result.dispatches.append(dispatch)
    return result


def bulk_cancel(
    session: Session, run_ids: Sequence[uuid.UUID], *, settings: Settings, now: datetime
) -> BulkResult:
    """An operator's cancel of many queued or running runs (any user's).

    Everything the cancels write is locked first, all runs, then all tasks, then all users
    (task_control.lock_for_cancel): one-run-at-a-time locking would hold one run's task and
    user while waiting for the next run, which a finishing run may hold waiting for that user.
    """
    result = BulkResult()
    wanted = list(dict.fromkeys(run_ids))[:BULK_MAX]
    task_ids = session.scalars(select(TaskRun.task_id).where(TaskRun.id.in_(wanted))).all()
    task_control.lock_for_cancel(session, task_ids)
    for run_id in wanted:
        try:
            with session.begin_nested():
                cancel_run(session, None, run_id, settings=settings, now=now)
        except (Conflict, NotFound) as exc:
            result.skipped[run_id] = exc.message
            continue
        result.done.append(run_id)
    return result
