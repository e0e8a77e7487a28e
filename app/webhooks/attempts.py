"""One attempt to deliver a webhook: claim it, sign it, POST it to the checked address, record.

The claim is one conditional UPDATE (pending, due, not leased by a live attempt), so a
duplicate message, or one the reconciler sent again, finds nothing and does nothing. The
attempt number fences the outcome: an attempt whose lease expired (its sender presumed dead)
cannot overwrite a newer one. Outcomes (CONTRACT "Webhooks"):

* 2xx: delivered.
* 410 Gone: failed, the task's webhook disabled, and the user's other pending deliveries to
  that URL failed too (no more retries for it).
* the host now resolves to a forbidden address: failed, `forbidden_address`.
* anything else (non-2xx, timeout, connection error, no signing secret yet): another attempt
  after an exponential, jittered backoff, while the event is younger than WEBHOOK_RETRY_HOURS;
  then failed.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.orm import Session, sessionmaker

from app.clock import SYSTEM_CLOCK, Clock
from app.metrics import record_webhook_attempt, record_webhook_deliveries_failed
from app.models import TaskRun
from app.services.retry import backoff_ms
from app.settings import Settings
from app.webhooks import sender
from app.webhooks.addresses import (
    ForbiddenAddress,
    Resolver,
    UnresolvableHost,
    resolve_target,
    system_resolver,
)
from app.webhooks.outbox import PendingDelivery
from app.webhooks.payload import event_body
from app.webhooks.secret_store import SecretUnavailable
from app.webhooks.signing import signature_header, signing_secrets

logger = logging.getLogger(__name__)

#: An attempt's lease lasts its timeout plus this much (seconds).
LEASE_GRACE_S = 20.0
NO_SECRET_ERROR = "no signing secret: create one with POST /api/me/webhook-secret"


@dataclass
class DeliveryEnvironment:
    session_factory: sessionmaker[Session]
    settings: Settings
    clock: Clock = field(default=SYSTEM_CLOCK)
    resolver: Resolver = field(default=system_resolver)
    timeout_s: float = sender.SEND_TIMEOUT_S


#: The ended run's columns that its payload shows (a final run never changes, so every attempt
#: sends the same bytes), read by the claim itself: one statement per attempt, plus its outcome.
_RUN_FIELDS = [
    "trigger",
    "scheduled_for",
    "status",
    "priority",
    "attempts",
    "max_attempts",
    "queued_at",
    "started_at",
    "finished_at",
    "tokens_used",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "step_count",
    "credits_used",
    "tokens_over_budget",
    "result",
    "error",
]
RUN_COLUMNS = ", ".join(f"r.{name} AS run_{name}" for name in _RUN_FIELDS)

_CLAIM = text(
    f"""
    UPDATE webhook_deliveries AS d
       SET attempts = d.attempts + 1, lease_expires_at = :lease_until
      FROM users AS u, task_runs AS r
     WHERE d.id = :id AND u.id = d.user_id AND r.id = d.run_id AND d.status = 'pending'
       AND d.next_attempt_at <= :now
       AND (d.lease_expires_at IS NULL OR d.lease_expires_at < :now)
    RETURNING d.id, d.run_id, d.task_id, d.event, d.url, d.attempts, d.occurred_at,
              u.webhook_secret, u.webhook_secret_previous, u.webhook_secret_previous_until,
              {RUN_COLUMNS}
    """
)

_DELIVERED = text(
    """
    UPDATE webhook_deliveries
       SET status = 'delivered', delivered_at = :now, last_status_code = :code, last_error = NULL,
           next_attempt_at = NULL, lease_expires_at = NULL
     WHERE id = :id AND attempts = :attempt AND status = 'pending'
    """
)

_RETRY = text(
    """
    UPDATE webhook_deliveries
       SET next_attempt_at = :next, message_id = :message_id, last_status_code = :code,
           last_error = :error, lease_expires_at = NULL
     WHERE id = :id AND attempts = :attempt AND status = 'pending'
    RETURNING id
    """
)

_FAILED = text(
    """
    UPDATE webhook_deliveries
       SET status = 'failed', last_status_code = :code, last_error = :error,
           next_attempt_at = NULL, lease_expires_at = NULL
     WHERE id = :id AND attempts = :attempt AND status = 'pending'
    """
)

# 410 Gone: this delivery and every other pending one of the user to that URL fail, and the
# task's webhook is disabled (while it still points there), in one statement.
_GONE = text(
    """
    WITH this AS (
        UPDATE webhook_deliveries
           SET status = 'failed', last_status_code = 410, last_error = :error,
               next_attempt_at = NULL, lease_expires_at = NULL
         WHERE id = :id AND attempts = :attempt AND status = 'pending'
        RETURNING task_id, user_id, url
    ), others AS (
        UPDATE webhook_deliveries AS d
           SET status = 'failed', last_error = :others_error, next_attempt_at = NULL
          FROM this
         WHERE d.user_id = this.user_id AND d.url = this.url AND d.status = 'pending' AND d.id <> :id
        RETURNING d.id
    ), disabled AS (
        UPDATE tasks AS t SET webhook_disabled_at = :now
          FROM this
         WHERE t.id = this.task_id AND t.webhook_url = this.url AND t.webhook_disabled_at IS NULL
    )
    SELECT count(*) FROM others
    """
)


def attempt_delivery(env: DeliveryEnvironment, delivery_id: uuid.UUID) -> PendingDelivery | None:
    """Make one attempt, if the delivery is due and ours. Returns the message to send (after
    this function's commits) for the next attempt, when there will be one."""
    now = env.clock.now()
    lease_until = now + timedelta(seconds=env.timeout_s + LEASE_GRACE_S)
    with env.session_factory.begin() as session:
        claimed = session.execute(_CLAIM, {"id": delivery_id, "now": now, "lease_until": lease_until}).first()
    if claimed is None:
        logger.debug("webhook delivery %s: nothing to send (duplicate message or not due)", delivery_id)
        return None
    body = _body(claimed)
    try:
        secrets = signing_secrets(
            claimed.webhook_secret,
            claimed.webhook_secret_previous,
            claimed.webhook_secret_previous_until,
            now,
            key_setting=env.settings.webhook_secrets_key_value,
        )
    except SecretUnavailable as exc:
        return _retry_or_fail(env, claimed, None, exc.message, request_s=None)
    if not secrets:
        return _retry_or_fail(env, claimed, None, NO_SECRET_ERROR, request_s=None)
    try:
        target = resolve_target(
            claimed.url, allow_private=env.settings.webhook_allow_private, resolver=env.resolver
        )
    except ForbiddenAddress as exc:
        _record(env, _FAILED, claimed, code=None, error=f"forbidden_address: {exc.message}")
        record_webhook_attempt("forbidden", None, delivered_after_s=None)
        return None
    except UnresolvableHost as exc:
        return _retry_or_fail(env, claimed, None, exc.message, request_s=None)
    msg_id = str(claimed.id)
    timestamp = int(env.clock.now().timestamp())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
    }
    result = sender.post(target, body.encode(), headers, timeout_s=env.timeout_s)
    if result.ok:
        done = env.clock.now()
        _record(env, _DELIVERED, claimed, code=result.status_code, error=None, now=done)
        delivered_after = (done - claimed.occurred_at).total_seconds()
        record_webhook_attempt("delivered", result.elapsed_s, delivered_after_s=delivered_after)
        return None
    if result.status_code == 410:
        logger.info(
            "webhook delivery %s: 410 Gone from %s; the task's webhook is disabled", delivery_id, claimed.url
        )
        with env.session_factory.begin() as session:
            others_failed: int = session.execute(
                _GONE,
                {
                    "id": claimed.id,
                    "attempt": claimed.attempts,
                    "error": result.error,
                    "others_error": "the receiver answered 410 Gone to another delivery; not retried",
                    "now": env.clock.now(),
                },
            ).scalar_one()
        record_webhook_attempt("gone", result.elapsed_s, delivered_after_s=None)
        record_webhook_deliveries_failed(others_failed)
        return None
    return _retry_or_fail(
        env,
        claimed,
        result.status_code,
        result.error or "failed",
        request_s=result.elapsed_s,
        retry_after_s=result.retry_after_s,
    )


