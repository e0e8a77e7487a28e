"""The caller's webhook signing secret, and a run's webhook deliveries."""

from __future__ import annotations

import uuid
from typing import Any, cast

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath

from api.auth import USER_AUTH
from api.schemas.openapi import errors
from api.schemas.webhooks import DeliveryList, DeliveryView, WebhookSecret
from api.state import state_of
from app.webhooks.deliveries import delivery_view, list_deliveries
from app.webhooks.signing import rotate_secret


@post(
    "/api/me/webhook-secret",
    **USER_AUTH,
    sync_to_thread=True,
    responses=errors(401, 429, 503),
    status_code=201,
)
def create_webhook_secret(
    request: Request[Any, Any, State], user_id: NamedDependency[uuid.UUID]
) -> Response[WebhookSecret]:
    """Create or rotate the caller's webhook signing secret, shown this once. After a rotation
    the old secret signs alongside the new one for 24 h."""
    state = state_of(request)
    with state.session_factory.begin() as session:
        secret = rotate_secret(
            session, user_id, state.clock.now(), key_setting=state.settings.webhook_secrets_key_value
        )
    return Response({"secret": secret}, status_code=201)


@get(
    "/api/runs/{run_id:uuid}/deliveries",
    **USER_AUTH,
    sync_to_thread=True,
    responses=errors(401, 404, 429, 503),
)
def run_deliveries(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    run_id: FromPath[uuid.UUID],
) -> DeliveryList:
    """The run's webhook deliveries, oldest first, and the state of each."""
    state = state_of(request)
    with state.session_factory() as session:
        items = [
            cast(DeliveryView, delivery_view(d)) for d in list_deliveries(session, run_id, user_id=user_id)
        ]
    return {"items": items}
