"""Changing a task after creation: edit, pause/resume, run now, cancel.

Lock order (the rule for every transaction that locks more than one of these rows): a task's
runs first (by id), then the task, then its user: run(s) -> task -> user. A run's finish,
requeue and hand-back take them in that order (one statement each: app.services.runs,
app.services.leases; the user's row last, by the credit CTEs and the `task_runs` triggers
that keep `running_runs`), run now and the scheduling pass lock the task before the user, and
a cancel takes the same order (`lock_for_cancel`). Two transactions that both follow it
cannot deadlock. The claim (runs._CLAIM) locks the run, then the user, then a one-off task;
the run's lock comes first there too, so it is serialized with every cancel of that run.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app import metrics
from app.cron import parse_schedule
from app.errors import Conflict, InvalidInput
from app.models import Task, TaskRun, User
from app.models.enums import RunStatus, TaskStatus, Trigger
from app.services import credits
from app.services.dispatch import Dispatch
from app.services.runs import new_run, notify_finished
from app.services.schedules import apply_schedule
from app.services.task_input import TaskUpdate
from app.services.tasks import get_task
from app.settings import Settings
from app.webhooks.deliveries import apply_webhook
from app.webhooks.outbox import record_run_events


def update_task(
    session: Session,
    user_id: uuid.UUID,
    task_id: uuid.UUID,
    update: TaskUpdate,
    *,
    settings: Settings,
    now: datetime,
) -> Task:
    """Apply a PATCH. `schedule.enabled` false pauses, true resumes from now; a new cron or
    timezone recomputes `nextRunAt`."""
    task = get_task(session, user_id, task_id, for_update=True)
    if update.title is not None:
        task.title = update.title
    if update.priority is not None:
        task.priority = update.priority.value
    if update.webhook_given:
        apply_webhook(task, update.webhook)
    if update.schedule is not None:
        given = update.schedule
        cron = given.get("cron", task.cron)
        if cron is None:
            raise InvalidInput({"schedule.cron": "is required: this task has no schedule yet"})
        timezone = given.get("timezone") or task.timezone or settings.default_timezone
        enabled = given.get("enabled", task.schedule_enabled if task.cron is not None else True)
        try:
            parse_schedule(cron, timezone)
        except InvalidInput as exc:
            raise InvalidInput(exc.fields) from None
        if enabled and task.status == TaskStatus.CANCELLED.value:
            task.status = TaskStatus.PENDING.value
        if task.cron is None and task.status != TaskStatus.CANCELLED.value:
            # A task with a schedule is `pending` between runs, also when its one-off run is
            # still queued or running (that run's end leaves it pending: runs.finish).
            task.status = TaskStatus.PENDING.value
        apply_schedule(task, enabled=bool(enabled), cron=cron, timezone=timezone, now=now)
    task.updated_at = now
    session.flush()
    return task


def run_now(
    session: Session, user_id: uuid.UUID, task_id: uuid.UUID, *, now: datetime
) -> tuple[TaskRun, Dispatch]:
    """Queue a manual run outside the schedule; the caller commits, then sends."""
    task = get_task(session, user_id, task_id, for_update=True)
    if task.status == TaskStatus.CANCELLED.value:
        raise Conflict("the task is cancelled; resume its schedule or create a new task")
    run = new_run(task, trigger=Trigger.MANUAL)
    run.queued_at = now
    session.add(run)
    if task.cron is None:
        task.status = TaskStatus.QUEUED.value
    task.updated_at = now
    session.flush()
    return run, Dispatch(run.id, run.priority)


def end_queued_run(
    session: Session, task: Task, run: TaskRun, *, settings: Settings, now: datetime, message: str
) -> None:
    """End a queued run (locked by the caller) as cancelled: its held credits are released and
    the tokens it already spent are charged. The caller records its webhook event and metric."""
    charge = credits.settle(
        session,
        user_id=run.user_id,
        run_id=run.id,
        reserved=run.credits_reserved,
        tokens=run.tokens_used,
        tokens_per_credit=settings.tokens_per_credit,
        now=now,
    )
    run.status = RunStatus.CANCELLED.value
    run.finished_at = now
    run.credits_used = charge
    run.tokens_over_budget = credits.tokens_over_budget(
        run.tokens_used, run.credits_reserved * settings.tokens_per_credit
    )
    run.credits_reserved = 0
    run.error = {"code": "cancelled", "message": message}
    # Its tokens are in the task's total already (added when its attempt ended).
    task.credits_used += charge
    notify_finished(session, run.id)


def cancel_task(
    session: Session, user_id: uuid.UUID, task_id: uuid.UUID, *, settings: Settings, now: datetime
) -> Task:
    """Cancel queued runs at once, ask a running one to stop at its next model call, disable
    the schedule. Credits held by cancelled runs are released (tokens already spent are charged)."""
    task = get_task(session, user_id, task_id)
    lock_for_cancel(session, [task.id])
    session.refresh(task)
    queued = session.scalars(
        select(TaskRun)
        .where(TaskRun.task_id == task.id, TaskRun.status == RunStatus.QUEUED.value)
        .with_for_update()
    ).all()
    for run in queued:
        end_queued_run(session, task, run, settings=settings, now=now, message="the task was cancelled")
    record_run_events(session, [run.id for run in queued], "run.cancelled", now)
    metrics.RUNS.labels("cancelled", task.agent_type).inc(len(queued))
    session.execute(
        text("UPDATE task_runs SET cancel_requested = true WHERE task_id = :task_id AND status = 'running'"),
        {"task_id": task.id},
    )
    task.status = TaskStatus.CANCELLED.value
    task.schedule_enabled = False
    task.next_run_at = None
    if task.schedule is not None:
        task.schedule = {**task.schedule, "enabled": False}
    task.updated_at = now
    session.flush()
    return task


_LIVE = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


def lock_for_cancel(session: Session, task_ids: Collection[uuid.UUID]) -> None:
    """Lock what cancelling these tasks' runs writes, in the rule's order (module docstring):
    their queued and running runs (by id), then the tasks (by id), then their users (by id).
    Tasks and users are locked FOR NO KEY UPDATE, as an UPDATE locks them, so a run or ledger
    row inserted meanwhile (its foreign key's KEY SHARE) does not wait for the cancel.

    A run queued for one of them after this (run now, the scheduling pass) is locked by its
    cancel after the task: the one step outside the rule, only while it races its own claim.
    """
    ids = sorted(set(task_ids))
    if not ids:
        return
    session.execute(
        select(TaskRun.id)
        .where(TaskRun.task_id.in_(ids), TaskRun.status.in_(_LIVE))
        .order_by(TaskRun.id)
        .with_for_update()
    ).all()
    session.execute(
        select(Task.id).where(Task.id.in_(ids)).order_by(Task.id).with_for_update(key_share=True)
    ).all()
    user_ids = select(Task.user_id).where(Task.id.in_(ids)).scalar_subquery()
    session.execute(
        select(User.id).where(User.id.in_(user_ids)).order_by(User.id).with_for_update(key_share=True)
    ).all()
