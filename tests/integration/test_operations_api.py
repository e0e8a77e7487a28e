"""The operator endpoints: cron hook, queue stats, metrics, health; CRON_SECRET handling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from tests.integration.conftest import wait_for_runs

CRON_PATH = "/api/cron/check-scheduled-tasks"
SCHEDULED = {
    "goal": "Check competitor pricing and send report",
    "agentType": "research_agent",
    "schedule": {"enabled": True, "cron": "0 9 * * *", "timezone": "America/New_York"},
}


@pytest.fixture
def cron_headers(settings):
    return {"Authorization": f"Bearer {settings.cron_secret.get_secret_value()}"}


@pytest.mark.parametrize(
    ("method", "path"), [("GET", CRON_PATH), ("POST", CRON_PATH), ("GET", "/api/queue/stats")]
)
def test_cron_and_queue_endpoints_refuse_a_missing_or_wrong_secret(client, path, method):
    assert client.request(method, path).status_code == 401
    assert client.request(method, path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.request(method, path, headers={"Authorization": "Basic abc"}).status_code == 401


def test_with_no_cron_secret_configured_the_endpoints_are_closed(settings):
    from api.app import create_app

    with TestClient(create_app(settings.model_copy(update={"cron_secret": None}))) as closed:
        for header in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
            assert closed.get(CRON_PATH, headers=header).status_code == 401
            assert closed.post(CRON_PATH, headers=header).status_code == 401
            assert closed.get("/api/queue/stats", headers=header).status_code == 401


def test_get_reports_scheduling_health(client, make_account, cron_headers, session_factory):
    account = make_account()
    for _ in range(3):
        client.post("/api/agent/execute", json=SCHEDULED, headers=account.headers)
    with session_factory.begin() as session:
        session.execute(
            text("UPDATE tasks SET next_run_at = now() - interval '1 minute' WHERE title = title")
        )
    body = client.get(CRON_PATH, headers=cron_headers).json()
    assert body["status"] == "healthy"
    assert body["scheduledTasks"] == 3
    assert body["tasksCurrentlyDue"] == 3
    assert abs(
        datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")) - datetime.now(UTC)
    ) < timedelta(seconds=5)


def test_post_runs_one_pass_and_the_seed_troubleshooting_update_makes_a_task_run(
    client, make_account, cron_headers, session_factory, start_worker
):
    account = make_account()
    start_worker()
    task_id = client.post("/api/agent/execute", json=SCHEDULED, headers=account.headers).json()["taskId"]
    first = client.post(CRON_PATH, headers=cron_headers).json()
    assert first["status"] == "ok"
    assert first["runsQueued"] == 0  # not due yet
    with session_factory.begin() as session:
        session.execute(
            text("UPDATE tasks SET next_run_at = now() - interval '1 minute' WHERE id = :id"), {"id": task_id}
        )
    second = client.post(CRON_PATH, headers=cron_headers).json()
    assert second["runsQueued"] == 1
    runs = client.get(f"/api/tasks/{task_id}/runs", headers=account.headers).json()["items"]
    assert len(runs) == 1
    assert runs[0]["trigger"] == "schedule"
    [run] = wait_for_runs(session_factory, [runs[0]["id"]])
    assert run.status == "completed"
    task = client.get(f"/api/tasks/{task_id}", headers=account.headers).json()
    assert datetime.fromisoformat(task["nextRunAt"].replace("Z", "+00:00")) > datetime.now(UTC)
    assert task["status"] == "pending"


def test_queue_stats_and_metrics_count_the_queued_runs(client, make_account, cron_headers):
    account = make_account()
    for priority in ("urgent", "low", "low"):
        client.post(
            "/api/agent/execute",
            json={"goal": "g", "agentType": "data_agent", "priority": priority, "async": True},
            headers=account.headers,
        )
    stats = client.get("/api/queue/stats", headers=cron_headers).json()
    assert set(stats["queues"]) == {"urgent", "high", "medium", "low"}
    assert stats["queues"]["urgent"]["waiting"] == 1
    assert stats["queues"]["low"]["waiting"] == 2
    assert stats["totals"]["waiting"] == 3
    assert set(stats["totals"]) == {"waiting", "active", "completed", "failed", "delayed"}
    assert set(stats["orchestrator"]) >= {
        "running",
        "activeAgents",
        "queuedTasks",
        "completedToday",
        "failedToday",
        "uptimeSeconds",
    }
    assert stats["orchestrator"]["queuedTasks"] == 3
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'agentsched_runs_waiting{queue="low"} 2.0' in metrics.text


def test_health_reports_database_and_redis(client):
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}


def test_the_openapi_schema_is_served(client):
    schema = client.get("/schema/openapi.json")
    assert schema.status_code == 200
    assert "/api/agent/execute" in schema.json()["paths"]
