"""Webhooks end to end: a real receiver verifies every delivery with `standardwebhooks`."""

from __future__ import annotations

import base64
import itertools
import uuid

from sqlalchemy import select, text

from app.models import WebhookDelivery
from tests.integration.conftest import wait_for_runs
from tests.support.webhook_fixtures import webhook_settings

GOAL = {"goal": "Check competitor pricing", "agentType": "research_agent", "async": True}


def new_secret(client, account) -> str:
    answer = client.post("/api/me/webhook-secret", headers=account.headers)
    assert answer.status_code == 201, answer.text
    return answer.json()["secret"]


def execute(client, account, webhook, **extra):
    answer = client.post(
        "/api/agent/execute", json={**GOAL, **extra, "webhook": webhook}, headers=account.headers
    )
    assert answer.status_code in (201, 202), answer.text
    return answer.json()


def deliveries(client, account, run_id) -> list[dict]:
    answer = client.get(f"/api/runs/{run_id}/deliveries", headers=account.headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]


def wait_for_delivery_status(session_factory, run_id, statuses=("delivered", "failed"), timeout_s=30.0):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_factory() as session:
            rows = list(
                session.scalars(select(WebhookDelivery).where(WebhookDelivery.run_id == uuid.UUID(run_id)))
            )
        if rows and all(row.status in statuses for row in rows):
            return rows
        time.sleep(0.05)
    raise AssertionError(f"deliveries of run {run_id} did not reach {statuses}: {[r.status for r in rows]}")


def test_a_completed_run_is_delivered_and_verifies_with_standardwebhooks(
    hook_client, make_account, receiver, start_worker, session_factory, hook_settings
):
    account = make_account()
    secret = new_secret(hook_client, account)
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:])) == 32
    receiver.secrets = [secret, "whsec_" + base64.b64encode(b"x" * 32).decode()]
    created = execute(hook_client, account, {"url": receiver.url})
    task = hook_client.get(f"/api/tasks/{created['taskId']}", headers=account.headers).json()
    assert task["webhook"] == {
        "url": receiver.url,
        "events": ["run.completed", "run.failed"],
        "disabled": False,
        "disabledAt": None,
    }
    start_worker(run_settings=hook_settings)

    [got] = receiver.wait_for(1)
    assert got.verified_with == [secret]  # the right secret verifies it, another does not
    assert got.path == "/hooks/agentsched"
    run = hook_client.get(f"/api/runs/{created['runId']}", headers=account.headers).json()
    assert got.payload["type"] == "run.completed"
    assert got.payload["timestamp"] == run["finishedAt"]
    data = got.payload["data"]
    assert data["resultTruncated"] is False
    assert {k: v for k, v in data.items() if k != "resultTruncated"} == {k: run[k] for k in data if k in run}
    assert {"id", "taskId", "status", "result", "error", "tokensUsed", "creditsUsed", "finishedAt"} <= set(
        data
    )
    wait_for_delivery_status(session_factory, created["runId"])
    [item] = deliveries(hook_client, account, created["runId"])
    assert item["id"] == got.headers["webhook-id"]
    assert item["event"] == "run.completed"
    assert item["url"] == receiver.url
    assert item["status"] == "delivered"
    assert item["attempts"] == 1
    assert item["lastStatusCode"] == 200
    assert item["lastError"] is None
    assert item["nextAttemptAt"] is None
    assert item["deliveredAt"] is not None


def test_after_a_rotation_the_old_and_the_new_secret_both_verify(
    hook_client, make_account, receiver, start_worker, hook_settings
):
    account = make_account()
    old = new_secret(hook_client, account)
    new = new_secret(hook_client, account)
    assert old != new
    receiver.secrets = [old, new]
    execute(hook_client, account, {"url": receiver.url})
    start_worker(run_settings=hook_settings)

    [got] = receiver.wait_for(1)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert got.verified_with == [old, new]


def test_three_failures_then_a_2xx_retry_with_growing_gaps_and_one_webhook_id(
    make_account, receiver, start_worker, session_factory
):
    from litestar.testing import TestClient

    from api.app import create_app

    settings = webhook_settings(webhook_min_backoff_ms=800, webhook_max_backoff_ms=10_000)
    with TestClient(create_app(settings)) as client:
        account = make_account()
        receiver.secrets = [new_secret(client, account)]
        receiver.script = [500, 503, 404]
        created = execute(client, account, {"url": receiver.url})
        start_worker(run_settings=settings)

        got = receiver.wait_for(4, timeout_s=40)
        assert [g.answered for g in got] == [500, 503, 404, 200]
        assert len({g.headers["webhook-id"] for g in got}) == 1
        assert all(g.verified_with for g in got)
        assert len({g.body for g in got}) == 1  # the same bytes every time (re-signed per attempt)
        gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
        # attempt n waits between half and all of 800 ms * 2**(n-1): the gaps grow.
        for n, gap in enumerate(gaps, start=1):
            assert gap >= 0.4 * 2 ** (n - 1) - 0.05, gaps
        assert gaps[2] > gaps[0], gaps
        wait_for_delivery_status(session_factory, created["runId"])
        [item] = deliveries(client, account, created["runId"])
        assert item["status"] == "delivered"
        assert item["attempts"] == 4
        assert item["lastStatusCode"] == 200


