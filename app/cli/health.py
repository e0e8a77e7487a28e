"""`agentsched health worker|scheduler`: exit 0 when one is alive, 1 with a one-line reason.

For container health checks: by default only a process on this host whose pid still runs
counts (the one beside the check); `--anywhere` counts any live heartbeat.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import redis

from app.embedded.redis_server import _hide_redis_password
from app.services.heartbeats import PREFIXES, check
from app.settings import get_settings

#: A health check must answer quickly even when Redis does not.
REDIS_TIMEOUT_S = 3


def add_parser(commands: Any) -> None:
    health = commands.add_parser("health", help="exit 0 if a worker or scheduler is alive, else 1")
    health.add_argument("process", choices=sorted(PREFIXES))
    health.add_argument(
        "--anywhere", action="store_true", help="count a live process on any host, not only this one"
    )


def run(args: argparse.Namespace) -> int:
    url = get_settings().broker_url
    client = redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S)
    try:
        verdict = check(client, args.process, anywhere=args.anywhere)
    except redis.RedisError as exc:
        print(f"unhealthy: Redis at {_hide_redis_password(url)} does not answer ({exc})", file=sys.stderr)
        return 1
    finally:
        client.close()
    if verdict.healthy:
        print(f"healthy: {verdict.reason}")
        return 0
    print(f"unhealthy: {verdict.reason}", file=sys.stderr)
    return 1
