"""Webhook settings on tasks (validation, the address rule, PATCH) and which events are sent."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from app.clock import SYSTEM_CLOCK
from app.models import WebhookDelivery
from tests.integration.conftest import wait_for_runs
from tests.support.webhook_fixtures import webhook_settings

GOAL = {"goal": "Check competitor pricing", "agentType": "research_agent", "async": True}


def rows_of(session_factory, run_id) -> list[WebhookDelivery]:
    with session_factory() as session:
        return list(
            session.scalars(select(WebhookDelivery).where(WebhookDelivery.run_id == uuid.UUID(str(run_id))))
        )


def wait_for_rows(session_factory, run_id, statuses=("delivered", "failed"), timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = rows_of(session_factory, run_id)
        if rows and all(row.status in statuses for row in rows):
            return rows
        time.sleep(0.05)
    raise AssertionError(
        f"deliveries of {run_id}: {[(r.event, r.status) for r in rows_of(session_factory, run_id)]}"
    )


def test_loopback_is_refused_by_default_naming_the_field_and_nothing_is_written(
    client, make_account, receiver, session_factory
):
    account = make_account()
    for url in (
        receiver.url,
        f"http://localhost:{receiver.port}/h",
        "http://10.0.0.7/h",
        "http://169.254.169.254/",
    ):
        answer = client.post(
            "/api/agent/execute", json={**GOAL, "webhook": {"url": url}}, headers=account.headers
        )
        assert answer.status_code == 400, (url, answer.text)
        assert "webhook.url" in answer.json()["fields"], answer.json()
    with session_factory() as session:
        assert session.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 0


def test_loopback_is_allowed_with_webhook_allow_private(hook_client, make_account, receiver):
    account = make_account()
    answer = hook_client.post(
        "/api/agent/execute",
        json={**GOAL, "webhook": {"url": f"http://localhost:{receiver.port}/h", "events": ["run.failed"]}},
        headers=account.headers,
    )
    assert answer.status_code == 202, answer.text
    task = hook_client.get(f"/api/tasks/{answer.json()['taskId']}", headers=account.headers).json()
    assert task["webhook"]["events"] == ["run.failed"]


@pytest.mark.parametrize(
    ("webhook", "field"),
    [
        ({"url": "ftp://93.184.216.34/"}, "webhook.url"),
        ({"url": "https://93.184.216.34/" + "x" * 2_000}, "webhook.url"),
        ({"url": "https://93.184.216.34/", "events": ["run.started"]}, "webhook.events"),
        ({"url": "https://93.184.216.34/", "extra": 1}, "webhook.extra"),
    ],
)
def test_an_invalid_webhook_is_a_400_naming_the_field(hook_client, make_account, webhook, field):
    account = make_account()
    answer = hook_client.post(
        "/api/agent/execute", json={**GOAL, "webhook": webhook}, headers=account.headers
    )
    assert answer.status_code == 400, answer.text
    assert any(name.startswith(field) for name in answer.json()["fields"]), answer.json()


def test_patch_sets_checks_and_removes_a_webhook(client, make_account, receiver):
    account = make_account()
    task_id = client.post("/api/agent/execute", json=GOAL, headers=account.headers).json()["taskId"]
    refused = client.patch(
        f"/api/tasks/{task_id}", json={"webhook": {"url": receiver.url}}, headers=account.headers
    )
    assert refused.status_code == 400
    assert "webhook.url" in refused.json()["fields"]
    public = {"url": "https://93.184.216.34/hooks", "events": ["run.completed", "run.cancelled"]}
    patched = client.patch(f"/api/tasks/{task_id}", json={"webhook": public}, headers=account.headers)
    assert patched.status_code == 200, patched.text
    assert patched.json()["webhook"] == {**public, "disabled": False, "disabledAt": None}
    removed = client.patch(f"/api/tasks/{task_id}", json={"webhook": None}, headers=account.headers)
    assert removed.json()["webhook"] is None
    untouched = client.patch(f"/api/tasks/{task_id}", json={"title": "renamed"}, headers=account.headers)
    assert untouched.json()["webhook"] is None


def test_a_host_that_resolves_to_loopback_when_sending_fails_with_forbidden_address(
    hook_client, make_account, receiver, start_worker, session_factory
):
    account = make_account()
    hook_client.post("/api/me/webhook-secret", headers=account.headers)
    # Allowed when it was set; by the time of the send the rule is in force again.
    created = hook_client.post(
        "/api/agent/execute",
        json={**GOAL, "webhook": {"url": f"http://localhost:{receiver.port}/h"}},
        headers=account.headers,
    ).json()
    start_worker(run_settings=webhook_settings(webhook_allow_private=False))
    [row] = wait_for_rows(session_factory, created["runId"])
    assert row.status == "failed"
    assert row.last_error.startswith("forbidden_address")
    assert row.attempts == 1
    assert receiver.received == []


def test_only_the_subscribed_events_are_delivered(
    hook_client, make_account, receiver, start_worker, session_factory, hook_settings
):
    account = make_account()
    receiver.secrets = [hook_client.post("/api/me/webhook-secret", headers=account.headers).json()["secret"]]
    failed_only = hook_client.post(
        "/api/agent/execute",
        json={**GOAL, "webhook": {"url": receiver.url, "events": ["run.failed"]}},
        headers=account.headers,
    ).json()
    completed = hook_client.post(
        "/api/agent/execute",
        json={**GOAL, "webhook": {"url": receiver.url, "events": ["run.completed"]}},
        headers=account.headers,
    ).json()
    start_worker(run_settings=hook_settings)
    wait_for_runs(session_factory, [failed_only["runId"], completed["runId"]])
    [got] = receiver.wait_for(1)
    assert got.payload["data"]["id"] == completed["runId"]
    assert rows_of(session_factory, failed_only["runId"]) == []


def test_cancelled_queued_runs_send_run_cancelled_when_subscribed(
    hook_client, make_account, receiver, start_worker, session_factory, hook_settings
):
    account = make_account()
    receiver.secrets = [hook_client.post("/api/me/webhook-secret", headers=account.headers).json()["secret"]]
    created = hook_client.post(
        "/api/agent/execute",
        json={**GOAL, "webhook": {"url": receiver.url, "events": ["run.cancelled"]}},
        headers=account.headers,
    ).json()
    # No worker yet: the run is still queued when the task is cancelled.
    assert (
        hook_client.post(f"/api/tasks/{created['taskId']}/cancel", headers=account.headers).status_code == 200
    )
    [row] = rows_of(session_factory, created["runId"])
    assert row.event == "run.cancelled"
    start_worker(run_settings=hook_settings)
    [got] = receiver.wait_for(1)
    assert got.payload["type"] == "run.cancelled"
    assert got.payload["data"]["status"] == "cancelled"
    assert got.verified_with


def test_a_skipped_slot_sends_run_skipped_when_subscribed(
    hook_client, make_account, receiver, start_worker, session_factory, hook_settings
):
    from actors.sending import send_dispatches
    from app.services.scheduling import run_scheduling_pass

    account = make_account()
    receiver.secrets = [hook_client.post("/api/me/webhook-secret", headers=account.headers).json()["secret"]]
    created = hook_client.post(
        "/api/agent/execute",
        json={
            **GOAL,
            "schedule": {"enabled": True, "cron": "* * * * *", "timezone": "UTC"},
            "webhook": {"url": receiver.url, "events": ["run.skipped"]},
        },
        headers=account.headers,
    ).json()
    run_now = hook_client.post(f"/api/tasks/{created['taskId']}/run", headers=account.headers).json()
    with session_factory.begin() as session:
        session.execute(
            text("UPDATE tasks SET next_run_at = :at WHERE id = :id"),
            {"at": datetime.now(UTC) - timedelta(minutes=1), "id": created["taskId"]},
        )
    from actors.webhooks import install_outbox

    install_outbox(session_factory)
    result = run_scheduling_pass(
        session_factory,
        now=datetime.now(UTC),
        send=lambda dispatches: send_dispatches(session_factory, dispatches, SYSTEM_CLOCK),
    )
    assert result.runs_skipped == 1  # the manual run was still queued
    start_worker(run_settings=hook_settings)
    [got] = receiver.wait_for(1)
    assert got.payload["type"] == "run.skipped"
    assert got.payload["data"]["status"] == "skipped"
    assert got.payload["data"]["id"] != run_now["runId"]


def test_the_outbox_sends_after_commit_and_forgets_on_rollback(settings):
    from app.db import make_engine, make_session_factory
    from app.webhooks import outbox

    engine = make_engine(settings, pool_size=1, autocommit=True)  # as the worker's
    try:
        factory = make_session_factory(engine)
        sent: list[outbox.PendingDelivery] = []
        outbox.install(factory, sent.extend)
        outbox.install(factory, sent.extend)  # once per factory
        committed = outbox.PendingDelivery(uuid.uuid4(), "m-1")
        with factory.begin() as session:
            outbox.stash(session, [committed])
            assert sent == []  # not before the commit
        assert sent == [committed]

        def fail_in_a_transaction() -> None:
            with factory.begin() as session:
                outbox.stash(session, [outbox.PendingDelivery(uuid.uuid4(), "m-2")])
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            fail_in_a_transaction()
        with factory.begin() as session:
            session.execute(text("SELECT 1"))
        assert sent == [committed]
    finally:
        engine.dispose()
