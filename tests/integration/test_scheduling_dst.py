"""Scheduling passes across daylight-saving changes in America/New_York."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.models import Task
from app.services.schedules import apply_schedule
from app.services.scheduling import run_scheduling_pass
from tests.support.scheduling import Collector, runs_of, task


def _scheduled_task(
    session_factory: sessionmaker[Session], user_id: uuid.UUID, cron: str, tz: str, now: datetime
) -> uuid.UUID:
    """A task scheduled the way the API does it (apply_schedule computes next_run_at)."""
    with session_factory.begin() as session:
        created = Task(
            user_id=user_id,
            title="dst",
            description="goal",
            agent_type="research_agent",
            agent_config={"timeout": 300_000, "maxRetries": 3},
        )
        apply_schedule(created, enabled=True, cron=cron, timezone=tz, now=now)
        session.add(created)
        session.flush()
        return created.id


def _passes(
    session_factory: sessionmaker[Session], start: datetime, end: datetime, step: timedelta
) -> list[Any]:
    """Passes at every `step` from `start` to `end`, as a scheduler polling would make them."""
    results = []
    now = start
    while now <= end:
        results.append(run_scheduling_pass(session_factory, now=now, send=Collector()))
        now += step
    return results


def test_a_spring_forward_slot_in_the_gap_runs_at_three_local(session_factory, make_account):
    account = make_account()
    task_id = _scheduled_task(
        session_factory,
        account.user_id,
        "30 2 * * *",
        "America/New_York",
        datetime(2026, 3, 7, 12, tzinfo=UTC),
    )
    three_edt = datetime(2026, 3, 8, 7, 0, tzinfo=UTC)  # 02:30 does not exist; 03:00 EDT
    assert task(session_factory, task_id).next_run_at == three_edt
    _passes(
        session_factory,
        three_edt - timedelta(minutes=3),
        three_edt + timedelta(minutes=3),
        timedelta(minutes=1),
    )
    [run] = runs_of(session_factory, task_id)
    assert run.scheduled_for == three_edt
    assert task(session_factory, task_id).next_run_at == datetime(2026, 3, 9, 6, 30, tzinfo=UTC)  # 02:30 EDT


def test_an_autumn_repeated_time_fires_once_at_its_first_occurrence(session_factory, make_account):
    account = make_account()
    start = datetime(2026, 10, 31, 12, tzinfo=UTC)
    daily = _scheduled_task(session_factory, account.user_id, "30 1 * * *", "America/New_York", start)
    hourly = _scheduled_task(session_factory, account.user_id, "30 * * * *", "America/New_York", start)
    with session_factory.begin() as session:  # the hourly one's runs finish at once
        session.execute(
            text("UPDATE tasks SET next_run_at = '2026-11-01T04:30:00Z' WHERE id = :id"), {"id": hourly}
        )
    # 00:00 EDT .. 03:00 EST, a pass every 5 minutes; runs complete between passes.
    now = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)
    while now <= datetime(2026, 11, 1, 8, 0, tzinfo=UTC):
        run_scheduling_pass(session_factory, now=now, send=Collector())
        with session_factory.begin() as session:
            session.execute(text("UPDATE task_runs SET status = 'completed' WHERE status = 'queued'"))
        now += timedelta(minutes=5)
    first_130 = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT; 06:30Z is 01:30 EST
    assert [r.scheduled_for for r in runs_of(session_factory, daily)] == [first_130]
    assert task(session_factory, daily).next_run_at == datetime(2026, 11, 2, 6, 30, tzinfo=UTC)
    hourly_slots = [r.scheduled_for for r in runs_of(session_factory, hourly)]
    assert hourly_slots == [
        datetime(2026, 11, 1, 4, 30, tzinfo=UTC),  # 00:30 EDT
        first_130,  # 01:30 EDT; the repeated 01:30 EST has no run
        datetime(2026, 11, 1, 7, 30, tzinfo=UTC),  # 02:30 EST
    ]


def test_a_service_starting_inside_the_repeated_hour_runs_the_first_occurrence_once(
    session_factory, make_account
):
    account = make_account()
    task_id = _scheduled_task(
        session_factory,
        account.user_id,
        "30 1 * * *",
        "America/New_York",
        datetime(2026, 10, 31, 12, tzinfo=UTC),
    )
    inside_second_pass = datetime(2026, 11, 1, 6, 40, tzinfo=UTC)  # 01:40 EST, down since before 01:30 EDT
    result = run_scheduling_pass(session_factory, now=inside_second_pass, send=Collector())
    assert (result.runs_queued, result.missed_slots) == (1, 0)
    assert [r.scheduled_for for r in runs_of(session_factory, task_id)] == [
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    ]
    assert task(session_factory, task_id).next_run_at == datetime(2026, 11, 2, 6, 30, tzinfo=UTC)
