"""Per-process worker setup: thread count from settings and the run environment."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from actors.signals import stop_once_on_sigterm
from app.clock import SYSTEM_CLOCK
from app.db import make_engine, make_session_factory
from app.metrics_sharing import MetricsPublisher
from app.providers import call_deadline, make_provider
from app.providers.ratelimit import track_call
from app.redis_client import shared_client
from app.services.dead_workers import record_broker_heartbeat
from app.services.execution import RunEnvironment
from app.services.leases import LeaseKeeper
from app.services.run_deltas import DeltaPublisher
from app.settings import Settings

logger = logging.getLogger(__name__)

#: How long an idle queue consumer sleeps at most between fetches. Dramatiq orders runs by actor
#: priority only among prefetched messages, so a consumer must refill its queue quickly once its
#: prefetched runs finish, or lower-priority runs already in memory jump ahead (Dramatiq: 1 s).
WORKER_POLL_TIMEOUT_MS = 100
#: Database connections per worker process (twice this under a burst).
WORKER_DB_POOL_MAX = 16

_environment: RunEnvironment | None = None
_lock = threading.Lock()
_settings: Settings | None = None


def run_environment(threads: int | None = None) -> RunEnvironment:
    """The process's run environment, built on first use (after the worker forked)."""
    global _environment
    if _environment is None:
        with _lock:
            if _environment is None:
                assert _settings is not None, "WorkerSetup middleware not installed"
                threads = threads or _settings.agent_worker_concurrency
                # A run holds a connection only for its claim and its finish (one statement each),
                # so many threads share a few connections; Postgres' max_connections stays safe.
                engine = make_engine(
                    _settings,
                    pool_size=min(threads + 2, WORKER_DB_POOL_MAX),
                    max_overflow=0,
                    pre_ping=False,
                    autocommit=True,
                    pool_timeout=60,
                )
                _warm_up(engine, min(threads + 2, WORKER_DB_POOL_MAX))
                session_factory = make_session_factory(engine)
                _environment = RunEnvironment(
                    session_factory=session_factory,
                    provider=make_provider(_settings),
                    settings=_settings,
                    before_call=[track_call],  # a step's waitedMs (app.providers.ratelimit)
                    leases=LeaseKeeper(
                        session_factory,
                        SYSTEM_CLOCK,
                        lease_s=_settings.run_lease_s,
                        heartbeat_s=_settings.run_heartbeat_s,
                        on_beat=_broker_heartbeat,
                    ),
                    # a Redis that hangs must not hold the one flusher thread forever
                    deltas=DeltaPublisher(
                        shared_client(_settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
                    ),
                )
    return _environment


def _broker_heartbeat() -> None:
    """With each lease heartbeat, tell the broker this worker lives (see app.services.dead_workers)."""
    broker = dramatiq.get_broker()
    if isinstance(broker, RedisBroker):
        record_broker_heartbeat(broker.client, broker.broker_id, int(time.time() * 1000))


def _warm_up(engine: Engine, connections: int) -> None:
    """Open the pool's connections at boot, so the first burst of runs does not wait for them."""
    try:
        opened = [engine.connect() for _ in range(connections)]
    except SQLAlchemyError:
        logger.warning("could not open database connections at start; runs will retry", exc_info=True)
        return
    for connection in opened:
        connection.close()


def _started_by_dramatiq_cli() -> bool:
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    return program.startswith("dramatiq") or (bool(sys.argv) and sys.argv[0].endswith("dramatiq/__main__.py"))


def _started_by_dramatiq_cli_without_threads() -> bool:
    """True in a `dramatiq actors` worker whose command line does not say `--threads`."""
    if not _started_by_dramatiq_cli():
        return False
    return not any(arg in ("-t", "--threads") or arg.startswith("--threads=") for arg in sys.argv)


def set_run_environment(environment: RunEnvironment) -> None:
    """Use this environment for runs in this process (tests and benchmarks swap the provider)."""
    global _environment
    _environment = environment


class WorkerSetup(Middleware):
    """Applies AGENT_WORKER_CONCURRENCY (unless `--threads` was given) and builds the environment."""

    def __init__(self, settings: Settings) -> None:
        global _settings
        _settings = settings
        self.settings = settings
        self.metrics: MetricsPublisher | None = None

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        if _started_by_dramatiq_cli_without_threads():
            threads = self.settings.agent_worker_concurrency
            worker.worker_threads = threads
            worker.queue_prefetch = min(threads * 2, 65535)
            worker.delay_prefetch = min(threads * 1000, 65535)
        if not any(arg.startswith("--worker-timeout") for arg in sys.argv):
            worker.worker_timeout = WORKER_POLL_TIMEOUT_MS
        logger.info("worker starting with %d threads", worker.worker_threads)
        run_environment(worker.worker_threads)
        if _started_by_dramatiq_cli() and threading.current_thread() is threading.main_thread():
            grace_s = self.settings.worker_stop_grace_s
            stop_once_on_sigterm(lambda: run_environment().leases.begin_stop(grace_s))
        # Run counters, durations and model calls reach the API's /metrics through Redis.
        self.metrics = (self.metrics or MetricsPublisher(broker.client)).start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        # In-flight steps get the grace; every other run is handed back at its next model call.
        if _environment is not None:
            _environment.leases.begin_stop(self.settings.worker_stop_grace_s)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        call_deadline.set_stop_deadline(None)  # (tests run several workers in one process)
        if self.metrics is not None:
            self.metrics.stop()
