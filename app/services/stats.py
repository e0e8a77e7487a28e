"""Queue and orchestrator figures (GET /api/queue/stats, `agentsched status`, the scheduler log).

Redis answers for what sits in the broker (waiting and delayed messages, scheduler heartbeats,
the day's missed-slot counter); Postgres answers for runs (active, finished today, lateness).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from redis import Redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.models.enums import Priority
from app.services.dispatch import queue_name

#: The Dramatiq Redis broker's key prefix (RedisBroker's default namespace).
BROKER_NAMESPACE = "dramatiq"
SCHEDULER_KEY_PREFIX = "agentsched:scheduler:"
MISSED_SLOTS_KEY_PREFIX = "agentsched:slots:missed:"
#: Missed-slot counters are kept this long (a week of history).
MISSED_SLOTS_TTL_S = 8 * 86_400
#: Lateness is measured over scheduled runs that started within this window.
LATENESS_WINDOW = timedelta(hours=1)


# -- where the broker keeps messages (dramatiq/brokers/redis/dispatch.lua)


def queue_key(queue: str) -> str:
    """The list of message ids waiting on `queue`."""
    return f"{BROKER_NAMESPACE}:{queue}"


def messages_key(queue: str) -> str:
    """The hash of message id -> message for `queue` (until the message is acked)."""
    return f"{BROKER_NAMESPACE}:{queue}.msgs"


def delayed_messages_key(queue: str) -> str:
    """The hash of delayed messages for `queue` (its `.DQ` queue), until their eta."""
    return f"{BROKER_NAMESPACE}:{queue}.DQ.msgs"


# -- what the scheduler leaves in Redis


def record_missed_slots(redis_client: Redis, count: int, now: datetime) -> None:
    """Add `count` to the day's (UTC) missed-slot counter."""
    key = MISSED_SLOTS_KEY_PREFIX + now.astimezone(UTC).date().isoformat()
    pipe = redis_client.pipeline(transaction=False)
    pipe.incrby(key, count)
    pipe.expire(key, MISSED_SLOTS_TTL_S)
    pipe.execute()


