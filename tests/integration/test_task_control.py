"""Scheduled tasks through the API: create, preview, pause/resume/edit, run now, cancel."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.cron import next_fire, parse_schedule
from app.models import CreditLedgerEntry, Task, TaskRun, User
from app.providers.base import ChatMessage, Completion
from app.providers.offline import OfflineProvider
from app.services import run_steps
from tests.integration.conftest import wait_for_runs

SCHEDULED = {
    "goal": "Check competitor pricing and send report",
    "agentType": "research_agent",
    "schedule": {"enabled": True, "cron": "0 9 * * *", "timezone": "America/New_York"},
}
VECTORS = json.loads((Path(__file__).parents[1] / "data" / "cron-vectors.json").read_text())


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_scheduled_task_is_201_with_next_run_at_the_next_9am_in_new_york(
    client, make_account, session_factory
):
    account = make_account()
    before = datetime.now(UTC)
    response = client.post("/api/agent/execute", json=SCHEDULED, headers=account.headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert body["schedule"] == SCHEDULED["schedule"]
    expected = next_fire(parse_schedule("0 9 * * *", "America/New_York"), before)
    assert _parse(body["nextRunAt"]) == expected
    assert body["nextRunAt"].endswith("Z")
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(TaskRun)) == 0  # nothing runs now


@pytest.mark.parametrize("case", VECTORS, ids=[case["id"] for case in VECTORS])
def test_the_preview_endpoint_agrees_with_every_vector(client, make_account, case):
    account = make_account(email=f"v{case['id']}-{uuid.uuid4().hex[:6]}@example.com")
    response = client.get(
        "/api/schedules/preview",
        params={
            "cron": case["expr"],
            "timezone": case["tz"],
            "count": 5,
            "after": case["start_utc"],
        },
        headers=account.headers,
    )
    assert response.status_code == 200, response.text
    runs = response.json()["runs"]
    expected = [case["next"]] + ([case["alt_next"]] if "alt_next" in case else [])
    assert [_parse(r) for r in runs] in [[_parse(r) for r in option] for option in expected]


def test_preview_names_each_bad_parameter(client, make_account):
    headers = make_account().headers
    bad = client.get(
        "/api/schedules/preview",
        params={"cron": "61 * * * *", "timezone": "Mars/Base", "count": "0", "after": "yesterday"},
        headers=headers,
    )
    assert bad.status_code == 400
    assert set(bad.json()["fields"]) == {"cron", "timezone", "count", "after"}
    assert client.get("/api/schedules/preview", params={"cron": "0 9 * * *"}).status_code == 401


def test_pause_resume_and_edit_recompute_next_run_at(client, make_account):
    account = make_account()
    task_id = client.post("/api/agent/execute", json=SCHEDULED, headers=account.headers).json()["taskId"]
    paused = client.patch(
        f"/api/tasks/{task_id}", json={"schedule": {"enabled": False}}, headers=account.headers
    )
    assert paused.status_code == 200, paused.text
    assert paused.json()["nextRunAt"] is None
    assert paused.json()["schedule"]["enabled"] is False

    before = datetime.now(UTC)
    resumed = client.patch(
        f"/api/tasks/{task_id}", json={"schedule": {"enabled": True}}, headers=account.headers
    ).json()
    assert _parse(resumed["nextRunAt"]) == next_fire(parse_schedule("0 9 * * *", "America/New_York"), before)

    edited = client.patch(
        f"/api/tasks/{task_id}",
        json={
            "title": "Hourly check",
            "priority": "high",
            "schedule": {"cron": "15 * * * *", "timezone": "Asia/Kolkata"},
        },
        headers=account.headers,
    ).json()
    assert edited["title"] == "Hourly check"
    assert edited["priority"] == "high"
    assert edited["schedule"] == {"enabled": True, "cron": "15 * * * *", "timezone": "Asia/Kolkata"}
    assert _parse(edited["nextRunAt"]) == next_fire(parse_schedule("15 * * * *", "Asia/Kolkata"), before)

    bad = client.patch(
        f"/api/tasks/{task_id}",
        json={"schedule": {"cron": "bogus"}, "colour": "red"},
        headers=account.headers,
    )
    assert bad.status_code == 400
    assert set(bad.json()["fields"]) == {"schedule.cron", "colour"}


def test_run_now_queues_a_manual_run_that_completes(client, make_account, start_worker, session_factory):
    account = make_account()
    start_worker()
    task_id = client.post("/api/agent/execute", json=SCHEDULED, headers=account.headers).json()["taskId"]
    response = client.post(f"/api/tasks/{task_id}/run", headers=account.headers)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    [run] = wait_for_runs(session_factory, [body["runId"]])
    assert run.status == "completed"
    assert run.trigger == "manual"
    task = client.get(f"/api/tasks/{task_id}", headers=account.headers).json()
    assert task["status"] == "pending"  # a scheduled task waits for its next slot
    assert task["result"] == run.result


def test_cancel_cancels_queued_runs_and_disables_the_schedule(client, make_account, session_factory):
    account = make_account()
    task_id = client.post("/api/agent/execute", json=SCHEDULED, headers=account.headers).json()["taskId"]
    run_ids = [
        client.post(f"/api/tasks/{task_id}/run", headers=account.headers).json()["runId"] for _ in range(2)
    ]
    response = client.post(f"/api/tasks/{task_id}/cancel", headers=account.headers)
    assert response.status_code == 200
    task = response.json()
    assert task["status"] == "cancelled"
    assert task["schedule"]["enabled"] is False
    assert task["nextRunAt"] is None
    runs = wait_for_runs(session_factory, run_ids, statuses=("cancelled",), timeout_s=2)
    assert all(run.error == {"code": "cancelled", "message": "the task was cancelled"} for run in runs)
    assert client.post(f"/api/tasks/{task_id}/run", headers=account.headers).status_code == 409


class SlowProvider(OfflineProvider):
    """The offline model, 0.3 s a call: long enough to cancel a run in the middle."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_call = threading.Event()

    def complete(self, messages: Sequence[ChatMessage], **kwargs: object) -> Completion:  # type: ignore[override]
        self.calls += 1
        self.first_call.set()
        time.sleep(0.3)
        return super().complete(messages, **kwargs)  # type: ignore[arg-type]


