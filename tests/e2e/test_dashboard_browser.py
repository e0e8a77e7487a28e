"""The dashboard in a real browser (headless Chromium via Playwright) against the live API and a
real worker: sign in, create and watch a run live, schedules, cancel, revoke, phone width.

Screenshots of every page land in the test's temporary directory (`screenshots/`).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Process, Spawn, free_port, wait_until
from tests.support.openai_stub import OpenAIStub

CHROMIUM = os.environ.get("AGENTSCHED_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    pytest.skip("browser tests skipped: playwright is not installed", allow_module_level=True)
if not Path(CHROMIUM).exists():
    pytest.skip(
        f"browser tests skipped: no Chromium at {CHROMIUM} (apt-get install chromium)",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

#: Every model call of the stub takes this long, so a run lasts a few seconds and can be watched.
MODEL_CALL_S = 1.0
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as server:
        server.delay(MODEL_CALL_S)
        yield server


@pytest.fixture
def live_app(spawn: Spawn, stub: OpenAIStub) -> Iterator[str]:
    """The API (uvicorn, free port) and one worker whose model is the slow local stub."""
    port = free_port()
    provider = {"LLM_PROVIDER": "openai", "LLM_BASE_URL": stub.base_url}
    api = spawn("api", "-m", "uvicorn", "api.app:app", "--port", str(port), "--log-level", "warning")
    worker = spawn("worker", "-m", "dramatiq", "actors", "--processes", "1", "--threads", "2", env=provider)
    base = f"http://127.0.0.1:{port}"
    import httpx

    def healthy() -> bool:
        for process in (api, worker):
            assert process.popen.poll() is None, process.log()
        try:
            return httpx.get(f"{base}/api/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, timeout_s=40, what="API start", logs=lambda: _logs(api, worker))
    return base


def _logs(*processes: Process) -> str:
    return "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in processes)


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder


def _page(browser: Browser, viewport: dict[str, int] = DESKTOP) -> tuple[Any, Page]:
    context = browser.new_context(viewport=viewport, timezone_id="Asia/Tokyo", locale="en-GB")
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:  # the confirmation of a cancel or a revocation
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.errors = errors  # type: ignore[attr-defined]
    page.dialogs = dialogs  # type: ignore[attr-defined]
    return context, page


def _sign_in(page: Page, base: str, key: str) -> None:
    page.goto(f"{base}/dashboard/tasks")
    assert "/dashboard/sign-in" in page.url  # signed out: sent to sign in
    page.get_by_label("API key").fill(key)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/dashboard/tasks")


def _seed_an_hour_of_runs(session_factory: Any, task_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Finished runs over the last hour (every outcome, scheduled ones a little late), for the charts."""
    from sqlalchemy import text

    with session_factory.begin() as session:
        session.execute(
            text(
                """
                INSERT INTO task_runs (id, task_id, user_id, trigger, scheduled_for, status, priority,
                                       attempts, max_attempts, timeout_ms, queued_at, started_at,
                                       finished_at, cancel_requested, tokens_used, credits_used,
                                       credits_reserved, error)
                SELECT gen_random_uuid(), :task_id, :user_id, 'schedule',
                       now() - g * interval '47 seconds',
                       (ARRAY['completed', 'completed', 'completed', 'failed', 'cancelled'])[1 + g % 5],
                       'medium', 1, 4, 300000, now() - g * interval '47 seconds',
                       now() - g * interval '47 seconds' + (g % 7) * interval '150 milliseconds',
                       now() - g * interval '47 seconds' + interval '3 seconds', false, 10, 1, 0,
                       CASE WHEN g % 5 = 3 THEN '{"code": "timeout", "message": "slow"}'::jsonb END
                  FROM generate_series(1, 70) AS g
                """
            ),
            {"task_id": task_id, "user_id": user_id},
        )


def _no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def test_sign_in_create_a_task_and_watch_its_run_finish_live(live_app, browser, make_account, shots, stub):
    account = make_account()
    stub.streaming.piece_delay_s = 0.25  # answers stream piece by piece, as a model's do
    context, page = _page(browser)
    _sign_in(page, live_app, account.key)
    assert page.get_by_text("No tasks yet").is_visible()
    page.screenshot(path=shots / "tasks-empty.png", full_page=True)

    page.get_by_role("link", name="New task", exact=True).first.click()
    page.get_by_label("Goal", exact=True).fill("Compare the three cheapest vendors")
    page.get_by_label("Agent type").select_option("research_agent")
    page.screenshot(path=shots / "task-new.png", full_page=True)
    page.get_by_role("button", name="Create task").click()
    page.wait_for_url("**/dashboard/tasks/*")
    page.screenshot(path=shots / "task.png", full_page=True)

    page.locator("#task-runs a[href*='/dashboard/runs/']").first.click()
    page.wait_for_url("**/dashboard/runs/*")
    page.evaluate("window.__sameDocument = true")  # gone if the page were reloaded
    page.locator(".step").first.wait_for()  # steps appear while it runs...
    page.locator("#live-output", has_text=re.compile(r"\w")).wait_for()  # ...an answer streams in
    page.screenshot(path=shots / "run-live.png", full_page=True)
    seen_running = page.locator("#run-status").inner_text()
    page.locator("#run-status", has_text="completed").wait_for(timeout=60_000)  # ...and it ends, live
    assert page.evaluate("window.__sameDocument === true")
    kinds = page.locator(".step .kind").all_inner_texts()
    assert kinds[0].lower().startswith("plan"), kinds
    assert kinds[-1].lower().startswith("final"), kinds
    assert seen_running.strip() in ("queued", "running", "completed")
    time_el = page.locator("time[datetime]").first
    assert time_el.get_attribute("title").endswith("UTC")  # UTC on hover, local time shown
    assert "UTC" not in time_el.inner_text()
    page.screenshot(path=shots / "run-completed.png", full_page=True)
    assert not page.errors, page.errors  # no CSP violation or script error
    context.close()


