"""The webhook actor: one delivery attempt per message, on its own queue.

A slow receiver must never hold up the runs, so an attempt does not run on the Dramatiq worker
thread that took its message: the thread hands it to this process's sender pool
(WEBHOOK_CONCURRENCY threads, each attempt bounded by the 10 s send timeout) and is free again
at once. A message that finds every sender busy goes back to Redis with a short delay, holding
no thread while it waits. The message is acked when handed over; should the process die before
the attempt is recorded, the delivery stays pending and the reconciler sends it again.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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

#: Handing an attempt over takes milliseconds; this is a backstop.
ACTOR_TIME_LIMIT_MS = 60_000
#: After every run queue (they are 0..30): a busy worker takes runs first.
ACTOR_PRIORITY = 100
#: A message that found every sender busy comes back after this long (ms, jittered).
DEFER_MS = (200, 1_000)


class SenderPool:
    """At most `size` attempts at once, on threads of their own; `try_submit` never waits."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots = threading.BoundedSemaphore(size)
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="webhook-sender")

    def try_submit(self, work: Callable[[], None]) -> bool:
        if not self._slots.acquire(blocking=False):
            return False

        def run() -> None:
            try:
                work()
            except Exception:  # the delivery stays pending; the reconciler sends it again
                logger.exception("webhook attempt failed unexpectedly")
            finally:
                self._slots.release()

        self._pool.submit(run)
        return True

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)


_pool: SenderPool | None = None
_pool_lock = threading.Lock()
_override: DeliveryEnvironment | None = None


def _delivery_environment() -> DeliveryEnvironment:
    if _override is not None:
        return _override
    env = run_environment()
    return DeliveryEnvironment(env.session_factory, env.settings, env.clock, timeout_s=SEND_TIMEOUT_S)


def set_delivery_environment(environment: DeliveryEnvironment | None) -> None:
    """Use this environment for deliveries in this process (tests swap the resolver, timeout);
    None goes back to the run environment's."""
    global _override
    _override = environment


def _sender_pool(size: int) -> SenderPool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.size != size:
            if _pool is not None:
                _pool.shutdown()  # its running attempts finish
            _pool = SenderPool(size)
        return _pool


def _attempt(env: DeliveryEnvironment, delivery_id: uuid.UUID) -> None:
    retry = attempt_delivery(env, delivery_id)
    if retry is not None:
        send_delivery_messages([retry])


def deliver(delivery_id: str) -> None:
    env = _delivery_environment()
    target = uuid.UUID(delivery_id)
    if _sender_pool(env.settings.webhook_concurrency).try_submit(lambda: _attempt(env, target)):
        return
    message_id = str(uuid.uuid4())
    defer(env.session_factory, target, message_id)
    send_delivery_messages([PendingDelivery(target, message_id, random.randint(*DEFER_MS))])


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
