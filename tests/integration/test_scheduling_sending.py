"""Sending a pass's runs: pipelined messages match broker.enqueue's and a worker completes them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from app.models import TaskRun
from app.services.dispatch import Dispatch
from app.services.scheduling import run_scheduling_pass
from tests.support.scheduling import insert_tasks


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
