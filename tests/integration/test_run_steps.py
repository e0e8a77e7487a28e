"""Durable steps: every model call is a row, and an attempt resumes from the completed ones."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select, text

from app.models import RunStep, Task, TaskRun
from app.providers.base import ChatMessage, Completion
from app.providers.openai import OpenAIProvider
from app.services.execution import RunEnvironment, execute_run
from tests.integration.conftest import wait_for_runs
from tests.support.openai_stub import OpenAIStub
from tests.support.steps import call_counts, queue_run

GOAL = {"goal": "Compare three vendors", "agentType": "research_agent", "async": True}


def _steps(session_factory, run_id) -> list[RunStep]:
    with session_factory() as session:
        return list(
            session.scalars(
                select(RunStep).where(RunStep.run_id == uuid.UUID(str(run_id))).order_by(RunStep.index)
            )
        )


def test_a_final_call_that_fails_once_replays_the_plan_and_steps_and_calls_final_twice(
    make_account, start_worker, session_factory
):
    account = make_account()
    with OpenAIStub() as stub:
        stub.reply_with(prompt_tokens=11, completion_tokens=7)
        stub.fail_matching("Write the final result", times=1, status=503)
        start_worker(provider=OpenAIProvider(base_url=stub.base_url, api_key=None, default_model="m"))
        run_id = queue_run(session_factory, account.user_id, {**GOAL, "agentConfig": {"maxRetries": 2}})
        (run,) = wait_for_runs(session_factory, [run_id])
        counts = call_counts(stub.requests)

    assert run.status == "completed", run.error
    assert run.attempts == 2
    assert counts == {"plan": 1, "step1": 1, "step2": 1, "final": 2}
    steps = _steps(session_factory, run.id)
    assert [(s.index, s.kind, s.status, s.attempt) for s in steps] == [
        (0, "plan", "completed", 1),
        (1, "step", "completed", 1),
        (2, "step", "completed", 1),
        (3, "final", "completed", 2),
    ]
    assert steps[1].title == "step one"
    assert steps[0].output == '["step one", "step two"]'
    assert all(s.prompt_tokens == 11 and s.completion_tokens == 7 for s in steps)
    assert all(s.latency_ms is not None and s.finished_at is not None for s in steps)
    # Four successful calls; the failed one reported no usage.
    assert run.tokens_used == 4 * 18
    assert (run.prompt_tokens, run.completion_tokens, run.step_count) == (44, 28, 4)
    with session_factory() as session:
        task = session.get(Task, run.task_id)
        assert task is not None
        assert task.tokens_used == 4 * 18
        assert (task.prompt_tokens, task.completion_tokens) == (44, 28)


class _GatedProvider:
    """Answers like the stub's deterministic answers; the first call waits for `release`."""

    name = "gated"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def complete(
        self, messages: Sequence[ChatMessage], *, model, max_tokens, timeout_s, on_delta=None
    ) -> Completion:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(30)
        last = messages[-1].content
        answer = '["one", "two"]' if "JSON array" in last else f"old attempt's answer {self.calls}"
        return Completion(text=answer, prompt_tokens=100, completion_tokens=100, model="gated")


def test_a_paused_attempt_cannot_overwrite_a_newer_attempts_steps_or_outcome(
    make_account, session_factory, settings
):
    account = make_account()
    run_id = queue_run(session_factory, account.user_id, GOAL, send=False)
    gated = _GatedProvider()
    old_env = RunEnvironment(session_factory, gated, settings)  # type: ignore[arg-type]
    paused = threading.Thread(target=execute_run, args=(old_env, run_id), daemon=True)
    paused.start()
    assert gated.entered.wait(10)  # attempt 1 is inside its plan call: "paused"
    with session_factory.begin() as session:  # its lease lapses (its heartbeat stopped, say)
        session.execute(
            text("UPDATE task_runs SET lease_expires_at = now() - interval '1 second' WHERE id = :id"),
            {"id": run_id},
        )
    with OpenAIStub() as stub:
        new_env = RunEnvironment(
            session_factory, OpenAIProvider(base_url=stub.base_url, api_key=None, default_model="m"), settings
        )
        assert execute_run(new_env, run_id) is None
        (run,) = wait_for_runs(session_factory, [run_id])
    assert run.status == "completed"
    assert run.attempts == 2
    result, tokens = run.result, run.tokens_used

    gated.release.set()  # attempt 1 wakes up and tries to record its plan, then go on
    paused.join(10)
    assert not paused.is_alive()
    assert gated.calls == 1  # it stopped at its first write: no further model call
    with session_factory() as session:
        after = session.get(TaskRun, run_id)
        assert after is not None
        assert (after.status, after.attempts, after.result, after.tokens_used) == (
            "completed",
            2,
            result,
            tokens,
        )
    steps = _steps(session_factory, run_id)
    assert {s.attempt for s in steps} == {2}
    assert all("old attempt" not in (s.output or "") for s in steps)
    old_env.leases.close()


