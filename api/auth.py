"""Bearer authentication: API keys for users, CRON_SECRET for operators and cron services.

Both are route guards, so they run before Litestar reads the path's query or body: a request
without good credentials answers 401 whatever else is wrong with it (CONTRACT "HTTP API" checks
credentials first, input after).
"""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any, TypedDict

import anyio
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler
from litestar.openapi.spec import SecurityRequirement
from litestar.types import Guard
from pydantic import SecretStr

from api.schemas.openapi import API_KEY_SECURITY, CRON_SECURITY
from api.state import state_of
from app.errors import NotAuthenticated
from app.services.accounts import hash_api_key
from app.services.keys import verify_key

Connection = ASGIConnection[Any, Any, Any, Any]


def bearer_token(request: Connection) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated("missing bearer credentials: send 'Authorization: Bearer <api key>'")
    return token.strip()


def current_user_id(request: Connection) -> uuid.UUID:
    """The caller's user id (in a worker thread: it may ask Postgres)."""
    state = state_of(request)
    token = bearer_token(request)
    key_hash = hash_api_key(token)
    user_id = state.keys.get(key_hash)
    if user_id is None:
        checked_at = time.monotonic()
        with state.session_factory() as session:
            verified = verify_key(session, token, state.clock.now())
            session.commit()
        state.keys.put(key_hash, verified.user_id, verified.key_id, checked_at)
        user_id = verified.user_id
    return user_id


def cron_secrets(secret: SecretStr | None) -> list[bytes]:
    """CRON_SECRET's secrets: one, or two separated by a comma while it is being rotated."""
    if secret is None:
        return []
    return [part.strip().encode() for part in secret.get_secret_value().split(",") if part.strip()]


async def authenticate_user(connection: Connection, _: BaseRouteHandler) -> None:
    """Guard: the API key's user, kept for `authenticated_user_id`; NotAuthenticated otherwise."""
    connection.state.user_id = await anyio.to_thread.run_sync(current_user_id, connection)


def authenticated_user_id(request: Request[Any, Any, State]) -> uuid.UUID:
    """The handler's `user_id`: the caller `authenticate_user` found."""
    user_id: uuid.UUID = request.state.user_id
    return user_id


def require_cron_secret(request: Connection, _: BaseRouteHandler) -> None:
    """Guard: CRON_SECRET in constant time; with no secret configured, always 401 (never open)."""
    state = state_of(request)
    accepted = cron_secrets(state.settings.cron_secret)
    token = bearer_token(request).encode()
    if not accepted:
        raise NotAuthenticated("CRON_SECRET is not configured on this server")
    # Every secret is compared, so the time taken does not tell which one came close.
    matches = [hmac.compare_digest(token, secret) for secret in accepted]
    if not any(matches):
        raise NotAuthenticated("wrong cron secret")


class HandlerAuth(TypedDict):
    """A route decorator's authentication arguments: `@get(path, **USER_AUTH, ...)`."""

    guards: list[Guard]
    dependencies: dict[str, Provide]
    security: list[SecurityRequirement]


#: An API key: the handler gets the caller as `user_id`; OpenAPI documents the bearer scheme.
USER_AUTH: HandlerAuth = {
    "guards": [authenticate_user],
    "dependencies": {"user_id": Provide(authenticated_user_id, sync_to_thread=False)},
    "security": API_KEY_SECURITY,
}
#: CRON_SECRET (constant-time compares, no I/O: checked on the event loop).
CRON_AUTH: HandlerAuth = {"guards": [require_cron_secret], "dependencies": {}, "security": CRON_SECURITY}
