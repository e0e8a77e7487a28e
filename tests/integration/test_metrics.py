"""GET /metrics: names, types and values after a real run, merged across processes via Redis."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from app.errors import ProviderError
from app.metrics_sharing import METRICS_KEY
from app.providers.offline import OfflineProvider
from app.services.stats import record_scheduler_heartbeat
from tests.integration.conftest import wait_for_runs

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

EXPECTED_TYPES = {
    "agentsched_runs": "counter",
    "agentsched_model_calls": "counter",
    "agentsched_tokens": "counter",
    "agentsched_schedule_slots": "counter",
    "agentsched_run_duration_seconds": "histogram",
    "agentsched_model_call_duration_seconds": "histogram",
    "agentsched_schedule_lateness_seconds": "histogram",
    "agentsched_http_request_duration_seconds": "histogram",
    "agentsched_scheduling_pass_duration_seconds": "histogram",
    "agentsched_queue_depth": "gauge",
    "agentsched_scheduler_heartbeat_age_seconds": "gauge",
    # the queue figures /metrics served before prometheus_client
    "agentsched_runs_waiting": "gauge",
    "agentsched_runs_active": "gauge",
    "agentsched_slots_skipped_today": "gauge",
    "agentsched_slots_missed_today": "gauge",
}


def scrape(client: Any) -> tuple[dict[str, str], Samples]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_one_run_through_a_worker_shows_in_names_types_and_values(
    client, make_account, start_worker, session_factory
):
    account = make_account()
    start_worker(threads=2)
    _, before = scrape(client)

    created = client.post(
        "/api/agent/execute",
        json={"goal": "Count the metrics", "agentType": "data_agent", "async": True},
        headers=account.headers,
    )
    assert created.status_code == 202, created.text
    run_id = created.json()["runId"]
    [run] = wait_for_runs(session_factory, [run_id])
    assert run.status == "completed"
    assert client.get(f"/api/runs/{run_id}", headers=account.headers).status_code == 200

    # The worker counts the run just after its outcome commits: give it a moment.
    deadline = time.monotonic() + 10
    while True:
        types, after = scrape(client)
        if (
            value(after, "agentsched_runs_total", status="completed", agent_type="data_agent")
            > value(before, "agentsched_runs_total", status="completed", agent_type="data_agent")
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.05)
    for name, kind in EXPECTED_TYPES.items():
        assert types.get(name) == kind, (name, types.get(name))

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("agentsched_runs_total", status="completed", agent_type="data_agent") == 1
    assert delta("agentsched_run_duration_seconds_count", status="completed") == 1
    # The offline provider: a plan, two steps and the final answer, four calls in all.
    calls = delta("agentsched_model_calls_total", outcome="ok")
    assert calls == 4
    assert delta("agentsched_model_call_duration_seconds_count", outcome="ok") == calls
    tokens = delta("agentsched_tokens_total", kind="prompt") + delta(
        "agentsched_tokens_total", kind="completion"
    )
    assert tokens == run.tokens_used > 0
    # The route template is the label, never the raw path.
    assert delta("agentsched_http_request_duration_seconds_count", method="POST",
                 route="/api/agent/execute", status="202") == 1  # fmt: skip
    routes = {dict(labels).get("route") for (name, labels) in after if name.startswith("agentsched_http")}
    assert "/api/runs/{run_id}" in routes
    assert not any(run_id in (route or "") for route in routes)
    # Buckets: cumulative, ending in +Inf equal to the count.
    buckets = [
        (float(dict(labels)["le"]), v)
        for (name, labels), v in after.items()
        if name == "agentsched_run_duration_seconds_bucket" and dict(labels)["status"] == "completed"
    ]
    counts = [v for _, v in sorted(buckets)]
    assert counts == sorted(counts)
    assert sorted(buckets)[-1] == (
        math.inf,
        value(after, "agentsched_run_duration_seconds_count", status="completed"),
    )
    assert value(after, "agentsched_queue_depth", priority="medium") == 0
    assert math.isinf(value(after, "agentsched_scheduler_heartbeat_age_seconds"))  # no scheduler


def test_what_other_processes_flushed_to_redis_is_added_in(client, redis_client):
    _, before = scrape(client)
    field = json.dumps(["agentsched_runs_total", [["agent_type", "monitor_agent"], ["status", "failed"]]])
    redis_client.hincrbyfloat(METRICS_KEY, field.replace(" ", ""), 3)
    redis_client.hincrbyfloat(METRICS_KEY, field.replace(" ", ""), 2)  # a second process
    _, after = scrape(client)
    got = value(after, "agentsched_runs_total", status="failed", agent_type="monitor_agent")
    assert got - value(before, "agentsched_runs_total", status="failed", agent_type="monitor_agent") == 5


def test_gauges_follow_the_queues_and_the_scheduler_heartbeat(client, make_account, redis_client):
    account = make_account()
    for priority in ("urgent", "low", "low"):
        client.post(
            "/api/agent/execute",
            json={"goal": "g", "agentType": "data_agent", "priority": priority, "async": True},
            headers=account.headers,
        )
    record_scheduler_heartbeat(redis_client, "metrics-test", datetime.now(UTC), ttl_s=30)
    _, samples = scrape(client)
    assert value(samples, "agentsched_queue_depth", priority="urgent") == 1
    assert value(samples, "agentsched_queue_depth", priority="low") == 2
    assert value(samples, "agentsched_queue_depth", priority="high") == 0
    assert 0 <= value(samples, "agentsched_scheduler_heartbeat_age_seconds") < 30
    assert value(samples, "agentsched_runs_waiting", queue="low") == 2  # the older figure stays


def test_a_queued_run_cancelled_through_the_api_is_counted(client, make_account):
    account = make_account()
    _, before = scrape(client)
    created = client.post(
        "/api/agent/execute",
        json={"goal": "Never mind", "agentType": "research_agent", "async": True},
        headers=account.headers,
    ).json()
    cancelled = client.post(f"/api/tasks/{created['taskId']}/cancel", headers=account.headers)
    assert cancelled.status_code == 200, cancelled.text
    _, after = scrape(client)
    labels = {"status": "cancelled", "agent_type": "research_agent"}
    assert (
        value(after, "agentsched_runs_total", **labels) - value(before, "agentsched_runs_total", **labels)
        == 1
    )


def test_a_lost_hash_gets_the_whole_totals_of_live_processes_again(client, redis_client):
    from app.metrics import RUNS

    RUNS.labels("failed", "lost_hash_probe").inc(7)
    _, first = scrape(client)
    assert value(first, "agentsched_runs_total", status="failed", agent_type="lost_hash_probe") == 7
    redis_client.delete(METRICS_KEY)  # as a Redis restarted without its data
    _, again = scrape(client)
    assert value(again, "agentsched_runs_total", status="failed", agent_type="lost_hash_probe") == 7


class _FailsFirstCall(OfflineProvider):
    """The offline provider, but its very first call fails retryably."""

    def __init__(self) -> None:
        self.failed = False

    def complete(self, messages: Any, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise ProviderError("the provider failed once (scripted)")
        return super().complete(messages, **kwargs)


def test_a_retried_attempt_and_a_failed_call_are_counted_apart_from_the_run(
    client, make_account, start_worker, session_factory
):
    start_worker(threads=1, provider=_FailsFirstCall())
    _, before = scrape(client)
    created = client.post(
        "/api/agent/execute",
        json={"goal": "Try again", "agentType": "writer_agent", "async": True},
        headers=make_account().headers,
    ).json()
    [run] = wait_for_runs(session_factory, [created["runId"]])
    assert (run.status, run.attempts) == ("completed", 2)
    deadline = time.monotonic() + 10
    while True:
        _, after = scrape(client)
        done = value(after, "agentsched_runs_total", status="completed", agent_type="writer_agent")
        if done > value(before, "agentsched_runs_total", status="completed", agent_type="writer_agent"):
            break
        assert time.monotonic() < deadline, "the run was never counted"
        time.sleep(0.05)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("agentsched_runs_total", status="completed", agent_type="writer_agent") == 1
    assert delta("agentsched_runs_total", status="failed", agent_type="writer_agent") == 0
    assert delta("agentsched_run_duration_seconds_count", status="retrying") == 1
    assert delta("agentsched_run_duration_seconds_count", status="completed") == 1
    assert delta("agentsched_model_calls_total", outcome="error") == 1
