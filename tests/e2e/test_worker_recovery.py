"""A worker killed with `kill -9`: its runs resume on another worker within seconds, from their
recorded steps, whatever their timeouts; and a worker asked to stop hands its runs back."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from sqlalchemy import func, select

from app.models import CreditLedgerEntry, TaskRun
from tests.e2e.conftest import Process, Spawn, wait_until
from tests.support.openai_stub import OpenAIStub
from tests.support.steps import call_counts, queue_run

pytestmark = pytest.mark.e2e

LEASE_S, HEARTBEAT_S, RECONCILE_S = 6, 1, 2
STOP_TEST_LEASE_S = 60
ONE_HOUR_MS = 3_600_000
GOAL = {
    "goal": "Compare three vendors",
    "agentType": "research_agent",
    "async": True,
    "agentConfig": {"timeout": ONE_HOUR_MS},
}


def _env(stub: OpenAIStub) -> dict[str, str]:
    return {
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": stub.base_url,
        "LLM_STREAM": "false",
        "RUN_LEASE_S": str(LEASE_S),
        "RUN_HEARTBEAT_S": str(HEARTBEAT_S),
        "RECONCILE_INTERVAL_S": str(RECONCILE_S),
        "SCHEDULER_POLL_INTERVAL": "5",
    }


def _worker(spawn: Spawn, name: str, stub: OpenAIStub, threads: int) -> Process:
    return spawn(
        name, "-m", "dramatiq", "actors", "--processes", "1", "--threads", str(threads), env=_env(stub)
    )


def _runs(session_factory, run_ids) -> list[TaskRun]:
    with session_factory() as session:
        return list(session.scalars(select(TaskRun).where(TaskRun.id.in_(run_ids))))


def _charges(session_factory, run_id: uuid.UUID) -> int:
    with session_factory() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(CreditLedgerEntry).where(CreditLedgerEntry.run_id == run_id)
            )
            or 0
        )


def test_a_worker_killed_during_step_3_of_5_resumes_on_another_worker_from_step_3(
    spawn: Spawn, make_account, session_factory
):
    account = make_account()
    with OpenAIStub() as stub:
        stub.plan_with(["one", "two", "three", "four", "five"])
        stub.delay(0.4)
        scheduler = spawn("scheduler", "-m", "scheduler", env=_env(stub))
        first = _worker(spawn, "worker-1", stub, threads=2)
        run_id = queue_run(session_factory, account.user_id, GOAL)
        logs = lambda: "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in (scheduler, first))  # noqa: E731

        wait_until(lambda: call_counts(stub.requests)["step3"] == 1, timeout_s=60, what="step 3", logs=logs)
        os.killpg(first.popen.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        first.popen.wait(10)
        second = _worker(spawn, "worker-2", stub, threads=2)

        def resumed() -> bool:
            (run,) = _runs(session_factory, [run_id])
            return run.status == "running" and run.attempts == 2

        wait_until(resumed, timeout_s=60, what="the run running again", logs=logs)
        resumed_after_s = time.monotonic() - killed_at
        wait_until(
            lambda: _runs(session_factory, [run_id])[0].status == "completed",
            timeout_s=60,
            what="the run's completion",
            logs=lambda: logs() + second.log()[-3000:],
        )
        counts = call_counts(stub.requests)

    # A 1-hour timeout does not matter: the lease (RUN_LEASE_S) and one reconciler round do.
    assert resumed_after_s < LEASE_S + RECONCILE_S + 5, resumed_after_s
    assert counts == {"plan": 1, "step1": 1, "step2": 1, "step3": 2, "step4": 1, "step5": 1, "final": 1}
    (run,) = _runs(session_factory, [run_id])
    assert run.attempts == 2  # a worker crash counts an attempt
    assert _charges(session_factory, run_id) == 1


def test_runs_prefetched_by_a_killed_worker_are_taken_by_another_within_the_lease(
    spawn: Spawn, make_account, session_factory, redis_client
):
    account = make_account()
    with OpenAIStub() as stub:
        stub.delay(0.5)
        scheduler = spawn("scheduler", "-m", "scheduler", env=_env(stub))
        first = _worker(spawn, "worker-1", stub, threads=1)  # one thread: the others wait prefetched
        run_ids = [
            queue_run(session_factory, account.user_id, {**GOAL, "agentConfig": {"timeout": ONE_HOUR_MS}})
            for _ in range(3)
        ]
        logs = lambda: "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in (scheduler, first))  # noqa: E731

        def prefetched() -> bool:
            # One thread: worker 1 runs one and holds another (its prefetch is 2 per thread).
            held = sum(redis_client.scard(key) for key in redis_client.scan_iter(match="dramatiq:__acks__.*"))
            return held == 2 and len(stub.requests) >= 1

        wait_until(prefetched, timeout_s=60, what="worker 1 running one run and holding another", logs=logs)
        os.killpg(first.popen.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        first.popen.wait(10)
        _worker(spawn, "worker-2", stub, threads=3)

        def all_completed() -> bool:
            return all(run.status == "completed" for run in _runs(session_factory, run_ids))

        wait_until(all_completed, timeout_s=90, what="all three runs completed", logs=logs)
        completed_after_s = time.monotonic() - killed_at

    # Dramatiq's own cleanup of a dead worker's messages took minutes; here it is the lease.
    assert completed_after_s < LEASE_S + RECONCILE_S + 15, completed_after_s
    assert all(_charges(session_factory, run_id) == 1 for run_id in run_ids)
    assert not list(redis_client.scan_iter(match="dramatiq:__acks__.*")), "a dead worker's ack set was left"


@pytest.mark.parametrize(("delay_s", "grace_s", "step1_calls"), [(1.5, 20, 1), (6.0, 1, 2)])
def test_sigterm_to_the_process_group_lets_steps_finish_within_the_grace_then_hands_runs_back(
    spawn: Spawn, make_account, session_factory, delay_s, grace_s, step1_calls
):
    account = make_account()
    with OpenAIStub() as stub:
        # A long lease: a run resumed well before it lapses was handed back, not found lost.
        env = {**_env(stub), "WORKER_STOP_GRACE_S": str(grace_s), "RUN_LEASE_S": str(STOP_TEST_LEASE_S)}
        first = spawn("worker-1", "-m", "dramatiq", "actors", "--processes", "1", "--threads", "2", env=env)
        stub.delay(delay_s)
        run_ids = [queue_run(session_factory, account.user_id, GOAL) for _ in range(2)]
        wait_until(
            lambda: call_counts(stub.requests)["step1"] == 2, timeout_s=60, what="two steps", logs=first.log
        )
        stopped_at = time.monotonic()
        os.killpg(first.popen.pid, signal.SIGTERM)  # as systemd, Ctrl-C or ./run dev stopping do
        assert first.popen.wait(60) == 0, first.log()  # a clean exit, not "Killing worker process"
        stop_s = time.monotonic() - stopped_at
        assert "Killing worker process" not in first.log()
        runs = _runs(session_factory, run_ids)
        assert [(run.status, run.attempts, run.lease_expires_at) for run in runs] == [("queued", 0, None)] * 2

        second = spawn("worker-2", "-m", "dramatiq", "actors", "--processes", "1", "--threads", "2", env=env)
        stub.delay(0)
        # From worker 2's boot (its start-up on a busy machine is not what this measures).
        wait_until(
            lambda: "worker starting" in second.log(), timeout_s=60, what="worker 2 boot", logs=second.log
        )
        handed_back_at = time.monotonic()
        wait_until(
            lambda: all(run.status == "completed" for run in _runs(session_factory, run_ids)),
            timeout_s=60,
            what="both runs completed by worker 2",
            logs=second.log,
        )
        resumed_in_s = time.monotonic() - handed_back_at
        counts = call_counts(stub.requests)

    assert stop_s < min(delay_s, grace_s) + 5, stop_s
    assert resumed_in_s < STOP_TEST_LEASE_S / 2, resumed_in_s  # no waiting for a lease to lapse
    assert counts["plan"] == 2  # never planned again
    assert counts["step1"] == 2 * step1_calls  # finished within the grace, or cut and redone
    assert all(run.attempts == 1 for run in _runs(session_factory, run_ids))  # no attempt used up
