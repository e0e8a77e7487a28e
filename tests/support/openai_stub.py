"""A local server that speaks the OpenAI Chat Completions protocol, for tests.

Real HTTP on 127.0.0.1 (a free port), HTTP/1.1 keep-alive, one daemon thread per connection::

    with OpenAIStub() as stub:
        provider = OpenAIProvider(base_url=stub.base_url, api_key=None, default_model="m")
        stub.fail_times(2, status=503)   # the next two requests fail, then normal answers
        ...
        assert len(stub.requests) == 3

Behaviour, checked in this order for each request: `hang()` (never answer), then `delay()`
(wait, then answer), then pending `fail_times()` failures, then `always_fail()`, then a normal
answer (`reply_with()`, or the raw body of `reply_raw()`). `reply_with`, `reply_raw`,
`always_fail` and `hang` each pick the mode of later requests (`fail_times` ends `always_fail`
and `hang`, keeping the answer text); `delay` applies in every mode.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from tests.support.stream_stub import StreamBehaviour, send_stream

CHAT_PATH = "/v1/chat/completions"
PLAN_ANSWER = '["step one", "step two"]'
_STOP_JOIN_S = 2.0


class OpenAIStub:
    """An OpenAI-compatible Chat Completions server on 127.0.0.1; see the module docstring."""

    base_url: str
    #: Request bodies received, in order (`{"_invalid_json": text}` when a body is not JSON).
    requests: list[dict[str, Any]]
    #: `time.monotonic()` of each request's arrival, aligned with `requests`.
    request_times: list[float]
    #: Headers of each request (lower-case names), aligned with `requests`.
    request_headers: list[dict[str, str]]
    #: TCP connections accepted so far (fewer than requests when keep-alive works).
    connections_accepted: int

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._connections: dict[socket.socket, threading.Thread] = {}
        self.requests = []
        self.request_times = []
        self.request_headers = []
        self.connections_accepted = 0
        self.base_url = ""
        # what the next requests get
        self._mode = "normal"  # normal | raw | always_fail | hang
        self._text: str | None = None
        self._prompt_tokens = 11
        self._completion_tokens = 7
        self._raw: tuple[int, bytes, str] = (200, b"", "application/json")
        self._failures_left = 0
        self._failure_status = 500
        self._always_status = 500
        self._delay_s = 0.0
        self._plan_answer = PLAN_ANSWER
        self._cached_tokens = 0
        #: How `stream: true` requests are answered (tests.support.stream_stub).
        self.streaming = StreamBehaviour()
        #: (substring of the last user message, failures left, status) from `fail_matching`
        self._matching_failures: list[list[Any]] = []
        #: (headers, error code) of the next 429 answers, from `rate_limit_times`
        self._rate_limits: list[tuple[dict[str, str], str]] = []
        #: `answer_together`: [requests wanted at once, requests held so far, release, timeout_s]
        self._together: list[Any] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> OpenAIStub:
        if self._server is not None:
            raise RuntimeError("the stub is already running")
        self._stopping.clear()
        server = _Server(self)
        self._server = server
        host, port = server.server_address[:2]
        self.base_url = f"http://{host!s}:{port}/v1"
        self._serve_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openai-stub",
            daemon=True,
        )
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hanging and delayed requests are dropped, open connections closed."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join(_STOP_JOIN_S)
        with self._lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            # wakes a handler blocked reading the next request of a keep-alive connection
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        give_up = time.monotonic() + _STOP_JOIN_S
        for _, thread in connections:
            thread.join(max(0.0, give_up - time.monotonic()))

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- behaviour ------------------------------------------------------------------------

    def reply_with(
        self,
        text: str | None = None,
        *,
        prompt_tokens: int = 11,
        completion_tokens: int = 7,
        cached_tokens: int = 0,
    ) -> None:
        """Normal answers: `text`, or (None) a deterministic answer derived from the request.

        The deterministic answer is `["step one", "step two"]` when the last user message asks
        for a "JSON array", else `stub answer: <first 40 characters of that message>`.
        """
        with self._lock:
            self._mode = "normal"
            self._text = text
            self._prompt_tokens = prompt_tokens
            self._completion_tokens = completion_tokens
            self._cached_tokens = cached_tokens

    def reply_raw(
        self, body: str | bytes, *, status: int = 200, content_type: str = "application/json"
    ) -> None:
        """Answer every later request with exactly this body (e.g. malformed JSON)."""
        payload = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._mode = "raw"
            self._raw = (status, payload, content_type)

    def fail_times(self, n: int, status: int = 500) -> None:
        """The next `n` requests get `status` (an OpenAI-style error body), then normal answers."""
        with self._lock:
            if self._mode in ("always_fail", "hang"):
                self._mode = "normal"
            self._failures_left = n
            self._failure_status = status

    def plan_with(self, steps: list[str]) -> None:
        """The deterministic answer to a planning request is this JSON array of steps."""
        with self._lock:
            self._plan_answer = json.dumps(steps)

    def fail_matching(self, text: str, times: int = 1, status: int = 500) -> None:
        """The next `times` requests whose last user message contains `text` get `status`."""
        with self._lock:
            self._matching_failures.append([text, times, status])

    def rate_limit_times(
        self, n: int, headers: dict[str, str] | None = None, code: str = "rate_limit_exceeded"
    ) -> None:
        """The next `n` requests get 429 with these headers and this error code, then the rest."""
        with self._lock:
            self._rate_limits.extend([(dict(headers or {}), code)] * n)

    def always_fail(self, status: int = 500) -> None:
        with self._lock:
            self._mode = "always_fail"
            self._always_status = status

    def hang(self) -> None:
        """Accept later requests and never answer them (until `stop()`)."""
        with self._lock:
            self._mode = "hang"

    def delay(self, seconds: float) -> None:
        """Wait this long before answering each later request (0 for no delay)."""
        with self._lock:
            self._delay_s = max(0.0, seconds)

    def answer_together(self, n: int, timeout_s: float = 30.0) -> None:
        """Hold each later request until `n` of them are held at once, then answer them all.

        Shows that a client has `n` calls in flight together, whatever the machine's load: a
        request still held after `timeout_s` is answered 504, so a client that cannot get `n`
        requests out at once fails instead of hanging.
        """
        with self._lock:
            self._together = [n, 0, threading.Event(), timeout_s]

    def _wait_for_the_others(self) -> bool:
        """For `answer_together`: False when the others did not come in time."""
        with self._lock:
            together = self._together
            if together is None:
                return True
            together[1] += 1
            if together[1] >= together[0]:
                together[2].set()
        released: bool = together[2].wait(together[3])
        return released

    # --- serving --------------------------------------------------------------------------

    def _match_failure(self, body: dict[str, Any]) -> int | None:
        """A `fail_matching` failure for this request, if one is due (call with the lock held)."""
        last = _last_user_message(body)
        for entry in self._matching_failures:
            if entry[1] > 0 and entry[0] in last:
                entry[1] -= 1
                return int(entry[2])
        return None

    def _register(self, sock: socket.socket, thread: threading.Thread) -> None:
        with self._lock:
            self._connections[sock] = thread
            self.connections_accepted += 1

    def _unregister(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.pop(sock, None)

    def _handle(self, handler: _Handler) -> None:
        arrived = time.monotonic()
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length > 0 else b""
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        with self._lock:
            self.requests.append(
                body if body is not None else {"_invalid_json": raw.decode(errors="replace")}
            )
            self.request_times.append(arrived)
            self.request_headers.append({k.lower(): v for k, v in handler.headers.items()})
            mode, delay_s = self._mode, self._delay_s
            failure: int | None = None
            if mode != "hang" and self._failures_left > 0:
                self._failures_left -= 1
                failure = self._failure_status
            elif mode == "always_fail":
                failure = self._always_status
            elif body is not None and (matched := self._match_failure(body)) is not None:
                failure = matched
            text, raw_answer = self._text, self._raw
            tokens = (self._prompt_tokens, self._completion_tokens)
            cached = self._cached_tokens
            limited = self._rate_limits.pop(0) if self._rate_limits and mode != "hang" else None

        if not self._wait_for_the_others():
            _send_error(handler, 504, "answer_together: the other requests did not arrive")
            return
        if mode == "hang" or (delay_s > 0 and self._stopping.wait(delay_s)):
            self._stopping.wait()
            handler.close_connection = True
            return
        if handler.path.split("?", 1)[0] != CHAT_PATH:
            _send_error(handler, 404, f"unknown path {handler.path}")
        elif body is None:
            _send_error(handler, 400, "the request body is not a JSON object")
        elif limited is not None:
            headers, code = limited
            error = {"message": f"stub rate limit ({code})", "type": "requests", "param": None, "code": code}
            _send(handler, 429, json.dumps({"error": error}).encode(), headers=headers)
        elif failure is not None:
            _send_error(handler, failure, f"stub failure (HTTP {failure})")
        elif mode == "raw":
            status, payload, content_type = raw_answer
            _send(handler, status, payload, content_type)
        else:
            answer = text if text is not None else _deterministic_answer(body, self._plan_answer)
            if body.get("stream") is True:
                send_stream(handler, body, answer, (*tokens, cached), self.streaming)
            else:
                _send(handler, 200, json.dumps(_completion(body, answer, *tokens, cached)).encode())


def most_within(times: Sequence[float], window_s: float) -> int:
    """The most of `times` (sorted, e.g. a stub's `request_times`) within any `window_s` seconds."""
    best, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() shuts connections down and joins their threads with a bound
    request_queue_size = 1024  # the listen backlog: hundreds of clients connect at once

    def __init__(self, stub: OpenAIStub) -> None:
        self.stub = stub
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="openai-stub-connection",
            daemon=True,
        )
        self.stub._register(request, thread)
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except OSError:  # a client that went away mid-answer is not the test's business
            pass
        except Exception:  # a bug in the stub: print it (pytest shows it), never raise in a thread
            self.handle_error(request, client_address)
        finally:
            self.stub._unregister(request)
            self.shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    server: _Server

    def do_POST(self) -> None:
        self.server.stub._handle(self)

    def do_GET(self) -> None:
        _send_error(self, 404, f"unknown path {self.path}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _send(
    handler: BaseHTTPRequestHandler,
    status: int,
    payload: bytes,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def _send_error(handler: BaseHTTPRequestHandler, status: int, message: str) -> None:
    error = {
        "message": message,
        "type": "server_error" if status >= 500 else "invalid_request_error",
        "param": None,
        "code": "rate_limit_exceeded" if status == 429 else None,
    }
    _send(handler, status, json.dumps({"error": error}).encode())


def _last_user_message(body: dict[str, Any]) -> str:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    users = [m for m in messages if m.get("role") == "user"]
    last = (users or messages or [{}])[-1].get("content")
    return last if isinstance(last, str) else ""


def _deterministic_answer(body: dict[str, Any], plan_answer: str = PLAN_ANSWER) -> str:
    last = _last_user_message(body)
    if "JSON array" in last:
        return plan_answer
    return f"stub answer: {last[:40]}"


def _completion(
    body: dict[str, Any], text: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-stub-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "stub-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            **({"prompt_tokens_details": {"cached_tokens": cached_tokens}} if cached_tokens else {}),
        },
    }
