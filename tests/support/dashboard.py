"""Driving the dashboard over HTTP in tests: sign in, read the CSRF token, post forms."""

from __future__ import annotations

import re
from typing import Any

import httpx

SESSION_COOKIE = "agentsched_session"
CSRF_COOKIE = "agentsched_csrf"
_CSRF_INPUT = re.compile(r'name="_csrf_token" value="([^"]+)"')


def csrf_token(client: Any) -> str:
    """The CSRF token of this client's cookie jar (a GET under /dashboard sets it)."""
    token = client.cookies.get(CSRF_COOKIE)
    if token is None:
        page = client.get("/dashboard/sign-in")
        found = _CSRF_INPUT.search(page.text)
        assert found, page.text
        token = found.group(1)
    return str(token)


def sign_in(client: Any, key: str) -> httpx.Response:
    """Sign this client in with `key` (its previous session cookie is dropped first)."""
    for cookie in list(client.cookies.jar):
        if cookie.name == SESSION_COOKIE:
            client.cookies.jar.clear(cookie.domain, cookie.path, cookie.name)
    response = client.post(
        "/dashboard/sign-in",
        data={"api_key": key, "_csrf_token": csrf_token(client), "next": "/dashboard/tasks"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return response


def post_form(client: Any, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
    """POST a dashboard form with the CSRF token, not following the redirect."""
    return client.post(
        path, data={"_csrf_token": csrf_token(client), **(data or {})}, follow_redirects=False, **kwargs
    )