def test_a_410_stops_retrying_and_disables_the_tasks_webhook(
    hook_client, make_account, receiver, start_worker, session_factory, hook_settings
):
    account = make_account()
    receiver.secrets = [new_secret(hook_client, account)]
    receiver.script = [410]
    created = execute(hook_client, account, {"url": receiver.url})
    start_worker(run_settings=hook_settings)

    receiver.wait_for(1)
    wait_for_delivery_status(session_factory, created["runId"])
    [item] = deliveries(hook_client, account, created["runId"])
    assert item["status"] == "failed"
    assert item["lastStatusCode"] == 410
    assert item["attempts"] == 1
    task = hook_client.get(f"/api/tasks/{created['taskId']}", headers=account.headers).json()
    assert task["webhook"]["disabled"] is True
    assert task["webhook"]["disabledAt"] is not None

    again = hook_client.post(f"/api/tasks/{created['taskId']}/run", headers=account.headers).json()
    wait_for_runs(session_factory, [again["runId"]])
    assert deliveries(hook_client, account, again["runId"]) == []  # disabled: nothing sent

    patched = hook_client.patch(
        f"/api/tasks/{created['taskId']}", json={"webhook": {"url": receiver.url}}, headers=account.headers
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["webhook"]["disabled"] is False
    assert len(receiver.received) == 1


def test_a_receiver_that_hangs_times_out_and_is_retried(
    hook_client,
    make_account,
    receiver,
    start_worker,
    session_factory,
    hook_settings,
    use_delivery_environment,
):
    from app.webhooks.attempts import DeliveryEnvironment

    account = make_account()
    receiver.secrets = [new_secret(hook_client, account)]
    receiver.script = ["hang"]
    receiver.hang_s = 4.0
    use_delivery_environment(DeliveryEnvironment(session_factory, hook_settings, timeout_s=1.0))
    created = execute(hook_client, account, {"url": receiver.url})
    start_worker(run_settings=hook_settings)

    got = receiver.wait_for(2, timeout_s=30)
    assert got[0].answered is None
    assert got[1].answered == 200
    assert got[1].at - got[0].at >= 1.0  # the timeout, then the backoff
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]
    wait_for_delivery_status(session_factory, created["runId"])
    [item] = deliveries(hook_client, account, created["runId"])
    assert item["status"] == "delivered"
    assert item["attempts"] == 2


def test_hanging_receivers_do_not_hold_up_runs(make_account, receiver, start_worker, session_factory):
    from litestar.testing import TestClient

    from api.app import create_app

    settings = webhook_settings(webhook_concurrency=1)
    receiver.script = ["hang"] * 10
    receiver.hang_s = 8.0
    with TestClient(create_app(settings)) as client:
        account = make_account()
        receiver.secrets = [new_secret(client, account)]
        hooked = [execute(client, account, {"url": receiver.url})["runId"] for _ in range(3)]
        start_worker(threads=3, run_settings=settings)
        receiver.wait_for(1)
        # The hanging sends hold sender threads, not worker threads: the runs go on.
        plain = [execute(client, account, None)["runId"] for _ in range(6)]
        runs = wait_for_runs(session_factory, hooked + plain, timeout_s=60)
        assert {run.status for run in runs} == {"completed"}
        assert receiver.max_in_flight == 1  # one delivery at a time per worker process


def test_a_run_finished_by_a_worker_that_died_before_sending_is_delivered_by_the_reconciler(
    hook_client, make_account, receiver, start_worker, session_factory, engine, hook_settings, redis_client
):
    from datetime import timedelta

    from sqlalchemy.orm import sessionmaker

    from actors.webhooks import send_delivery_messages
    from app.clock import SYSTEM_CLOCK, FrozenClock
    from app.providers.offline import OfflineProvider
    from app.services.execution import RunEnvironment, execute_run
    from app.webhooks.recovery import RECOVER_LOCK_KEY, recover_deliveries
    from scheduler.jobs import SchedulerContext, reconcile_runs

    account = make_account()
    receiver.secrets = [new_secret(hook_client, account)]
    created = execute(hook_client, account, {"url": receiver.url})
    # The run ends in a process that dies right after the commit: its sessions have no outbox
    # hook, so the delivery row is committed and its message never sent.
    dying = RunEnvironment(sessionmaker(engine, expire_on_commit=False), OfflineProvider(), hook_settings)
    execute_run(dying, uuid.UUID(created["runId"]))
    with session_factory() as session:
        [row] = session.scalars(select(WebhookDelivery)).all()
    assert row.status == "pending"
    assert row.attempts == 0
    assert not redis_client.hexists("dramatiq:webhooks.msgs", row.message_id)

    later = FrozenClock(SYSTEM_CLOCK.now() + timedelta(milliseconds=hook_settings.reconcile_grace_ms + 1_000))
    ctx = SchedulerContext(
        settings=hook_settings,
        session_factory=session_factory,
        redis_client=redis_client,
        send=lambda dispatches: [],
        send_webhooks=send_delivery_messages,
        clock=later,
    )
    # Another scheduler's reconciler at work holds the lock: this one leaves the delivery to it.
    with engine.connect() as other, other.begin():
        other.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RECOVER_LOCK_KEY})
        skipped = recover_deliveries(
            session_factory,
            now=later.now(),
            redis_client=redis_client,
            send=send_delivery_messages,
            grace_ms=hook_settings.reconcile_grace_ms,
        )
    assert skipped == 0
    with session_factory() as session:  # no new message either
        assert session.get(WebhookDelivery, row.id).message_id == row.message_id
    assert redis_client.hlen("dramatiq:webhooks.msgs") == 0
    reconcile_runs(ctx)
    start_worker(run_settings=hook_settings)
    [got] = receiver.wait_for(1)
    assert got.verified_with
    assert got.headers["webhook-id"] == str(row.id)
    wait_for_delivery_status(session_factory, created["runId"])
    reconcile_runs(ctx)  # delivered: nothing is sent again
    import time

    time.sleep(0.5)
    assert len(receiver.received) == 1


