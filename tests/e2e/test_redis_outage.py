"""Redis down: the API answers 503 `unavailable` with Retry-After where it needs Redis, never a
500 or a traceback, and sends again by itself when Redis returns.

The API runs as a subprocess whose broker is a throwaway embedded Redis (app.embedded) on a
free port, stopped and started by the test; the machine's shared Redis is never touched.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from app.embedded.redis_server import EmbeddedRedis
from tests.e2e.conftest import free_port, wait_until

pytestmark = pytest.mark.timeout(300)


def test_redis_down_answers_503_and_the_api_recovers_alone(tmp_path: Path, spawn, make_account, settings):
    server = EmbeddedRedis(tmp_path / "redis")
    server.acquire()
    try:
        account = make_account()
        port = free_port()
        env = {"REDIS_URL": server.url(0), "CRON_SECRET": "outage-secret", "API_RATE_LIMIT": "0"}
        api = spawn(
            "api", "-m", "uvicorn", "api.app:app", "--port", str(port), "--log-level", "warning", env=env
        )
        body = {"goal": "g", "agentType": "research_agent", "async": True}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20, headers=account.headers) as client:

            def healthy() -> bool:
                assert api.popen.poll() is None, api.log()
                try:
                    return client.get("/api/health").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(healthy, timeout_s=60, what="API start", logs=api.log)
            assert client.post("/api/agent/execute", json=body).status_code == 202

            server.release()  # Redis stops
            cron = {"Authorization": "Bearer outage-secret"}
            stats = client.get("/api/queue/stats", headers=cron)  # queue lengths live in Redis
            assert stats.status_code == 503, stats.text
            assert stats.json()["error"] == "unavailable"
            assert int(stats.headers["Retry-After"]) > 0
            # A pass with nothing due does not need Redis; one with due tasks re-sends later.
            assert client.post("/api/cron/check-scheduled-tasks", headers=cron).status_code in (200, 503)
            # A new run is written to Postgres first and its message sent after the commit: the
            # send fails, so the answer is a 503 that says the run is saved (the reconciler
            # sends it when Redis is back), not a 202 that says it is on its way.
            queued = client.post("/api/agent/execute", json=body)
            assert queued.status_code == 503, queued.text
            assert queued.json()["error"] == "unavailable"
            assert int(queued.headers["Retry-After"]) > 0
            assert "saved and queued" in queued.json()["message"]
            assert client.get("/api/health").json()["redis"].startswith("down")
            for path in ("/api/me", "/api/tasks"):  # Postgres alone: still answered, or a clean 503
                assert client.get(path).status_code in (200, 503), path

            server.acquire()  # the same port again
            deadline = time.monotonic() + 60
            while client.post("/api/agent/execute", json=body).status_code != 202:
                assert time.monotonic() < deadline, api.log()
                time.sleep(0.5)
        log = api.log()
        assert "Traceback" not in log, log
        assert " 500 " not in log
    finally:
        server.release()
