"""The caller's API keys: list, create (shown once), revoke."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api.auth import USER_AUTH
from api.schemas.keys import CreatedKey, CreateKeyBody, KeyList, KeyView, created_key, key_view
from api.schemas.openapi import errors
from api.state import state_of
from app.services import keys


@get(
    "/api/keys",
    **USER_AUTH,
    sync_to_thread=True,
    responses=errors(401, 429, 503),
    summary="List the caller's API keys",
)
def list_keys(request: Request[Any, Any, State], user_id: NamedDependency[uuid.UUID]) -> KeyList:
    """The caller's keys, revoked ones too, newest first; never a key itself."""
    with state_of(request).session_factory() as session:
        return KeyList(items=[key_view(key) for key in keys.list_keys(session, user_id)])


@post(
    "/api/keys",
    **USER_AUTH,
    sync_to_thread=True,
    status_code=HTTP_201_CREATED,
    responses=errors(400, 401, 413, 429, 503),
    summary="Create an API key",
)
def create_key(
    request: Request[Any, Any, State], user_id: NamedDependency[uuid.UUID], data: JSONBody[CreateKeyBody]
) -> CreatedKey:
    """Issue a key for the caller. The answer holds the key (`key`); it is never shown again."""
    with state_of(request).session_factory.begin() as session:
        issued = keys.issue_key(session, user_id, data.name)
        return created_key(issued.record, issued.secret)


@delete(
    "/api/keys/{key_id:uuid}",
    **USER_AUTH,
    sync_to_thread=True,
    status_code=HTTP_200_OK,
    responses=errors(400, 401, 404, 429, 503),
    summary="Revoke an API key",
)
def revoke_key(
    request: Request[Any, Any, State], user_id: NamedDependency[uuid.UUID], key_id: FromPath[uuid.UUID]
) -> KeyView:
    """Revoke one of the caller's keys: at once on this API process, within 10 s on every other."""
    state = state_of(request)
    with state.session_factory.begin() as session:
        key = keys.revoke_key(session, key_id, user_id=user_id, now=state.clock.now())
        view = key_view(key)
    state.keys.forget(key_id)
    return view
