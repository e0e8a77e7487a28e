"""The dashboard over HTTP: sign-in sessions, ownership (404), CSRF, escaping, admin-only pages."""

from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy import select, text, update

from app.models import ApiKey, DashboardSession, TaskRun, User
from app.services import keys
from tests.support.dashboard import CSRF_COOKIE, SESSION_COOKIE, csrf_token, post_form, sign_in

XSS = "<script>alert(1)</script>"
ONE_OFF = {"goal": "Summarise the week", "agentType": "research_agent", "async": True}
SCHEDULED = {
    "goal": "Check competitor pricing",
    "agentType": "research_agent",
    "schedule": {"enabled": True, "cron": "0 9 * * *", "timezone": "America/New_York"},
}
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)


def _fail_run(session_factory, run_id: str, code: str = "provider_error") -> None:
    with session_factory.begin() as session:
        session.execute(
            update(TaskRun)
            .where(TaskRun.id == uuid.UUID(run_id))
            .values(
                status="failed",
                attempts=1,
                error={"code": code, "message": "the provider said no"},
                finished_at=text("now()"),
                started_at=text("now()"),
            )
        )


@pytest.fixture
def owner_and_stranger(client, make_account, session_factory):
    """Two users: the owner has a one-off task (a failed run) and a scheduled task."""
    owner, stranger = make_account(), make_account()
    one_off = client.post("/api/agent/execute", json=ONE_OFF, headers=owner.headers).json()
    scheduled = client.post("/api/agent/execute", json=SCHEDULED, headers=owner.headers).json()
    _fail_run(session_factory, one_off["runId"])
    return owner, stranger, one_off, scheduled


def _owned_pages(one_off, scheduled) -> list[str]:
    task, run, sched = one_off["taskId"], one_off["runId"], scheduled["taskId"]
    return [
        f"/dashboard/tasks/{task}",
        f"/dashboard/tasks/{sched}",
        f"/dashboard/runs/{run}",
        f"/dashboard/runs/{run}/body",
        f"/dashboard/runs/{run}/events",
    ]


def test_signed_out_pages_redirect_to_sign_in(client, owner_and_stranger):
    _, _, one_off, scheduled = owner_and_stranger
    for path in [
        "/dashboard/tasks",
        "/dashboard/tasks/new",
        "/dashboard/account",
        "/dashboard/operations",
        "/dashboard/schedule-preview?cron=*",
        *_owned_pages(one_off, scheduled),
    ]:
        response = client.get(path, follow_redirects=False)
        assert response.status_code in (303, 401), path
        if response.status_code == 303:
            assert response.headers["location"].startswith("/dashboard/sign-in"), path
    htmx = client.get("/dashboard/tasks", headers={"HX-Request": "true"}, follow_redirects=False)
    assert htmx.headers.get("hx-redirect", "").startswith("/dashboard/sign-in")
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_every_page_and_fragment_is_200_for_its_owner_and_404_for_another_user(client, owner_and_stranger):
    owner, stranger, one_off, scheduled = owner_and_stranger
    fragments = [
        (f"/dashboard/tasks/{one_off['taskId']}", "task-runs"),
        (f"/dashboard/runs/{one_off['runId']}", "run-body"),
    ]
    sign_in(client, owner.key)
    for path in _owned_pages(one_off, scheduled):
        assert client.get(path).status_code == 200, path
    for path, target in fragments:
        response = client.get(path, headers={"HX-Request": "true", "HX-Target": target})
        assert response.status_code == 200, path
        assert f'id="{target}"' in response.text
        assert "<html" not in response.text
    for path in ["/dashboard/tasks", "/dashboard/tasks/new", "/dashboard/account"]:
        assert client.get(path).status_code == 200, path
    assert "Summarise the week" in client.get("/dashboard/tasks").text

    sign_in(client, stranger.key)
    listing = client.get("/dashboard/tasks")
    assert "Summarise the week" not in listing.text
    assert "No tasks yet" in listing.text
    for path in _owned_pages(one_off, scheduled):
        assert client.get(path).status_code == 404, path
    for path, target in fragments:
        assert client.get(path, headers={"HX-Request": "true", "HX-Target": target}).status_code == 404
    task, run = one_off["taskId"], one_off["runId"]
    for action in ["run", "cancel", "pause", "resume"]:
        assert post_form(client, f"/dashboard/tasks/{task}/{action}").status_code == 404, action
    assert post_form(client, f"/dashboard/tasks/{task}/schedule", {"cron": "0 * * * *"}).status_code == 404
    assert post_form(client, f"/dashboard/runs/{run}/retry").status_code == 404
    assert post_form(client, f"/dashboard/runs/{run}/cancel").status_code == 404
    assert client.get(f"/dashboard/tasks/{uuid.uuid4()}").status_code == 404


