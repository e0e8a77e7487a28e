"""Concurrent scheduling passes (the scheduler, the cron endpoint) create each run once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from app.models import Task, TaskRun
from app.services import scheduling
from app.services.scheduling import run_scheduling_pass
from tests.support.scheduling import SLOT, Collector, insert_tasks, runs_of


@pytest.mark.parametrize("passes", [2, 5])
def test_concurrent_passes_over_500_due_tasks_create_exactly_500_runs(session_factory, make_account, passes):
    account = make_account()
    insert_tasks(session_factory, account.user_id, 500, next_run_at=SLOT)
    now = SLOT + timedelta(seconds=1)
    send = Collector()
    barrier = threading.Barrier(passes)
    results: list[scheduling.PassResult] = []

    def one_pass() -> None:
        barrier.wait()
        results.append(run_scheduling_pass(session_factory, now=now, send=send, batch_size=40))

    threads = [threading.Thread(target=one_pass) for _ in range(passes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == passes
    assert sum(r.runs_queued for r in results) == 500
    assert sum(r.tasks_claimed for r in results) == 500
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(TaskRun)) == 500
        assert session.scalar(select(func.count(func.distinct(TaskRun.task_id)))) == 500
        assert set(session.scalars(select(TaskRun.scheduled_for).distinct())) == {SLOT}
        assert session.scalar(select(func.min(Task.next_run_at))) == SLOT + timedelta(minutes=1)
    assert len({d.run_id for d in send.dispatches}) == 500


def test_a_pass_racing_a_cron_endpoint_pass_at_another_instant_creates_each_run_once(
    session_factory, make_account
):
    """The endpoint calls the same function with its own clock; the slot is the same either way."""
    account = make_account()
    insert_tasks(session_factory, account.user_id, 500, next_run_at=SLOT)
    barrier = threading.Barrier(2)
    results: list[scheduling.PassResult] = []

    def one_pass(now: datetime, batch_size: int) -> None:
        barrier.wait()
        results.append(run_scheduling_pass(session_factory, now=now, send=Collector(), batch_size=batch_size))

    threads = [
        threading.Thread(target=one_pass, args=(SLOT + timedelta(seconds=0.2), 1000)),
        threading.Thread(target=one_pass, args=(SLOT + timedelta(seconds=20), 25)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.runs_queued for r in results) == 500
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(TaskRun)) == 500
        assert set(session.scalars(select(TaskRun.scheduled_for).distinct())) == {SLOT}


def test_a_pass_racing_the_cron_endpoint_creates_each_run_once(
    client, session_factory, make_account, settings
):
    account = make_account()
    due = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    insert_tasks(session_factory, account.user_id, 500, next_run_at=due)
    barrier = threading.Barrier(2)
    queued: list[int] = []

    def scheduler_pass() -> None:
        barrier.wait()
        queued.append(
            run_scheduling_pass(
                session_factory, now=datetime.now(UTC), send=Collector(), batch_size=50
            ).runs_queued
        )

    def endpoint_pass() -> None:
        barrier.wait()
        secret = settings.cron_secret.get_secret_value()
        response = client.post(
            "/api/cron/check-scheduled-tasks", headers={"Authorization": f"Bearer {secret}"}
        )
        assert response.status_code == 200, response.text
        queued.append(response.json()["runsQueued"])

    threads = [threading.Thread(target=scheduler_pass), threading.Thread(target=endpoint_pass)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(queued) == 2
    assert sum(queued) == 500
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(TaskRun)) == 500
        assert session.scalar(select(func.count(func.distinct(TaskRun.task_id)))) == 500


def test_a_repeated_pass_at_the_same_instant_adds_nothing(session_factory, make_account):
    account = make_account()
    [task_id] = insert_tasks(session_factory, account.user_id, 1, next_run_at=SLOT)
    first = run_scheduling_pass(session_factory, now=SLOT, send=Collector())
    again = run_scheduling_pass(session_factory, now=SLOT, send=Collector())
    assert (first.runs_queued, again.runs_queued, again.tasks_claimed) == (1, 0, 0)
    # Even a task pushed back to an already-run slot gets no second run for it.
    with session_factory.begin() as session:
        session.execute(text("UPDATE tasks SET next_run_at = :slot"), {"slot": SLOT})
        session.execute(
            text("UPDATE task_runs SET status = 'completed', finished_at = :slot"), {"slot": SLOT}
        )
    third = run_scheduling_pass(session_factory, now=SLOT, send=Collector())
    assert (third.tasks_claimed, third.runs_queued) == (1, 0)
    assert len(runs_of(session_factory, task_id)) == 1