def test_heartbeats_renew_the_leases_of_running_runs_in_one_statement(
    make_account, session_factory, settings
):
    account = make_account()
    run_ids = [queue_run(session_factory, account.user_id, GOAL, send=False) for _ in range(3)]
    env = RunEnvironment(session_factory, _GatedProvider(), settings)  # type: ignore[arg-type]
    with session_factory.begin() as session:
        session.execute(
            text(
                "UPDATE task_runs SET status = 'running', attempts = 1, lease_expires_at = now()"
                " WHERE id = ANY(:ids)"
            ),
            {"ids": run_ids},
        )
    with (
        env.leases.holding(run_ids[0], 1),
        env.leases.holding(run_ids[1], 1),
        env.leases.holding(run_ids[2], 7),
    ):
        assert env.leases.renew() == 2  # the third is held under an attempt that is not current
    env.leases.close()
    with session_factory() as session:
        leases = dict(
            session.execute(select(TaskRun.id, TaskRun.lease_expires_at).where(TaskRun.id.in_(run_ids))).all()
        )
    now = leases[run_ids[2]]
    assert leases[run_ids[0]] - now > timedelta(seconds=settings.run_lease_s - 5)
    assert leases[run_ids[1]] - now > timedelta(seconds=settings.run_lease_s - 5)


def test_agentsched_runs_show_prints_the_run_and_its_steps(
    make_account, start_worker, session_factory, capsys
):
    from app.cli import main

    account = make_account()
    start_worker()
    run_id = queue_run(session_factory, account.user_id, GOAL)
    wait_for_runs(session_factory, [run_id])
    assert main(["runs", "show", str(run_id)]) == 0
    printed = capsys.readouterr().out
    assert f"run {run_id}  completed  attempt 1/4" in printed
    for line in ("[0] plan ", "[1] step ", "[2] step ", "[3] final"):
        assert line in printed
    assert "offline provider" in printed  # the outputs, cut to a line each
    assert main(["runs", "show", "not-a-uuid"]) == 2


def test_only_a_watched_run_notifies_its_steps(make_account, session_factory, settings):
    """A NOTIFY serializes commits (a global lock): unwatched runs' step writes send none."""
    import psycopg

    from app.services.run_events import libpq_conninfo
    from app.services.run_steps import watch_run
    from app.services.runs import RUN_EVENTS_CHANNEL
    from app.services.tasks import get_run

    account = make_account()
    env = RunEnvironment(session_factory, _GatedProvider(), settings)  # type: ignore[arg-type]
    env.provider.release.set()  # type: ignore[attr-defined]
    with psycopg.connect(libpq_conninfo(settings.database_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {RUN_EVENTS_CHANNEL}")
        unwatched = queue_run(session_factory, account.user_id, GOAL, send=False)
        execute_run(env, unwatched)
        assert [n.payload for n in listener.notifies(timeout=1.0)] == []

        watched = queue_run(session_factory, account.user_id, GOAL, send=False)
        with session_factory.begin() as session:
            watch_run(session, account.user_id, watched, env.clock.now())
            assert get_run(session, account.user_id, watched).watched_until is not None
        execute_run(env, watched)
        payloads = [n.payload for n in listener.notifies(timeout=1.0, stop_after=100)]
    # the claim, a start and an end per model call (plan, two steps, final)
    assert payloads == [str(watched)] * 9
    env.leases.close()
