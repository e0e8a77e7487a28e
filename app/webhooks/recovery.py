"""The reconciler's part for webhooks: send again the deliveries whose message was lost.

A pending delivery overdue by the grace (its attempt should have started by then), not leased
by a live attempt, whose latest message is in neither the `webhooks` queue's `.msgs` hash nor
its delay queue's, lost its message (the process died between the commit and the send, or
Redis lost it). It gets a new message. Sending again is safe: an attempt is claimed by one
conditional UPDATE, so a second message finds nothing to claim.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from redis import Redis
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.services.stats import delayed_messages_key, messages_key
from app.webhooks.outbox import PendingDelivery

logger = logging.getLogger(__name__)

#: The Dramatiq queue of webhook messages.
WEBHOOK_QUEUE = "webhooks"
WEBHOOK_ACTOR = "deliver_webhook"
#: Deliveries looked at per reconciler round.
RECOVER_BATCH = 5_000
#: pg_try_advisory_xact_lock key held while recovering deliveries ("agentsched webhook"), so
#: two schedulers never send the same lost delivery twice in one round.
RECOVER_LOCK_KEY = 0x61_67_73_77_68_6B

_OVERDUE = text(
    """
    SELECT id, message_id
      FROM webhook_deliveries
     WHERE status = 'pending' AND next_attempt_at <= :cutoff
       AND (lease_expires_at IS NULL OR lease_expires_at < :now)
     ORDER BY next_attempt_at
     LIMIT :limit
    """
)

_RENEW = text(
    """
    UPDATE webhook_deliveries AS d SET message_id = s.message_id
      FROM unnest(CAST(:ids AS uuid[]), CAST(:message_ids AS text[])) AS s(id, message_id)
     WHERE d.id = s.id AND d.status = 'pending'
    """
)


def recover_deliveries(
    session_factory: sessionmaker[Session],
    *,
    now: datetime,
    redis_client: Redis,
    send: Callable[[Sequence[PendingDelivery]], object],
    grace_ms: int,
    batch_size: int = RECOVER_BATCH,
) -> int:
    """Give every overdue pending delivery whose message is gone a new one; returns how many
    (0 too when another reconciler is at it: it holds the advisory lock until it has sent)."""
    with session_factory() as session, session.begin():
        locked: bool = session.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": RECOVER_LOCK_KEY}
        ).scalar_one()
        if not locked:
            logger.debug("another reconciler is recovering webhook deliveries; skipping this round")
            return 0
        return _recover(session_factory, session, now, redis_client, send, grace_ms, batch_size)


def _recover(
    session_factory: sessionmaker[Session],
    session: Session,
    now: datetime,
    redis_client: Redis,
    send: Callable[[Sequence[PendingDelivery]], object],
    grace_ms: int,
    batch_size: int,
) -> int:
    cutoff = now - timedelta(milliseconds=grace_ms)
    rows = session.execute(_OVERDUE, {"cutoff": cutoff, "now": now, "limit": batch_size}).all()
    if not rows:
        return 0
    pipe = redis_client.pipeline(transaction=False)
    for row in rows:
        pipe.hexists(messages_key(WEBHOOK_QUEUE), row.message_id or "-")
        pipe.hexists(delayed_messages_key(WEBHOOK_QUEUE), row.message_id or "-")
    replies = iter(pipe.execute())
    lost = [row.id for row in rows if not (next(replies) | next(replies))]
    if not lost:
        return 0
    fresh = [PendingDelivery(delivery_id, str(uuid.uuid4())) for delivery_id in lost]
    with session_factory.begin() as renewing:  # committed before the send, under the lock
        renewing.execute(
            _RENEW, {"ids": [d.delivery_id for d in fresh], "message_ids": [d.message_id for d in fresh]}
        )
    send(fresh)
    logger.warning("reconciler: %d webhook delivery message(s) lost or never sent; sent again", len(fresh))
    return len(fresh)
