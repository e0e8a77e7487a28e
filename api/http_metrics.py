"""Times every routed request into agentsched_http_request_duration_seconds{method,route,status}.

The route label is the route's template (``/api/tasks/{task_id}``), never the raw path, so the
number of series stays bounded. A request that matches no route is not measured.
"""

from __future__ import annotations

import time

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import HTTP_REQUEST_DURATION


class HttpMetricsMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        started = time.perf_counter()
        status = [500]  # a handler that raises past the exception handlers is a 500

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await next_app(scope, receive, timed_send)
        finally:
            HTTP_REQUEST_DURATION.labels(
                scope.get("method", ""), scope.get("path_template") or "", str(status[0])
            ).observe(time.perf_counter() - started)
