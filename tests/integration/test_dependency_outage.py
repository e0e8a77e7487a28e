"""Postgres down: every API endpoint that needs it answers 503 `unavailable` with Retry-After,
never a 500 or a traceback, and the API recovers by itself when the database returns.

The Postgres here is a throwaway embedded one (app.embedded) with its own data directory under
tmp_path, stopped and started by the test; the machine's shared Postgres is never touched.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from app.db import make_engine, make_session_factory
from app.embedded.postgres_server import EmbeddedPostgres
from app.migrate import upgrade_to_head
from app.services import accounts
from app.settings import Settings

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def throwaway_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg")
    server.acquire()
    try:
        server.create_database("agentsched")
        yield server
    finally:
        server.release()


def _key(database_url: str, settings: Settings) -> str:
    engine = make_engine(settings.model_copy(update={"database_url": database_url}))
    try:
        with make_session_factory(engine).begin() as session:
            user = accounts.create_user(session, email="outage@example.com", plan="pro", monthly_credits=None)
            return accounts.issue_api_key(session, user)
    finally:
        engine.dispose()


def _requests(task_id: str) -> list[tuple[str, str, dict[str, object] | None]]:
    body = {"goal": "g", "agentType": "research_agent", "async": True}
    return [
        ("GET", "/api/me", None),
        ("GET", "/api/tasks", None),
        ("GET", f"/api/tasks/{task_id}", None),
        ("GET", f"/api/tasks/{task_id}/runs", None),
        ("POST", "/api/agent/execute", body),
        ("PATCH", f"/api/tasks/{task_id}", {"title": "new"}),
        ("POST", f"/api/tasks/{task_id}/run", None),
        ("POST", f"/api/tasks/{task_id}/cancel", None),
        ("GET", f"/api/runs/{uuid.uuid4()}", None),
    ]


def test_postgres_down_answers_503_and_the_api_recovers_alone(throwaway_postgres, settings, caplog):
    from api.app import create_app

    database_url = throwaway_postgres.url("agentsched")
    upgrade_to_head(database_url)
    key = _key(database_url, settings)
    headers = {"Authorization": f"Bearer {key}"}
    app_settings = settings.model_copy(update={"database_url": database_url, "api_rate_limit": 0})
    # A fresh key cache would hide an outage behind cached keys for 10 s; 0 s asks Postgres each time.
    app = create_app(app_settings)
    app.state.api.keys.ttl_s = 0
    with TestClient(app) as client:
        task_id = client.post(
            "/api/agent/execute",
            json={
                "goal": "g",
                "agentType": "research_agent",
                "schedule": {"cron": "0 9 * * *", "timezone": "UTC"},
            },
            headers=headers,
        ).json()["taskId"]
        assert client.get("/api/me", headers=headers).status_code == 200

        throwaway_postgres.release()  # Postgres stops
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="api"):
            for method, path, body in _requests(task_id):
                answer = client.request(method, path, json=body, headers=headers)
                assert answer.status_code == 503, (method, path, answer.text)
                assert answer.json()["error"] == "unavailable", (method, path)
                assert answer.json()["message"]
                assert int(answer.headers["Retry-After"]) > 0
            health = client.get("/api/health")
            assert health.status_code == 503
            assert health.json()["database"].startswith("down")
        api_records = [r for r in caplog.records if r.name.startswith("api")]
        assert api_records
        assert all(r.exc_info is None for r in api_records)
        assert "Traceback" not in "".join(r.getMessage() for r in api_records)

        throwaway_postgres.acquire()  # the same data directory, the same port
        deadline = time.monotonic() + 60
        while client.get("/api/me", headers=headers).status_code != 200:
            assert time.monotonic() < deadline, "the API did not recover after Postgres came back"
            time.sleep(0.5)
        assert client.get(f"/api/tasks/{task_id}", headers=headers).status_code == 200
        again = client.post(
            "/api/agent/execute",
            json={"goal": "g", "agentType": "research_agent", "async": True},
            headers=headers,
        )
        assert again.status_code == 202, again.text
