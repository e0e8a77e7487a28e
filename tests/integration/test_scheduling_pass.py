"""The scheduling pass's mechanics: one computation per expression, messages after commit, the
health counts and the claim query's index.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from unittest import mock

from sqlalchemy import func, select, text

from app.models import TaskRun
from app.services import scheduling
from app.services.dispatch import Dispatch
from app.services.scheduling import run_scheduling_pass, scheduling_health
from tests.support.scheduling import SLOT, Collector, insert_tasks


def test_a_burst_computes_each_expression_once_not_once_per_task(session_factory, make_account):
    account = make_account()
    insert_tasks(session_factory, account.user_id, 300, cron="*/15 * * * *", next_run_at=SLOT)
    insert_tasks(
        session_factory, account.user_id, 200, cron="0 11 * * *", tz="Europe/Paris", next_run_at=SLOT
    )
    with (
        mock.patch.object(
            scheduling, "latest_fire_at_or_before", wraps=scheduling.latest_fire_at_or_before
        ) as latest,
        mock.patch.object(scheduling, "next_fire", wraps=scheduling.next_fire) as following,
    ):
        result = run_scheduling_pass(
            session_factory, now=SLOT + timedelta(seconds=5), send=Collector(), batch_size=100
        )
    assert result.runs_queued == 500
    assert latest.call_count == 2
    # One next fire per expression, plus one per group to count missed slots (none here).
    assert following.call_count == 4


def test_messages_are_sent_after_the_runs_are_committed(session_factory, make_account):
    account = make_account()
    insert_tasks(session_factory, account.user_id, 30, next_run_at=SLOT)
    seen: list[int] = []

    def send(dispatches: Sequence[Dispatch]) -> None:
        with session_factory() as session:  # another connection sees only committed rows
            seen.append(
                session.scalar(select(func.count()).where(TaskRun.id.in_([d.run_id for d in dispatches])))
                or 0
            )

    run_scheduling_pass(session_factory, now=SLOT, send=send, batch_size=10)
    assert seen == [10, 10, 10]


def test_scheduling_health_counts_scheduled_and_due_tasks(session_factory, make_account):
    account = make_account()
    insert_tasks(session_factory, account.user_id, 3, next_run_at=SLOT)
    insert_tasks(session_factory, account.user_id, 2, next_run_at=SLOT + timedelta(hours=1))
    with session_factory() as session:
        health = scheduling_health(session, SLOT + timedelta(seconds=1))
    assert health == {
        "status": "healthy",
        "scheduledTasks": 5,
        "tasksCurrentlyDue": 3,
        "timestamp": "2026-05-04T09:00:01.000Z",
    }


def test_the_claim_query_uses_the_schedule_index(session_factory, make_account):
    account = make_account()
    far = datetime(2030, 1, 1, tzinfo=UTC)
    insert_tasks(session_factory, account.user_id, 20_000, next_run_at=far)
    insert_tasks(session_factory, account.user_id, 5, next_run_at=SLOT)
    with session_factory.begin() as session:
        session.execute(
            text(
                "UPDATE tasks SET schedule_enabled = false WHERE ctid IN (SELECT ctid FROM tasks LIMIT 5000)"
            )
        )
        session.execute(text("ANALYZE tasks"))
    with session_factory() as session:
        plan = "\n".join(
            row[0]
            for row in session.execute(
                text("EXPLAIN " + str(scheduling._CLAIM_DUE)), {"now": SLOT, "limit": 1000}
            )
        )
    assert "Index Cond: ((schedule_enabled = true) AND (next_run_at <=" in plan, plan
    assert "on ix_tasks_schedule_enabled_next_run_at" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert "LockRows" in plan
