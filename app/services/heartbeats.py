"""Process heartbeats in Redis, and the health verdicts drawn from them.

A worker process (and, in `app.services.stats`, a scheduler process) renews a key with a time to
live every few seconds: `{pid, host, startedAt, beatAt}`. A process that dies or hangs stops
renewing it and its key expires; a process that stops cleanly deletes it. `check` answers
whether a live one exists: by default one on this host whose pid is still running, so a
container's health check judges the process beside it and not a replica elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis

from app.embedded.common import pid_alive
from app.services.stats import SCHEDULER_KEY_PREFIX

WORKER_KEY_PREFIX = "agentsched:worker:"
#: A worker renews its heartbeat this often; a key lives this long without renewal.
WORKER_HEARTBEAT_INTERVAL_S = 10
WORKER_HEARTBEAT_TTL_S = 30

PREFIXES = {"worker": WORKER_KEY_PREFIX, "scheduler": SCHEDULER_KEY_PREFIX}


def record_worker_heartbeat(
    redis_client: Redis, worker_id: str, started_at: datetime, *, threads: int, ttl_s: int
) -> None:
    """Say that this worker process is alive and working, for `ttl_s` seconds."""
    value = {
        "startedAt": started_at.timestamp(),
        "beatAt": time.time(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "threads": threads,
    }
    redis_client.set(WORKER_KEY_PREFIX + worker_id, json.dumps(value), ex=ttl_s)


def clear_worker_heartbeat(redis_client: Redis, worker_id: str) -> None:
    redis_client.delete(WORKER_KEY_PREFIX + worker_id)


@dataclass(frozen=True)
class Heartbeat:
    process_id: str
    pid: int
    host: str
    age_s: float


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str


def heartbeats(redis_client: Redis, kind: str) -> list[Heartbeat]:
    """The unexpired heartbeats of `kind` (worker or scheduler)."""
    prefix = PREFIXES[kind]
    keys = list(redis_client.scan_iter(match=prefix + "*", count=1000))
    found = []
    for key, raw in zip(keys, redis_client.mget(keys) if keys else [], strict=True):
        if not raw:
            continue
        try:
            value: dict[str, Any] = json.loads(raw)
        except ValueError:
            continue
        name = key.decode() if isinstance(key, bytes) else str(key)
        beat_at = value.get("beatAt")
        age = time.time() - float(beat_at) if beat_at is not None else _age_from_ttl(redis_client, name)
        found.append(
            Heartbeat(
                process_id=name.removeprefix(prefix),
                pid=int(value.get("pid", 0)),
                host=str(value.get("host", "")),
                age_s=max(0.0, age),
            )
        )
    return found


def _age_from_ttl(redis_client: Redis, key: str) -> float:
    """For a heartbeat without `beatAt`: its age from what is left of its time to live."""
    left_ms = redis_client.pttl(key)
    ttl_s = WORKER_HEARTBEAT_TTL_S
    return ttl_s - left_ms / 1000 if isinstance(left_ms, int) and left_ms > 0 else float(ttl_s)


def check(redis_client: Redis, kind: str, *, anywhere: bool = False) -> Verdict:
    """Whether a `kind` process is alive: on this host with its pid running, or (anywhere) at all."""
    here = socket.gethostname()
    beats = heartbeats(redis_client, kind)
    candidates = beats if anywhere else [beat for beat in beats if beat.host == here]
    live = [beat for beat in candidates if anywhere or (beat.pid > 0 and pid_alive(beat.pid))]
    if live:
        best = min(live, key=lambda beat: beat.age_s)
        return Verdict(
            True,
            f"{kind} {best.process_id} (pid {best.pid} on {best.host}) beat {best.age_s:.0f}s ago"
            + (f"; {len(live)} live" if len(live) > 1 else ""),
        )
    where = "anywhere" if anywhere else f"on host {here}"
    elsewhere = f" ({len(beats)} on other hosts; --anywhere counts them)" if beats and not anywhere else ""
    if candidates:
        pids = ", ".join(str(beat.pid) for beat in candidates)
        return Verdict(False, f"no live {kind} {where}: the heartbeat's process (pid {pids}) is gone")
    return Verdict(False, f"no {kind} heartbeat {where} in the last {WORKER_HEARTBEAT_TTL_S}s{elsewhere}")
