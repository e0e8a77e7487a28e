"""What becomes of deliveries: the metrics by outcome (`agentsched_webhook_deliveries_total` counts
deliveries, not attempts), a 410 ending the user's other pending deliveries to that URL, and
finished rows deleted after their retention."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from app.metrics import REGISTRY
from app.models import WebhookDelivery
from app.providers.offline import OfflineProvider
from app.services.execution import RunEnvironment, execute_run
from app.webhooks.attempts import DeliveryEnvironment, attempt_delivery
from tests.integration.test_webhooks import execute, new_secret, wait_for_delivery_status


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_deliveries_are_counted_by_outcome_and_their_latency_observed(
    hook_client, make_account, receiver, start_worker, session_factory, hook_settings
):
    before = {
        "retrying": metric("agentsched_webhook_attempts_total", outcome="retrying"),
        "delivered": metric("agentsched_webhook_attempts_total", outcome="delivered"),
        "latency": metric("agentsched_webhook_delivery_latency_seconds_count"),
        "final": metric("agentsched_webhook_deliveries_total", outcome="delivered"),
    }
    account = make_account()
    receiver.secrets = [new_secret(hook_client, account)]
    receiver.script = [500]
    created = execute(hook_client, account, {"url": receiver.url})
    start_worker(run_settings=hook_settings)
    receiver.wait_for(2)
    wait_for_delivery_status(session_factory, created["runId"])
    assert metric("agentsched_webhook_attempts_total", outcome="retrying") == before["retrying"] + 1
    assert metric("agentsched_webhook_attempts_total", outcome="delivered") == before["delivered"] + 1
    assert metric("agentsched_webhook_delivery_latency_seconds_count") == before["latency"] + 1
    # One delivery, two attempts: deliveries count the delivery once, by its final outcome.
    assert metric("agentsched_webhook_deliveries_total", outcome="delivered") == before["final"] + 1


def test_a_410_fails_the_users_other_pending_deliveries_to_that_url_and_counts_each_once(
    hook_client, make_account, receiver, engine, session_factory, hook_settings
):
    account = make_account()
    receiver.secrets = [new_secret(hook_client, account)]
    receiver.script = [410]
    # Two runs end in a process without the outbox hook: both deliveries pending, none sent.
    ending = RunEnvironment(sessionmaker(engine, expire_on_commit=False), OfflineProvider(), hook_settings)
    runs = [execute(hook_client, account, {"url": receiver.url})["runId"] for _ in range(2)]
    for run_id in runs:
        execute_run(ending, uuid.UUID(run_id))
    with session_factory() as session:
        first, second = (
            session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.run_id == uuid.UUID(run_id)))
            for run_id in runs
        )
    before = {
        "failed": metric("agentsched_webhook_deliveries_total", outcome="failed"),
        "delivered": metric("agentsched_webhook_deliveries_total", outcome="delivered"),
        "gone": metric("agentsched_webhook_attempts_total", outcome="gone"),
    }

    env = DeliveryEnvironment(session_factory, hook_settings)
    assert attempt_delivery(env, first) is None
    assert len(receiver.received) == 1
    with session_factory() as session:
        rows = {row.id: row for row in session.scalars(select(WebhookDelivery))}
    assert (rows[first].status, rows[first].last_status_code, rows[first].attempts) == ("failed", 410, 1)
    assert (rows[second].status, rows[second].attempts) == ("failed", 0)
    assert "410 Gone" in rows[second].last_error
    assert attempt_delivery(env, second) is None  # nothing left to send
    assert len(receiver.received) == 1

    assert metric("agentsched_webhook_deliveries_total", outcome="failed") == before["failed"] + 2
    assert metric("agentsched_webhook_deliveries_total", outcome="delivered") == before["delivered"]
    assert metric("agentsched_webhook_attempts_total", outcome="gone") == before["gone"] + 1


def test_finished_deliveries_past_their_retention_are_deleted_and_pending_ones_kept(
    hook_client, make_account, receiver, engine, session_factory, hook_settings
):
    from datetime import timedelta

    from sqlalchemy import update

    from app.clock import SYSTEM_CLOCK
    from app.webhooks.cleanup import DELIVERY_RETENTION_DAYS, delete_old_deliveries

    account = make_account()
    ending = RunEnvironment(sessionmaker(engine, expire_on_commit=False), OfflineProvider(), hook_settings)
    runs = [execute(hook_client, account, {"url": receiver.url})["runId"] for _ in range(4)]
    for run_id in runs:
        execute_run(ending, uuid.UUID(run_id))
    now = SYSTEM_CLOCK.now()
    old = now - timedelta(days=DELIVERY_RETENTION_DAYS, hours=1)
    recent = now - timedelta(days=DELIVERY_RETENTION_DAYS - 1)
    states = {  # run -> (status, occurred_at)
        runs[0]: ("delivered", old),
        runs[1]: ("failed", old),
        runs[2]: ("delivered", recent),
        runs[3]: ("pending", old),  # still being retried: never deleted
    }
    with session_factory.begin() as session:
        for run_id, (status, occurred_at) in states.items():
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.run_id == uuid.UUID(run_id))
                .values(status=status, occurred_at=occurred_at)
            )
    with session_factory.begin() as session:
        assert delete_old_deliveries(session, now, batch=1) == 2
    with session_factory() as session:
        left = {str(run_id) for run_id in session.scalars(select(WebhookDelivery.run_id))}
    assert left == {runs[2], runs[3]}
