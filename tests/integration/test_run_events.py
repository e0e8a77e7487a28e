"""GET /api/runs/{id}/steps and /events over real HTTP (uvicorn in a thread), with a real worker."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from app.providers.openai import OpenAIProvider
from app.services.execution import RunEnvironment
from app.services.run_deltas import DeltaPublisher, deltas_channel
from app.services.run_stream import parse_event_id
from tests.integration.conftest import wait_for_runs
from tests.support.openai_stub import OpenAIStub
from tests.support.steps import queue_run

GOAL = {"goal": "Compare three vendors", "agentType": "research_agent", "async": True}


@dataclass
class LiveApi:
    base_url: str
    app: object

    @property
    def feed(self):
        return self.app.state.api.feed  # type: ignore[attr-defined]


@pytest.fixture
def live_api(settings) -> Iterator[LiveApi]:
    from api.app import create_app

    app = create_app(settings)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    yield LiveApi(f"http://127.0.0.1:{port}", app)
    server.should_exit = True
    thread.join(20)


@dataclass
class Event:
    id: str | None
    event: str | None
    data: object


def read_events(response: httpx.Response, *, until_end: bool = True, limit: int = 10_000) -> list[Event]:
    """Parse `text/event-stream` lines into events (comments skipped) until `end` or `limit`."""
    events: list[Event] = []
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields or "event" in fields:
                data = json.loads(fields["data"]) if fields.get("data") else None
                events.append(Event(fields.get("id"), fields.get("event"), data))
                if (until_end and fields.get("event") == "end") or len(events) >= limit:
                    return events
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    return events


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as running:
        yield running


@pytest.fixture
def streaming_worker(session_factory, settings, redis_client, stub):
    """A real worker whose provider streams from the stub, its pieces published to Redis."""
    import dramatiq

    from actors import broker
    from actors import worker as worker_module

    workers: list[dramatiq.Worker] = []

    def start() -> None:
        provider = OpenAIProvider(base_url=stub.base_url, api_key=None, default_model="m")
        worker_module.set_run_environment(
            RunEnvironment(session_factory, provider, settings, deltas=DeltaPublisher(redis_client))
        )
        worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
        worker.start()
        workers.append(worker)

    yield start
    for worker in workers:
        worker.stop(timeout=10_000)
    worker_module._environment = None


def _ids(events: list[Event]) -> list[tuple[int, int]]:
    return [parse_event_id(event.id) for event in events]


def test_live_events_come_in_order_with_deltas_and_end_and_resume_after_last_event_id(
    live_api, make_account, session_factory, stub, streaming_worker
):
    account = make_account()
    stub.reply_with(prompt_tokens=10, completion_tokens=5, cached_tokens=4)
    stub.streaming.piece_delay_s = 0.05
    run_id = queue_run(session_factory, account.user_id, GOAL)
    url = f"{live_api.base_url}/api/runs/{run_id}/events"
    with httpx.Client(timeout=30) as http, http.stream("GET", url, headers=account.headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        streaming_worker()
        live = read_events(response)

    kinds = [event.event for event in live]
    assert kinds[0] == "status"
    assert live[0].data["status"] == "queued"  # connected before the worker took it
    assert {"status": "running", "attempt": 1} in [e.data for e in live if e.event == "status"]
    assert kinds[-1] == "end"
    assert live[-1].data["status"] == "completed"
    assert live[-1].data["steps"] == 4
    assert live[-1].data["cachedTokens"] == 16
    ids = _ids(live[:-1])
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)  # every event has its own id, in order
    steps = [e.data for e in live if e.event == "step"]
    assert [(s["index"], s["status"]) for s in steps] == [
        (0, "running"), (0, "completed"), (1, "running"), (1, "completed"),
        (2, "running"), (2, "completed"), (3, "running"), (3, "completed"),
    ]  # fmt: skip
    for index in (1, 2, 3):  # every piece arrived live, after its step's start and before its end
        positions = [i for i, e in enumerate(live) if e.event == "step" and e.data["index"] == index]
        pieces = [
            (i, e.data["text"]) for i, e in enumerate(live) if e.event == "delta" and e.data["index"] == index
        ]
        assert pieces
        assert all(positions[0] < i < positions[1] for i, _ in pieces)
        assert "".join(text for _, text in pieces) == live[positions[1]].data["output"]

    # A finished run answers its history and `end` at once: each step once, as it is now.
    with httpx.Client(timeout=10) as http:
        started = time.monotonic()
        with http.stream("GET", url, headers=account.headers) as response:
            replay = read_events(response)
        assert time.monotonic() - started < 5
        middle = next(
            e for e in live if e.event == "step" and e.data["index"] == 1 and e.data["status"] == "completed"
        )
        with http.stream("GET", url, headers={**account.headers, "Last-Event-ID": middle.id}) as response:
            resumed = read_events(response)
    assert [e.event for e in replay] == ["step"] * 4 + ["status", "end"]
    assert [e.data["status"] for e in replay if e.event == "step"] == ["completed"] * 4
    assert replay[-2].data == {"status": "completed", "attempt": 1}
    assert all(parse_event_id(e.id) > parse_event_id(middle.id) for e in resumed)
    assert [(e.event, (e.data or {}).get("index")) for e in resumed] == [
        ("step", 2), ("step", 3), ("status", None), ("end", None)
    ]  # fmt: skip


def test_steps_and_events_of_another_users_run_are_404(live_api, make_account, session_factory):
    owner, stranger = make_account(), make_account()
    run_id = queue_run(session_factory, owner.user_id, GOAL, send=False)
    with httpx.Client(base_url=live_api.base_url, timeout=10) as http:
        for path in (f"/api/runs/{run_id}/steps", f"/api/runs/{run_id}/events"):
            assert http.get(path, headers=stranger.headers).status_code == 404
        assert http.get(f"/api/runs/{uuid.uuid4()}/events", headers=owner.headers).status_code == 404
        assert http.get(f"/api/runs/{run_id}/events").status_code == 401
        assert http.get(f"/api/runs/{run_id}/steps", headers=owner.headers).json() == {"items": []}


def test_the_steps_endpoint_lists_plan_steps_and_final_with_their_tokens(
    live_api, make_account, session_factory, stub, streaming_worker
):
    account = make_account()
    stub.reply_with(prompt_tokens=30, completion_tokens=6, cached_tokens=10)
    streaming_worker()
    run_id = queue_run(session_factory, account.user_id, GOAL)
    wait_for_runs(session_factory, [run_id])
    with httpx.Client(base_url=live_api.base_url, timeout=10, headers=account.headers) as http:
        items = http.get(f"/api/runs/{run_id}/steps").json()["items"]
        run = http.get(f"/api/runs/{run_id}").json()
    assert [(s["index"], s["kind"], s["status"]) for s in items] == [
        (0, "plan", "completed"), (1, "step", "completed"),
        (2, "step", "completed"), (3, "final", "completed"),
    ]  # fmt: skip
    assert set(items[0]) == {
        "index", "kind", "title", "status", "attempt", "model", "promptTokens", "completionTokens",
        "cachedTokens", "usageEstimated", "latencyMs", "waitedMs", "startedAt", "finishedAt", "output",
        "error",
    }  # fmt: skip
    assert all((s["promptTokens"], s["cachedTokens"], s["usageEstimated"]) == (30, 10, False) for s in items)
    assert (run["promptTokens"], run["completionTokens"], run["cachedTokens"], run["steps"]) == (
        120,
        24,
        40,
        4,
    )
    assert run["tokensUsed"] == 144


def test_two_hundred_clients_connecting_and_dropping_leave_no_watch_or_subscription_behind(
    live_api, make_account, session_factory, redis_client
):
    account = make_account()
    run_id = queue_run(session_factory, account.user_id, GOAL, send=False)  # stays queued: streams stay open
    url = f"{live_api.base_url}/api/runs/{run_id}/events"

    def connect_and_drop(_: int) -> str | None:
        with httpx.Client(timeout=30) as http, http.stream("GET", url, headers=account.headers) as response:
            first = read_events(response, limit=1)
            return first[0].event if first else None

    with ThreadPoolExecutor(max_workers=50) as pool:
        firsts = list(pool.map(connect_and_drop, range(200)))
    assert firsts == ["status"] * 200

    deadline = time.monotonic() + 20
    while live_api.feed.watching or redis_client.pubsub_numsub(deltas_channel(run_id))[0][1]:
        assert time.monotonic() < deadline, (
            live_api.feed.watching,
            redis_client.pubsub_numsub(deltas_channel(run_id)),
        )
        time.sleep(0.1)


def _running_step(session_factory, run_id: uuid.UUID) -> int | None:
    from sqlalchemy import text

    with session_factory() as session:
        return session.execute(
            text("SELECT max(index) FROM run_steps WHERE run_id = :r AND status = 'running'"), {"r": run_id}
        ).scalar()


def test_a_run_nobody_watches_publishes_no_deltas_and_a_stream_joining_mid_step_still_gets_them_all(
    live_api, make_account, session_factory, stub, streaming_worker, redis_client
):
    """Pieces of a step nobody watched as it started go to the run's Redis stream only (no
    PUBLISH); an event stream that starts watching during that step reads them from the stream,
    all of them in order before the step's end, and the next steps' pieces arrive live."""
    account = make_account()
    stub.streaming.piece_delay_s = 0.15
    run_id = queue_run(session_factory, account.user_id, GOAL)
    channel = redis_client.pubsub()  # a subscriber of our own: it does not make the run watched
    channel.subscribe(deltas_channel(run_id))
    try:
        assert channel.get_message(timeout=2) is not None
        streaming_worker()
        deadline = time.monotonic() + 30
        while _running_step(session_factory, run_id) != 1:  # the first step after the plan
            assert time.monotonic() < deadline, "step 1 never started"
            time.sleep(0.02)
        unwatched = [m for m in iter(lambda: channel.get_message(timeout=0.1), None)]
        url = f"{live_api.base_url}/api/runs/{run_id}/events"
        with httpx.Client(timeout=30) as http, http.stream("GET", url, headers=account.headers) as response:
            live = read_events(response)
    finally:
        channel.close()
    assert unwatched == []  # the plan's and step 1's pieces so far: in the stream, not published
    steps = {(e.data["index"], e.data["status"]): i for i, e in enumerate(live) if e.event == "step"}
    for index in (1, 2, 3):
        pieces = [
            (i, e.data["text"]) for i, e in enumerate(live) if e.event == "delta" and e.data["index"] == index
        ]
        end = steps[(index, "completed")]
        assert pieces
        assert all(i < end for i, _ in pieces)
        assert "".join(text for _, text in pieces) == live[end].data["output"]
    ids = _ids(live[:-1])
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
