"""Quiet logs: a 4xx is one line (method, path, status, error code); a 5xx keeps its traceback."""

from __future__ import annotations

import logging
import uuid

from litestar import get
from litestar.testing import TestClient


def _records(caplog):
    return [r for r in caplog.records if r.name.startswith(("api", "litestar"))]


def test_a_404_is_logged_as_one_line_without_a_traceback(client, make_account, caplog):
    headers = make_account().headers
    path = f"/api/tasks/{uuid.uuid4()}"
    with caplog.at_level(logging.DEBUG):
        caplog.clear()
        assert client.get(path, headers=headers).status_code == 404
    records = _records(caplog)
    assert [r.getMessage() for r in records] == [f"GET {path} 404 not_found"]
    assert records[0].exc_info is None
    assert "Traceback" not in caplog.text


def test_401_and_400_are_one_line_each(client, make_account, caplog):
    headers = make_account().headers  # a good key: credentials are checked before the body
    with caplog.at_level(logging.DEBUG):
        caplog.clear()
        assert client.get("/api/me").status_code == 401
        assert client.post("/api/agent/execute", content=b"{", headers=headers).status_code == 400
    lines = [r.getMessage() for r in _records(caplog)]
    assert lines == ["GET /api/me 401 unauthorized", "POST /api/agent/execute 400 invalid_input"]
    assert "Traceback" not in caplog.text


def test_a_500_keeps_its_traceback_and_answers_our_body(settings, caplog):
    from api.app import create_app

    @get("/api/explode", include_in_schema=False)
    async def explode() -> None:
        raise RuntimeError("kaboom")

    app = create_app(settings)
    app.register(explode)
    with TestClient(app) as test_client, caplog.at_level(logging.DEBUG):
        answer = test_client.get("/api/explode")
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal", "message": "internal server error"}
    [record] = [r for r in _records(caplog) if r.levelno >= logging.ERROR]
    assert record.getMessage() == "GET /api/explode failed"
    assert record.exc_info is not None
    assert "RuntimeError: kaboom" in caplog.text
