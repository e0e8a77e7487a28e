"""The scheduling pass's batch statement and what it hands the sender.

A batch is claimed grouped by (cron, timezone, next_run_at), its ids and times travel as text,
and one statement advances the tasks, tests the overlap rule, inserts the runs and answers the
queued ones per priority as text (`RecordedRuns`), which the send script splits in Redis.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import dramatiq
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from actors.sending import send_messages
from app.db import driver_sql
from app.models import Task, TaskRun
from app.services import scheduling
from app.services.dispatch import Dispatch, RecordedRuns, actor_name, queue_name
from app.services.scheduling import run_scheduling_pass
from tests.support import plans
from tests.support.scheduling import SLOT, Collector, insert_tasks, task

BACKLOG = 3_000


def _subplans(plan: Any) -> Iterator[str]:
    if isinstance(plan, dict):
        if "Subplan Name" in plan:
            yield plan["Subplan Name"]
        for value in plan.values():
            yield from _subplans(value)
    elif isinstance(plan, list):
        for item in plan:
            yield from _subplans(item)


def _batch_params(session: Session, now: datetime) -> dict[str, Any]:
    """What `_process_batch` binds for the tasks due at `now` (one batch of 200)."""
    groups: Sequence[tuple[str, str, datetime, str, int]] = session.execute(
        scheduling._CLAIM_DUE, {"now": now, "limit": 200}
    ).all()
    ids: list[str] = []
    numbers: list[str] = []
    slots: list[str] = []
    following: list[str] = []
    for number, (_, _, due_since, group_ids, count) in enumerate(groups, 1):
        ids.append(group_ids)
        numbers.append(",".join([str(number)] * count))
        slots.append(due_since.isoformat())
        following.append((due_since + timedelta(minutes=1)).isoformat())
    return {
        "task_ids": ",".join(ids),
        "groups": ",".join(numbers),
        "slots": ",".join(slots),
        "next_run_ats": ",".join(following),
        "now": now,
        "overlap": json.dumps(scheduling.OVERLAP_ERROR),
        "default_retries": 3,
        "default_timeout_ms": 300_000,
    }


def test_the_batch_statement_probes_by_task_under_statistics_from_an_empty_task_runs(
    engine: Engine, session_factory: sessionmaker[Session], make_account: Callable[..., Any]
) -> None:
    """As in a herd: task_runs analyzed while empty, then thousands of runs queued. The overlap
    test must stay one index probe a task (the EXISTS it replaced became a hashed subplan over
    ix_task_runs_unfinished, every queued run read again for each batch), and a batch of 1% of
    the tasks finds them by their primary key (for a larger share of a small table the planner
    rightly prefers a Seq Scan)."""
    account = make_account()
    insert_tasks(session_factory, account.user_id, 20_000, next_run_at=SLOT + timedelta(days=1))
    insert_tasks(session_factory, account.user_id, 200, next_run_at=SLOT)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE tasks, task_runs"))
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO task_runs (task_id, user_id, trigger, status, priority, attempts,
                                       max_attempts, timeout_ms, queued_at)
                SELECT id, user_id, 'api', 'queued', 'medium', 0, 4, 60000, now()
                  FROM tasks WHERE next_run_at > :slot LIMIT :count
                """
            ),
            {"slot": SLOT, "count": BACKLOG},
        )
    with session_factory.begin() as session:
        params = _batch_params(session, SLOT)
        (plan,) = (
            session.connection()
            .exec_driver_sql(
                "EXPLAIN (FORMAT JSON) " + driver_sql(scheduling._CREATE_RUNS, engine.dialect), params
            )
            .one()
        )
    if isinstance(plan, str):
        plan = json.loads(plan)
    # no SubPlan (the old EXISTS, planned as a hashed one), only the statement's CTEs
    assert [name for name in _subplans(plan) if name.startswith("SubPlan")] == [], plan
    scans = list(plans.scans(plan))
    for scan in scans:
        where = f"{scan['Node Type']} on {scan['Relation Name']}"
        if scan["Relation Name"] == "task_runs":
            assert scan.get("Index Name") == "ix_task_runs_active_task_id", (
                f"{where}: {scan.get('Index Name')}"
            )
        elif scan["Relation Name"] == "tasks":
            assert scan.get("Index Name") == "pk_tasks", f"{where}: {scan.get('Index Name')}"
    assert {scan["Relation Name"] for scan in scans} >= {"tasks", "task_runs"}