def record_scheduler_heartbeat(
    redis_client: Redis, scheduler_id: str, started_at: datetime, ttl_s: int
) -> None:
    """Say that this scheduler process is alive (for `ttl_s` seconds) and since when."""
    value = json.dumps(
        {
            "startedAt": started_at.timestamp(),
            "beatAt": time.time(),  # for the heartbeat-age gauge on /metrics
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
    )
    redis_client.set(SCHEDULER_KEY_PREFIX + scheduler_id, value, ex=ttl_s)


def clear_scheduler_heartbeat(redis_client: Redis, scheduler_id: str) -> None:
    redis_client.delete(SCHEDULER_KEY_PREFIX + scheduler_id)


def _live_schedulers(redis_client: Redis) -> list[dict[str, Any]]:
    keys = list(redis_client.scan_iter(match=SCHEDULER_KEY_PREFIX + "*", count=1000))
    if not keys:
        return []
    values = redis_client.mget(keys)
    return [json.loads(value) for value in values if value]


# -- the figures

_UNFINISHED = text(
    """
    SELECT priority, status, count(*) FROM task_runs
     WHERE status IN ('queued', 'running')
     GROUP BY priority, status
    """
)

_FINISHED_SINCE = text(
    """
    SELECT priority, status, count(*) FROM task_runs
     WHERE finished_at >= :since
     GROUP BY priority, status
    """
)

# A run that started in the window either finished after it started (finished_at index) or has
# not finished (the partial index of unfinished runs); started_at is the first attempt's start.
_LATENESS = text(
    """
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY late_ms),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY late_ms),
           count(*)
      FROM (SELECT EXTRACT(EPOCH FROM started_at - scheduled_for) * 1000 AS late_ms
              FROM task_runs
             WHERE finished_at >= :since AND started_at >= :since
               AND trigger = 'schedule' AND scheduled_for IS NOT NULL
            UNION ALL
            SELECT EXTRACT(EPOCH FROM started_at - scheduled_for) * 1000
              FROM task_runs
             WHERE status IN ('queued', 'running') AND started_at >= :since
               AND trigger = 'schedule' AND scheduled_for IS NOT NULL) AS late
    """
)


def _day_start(now: datetime) -> datetime:
    day: date = now.astimezone(UTC).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _counts(session: Session, statement: Any, **params: Any) -> dict[tuple[str, str], int]:
    rows: Sequence[tuple[str, str, int]] = session.execute(statement, params).all()
    return {(priority, status): int(n) for priority, status, n in rows}


def _redis_figures(redis_client: Redis, now: datetime) -> tuple[list[int], list[int], int]:
    pipe = redis_client.pipeline(transaction=False)
    for priority in Priority:
        pipe.llen(queue_key(queue_name(priority)))
    for priority in Priority:
        pipe.hlen(delayed_messages_key(queue_name(priority)))
    pipe.get(MISSED_SLOTS_KEY_PREFIX + now.astimezone(UTC).date().isoformat())
    replies = pipe.execute()
    count = len(Priority)
    waiting = [int(n) for n in replies[:count]]
    delayed = [int(n) for n in replies[count : 2 * count]]
    return waiting, delayed, int(replies[-1] or 0)


def queue_stats(redis_client: Redis, session: Session, now: datetime) -> dict[str, Any]:
    """The figures of GET /api/queue/stats; per-queue counts are keyed by priority.

    waiting: messages in the Redis queue; delayed: messages in its delay queue (retry backoff);
    active: runs running; completed / failed: runs that ended so today (UTC).
    """
    waiting, delayed, missed = _redis_figures(redis_client, now)
    unfinished = _counts(session, _UNFINISHED)
    today = _counts(session, _FINISHED_SINCE, since=_day_start(now))
    queues: dict[str, dict[str, int]] = {}
    for index, priority in enumerate(Priority):
        queues[priority.value] = {
            "waiting": waiting[index],
            "active": unfinished.get((priority.value, "running"), 0),
            "completed": today.get((priority.value, "completed"), 0),
            "failed": today.get((priority.value, "failed"), 0),
            "delayed": delayed[index],
        }
    totals = {
        name: sum(figures[name] for figures in queues.values())
        for name in ("waiting", "active", "completed", "failed", "delayed")
    }
    lateness: tuple[float | None, float | None, int] = session.execute(
        _LATENESS, {"since": now - LATENESS_WINDOW}
    ).one()
    p50, p99, samples = lateness
    schedulers = _live_schedulers(redis_client)
    started = min((s["startedAt"] for s in schedulers), default=None)
    return {
        "queues": queues,
        "totals": totals,
        "orchestrator": {
            "running": bool(schedulers),
            "activeAgents": totals["active"],
            "queuedTasks": sum(n for (_, status), n in unfinished.items() if status == "queued"),
            "completedToday": totals["completed"],
            "failedToday": totals["failed"],
            "uptimeSeconds": max(0, int(now.timestamp() - started)) if started else 0,
        },
        "lateness": {
            "p50Ms": None if p50 is None else round(float(p50)),
            "p99Ms": None if p99 is None else round(float(p99)),
            "samples": int(samples),
        },
        "slots": {
            "skipped": sum(n for (_, status), n in today.items() if status == "skipped"),
            "missed": missed,
        },
        "flowControl": flow_control_figures(redis_client, session, now),
    }


def flow_control_figures(redis_client: Redis, session: Session, now: datetime) -> dict[str, int]:
    """Runs waiting for a user slot (parked in Postgres), model calls waiting for the provider
    budget or a 429's wait (across workers, from Redis), and 429s received today (UTC)."""
    from app.providers.ratelimit import rate_limited_today, waiting_for_budget
    from app.services.concurrency import waiting_for_slot

    return {
        "waitingForSlot": waiting_for_slot(session),
        "waitingForProviderBudget": waiting_for_budget(redis_client),
        "providerRateLimitedToday": rate_limited_today(redis_client, now.astimezone(UTC).date().isoformat()),
    }


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    days, hours = divmod(hours, 24)
    text_ = f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{days}d {text_}" if days else text_


def format_status_block(stats: dict[str, Any]) -> str:
    """The orchestrator status block, as the scheduler logs it and `agentsched status` prints it."""
    orch = stats["orchestrator"]
    late = stats["lateness"]
    slots = stats["slots"]
    flow = stats.get("flowControl") or {
        "waitingForSlot": 0,
        "waitingForProviderBudget": 0,
        "providerRateLimitedToday": 0,
    }
    running = f"yes (uptime {_duration(orch['uptimeSeconds'])})" if orch["running"] else "no"
    if late["samples"]:
        lateness = f"p50 {late['p50Ms']} ms, p99 {late['p99Ms']} ms ({late['samples']} runs)"
    else:
        lateness = "no scheduled run started in the last hour"
    lines = [
        "Orchestrator status",
        f"  Running:          {running}",
        f"  Active agents:    {orch['activeAgents']}",
        f"  Queued tasks:     {orch['queuedTasks']}",
        f"  Completed today:  {orch['completedToday']}",
        f"  Failed today:     {orch['failedToday']}",
        f"  Lateness (1 h):   {lateness}",
        f"  Slots today:      {slots['skipped']} skipped (overlap), {slots['missed']} missed",
        f"  Flow control:     {flow['waitingForSlot']} run(s) waiting for a user slot, "
        f"{flow['waitingForProviderBudget']} call(s) waiting for the provider budget, "
        f"{flow['providerRateLimitedToday']} provider 429(s) today",
        f"  {'queue':<8} {'waiting':>8} {'active':>8} {'completed':>10} {'failed':>8} {'delayed':>8}",
    ]
    rows = [*stats["queues"].items(), ("total", stats["totals"])]
    for name, q in rows:
        lines.append(
            f"  {name:<8} {q['waiting']:>8} {q['active']:>8} {q['completed']:>10} "
            f"{q['failed']:>8} {q['delayed']:>8}"
        )
    return "\n".join(lines)
