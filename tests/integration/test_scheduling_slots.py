"""Which slots a scheduling pass runs: the latest missed one, none while a run overlaps,
none for a schedule that cannot fire, and the next pass after a manual update.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from app.services.scheduling import run_scheduling_pass
from tests.support.scheduling import SLOT, Collector, insert_tasks, runs_of, task


def test_after_downtime_only_the_latest_missed_slot_runs(session_factory, make_account):
    account = make_account()
    [task_id] = insert_tasks(session_factory, account.user_id, 1, cron="*/5 * * * *", next_run_at=SLOT)
    now = SLOT + timedelta(minutes=12, seconds=30)  # slots 9:00, 9:05 and 9:10 have passed
    send = Collector()
    result = run_scheduling_pass(session_factory, now=now, send=send)
    assert (result.runs_queued, result.missed_slots) == (1, 2)
    [run] = runs_of(session_factory, task_id)
    assert run.scheduled_for == SLOT + timedelta(minutes=10)
    assert run.trigger == "schedule"
    assert run.status == "queued"
    assert run.priority == "medium"
    assert (run.max_attempts, run.timeout_ms) == (4, 300_000)
    assert [d.run_id for d in send.dispatches] == [run.id]
    assert task(session_factory, task_id).next_run_at == SLOT + timedelta(minutes=15)
    assert task(session_factory, task_id).status == "pending"


def test_a_slot_that_comes_while_the_previous_run_is_queued_or_running_is_skipped(
    session_factory, make_account
):
    account = make_account()
    [task_id] = insert_tasks(session_factory, account.user_id, 1, next_run_at=SLOT)
    run_scheduling_pass(session_factory, now=SLOT, send=Collector())  # 9:00 queued, never picked up
    send = Collector()
    result = run_scheduling_pass(session_factory, now=SLOT + timedelta(minutes=1), send=send)
    assert (result.runs_queued, result.runs_skipped) == (0, 1)
    assert send.dispatches == []
    first, skipped = runs_of(session_factory, task_id)
    assert first.status == "queued"
    assert skipped.status == "skipped"
    assert skipped.scheduled_for == SLOT + timedelta(minutes=1)
    assert skipped.finished_at == SLOT + timedelta(minutes=1)
    assert skipped.error is not None
    assert skipped.error["code"] == "overlap"
    # Still running at 9:02: skipped again; once it has finished, 9:03 runs.
    with session_factory.begin() as session:
        session.execute(text("UPDATE task_runs SET status = 'running' WHERE id = :id"), {"id": first.id})
    assert (
        run_scheduling_pass(session_factory, now=SLOT + timedelta(minutes=2), send=Collector()).runs_skipped
        == 1
    )
    with session_factory.begin() as session:
        session.execute(text("UPDATE task_runs SET status = 'completed' WHERE id = :id"), {"id": first.id})
    assert (
        run_scheduling_pass(session_factory, now=SLOT + timedelta(minutes=3), send=Collector()).runs_queued
        == 1
    )
    assert [r.status for r in runs_of(session_factory, task_id)] == [
        "completed",
        "skipped",
        "skipped",
        "queued",
    ]


def test_the_troubleshooting_update_makes_a_task_run_at_the_next_pass(client, session_factory, make_account):
    account = make_account()
    body = {
        "goal": "Check competitor pricing and send report",
        "agentType": "research_agent",
        "schedule": {"enabled": True, "cron": "0 9 * * *", "timezone": "America/New_York"},
    }
    created = client.post("/api/agent/execute", json=body, headers=account.headers)
    assert created.status_code == 201, created.text
    task_id = uuid.UUID(created.json()["taskId"])
    now = datetime.now(UTC)
    assert run_scheduling_pass(session_factory, now=now, send=Collector()).runs_queued == 0
    with session_factory.begin() as session:
        session.execute(
            text("UPDATE tasks SET next_run_at = now() - interval '1 minute' WHERE id = :id"), {"id": task_id}
        )
    send = Collector()
    result = run_scheduling_pass(session_factory, now=datetime.now(UTC), send=send)
    assert result.runs_queued == 1
    [run] = runs_of(session_factory, task_id)
    assert run.status == "queued"
    assert [d.run_id for d in send.dispatches] == [run.id]
    after = task(session_factory, task_id)
    assert after.next_run_at is not None
    assert after.next_run_at > now
    assert after.status == "pending"


def test_a_schedule_that_cannot_fire_is_stopped_with_a_reason(session_factory, make_account):
    account = make_account()
    [broken, fine] = insert_tasks(session_factory, account.user_id, 2, next_run_at=SLOT)
    with session_factory.begin() as session:
        session.execute(text("UPDATE tasks SET timezone = 'Mars/Olympus' WHERE id = :id"), {"id": broken})
    result = run_scheduling_pass(session_factory, now=SLOT, send=Collector())
    assert (result.tasks_claimed, result.runs_queued) == (2, 1)
    stopped = task(session_factory, broken)
    assert stopped.next_run_at is None
    assert stopped.error is not None
    assert stopped.error["code"] == "invalid_schedule"
    assert len(runs_of(session_factory, fine)) == 1
