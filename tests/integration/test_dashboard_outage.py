"""The dashboard with Postgres unreachable: a 503 page (with Retry-After), never a traceback."""

from __future__ import annotations

import socket

from litestar.testing import TestClient
from sqlalchemy.engine import make_url

from tests.support.dashboard import SESSION_COOKIE, csrf_token


def _closed_port() -> int:
    with socket.socket() as probe:  # bound then closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_with_postgres_unreachable_the_dashboard_answers_a_503_page_with_retry_after(settings):
    from api.app import create_app

    url = make_url(settings.database_url).set(host="127.0.0.1", port=_closed_port())
    app = create_app(settings.model_copy(update={"database_url": url.render_as_string(hide_password=False)}))
    with TestClient(app) as client:
        token = csrf_token(client)  # the sign-in page needs no database
        answers = [
            client.post(
                "/dashboard/sign-in",
                data={"api_key": "ask_" + "x" * 43, "_csrf_token": token, "next": "/dashboard/tasks"},
                follow_redirects=False,
            ),
        ]
        client.cookies.set(SESSION_COOKIE, "s" * 43)
        answers.append(client.get("/dashboard/tasks", follow_redirects=False))
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"].startswith("text/html")
        assert int(answer.headers["retry-after"]) > 0
        assert "Briefly unavailable" in answer.text
        assert "Try again in a few seconds" in answer.text
        assert "Traceback" not in answer.text
        assert "content-security-policy" in answer.headers
