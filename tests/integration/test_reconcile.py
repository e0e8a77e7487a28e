"""The reconciler against real Postgres, Redis and a Dramatiq worker: lost, unsent, stuck runs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from actors.sending import send_dispatches
from app.clock import SYSTEM_CLOCK
from app.models import CreditLedgerEntry, TaskRun
from app.services.dispatch import Dispatch
from app.services.reconcile import RECONCILE_LOCK_KEY, ReconcileResult, reconcile
from app.services.scheduling import run_scheduling_pass
from tests.integration.conftest import wait_for_runs
from tests.support.scheduling import Collector, insert_tasks


def real_send(session_factory: sessionmaker[Session]):
    def send(dispatches: Sequence[Dispatch]) -> list[tuple[uuid.UUID, str]]:
        return send_dispatches(session_factory, dispatches, SYSTEM_CLOCK)

    return send


def schedule_runs(
    session_factory: sessionmaker[Session], user_id: uuid.UUID, count: int, *, send=None, **task_options
) -> list[uuid.UUID]:
    """`count` scheduled runs, queued by a real pass (and sent, unless `send` says otherwise)."""
    now = datetime.now(UTC)
    insert_tasks(session_factory, user_id, count, next_run_at=now - timedelta(seconds=1), **task_options)
    run_scheduling_pass(session_factory, now=now, send=send or real_send(session_factory))
    with session_factory() as session:
        return list(session.scalars(select(TaskRun.id)))


def do_reconcile(
    session_factory, redis_client, *, after_s: float = 2.0, grace_ms: int = 1_000
) -> ReconcileResult:
    return reconcile(
        session_factory,
        now=datetime.now(UTC) + timedelta(seconds=after_s),
        redis_client=redis_client,
        send=real_send(session_factory),
        grace_ms=grace_ms,
        lease_grace_ms=2_000,
    )


def charges(session_factory: sessionmaker[Session]) -> dict[uuid.UUID, int]:
    with session_factory() as session:
        rows = session.execute(
            select(CreditLedgerEntry.run_id, func.count())
            .where(CreditLedgerEntry.kind == "charge")
            .group_by(CreditLedgerEntry.run_id)
        ).all()
    return {run_id: count for run_id, count in rows}


def test_runs_whose_messages_redis_lost_all_complete_exactly_once_after_reconcile(
    session_factory, make_account, redis_client, start_worker
):
    account = make_account(plan="enterprise")
    run_ids = schedule_runs(session_factory, account.user_id, 200)
    assert len(run_ids) == 200
    assert redis_client.llen("dramatiq:runs.medium") == 200
    redis_client.flushdb()  # Redis restarted without persistence

    # Within the grace nothing is touched; past it every lost message is sent again.
    assert do_reconcile(session_factory, redis_client, after_s=0, grace_ms=60_000).checked == 0
    result = do_reconcile(session_factory, redis_client)
    assert (result.checked, result.lost, result.unsent, result.sent) == (200, 200, 0, 200)
    assert redis_client.llen("dramatiq:runs.medium") == 200
    again = do_reconcile(session_factory, redis_client)  # the new messages are there: no resend
    assert (again.lost, again.sent) == (0, 0)

    start_worker(threads=8)
    runs = wait_for_runs(session_factory, run_ids, timeout_s=90)
    assert {run.status for run in runs} == {"completed"}
    assert all(run.attempts == 1 for run in runs)
    assert charges(session_factory) == {run_id: 1 for run_id in run_ids}


def test_a_run_whose_message_was_never_sent_is_sent_after_the_grace(
    session_factory, make_account, redis_client, start_worker
):
    account = make_account()
    run_ids = schedule_runs(session_factory, account.user_id, 5, send=Collector())  # the send "crashed"
    # The pass records each run's message id as it creates the run; the send that never happened
    # leaves those ids missing from Redis, so the reconciler takes them for lost.
    with session_factory() as session:
        assert session.scalar(select(func.count()).where(TaskRun.message_id.is_(None))) == 0
    result = do_reconcile(session_factory, redis_client)
    assert (result.unsent, result.lost, result.sent) == (0, 5, 5)
    start_worker()
    runs = wait_for_runs(session_factory, run_ids)
    assert {run.status for run in runs} == {"completed"}
    assert all(run.message_id is not None for run in runs)


def test_a_message_still_in_redis_is_not_sent_again(session_factory, make_account, redis_client):
    account = make_account()
    schedule_runs(session_factory, account.user_id, 10)
    result = do_reconcile(session_factory, redis_client)
    assert (result.checked, result.lost, result.unsent, result.sent) == (10, 0, 0, 0)
    assert redis_client.llen("dramatiq:runs.medium") == 10


def test_a_lost_retry_is_sent_again_with_its_remaining_backoff(session_factory, make_account, redis_client):
    account = make_account()
    [run_id] = schedule_runs(session_factory, account.user_id, 1, priority="high")
    now = datetime.now(UTC)
    with session_factory.begin() as session:  # attempt 1 failed; attempt 2 waits for 30 s
        session.execute(
            text(
                "UPDATE task_runs SET attempts = 1, not_before = :nb, queued_at = :sent,"
                " message_sent_at = :sent WHERE id = :id"
            ),
            {"id": run_id, "nb": now + timedelta(seconds=30), "sent": now - timedelta(seconds=5)},
        )
    redis_client.flushdb()
    result = reconcile(
        session_factory,
        now=now,
        redis_client=redis_client,
        send=real_send(session_factory),
        grace_ms=1_000,
        lease_grace_ms=2_000,
    )
    assert result.lost == 1
    [raw] = redis_client.hvals("dramatiq:runs.high.DQ.msgs")
    message = json.loads(raw)
    assert message["args"] == [str(run_id)]
    assert 28_000 <= message["options"]["eta"] - message["message_timestamp"] <= 30_500
    assert redis_client.llen("dramatiq:runs.high") == 0
    # The delayed message counts as present: the next round leaves it alone.
    later = reconcile(
        session_factory,
        now=now + timedelta(seconds=5),
        redis_client=redis_client,
        send=real_send(session_factory),
        grace_ms=1_000,
        lease_grace_ms=2_000,
    )
    assert (later.lost, later.sent) == (0, 0)


def _worker_died_holding(session_factory: sessionmaker[Session], run_id: uuid.UUID, *, attempts: int) -> None:
    """As if a worker had claimed the run (attempt `attempts`) and died: lease expired."""
    past = datetime.now(UTC) - timedelta(minutes=10)
    with session_factory.begin() as session:
        session.execute(
            text(
                """
                UPDATE task_runs SET status = 'running', attempts = :attempts, started_at = :past,
                       lease_expires_at = :past + interval '1 minute'
                 WHERE id = :id
                """
            ),
            {"id": run_id, "attempts": attempts, "past": past},
        )


@pytest.mark.parametrize(
    ("max_retries", "expected_status", "expected_attempts"),
    # A dead worker's last attempt is failed `worker_lost` with attempts at most maxAttempts.
    [(3, "completed", 2), (0, "failed", 1)],
)
def test_a_run_stuck_running_past_its_lease_is_sent_again_and_ends_per_its_budget(
    session_factory, make_account, redis_client, start_worker, max_retries, expected_status, expected_attempts
):
    account = make_account()
    [run_id] = schedule_runs(session_factory, account.user_id, 1)
    with session_factory.begin() as session:
        session.execute(
            text("UPDATE task_runs SET max_attempts = :n WHERE id = :id"),
            {"n": 1 + max_retries, "id": run_id},
        )
    redis_client.flushdb()  # the dead worker had taken the message
    _worker_died_holding(session_factory, run_id, attempts=1)

    first = do_reconcile(session_factory, redis_client)
    assert (first.stuck, first.sent) == (1, 1)
    second = do_reconcile(session_factory, redis_client)  # its new message waits for a worker
    assert (second.stuck, second.sent) == (0, 0)

    start_worker()
    [run] = wait_for_runs(session_factory, [run_id])
    assert run.status == expected_status
    assert run.attempts == expected_attempts
    if expected_status == "failed":
        assert run.error is not None
        assert run.error["code"] == "worker_lost"


def test_a_stuck_runs_replacement_message_lost_too_is_sent_once_more(
    session_factory, make_account, redis_client
):
    account = make_account()
    [run_id] = schedule_runs(session_factory, account.user_id, 1)
    redis_client.flushdb()
    _worker_died_holding(session_factory, run_id, attempts=1)
    assert do_reconcile(session_factory, redis_client).sent == 1
    redis_client.flushdb()
    assert do_reconcile(session_factory, redis_client, after_s=5).stuck == 1


def test_a_resent_message_never_makes_a_run_execute_twice(
    session_factory, make_account, redis_client, start_worker
):
    """Every run gets a second message while its first is still queued: each still runs once."""
    account = make_account(plan="enterprise")
    run_ids = schedule_runs(session_factory, account.user_id, 60)
    with session_factory.begin() as session:  # the reconciler cannot find them: it sends them all again
        session.execute(text("UPDATE task_runs SET message_id = 'unknown-' || id"))
    result = do_reconcile(session_factory, redis_client)
    assert result.sent == 60
    assert redis_client.llen("dramatiq:runs.medium") == 120
    start_worker(threads=8)
    runs = wait_for_runs(session_factory, run_ids, timeout_s=60)
    from actors import broker

    broker.join("runs.medium", timeout=20_000)  # both messages of every run delivered
    with session_factory() as session:
        runs = list(session.scalars(select(TaskRun).where(TaskRun.id.in_(run_ids))))
    assert {run.status for run in runs} == {"completed"}
    assert all(run.attempts == 1 for run in runs)
    assert charges(session_factory) == {run_id: 1 for run_id in run_ids}


def test_only_one_reconciler_works_at_a_time(session_factory, make_account, redis_client):
    account = make_account()
    schedule_runs(session_factory, account.user_id, 3)
    redis_client.flushdb()
    with session_factory() as holder, holder.begin():
        holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RECONCILE_LOCK_KEY})
        blocked = do_reconcile(session_factory, redis_client)
    assert not blocked.ran
    assert blocked.sent == 0
    assert do_reconcile(session_factory, redis_client).sent == 3


def test_runs_created_while_redis_is_down_are_sent_by_the_reconciler_later(
    session_factory, make_account, redis_client, monkeypatch
):
    import redis

    from actors import broker

    def unreachable(*args, **kwargs):
        raise redis.ConnectionError("Redis is down")

    account = make_account()
    with monkeypatch.context() as patched:
        patched.setattr(broker.client, "pipeline", unreachable)
        patched.setattr(broker.client, "eval", unreachable)
        run_ids = schedule_runs(session_factory, account.user_id, 7)  # the pass itself succeeds
    assert len(run_ids) == 7
    assert redis_client.llen("dramatiq:runs.medium") == 0
    assert do_reconcile(session_factory, redis_client).lost == 7  # recorded ids, not in Redis
    assert redis_client.llen("dramatiq:runs.medium") == 7
