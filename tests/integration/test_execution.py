"""Runs executed by a real Dramatiq worker on the real Redis broker."""

from __future__ import annotations

import uuid

import dramatiq
from sqlalchemy import func, select

from app.models import CreditLedgerEntry, TaskRun, User
from app.services.dispatch import actor_name, queue_name
from tests.integration.conftest import wait_for_runs

GOAL = {"goal": "Check competitor pricing and send report", "agentType": "research_agent"}


def test_an_async_request_is_queued_then_completes_with_tokens_and_credits(
    client, make_account, start_worker, session_factory
):
    account = make_account()
    start_worker()
    response = client.post("/api/agent/execute", json={**GOAL, "async": True}, headers=account.headers)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    wait_for_runs(session_factory, [body["runId"]])

    run = client.get(f"/api/runs/{body['runId']}", headers=account.headers).json()
    assert run["status"] == "completed"
    assert run["taskId"] == body["taskId"]
    assert "offline provider" in run["result"]
    assert run["tokensUsed"] > 0
    assert run["creditsUsed"] >= 1
    assert run["attempts"] == 1
    me = client.get("/api/me", headers=account.headers).json()
    assert me["creditsUsed"] == run["creditsUsed"]
    assert me["creditsRemaining"] == me["monthlyCredits"] - run["creditsUsed"]
    task = client.get(f"/api/tasks/{body['taskId']}", headers=account.headers).json()
    assert task["status"] == "completed"
    assert task["recentRuns"][0]["id"] == body["runId"]


