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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeGuard

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name
from dramatiq.middleware import Middleware
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from app.clock import Clock
from app.services.dispatch import Dispatch, RecordedRuns, actor_name, mark_sent, queue_name

logger = logging.getLogger(__name__)

#: Messages per pipelined round trip to Redis.
PIPELINE_BATCH = 2_000


def send_dispatches(
    session_factory: sessionmaker[Session], dispatches: Sequence[Dispatch], clock: Clock
) -> list[tuple[uuid.UUID, str]]:
    """Enqueue one message per run (ids only), then record each run's message id.

    A message that fails to reach Redis is left unrecorded; the reconciler sends it later.
    """
    if isinstance(dispatches, RecordedRuns):  # every id is on its row already
        return send_messages(dispatches)
    sent = send_messages(dispatches)
    # A dispatch that came with its message id has it recorded on its run already.
    recorded = {d.run_id for d in dispatches if d.message_id is not None}
    to_mark = [pair for pair in sent if pair[0] not in recorded]
    if to_mark:
        with session_factory.begin() as session:
            mark_sent(session, to_mark, clock.now())
    return sent


def send_messages(dispatches: Sequence[Dispatch]) -> list[tuple[uuid.UUID, str]]:
    """Enqueue one message per run, recording nothing: for runs whose rows already hold their
    message id (a send that fails leaves that id missing from Redis, so the reconciler resends)."""
    if not dispatches:
        return []
    broker = dramatiq.get_broker()
    if isinstance(dispatches, RecordedRuns) and _can_script_enqueue(broker):
        try:
            _eval_enqueue(broker, dispatches.pairs_by_priority, current_millis())
        except (RedisError, dramatiq.errors.BrokerError) as exc:
            logger.error(
                "could not reach Redis for %d run message(s): %s; the reconciler will resend",
                len(dispatches),
                exc,
            )
            return []
        return dispatches.sent()
    sent: list[tuple[uuid.UUID, str]] = []
    for chunk in _chunks(dispatches, PIPELINE_BATCH):
        try:
            sent.extend(enqueue_runs(broker, chunk))
        except (RedisError, dramatiq.errors.BrokerError) as exc:  # expected in an outage: no traceback
            logger.error(
                "could not reach Redis for %d run message(s) (first run %s): %s; the reconciler will resend",
                len(chunk),
                chunk[0].run_id,
                exc,
            )
    return sent


def enqueue_runs(broker: Any, dispatches: Sequence[Dispatch]) -> list[tuple[uuid.UUID, str]]:
    """Put one message per dispatch on its priority queue; returns (run id, message id) pairs."""
    if _can_script_enqueue(broker) and all(d.delay_ms <= 0 for d in dispatches):
        return _script_enqueue(broker, dispatches, current_millis())
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


# What dispatch.lua's "enqueue" does (HSET into `<queue>.msgs`, RPUSH onto `<queue>`) for a
# whole batch in one script call, the messages built in Redis from their ids: exactly the bytes
# `Message.encode()` makes with the JSON encoder (`message_json` says which; a test compares).
# KEYS: per queue, its list and its `.msgs` hash. ARGV: the timestamp (ms), then per queue its
# name, actor name and its messages as "run-id message-id" pairs, comma-separated (one argument,
# so a batch costs the client a few arguments, not two a message).
_ENQUEUE_BATCH = """
local ts = ARGV[1]
local k = 1
for pos = 2, #ARGV, 3 do
    local queue_name, actor_name, pairs = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2]
    local queue_key, msgs_key = KEYS[k], KEYS[k + 1]
    k = k + 2
    local head = '{"queue_name":"' .. queue_name .. '","actor_name":"' .. actor_name .. '","args":["'
    local fields, ids, n = {}, {}, 0
    for run_id, mid in string.gmatch(pairs, '([^ ,]+) ([^ ,]+)') do
        n = n + 1
        fields[2 * n - 1] = mid
        fields[2 * n] = head .. run_id .. '"],"kwargs":{},"options":{"redis_message_id":"' .. mid
            .. '"},"message_id":"' .. mid .. '","message_timestamp":' .. ts .. '}'
        ids[n] = mid
    end
    for first = 1, n, 1000 do
        local last = math.min(first + 999, n)
        redis.call('HSET', msgs_key, unpack(fields, 2 * first - 1, 2 * last))
        redis.call('RPUSH', queue_key, unpack(ids, first, last))
    end
end
return 1
"""


def message_json(queue: str, actor: str, run_id: str, message_id: str, timestamp_ms: int) -> bytes:
    """The bytes `_ENQUEUE_BATCH` stores for one message (for the test that compares them with
    what Dramatiq's `Message.encode()` makes)."""
    return (
        f'{{"queue_name":"{queue}","actor_name":"{actor}","args":["{run_id}"],"kwargs":{{}},'
        f'"options":{{"redis_message_id":"{message_id}"}},"message_id":"{message_id}",'
        f'"message_timestamp":{timestamp_ms}}}'
    ).encode()


def _can_script_enqueue(broker: Any) -> TypeGuard[RedisBroker]:
    from dramatiq.encoder import JSONEncoder

    return (
        isinstance(broker, RedisBroker)
        and type(dramatiq.get_encoder()) is JSONEncoder
        and not _has_enqueue_hooks(broker)
    )


def _script_enqueue(
    broker: RedisBroker, dispatches: Sequence[Dispatch], now_ms: int
) -> list[tuple[uuid.UUID, str]]:
    """Undelayed messages of a batch in one script call; ids are plain strings (no JSON escaping
    needed, and no space or comma: run ids are UUIDs, message ids UUIDs or our own hex)."""
    by_priority: dict[str, list[str]] = {}
    sent: list[tuple[uuid.UUID, str]] = []
    for dispatch in dispatches:
        message_id = dispatch.message_id or str(uuid.uuid4())
        by_priority.setdefault(dispatch.priority, []).append(f"{dispatch.run_id} {message_id}")
        sent.append((dispatch.run_id, message_id))
    _eval_enqueue(broker, {priority: ",".join(pairs) for priority, pairs in by_priority.items()}, now_ms)
    return sent


def _eval_enqueue(broker: RedisBroker, pairs_by_priority: Mapping[str, str], now_ms: int) -> None:
    keys: list[str] = []
    args: list[str | int] = [now_ms]
    for priority, pairs in pairs_by_priority.items():
        if not pairs:
            continue
        queue = queue_name(priority)
        keys += [f"{broker.namespace}:{queue}", f"{broker.namespace}:{queue}.msgs"]
        args += [queue, actor_name(priority), pairs]
    if keys:
        broker.client.eval(_ENQUEUE_BATCH, len(keys), *keys, *args)


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
