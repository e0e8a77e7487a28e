"""What the dashboard pages show, in a fixed, small number of queries per page (no N+1).

Every read is scoped by the signed-in user's id, so another user's task, run or key is simply
not found (NotFound, a 404). Operators' figures (`operations`) span all users.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, text
from sqlalchemy.orm import Session

from app.cron import next_fires, parse_schedule
from app.errors import InvalidInput, NotFound
from app.models import ApiKey, RunStep, Task, TaskRun, User
from app.models.enums import RunStatus, StepStatus, TaskStatus
from app.services.run_steps import list_steps
from app.services.tasks import Page, decode_cursor, encode_cursor

TASKS_PER_PAGE = 25
RUNS_PER_PAGE = 20
SEARCH_MAX_CHARS = 200
NEXT_FIRES = 5
#: Operations charts cover this window, one bar per minute.
CHART_WINDOW = timedelta(hours=1)
#: Failed runs by error code, and the failed runs listed for a bulk retry, over this window.
FAILURES_WINDOW = timedelta(hours=24)
OPS_LIST_MAX = 50


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def tasks_page(
    session: Session,
    user_id: uuid.UUID,
    *,
    status: str | None = None,
    search: str | None = None,
    cursor: str | None = None,
    limit: int = TASKS_PER_PAGE,
) -> Page[Task]:
    """The user's tasks, newest first, filtered by status and a title/goal search (one query)."""
    query = select(Task).where(Task.user_id == user_id)
    if status:
        if status not in {s.value for s in TaskStatus}:
            raise InvalidInput({"status": "must be one of " + ", ".join(s.value for s in TaskStatus)})
        query = query.where(Task.status == status)
    term = (search or "").strip()[:SEARCH_MAX_CHARS]
    if term:
        pattern = _like(term)
        query = query.where(
            or_(Task.title.ilike(pattern, escape="\\"), Task.description.ilike(pattern, escape="\\"))
        )
    if cursor:
        at, task_id = decode_cursor(cursor)
        query = query.where(or_(Task.created_at < at, and_(Task.created_at == at, Task.id < task_id)))
    rows = list(session.scalars(query.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(rows[-1].created_at, rows[-1].id) if more else None)


@dataclass
class TaskDetail:
    task: Task
    runs: Page[TaskRun]
    next_fires: list[datetime]


def upcoming_fires(cron: str, timezone: str, now: datetime, count: int = NEXT_FIRES) -> list[datetime]:
    """The next `count` fire times after `now` (InvalidInput for a bad expression or zone)."""
    return next_fires(parse_schedule(cron, timezone), now, count)


def task_detail(
    session: Session, user_id: uuid.UUID, task_id: uuid.UUID, *, now: datetime, cursor: str | None = None
) -> TaskDetail:
    """A task, a page of its runs and its next fires (two queries)."""
    task = session.scalar(select(Task).where(Task.id == task_id, Task.user_id == user_id))
    if task is None:
        raise NotFound("task not found")
    fires: list[datetime] = []
    if task.cron and task.schedule_enabled and task.timezone:
        fires = upcoming_fires(task.cron, task.timezone, now)
    return TaskDetail(task, task_runs_page(session, task.id, cursor=cursor), fires)


def task_runs_page(
    session: Session, task_id: uuid.UUID, *, cursor: str | None = None, limit: int = RUNS_PER_PAGE
) -> Page[TaskRun]:
    query = select(TaskRun).where(TaskRun.task_id == task_id)
    if cursor:
        at, run_id = decode_cursor(cursor)
        query = query.where(or_(TaskRun.queued_at < at, and_(TaskRun.queued_at == at, TaskRun.id < run_id)))
    rows = list(session.scalars(query.order_by(TaskRun.queued_at.desc(), TaskRun.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(rows[-1].queued_at, rows[-1].id) if more else None)


@dataclass
class Attempt:
    number: int
    error: dict[str, Any] | None
    steps: list[RunStep] = field(default_factory=list)


@dataclass
class RunDetail:
    run: TaskRun
    task: Task
    #: The run's steps in order.
    steps: list[RunStep]
    attempts: list[Attempt]

    @property
    def live(self) -> bool:
        return self.run.status in (RunStatus.QUEUED.value, RunStatus.RUNNING.value)

    @property
    def stream_after(self) -> str:
        """The event id the page's events stream starts after: what the page shows, except that
        a step still running is streamed again from its start, so that the text it has streamed
        so far (and goes on streaming) reaches a page opened in its middle."""
        running = [step.start_seq for step in self.steps if step.status == StepStatus.RUNNING.value]
        return f"{min(running) - 1}-0" if running else f"{self.run.event_seq}-0"


def run_detail(session: Session, user_id: uuid.UUID, run_id: uuid.UUID) -> RunDetail:
    """A run with its task, its steps and its attempts (two queries)."""
    row = session.execute(
        select(TaskRun, Task)
        .join(Task, Task.id == TaskRun.task_id)
        .where(TaskRun.id == run_id, TaskRun.user_id == user_id)
    ).first()
    if row is None:
        raise NotFound("run not found")
    run, task = row
    steps = list(list_steps(session, run.id))
    return RunDetail(run, task, steps, attempts_of(run, steps))


def attempts_of(run: TaskRun, steps: Sequence[RunStep]) -> list[Attempt]:
    """One entry per attempt with its error: recorded when it was retried (`attempt_errors`),
    else its failed steps', and the run's own error on its last attempt."""
    if not run.attempts:
        return []
    attempts = [Attempt(number, None) for number in range(1, run.attempts + 1)]
    for step in steps:
        number = step.attempt
        if 1 <= number <= len(attempts):
            attempts[number - 1].steps.append(step)
            if step.error and attempts[number - 1].error is None:
                attempts[number - 1].error = step.error
    for entry in run.attempt_errors or []:
        number = int(entry.get("attempt") or 0)
        if 1 <= number <= len(attempts) and entry.get("error"):
            attempts[number - 1].error = entry["error"]
    if run.error:
        attempts[-1].error = run.error
    return attempts


@dataclass
class AccountView:
    user: User
    keys: list[ApiKey]
    running_runs: int


def account(session: Session, user_id: uuid.UUID) -> AccountView:
    """The user and their keys, newest first (two queries; `running_runs` is kept on the user)."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("user not found")
    keys = list(
        session.scalars(select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at.desc()))
    )
    return AccountView(user, keys, int(user.running_runs))


# -- operations (every user)

_RUNS_PER_MINUTE = text(
    """
    SELECT date_trunc('minute', finished_at) AS minute, status, count(*)
      FROM task_runs
     WHERE finished_at >= :since
     GROUP BY 1, 2
    """
)

_LATENESS_PER_MINUTE = text(
    """
    SELECT date_trunc('minute', started_at) AS minute,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY late_ms),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY late_ms)
      FROM (SELECT started_at, EXTRACT(EPOCH FROM started_at - scheduled_for) * 1000 AS late_ms
              FROM task_runs
             WHERE finished_at >= :since AND started_at >= :since
               AND trigger = 'schedule' AND scheduled_for IS NOT NULL
            UNION ALL
            SELECT started_at, EXTRACT(EPOCH FROM started_at - scheduled_for) * 1000
              FROM task_runs
             WHERE status IN ('queued', 'running') AND started_at >= :since
               AND trigger = 'schedule' AND scheduled_for IS NOT NULL) AS late
     GROUP BY 1
    """
)

_FAILED_BY_CODE = text(
    """
    SELECT COALESCE(error ->> 'code', 'unknown') AS code, count(*)
      FROM task_runs
     WHERE finished_at >= :since AND status = 'failed'
     GROUP BY 1
     ORDER BY 2 DESC, 1
    """
)


@dataclass
class OpsRun:
    run: TaskRun
    title: str
    email: str


@dataclass
class Operations:
    #: minute -> {status: count}, oldest first, one entry per minute of the window
    runs_per_minute: list[tuple[datetime, dict[str, int]]]
    #: minute -> (p50 ms, p99 ms) or None where no scheduled run started that minute
    lateness_per_minute: list[tuple[datetime, tuple[float, float] | None]]
    failed_by_code: list[tuple[str, int]]
    failed_runs: list[OpsRun]
    active_runs: list[OpsRun]


def _minutes(now: datetime) -> list[datetime]:
    end = now.replace(second=0, microsecond=0)
    count = int(CHART_WINDOW.total_seconds() // 60)
    return [end - timedelta(minutes=count - 1 - i) for i in range(count)]


def _ops_runs(session: Session, *conditions: Any) -> list[OpsRun]:
    rows = session.execute(
        select(TaskRun, Task.title, User.email)
        .join(Task, Task.id == TaskRun.task_id)
        .join(User, User.id == TaskRun.user_id)
        .where(*conditions)
        .order_by(TaskRun.queued_at.desc())
        .limit(OPS_LIST_MAX)
    ).all()
    return [OpsRun(run, title, email) for run, title, email in rows]


def operations(session: Session, now: datetime, *, error_code: str | None = None) -> Operations:
    """The operations page's charts and lists (five queries; queue figures come from stats)."""
    since = now.replace(second=0, microsecond=0) - CHART_WINDOW + timedelta(minutes=1)
    minutes = _minutes(now)
    per_minute: dict[datetime, dict[str, int]] = {minute: {} for minute in minutes}
    counted: Sequence[Any] = session.execute(_RUNS_PER_MINUTE, {"since": since}).all()
    for minute, status, count in counted:
        if minute in per_minute:
            per_minute[minute][str(status)] = int(count)
    late_rows: Sequence[Any] = session.execute(_LATENESS_PER_MINUTE, {"since": since}).all()
    lateness: dict[datetime, tuple[float, float]] = {
        minute: (float(p50), float(p99)) for minute, p50, p99 in late_rows if p50 is not None
    }
    failures_since = now - FAILURES_WINDOW
    code_rows: Sequence[Any] = session.execute(_FAILED_BY_CODE, {"since": failures_since}).all()
    failed_by_code = [(str(code), int(n)) for code, n in code_rows]
    failed_filter: list[Any] = [
        TaskRun.status == RunStatus.FAILED.value,
        TaskRun.finished_at >= failures_since,
    ]
    if error_code:
        failed_filter.append(TaskRun.error["code"].astext == error_code)
    return Operations(
        runs_per_minute=[(minute, per_minute[minute]) for minute in minutes],
        lateness_per_minute=[(minute, lateness.get(minute)) for minute in minutes],
        failed_by_code=failed_by_code,
        failed_runs=_ops_runs(session, *failed_filter),
        active_runs=_ops_runs(session, TaskRun.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value])),
    )


@dataclass
class SchedulerBeat:
    scheduler_id: str
    host: str
    pid: int | None
    started_at: datetime | None
    beat_at: datetime | None


def scheduler_heartbeats(redis_client: Any) -> list[SchedulerBeat]:
    """The scheduler processes alive now (their heartbeat key has not expired), oldest first."""
    from app.services.stats import SCHEDULER_KEY_PREFIX

    keys = sorted(redis_client.scan_iter(match=SCHEDULER_KEY_PREFIX + "*", count=1000))
    if not keys:
        return []
    beats = []
    for key, raw in zip(keys, redis_client.mget(keys), strict=True):
        if not raw:
            continue
        value = json.loads(raw)
        name = key.decode() if isinstance(key, bytes) else str(key)
        beats.append(
            SchedulerBeat(
                scheduler_id=name.removeprefix(SCHEDULER_KEY_PREFIX),
                host=str(value.get("host", "?")),
                pid=value.get("pid"),
                started_at=_from_epoch(value.get("startedAt")),
                beat_at=_from_epoch(value.get("beatAt")),
            )
        )
    return sorted(beats, key=lambda beat: beat.started_at or datetime.max.replace(tzinfo=UTC))


def _from_epoch(value: Any) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if isinstance(value, int | float) else None
