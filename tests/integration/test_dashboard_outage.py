"""The dashboard with Postgres or Redis unreachable: a 503 page (with Retry-After), never a
traceback; a run saved while Redis refuses its message is said to be, and is sent later."""

from __future__ import annotations

import socket

from litestar.testing import TestClient
from sqlalchemy import select, text, update
from sqlalchemy.engine import make_url

from app.models import TaskRun, User
from tests.integration.test_reconcile import do_reconcile
from tests.support.dashboard import SESSION_COOKIE, csrf_token, post_form, sign_in
from tests.support.outage import redis_refusing


def _closed_port() -> int:
    with socket.socket() as probe:  # bound then closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_with_postgres_unreachable_the_dashboard_answers_a_503_page_with_retry_after(settings):
    from api.app import create_app

    url = make_url(settings.database_url).set(host="127.0.0.1", port=_closed_port())
    app = create_app(settings.model_copy(update={"database_url": url.render_as_string(hide_password=False)}))
    with TestClient(app) as client:
        token = csrf_token(client)  # the sign-in page needs no database
        answers = [
            client.post(
                "/dashboard/sign-in",
                data={"api_key": "ask_" + "x" * 43, "_csrf_token": token, "next": "/dashboard/tasks"},
                follow_redirects=False,
            ),
        ]
        client.cookies.set(SESSION_COOKIE, "s" * 43)
        answers.append(client.get("/dashboard/tasks", follow_redirects=False))
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"].startswith("text/html")
        assert int(answer.headers["retry-after"]) > 0
        assert "Briefly unavailable" in answer.text
        assert "Try again in a few seconds" in answer.text
        assert "Traceback" not in answer.text
        assert "content-security-policy" in answer.headers


# Redis refusing a run's message after the run is saved: the same 503 page, saying the run is
# saved and queued (not "try again", which would queue another), leading to it; the reconciler
# sends it once Redis is back.


def _new_task(client, **fields):
    data = {"goal": "Compare three vendors", "agent_type": "research_agent", "priority": "medium", **fields}
    return post_form(client, "/dashboard/tasks", data)


def _new_runs(session_factory, trigger: str) -> list[TaskRun]:
    with session_factory() as session:
        return list(session.scalars(select(TaskRun).where(TaskRun.trigger == trigger)))


def _fail(session_factory, run_ids) -> None:
    with session_factory.begin() as session:
        session.execute(
            update(TaskRun)
            .where(TaskRun.id.in_(run_ids))
            .values(
                status="failed",
                attempts=1,
                finished_at=text("now()"),
                error={"code": "timeout", "message": "x"},
            )
        )


def _on_its_queue(session_factory, redis_client, run_id) -> bool:
    with session_factory() as session:
        run = session.get(TaskRun, run_id)
    return run.message_id is not None and bool(
        redis_client.hexists(f"dramatiq:runs.{run.priority}.msgs", run.message_id)
    )


def _assert_saved_page(client, answer, runs: list[TaskRun]) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert int(answer.headers["retry-after"]) > 0
    assert "Briefly unavailable" in answer.text
    assert "saved and queued" in answer.text
    assert "Traceback" not in answer.text
    assert "content-security-policy" in answer.headers
    assert {run.status for run in runs} == {"queued"}
    if len(runs) == 1:  # the page leads to the saved run
        assert f'href="/dashboard/runs/{runs[0].id}"' in answer.text
        assert client.get(f"/dashboard/runs/{runs[0].id}").status_code == 200


def _assert_reconciled(session_factory, redis_client, runs: list[TaskRun]) -> None:
    assert not any(_on_its_queue(session_factory, redis_client, run.id) for run in runs)
    assert do_reconcile(session_factory, redis_client).sent == len(runs)
    assert all(_on_its_queue(session_factory, redis_client, run.id) for run in runs)


def test_creating_a_task_while_redis_refuses_shows_the_503_page_and_its_run_is_sent_later(
    client, make_account, session_factory, redis_client, monkeypatch
):
    sign_in(client, make_account().key)
    with redis_refusing(monkeypatch):
        answer = _new_task(client)
    runs = _new_runs(session_factory, "api")
    assert len(runs) == 1
    _assert_saved_page(client, answer, runs)
    _assert_reconciled(session_factory, redis_client, runs)


def test_run_now_while_redis_refuses_shows_the_503_page_and_its_run_is_sent_later(
    client, make_account, session_factory, redis_client, monkeypatch
):
    sign_in(client, make_account().key)
    created = _new_task(client, scheduled="on", cron="0 9 * * *", timezone="UTC")  # nothing to send
    assert created.status_code == 303
    with redis_refusing(monkeypatch):
        answer = post_form(client, f"{created.headers['location']}/run")
    runs = _new_runs(session_factory, "manual")
    assert len(runs) == 1
    _assert_saved_page(client, answer, runs)
    _assert_reconciled(session_factory, redis_client, runs)


def test_retrying_a_run_while_redis_refuses_shows_the_503_page_and_the_new_run_is_sent_later(
    client, make_account, session_factory, redis_client, monkeypatch
):
    sign_in(client, make_account().key)
    assert _new_task(client).status_code == 303
    (failed,) = _new_runs(session_factory, "api")
    _fail(session_factory, [failed.id])
    with redis_refusing(monkeypatch):
        answer = post_form(client, f"/dashboard/runs/{failed.id}/retry")
    runs = _new_runs(session_factory, "manual")
    assert len(runs) == 1
    _assert_saved_page(client, answer, runs)
    _assert_reconciled(session_factory, redis_client, runs)


def test_an_operators_bulk_retry_while_redis_refuses_shows_the_503_page_and_the_runs_are_sent_later(
    client, make_account, session_factory, redis_client, monkeypatch
):
    admin, other = make_account(), make_account()
    with session_factory.begin() as session:
        session.execute(update(User).where(User.id == admin.user_id).values(is_admin=True))
    body = {"agentType": "data_agent", "async": True}
    for goal in ("g1", "g2"):
        assert (
            client.post("/api/agent/execute", json={**body, "goal": goal}, headers=other.headers).status_code
            == 202
        )
    failed = [run.id for run in _new_runs(session_factory, "api")]
    _fail(session_factory, failed)
    sign_in(client, admin.key)
    with redis_refusing(monkeypatch):
        answer = post_form(
            client, "/dashboard/operations/retry", {"run_id": [str(run_id) for run_id in failed]}
        )
    runs = _new_runs(session_factory, "manual")
    assert len(runs) == 2
    _assert_saved_page(client, answer, runs)
    assert "The 2 runs are saved and queued" in answer.text
    _assert_reconciled(session_factory, redis_client, runs)
