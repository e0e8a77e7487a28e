"""Worker and scheduler metrics reach the API's /metrics across processes (through Redis)."""

from __future__ import annotations

import math
import uuid

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from tests.e2e.conftest import Spawn, wait_until

pytestmark = pytest.mark.e2e

SCHEDULED = {
    "goal": "Count what the processes did",
    "agentType": "monitor_agent",
    "schedule": {"enabled": True, "cron": "0 9 * * *", "timezone": "America/New_York"},
}


def scrape(api: httpx.Client) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    types, samples = {}, {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return types, samples


def test_a_scheduled_run_is_counted_by_the_worker_and_the_scheduler(
    api: httpx.Client, spawn: Spawn, make_account, session_factory
):
    account = make_account()
    scheduler = spawn("scheduler", "-m", "scheduler", env={"SCHEDULER_POLL_INTERVAL": "1"})
    worker = spawn("worker", "-m", "dramatiq", "actors", "--processes", "1", "--threads", "2")

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-4000:]}" for p in (scheduler, worker))

    task_id = api.post("/api/agent/execute", json=SCHEDULED, headers=account.headers).json()["taskId"]
    with session_factory.begin() as session:
        session.execute(
            text("UPDATE tasks SET next_run_at = now() - interval '1 minute' WHERE id = :id"),
            {"id": uuid.UUID(task_id)},
        )

    def value(name: str, **labels: str) -> float:
        return scrape(api)[1].get((name, frozenset(labels.items())), 0.0)

    # The worker flushes every few seconds; the API merges what it finds in Redis.
    wait_until(
        lambda: value("agentsched_runs_total", status="completed", agent_type="monitor_agent") == 1,
        timeout_s=60,
        what="the worker's run count on the API's /metrics",
        logs=logs,
    )
    types, samples = scrape(api)

    def get(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    assert types["agentsched_runs"] == "counter"
    assert types["agentsched_schedule_lateness_seconds"] == "histogram"
    assert get("agentsched_model_calls_total", outcome="ok") == 4  # plan, two steps, final
    assert get("agentsched_tokens_total", kind="prompt") > 0
    assert get("agentsched_run_duration_seconds_count", status="completed") == 1
    # Lateness: the slot was a minute before the scheduler saw it.
    assert get("agentsched_schedule_lateness_seconds_count") == 1
    assert get("agentsched_schedule_lateness_seconds_sum") >= 60
    assert get("agentsched_schedule_lateness_seconds_bucket", le="30.0") == 0
    assert get("agentsched_schedule_lateness_seconds_bucket", le="+Inf") == 1
    # From the scheduler process (it flushes within a few seconds too).
    wait_until(
        lambda: value("agentsched_schedule_slots_total", outcome="queued") == 1,
        timeout_s=30,
        what="the scheduler's slot count on the API's /metrics",
        logs=logs,
    )
    age = value("agentsched_scheduler_heartbeat_age_seconds")
    assert 0 <= age < 30
    assert get("agentsched_http_request_duration_seconds_count", method="POST",
               route="/api/agent/execute", status="201") == 1  # fmt: skip

    assert scheduler.stop() == 0, logs()
    assert worker.stop() == 0, logs()
    assert math.isinf(value("agentsched_scheduler_heartbeat_age_seconds"))
    # A stopped process keeps what it counted: totals never go backwards.
    assert value("agentsched_runs_total", status="completed", agent_type="monitor_agent") == 1