def test_batches_of_many_schedules_queue_one_run_a_task_with_its_recorded_message(
    session_factory: sessionmaker[Session], make_account: Callable[..., Any]
) -> None:
    account = make_account()
    task_ids: list[uuid.UUID] = []
    for cron in ("* * * * *", "0 * * * *", "0 9 * * *"):
        for tz in ("UTC", "Europe/Paris"):
            for minutes_ago in (0, 5):
                task_ids += insert_tasks(
                    session_factory,
                    account.user_id,
                    3,
                    cron=cron,
                    tz=tz,
                    next_run_at=SLOT - timedelta(minutes=minutes_ago),
                    priority=("urgent", "low")[minutes_ago % 2],
                )
    sent = Collector()
    result = run_scheduling_pass(session_factory, now=SLOT, send=sent, batch_size=5)
    assert (result.tasks_claimed, result.runs_queued) == (len(task_ids), len(task_ids))
    with session_factory() as session:
        runs = {run.id: run for run in session.scalars(select(TaskRun).where(TaskRun.task_id.in_(task_ids)))}
        tasks = {t.id: t for t in session.scalars(select(Task).where(Task.id.in_(task_ids)))}
    assert sorted(run.task_id for run in runs.values()) == sorted(task_ids)  # one run a task
    assert all(t.next_run_at is not None and t.next_run_at > SLOT for t in tasks.values())
    assert sorted(d.run_id for d in sent.dispatches) == sorted(runs)
    for dispatch in sent.dispatches:
        run = runs[dispatch.run_id]
        assert (dispatch.priority, dispatch.message_id) == (run.priority, run.message_id)
        assert run.message_sent_at is not None
        assert run.scheduled_for is not None
        assert run.scheduled_for <= SLOT


def test_every_task_of_a_schedule_that_cannot_fire_is_stopped(
    session_factory: sessionmaker[Session], make_account: Callable[..., Any]
) -> None:
    account = make_account()
    broken = insert_tasks(session_factory, account.user_id, 3, tz="UTC", next_run_at=SLOT)
    fine = insert_tasks(session_factory, account.user_id, 2, next_run_at=SLOT)
    with session_factory.begin() as session:
        session.execute(
            text("UPDATE tasks SET timezone = 'Mars/Olympus' WHERE id = ANY(:ids)"), {"ids": broken}
        )
    result = run_scheduling_pass(session_factory, now=SLOT, send=Collector())
    assert (result.tasks_claimed, result.runs_queued) == (5, 2)
    for task_id in broken:
        stopped = task(session_factory, task_id)
        assert stopped.next_run_at is None
        assert stopped.error is not None
        assert stopped.error["code"] == "invalid_schedule"
    assert all(task(session_factory, task_id).next_run_at == SLOT + timedelta(minutes=1) for task_id in fine)


def test_recorded_runs_are_an_ordinary_sequence_of_dispatches() -> None:
    first, second, third = (uuid.uuid4() for _ in range(3))
    runs = RecordedRuns({"high": f"{first} m-1,{second} m-2", "low": f"{third} m-3"}, 3)
    expected = [
        Dispatch(first, "high", message_id="m-1"),
        Dispatch(second, "high", message_id="m-2"),
        Dispatch(third, "low", message_id="m-3"),
    ]
    assert len(runs) == 3
    assert list(runs) == expected
    assert runs[1] == expected[1]
    assert list(runs[1:]) == expected[1:]
    assert runs.sent() == [(first, "m-1"), (second, "m-2"), (third, "m-3")]
    assert not RecordedRuns({}, 0)


def test_recorded_runs_land_in_redis_as_dramatiq_would_put_them(redis_client: Any) -> None:
    import actors  # noqa: F401  (the broker)

    per_priority = {
        p: [(str(uuid.uuid4()), uuid.uuid4().hex) for _ in range(1_200)] for p in ("urgent", "low")
    }
    runs = RecordedRuns(
        {p: ",".join(f"{run} {mid}" for run, mid in pairs) for p, pairs in per_priority.items()}, 2_400
    )
    sent = send_messages(runs)
    assert sent == runs.sent()
    for priority, pairs in per_priority.items():
        queue = queue_name(priority)
        ids = [m.decode() for m in redis_client.lrange(f"dramatiq:{queue}", 0, -1)]
        assert ids == [mid for _, mid in pairs]  # FIFO, past one unpack chunk
        for run_id, message_id in (pairs[0], pairs[-1]):
            stored = redis_client.hget(f"dramatiq:{queue}.msgs", message_id)
            message = dramatiq.Message.decode(stored)
            assert (
                stored
                == dramatiq.Message(
                    queue_name=queue,
                    actor_name=actor_name(priority),
                    args=(run_id,),
                    kwargs={},
                    options={"redis_message_id": message_id},
                    message_id=message_id,
                    message_timestamp=message.message_timestamp,
                ).encode()
            )
