"""A real HTTP receiver for webhook tests: answers from a script, verifies every delivery with
the `standardwebhooks` library, and records what it got."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    #: The payload as `Webhook(secret).verify` returned it, per secret that verified it.
    verified_with: list[str]
    payload: Any
    answered: int | None


@dataclass
class Receiver:
    """Answers each POST with the next status of `script` (then `default`); "hang" sleeps."""

    secrets: list[str] = field(default_factory=list)
    script: list[int | str] = field(default_factory=list)
    default: int = 200
    hang_s: float = 5.0
    #: Extra headers sent with an answer of that status (e.g. {503: {"Retry-After": "2"}}).
    headers_for: dict[int, dict[str, str]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    #: Requests being answered now, and the most there ever were at once.
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/agentsched"

    def next_answer(self) -> int | str:
        with self.lock:
            return self.script.pop(0) if self.script else self.default

    def record(self, item: Received) -> None:
        with self.lock:
            self.received.append(item)

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"receiver got {len(self.received)} request(s), wanted {count}")

    def verify(self, body: bytes, headers: dict[str, str]) -> tuple[list[str], Any]:
        verified: list[str] = []
        payload = None
        for secret in self.secrets:
            try:
                payload = Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            verified.append(secret)
        return verified, payload


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            with receiver.lock:
                receiver.in_flight += 1
                receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
            try:
                self._answer()
            finally:
                with receiver.lock:
                    receiver.in_flight -= 1

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified, payload = receiver.verify(body, headers)
            answer = receiver.next_answer()
            if answer == "hang":
                receiver.record(Received(time.monotonic(), self.path, headers, body, verified, payload, None))
                time.sleep(receiver.hang_s)
                return
            assert isinstance(answer, int)
            receiver.record(Received(time.monotonic(), self.path, headers, body, verified, payload, answer))
            self.send_response(answer)
            for name, value in receiver.headers_for.get(answer, {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def serve(receiver: Receiver) -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
