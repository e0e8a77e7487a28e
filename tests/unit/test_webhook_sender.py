"""The HTTP POST of a webhook: to the pinned address, no redirects, one deadline for it all."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.webhooks.addresses import Target
from app.webhooks.sender import post


@pytest.fixture
def server() -> Iterator[tuple[int, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            seen.append({k.lower(): v for k, v in self.headers.items()} | {"path": self.path})
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            else:
                self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], seen
    httpd.shutdown()
    httpd.server_close()


def test_the_request_goes_to_the_checked_address_with_the_name_as_host(server):
    port, seen = server
    target = Target("http", "hooks.example.invalid", port, "127.0.0.1", "/h?x=1")
    result = post(target, b"{}", {"webhook-id": "abc"})
    assert result.ok
    assert result.status_code == 204
    assert seen[0]["host"] == f"hooks.example.invalid:{port}"
    assert seen[0]["path"] == "/h?x=1"
    assert seen[0]["webhook-id"] == "abc"
    assert seen[0]["content-type"] == "application/json"


def test_a_redirect_is_an_answer_not_followed(server):
    port, seen = server
    result = post(Target("http", "127.0.0.1", port, "127.0.0.1", "/redirect"), b"{}", {})
    assert not result.ok
    assert result.status_code == 302
    assert len(seen) == 1


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_deadline():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
                if stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    started = time.monotonic()
    result = post(Target("http", "127.0.0.1", port, "127.0.0.1", "/"), b"{}", {}, timeout_s=1.0)
    elapsed = time.monotonic() - started
    stop.set()
    listener.close()
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("timeout")
    assert 0.9 <= elapsed < 5.0


def test_nothing_listening_is_a_connection_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = post(Target("http", "127.0.0.1", port, "127.0.0.1", "/"), b"{}", {}, timeout_s=2.0)
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("connection error")
