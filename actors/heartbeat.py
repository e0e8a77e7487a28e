"""The worker's heartbeat: a Redis key renewed while the worker's threads are alive.

It is what `agentsched health worker` checks. The beat is skipped (so the key expires) when a
consumer or worker thread has died, so a worker that can no longer take runs is not reported
healthy just because its process exists.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime
from typing import Any

from dramatiq.middleware import Middleware

from app.clock import SYSTEM_CLOCK
from app.services.heartbeats import (
    WORKER_HEARTBEAT_INTERVAL_S,
    WORKER_HEARTBEAT_TTL_S,
    clear_worker_heartbeat,
    record_worker_heartbeat,
)

logger = logging.getLogger(__name__)


class WorkerHeartbeat(Middleware):
    """One heartbeat per `dramatiq.Worker` (tests may run several in one process)."""

    def __init__(self) -> None:
        self._beats: dict[int, tuple[str, threading.Event, threading.Thread]] = {}
        self._lock = threading.Lock()

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        worker_id, stop = uuid.uuid4().hex[:12], threading.Event()
        thread = threading.Thread(
            target=_beat,
            args=(broker, worker, worker_id, SYSTEM_CLOCK.now(), stop),
            name="worker-heartbeat",
            daemon=True,
        )
        with self._lock:
            self._beats[id(worker)] = (worker_id, stop, thread)
        thread.start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        with self._lock:
            entry = self._beats.pop(id(worker), None)
        if entry is None:
            return
        worker_id, stop, thread = entry
        stop.set()
        thread.join(timeout=5)
        try:
            clear_worker_heartbeat(broker.client, worker_id)
        except Exception:  # Redis gone: the key expires by itself
            logger.warning("could not clear the worker heartbeat; it expires by itself")


def _beat(broker: Any, worker: Any, worker_id: str, started_at: datetime, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if _threads_alive(worker):
                record_worker_heartbeat(
                    broker.client,
                    worker_id,
                    started_at,
                    threads=int(worker.worker_threads),
                    ttl_s=WORKER_HEARTBEAT_TTL_S,
                )
            else:
                logger.error("a worker or consumer thread died; no heartbeat until restarted")
        except Exception:
            logger.warning("could not record the worker heartbeat", exc_info=True)
        stop.wait(WORKER_HEARTBEAT_INTERVAL_S)


def _threads_alive(worker: Any) -> bool:
    consumers = list(getattr(worker, "consumers", {}).values())
    threads = list(getattr(worker, "workers", []))
    return bool(consumers) and all(thread.is_alive() for thread in [*consumers, *threads])
