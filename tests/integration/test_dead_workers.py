"""Messages a dead worker had prefetched go back on their queues at the reconciler's next round."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from app.models import TaskRun
from app.services.dead_workers import record_broker_heartbeat
from app.services.dispatch import queue_name
from app.services.reconcile import reconcile
from tests.integration.conftest import wait_for_runs
from tests.integration.test_reconcile import real_send
from tests.support.steps import queue_run

GOAL = {"goal": "Compare three vendors", "agentType": "research_agent", "async": True}
TIMEOUT_MS = 30_000


def _take_like_a_worker(redis_client, worker_id: str, queue: str, now_ms: int) -> list[str]:
    """What a consumer's fetch does (dispatch.lua): pop ids, add them to the worker's ack set."""
    ids = []
    while (message_id := redis_client.lpop(f"dramatiq:{queue}")) is not None:
        ids.append(message_id.decode())
        redis_client.sadd(f"dramatiq:__acks__.{worker_id}.{queue}", message_id)
    record_broker_heartbeat(redis_client, worker_id, now_ms)
    return ids


def _reconcile(session_factory, redis_client, now: datetime):
    return reconcile(
        session_factory,
        now=now,
        redis_client=redis_client,
        send=real_send(session_factory),
        grace_ms=60_000,  # the queued runs are far younger: only the dead-worker rule applies
        lease_grace_ms=2_000,
        dead_worker_ms=TIMEOUT_MS,
    )


def test_a_dead_workers_prefetched_messages_are_put_back_and_run(
    session_factory, make_account, redis_client, start_worker
):
    account = make_account()
    run_ids = [queue_run(session_factory, account.user_id, GOAL) for _ in range(3)]
    queue = queue_name("medium")
    now = datetime.now(UTC)
    held = _take_like_a_worker(redis_client, "dead-worker", queue, int(now.timestamp() * 1000))
    assert len(held) == 3
    record_broker_heartbeat(redis_client, "live-worker", int(now.timestamp() * 1000) + TIMEOUT_MS)

    alive = _reconcile(session_factory, redis_client, now + timedelta(milliseconds=TIMEOUT_MS // 2))
    assert alive.requeued == 0  # its heartbeat is recent: not dead yet
    assert redis_client.llen(f"dramatiq:{queue}") == 0

    dead = _reconcile(session_factory, redis_client, now + timedelta(milliseconds=TIMEOUT_MS + 1_000))
    assert dead.requeued == 3
    assert (dead.lost, dead.unsent) == (0, 0)  # same messages, same ids: nothing sent twice
    assert sorted(m.decode() for m in redis_client.lrange(f"dramatiq:{queue}", 0, -1)) == sorted(held)
    assert not redis_client.exists(f"dramatiq:__acks__.dead-worker.{queue}")
    assert redis_client.zscore("dramatiq:__heartbeats__", "dead-worker") is None
    assert redis_client.zscore("dramatiq:__heartbeats__", "live-worker") is not None

    start_worker()
    runs = wait_for_runs(session_factory, run_ids)
    assert [run.status for run in runs] == ["completed"] * 3
    with session_factory() as session:
        message_ids = {str(m) for m in session.scalars(select(TaskRun.message_id))}
    assert message_ids == set(held)
