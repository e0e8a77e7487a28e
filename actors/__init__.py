"""The Dramatiq broker, built from settings; `dramatiq actors` imports this package.

This is the one module that reads settings at import time: Dramatiq binds actors to the
broker when they are declared.
"""

from __future__ import annotations

import sys

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from actors.heartbeat import WorkerHeartbeat
from actors.worker import WorkerSetup
from app.errors import ConfigurationError
from app.logging import configure_logging
from app.settings import get_settings

configure_logging()
try:
    settings = get_settings()
except ConfigurationError as exc:
    sys.exit(f"agentsched worker: {exc.message}")

#: Retries here cover only errors that escape a run's own handling (Postgres unreachable, say);
#: a run's retries are decided in app.services.execution and recorded in Postgres.
INFRASTRUCTURE_MAX_RETRIES = 20

broker = RedisBroker(  # type: ignore[no-untyped-call]
    url=settings.broker_url,
    # A worker silent this long is dead (our workers also beat with their run leases), for
    # Dramatiq's own maintenance and for the reconciler (app.services.dead_workers).
    heartbeat_timeout=int(settings.run_lease_s * 1000),
    middleware=[
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=INFRASTRUCTURE_MAX_RETRIES, min_backoff=1_000, max_backoff=60_000),
        WorkerSetup(settings),
        WorkerHeartbeat(),
    ],
)
dramatiq.set_broker(broker)

from actors import runs, webhooks  # noqa: E402  (actors bind to the broker above)

__all__ = ["broker", "runs", "settings", "webhooks"]
