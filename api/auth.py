"""Bearer authentication: API keys for users, CRON_SECRET for operators and cron services."""

from __future__ import annotations

import hmac
import time
import uuid
from typing import TypedDict

from litestar import Request
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi.spec import SecurityRequirement
from pydantic import SecretStr

from api.schemas.openapi import API_KEY_SECURITY, CRON_SECURITY
from api.state import ApiState
from app.errors import NotAuthenticated
from app.services.accounts import hash_api_key
from app.services.keys import verify_key


def bearer_token(request: Request[object, object, State]) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated("missing bearer credentials: send 'Authorization: Bearer <api key>'")
    return token.strip()


def current_user_id(request: Request[object, object, State]) -> uuid.UUID:
    """The caller's user id (a Litestar dependency; runs in a worker thread)."""
    state: ApiState = request.app.state.api
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


def require_cron_secret(request: Request[object, object, State]) -> None:
    """CRON_SECRET in constant time; with no secret configured, always 401 (never open)."""
    state: ApiState = request.app.state.api
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

    dependencies: dict[str, Provide]
    security: list[SecurityRequirement]


#: An API key: the handler gets the caller as `user_id`; OpenAPI documents the bearer scheme.
USER_AUTH: HandlerAuth = {
    "dependencies": {"user_id": Provide(current_user_id, sync_to_thread=True)},
    "security": API_KEY_SECURITY,
}
#: CRON_SECRET (the handler takes `authorized: NamedDependency[None]`).
CRON_AUTH: HandlerAuth = {
    "dependencies": {"authorized": Provide(require_cron_secret, sync_to_thread=True)},
    "security": CRON_SECURITY,
}