def test_cancel_stops_a_running_run_at_its_next_model_call_and_releases_its_credits(
    client, make_account, start_worker, session_factory
):
    account = make_account(plan="free")
    provider = SlowProvider()
    start_worker(provider=provider)
    body = client.post(
        "/api/agent/execute",
        json={**{k: v for k, v in SCHEDULED.items() if k != "schedule"}, "async": True},
        headers=account.headers,
    ).json()
    assert provider.first_call.wait(10)
    wait_for_runs(session_factory, [body["runId"]], statuses=("running",), timeout_s=5)
    with session_factory() as session:
        user = session.get(User, account.user_id)
        assert user is not None
        assert user.credits_reserved > 0  # the run holds its budget while it runs
    client.post(f"/api/tasks/{body['taskId']}/cancel", headers=account.headers)
    [run] = wait_for_runs(session_factory, [body["runId"]], timeout_s=10)
    assert run.status == "cancelled"
    assert run.error is not None
    assert run.error["code"] == "cancelled"
    assert provider.calls <= 2  # stopped at the call after the cancel, not at the end
    with session_factory() as session:  # a step for each call made; none for the call not made
        steps = run_steps.list_steps(session, uuid.UUID(body["runId"]))
        assert [step.status for step in steps] == ["completed"] * provider.calls
    with session_factory() as session:
        user = session.get(User, account.user_id)
        assert user is not None
        assert user.credits_reserved == 0
        ledger = session.scalar(select(func.coalesce(func.sum(CreditLedgerEntry.amount), 0)))
        assert ledger == user.credits_used == run.credits_used  # tokens spent before the cancel
        task = session.get(Task, uuid.UUID(body["taskId"]))
        assert task is not None
        assert task.status == "cancelled"