def test_another_users_key_cannot_be_revoked_and_is_not_listed(client, make_account, session_factory):
    owner, stranger = make_account(), make_account()
    with session_factory() as session:
        owner_key = session.scalar(select(ApiKey.id).where(ApiKey.user_id == owner.user_id))
    sign_in(client, stranger.key)
    assert post_form(client, f"/dashboard/account/keys/{owner_key}/revoke").status_code == 404
    assert str(owner_key) not in client.get("/dashboard/account").text
    with session_factory() as session:
        assert session.get(ApiKey, owner_key).revoked_at is None


def test_the_session_cookie_is_httponly_samesite_strict_and_secure_over_https(client, make_account):
    account = make_account()
    cookie = sign_in(client, account.key).headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/dashboard" in cookie
    assert "Secure" not in cookie
    client.base_url = client.base_url.copy_with(scheme="https")
    client.cookies.clear()
    cookie = sign_in(client, account.key).headers["set-cookie"]
    assert "Secure" in cookie


def test_a_wrong_key_does_not_sign_in(client, make_account, session_factory):
    response = client.post(
        "/dashboard/sign-in",
        data={"api_key": "ask_nope", "_csrf_token": csrf_token(client)},
        follow_redirects=False,
    )
    assert response.status_code == 401
    assert "not valid" in response.text
    with session_factory() as session:
        assert session.scalars(select(DashboardSession)).first() is None


def test_sign_out_ends_the_session_on_the_server(client, make_account, session_factory):
    account = make_account()
    sign_in(client, account.key)
    token = client.cookies.get(SESSION_COOKIE)
    assert post_form(client, "/dashboard/sign-out").status_code == 303
    with session_factory() as session:
        assert session.scalars(select(DashboardSession)).first() is None
    client.cookies.set(SESSION_COOKIE, token, path="/dashboard")  # an old cookie is worth nothing now
    assert client.get("/dashboard/tasks", follow_redirects=False).status_code == 303


def test_revoking_the_key_from_the_dashboard_signs_its_sessions_out(client, make_account, session_factory):
    account = make_account()
    sign_in(client, account.key)
    with session_factory() as session:
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.user_id == account.user_id))
    response = post_form(client, f"/dashboard/account/keys/{key_id}/revoke")
    assert response.status_code == 303
    assert "ended=revoked" in response.headers["location"]
    with session_factory() as session:
        assert session.scalars(select(DashboardSession)).first() is None
    assert client.get("/dashboard/tasks", follow_redirects=False).status_code == 303


