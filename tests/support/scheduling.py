"""Helpers for the scheduling tests: due tasks inserted in bulk, a recording `send`, and reads
of a task and its runs."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from app.models import Task, TaskRun
from app.services.dispatch import Dispatch

_INSERT_TASKS = text(
    """
    INSERT INTO tasks (user_id, title, description, agent_type, status, priority, schedule,
                       schedule_enabled, cron, timezone, next_run_at, agent_config)
    SELECT :user_id, 'task ' || g, 'Check competitor pricing', 'research_agent', 'pending',
           :priority,
           jsonb_build_object('enabled', true, 'cron', CAST(:cron AS text), 'timezone', CAST(:tz AS text)),
           true, :cron, :tz, :next_run_at, '{"timeout": 300000, "maxRetries": 3}'
      FROM generate_series(1, :count) AS g
    RETURNING id
    """
)


def insert_tasks(
    session_factory: sessionmaker[Session],
    user_id: uuid.UUID,
    count: int,
    *,
    cron: str = "* * * * *",
    tz: str = "UTC",
    next_run_at: datetime,
    priority: str = "medium",
) -> list[uuid.UUID]:
    """Scheduled tasks inserted in one statement, all due at `next_run_at`."""
    with session_factory.begin() as session:
        rows = session.execute(
            _INSERT_TASKS,
            {
                "user_id": user_id,
                "count": count,
                "cron": cron,
                "tz": tz,
                "next_run_at": next_run_at,
                "priority": priority,
            },
        )
        return [row[0] for row in rows]


class Collector:
    """A `send` that records what it was given (thread-safe)."""

    def __init__(self) -> None:
        self.dispatches: list[Dispatch] = []
        self._lock = threading.Lock()

    def __call__(self, dispatches: Sequence[Dispatch]) -> None:
        with self._lock:
            self.dispatches.extend(dispatches)


def runs_of(session_factory: sessionmaker[Session], task_id: uuid.UUID) -> list[TaskRun]:
    with session_factory() as session:
        return list(
            session.scalars(select(TaskRun).where(TaskRun.task_id == task_id).order_by(TaskRun.scheduled_for))
        )


def task(session_factory: sessionmaker[Session], task_id: uuid.UUID) -> Task:
    with session_factory() as session:
        found = session.get(Task, task_id)
        assert found is not None
        return found


SLOT = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
