"""Account: plan and credits this month, concurrency, API keys, the webhook signing secret."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from litestar.response import Redirect, Template

from api.dashboard.render import page
from api.dashboard.web import BASE_PATH, expired_session_cookie, signed_in
from api.state import ApiState, state_of
from app.errors import InvalidInput
from app.services import dashboard, dashboard_sessions, keys
from app.services.credits import used_this_month
from app.services.dashboard_sessions import SignedIn

USER = {"user": Provide(signed_in, sync_to_thread=True)}


def _context(state: ApiState, user: SignedIn, **extra: Any) -> dict[str, Any]:
    now = state.clock.now()
    with state.session_factory() as session:
        view = dashboard.account(session, user.user_id)
    account = view.user
    used = used_this_month(account.credits_used, account.credits_period, now)
    return {
        "user": user,
        "account": account,
        "keys": view.keys,
        "running_runs": view.running_runs,
        "max_concurrent_runs": account.max_concurrent_runs,
        "credits_used": used,
        "credits_reserved": account.credits_reserved,
        "credits_left": max(0, account.monthly_credits - used - account.credits_reserved),
        "has_webhook_secret": account.webhook_secret is not None,
        "new_key": None,
        "new_secret": None,
        "errors": {},
        **extra,
    }


@get(f"{BASE_PATH}/account", dependencies=USER, sync_to_thread=True, include_in_schema=False)
def account_page(request: Request[Any, Any, State], user: NamedDependency[SignedIn]) -> Template:
    return page("account.html", _context(state_of(request), user))


@post(f"{BASE_PATH}/account/keys", dependencies=USER, include_in_schema=False)
async def create_key(request: Request[Any, Any, State], user: NamedDependency[SignedIn]) -> Template:
    """Issue a key and show it this once (the answer to the POST; it is never shown again)."""
    state = state_of(request)
    name = str((await request.form()).get("name") or "")

    def issue() -> Template:
        try:
            with state.session_factory.begin() as session:
                issued = keys.issue_key(session, user.user_id, name)
        except InvalidInput as exc:
            return page("account.html", _context(state, user, errors=exc.fields), status_code=400)
        return page("account.html", _context(state, user, new_key=issued.secret), status_code=201)

    return await anyio.to_thread.run_sync(issue)


@post(
    f"{BASE_PATH}/account/keys/{{key_id:uuid}}/revoke",
    dependencies=USER,
    sync_to_thread=True,
    include_in_schema=False,
)
def revoke_key(
    request: Request[Any, Any, State], user: NamedDependency[SignedIn], key_id: FromPath[uuid.UUID]
) -> Redirect:
    """Revoke one of the user's keys and end every session it opened (this one too, if it did)."""
    state = state_of(request)
    with state.session_factory.begin() as session:
        keys.revoke_key(session, key_id, user_id=user.user_id, now=state.clock.now())
        dashboard_sessions.end_sessions_of_key(session, key_id)
    if key_id == user.api_key_id:
        return Redirect(
            f"{BASE_PATH}/sign-in?ended=revoked", status_code=303, cookies=[expired_session_cookie()]
        )
    return Redirect(f"{BASE_PATH}/account", status_code=303)


@post(f"{BASE_PATH}/account/webhook-secret", dependencies=USER, sync_to_thread=True, include_in_schema=False)
def rotate_webhook_secret(request: Request[Any, Any, State], user: NamedDependency[SignedIn]) -> Template:
    """Create or rotate the signing secret and show it this once (the old one signs 24 h more)."""
    from app.webhooks.signing import rotate_secret

    state = state_of(request)
    with state.session_factory.begin() as session:
        secret = rotate_secret(
            session, user.user_id, state.clock.now(), key_setting=state.settings.webhook_secrets_key_value
        )
    return page("account.html", _context(state, user, new_secret=secret), status_code=201)