def test_a_scheduled_task_shows_its_next_fires_before_and_after_saving(
    live_app, browser, make_account, shots
):
    account = make_account()
    context, page = _page(browser)
    _sign_in(page, live_app, account.key)
    page.goto(f"{live_app}/dashboard/tasks/new")
    assert page.get_by_label("Timezone").input_value() == "Asia/Tokyo"  # the browser's, by default
    page.get_by_label("Goal", exact=True).fill("Morning market summary")
    page.get_by_label("Run on a cron schedule instead of now").check()
    page.get_by_label("Cron expression").fill("30 9 * * 1-5")
    preview = page.locator("#schedule-preview li")
    preview.nth(4).wait_for()  # the next five fires, before saving
    assert preview.count() == 5
    page.screenshot(path=shots / "task-new-preview.png", full_page=True)
    page.get_by_role("button", name="Create task").click()
    page.wait_for_url("**/dashboard/tasks/*")
    assert page.locator("ol.fires li").count() == 5
    assert page.get_by_text("30 9 * * 1-5").first.is_visible()
    page.screenshot(path=shots / "task-scheduled.png", full_page=True)
    page.get_by_role("button", name="Pause schedule").click()
    page.get_by_role("button", name="Resume schedule").wait_for()
    context.close()


def test_cancel_a_running_run_from_its_page(live_app, browser, make_account, shots, stub):
    account = make_account()
    stub.delay(3.0)  # slow enough to catch it running
    context, page = _page(browser)
    _sign_in(page, live_app, account.key)
    page.goto(f"{live_app}/dashboard/tasks/new")
    page.get_by_label("Goal", exact=True).fill("A long investigation")
    page.get_by_role("button", name="Create task").click()
    page.wait_for_url("**/dashboard/tasks/*")
    page.locator("#task-runs a[href*='/dashboard/runs/']").first.click()
    page.locator("#run-status", has_text="running").wait_for(timeout=30_000)
    page.get_by_role("button", name="Cancel run").click()
    page.locator("#run-status", has_text="cancelled").wait_for(timeout=60_000)
    assert any("Cancel this run" in message for message in page.dialogs)
    page.screenshot(path=shots / "run-cancelled.png", full_page=True)
    context.close()


def test_revoking_the_key_signs_out_and_pages_fit_a_phone(
    live_app, browser, make_account, shots, session_factory
):
    from sqlalchemy import update

    from app.models import User

    account = make_account()
    with session_factory.begin() as session:
        session.execute(update(User).where(User.id == account.user_id).values(is_admin=True))
    import httpx

    created = httpx.post(
        f"{live_app}/api/agent/execute",
        json={"goal": "A run to look at " + uuid.uuid4().hex, "agentType": "data_agent", "async": True},
        headers=account.headers,
    ).json()
    context, page = _page(browser, PHONE)
    _sign_in(page, live_app, account.key)
    pages = {
        "phone-tasks": "/dashboard/tasks",
        "phone-task-new": "/dashboard/tasks/new",
        "phone-task": f"/dashboard/tasks/{created['taskId']}",
        "phone-run": f"/dashboard/runs/{created['runId']}",
        "phone-account": "/dashboard/account",
        "phone-operations": "/dashboard/operations",
    }
    for name, path in pages.items():
        page.goto(live_app + path)
        assert page.locator("h1").first.is_visible()
        assert _no_horizontal_scroll(page), name
        page.screenshot(path=shots / f"{name}.png", full_page=True)
    _seed_an_hour_of_runs(session_factory, uuid.UUID(created["taskId"]), account.user_id)
    page.set_viewport_size(DESKTOP)
    page.goto(f"{live_app}/dashboard/operations")
    assert page.locator("svg rect.bar").count() > 10  # both charts drawn, on the server
    page.screenshot(path=shots / "operations.png", full_page=True)
    page.set_viewport_size(PHONE)
    page.reload()
    assert _no_horizontal_scroll(page)
    page.screenshot(path=shots / "phone-operations-charts.png", full_page=True)
    page.set_viewport_size(DESKTOP)

    page.goto(f"{live_app}/dashboard/account")
    page.screenshot(path=shots / "account.png", full_page=True)
    page.get_by_role("button", name="Revoke key").first.click()
    page.wait_for_url("**/dashboard/sign-in?ended=revoked")
    assert any("Revoke this key" in message for message in page.dialogs)
    assert page.get_by_text("Your session ended").is_visible()
    page.goto(f"{live_app}/dashboard/tasks")
    assert "/dashboard/sign-in" in page.url
    page.screenshot(path=shots / "signed-out.png", full_page=True)
    assert httpx.get(f"{live_app}/api/me", headers=account.headers).status_code in (200, 401)
    context.close()
