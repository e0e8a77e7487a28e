"""Sending run messages after commit, and recording in Postgres that they were sent.

`RedisBroker.enqueue` costs one round trip (one Lua call) per message, a few thousand messages a
second. A burst of scheduled runs is sent here in batches instead: per queue, one HSET of every
message into `<queue>.msgs` and one RPUSH of their ids onto `<queue>`, which is exactly what the
broker's dispatch.lua "enqueue" command does per message, in one MULTI/EXEC, so a batch reaches
Redis whole or not at all (a half-sent batch could leave a message in the hash but not in the
list, which the reconciler would take for present). The messages are identical to what
`broker.enqueue` builds (a `redis_message_id` option; for a delay, the `<queue>.DQ` queue and an
`eta` option). The broker's enqueue middleware hooks are called for each message, as
`broker.enqueue` does (skipped when no middleware overrides them). That this layout is the
broker's is checked by the integration tests, which run these messages on a real worker.

A message's `redis_message_id` is its `message_id`, which is recorded on the run: it is the key
of the message in the broker's `<queue>.msgs` hash, so the reconciler can tell a lost message.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name
from dramatiq.middleware import Middleware
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from app.clock import Clock
from app.services.dispatch import Dispatch, actor_name, mark_sent, queue_name

logger = logging.getLogger(__name__)

#: Messages per pipelined round trip to Redis.
PIPELINE_BATCH = 2_000


def send_dispatches(
    session_factory: sessionmaker[Session], dispatches: Sequence[Dispatch], clock: Clock
) -> list[tuple[uuid.UUID, str]]:
    """Enqueue one message per run (ids only), then record each run's message id.

    A message that fails to reach Redis is left unrecorded; the reconciler sends it later.
    """
    sent = send_messages(dispatches)
    if sent:
        with session_factory.begin() as session:
            mark_sent(session, sent, clock.now())
    return sent


def send_messages(dispatches: Sequence[Dispatch]) -> list[tuple[uuid.UUID, str]]:
    """Enqueue one message per run, recording nothing: for runs whose rows already hold their
    message id (a send that fails leaves that id missing from Redis, so the reconciler resends)."""
    if not dispatches:
        return []
    broker = dramatiq.get_broker()
    sent: list[tuple[uuid.UUID, str]] = []
    for chunk in _chunks(dispatches, PIPELINE_BATCH):
        try:
            sent.extend(enqueue_runs(broker, chunk))
        except (RedisError, dramatiq.errors.BrokerError):
            logger.exception(
                "could not reach Redis for %d run message(s) (first run %s); the reconciler will resend",
                len(chunk),
                chunk[0].run_id,
            )
    return sent


def enqueue_runs(broker: Any, dispatches: Sequence[Dispatch]) -> list[tuple[uuid.UUID, str]]:
    """Put one message per dispatch on its priority queue; returns (run id, message id) pairs."""
    messages = [_message(dispatch, current_millis()) for dispatch in dispatches]
    if not isinstance(broker, RedisBroker):  # another broker (e.g. a stub): one by one
        for message, dispatch in zip(messages, dispatches, strict=True):
            broker.enqueue(_undelayed(message), delay=dispatch.delay_ms or None)
    else:
        _pipeline_enqueue(broker, messages, dispatches)
    return [(d.run_id, m.message_id) for d, m in zip(dispatches, messages, strict=True)]


def _message(dispatch: Dispatch, now_ms: int) -> dramatiq.Message[Any]:
    """The message `broker.enqueue` would put in Redis for this run."""
    message_id = dispatch.message_id or str(uuid.uuid4())
    queue = queue_name(dispatch.priority)
    options: dict[str, Any] = {"redis_message_id": message_id}
    if dispatch.delay_ms > 0:
        queue = dq_name(queue)
        options["eta"] = now_ms + dispatch.delay_ms
    return dramatiq.Message(
        queue_name=queue,
        actor_name=actor_name(dispatch.priority),
        args=(str(dispatch.run_id),),
        kwargs={},
        options=options,
        message_id=message_id,
        message_timestamp=now_ms,
    )


def _undelayed(message: dramatiq.Message[Any]) -> dramatiq.Message[Any]:
    """The message as given to `broker.enqueue`, which adds the delay itself."""
    options = {k: v for k, v in message.options.items() if k not in ("eta", "redis_message_id")}
    return message._replace(queue_name=message.queue_name.removesuffix(".DQ"), options=options)


def _pipeline_enqueue(
    broker: RedisBroker, messages: Sequence[dramatiq.Message[Any]], dispatches: Sequence[Dispatch]
) -> None:
    """What dispatch.lua's "enqueue" does per message (HSET into `<queue>.msgs`, RPUSH onto
    `<queue>`), for a whole batch in one MULTI/EXEC: all of the batch reaches Redis or none."""
    hooks = _has_enqueue_hooks(broker)
    delays = [dispatch.delay_ms or None for dispatch in dispatches]
    if hooks:
        for message, delay in zip(messages, delays, strict=True):
            broker.emit_before("enqueue", message, delay)
    by_queue: dict[str, list[dramatiq.Message[Any]]] = {}
    for message in messages:
        by_queue.setdefault(message.queue_name, []).append(message)
    pipe = broker.client.pipeline(transaction=True)
    for queue, queued in by_queue.items():
        key = f"{broker.namespace}:{queue}"
        pipe.hset(f"{key}.msgs", mapping={m.message_id: m.encode() for m in queued})
        pipe.rpush(key, *(m.message_id for m in queued))
    pipe.execute()
    if hooks:
        for message, delay in zip(messages, delays, strict=True):
            broker.emit_after("enqueue", message, delay)


def _has_enqueue_hooks(broker: RedisBroker) -> bool:
    """Whether any middleware does something on enqueue (the base class's hooks do nothing)."""
    return any(
        type(m).before_enqueue is not Middleware.before_enqueue
        or type(m).after_enqueue is not Middleware.after_enqueue
        for m in broker.middleware
    )


def _chunks(items: Sequence[Dispatch], size: int) -> Iterator[Sequence[Dispatch]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
