"""Redis refusing a new run's message: the API answers 503 `unavailable` (CONTRACT "When a
dependency is down") and tells the truth: the run is saved and queued, and the reconciler sends
it once Redis is back. With an Idempotency-Key, the repeat the 503 invites makes nothing new."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.models import Task, TaskRun
from tests.integration.test_idempotency import ASYNC, SCHEDULED
from tests.integration.test_reconcile import do_reconcile
from tests.support.outage import redis_refusing
from tests.support.scheduling import insert_tasks


@pytest.fixture
def redis_refuses(monkeypatch):
    with redis_refusing(monkeypatch):
        yield


def _runs(session_factory) -> list[TaskRun]:
    with session_factory() as session:
        return list(session.scalars(select(TaskRun)))


def _assert_saved_but_unavailable(answer, run: TaskRun) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "unavailable"
    assert int(answer.headers["Retry-After"]) > 0
    assert str(run.id) in answer.json()["message"]
    assert "saved and queued" in answer.json()["message"]
    assert run.status == "queued"


@pytest.mark.parametrize("wait", [True, False])
def test_execute_while_redis_refuses_is_503_and_the_run_is_saved(
    client, make_account, session_factory, redis_client, redis_refuses, wait
):
    account = make_account()
    answer = client.post("/api/agent/execute", json={**ASYNC, "async": not wait}, headers=account.headers)
    (run,) = _runs(session_factory)
    _assert_saved_but_unavailable(answer, run)
    assert redis_client.llen("dramatiq:runs.medium") == 0


def test_the_saved_run_reaches_redis_through_the_reconciler(
    client, make_account, session_factory, redis_client, monkeypatch
):
    account = make_account()
    with redis_refusing(monkeypatch):
        assert client.post("/api/agent/execute", json=ASYNC, headers=account.headers).status_code == 503
    assert do_reconcile(session_factory, redis_client).lost == 1
    assert redis_client.llen("dramatiq:runs.medium") == 1


def test_a_repeat_with_the_same_idempotency_key_answers_the_saved_run(
    client, make_account, session_factory, redis_refuses
):
    headers = {**make_account().headers, "Idempotency-Key": "while-redis-is-down"}
    first = client.post("/api/agent/execute", json=ASYNC, headers=headers)
    (run,) = _runs(session_factory)
    _assert_saved_but_unavailable(first, run)
    again = client.post("/api/agent/execute", json=ASYNC, headers=headers)
    assert again.status_code == 202, again.text
    assert again.json() == {"taskId": str(run.task_id), "runId": str(run.id), "status": "queued"}
    assert again.headers["idempotent-replayed"] == "true"
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 1


def test_run_now_while_redis_refuses_is_503_and_its_run_is_saved(
    client, make_account, session_factory, redis_refuses
):
    account = make_account()
    created = client.post("/api/agent/execute", json=SCHEDULED, headers=account.headers)
    assert created.status_code == 201  # a scheduled task needs no message now
    task_id = uuid.UUID(created.json()["taskId"])
    answer = client.post(f"/api/tasks/{task_id}/run", headers=account.headers)
    (run,) = _runs(session_factory)
    assert run.task_id == task_id
    _assert_saved_but_unavailable(answer, run)


def _cron_headers(settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.cron_secret.get_secret_value()}"}


@pytest.mark.parametrize("tasks", [1, 1_001])  # 1,001: two batches, sent on the pass's helper thread
def test_a_cron_pass_while_redis_refuses_is_503_and_its_runs_are_saved_then_reconciled(
    client, make_account, settings, session_factory, redis_client, monkeypatch, tasks
):
    account = make_account()
    due = datetime.now(UTC) - timedelta(minutes=1)
    task_ids = insert_tasks(session_factory, account.user_id, tasks, next_run_at=due)
    with redis_refusing(monkeypatch):
        answer = client.post("/api/cron/check-scheduled-tasks", headers=_cron_headers(settings))
        assert answer.status_code == 503, answer.text
        assert set(answer.json()) == {"error", "message"}
        assert answer.json()["error"] == "unavailable"
        assert int(answer.headers["Retry-After"]) > 0
        assert f"{tasks} run(s) are saved and queued" in answer.json()["message"]
        runs = _runs(session_factory)
        assert sorted(run.task_id for run in runs) == sorted(task_ids)
        assert {(run.status, run.trigger) for run in runs} == {("queued", "schedule")}
        # The tick happened: the retry that Retry-After invites finds nothing due, makes nothing.
        again = client.post("/api/cron/check-scheduled-tasks", headers=_cron_headers(settings))
        assert again.status_code == 200, again.text
        assert again.json()["runsQueued"] == 0
        assert len(_runs(session_factory)) == tasks
    assert redis_client.llen("dramatiq:runs.medium") == 0
    reconciled = do_reconcile(session_factory, redis_client)
    assert (reconciled.lost, reconciled.sent) == (tasks, tasks)
    assert redis_client.llen("dramatiq:runs.medium") == tasks


def test_a_cron_pass_with_redis_up_answers_ok_and_its_run_is_on_the_queue(
    client, make_account, settings, session_factory, redis_client
):
    account = make_account()
    insert_tasks(session_factory, account.user_id, 1, next_run_at=datetime.now(UTC) - timedelta(minutes=1))
    answer = client.post("/api/cron/check-scheduled-tasks", headers=_cron_headers(settings))
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["runsQueued"]) == ("ok", 1)
    assert redis_client.llen("dramatiq:runs.medium") == 1
    assert do_reconcile(session_factory, redis_client).sent == 0  # nothing left to send
