"""Streamed answers: pieces to the run's Redis stream, exact tokens, estimates, cut streams."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, text

from app.models import RunStep, Task, TaskRun
from app.providers.openai import OpenAIProvider
from app.services.execution import RunEnvironment, execute_run
from app.services.run_deltas import DELTA_TTL_S, DeltaPublisher, deltas_key
from tests.integration.conftest import wait_for_runs
from tests.support.openai_stub import OpenAIStub
from tests.support.steps import call_counts, queue_run

GOAL = {"goal": "Compare three vendors", "agentType": "research_agent", "async": True}


@pytest.fixture
def stub():
    with OpenAIStub() as running:
        yield running


def _run_to_the_end(session_factory, settings, redis_client, stub, account) -> uuid.UUID:
    """Execute the run's attempts in this thread (as a worker's thread would) until it ends."""
    run_id = queue_run(session_factory, account.user_id, GOAL, send=False)
    env = RunEnvironment(
        session_factory,
        OpenAIProvider(base_url=stub.base_url, api_key=None, default_model="m"),
        settings,
        deltas=DeltaPublisher(redis_client, flush_s=0),
    )
    for _ in range(5):
        if execute_run(env, run_id) is None:
            break
        with session_factory.begin() as session:  # skip the retry's backoff
            session.execute(text("UPDATE task_runs SET not_before = NULL WHERE id = :id"), {"id": run_id})
    env.leases.close()
    wait_for_runs(session_factory, [run_id], timeout_s=5)
    return run_id


def _steps(session_factory, run_id) -> list[RunStep]:
    with session_factory() as session:
        return list(session.scalars(select(RunStep).where(RunStep.run_id == run_id).order_by(RunStep.index)))


def test_a_streamed_run_sends_its_pieces_to_redis_in_order_and_counts_cached_tokens(
    session_factory, settings, redis_client, stub, make_account
):
    stub.reply_with(prompt_tokens=50, completion_tokens=9, cached_tokens=30)
    run_id = _run_to_the_end(session_factory, settings, redis_client, stub, make_account())
    steps = _steps(session_factory, run_id)
    assert [s.status for s in steps] == ["completed"] * 4
    assert all((s.prompt_tokens, s.cached_tokens, s.usage_estimated) == (50, 30, False) for s in steps)

    entries = redis_client.xrange(deltas_key(run_id))
    ids = [tuple(int(part) for part in entry_id.decode().split("-")) for entry_id, _ in entries]
    assert ids == sorted(ids)
    by_index: dict[int, str] = {}
    for (start_seq, _), (_, fields) in zip(ids, entries, strict=True):
        index = int(fields[b"index"])
        assert start_seq == next(s.start_seq for s in steps if s.index == index)
        by_index[index] = by_index.get(index, "") + fields[b"text"].decode()
    assert by_index == {s.index: s.output for s in steps}  # the pieces make up each answer
    assert 0 < redis_client.ttl(deltas_key(run_id)) <= DELTA_TTL_S

    with session_factory() as session:
        run = session.get(TaskRun, run_id)
        assert run is not None
        task = session.get(Task, run.task_id)
        assert task is not None
    # Cached tokens are part of the prompt tokens: counted once, in tokensUsed too.
    assert (run.prompt_tokens, run.completion_tokens, run.cached_tokens) == (200, 36, 120)
    assert run.tokens_used == 236
    assert (task.prompt_tokens, task.cached_tokens, task.tokens_used) == (200, 120, 236)


def test_a_stream_without_usage_is_estimated_and_each_step_says_so(
    session_factory, settings, redis_client, stub, make_account
):
    stub.streaming.usage = False
    run_id = _run_to_the_end(session_factory, settings, redis_client, stub, make_account())
    steps = _steps(session_factory, run_id)
    assert all(s.usage_estimated for s in steps)
    assert all(s.completion_tokens == -(-len(s.output or "") // 4) for s in steps)


def test_a_stream_cut_mid_step_fails_that_step_and_the_retry_redoes_only_it(
    session_factory, settings, redis_client, stub, make_account
):
    stub.streaming.whole_first, stub.streaming.cut_after, stub.streaming.cuts = 2, 2, 1  # step 2
    run_id = _run_to_the_end(session_factory, settings, redis_client, stub, make_account())
    assert call_counts(stub.requests) == {"plan": 1, "step1": 1, "step2": 2, "final": 1}
    steps = _steps(session_factory, run_id)
    assert [(s.index, s.status, s.attempt) for s in steps] == [
        (0, "completed", 1),
        (1, "completed", 1),
        (2, "completed", 2),
        (3, "completed", 2),
    ]
