"""How every process's counters and histograms reach the API's ``/metrics``: one Redis hash.

Each process (API, worker, scheduler) records into its own :data:`app.metrics.REGISTRY` and,
every :data:`FLUSH_INTERVAL_S` seconds and when it stops, adds what changed since its last
flush to the hash :data:`METRICS_KEY` with ``HINCRBYFLOAT`` (one pipelined transaction per
flush). Counters, histogram buckets, counts and sums are all sums, so increments from any
number of processes on any number of hosts merge exactly, and a process that dies keeps what
it flushed: the totals never go backwards (Prometheus' ``rate()`` sees no false resets). At
most the last interval of a dead process is lost. A flush that fails (Redis down) is kept and
sent with the next one. If the hash itself is lost (Redis flushed, or restarted without its
data), a new generation starts (:data:`EPOCH_FIELD`) and every live process sends its whole
totals again, so the merged figures stay complete but for what dead processes had counted.
Gauges are not shared: the API computes them when it is scraped.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from app.metrics import QUEUE_DEPTH, REGISTRY, SCHEDULER_HEARTBEAT_AGE
from app.services.stats import SCHEDULER_KEY_PREFIX

logger = logging.getLogger(__name__)

METRICS_KEY = "agentsched:metrics"
#: A field of the hash naming its generation: a flusher that finds another one starts over.
EPOCH_FIELD = "__epoch__"
#: Seconds between two flushes of a process's increments to Redis.
FLUSH_INTERVAL_S = 5.0
_SHARED_TYPES = ("counter", "histogram")
_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _field(name: str, labels: Iterable[tuple[str, str]]) -> str:
    return json.dumps([name, sorted(labels)], separators=(",", ":"))


def _local_samples() -> dict[_SampleKey, float]:
    """This process's cumulative counter and histogram samples (without ``_created``)."""
    samples: dict[_SampleKey, float] = {}
    for family in REGISTRY.collect():
        if family.type not in _SHARED_TYPES:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class MetricsFlusher:
    """Adds this process's increments since the last successful flush to the Redis hash."""

    def __init__(self, redis_client: Redis) -> None:
        self.redis = redis_client
        self._flushed: dict[_SampleKey, float] = {}
        self._epoch: bytes | None = None
        self._lock = threading.Lock()

    def flush(self) -> int:
        """Send what changed; returns how many samples changed. Raises RedisError."""
        with self._lock:
            self._follow_the_epoch()
            current = _local_samples()
            # A sample seen for the first time is sent even at 0, so every bucket of a
            # histogram series exists in Redis once the series does.
            deltas = {
                key: value - self._flushed.get(key, 0.0)
                for key, value in current.items()
                if key not in self._flushed or value != self._flushed[key]
            }
            if deltas:
                pipe = self.redis.pipeline(transaction=True)
                for (name, labels), delta in deltas.items():
                    pipe.hincrbyfloat(METRICS_KEY, _field(name, labels), delta)
                pipe.execute()
                self._flushed.update({key: current[key] for key in deltas})
            return len(deltas)

    def _follow_the_epoch(self) -> None:
        """After the hash was lost (Redis flushed or restarted empty), send whole totals again."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(METRICS_KEY, EPOCH_FIELD, uuid.uuid4().hex)
        pipe.hget(METRICS_KEY, EPOCH_FIELD)
        epoch: bytes | None = pipe.execute()[1]
        if epoch != self._epoch:
            self._flushed.clear()
            self._epoch = epoch


_flushers: dict[str, MetricsFlusher] = {}
_flushers_lock = threading.Lock()


def flusher_for(redis_client: Redis) -> MetricsFlusher:
    """The process's one flusher for this Redis: the registry is per process, so is its snapshot."""
    kwargs = redis_client.connection_pool.connection_kwargs
    key = "{}:{}:{}:{}".format(*(kwargs.get(k) for k in ("host", "port", "path", "db")))
    with _flushers_lock:
        if key not in _flushers:
            _flushers[key] = MetricsFlusher(redis_client)
        return _flushers[key]


class MetricsPublisher:
    """A daemon thread that flushes every `interval_s` seconds, and once more when stopped."""

    def __init__(self, redis_client: Redis, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.flusher = flusher_for(redis_client)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsPublisher:
        """Start flushing (again, after a stop); a no-op while already running."""
        if self._thread is None or not self._thread.is_alive():
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._loop, args=(self._stop,), name="metrics-publisher", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Flush once more and end the thread."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout_s)

    def _loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            self._flush_quietly()
        self._flush_quietly()

    def _flush_quietly(self) -> None:
        try:
            self.flusher.flush()
        except RedisError:  # kept for the next flush
            logger.warning("could not send metrics to Redis; will try again", exc_info=True)


class SharedMetricsCollector(Collector):
    """Yields the merged counters and histograms of every process, read from the Redis hash."""

    def __init__(self, redis_client: Redis) -> None:
        self.redis = redis_client

    def collect(self) -> Iterator[Metric]:
        stored: dict[Any, Any] = self.redis.hgetall(METRICS_KEY)
        values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for raw_field, raw_value in stored.items():
            if raw_field in (EPOCH_FIELD, EPOCH_FIELD.encode()):
                continue
            name, labels = json.loads(raw_field)
            values.setdefault(name, {})[tuple((k, v) for k, v in labels)] = float(raw_value)
        for family in REGISTRY.collect():
            if family.type not in _SHARED_TYPES:
                continue
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            if family.type == "counter":
                for labels, value in sorted(values.get(family.name + "_total", {}).items()):
                    merged.add_sample(family.name + "_total", dict(labels), value)
            else:
                _add_histogram(merged, family, values)
            yield merged


def _add_histogram(
    merged: Metric, family: Metric, values: dict[str, dict[tuple[tuple[str, str], ...], float]]
) -> None:
    """Each series' buckets in ascending order, then its count and sum."""
    series_buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, str, float]]] = {}
    for labels, value in values.get(family.name + "_bucket", {}).items():
        le = dict(labels).get("le", "+Inf")
        series = tuple((k, v) for k, v in labels if k != "le")
        series_buckets.setdefault(series, []).append((float(le), le, value))
    counts = values.get(family.name + "_count", {})
    sums = values.get(family.name + "_sum", {})
    for series in sorted(counts):
        for _, le, value in sorted(series_buckets.get(series, [])):
            merged.add_sample(family.name + "_bucket", {**dict(series), "le": le}, value)
        merged.add_sample(family.name + "_count", dict(series), counts[series])
        merged.add_sample(family.name + "_sum", dict(series), sums.get(series, 0.0))


def set_scrape_gauges(redis_client: Redis, waiting: Mapping[str, int], now_s: float) -> None:
    """Set the gauges from shared state: `waiting` messages per priority, scheduler heartbeats."""
    for priority, count in waiting.items():
        QUEUE_DEPTH.labels(priority).set(count)
    keys = list(redis_client.scan_iter(match=SCHEDULER_KEY_PREFIX + "*", count=1000))
    beats = [json.loads(value).get("beatAt") for value in (redis_client.mget(keys) if keys else []) if value]
    freshest = max((float(beat) for beat in beats if beat is not None), default=None)
    SCHEDULER_HEARTBEAT_AGE.set(math.inf if freshest is None else max(0.0, now_s - freshest))
