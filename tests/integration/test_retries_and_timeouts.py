"""Retries, backoff and deadlines, against a local server that speaks the OpenAI protocol."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from app.providers.openai import OpenAIProvider
from tests.integration.conftest import wait_for_runs
from tests.support.openai_stub import OpenAIStub

GOAL = {
    "goal": "Summarise the quarter's pricing changes",
    "agentType": "research_agent",
    "async": True,
}


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as server:
        yield server


@pytest.fixture
def provider(stub: OpenAIStub) -> Iterator[OpenAIProvider]:
    provider = OpenAIProvider(base_url=stub.base_url, api_key="test-key", default_model="stub-model")
    yield provider
    provider.close()


def test_a_run_that_fails_twice_then_succeeds_is_retried_with_growing_delays(
    client, make_account, start_worker, session_factory, settings, stub, provider
):
    run_settings = settings.model_copy(update={"retry_min_backoff_ms": 400, "retry_max_backoff_ms": 10_000})
    start_worker(provider=provider, run_settings=run_settings)
    stub.fail_times(3, status=503)
    account = make_account()
    body = client.post(
        "/api/agent/execute",
        json={**GOAL, "agentConfig": {"maxRetries": 3}},
        headers=account.headers,
    ).json()
    [run] = wait_for_runs(session_factory, [body["runId"]])
    assert run.status == "completed", run.error
    assert run.attempts == 4
    assert run.tokens_used > 0
    # The first three requests failed, one per attempt; the gaps between them are the backoffs.
    times = stub.request_times[:4]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.2 * 0.9  # attempt 1: ceiling 400 ms, drawn from its upper half
    assert gaps[1] >= 0.4 * 0.9
    assert gaps[2] >= 0.8 * 0.9
    assert gaps[0] < gaps[1] < gaps[2]
    view = client.get(f"/api/runs/{body['runId']}", headers=account.headers).json()
    assert view["attempts"] == 4
    assert view["error"] is None


def test_a_run_that_always_fails_is_failed_after_one_plus_max_retries_attempts(
    client, make_account, start_worker, session_factory, stub, provider
):
    start_worker(provider=provider)
    stub.always_fail(status=500)
    account = make_account()
    body = client.post(
        "/api/agent/execute",
        json={**GOAL, "agentConfig": {"maxRetries": 2}},
        headers=account.headers,
    ).json()
    [run] = wait_for_runs(session_factory, [body["runId"]])
    assert run.status == "failed"
    assert run.attempts == 3
    assert len(stub.requests) == 3  # no hidden client-side retries
    assert run.error is not None
    assert run.error["code"] == "provider_error"
    task = client.get(f"/api/tasks/{body['taskId']}", headers=account.headers).json()
    assert task["status"] == "failed"
    assert task["error"]["code"] == "provider_error"
    me = client.get("/api/me", headers=account.headers).json()
    assert me["creditsUsed"] == 0  # no tokens were used
    assert me["creditsReserved"] == 0


def test_a_client_error_from_the_provider_is_not_retried(
    client, make_account, start_worker, session_factory, stub, provider
):
    start_worker(provider=provider)
    stub.always_fail(status=400)
    body = client.post("/api/agent/execute", json=GOAL, headers=make_account().headers).json()
    [run] = wait_for_runs(session_factory, [body["runId"]])
    assert run.status == "failed"
    assert run.attempts == 1


def test_a_hanging_model_call_is_cut_off_by_the_runs_timeout(
    client, make_account, start_worker, session_factory, stub, provider
):
    start_worker(provider=provider)
    stub.hang()
    body = client.post(
        "/api/agent/execute",
        json={**GOAL, "agentConfig": {"timeout": 1_500, "maxRetries": 0}},
        headers=make_account().headers,
    ).json()
    [run] = wait_for_runs(session_factory, [body["runId"]], timeout_s=15)
    assert run.status == "failed"
    assert run.error is not None
    assert run.error["code"] == "timeout"
    assert run.started_at is not None
    assert run.finished_at is not None
    elapsed = (run.finished_at - run.started_at).total_seconds()
    # At the 1.5 s timeout, never before; the slack is a busy machine's (a hang never ends
    # by itself, and a lost worker would fail with "worker_lost", not "timeout").
    assert 1.4 <= elapsed <= 1.5 + 4.0, elapsed