def _body(claimed: Row[Any]) -> str:
    run = TaskRun(
        id=claimed.run_id,
        task_id=claimed.task_id,
        **{name: getattr(claimed, f"run_{name}") for name in _RUN_FIELDS},
    )
    return event_body(claimed.event, claimed.occurred_at, run)


def _retry_or_fail(
    env: DeliveryEnvironment,
    claimed: Row[Any],
    code: int | None,
    error: str,
    *,
    request_s: float | None,
    retry_after_s: float | None = None,
) -> PendingDelivery | None:
    now = env.clock.now()
    delay = backoff_ms(
        claimed.attempts,
        min_ms=env.settings.webhook_min_backoff_ms,
        max_ms=env.settings.webhook_max_backoff_ms,
    )
    if retry_after_s is not None:  # the receiver asked for a pause (429, 503): at least that
        delay = max(delay, min(int(retry_after_s * 1000), env.settings.webhook_max_backoff_ms))
    next_at = now + timedelta(milliseconds=delay)
    if next_at > claimed.occurred_at + timedelta(hours=env.settings.webhook_retry_hours):
        logger.info(
            "webhook delivery %s: giving up after %d attempt(s): %s", claimed.id, claimed.attempts, error
        )
        _record(env, _FAILED, claimed, code=code, error=error)
        record_webhook_attempt("failed", request_s, delivered_after_s=None)
        return None
    message_id = str(uuid.uuid4())
    logger.info(
        "webhook delivery %s attempt %d failed (%s); next in %d ms",
        claimed.id,
        claimed.attempts,
        error,
        delay,
    )
    with env.session_factory.begin() as session:
        row = session.execute(
            _RETRY,
            {
                "id": claimed.id,
                "attempt": claimed.attempts,
                "next": next_at,
                "message_id": message_id,
                "code": code,
                "error": error,
            },
        ).first()
    record_webhook_attempt("retrying", request_s, delivered_after_s=None)
    return None if row is None else PendingDelivery(claimed.id, message_id, delay)


def _record(env: DeliveryEnvironment, statement: Any, claimed: Row[Any], **params: Any) -> None:
    with env.session_factory.begin() as session:
        session.execute(statement, {"id": claimed.id, "attempt": claimed.attempts, **params})


def defer(session_factory: sessionmaker[Session], delivery_id: uuid.UUID, message_id: str) -> None:
    """Record the id of the message that now carries a delivery (sent again while saturated)."""
    with session_factory.begin() as session:
        session.execute(
            text(
                "UPDATE webhook_deliveries SET message_id = :message_id WHERE id = :id AND status = 'pending'"
            ),
            {"id": delivery_id, "message_id": message_id},
        )
