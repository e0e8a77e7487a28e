"""Bearer authentication: API keys for users, CRON_SECRET for operators and cron services."""

from __future__ import annotations

import hmac
import uuid

from litestar import Request
from litestar.datastructures import State

from api.state import ApiState
from app.errors import NotAuthenticated
from app.services.accounts import authenticate, hash_api_key


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
        with state.session_factory() as session:
            user_id = authenticate(session, token)
        state.keys.put(key_hash, user_id)
    return user_id


def require_cron_secret(request: Request[object, object, State]) -> None:
    """CRON_SECRET in constant time; with no secret configured, always 401 (never open)."""
    state: ApiState = request.app.state.api
    secret = state.settings.cron_secret
    token = bearer_token(request)
    if secret is None or not secret.get_secret_value():
        raise NotAuthenticated("CRON_SECRET is not configured on this server")
    if not hmac.compare_digest(token.encode(), secret.get_secret_value().encode()):
        raise NotAuthenticated("wrong cron secret")
