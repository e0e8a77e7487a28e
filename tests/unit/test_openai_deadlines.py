"""OpenAIProvider's deadline against a real HTTP server on 127.0.0.1 (the stub, or a raw trickling
socket): a hanging or trickling server, a worker that stops, and the environment's proxy."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from app.errors import ProviderError, RunTimeout
from app.providers import call_deadline
from app.providers.openai import OpenAIProvider, environment_proxy
from tests.support.openai_calls import BUSY_MACHINE_SLACK_S, complete, make_provider
from tests.support.openai_stub import OpenAIStub

# --- the deadline -----------------------------------------------------------------------------


def test_a_hanging_server_times_out_at_the_deadline(stub: OpenAIStub, provider: OpenAIProvider) -> None:
    stub.hang()

    started = time.monotonic()
    with pytest.raises(RunTimeout):
        complete(provider, timeout_s=0.5)
    elapsed = time.monotonic() - started

    # Early is impossible; late allows for a busy machine (without the deadline: never ends).
    assert 0.45 <= elapsed < 0.5 + BUSY_MACHINE_SLACK_S
    assert len(stub.requests) == 1


@pytest.mark.parametrize("timeout_s", [0, -1.0])
def test_no_time_left_raises_without_a_request(
    stub: OpenAIStub, provider: OpenAIProvider, timeout_s: float
) -> None:
    with pytest.raises(RunTimeout):
        complete(provider, timeout_s=timeout_s)

    assert stub.requests == []


class TrickleServer:
    """Answers one connection byte by byte, every 50 ms, forever: in its headers or its body."""

    def __init__(self, *, in_body: bool) -> None:
        self.prefix = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            if in_body
            else b"HTTP/1.1 200 OK\r\n"
        )
        self.trickle = b'{"choices": "' if in_body else b"X-Slow: "
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(self.prefix + self.trickle)
                while not self.stopping.wait(0.05):
                    conn.sendall(b"a")
            except OSError:
                pass

    def __enter__(self) -> TrickleServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.listener.close()
        self.thread.join(2)


@pytest.mark.parametrize("in_body", [False, True], ids=["headers", "body"])
def test_a_trickling_server_cannot_stretch_the_deadline(in_body: bool) -> None:
    """Every read returns a byte well within httpx's read timeout, yet the call ends on time."""
    with TrickleServer(in_body=in_body) as server, make_provider(server.base_url) as provider:
        started = time.monotonic()
        with pytest.raises(RunTimeout):
            complete(provider, timeout_s=0.5)
        elapsed = time.monotonic() - started

    assert 0.45 <= elapsed < 0.5 + BUSY_MACHINE_SLACK_S  # a trickle stretches reads forever


def test_the_stub_stops_quickly_while_a_request_hangs() -> None:
    stub = OpenAIStub().start()
    stub.hang()
    outcome: list[BaseException] = []

    def call() -> None:
        with make_provider(stub.base_url) as provider:
            try:
                complete(provider, timeout_s=5)
            except (ProviderError, RunTimeout) as exc:
                outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    give_up = time.monotonic() + 5
    while not stub.requests and time.monotonic() < give_up:
        time.sleep(0.01)
    assert stub.requests, "the request never reached the stub"

    started = time.monotonic()
    stub.stop()
    # Waiting for the hanging handler would take the stub's 2 s join; the rest is quick.
    assert time.monotonic() - started < 1.9

    caller.join(6)
    assert not caller.is_alive()
    # the stub drops the connection: the caller learns at once, not at its deadline
    assert [type(exc) for exc in outcome] == [ProviderError]


# --- a worker that stops ---------------------------------------------------------------------


def test_a_stop_cuts_a_call_already_in_flight_at_its_grace(
    stub: OpenAIStub, provider: OpenAIProvider
) -> None:
    """`set_stop_deadline` moves the cut of calls already waiting on the I/O loop, not only new ones."""
    stub.hang()
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            complete(provider, timeout_s=30.0)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not stub.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stub.requests, "the call never reached the server"
        stopped_at = time.monotonic()
        call_deadline.set_stop_deadline(stopped_at + 0.3)
        thread.join(0.3 + BUSY_MACHINE_SLACK_S)
        elapsed = time.monotonic() - stopped_at
    finally:
        call_deadline.set_stop_deadline(None)
    assert not thread.is_alive(), "the call went on past the stop's grace"
    assert isinstance(outcome[0], RunTimeout)
    assert 0.25 <= elapsed < 0.3 + BUSY_MACHINE_SLACK_S  # (without the stop: 30 s)
    # and a call after the stop was lifted has its own deadline again
    stub.reply_with("after the stop")
    assert complete(provider).text == "after the stop"


# --- proxies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "url", "expected"),
    [
        ({}, "https://api.example.com/v1/chat/completions", None),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://api.example.com/v1/x", "http://proxy:3128"),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "http://llm.internal/v1/x", None),
        ({"HTTP_PROXY": "http://proxy:3128"}, "http://llm.internal/v1/x", "http://proxy:3128"),
        ({"ALL_PROXY": "http://proxy:3128"}, "http://llm.internal/v1/x", "http://proxy:3128"),
        (
            {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "llm.internal,localhost"},
            "http://llm.internal/v1/x",
            None,
        ),
        ({"HTTPS_PROXY": "socks5://proxy:1080"}, "https://api.example.com/v1/x", None),
    ],
)
def test_the_proxy_is_the_one_the_environment_names(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], url: str, expected: str | None
) -> None:
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert environment_proxy(url) == expected


def test_requests_go_through_the_environments_proxy(
    monkeypatch: pytest.MonkeyPatch, stub: OpenAIStub
) -> None:
    """The stub, named as the proxy, receives the request in proxy form (the absolute URL)."""
    monkeypatch.setenv("HTTP_PROXY", stub.base_url.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with make_provider("http://llm.invalid/v1") as provider, pytest.raises(ProviderError) as raised:
        complete(provider)  # (the stub does not serve the proxy form, so it answers 404 naming it)
    assert "unknown path http://llm.invalid/v1/chat/completions" in raised.value.message
