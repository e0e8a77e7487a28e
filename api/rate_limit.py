"""Our API's own rate limits: per API key, and per client address on the cron and queue endpoints.

Not Litestar's `RateLimitMiddleware`: it reads a key's history from the store and writes it back
in two steps, guarded only by a lock inside one process, so two API processes sharing one Redis
lose each other's updates and together let through up to twice the budget; it keeps the whole
window's timestamps as one JSON value rewritten on every request; it keys by one identifier per
middleware (not a group of paths each with its own identity and limit); and its 429 carries no
`Retry-After`. This middleware counts each (group, identity) in a fixed one-minute window with
one Lua call (INCR, and PEXPIRE on the window's first request), atomic across every process on
that Redis, and answers the `RateLimit-*` headers (IETF draft) on every limited response.

Groups (CONTRACT "Flow control"): `/api/cron/*` and `/api/queue/*` by client address with
CRON_RATE_LIMIT; the other `/api/*` paths by API key (its SHA-256, never the key) with
API_RATE_LIMIT, or by client address when no bearer token is sent. `/api/health` and `/metrics`
(and anything outside `/api/`) are exempt. Should Redis be unreachable the request is let
through: a limiter must not take the API down with it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.errors import RateLimited
from app.settings import Settings

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000
KEY_PREFIX = "agentsched:ratelimit:"
EXEMPT_PATHS = frozenset({"/api/health", "/metrics"})
OPERATOR_PREFIXES = ("/api/cron/", "/api/queue/")

# Count one request in the identity's current window; returns (count, ms left in the window).
_COUNT = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if count == 1 or ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


@dataclass(frozen=True, slots=True)
class Budget:
    group: str
    identity: str
    limit: int


def budget_for(scope: Scope, settings: Settings) -> Budget | None:
    """Which budget a request counts against, or None when it is not limited."""
    path: str = scope.get("path", "")
    if path in EXEMPT_PATHS or not path.startswith("/api/"):
        return None
    client = scope.get("client")
    address = client[0] if client else "unknown"
    if path.startswith(OPERATOR_PREFIXES) or path.rstrip("/") in ("/api/cron", "/api/queue"):
        return Budget("cron", address, settings.cron_rate_limit) if settings.cron_rate_limit else None
    if not settings.api_rate_limit:
        return None
    token = _bearer(scope)
    if token is None:
        return Budget("addr", address, settings.api_rate_limit)
    return Budget("key", hashlib.sha256(token.encode()).hexdigest()[:32], settings.api_rate_limit)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def limit_headers(limit: int, count: int, reset_ms: int) -> dict[str, str]:
    reset_s = max(1, math.ceil(reset_ms / 1000))
    return {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(max(0, limit - count)),
        "RateLimit-Reset": str(reset_s),
        "RateLimit-Policy": f"{limit};w={WINDOW_MS // 1000}",
    }


class RateLimitMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._redis: Redis | None = None

    def _client(self) -> Redis:
        if self._redis is None:  # made in the serving event loop, on first use
            self._redis = Redis.from_url(self.settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
        return self._redis

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        budget = budget_for(scope, self.settings)
        if budget is None:
            await next_app(scope, receive, send)
            return
        try:
            count, reset_ms = await self._client().eval(
                _COUNT, 1, f"{KEY_PREFIX}{budget.group}:{budget.identity}", WINDOW_MS
            )
        except (RedisError, OSError) as exc:  # expected while Redis is down: one line, no traceback
            logger.warning("rate limiter: Redis unreachable (%s); letting the request through", exc)
            await next_app(scope, receive, send)
            return
        headers = limit_headers(budget.limit, int(count), int(reset_ms))
        if int(count) > budget.limit:
            raise RateLimited(
                f"more than {budget.limit} requests a minute; try again in {headers['RateLimit-Reset']} s",
                retry_after_s=int(headers["RateLimit-Reset"]),
                headers=headers,
            )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    *((k.lower().encode(), v.encode()) for k, v in headers.items()),
                ]
            await send(message)

        await next_app(scope, receive, send_with_headers)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
