"""Messages held by dead Dramatiq workers go back to their queues, deterministically.

A Redis-broker consumer moves each message it prefetches into its worker's ack set
(`dramatiq:__acks__.<worker>.<queue>`) until the message is acked; the message stays in
`<queue>.msgs`, so to the reconciler it looks present. When the worker dies (`kill -9`, a lost
host), Dramatiq itself moves such messages back only during "maintenance", which runs on a
random 0.1% of broker commands and for one queue at a time: in practice minutes later.

`requeue_dead_workers_messages` does that maintenance on purpose, every reconciler round: a
worker whose broker heartbeat (`dramatiq:__heartbeats__`, written on every broker command and,
by our workers, on every lease heartbeat) is older than `timeout_ms` is dead; every message in
any of its ack sets still in its queue's `.msgs` hash goes back onto that queue under the same
id (so the run's recorded message id stays valid and no duplicate is made), and the worker's
ack sets and heartbeat are removed. It is the broker's own maintenance step (dispatch.lua), for
all of a dead worker's queues at once, in one atomic script.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from app.services.stats import BROKER_NAMESPACE

_REQUEUE_DEAD = """
local namespace = ARGV[1]
local heartbeats = namespace .. ":__heartbeats__"
local dead = redis.call("zrangebyscore", heartbeats, 0, tonumber(ARGV[2]) - tonumber(ARGV[3]))
local moved = 0
for _, worker in ipairs(dead) do
    local prefix = namespace .. ":__acks__." .. worker .. "."
    for _, acks in ipairs(redis.call("keys", prefix .. "*")) do
        local queue = namespace .. ":" .. string.sub(acks, string.len(prefix) + 1)
        for _, message_id in ipairs(redis.call("smembers", acks)) do
            if redis.call("hexists", queue .. ".msgs", message_id) == 1 then
                redis.call("rpush", queue, message_id)
                moved = moved + 1
            end
        end
        redis.call("del", acks)
    end
    redis.call("zrem", heartbeats, worker)
end
return {#dead, moved}
"""


@dataclass(frozen=True, slots=True)
class DeadWorkers:
    #: Workers found dead (heartbeat older than the timeout).
    workers: int = 0
    #: Messages they held, put back on their queues.
    requeued: int = 0


def heartbeats_key(namespace: str = BROKER_NAMESPACE) -> str:
    return f"{namespace}:__heartbeats__"


def requeue_dead_workers_messages(
    redis_client: Redis, *, now_ms: int, timeout_ms: int, namespace: str = BROKER_NAMESPACE
) -> DeadWorkers:
    """Put back on their queues the messages of every worker silent for `timeout_ms`."""
    workers, requeued = redis_client.eval(_REQUEUE_DEAD, 0, namespace, now_ms, timeout_ms)
    return DeadWorkers(int(workers), int(requeued))


def record_broker_heartbeat(
    redis_client: Redis, worker_id: str, now_ms: int, namespace: str = BROKER_NAMESPACE
) -> None:
    """Tell the broker this worker is alive (what every Dramatiq broker command also does), so a
    worker whose consumers are all busy with long runs is not taken for dead."""
    redis_client.zadd(heartbeats_key(namespace), {worker_id: now_ms})
