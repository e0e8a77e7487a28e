"""Reading deliveries (`GET /api/runs/{id}/deliveries`, `agentsched webhooks deliveries`) and
the task's webhook as the task view shows it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.models import Task, TaskRun, WebhookDelivery
from app.webhooks.addresses import WebhookConfig
from app.wire import iso


def list_deliveries(
    session: Session, run_id: uuid.UUID, *, user_id: uuid.UUID | None
) -> Sequence[WebhookDelivery]:
    """The run's deliveries, oldest first; `NotFound` for another user's run (`user_id` None: any)."""
    query = select(TaskRun.id).where(TaskRun.id == run_id)
    if user_id is not None:
        query = query.where(TaskRun.user_id == user_id)
    if session.scalar(query) is None:
        raise NotFound("run not found")
    return session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.run_id == run_id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    ).all()


def delivery_view(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": str(delivery.id),
        "event": delivery.event,
        "url": delivery.url,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "lastStatusCode": delivery.last_status_code,
        "lastError": delivery.last_error,
        "nextAttemptAt": iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "deliveredAt": iso(delivery.delivered_at),
    }


def webhook_view(task: Task) -> dict[str, Any] | None:
    """`{url, events, disabled, disabledAt}` or None when the task has no webhook."""
    if task.webhook_url is None:
        return None
    return {
        "url": task.webhook_url,
        "events": list(task.webhook_events or ()),
        "disabled": task.webhook_disabled_at is not None,
        "disabledAt": iso(task.webhook_disabled_at),
    }


def apply_webhook(task: Task, config: WebhookConfig | None) -> None:
    """Set (or with None, remove) the task's webhook; setting it again re-enables it after a 410."""
    if config is None:
        task.webhook_url = None
        task.webhook_events = None
    else:
        task.webhook_url = config.url
        task.webhook_events = list(config.events)
    task.webhook_disabled_at = None
