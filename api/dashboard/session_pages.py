"""Signing in with an API key and signing out."""

from __future__ import annotations

from typing import Any

import anyio
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromQuery
from litestar.response import Redirect, Template

from api.dashboard.render import page
from api.dashboard.web import BASE_PATH, SESSION_COOKIE, expired_session_cookie, session_cookie
from api.state import state_of
from app.errors import NotAuthenticated
from app.services import dashboard_sessions

#: Where a sign-in may send the browser next: a dashboard path, never another site.
DEFAULT_NEXT = f"{BASE_PATH}/tasks"


def safe_next(value: str | None) -> str:
    if not value or not value.startswith(BASE_PATH + "/") or value.startswith("//") or "\\" in value:
        return DEFAULT_NEXT
    return value


@get(BASE_PATH, include_in_schema=False)
async def dashboard_root() -> Redirect:
    return Redirect(DEFAULT_NEXT, status_code=303)


@get(f"{BASE_PATH}/sign-in", include_in_schema=False)
async def sign_in_form(
    request: Request[Any, Any, State], next: FromQuery[str | None] = None, ended: FromQuery[str | None] = None
) -> Template:
    notice = {
        "revoked": "Your session ended: its API key was revoked, or it expired. Sign in again.",
        "out": "You are signed out.",
    }.get(ended or "")
    return page("sign_in.html", {"next": safe_next(next), "notice": notice, "error": None})


@post(f"{BASE_PATH}/sign-in", include_in_schema=False)
async def sign_in(request: Request[Any, Any, State]) -> Template | Redirect:
    form = await request.form()
    key = str(form.get("api_key") or "")
    next_path = safe_next(str(form.get("next") or ""))
    state = state_of(request)

    def create() -> str:
        with state.session_factory.begin() as session:
            token, _ = dashboard_sessions.sign_in(session, key, state.clock.now())
            return token

    try:
        if not key.strip():
            raise NotAuthenticated("enter an API key")
        token = await anyio.to_thread.run_sync(create)
    except NotAuthenticated as exc:
        context = {"next": next_path, "notice": None, "error": exc.message}
        return page("sign_in.html", context, status_code=401)
    return Redirect(next_path, status_code=303, cookies=[session_cookie(token)])


@post(f"{BASE_PATH}/sign-out", include_in_schema=False)
async def sign_out(request: Request[Any, Any, State]) -> Redirect:
    token = request.cookies.get(SESSION_COOKIE)
    state = state_of(request)
    if token:

        def end() -> None:
            with state.session_factory.begin() as session:
                dashboard_sessions.sign_out(session, token)

        await anyio.to_thread.run_sync(end)
    return Redirect(f"{BASE_PATH}/sign-in?ended=out", status_code=303, cookies=[expired_session_cookie()])
