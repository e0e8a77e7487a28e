"""A webhook through the real processes: the API, `dramatiq actors`, a local receiver."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Spawn, free_port, wait_until
from tests.support.webhook_receiver import Receiver, serve

pytestmark = pytest.mark.e2e

ALLOW = {"WEBHOOK_ALLOW_PRIVATE": "true"}


@pytest.fixture
def local_receiver() -> Iterator[Receiver]:
    yield from serve(Receiver())


def test_a_run_ends_and_its_signed_webhook_reaches_the_receiver(
    spawn: Spawn, make_account, local_receiver: Receiver
):
    port = free_port()
    api_process = spawn(
        "api", "-m", "uvicorn", "api.app:app", "--port", str(port), "--log-level", "warning", env=ALLOW
    )
    worker = spawn("worker", "-m", "dramatiq", "actors", "--processes", "1", "--threads", "2", env=ALLOW)

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-4000:]}" for p in (api_process, worker))

    account = make_account()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:

        def healthy() -> bool:
            try:
                return api.get("/api/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout_s=30, what="API start", logs=logs)
        secret = api.post("/api/me/webhook-secret", headers=account.headers).json()["secret"]
        local_receiver.secrets = [secret]
        created = api.post(
            "/api/agent/execute",
            json={
                "goal": "Summarise the week",
                "agentType": "writer_agent",
                "async": True,
                "webhook": {"url": local_receiver.url},
            },
            headers=account.headers,
        ).json()

        wait_until(lambda: len(local_receiver.received) >= 1, timeout_s=60, what="the delivery", logs=logs)
        [got] = local_receiver.received
        assert got.verified_with == [secret]
        assert got.payload["type"] == "run.completed"
        assert got.payload["data"]["id"] == created["runId"]

        def delivered() -> bool:
            items = api.get(f"/api/runs/{created['runId']}/deliveries", headers=account.headers).json()[
                "items"
            ]
            return bool(items) and items[0]["status"] == "delivered"

        wait_until(delivered, timeout_s=30, what="the delivery recorded", logs=logs)

        def counted() -> bool:
            for family in text_string_to_metric_families(api.get("/metrics").text):
                for sample in family.samples:
                    if sample.name == "agentsched_webhook_attempts_total" and sample.labels == {
                        "outcome": "delivered"
                    }:
                        return sample.value >= 1
            return False

        wait_until(counted, timeout_s=30, what="the delivery counted on /metrics", logs=logs)
