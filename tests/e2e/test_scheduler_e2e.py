"""The scheduler process, a worker and the API, as a user runs them: a scheduled task runs."""

from __future__ import annotations

import os
import time
import uuid

import httpx
import pytest
from sqlalchemy import text

from tests.e2e.conftest import Spawn, wait_until

pytestmark = pytest.mark.e2e

SCHEDULED = {
    "goal": "Check competitor pricing and send report",
    "agentType": "research_agent",
    "schedule": {"enabled": True, "cron": "0 9 * * *", "timezone": "America/New_York"},
}


def test_a_scheduled_task_made_due_runs_through_scheduler_and_worker(
    api: httpx.Client, spawn: Spawn, make_account, session_factory, redis_client
):
    account = make_account()
    scheduler = spawn("scheduler", "-m", "scheduler", env={"SCHEDULER_POLL_INTERVAL": "1"})
    worker = spawn("worker", "-m", "dramatiq", "actors", "--processes", "1", "--threads", "2")

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-4000:]}" for p in (scheduler, worker))

    created = api.post("/api/agent/execute", json=SCHEDULED, headers=account.headers)
    assert created.status_code == 201, created.text
    task_id = created.json()["taskId"]
    assert created.json()["status"] == "pending"
    time.sleep(1.5)  # a pass or two: the task is not due, nothing runs
    assert api.get(f"/api/tasks/{task_id}/runs", headers=account.headers).json()["items"] == []

    with session_factory.begin() as session:  # the seed's troubleshooting step
        session.execute(
            text("UPDATE tasks SET next_run_at = now() - interval '1 minute' WHERE id = :id"),
            {"id": uuid.UUID(task_id)},
        )

    def run_completed() -> bool:
        assert scheduler.popen.poll() is None, logs()
        items = api.get(f"/api/tasks/{task_id}/runs", headers=account.headers).json()["items"]
        return bool(items) and items[0]["status"] == "completed"

    wait_until(run_completed, timeout_s=60, what="the scheduled run's completion", logs=logs)
    [run] = api.get(f"/api/tasks/{task_id}/runs", headers=account.headers).json()["items"]
    assert run["trigger"] == "schedule"
    assert run["attempts"] == 1
    assert run["creditsUsed"] >= 1
    task = api.get(f"/api/tasks/{task_id}", headers=account.headers).json()
    assert task["status"] == "pending"
    assert task["nextRunAt"] > run["scheduledFor"]

    cron = {"Authorization": f"Bearer {os.environ['CRON_SECRET']}"}
    stats = api.get("/api/queue/stats", headers=cron)
    assert stats.status_code == 200, stats.text
    assert stats.json()["orchestrator"]["running"] is True
    assert stats.json()["orchestrator"]["completedToday"] == 1

    assert scheduler.stop() == 0, logs()  # SIGTERM: a clean exit
    assert "stopped" in scheduler.log()
    assert not list(redis_client.scan_iter(match="agentsched:scheduler:*"))
    assert worker.stop() == 0, logs()
