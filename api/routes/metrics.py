"""GET /metrics: the queue and orchestrator figures in Prometheus text format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dramatiq
from litestar import Request, Response, get
from litestar.datastructures import State

from api.state import ApiState
from app.services.stats import queue_stats

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def render_metrics(stats: Mapping[str, Any]) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP agentsched_{name} {help_text}")
        lines.append(f"# TYPE agentsched_{name} {kind}")
        lines.extend(f"agentsched_{name}{labels} {value}" for labels, value in samples)

    queues: Mapping[str, Mapping[str, int]] = stats["queues"]
    for figure, kind, help_text in (
        ("waiting", "gauge", "Runs waiting in the Redis queue."),
        ("active", "gauge", "Runs executing now."),
        ("delayed", "gauge", "Runs waiting for their retry backoff."),
        ("completed", "gauge", "Runs completed today (UTC)."),
        ("failed", "gauge", "Runs failed today (UTC)."),
    ):
        metric(
            f"runs_{figure}",
            kind,
            help_text,
            [(f'{{queue="{queue}"}}', float(values.get(figure, 0))) for queue, values in queues.items()],
        )
    orchestrator = stats["orchestrator"]
    metric(
        "scheduler_running",
        "gauge",
        "1 when a scheduler process is alive.",
        [("", float(bool(orchestrator["running"])))],
    )
    metric(
        "scheduler_uptime_seconds",
        "gauge",
        "Uptime of the oldest live scheduler.",
        [("", float(orchestrator["uptimeSeconds"] or 0))],
    )
    metric("tasks_queued", "gauge", "Tasks with a queued run.", [("", float(orchestrator["queuedTasks"]))])
    lateness = stats.get("lateness") or {}
    for quantile, key in (("0.5", "p50Ms"), ("0.99", "p99Ms")):
        value = lateness.get(key)
        if value is not None:
            metric(
                f"schedule_lateness_ms_p{quantile.replace('0.', '')}",
                "gauge",
                f"Lateness of scheduled runs (slot to start), quantile {quantile}, last hour.",
                [("", float(value))],
            )
    slots = stats.get("slots") or {}
    metric(
        "slots_skipped_today",
        "gauge",
        "Slots skipped today because the previous run overlapped.",
        [("", float(slots.get("skipped", 0)))],
    )
    metric(
        "slots_missed_today",
        "gauge",
        "Slots missed today (downtime) and not run.",
        [("", float(slots.get("missed", 0)))],
    )
    return "\n".join(lines) + "\n"


@get("/metrics", sync_to_thread=True, include_in_schema=False)
def metrics(request: Request[Any, Any, State]) -> Response[str]:
    state: ApiState = request.app.state.api
    with state.session_factory() as session:
        stats = queue_stats(dramatiq.get_broker().client, session, state.clock.now())  # type: ignore[attr-defined]
    return Response(render_metrics(stats), media_type=PROMETHEUS_TEXT)
