"""Per-process worker setup: thread count from settings and the run environment."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from dramatiq.middleware import Middleware

from app.db import make_engine, make_session_factory
from app.providers import make_provider
from app.services.execution import RunEnvironment
from app.settings import Settings

logger = logging.getLogger(__name__)

_environment: RunEnvironment | None = None
_lock = threading.Lock()
_settings: Settings | None = None


def run_environment() -> RunEnvironment:
    """The process's run environment, built on first use (after the worker forked)."""
    global _environment
    if _environment is None:
        with _lock:
            if _environment is None:
                assert _settings is not None, "WorkerSetup middleware not installed"
                threads = _settings.agent_worker_concurrency
                engine = make_engine(_settings, pool_size=threads + 2)
                _environment = RunEnvironment(
                    session_factory=make_session_factory(engine),
                    provider=make_provider(_settings),
                    settings=_settings,
                )
    return _environment


def _threads_given_on_command_line() -> bool:
    return any(arg in ("-t", "--threads") or arg.startswith("--threads=") for arg in sys.argv)


class WorkerSetup(Middleware):
    """Applies AGENT_WORKER_CONCURRENCY (unless `--threads` was given) and builds the environment."""

    def __init__(self, settings: Settings) -> None:
        global _settings
        _settings = settings
        self.settings = settings

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        if not _threads_given_on_command_line():
            threads = self.settings.agent_worker_concurrency
            worker.worker_threads = threads
            worker.queue_prefetch = min(threads * 2, 65535)
            worker.delay_prefetch = min(threads * 1000, 65535)
        logger.info("worker starting with %d threads", worker.worker_threads)
        run_environment()
