"""The webhook actor: one delivery attempt per message, on its own queue.

A slow receiver must never starve the runs: a worker process sends at most
WEBHOOK_CONCURRENCY deliveries at once (each bounded by the 10 s send timeout); a message that
finds every slot taken goes back to Redis with a short delay, holding no thread while it waits.
The actor has the lowest Dramatiq priority, so a worker takes runs first.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from actors.worker import run_environment
from app.webhooks import outbox
from app.webhooks.attempts import DeliveryEnvironment, attempt_delivery, defer
from app.webhooks.outbox import PendingDelivery
from app.webhooks.recovery import WEBHOOK_ACTOR, WEBHOOK_QUEUE
from app.webhooks.sender import SEND_TIMEOUT_S

logger = logging.getLogger(__name__)

#: Backstop: an attempt is bounded by the send timeout; this catches anything else.
ACTOR_TIME_LIMIT_MS = 60_000
#: After every run queue (they are 0..30).
ACTOR_PRIORITY = 100
#: A message that found no free slot comes back after this long (ms, jittered).
DEFER_MS = (200, 1_000)

_slots: threading.BoundedSemaphore | None = None
_slots_lock = threading.Lock()
_override: DeliveryEnvironment | None = None


def _delivery_environment() -> DeliveryEnvironment:
    if _override is not None:
        return _override
    env = run_environment()
    return DeliveryEnvironment(env.session_factory, env.settings, env.clock, timeout_s=SEND_TIMEOUT_S)


def set_delivery_environment(environment: DeliveryEnvironment | None) -> None:
    """Use this environment for deliveries in this process (tests swap the resolver, timeout);
    None goes back to the run environment's."""
    global _override, _slots
    _override = environment
    _slots = None


def _semaphore(size: int) -> threading.BoundedSemaphore:
    global _slots
    if _slots is None:
        with _slots_lock:
            if _slots is None:
                _slots = threading.BoundedSemaphore(size)
    return _slots


def deliver(delivery_id: str) -> None:
    env = _delivery_environment()
    slots = _semaphore(env.settings.webhook_concurrency)
    if not slots.acquire(blocking=False):
        message_id = str(uuid.uuid4())
        defer(env.session_factory, uuid.UUID(delivery_id), message_id)
        send_delivery_messages(
            [PendingDelivery(uuid.UUID(delivery_id), message_id, random.randint(*DEFER_MS))]
        )
        return
    try:
        retry = attempt_delivery(env, uuid.UUID(delivery_id))
    finally:
        slots.release()
    if retry is not None:
        send_delivery_messages([retry])


deliver_webhook: dramatiq.Actor[[str], None] = dramatiq.actor(  # type: ignore[call-overload]
    deliver,
    actor_name=WEBHOOK_ACTOR,
    queue_name=WEBHOOK_QUEUE,
    priority=ACTOR_PRIORITY,
    time_limit=ACTOR_TIME_LIMIT_MS,
    max_retries=5,
)


def _message(item: PendingDelivery, now_ms: int) -> tuple[str, dramatiq.Message[Any]]:
    queue = WEBHOOK_QUEUE
    options: dict[str, Any] = {"redis_message_id": item.message_id}
    if item.delay_ms > 0:
        queue = dq_name(queue)
        options["eta"] = now_ms + item.delay_ms
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue,
        actor_name=WEBHOOK_ACTOR,
        args=(str(item.delivery_id),),
        kwargs={},
        options=options,
        message_id=item.message_id,
        message_timestamp=now_ms,
    )
    return queue, message


def send_delivery_messages(items: Sequence[PendingDelivery]) -> int:
    """Enqueue one message per delivery under the message id its row records; returns how many
    reached Redis (a delivery whose message did not is sent again by the reconciler)."""
    broker = dramatiq.get_broker()
    sent = 0
    for item in items:
        queue, message = _message(item, current_millis())
        try:
            if isinstance(broker, RedisBroker):
                broker.emit_before("enqueue", message, item.delay_ms or None)
                broker.do_enqueue(queue, item.message_id, message.encode())
                broker.emit_after("enqueue", message, item.delay_ms or None)
            else:  # another broker (a stub): its own ids
                broker.enqueue(message._replace(queue_name=WEBHOOK_QUEUE), delay=item.delay_ms or None)
            sent += 1
        except (RedisError, dramatiq.errors.BrokerError):
            logger.exception(
                "webhook delivery %s: could not reach Redis; the reconciler will resend", item.delivery_id
            )
    return sent


def install_outbox(session_factory: sessionmaker[Session]) -> None:
    """Send the webhook messages of deliveries written in this factory's sessions, after commit."""
    outbox.install(session_factory, send_delivery_messages)
