"""A run page opened while a step streams: the step's text so far reaches it, then the rest."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import text

from app.services.run_deltas import deltas_key
from tests.support.dashboard import sign_in

STREAM_AFTER = re.compile(r'sse-connect="/dashboard/runs/[^"?]+/events\?after=([^"]+)"')


def _running_mid_step(session_factory, run_id: str) -> None:
    """The run is running: its plan (events 1-2) is done, step 1 started at event 3."""
    with session_factory.begin() as session:
        session.execute(
            text(
                "UPDATE task_runs SET status = 'running', attempts = 1, started_at = now(),"
                " event_seq = 3, status_seq = 1 WHERE id = :id"
            ),
            {"id": run_id},
        )
        session.execute(
            text(
                """
                INSERT INTO run_steps (run_id, index, kind, title, status, attempt, started_at,
                                       finished_at, output, seq, start_seq)
                VALUES (:id, 0, 'plan', 'Plan', 'completed', 1, now(), now(), 'the plan', 2, 1),
                       (:id, 1, 'step', 'Look around', 'running', 1, now(), NULL, NULL, 3, 3)
                """
            ),
            {"id": run_id},
        )


def test_a_run_page_opened_mid_step_streams_the_text_so_far_and_what_follows(
    client, make_account, session_factory, redis_client
):
    account = make_account()
    run_id = client.post(
        "/api/agent/execute",
        json={"goal": "g", "agentType": "data_agent", "async": True},
        headers=account.headers,
    ).json()["runId"]
    sign_in(client, account.key)
    queued = client.get(f"/dashboard/runs/{run_id}").text
    assert STREAM_AFTER.search(queued).group(1) == "0-0"  # nothing shown yet is skipped

    _running_mid_step(session_factory, run_id)
    redis_client.xadd(deltas_key(uuid.UUID(run_id)), {"index": 1, "text": "Hello, "}, id="3-1")
    redis_client.xadd(deltas_key(uuid.UUID(run_id)), {"index": 1, "text": "<b>world</b>"}, id="3-2")
    page = client.get(f"/dashboard/runs/{run_id}").text
    after = STREAM_AFTER.search(page).group(1)
    assert after == "2-0"  # the running step is streamed again from its start
    assert 'id="live-output"' in page
    assert page.index('id="live-output"') > page.index("</div>", page.index('id="run-body"'))

    assert _first_data(client, account, run_id, after, 3) == ["step", "Hello, ", "&lt;b&gt;world&lt;/b&gt;"]
    # Resumed after the running step's start (a Last-Event-ID), its pieces still come.
    assert _first_data(client, account, run_id, "3-0", 1) == ["Hello, "]


def _first_data(client, account, run_id: str, after: str, count: int) -> list[str]:
    """The data of the first `count` messages (keep-alives aside) of the page's stream of a
    running run, read on the app's own event loop (the stream does not end while it runs)."""
    import anyio

    from api.dashboard.run_pages import page_events
    from app.services.dashboard_sessions import SignedIn

    user = SignedIn(account.user_id, account.email, False, uuid.uuid4())

    async def read() -> list[str]:
        messages = await page_events(client.app.state.api, user, uuid.UUID(run_id), after)
        data: list[str] = []
        with anyio.move_on_after(2):  # a running run's stream waits, then sends a keep-alive
            async for message in messages:
                if message.comment is None:
                    data.append(str(message.data))
                if len(data) == count:
                    break
        await messages.aclose()  # type: ignore[attr-defined]
        return data

    return client.blocking_portal.call(read)
