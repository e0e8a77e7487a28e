"""Queue statistics and the status block, from real Postgres rows and real Redis queues."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from actors.sending import enqueue_runs
from app.services.dispatch import Dispatch
from app.services.stats import (
    clear_scheduler_heartbeat,
    format_status_block,
    queue_stats,
    record_missed_slots,
    record_scheduler_heartbeat,
)
from tests.support.scheduling import insert_tasks

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)

_ADD_RUN = text(
    """
    INSERT INTO task_runs (id, task_id, user_id, trigger, scheduled_for, status, priority, attempts,
                           max_attempts, timeout_ms, queued_at, started_at, finished_at)
    VALUES (:id, :task_id, :user_id, :trigger, :scheduled_for, :status, :priority, 1, 4, 300000,
            :queued_at, :started_at, :finished_at)
    """
)


def add_run(
    session_factory: sessionmaker[Session],
    task_id: uuid.UUID,
    user_id: uuid.UUID,
    *,
    priority: str,
    status: str,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    late_ms: int | None = None,
) -> uuid.UUID:
    """A run row; with `late_ms` it is a scheduled run that started that long after its slot."""
    run_id = uuid.uuid4()
    scheduled_for = None if late_ms is None or started_at is None else started_at - late_ms * MS
    with session_factory.begin() as session:
        session.execute(
            _ADD_RUN,
            {
                "id": run_id,
                "task_id": task_id,
                "user_id": user_id,
                "trigger": "api" if late_ms is None else "schedule",
                "scheduled_for": scheduled_for,
                "status": status,
                "priority": priority,
                "queued_at": NOW - timedelta(hours=3),
                "started_at": started_at,
                "finished_at": finished_at,
            },
        )
    return run_id


def test_queue_stats_count_redis_queues_and_todays_runs_per_priority(
    session_factory, make_account, redis_client
):
    from actors import broker

    user = make_account().user_id
    [task] = insert_tasks(session_factory, user, 1, next_run_at=NOW + timedelta(days=1))
    half_hour_ago, ten_min_ago = NOW - timedelta(minutes=30), NOW - timedelta(minutes=10)
    for late in (100, 200):
        add_run(
            session_factory,
            task,
            user,
            priority="high",
            status="completed",
            started_at=half_hour_ago,
            finished_at=half_hour_ago + timedelta(minutes=1),
            late_ms=late,
        )
    add_run(
        session_factory,
        task,
        user,
        priority="high",
        status="completed",  # yesterday
        started_at=NOW - timedelta(hours=13),
        finished_at=NOW - timedelta(hours=12, minutes=59),
        late_ms=5,
    )
    add_run(
        session_factory,
        task,
        user,
        priority="high",
        status="completed",  # today, outside the hour
        started_at=NOW - timedelta(hours=2),
        finished_at=NOW - timedelta(hours=2) + MS,
        late_ms=90_000,
    )
    add_run(
        session_factory,
        task,
        user,
        priority="low",
        status="failed",
        started_at=ten_min_ago,
        finished_at=ten_min_ago + MS,
    )
    for late in (300, 400, 1000):
        add_run(
            session_factory,
            task,
            user,
            priority="medium",
            status="running",
            started_at=ten_min_ago,
            late_ms=late,
        )
    for _ in range(2):
        add_run(
            session_factory,
            task,
            user,
            priority="medium",
            status="skipped",
            finished_at=NOW - timedelta(hours=1),
        )
    queued = [add_run(session_factory, task, user, priority="urgent", status="queued") for _ in range(3)]
    enqueue_runs(broker, [Dispatch(queued[0], "urgent"), Dispatch(queued[1], "urgent")])
    enqueue_runs(broker, [Dispatch(queued[2], "urgent", delay_ms=60_000)])
    record_missed_slots(redis_client, 4, NOW)
    record_missed_slots(redis_client, 1, NOW)
    record_missed_slots(redis_client, 7, NOW - timedelta(days=1))
    record_scheduler_heartbeat(redis_client, "test-a", NOW - timedelta(seconds=125), ttl_s=30)
    record_scheduler_heartbeat(redis_client, "test-b", NOW - timedelta(seconds=5), ttl_s=30)

    with session_factory() as session:
        stats = queue_stats(redis_client, session, NOW)

    zero = {"waiting": 0, "active": 0, "completed": 0, "failed": 0, "delayed": 0}
    assert stats["queues"] == {
        "urgent": {**zero, "waiting": 2, "delayed": 1},
        "high": {**zero, "completed": 3},
        "medium": {**zero, "active": 3},
        "low": {**zero, "failed": 1},
    }
    assert stats["totals"] == {"waiting": 2, "active": 3, "completed": 3, "failed": 1, "delayed": 1}
    assert stats["orchestrator"] == {
        "running": True,
        "activeAgents": 3,
        "queuedTasks": 3,
        "completedToday": 3,
        "failedToday": 1,
        "uptimeSeconds": 125,
    }
    # percentile_cont over 100, 200, 300, 400, 1000 ms: the median and 400 + 0.96 * 600.
    assert stats["lateness"] == {"p50Ms": 300, "p99Ms": 976, "samples": 5}
    assert stats["slots"] == {"skipped": 2, "missed": 5}
    assert stats["flowControl"] == {
        "waitingForSlot": 0,
        "waitingForProviderBudget": 0,
        "providerRateLimitedToday": 0,
    }

    block = format_status_block(stats)
    assert block.splitlines() == [
        "Orchestrator status",
        "  Running:          yes (uptime 0h 02m 05s)",
        "  Active agents:    3",
        "  Queued tasks:     3",
        "  Completed today:  3",
        "  Failed today:     1",
        "  Lateness (1 h):   p50 300 ms, p99 976 ms (5 runs)",
        "  Slots today:      2 skipped (overlap), 5 missed",
        "  Flow control:     0 run(s) waiting for a user slot, 0 call(s) waiting for the provider "
        "budget, 0 provider 429(s) today",
        "  queue     waiting   active  completed   failed  delayed",
        "  urgent          2        0          0        0        1",
        "  high            0        0          3        0        0",
        "  medium          0        3          0        0        0",
        "  low             0        0          0        1        0",
        "  total           2        3          3        1        1",
    ]


def test_with_no_scheduler_alive_and_nothing_run_the_figures_are_zero(session_factory, redis_client):
    record_scheduler_heartbeat(redis_client, "gone", NOW, ttl_s=30)
    clear_scheduler_heartbeat(redis_client, "gone")
    with session_factory() as session:
        stats = queue_stats(redis_client, session, NOW)
    assert stats["orchestrator"]["running"] is False
    assert stats["orchestrator"]["uptimeSeconds"] == 0
    assert stats["totals"] == {"waiting": 0, "active": 0, "completed": 0, "failed": 0, "delayed": 0}
    assert stats["lateness"] == {"p50Ms": None, "p99Ms": None, "samples": 0}
    assert stats["slots"] == {"skipped": 0, "missed": 0}
    block = format_status_block(stats)
    assert "  Running:          no" in block.splitlines()
    assert "  Lateness (1 h):   no scheduled run started in the last hour" in block.splitlines()


def test_a_pass_records_its_missed_slots_for_the_day(session_factory, make_account, redis_client):
    from app.services.scheduling import run_scheduling_pass

    user = make_account().user_id
    slot = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    insert_tasks(session_factory, user, 3, cron="*/10 * * * *", next_run_at=slot)
    result = run_scheduling_pass(
        session_factory, now=slot + timedelta(minutes=35), send=lambda _: None, redis_client=redis_client
    )
    assert result.missed_slots == 9  # 9:00, 9:10, 9:20 for each of three tasks; 9:30 ran
    with session_factory() as session:
        assert queue_stats(redis_client, session, slot)["slots"]["missed"] == 9
