"""The dashboard's web plumbing: the session cookie, who is signed in, security headers, CSRF.

The session cookie is HttpOnly, SameSite=Strict, scoped to /dashboard, and Secure whenever the
request came over https. CSRF is Litestar's double-submit cookie (`CSRFConfig`), on the
dashboard's routes only: the JSON API authenticates with bearer keys and needs none.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from litestar import Request
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import Cookie, MutableScopeHeaders, State
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.state import state_of
from app.errors import AppError
from app.services import dashboard_sessions
from app.services.dashboard_sessions import SESSION_TTL, SignedIn
from app.settings import Settings

BASE_PATH = "/dashboard"
SESSION_COOKIE = "agentsched_session"
CSRF_COOKIE = "agentsched_csrf"
CSRF_HEADER = "x-csrftoken"

#: No inline script anywhere (htmx is configured by a meta tag); styles only from our CSS file.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class SignInRequired(AppError):
    """No live dashboard session (never signed in, signed out, expired, or its key revoked)."""

    code = "sign_in_required"


class AdminRequired(AppError):
    code = "admin_required"


def csrf_config(settings: Settings) -> CSRFConfig:
    return CSRFConfig(
        secret=csrf_secret(settings),
        cookie_name=CSRF_COOKIE,
        cookie_path=BASE_PATH,
        header_name=CSRF_HEADER,
        cookie_httponly=True,
        cookie_samesite="strict",
    )


def csrf_secret(settings: Settings) -> str:
    """DASHBOARD_SECRET, else one derived from secrets every API process shares.

    Derived (not random per process) so that several API processes accept each other's tokens.
    """
    if settings.dashboard_secret is not None and settings.dashboard_secret.get_secret_value():
        return settings.dashboard_secret.get_secret_value()
    basis = "|".join(
        [
            settings.cron_secret.get_secret_value() if settings.cron_secret else "",
            settings.database_url,
            settings.broker_url,
        ]
    )
    return hashlib.sha256(("agentsched-dashboard-csrf|" + basis).encode()).hexdigest()


def is_https(scope: Scope) -> bool:
    return scope.get("scheme") == "https"


class SecurityHeadersMiddleware:
    """CSP and friends on every dashboard answer (errors too); `Secure` cookies over https."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        https = is_https(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                if https:
                    cookies = headers.getall("set-cookie", [])
                    if cookies:
                        del headers["set-cookie"]
                        for cookie in cookies:
                            secure = cookie if "secure" in cookie.lower() else cookie + "; Secure"
                            headers.add("set-cookie", secure)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def session_cookie(token: str) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE,
        value=token,
        path=BASE_PATH,
        httponly=True,
        samesite="strict",
        max_age=int(SESSION_TTL.total_seconds()),
    )


def expired_session_cookie() -> Cookie:
    return Cookie(key=SESSION_COOKIE, value="", path=BASE_PATH, httponly=True, samesite="strict", max_age=0)


def signed_in(request: Request[Any, Any, State]) -> SignedIn:
    """Who is signed in (a dependency, in a worker thread); `SignInRequired` when nobody is."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SignInRequired("sign in with an API key")
    state = state_of(request)
    with state.session_factory() as session:
        user = dashboard_sessions.resolve(session, token, state.clock.now())
    if user is None:
        with state.session_factory.begin() as session:  # expired or its key revoked: gone for good
            dashboard_sessions.sign_out(session, token)
        raise SignInRequired("your session has ended; sign in again")
    return user


def admin(request: Request[Any, Any, State]) -> SignedIn:
    user = signed_in(request)
    if not user.is_admin:
        raise AdminRequired("the operations page is for administrators")
    return user


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
