"""What GET /metrics answers: the shared counters and histograms, the gauges, the queue figures."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from redis import Redis

from app.metrics import REGISTRY
from app.metrics_sharing import SharedMetricsCollector, flusher_for, set_scrape_gauges

__all__ = ["CONTENT_TYPE_LATEST", "render_metrics"]

_FIGURES = (
    ("waiting", "Runs waiting in the Redis queue."),
    ("active", "Runs executing now."),
    ("delayed", "Runs waiting for their retry backoff."),
    ("completed", "Runs completed today (UTC)."),
    ("failed", "Runs failed today (UTC)."),
)


class _QueueFigures(Collector):
    """The figures of GET /api/queue/stats (app.services.stats.queue_stats) as gauges."""

    def __init__(self, stats: Mapping[str, Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        queues: Mapping[str, Mapping[str, int]] = self.stats["queues"]
        for figure, help_text in _FIGURES:
            family = GaugeMetricFamily(f"agentsched_runs_{figure}", help_text, labels=["queue"])
            for queue, values in queues.items():
                family.add_metric([queue], float(values.get(figure, 0)))
            yield family
        orchestrator = self.stats["orchestrator"]
        yield _gauge("scheduler_running", "1 when a scheduler process is alive.", orchestrator["running"])
        yield _gauge(
            "scheduler_uptime_seconds", "Uptime of the oldest live scheduler.", orchestrator["uptimeSeconds"]
        )
        yield _gauge("tasks_queued", "Tasks with a queued run.", orchestrator["queuedTasks"])
        lateness = self.stats.get("lateness") or {}
        for quantile, key in (("0.5", "p50Ms"), ("0.99", "p99Ms")):
            if lateness.get(key) is not None:
                yield _gauge(
                    f"schedule_lateness_ms_p{quantile.replace('0.', '')}",
                    f"Lateness of scheduled runs (slot to start), quantile {quantile}, last hour.",
                    lateness[key],
                )
        slots = self.stats.get("slots") or {}
        yield _gauge(
            "slots_skipped_today",
            "Slots skipped today because the previous run overlapped.",
            slots.get("skipped", 0),
        )
        yield _gauge(
            "slots_missed_today", "Slots missed today (downtime) and not run.", slots.get("missed", 0)
        )
        flow = self.stats.get("flowControl") or {}
        yield _gauge(
            "runs_waiting_for_slot",
            "Queued runs waiting for one of their user's concurrency slots.",
            flow.get("waitingForSlot", 0),
        )
        yield _gauge(
            "calls_waiting_for_provider_budget",
            "Model calls waiting now for the shared LLM_RPM/LLM_TPM budget or a 429's wait.",
            flow.get("waitingForProviderBudget", 0),
        )
        yield _gauge(
            "provider_rate_limited_today",
            "429 answers received from the model provider today (UTC).",
            flow.get("providerRateLimitedToday", 0),
        )


def _gauge(name: str, help_text: str, value: Any) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"agentsched_{name}", help_text, value=float(value or 0))


class _LocalGauges(Collector):
    """The gauges of :data:`app.metrics.REGISTRY` (set from Redis just before rendering)."""

    def collect(self) -> Iterator[Metric]:
        yield from (family for family in REGISTRY.collect() if family.type == "gauge")


def render_metrics(redis_client: Redis, stats: Mapping[str, Any], now_s: float) -> bytes:
    """The Prometheus text exposition (content type :data:`CONTENT_TYPE_LATEST`).

    This process's own increments are flushed first, so what it recorded is never missing.
    """
    flusher_for(redis_client).flush()
    set_scrape_gauges(
        redis_client, {priority: q["waiting"] for priority, q in stats["queues"].items()}, now_s
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SharedMetricsCollector(redis_client))
    registry.register(_LocalGauges())
    registry.register(_QueueFigures(stats))
    return generate_latest(registry)
