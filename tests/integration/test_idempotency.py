"""Idempotency-Key on POST /api/agent/execute and POST /api/tasks/{id}/run."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from app.models import IdempotencyKey, Task, TaskRun
from app.services import idempotency

ASYNC = {"goal": "Check competitor pricing", "agentType": "research_agent", "async": True}
SCHEDULED = {
    "goal": "Check competitor pricing",
    "agentType": "research_agent",
    "schedule": {"enabled": True, "cron": "0 9 * * *", "timezone": "UTC"},
}


def _count(session_factory, model) -> int:
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_a_replay_answers_the_same_status_and_body_and_creates_nothing(client, make_account, session_factory):
    account = make_account()
    headers = {**account.headers, "Idempotency-Key": "order-42"}
    first = client.post("/api/agent/execute", json=ASYNC, headers=headers)
    assert first.status_code == 202, first.text
    again = client.post("/api/agent/execute", json=dict(reversed(ASYNC.items())), headers=headers)
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert _count(session_factory, Task) == 1
    assert _count(session_factory, TaskRun) == 1


def test_a_scheduled_create_replays_its_201(client, make_account, session_factory):
    account = make_account()
    headers = {**account.headers, "Idempotency-Key": "sched-1"}
    first = client.post("/api/agent/execute", json=SCHEDULED, headers=headers)
    again = client.post("/api/agent/execute", json=SCHEDULED, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert _count(session_factory, Task) == 1


def test_the_same_key_with_a_different_body_is_422(client, make_account, session_factory):
    account = make_account()
    headers = {**account.headers, "Idempotency-Key": "k1"}
    assert client.post("/api/agent/execute", json=ASYNC, headers=headers).status_code == 202
    other = client.post("/api/agent/execute", json={**ASYNC, "goal": "something else"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["error"] == "idempotency_key_reused"
    assert _count(session_factory, Task) == 1


def test_keys_belong_to_their_user(client, make_account, session_factory):
    one, two = make_account(), make_account()
    for account in (one, two):
        response = client.post(
            "/api/agent/execute", json=ASYNC, headers={**account.headers, "Idempotency-Key": "same"}
        )
        assert response.status_code == 202
    assert _count(session_factory, Task) == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\there"])
def test_a_key_that_is_not_1_to_255_visible_ascii_characters_is_400(
    client, make_account, session_factory, key
):
    account = make_account()
    response = client.post(
        "/api/agent/execute", json=ASYNC, headers={**account.headers, "Idempotency-Key": key}
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["fields"]
    assert _count(session_factory, Task) == 0


def test_a_255_character_key_is_accepted(client, make_account):
    account = make_account()
    key = "!" + "~" * 253 + "a"
    response = client.post(
        "/api/agent/execute", json=ASYNC, headers={**account.headers, "Idempotency-Key": key}
    )
    assert response.status_code == 202


def test_a_failed_request_gives_its_key_back(client, make_account, session_factory):
    account = make_account()
    headers = {**account.headers, "Idempotency-Key": "retry-me"}
    bad = client.post("/api/agent/execute", json={**ASYNC, "goal": ""}, headers=headers)
    assert bad.status_code == 400
    good = client.post("/api/agent/execute", json=ASYNC, headers=headers)
    assert good.status_code == 202
    assert _count(session_factory, Task) == 1


def test_twenty_concurrent_requests_with_one_key_create_one_task(client, make_account, session_factory):
    account = make_account()
    headers = {**account.headers, "Idempotency-Key": "burst"}
    # Waiting mode with no worker: the first request holds the key for its 3 s wait, so the
    # other nineteen really arrive while it is at work and must wait for its answer.
    body = {"goal": "Summarise", "agentType": "writer_agent", "agentConfig": {"timeout": 3000}}
    answers: list[tuple[int, object]] = []
    lock = threading.Lock()
    start = threading.Barrier(21)
    pool = client.app.state.api.session_factory.kw["bind"].pool
    held: list[int] = []

    def post() -> None:
        start.wait()
        response = client.post("/api/agent/execute", json=body, headers=headers)
        with lock:
            answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=post) for _ in range(20)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    while time.monotonic() - began < 2.7:  # in the middle of the wait: all twenty are waiting
        if time.monotonic() - began > 1.5:
            held.append(pool.checkedout())
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 20
    # Twenty requests waiting (one for its run, nineteen for the first's answer) hold no
    # pooled connection: they sleep on the process's one LISTEN connection.
    assert max(held) <= 1, held
    assert {status for status, _ in answers} == {202}
    assert all(answer == answers[0][1] for _, answer in answers)
    assert _count(session_factory, Task) == 1
    assert _count(session_factory, TaskRun) == 1


def test_run_now_is_idempotent(client, make_account, session_factory):
    account = make_account()
    task_id = client.post("/api/agent/execute", json=SCHEDULED, headers=account.headers).json()["taskId"]
    headers = {**account.headers, "Idempotency-Key": "run-now-1"}
    first = client.post(f"/api/tasks/{task_id}/run", headers=headers)
    again = client.post(f"/api/tasks/{task_id}/run", headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert _count(session_factory, TaskRun) == 1
    # The key names the request: the same key on another endpoint is another request.
    other = client.post("/api/agent/execute", json=ASYNC, headers=headers)
    assert other.status_code == 422


def test_an_expired_key_is_a_new_request_and_the_cleanup_deletes_it(client, make_account, session_factory):
    account = make_account()
    headers = {**account.headers, "Idempotency-Key": "old"}
    assert client.post("/api/agent/execute", json=ASYNC, headers=headers).status_code == 202
    with session_factory.begin() as session:
        session.execute(text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"))
    again = client.post("/api/agent/execute", json={**ASYNC, "goal": "new"}, headers=headers)
    assert again.status_code == 202
    assert _count(session_factory, Task) == 2
    with session_factory.begin() as session:
        session.execute(text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"))
        assert idempotency.delete_expired(session, datetime.now(UTC) + timedelta(seconds=1), batch=1) == 1
    assert _count(session_factory, IdempotencyKey) == 0


def test_a_key_whose_first_request_died_is_taken_over_after_its_lease(client, make_account, session_factory):
    account = make_account()
    print_ = idempotency.fingerprint("POST", "/api/agent/execute", b'{"goal": "x"}')
    now = datetime.now(UTC)
    with session_factory.begin() as session:
        assert idempotency.take(session, account.user_id, "dead", print_, now - idempotency.LEASE * 2)
    # A different body would be 422 against a live key; against a dead owner's key it is new.
    response = client.post(
        "/api/agent/execute", json=ASYNC, headers={**account.headers, "Idempotency-Key": "dead"}
    )
    assert response.status_code == 202


def test_the_scheduler_job_deletes_expired_keys(client, make_account, session_factory, settings):
    from scheduler.jobs import SchedulerContext, expire_idempotency_keys

    account = make_account()
    client.post("/api/agent/execute", json=ASYNC, headers={**account.headers, "Idempotency-Key": "a"})
    client.post("/api/agent/execute", json=ASYNC, headers={**account.headers, "Idempotency-Key": "b"})
    with session_factory.begin() as session:
        session.execute(
            text("UPDATE idempotency_keys SET expires_at = now() - interval '1 hour' WHERE key = 'a'")
        )
    ctx = SchedulerContext(
        settings=settings,
        session_factory=session_factory,
        redis_client=None,
        send=lambda d: [],  # type: ignore[arg-type]
    )
    assert expire_idempotency_keys(ctx) == 1
    with session_factory() as session:
        assert list(session.scalars(select(IdempotencyKey.key))) == ["b"]
