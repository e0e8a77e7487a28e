"""Creating tasks and their first run, and reading a user's tasks and runs."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.errors import InvalidInput, NotFound
from app.models import Task, TaskRun, User
from app.models.enums import RunStatus, TaskStatus, Trigger
from app.services.dispatch import Dispatch
from app.services.runs import new_run
from app.services.task_input import ExecuteRequest

T = TypeVar("T")

PAGE_MAX = 100
PAGE_DEFAULT = 20
RECENT_RUNS = 10


@dataclass
class CreatedTask:
    task: Task
    run: TaskRun | None
    #: Messages to send once the transaction has committed.
    dispatches: list[Dispatch] = field(default_factory=list)


def create_task(session: Session, user_id: uuid.UUID, request: ExecuteRequest, now: datetime) -> CreatedTask:
    """Store the task; queue its run now unless it is scheduled. The caller commits, then sends."""
    schedule = request.schedule
    task = Task(
        id=uuid.uuid4(),
        user_id=user_id,
        title=request.title,
        description=request.goal,
        agent_type=request.agent_type,
        priority=request.priority.value,
        agent_config=request.agent_config,
        tokens_used=0,
        credits_used=0,
        created_at=now,
        updated_at=now,
    )
    if schedule is not None:
        from app.services.schedules import apply_schedule

        task.status = TaskStatus.PENDING.value
        apply_schedule(
            task, enabled=schedule.enabled, cron=schedule.cron, timezone=schedule.timezone, now=now
        )
        session.add(task)
        session.flush()
        return CreatedTask(task, None)
    task.status = TaskStatus.QUEUED.value
    task.schedule_enabled = False
    run = new_run(task, trigger=Trigger.API)
    run.queued_at = now
    session.add(task)
    session.flush()  # the task row first: runs reference it
    session.add(run)
    session.flush()
    return CreatedTask(task, run, [Dispatch(run.id, run.priority)])


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


# -- paging: an opaque cursor holding the (time, id) of the last item of the previous page


def encode_cursor(at: datetime, item_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{item_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, item_id = raw.split("|")
        return datetime.fromisoformat(at), uuid.UUID(item_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput({"cursor": "is not a cursor this API returned"}) from None


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
