"""Creating tasks and their first run, and reading a user's tasks and runs."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from sqlalchemy import ColumnElement, and_, or_, select, text
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.errors import InvalidInput, NotFound
from app.models import Task, TaskRun, User
from app.models.enums import RunStatus, TaskStatus
from app.services import concurrency
from app.services.dispatch import Dispatch
from app.services.runs import run_limits
from app.services.task_input import ExecuteRequest
from app.webhooks.deliveries import apply_webhook

T = TypeVar("T")

PAGE_MAX = 100
PAGE_DEFAULT = 20
RECENT_RUNS = 10


@dataclass
class CreatedTask:
    task_id: uuid.UUID
    status: str
    #: The run queued now (None for a scheduled task).
    run_id: uuid.UUID | None = None
    #: The stored task, for a scheduled one (its schedule and nextRunAt are answered).
    task: Task | None = None
    #: Messages to send once the transaction has committed.
    dispatches: list[Dispatch] = field(default_factory=list)


# A task and its first run in one statement. The run records the id of the message about to be
# sent for it: should that send fail, the id is missing from Redis and the reconciler resends.
_CREATE_WITH_RUN = text(
    f"""
    WITH task AS (
        INSERT INTO tasks (id, user_id, title, description, agent_type, status, priority,
                           agent_config, schedule_enabled, tokens_used, credits_used,
                           webhook_url, webhook_events, created_at, updated_at)
        VALUES (:task_id, :user_id, :title, :goal, :agent_type, 'queued', :priority,
                CAST(:agent_config AS jsonb), false, 0, 0,
                :webhook_url, CAST(:webhook_events AS varchar[]), :now, :now)
        RETURNING id
    ), {concurrency.FULL_AT_CREATION}
    INSERT INTO task_runs (id, task_id, user_id, trigger, status, priority, attempts, max_attempts,
                           timeout_ms, queued_at, cancel_requested, tokens_used, credits_used,
                           credits_reserved, message_id, message_sent_at, parked_at)
    SELECT :run_id, task.id, :user_id, 'api', 'queued', :priority, 0, :max_attempts, :timeout_ms,
           :now, false, 0, 0, 0,
           CASE WHEN {concurrency.USER_FULL} THEN NULL ELSE :message_id END,
           CASE WHEN {concurrency.USER_FULL} THEN NULL ELSE CAST(:now AS timestamptz) END,
           CASE WHEN {concurrency.USER_FULL} THEN CAST(:now AS timestamptz) END
      FROM task
    RETURNING parked_at IS NOT NULL AS parked
    """
)


def create_task(session: Session, user_id: uuid.UUID, request: ExecuteRequest, now: datetime) -> CreatedTask:
    """Store the task; queue its run now unless it is scheduled. The caller commits, then sends.

    An immediate run is one statement, so a caller may run it on an autocommit session.
    """
    if request.schedule is not None:
        return _create_scheduled(session, user_id, request, now)
    task_id, run_id, message_id = uuid.uuid4(), uuid.uuid4(), str(uuid.uuid4())
    max_attempts, timeout_ms = run_limits(request.agent_config)
    parked: bool = session.execute(
        _CREATE_WITH_RUN,
        {
            "task_id": task_id,
            "run_id": run_id,
            "user_id": user_id,
            "title": request.title,
            "goal": request.goal,
            "agent_type": request.agent_type,
            "priority": request.priority.value,
            "agent_config": json.dumps(request.agent_config),
            "webhook_url": request.webhook.url if request.webhook else None,
            "webhook_events": list(request.webhook.events) if request.webhook else None,
            "max_attempts": max_attempts,
            "timeout_ms": timeout_ms,
            "message_id": message_id,
            "now": now,
        },
    ).scalar_one()
    # A user at their concurrency limit: the run waits in Postgres, released when a run ends.
    dispatches = [] if parked else [Dispatch(run_id, request.priority.value, message_id=message_id)]
    return CreatedTask(task_id, TaskStatus.QUEUED.value, run_id, None, dispatches)


def _create_scheduled(
    session: Session, user_id: uuid.UUID, request: ExecuteRequest, now: datetime
) -> CreatedTask:
    from app.services.schedules import apply_schedule

    schedule = request.schedule
    assert schedule is not None
    task = Task(
        id=uuid.uuid4(),
        user_id=user_id,
        title=request.title,
        description=request.goal,
        agent_type=request.agent_type,
        priority=request.priority.value,
        agent_config=request.agent_config,
        status=TaskStatus.PENDING.value,
        tokens_used=0,
        credits_used=0,
        created_at=now,
        updated_at=now,
    )
    apply_webhook(task, request.webhook)
    apply_schedule(task, enabled=schedule.enabled, cron=schedule.cron, timezone=schedule.timezone, now=now)
    session.add(task)
    session.flush()
    return CreatedTask(task.id, task.status, None, task)


def get_task(session: Session, user_id: uuid.UUID, task_id: uuid.UUID, *, for_update: bool = False) -> Task:
    query = select(Task).where(Task.id == task_id, Task.user_id == user_id)
    if for_update:
        query = query.with_for_update()
    task = session.scalar(query)
    if task is None:
        raise NotFound("task not found")
    return task


def get_run(session: Session, user_id: uuid.UUID, run_id: uuid.UUID) -> TaskRun:
    run = session.scalar(select(TaskRun).where(TaskRun.id == run_id, TaskRun.user_id == user_id))
    if run is None:
        raise NotFound("run not found")
    return run


def get_user(session: Session, user_id: uuid.UUID) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("user not found")
    return user


def recent_runs(session: Session, task_id: uuid.UUID, limit: int = RECENT_RUNS) -> Sequence[TaskRun]:
    return session.scalars(
        select(TaskRun)
        .where(TaskRun.task_id == task_id)
        .order_by(TaskRun.queued_at.desc(), TaskRun.id.desc())
        .limit(limit)
    ).all()


# -- paging: a cursor holding the (time, id) of the last item of the previous page

#: `<microseconds since 1970 UTC>_<id as 32 hex digits>`; every string it matches decodes, so
#: the API schema can say exactly what a cursor is.
CURSOR_PATTERN = "^[0-9]{1,16}_[0-9a-f]{32}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_cursor(at: datetime, item_id: uuid.UUID) -> str:
    return f"{(at - _EPOCH) // _MICROSECOND}_{item_id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if re.fullmatch(CURSOR_PATTERN, cursor) is None:
        raise InvalidInput({"cursor": "is not a cursor this API returned"})
    micros, item_id = cursor.split("_")
    return _EPOCH + int(micros) * _MICROSECOND, uuid.UUID(item_id)


def check_limit(limit: int | None) -> int:
    if limit is None:
        return PAGE_DEFAULT
    if not 1 <= limit <= PAGE_MAX:
        raise InvalidInput({"limit": f"must be between 1 and {PAGE_MAX}"})
    return limit


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def _after(
    time_col: InstrumentedAttribute[datetime], id_col: InstrumentedAttribute[uuid.UUID], cursor: str | None
) -> ColumnElement[bool] | None:
    """The condition for items after the cursor, in (time, id) descending order."""
    if cursor is None:
        return None
    at, item_id = decode_cursor(cursor)
    return or_(time_col < at, and_(time_col == at, id_col < item_id))


def list_tasks(
    session: Session,
    user_id: uuid.UUID,
    *,
    status: str | None,
    limit: int | None,
    cursor: str | None,
) -> Page[Task]:
    size = check_limit(limit)
    query = select(Task).where(Task.user_id == user_id)
    if status is not None:
        valid = [s.value for s in TaskStatus]
        if status not in valid:
            raise InvalidInput({"status": f"must be one of {', '.join(valid)}"})
        query = query.where(Task.status == status)
    after = _after(Task.created_at, Task.id, cursor)
    if after is not None:
        query = query.where(after)
    rows = list(session.scalars(query.order_by(Task.created_at.desc(), Task.id.desc()).limit(size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    return Page(rows, encode_cursor(rows[-1].created_at, rows[-1].id) if more else None)


def list_runs(
    session: Session,
    user_id: uuid.UUID,
    task_id: uuid.UUID,
    *,
    limit: int | None,
    cursor: str | None,
) -> Page[TaskRun]:
    get_task(session, user_id, task_id)
    size = check_limit(limit)
    query = select(TaskRun).where(TaskRun.task_id == task_id)
    after = _after(TaskRun.queued_at, TaskRun.id, cursor)
    if after is not None:
        query = query.where(after)
    rows = list(session.scalars(query.order_by(TaskRun.queued_at.desc(), TaskRun.id.desc()).limit(size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    return Page(rows, encode_cursor(rows[-1].queued_at, rows[-1].id) if more else None)


def is_finished(run: TaskRun) -> bool:
    return run.status not in (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
