"""The dashboard's pages doing their jobs: create, preview, steer, retry, keys, operations."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from sqlalchemy import event, select, text, update

from app.cron import next_fires, parse_schedule
from app.models import ApiKey, Task, TaskRun, User
from tests.support.dashboard import post_form, sign_in

TIME = re.compile(r'<time datetime="([^"]+)"')


def _new(client, **fields):
    data = {"goal": "Compare three vendors", "agent_type": "research_agent", "priority": "medium", **fields}
    return post_form(client, "/dashboard/tasks", data)


def _task_id(response) -> uuid.UUID:
    return uuid.UUID(response.headers["location"].rsplit("/", 1)[1])


def test_creating_a_one_off_task_queues_its_run(client, make_account, session_factory):
    account = make_account()
    sign_in(client, account.key)
    response = _new(client, title="Vendors", priority="high", timeout_s="120", max_retries="1")
    assert response.status_code == 303
    task_id = _task_id(response)
    with session_factory() as session:
        task = session.get(Task, task_id)
        run = session.scalar(select(TaskRun).where(TaskRun.task_id == task_id))
    assert (task.user_id, task.title, task.priority) == (account.user_id, "Vendors", "high")
    assert task.agent_config["timeout"] == 120_000
    assert run.max_attempts == 2
    assert run.status == "queued"
    assert run.trigger == "api"
    page = client.get(response.headers["location"])
    assert page.status_code == 200
    assert "Vendors" in page.text
    assert f"/dashboard/runs/{run.id}" in page.text


def test_a_scheduled_task_shows_its_next_five_fires_and_runs_nothing_now(
    client, make_account, session_factory
):
    account = make_account()
    sign_in(client, account.key)
    before = datetime.now(UTC)
    response = _new(client, scheduled="on", cron="30 8 * * 1-5", timezone="Europe/Paris")
    assert response.status_code == 303
    page = client.get(response.headers["location"]).text
    expected = next_fires(parse_schedule("30 8 * * 1-5", "Europe/Paris"), before, 5)
    shown = [datetime.fromisoformat(value.replace("Z", "+00:00")) for value in TIME.findall(page)]
    assert all(fire in shown for fire in expected)
    with session_factory() as session:
        assert session.scalar(select(TaskRun.id)) is None


def test_the_schedule_preview_shows_five_fires_or_what_is_wrong(client, make_account):
    sign_in(client, make_account().key)
    good = client.get("/dashboard/schedule-preview", params={"cron": "0 9 * * *", "timezone": "Asia/Tokyo"})
    assert good.status_code == 200
    assert len(TIME.findall(good.text)) == 5
    assert "2026" in good.text or "20" in good.text
    bad = client.get("/dashboard/schedule-preview", params={"cron": "61 * * * *", "timezone": "Mars/Base"})
    assert bad.status_code == 200
    assert 'class="field-error"' in bad.text
    assert not TIME.findall(bad.text)


def test_an_invalid_form_comes_back_with_each_field_named_and_nothing_is_written(
    client, make_account, session_factory
):
    sign_in(client, make_account().key)
    response = _new(client, goal="  ", scheduled="on", cron="not cron", timeout_s="soon")
    assert response.status_code == 400
    for field in ("goal", "cron", "timeout_s"):
        assert f'id="{field}-error"' in response.text, field
    assert 'aria-invalid="true"' in response.text
    with session_factory() as session:
        assert session.scalar(select(Task.id)) is None


def test_pause_resume_edit_run_now_and_cancel_from_the_task_page(client, make_account, session_factory):
    sign_in(client, make_account().key)
    task_id = _task_id(_new(client, scheduled="on", cron="0 9 * * *", timezone="UTC"))
    path = f"/dashboard/tasks/{task_id}"

    def task() -> Task:
        with session_factory() as session:
            return session.get(Task, task_id)

    assert post_form(client, f"{path}/pause").status_code == 303
    assert task().schedule_enabled is False
    assert task().next_run_at is None
    assert "Resume schedule" in client.get(path).text
    assert post_form(client, f"{path}/resume").status_code == 303
    assert task().schedule_enabled is True
    assert post_form(client, f"{path}/schedule", {"cron": "15 * * * *", "timezone": "UTC"}).status_code == 303
    assert task().cron == "15 * * * *"
    assert task().next_run_at.minute == 15
    wrong = post_form(client, f"{path}/schedule", {"cron": "99 * * * *"})
    assert wrong.status_code == 400
    assert 'id="cron-error"' in wrong.text
    assert post_form(client, f"{path}/run").status_code == 303
    with session_factory() as session:
        assert session.scalar(select(TaskRun.trigger).where(TaskRun.task_id == task_id)) == "manual"
    assert post_form(client, f"{path}/cancel").status_code == 303
    assert task().status == "cancelled"
    assert post_form(client, f"{path}/run").status_code == 409  # a cancelled task is not run again


def test_a_failed_run_can_be_retried_as_a_new_run(client, make_account, session_factory):
    sign_in(client, make_account().key)
    task_id = _task_id(_new(client))
    with session_factory.begin() as session:
        run_id = session.scalar(select(TaskRun.id).where(TaskRun.task_id == task_id))
        session.execute(
            update(TaskRun)
            .where(TaskRun.id == run_id)
            .values(
                status="failed",
                attempts=1,
                finished_at=text("now()"),
                error={"code": "timeout", "message": "slow"},
            )
        )
        session.execute(update(Task).where(Task.id == task_id).values(status="failed"))
    page = client.get(f"/dashboard/runs/{run_id}").text
    assert "Retry this run" in page
    assert "timeout" in page
    assert "Attempt 1" in page
    response = post_form(client, f"/dashboard/runs/{run_id}/retry")
    assert response.status_code == 303
    new_id = uuid.UUID(response.headers["location"].rsplit("/", 1)[1])
    assert new_id != run_id
    with session_factory() as session:
        new_run = session.get(TaskRun, new_id)
    assert (new_run.task_id, new_run.status, new_run.trigger) == (task_id, "queued", "manual")
    assert post_form(client, f"/dashboard/runs/{new_id}/retry").status_code == 409


def test_cancelling_a_queued_run_from_its_page(client, make_account, session_factory):
    sign_in(client, make_account().key)
    task_id = _task_id(_new(client))
    with session_factory() as session:
        run_id = session.scalar(select(TaskRun.id).where(TaskRun.task_id == task_id))
    assert post_form(client, f"/dashboard/runs/{run_id}/cancel").status_code == 303
    with session_factory() as session:
        assert session.get(TaskRun, run_id).status == "cancelled"
        assert session.get(Task, task_id).status == "cancelled"


def test_cancelling_a_queued_run_of_a_scheduled_task_releases_its_credits_and_keeps_the_schedule(
    client, make_account, session_factory
):
    account = make_account()
    sign_in(client, account.key)
    task_id = _task_id(_new(client, scheduled="on", cron="*/5 * * * *", timezone="UTC"))
    run_id = client.post(f"/api/tasks/{task_id}/run", headers=account.headers).json()["runId"]
    with session_factory.begin() as session:  # an attempt waiting for its retry: it holds 5 credits
        session.execute(
            update(TaskRun).where(TaskRun.id == uuid.UUID(run_id)).values(credits_reserved=5, tokens_used=1)
        )
        session.execute(update(User).where(User.id == account.user_id).values(credits_reserved=5))
    assert post_form(client, f"/dashboard/runs/{run_id}/cancel").status_code == 303
    with session_factory() as session:
        run = session.get(TaskRun, uuid.UUID(run_id))
        assert (run.status, run.credits_reserved, run.credits_used) == ("cancelled", 0, 1)
        assert run.error == {"code": "cancelled", "message": "the run was cancelled"}
        assert run.finished_at is not None
        assert session.get(User, account.user_id).credits_reserved == 0
        task = session.get(Task, task_id)
        assert task.status != "cancelled"
        assert task.schedule_enabled
    assert post_form(client, f"/dashboard/runs/{run_id}/cancel").status_code == 409


def test_a_new_key_is_shown_once_and_the_account_shows_credits_against_the_allowance(
    client, make_account, session_factory
):
    account = make_account(plan="pro")
    with session_factory.begin() as session:
        session.execute(update(User).where(User.id == account.user_id).values(credits_used=3000))
    sign_in(client, account.key)
    page = client.get("/dashboard/account").text
    assert 'max="12000" value="3000"' in page
    assert "3,000 of 12,000 credits used" in page
    created = post_form(client, "/dashboard/account/keys", {"name": "ci <b>"})
    assert created.status_code == 201
    key = re.search(r'id="new-key">(ask_[^<]+)<', created.text).group(1)
    assert "ci &lt;b&gt;" in created.text
    later = client.get("/dashboard/account").text
    assert key not in later
    assert key[:10] in later
    with session_factory() as session:
        assert session.scalar(select(ApiKey.name).where(ApiKey.prefix == key[:10])) == "ci <b>"
    secret = post_form(client, "/dashboard/account/webhook-secret")
    assert secret.status_code == 201
    shown = re.search(r'id="new-secret">(whsec_[^<]+)<', secret.text).group(1)
    assert shown not in client.get("/dashboard/account").text
    assert "Rotate the secret" in client.get("/dashboard/account").text


def test_the_task_list_filters_searches_and_pages(client, make_account):
    account = make_account()
    for i in range(30):
        body = {"goal": f"goal number {i}", "agentType": "data_agent", "async": True, "title": f"T{i:02d}"}
        if i % 10 == 0:
            body["title"] = f"Pricing report {i}"
        client.post("/api/agent/execute", json=body, headers=account.headers)
    sign_in(client, account.key)
    first = client.get("/dashboard/tasks").text
    assert first.count('href="/dashboard/tasks/') >= 25
    assert "Older →" in first
    cursor = re.search(r'cursor=([^"&]+)"', first).group(1)
    older = client.get(f"/dashboard/tasks?cursor={cursor}").text
    assert "T01" in older
    assert "T29" not in older
    found = client.get("/dashboard/tasks", params={"q": "pricing"}).text
    assert found.count("Pricing report") == 3
    none = client.get("/dashboard/tasks", params={"status": "completed"}).text
    assert "No tasks match" in none
    fragment = client.get("/dashboard/tasks?q=T0", headers={"HX-Request": "true", "HX-Target": "task-list"})
    assert fragment.text.startswith('<div id="task-list"')
    assert fragment.headers.get("hx-push-url")


def test_operators_retry_and_cancel_runs_in_bulk(client, make_account, session_factory):
    admin, other = make_account(), make_account()
    with session_factory.begin() as session:
        session.execute(update(User).where(User.id == admin.user_id).values(is_admin=True))
    runs = [
        client.post(
            "/api/agent/execute",
            json={"goal": f"g{i}", "agentType": "data_agent", "async": True},
            headers=other.headers,
        ).json()["runId"]
        for i in range(3)
    ]
    with session_factory.begin() as session:
        session.execute(
            update(TaskRun)
            .where(TaskRun.id == uuid.UUID(runs[0]))
            .values(
                status="failed",
                attempts=1,
                finished_at=text("now()"),
                error={"code": "worker_lost", "message": "x"},
            )
        )
    sign_in(client, admin.key)
    page = client.get("/dashboard/operations", params={"code": "worker_lost"}).text
    assert runs[0] in page
    retried = post_form(client, "/dashboard/operations/retry", {"run_id": [runs[0], runs[1]]})
    assert retried.status_code == 200
    assert "1 run(s) retried" in retried.text
    cancelled = post_form(client, "/dashboard/operations/cancel", {"run_id": [runs[1], runs[2]]})
    assert cancelled.status_code == 200
    assert "2 run(s) cancelled" in cancelled.text
    with session_factory() as session:
        statuses = dict(session.execute(select(TaskRun.id, TaskRun.status)).all())
    assert statuses[uuid.UUID(runs[1])] == statuses[uuid.UUID(runs[2])] == "cancelled"
    assert list(statuses.values()).count("queued") == 1  # the retry of runs[0]


def _count_queries(engine, call) -> int:
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        assert call().status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(statements)


def test_pages_make_the_same_number_of_queries_however_many_rows_they_show(client, make_account):
    from api.app import create_app  # noqa: F401  (the engine is the app's; found through its state)

    account = make_account()
    sign_in(client, account.key)
    engine = client.app.state.api.session_factory.kw["bind"]
    client.post(
        "/api/agent/execute",
        json={"goal": "one", "agentType": "data_agent", "async": True},
        headers=account.headers,
    )
    few = _count_queries(engine, lambda: client.get("/dashboard/tasks"))
    for i in range(20):
        client.post(
            "/api/agent/execute",
            json={"goal": f"g{i}", "agentType": "data_agent", "async": True},
            headers=account.headers,
        )
    assert _count_queries(engine, lambda: client.get("/dashboard/tasks")) == few
    assert few <= 3


def test_the_run_page_shows_each_attempts_error_and_the_steps_of_the_attempt_that_succeeded(
    client, make_account, start_worker, session_factory
):
    from app.providers.openai import OpenAIProvider
    from tests.integration.conftest import wait_for_runs
    from tests.support.openai_stub import OpenAIStub

    with OpenAIStub() as stub:
        provider = OpenAIProvider(base_url=stub.base_url, api_key=None, default_model="stub-model")
        start_worker(provider=provider)
        stub.fail_times(2, status=503)
        account = make_account()
        body = client.post(
            "/api/agent/execute",
            json={
                "goal": "Flaky provider",
                "agentType": "research_agent",
                "async": True,
                "agentConfig": {"maxRetries": 3},
            },
            headers=account.headers,
        ).json()
        [run] = wait_for_runs(session_factory, [body["runId"]])
        provider.close()
    assert run.status == "completed"
    assert run.attempts == 3
    sign_in(client, account.key)
    page = client.get(f"/dashboard/runs/{run.id}").text
    attempts = re.findall(r"<li><strong>Attempt (\d)</strong>(.*?)</li>", page, re.S)
    assert [number for number, _ in attempts] == ["1", "2", "3"]
    assert "provider_error" in attempts[0][1]
    assert "provider_error" in attempts[1][1]
    assert "succeeded" in attempts[2][1]
    assert page.count('class="step"') >= 3  # plan, steps, final


def test_the_live_stream_replays_a_finished_run_then_ends_and_escapes_streamed_text(
    client, make_account, start_worker, session_factory
):
    import asyncio

    from api.dashboard.run_pages import _page_events
    from app.services.run_stream import RunEvent
    from tests.integration.conftest import wait_for_runs

    start_worker()
    account = make_account()
    body = client.post(
        "/api/agent/execute",
        json={"goal": "g", "agentType": "data_agent", "async": True},
        headers=account.headers,
    ).json()
    [run] = wait_for_runs(session_factory, [body["runId"]])
    sign_in(client, account.key)
    replay = client.get(f"/dashboard/runs/{run.id}/events").text
    assert "event: changed" in replay
    assert replay.rstrip().endswith("data: end")
    rendered_at = client.get(f"/dashboard/runs/{run.id}/events", params={"after": f"{run.event_seq}-0"}).text
    assert "event: changed" not in rendered_at  # what the page already shows is not sent again
    assert "event: end" in rendered_at

    async def events():
        yield RunEvent("3-1", "delta", {"index": 1, "text": "<script>alert(1)</script>"})
        yield None

    async def collect():
        return [message async for message in _page_events(events())]

    delta, keepalive = asyncio.run(collect())
    assert delta.data == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert delta.event == "delta"
    assert keepalive.comment == "keep-alive"