def test_a_sync_request_waits_and_answers_200_with_the_result(client, make_account, start_worker):
    account = make_account()
    start_worker()
    response = client.post("/api/agent/execute", json=GOAL, headers=account.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "completed"
    assert body["result"]
    assert body["error"] is None
    assert body["tokensUsed"] > 0
    assert body["creditsUsed"] >= 1


def test_a_sync_request_answers_202_when_the_run_outlasts_its_wait(client, make_account):
    account = make_account()  # no worker: the run stays queued
    response = client.post(
        "/api/agent/execute",
        json={**GOAL, "agentConfig": {"timeout": 1_000}},
        headers=account.headers,
    )
    assert response.status_code == 202
    assert response.json()["status"] == "queued"


def test_another_users_task_and_run_are_404(client, make_account):
    owner, stranger = make_account(), make_account()
    created = client.post("/api/agent/execute", json={**GOAL, "async": True}, headers=owner.headers).json()
    for path in (
        f"/api/tasks/{created['taskId']}",
        f"/api/tasks/{created['taskId']}/runs",
        f"/api/runs/{created['runId']}",
    ):
        assert client.get(path, headers=stranger.headers).status_code == 404
        assert client.get(path, headers=owner.headers).status_code == 200
    assert client.get("/api/tasks", headers=stranger.headers).json()["items"] == []
    assert len(client.get("/api/tasks", headers=owner.headers).json()["items"]) == 1


def test_tasks_are_listed_newest_first_in_pages(client, make_account):
    account = make_account()
    ids = [
        client.post(
            "/api/agent/execute",
            json={**GOAL, "async": True, "title": f"t{i}"},
            headers=account.headers,
        ).json()["taskId"]
        for i in range(5)
    ]
    first = client.get("/api/tasks?limit=2", headers=account.headers).json()
    second = client.get(f"/api/tasks?limit=2&cursor={first['nextCursor']}", headers=account.headers).json()
    third = client.get(f"/api/tasks?limit=2&cursor={second['nextCursor']}", headers=account.headers).json()
    seen = [t["id"] for page in (first, second, third) for t in page["items"]]
    assert seen == list(reversed(ids))
    assert third["nextCursor"] is None
    assert client.get("/api/tasks?limit=101", headers=account.headers).status_code == 400
    assert client.get("/api/tasks?status=bogus", headers=account.headers).status_code == 400


def test_a_duplicate_delivery_runs_once_and_charges_once(client, make_account, start_worker, session_factory):
    account = make_account()
    created = client.post("/api/agent/execute", json={**GOAL, "async": True}, headers=account.headers).json()
    # Deliver the same run id three more times, as a broker redelivery would.
    for _ in range(3):
        dramatiq.get_broker().enqueue(
            dramatiq.Message(
                queue_name=queue_name("medium"),
                actor_name=actor_name("medium"),
                args=(created["runId"],),
                kwargs={},
                options={},
            )
        )
    worker = start_worker(threads=4)
    wait_for_runs(session_factory, [created["runId"]])
    dramatiq.get_broker().join(queue_name("medium"), timeout=10_000)
    worker.join()
    with session_factory() as session:
        run = session.get(TaskRun, uuid.UUID(created["runId"]))
        assert run is not None
        assert run.attempts == 1
        charges = session.scalar(
            select(func.count()).select_from(CreditLedgerEntry).where(CreditLedgerEntry.run_id == run.id)
        )
        assert charges == 1
        user = session.get(User, account.user_id)
        assert user is not None
        assert user.credits_used == run.credits_used
        assert user.credits_reserved == 0


def test_twenty_concurrent_runs_never_overdraw_and_the_ledger_sums_to_credits_used(
    client, make_account, start_worker, session_factory, settings
):
    # Each run holds the cost of its whole token budget (20 credits by default), or what is
    # left when less: at most 100 are held at once, and a run finding none left fails.
    account = make_account(plan="free")
    reservation = -(-settings.run_token_budget // settings.tokens_per_credit)
    assert 100 // reservation == 5
    run_ids = [
        client.post("/api/agent/execute", json={**GOAL, "async": True}, headers=account.headers).json()[
            "runId"
        ]
        for _ in range(20)
    ]
    start_worker(threads=16)
    runs = wait_for_runs(session_factory, run_ids, timeout_s=60)
    completed = [run for run in runs if run.status == "completed"]
    failed = [run for run in runs if run.status == "failed"]
    assert len(completed) + len(failed) == 20
    assert completed, "some runs must have been covered"
    for run in failed:
        assert run.error is not None
        assert run.error["code"] == "insufficient_credits"
        assert run.attempts == 1  # not retried
        assert run.credits_used == 0
    with session_factory() as session:
        user = session.get(User, account.user_id)
        assert user is not None
        ledger_sum = session.scalar(
            select(func.coalesce(func.sum(CreditLedgerEntry.amount), 0)).where(
                CreditLedgerEntry.user_id == user.id
            )
        )
        assert user.credits_used <= user.monthly_credits
        assert ledger_sum == user.credits_used == sum(run.credits_used for run in completed)
        assert user.credits_reserved == 0


def test_insufficient_credits_fails_without_retry_and_without_charge(
    client, make_account, start_worker, session_factory
):
    account = make_account(plan="free", credits=0)  # less than 1 credit left
    start_worker()
    response = client.post("/api/agent/execute", json=GOAL, headers=account.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "insufficient_credits"
    assert body["creditsUsed"] == 0
    [run] = wait_for_runs(session_factory, [body["runId"]])
    assert run.attempts == 1
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(CreditLedgerEntry)) == 0
    me = client.get("/api/me", headers=account.headers).json()
    assert me["creditsUsed"] == 0
    assert me["creditsRemaining"] == 0


def _simulate_dead_worker(session_factory, run_id: str, *, attempts: int, cancel: bool = False) -> None:
    """Leave the run as a worker that died mid-attempt would: running, its lease expired."""
    from sqlalchemy import text

    with session_factory.begin() as session:
        session.execute(
            text(
                "UPDATE task_runs SET status = 'running', attempts = :attempts, started_at = now(),"
                " lease_expires_at = now() - interval '1 second', cancel_requested = :cancel WHERE id = :id"
            ),
            {"id": run_id, "attempts": attempts, "cancel": cancel},
        )


def _redeliver(run_id: str) -> None:
    dramatiq.get_broker().enqueue(
        dramatiq.Message(
            queue_name=queue_name("medium"),
            actor_name=actor_name("medium"),
            args=(run_id,),
            kwargs={},
            options={},
        )
    )


def test_a_run_whose_worker_died_is_claimed_again_and_counts_an_attempt(
    client, make_account, start_worker, session_factory
):
    account = make_account()
    created = client.post("/api/agent/execute", json={**GOAL, "async": True}, headers=account.headers).json()
    dramatiq.get_broker().flush_all()
    _simulate_dead_worker(session_factory, created["runId"], attempts=1)
    start_worker()
    _redeliver(created["runId"])
    [run] = wait_for_runs(session_factory, [created["runId"]])
    assert run.status == "completed"
    assert run.attempts == 2


def test_a_run_whose_worker_died_with_no_attempts_left_fails_as_worker_lost(
    client, make_account, start_worker, session_factory
):
    account = make_account()
    body = {**GOAL, "async": True, "agentConfig": {"maxRetries": 0}}
    created = client.post("/api/agent/execute", json=body, headers=account.headers).json()
    dramatiq.get_broker().flush_all()
    _simulate_dead_worker(session_factory, created["runId"], attempts=1)
    start_worker()
    _redeliver(created["runId"])
    [run] = wait_for_runs(session_factory, [created["runId"]])
    assert run.status == "failed"
    assert run.error is not None
    assert run.error["code"] == "worker_lost"


def test_a_cancelled_run_whose_worker_died_is_not_run_again(
    client, make_account, start_worker, session_factory
):
    account = make_account()
    created = client.post("/api/agent/execute", json={**GOAL, "async": True}, headers=account.headers).json()
    dramatiq.get_broker().flush_all()
    _simulate_dead_worker(session_factory, created["runId"], attempts=1, cancel=True)
    start_worker()
    _redeliver(created["runId"])
    [run] = wait_for_runs(session_factory, [created["runId"]])
    assert run.status == "cancelled"
    assert run.tokens_used == 0