def test_a_key_revoked_elsewhere_ends_its_sessions_at_the_next_request(client, make_account, session_factory):
    account = make_account()
    sign_in(client, account.key)
    assert client.get("/dashboard/tasks").status_code == 200
    with session_factory.begin() as session:
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.user_id == account.user_id))
        keys.revoke_key(session, key_id, user_id=None, now=session.scalar(text("SELECT now()")))
    response = client.get("/dashboard/tasks", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/sign-in?ended=revoked"
    with session_factory() as session:
        assert session.scalars(select(DashboardSession)).first() is None  # its row is gone too


def test_forms_without_a_valid_csrf_token_are_refused(client, make_account, owner_and_stranger):
    owner, _, one_off, _ = owner_and_stranger
    no_token = client.post("/dashboard/sign-in", data={"api_key": owner.key}, follow_redirects=False)
    assert no_token.status_code == 403
    sign_in(client, owner.key)
    task = one_off["taskId"]
    for data in ({}, {"_csrf_token": "forged" + "0" * 120}):
        response = client.post(f"/dashboard/tasks/{task}/run", data=data, follow_redirects=False)
        assert response.status_code == 403
        assert "did not come from this dashboard" in response.text
    good = post_form(client, f"/dashboard/tasks/{task}/run")
    assert good.status_code == 303
    header = client.post(
        f"/dashboard/tasks/{task}/run",
        headers={"x-csrftoken": client.cookies.get(CSRF_COOKIE)},
        follow_redirects=False,
    )
    assert header.status_code == 303  # htmx sends the token as a header


def test_model_and_user_output_is_escaped(client, make_account, session_factory):
    account = make_account()
    sign_in(client, account.key)
    created = post_form(
        client, "/dashboard/tasks", {"goal": XSS, "agent_type": "research_agent", "title": XSS}
    )
    assert created.status_code == 303
    task_path = created.headers["location"]
    with session_factory.begin() as session:
        session.execute(update(TaskRun).values(result=XSS, error={"code": "internal", "message": XSS}))
        run_id = session.scalar(select(TaskRun.id))
    for path in ["/dashboard/tasks", task_path, f"/dashboard/runs/{run_id}", "/dashboard/tasks?q=<script>"]:
        body = client.get(path).text
        assert XSS not in body, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body, path
        assert not INLINE_SCRIPT.search(body), path


def test_pages_send_a_content_security_policy_without_unsafe_inline_scripts(client, make_account):
    account = make_account()
    sign_in(client, account.key)
    for path in ["/dashboard/sign-in", "/dashboard/tasks", "/dashboard/tasks/new", "/dashboard/account"]:
        response = client.get(path)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "unsafe-eval" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert not INLINE_SCRIPT.search(response.text), path
    assert client.get("/dashboard/static/htmx.min.js").status_code == 200
    assert client.get("/dashboard/static/dashboard.css").status_code == 200


def test_operations_are_for_admins_only(client, make_account, session_factory, owner_and_stranger):
    owner, _, one_off, _ = owner_and_stranger
    sign_in(client, owner.key)
    assert client.get("/dashboard/operations").status_code == 403
    assert post_form(client, "/dashboard/operations/retry", {"run_id": one_off["runId"]}).status_code == 403
    assert "Operations</a>" not in client.get("/dashboard/tasks").text
    with session_factory.begin() as session:
        session.execute(update(User).where(User.id == owner.user_id).values(is_admin=True))
    page = client.get("/dashboard/operations")
    assert page.status_code == 200
    assert "provider_error" in page.text
    assert "Runs per minute by outcome" in page.text
    assert "Operations</a>" in client.get("/dashboard/tasks").text
    fragment = client.get("/dashboard/operations", headers={"HX-Request": "true", "HX-Target": "ops-live"})
    assert fragment.status_code == 200
    assert "<html" not in fragment.text


def test_admins_are_made_with_the_cli(session_factory, capsys):
    from app.cli import build_parser
    from app.cli.admin import run_admin

    def admin(*argv: str) -> int:
        return run_admin(build_parser().parse_args(list(argv)))

    assert admin("users", "create", "--email", "ops@example.com", "--admin") == 0
    assert admin("users", "create", "--email", "dev@example.com") == 0
    assert "admin" in capsys.readouterr().out
    with session_factory() as session:
        flags = dict(session.execute(select(User.email, User.is_admin)).all())
    assert flags == {"ops@example.com": True, "dev@example.com": False}
    assert admin("users", "admin", "--email", "dev@example.com") == 0
    with session_factory() as session:
        assert session.scalar(select(User.is_admin).where(User.email == "dev@example.com")) is True


def test_an_expired_session_is_signed_out_and_swept_at_the_next_sign_in(
    client, make_account, session_factory
):
    account = make_account()
    sign_in(client, account.key)
    with session_factory.begin() as session:
        session.execute(update(DashboardSession).values(expires_at=text("now() - interval '1 minute'")))
    assert client.get("/dashboard/tasks", follow_redirects=False).status_code == 303
    sign_in(client, account.key)
    with session_factory() as session:
        assert len(session.scalars(select(DashboardSession)).all()) == 1
    assert client.get("/dashboard/tasks").status_code == 200
