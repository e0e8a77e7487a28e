"""The scheduling pass against the real Postgres: slots, races, missed runs, overlap, DST."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.models import Task, TaskRun
from app.services import scheduling
from app.services.dispatch import Dispatch
from app.services.schedules import apply_schedule
from app.services.scheduling import run_scheduling_pass, scheduling_health

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


# -- sending: pipelined messages are the ones broker.enqueue builds


def _stored_messages(redis_client, key: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(raw) for raw in redis_client.hvals(key)]


def test_pipelined_messages_are_the_ones_broker_enqueue_builds(session_factory, redis_client):
    import dramatiq

    from actors.sending import enqueue_runs
    from app.services.dispatch import actor_name, queue_name

    broker = dramatiq.get_broker()
    run_id = uuid.uuid4()
    plain = dramatiq.Message(
        queue_name=queue_name("high"),
        actor_name=actor_name("high"),
        args=(str(run_id),),
        kwargs={},
        options={},
    )
    broker.enqueue(plain)
    broker.enqueue(plain, delay=60_000)
    [(sent_run, message_id)] = enqueue_runs(broker, [Dispatch(run_id, "high")])
    enqueue_runs(broker, [Dispatch(run_id, "high", delay_ms=60_000)])
    assert sent_run == run_id

    ours, theirs = sorted(
        _stored_messages(redis_client, "dramatiq:runs.high.msgs"), key=lambda m: m["message_id"] != message_id
    )
    assert redis_client.llen("dramatiq:runs.high") == 2
    assert ours["options"] == {"redis_message_id": message_id}
    assert ours["message_id"] == message_id
    assert set(ours) == set(theirs)
    for field in ("queue_name", "actor_name", "args", "kwargs"):
        assert ours[field] == theirs[field]
    assert set(ours["options"]) == set(theirs["options"])

    delayed = _stored_messages(redis_client, "dramatiq:runs.high.DQ.msgs")
    assert redis_client.llen("dramatiq:runs.high.DQ") == 2
    assert [m["queue_name"] for m in delayed] == ["runs.high.DQ", "runs.high.DQ"]
    assert all(set(m["options"]) == {"redis_message_id", "eta"} for m in delayed)
    etas = [m["options"]["eta"] - m["message_timestamp"] for m in delayed]
    assert all(59_000 <= eta <= 61_000 for eta in etas)


def test_scheduled_runs_record_their_messages_and_a_worker_completes_them(
    session_factory, make_account, redis_client, start_worker, settings
):
    from actors.sending import send_dispatches
    from app.clock import SYSTEM_CLOCK
    from tests.integration.conftest import wait_for_runs

    account = make_account()
    now = datetime.now(UTC)
    insert_tasks(session_factory, account.user_id, 40, next_run_at=now - timedelta(seconds=1), priority="low")
    result = run_scheduling_pass(
        session_factory, now=now, send=lambda ds: send_dispatches(session_factory, ds, SYSTEM_CLOCK)
    )
    assert result.runs_queued == 40
    assert redis_client.llen("dramatiq:runs.low") == 40
    with session_factory() as session:
        runs = list(session.scalars(select(TaskRun)))
    assert all(run.message_sent_at is not None for run in runs)
    stored = {key.decode() for key in redis_client.hkeys("dramatiq:runs.low.msgs")}
    assert {run.message_id for run in runs} == stored
    start_worker()
    done = wait_for_runs(session_factory, [run.id for run in runs])
    assert {run.status for run in done} == {"completed"}
    assert all(run.attempts == 1 for run in done)


@pytest.mark.parametrize(
    ("poll_interval", "trigger_text"), [(60, "cron[second='0']"), (5, "interval[0:00:05]")]
)
def test_the_scheduler_jobs_fire_on_the_minute_or_every_poll_interval(settings, poll_interval, trigger_text):
    from apscheduler.schedulers.background import BackgroundScheduler

    from scheduler.jobs import SchedulerContext, add_jobs

    scheduler = BackgroundScheduler(timezone="UTC")
    context = SchedulerContext(
        settings=settings.model_copy(update={"scheduler_poll_interval": poll_interval}),
        session_factory=None,  # type: ignore[arg-type]
        redis_client=None,  # type: ignore[arg-type]
        send=lambda dispatches: [],
    )
    add_jobs(scheduler, context)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert {
        "scheduling_pass",
        "reconcile",
        "status",
        "heartbeat",
        "idempotency_cleanup",
        "webhook_delivery_cleanup",
    } <= set(jobs)
    the_pass = jobs["scheduling_pass"]
    assert str(the_pass.trigger).startswith(trigger_text)
    assert (the_pass.coalesce, the_pass.max_instances, the_pass.misfire_grace_time) == (True, 1, None)
    assert str(jobs["reconcile"].trigger) == f"interval[0:00:{settings.reconcile_interval_s:02d}]"
    assert str(jobs["status"].trigger) == "interval[0:00:30]"