def test_another_users_run_deliveries_are_404(hook_client, make_account, session_factory, start_worker):
    owner, other = make_account(), make_account()
    created = execute(hook_client, owner, None)
    path = f"/api/runs/{created['runId']}/deliveries"
    assert hook_client.get(path, headers=other.headers).status_code == 404
    assert hook_client.get(f"/api/runs/{uuid.uuid4()}/deliveries", headers=owner.headers).status_code == 404
    assert hook_client.get(path, headers=owner.headers).json() == {"items": []}
    assert hook_client.post("/api/me/webhook-secret").status_code == 401


def test_a_delivery_that_keeps_failing_gives_up_after_webhook_retry_hours(
    make_account, receiver, start_worker, session_factory
):
    from litestar.testing import TestClient

    from api.app import create_app

    settings = webhook_settings(webhook_retry_hours=5 / 3600, webhook_min_backoff_ms=400)  # 5 s
    receiver.default = 500
    with TestClient(create_app(settings)) as client:
        account = make_account()
        receiver.secrets = [new_secret(client, account)]
        created = execute(client, account, {"url": receiver.url})
        start_worker(run_settings=settings)
        [row] = wait_for_delivery_status(
            session_factory, created["runId"], statuses=("failed",), timeout_s=20
        )
        assert row.last_status_code == 500
        assert row.attempts == len(receiver.received)
        assert row.attempts >= 2
        [item] = deliveries(client, account, created["runId"])
        assert item["status"] == "failed"
        assert item["nextAttemptAt"] is None
        assert item["lastError"].startswith("HTTP 500")


def test_the_cli_rotates_a_secret_and_lists_a_runs_deliveries(
    hook_client, make_account, receiver, start_worker, session_factory, hook_settings, capsys
):
    import argparse

    from app.cli import webhooks as cli

    account = make_account()
    assert cli.run(argparse.Namespace(action="secret", email=account.email)) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("whsec_")
    receiver.secrets = [secret]
    created = execute(hook_client, account, {"url": receiver.url})
    start_worker(run_settings=hook_settings)
    [got] = receiver.wait_for(1)
    assert got.verified_with == [secret]
    wait_for_delivery_status(session_factory, created["runId"])
    assert cli.run(argparse.Namespace(action="deliveries", run=created["runId"])) == 0
    out = capsys.readouterr().out
    assert got.headers["webhook-id"] in out
    assert "delivered" in out
    assert receiver.url in out


def test_a_retry_after_answer_is_waited_for(hook_client, make_account, receiver, start_worker, hook_settings):
    account = make_account()
    receiver.secrets = [new_secret(hook_client, account)]
    receiver.script = [503]
    receiver.headers_for = {503: {"Retry-After": "2"}}
    execute(hook_client, account, {"url": receiver.url})
    start_worker(run_settings=hook_settings)  # backoff alone would wait at most 300 ms
    first, second = receiver.wait_for(2)
    assert second.at - first.at >= 1.9
    assert second.answered == 200


def test_with_webhook_secrets_key_the_secret_is_encrypted_at_rest_and_still_signs(
    make_account, receiver, start_worker, session_factory
):
    from cryptography.fernet import Fernet
    from litestar.testing import TestClient

    from api.app import create_app
    from app.models import User

    settings = webhook_settings(webhook_secrets_key=Fernet.generate_key().decode())
    with TestClient(create_app(settings)) as client:
        account = make_account()
        secret = new_secret(client, account)
        with session_factory() as session:
            stored = session.get(User, account.user_id).webhook_secret
        assert stored.startswith("fernet:")
        assert secret not in stored
        receiver.secrets = [secret]
        execute(client, account, {"url": receiver.url})
        start_worker(run_settings=settings)
        [got] = receiver.wait_for(1)
        assert got.verified_with == [secret]
