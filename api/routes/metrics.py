"""GET /metrics: every process's counters and histograms, gauges and queue figures (Prometheus text).

How worker and scheduler metrics get here: app.metrics_sharing (one Redis hash).
"""

from __future__ import annotations

from typing import Any

import dramatiq
from litestar import Request, Response, get
from litestar.datastructures import State

from api.state import state_of
from app.metrics_exposition import CONTENT_TYPE_LATEST, render_metrics
from app.services.stats import queue_stats


@get("/metrics", sync_to_thread=True, include_in_schema=False)
def metrics(request: Request[Any, Any, State]) -> Response[bytes]:
    state = state_of(request)
    redis_client = dramatiq.get_broker().client  # type: ignore[attr-defined]
    now = state.clock.now()
    with state.session_factory() as session:
        stats = queue_stats(redis_client, session, now)
    body = render_metrics(redis_client, stats, now.timestamp())
    # Exactly prometheus_client's content type (Litestar would append a second charset).
    return Response(body, headers={"content-type": CONTENT_TYPE_LATEST})
