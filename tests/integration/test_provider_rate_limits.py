"""Provider rate limits: 429s waited out without a retry, insufficient_quota, one shared budget."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import pytest
import redis
from sqlalchemy import select

from app.models import TaskRun
from app.models.step import RunStep
from app.providers.base import ChatMessage, Completion
from app.providers.openai import OpenAIProvider
from app.providers.ratelimit import ProviderBudget, RateLimitedProvider, WaitBoard, track_call
from tests.integration.conftest import wait_for_runs
from tests.support.openai_stub import OpenAIStub, most_within


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as running:
        yield running


def _provider(stub: OpenAIStub, client: redis.Redis, *, rpm: int | None = None, tpm: int | None = None):
    inner = OpenAIProvider(base_url=stub.base_url, api_key=None, default_model="stub-model")
    budget = ProviderBudget(client, rpm=rpm, tpm=tpm) if rpm or tpm else None
    return RateLimitedProvider(inner, budget, board=WaitBoard(client))


def _run(client, account, timeout_ms: int = 60_000) -> str:
    body = {
        "goal": "Check the prices",
        "agentType": "research_agent",
        "async": True,
        "agentConfig": {"timeout": timeout_ms, "maxRetries": 2},
    }
    response = client.post("/api/agent/execute", json=body, headers=account.headers)
    assert response.status_code == 202, response.text
    return str(response.json()["runId"])


def _steps(session_factory, run_id: str) -> list[RunStep]:
    with session_factory() as session:
        return list(
            session.scalars(
                select(RunStep).where(RunStep.run_id == uuid.UUID(run_id)).order_by(RunStep.index)
            )
        )


def _http_date_in(seconds: int) -> str:
    # A whole second later than asked: an HTTP date has no fractions, so this is at least `seconds`.
    return format_datetime(
        datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds + 1), usegmt=True
    )


@pytest.mark.parametrize(
    ("headers", "at_least_s"),
    [
        ({"Retry-After": "1"}, 1.0),
        ({"Retry-After": "http-date"}, 1.0),
        ({"x-ratelimit-reset-requests": "1s"}, 1.0),
        ({"x-ratelimit-reset-tokens": "1s200ms"}, 1.2),
        ({"x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "900ms"}, 0.9),
    ],
    ids=["retry-after-seconds", "retry-after-date", "reset-requests", "reset-tokens", "longest-reset"],
)
def test_a_429_is_waited_out_as_its_headers_say_without_using_a_retry(
    client, make_account, start_worker, session_factory, redis_client, stub, headers, at_least_s
):
    not_before_wall = None
    if headers.get("Retry-After") == "http-date":
        headers = {"Retry-After": _http_date_in(2)}
        not_before_wall = parsedate_to_datetime(headers["Retry-After"]).timestamp()
    stub.rate_limit_times(1, headers)
    start_worker(threads=1, provider=_provider(stub, redis_client), before_call=[track_call])
    account = make_account()
    run_id = _run(client, account)
    (run,) = wait_for_runs(session_factory, [run_id], timeout_s=60)
    assert run.status == "completed", run.error
    assert run.attempts == 1
    first, second = stub.request_times[:2]
    if not_before_wall is not None:  # not before the date it named (whenever the 429 came)
        assert second + (time.time() - time.monotonic()) >= not_before_wall - 0.05
    else:
        assert second - first >= at_least_s - 0.01
    plan = _steps(session_factory, run_id)[0]
    assert plan.status == "completed"
    # The wait shows on the step (for a date, whatever was left of it when the 429 came).
    assert plan.waited_ms >= (at_least_s * 1000 - 10 if not_before_wall is None else 1)
    steps = client.get(f"/api/runs/{run_id}/steps", headers=account.headers).json()["items"]
    assert steps[0]["waitedMs"] == plan.waited_ms
    assert all(step["waitedMs"] == 0 for step in steps[1:])
    assert plan.attempt == 1


def test_insufficient_quota_fails_the_run_at_once_with_provider_quota(
    client, make_account, start_worker, session_factory, redis_client, stub
):
    stub.rate_limit_times(5, {"Retry-After": "1"}, code="insufficient_quota")
    start_worker(threads=1, provider=_provider(stub, redis_client), before_call=[track_call])
    run_id = _run(client, make_account())
    (run,) = wait_for_runs(session_factory, [run_id], timeout_s=30)
    assert run.status == "failed"
    assert run.error is not None
    assert run.error["code"] == "provider_quota"
    assert run.attempts == 1
    assert len(stub.requests) == 1


def test_a_429_longer_than_the_deadline_ends_the_attempt_at_once(
    client, make_account, start_worker, session_factory, redis_client, stub
):
    stub.rate_limit_times(10, {"Retry-After": "120"})
    start_worker(threads=1, provider=_provider(stub, redis_client), before_call=[track_call])
    started = time.monotonic()
    run_id = _run(client, make_account(), timeout_ms=5_000)
    while True:  # its first attempt ends (a timeout, retried) as soon as the 429 comes
        with session_factory() as session:
            run = session.get(TaskRun, uuid.UUID(run_id))
            assert run is not None
            if run.error is not None:
                break
        assert time.monotonic() - started < 30, "the attempt did not end"
        time.sleep(0.05)
    assert run.error["code"] == "timeout"
    assert time.monotonic() - started < 60  # not the 120 s the provider asked for


def test_the_rpm_budget_holds_for_two_workers_together(
    client, make_account, start_worker, session_factory, settings, stub
):
    # Two workers, each with its own provider, budget and Redis connection: two processes' worth.
    clients = [redis.Redis.from_url(settings.broker_url) for _ in range(2)]
    rpm = 600  # 10 a second; the bucket holds half a second (5)
    for redis_connection in clients:
        start_worker(threads=4, provider=_provider(stub, redis_connection, rpm=rpm), before_call=[track_call])
    account = make_account(plan="enterprise")
    run_ids = [_run(client, account) for _ in range(12)]  # 4 calls each
    runs = wait_for_runs(session_factory, run_ids, timeout_s=120)
    assert {run.status for run in runs} == {"completed"}
    times = sorted(stub.request_times)
    assert len(times) == 48
    # Never faster than the budget (a busy machine only makes it slower): 10/s plus the burst.
    assert most_within(times, 2.0) <= 2 * 10 + 5 + 1
    assert times[-1] - times[0] >= (48 - 6) / 10
    for redis_connection in clients:
        redis_connection.close()


class _Reporting:
    """A provider that reports `tokens` total tokens for every call."""

    name = "reporting"

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def complete(self, messages: Sequence[ChatMessage], **_: Any) -> Completion:
        return Completion("ok", self.tokens - 1, 1, "m")


def test_tpm_is_charged_max_tokens_up_front_and_corrected_by_the_reported_usage(redis_client):
    budget = ProviderBudget(redis_client, rpm=None, tpm=60_000)  # 1,000 a second; holds 500
    first = time.monotonic()
    assert budget.reserve(400) == 0
    wait = budget.reserve(600)  # 100 left + the refill since: 0.5 s of debt less that refill
    since_s = time.monotonic() - first  # however long a busy machine took between the two
    assert 0.5 - since_s - 0.01 <= wait <= 0.51
    budget.give_back(0, 600)  # the call used nothing after all
    assert budget.reserve(100) <= 0.01
    provider = RateLimitedProvider(_Reporting(tokens=10), budget, board=WaitBoard(redis_client))
    redis_client.delete(budget.key)
    started = time.monotonic()
    for _ in range(5):  # each charged 1,000 up front, corrected to 10 afterwards
        provider.complete([ChatMessage("user", "hi")], max_tokens=1_000, timeout_s=30)
    # Without the correction five calls would wait 4.5 s; with it, about 0.5 s at first.
    assert time.monotonic() - started < 3.0
    assert float(redis_client.hget(budget.key, "t") or 0) > -600


def test_a_call_with_no_room_before_its_deadline_times_out_and_gives_its_room_back(redis_client):
    from app.errors import RunTimeout

    budget = ProviderBudget(redis_client, rpm=60, tpm=None)  # one a second; holds 1
    board = _RecordingBoard(redis_client)
    provider = RateLimitedProvider(_Reporting(tokens=10), budget, board=board)
    first = time.monotonic()
    provider.complete([ChatMessage("user", "hi")], max_tokens=10, timeout_s=5)
    with pytest.raises(RunTimeout):
        provider.complete([ChatMessage("user", "hi")], max_tokens=10, timeout_s=0.2)
    since_s = time.monotonic() - first
    provider.complete([ChatMessage("user", "hi")], max_tokens=10, timeout_s=5)
    # It waits for the second after the first call (1 s - since), not for the room the timed-out
    # call would have kept (2 s - since): the budget's own figure, whatever the machine's load.
    waited = sum(board.waits)  # no wait at all if a busy machine took a second already
    assert waited <= max(0.0, 1.0 - since_s) + 0.05, (waited, since_s)


class _RecordingBoard(WaitBoard):
    """A wait board that remembers how long each wait the budget asked for was."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.waits: list[float] = []

    def sleep(self, seconds: float, reason: str) -> None:
        self.waits.append(seconds)
        super().sleep(seconds, reason)
