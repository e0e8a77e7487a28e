"""A slow OpenAI-compatible Chat Completions server for benchmarks: asyncio, one coroutine a connection.

    python -m benchmarks.model_server --port 8099 --delay 1.0

Every `POST /v1/chat/completions` is answered after `--delay` seconds, the way
`tests/support/openai_stub.py` answers (a two-step plan when asked for a JSON array, else a
short text), so an agent run makes the same four calls. A request with `stream: true` is answered
as server-sent events, its pieces due at even intervals over the `--delay` (the usage chunk last, when
`stream_options.include_usage` asks for it). `GET /stats` returns JSON counters:
requests answered, requests in flight now and at most, connections open now and at most, the
seconds spent serving answered requests (arrival to last byte written) and the event loop's timer
lag (sum, max, ticks: a CPU-starved server stretches every call past `--delay`);
`GET /arrivals` when each completion request arrived (seconds since the server started).
It serves 127.0.0.1 only and holds thousands of keep-alive connections on one event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from typing import Any

PLAN_ANSWER = '["step one", "step two"]'
MAX_BODY_BYTES = 4 * 1024 * 1024


class Stats:
    def __init__(self) -> None:
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        self.max_connections = 0
        self.started = time.monotonic()
        #: Seconds since start at which each completion request arrived (GET /arrivals).
        self.arrivals: list[float] = []
        #: Seconds from each completion request's arrival to its answer's last byte written.
        self.served_s = 0.0
        #: How late the event loop's timers fire (a starved server stretches every call).
        self.loop_lag_s = 0.0
        self.loop_lag_max_s = 0.0
        self.loop_ticks = 0

    def as_json(self) -> bytes:
        return json.dumps(
            {
                "answered": self.answered,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "connections": self.connections,
                "max_connections": self.max_connections,
                "uptime_s": round(time.monotonic() - self.started, 3),
                "served_s": round(self.served_s, 3),
                "loop_lag_s": round(self.loop_lag_s, 4),
                "loop_lag_max_s": round(self.loop_lag_max_s, 4),
                "loop_ticks": self.loop_ticks,
            }
        ).encode()


def _answer(body: dict[str, Any]) -> str:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    users = [m for m in messages if m.get("role") == "user"]
    last = (users or messages or [{}])[-1].get("content")
    last = last if isinstance(last, str) else ""
    return PLAN_ANSWER if "JSON array" in last else f"bench answer: {last[:40]}"


def _completion(body: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "id": f"chatcmpl-bench-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or "bench-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _answer(body)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }
    ).encode()


def _response(status: int, payload: bytes, reason: str = "OK") -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _serve(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float, stats: Stats
) -> None:
    stats.connections += 1
    stats.max_connections = max(stats.max_connections, stats.connections)
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = [*request_line.split(" ", 2), "", ""][:3]
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if length > MAX_BODY_BYTES:
                writer.write(_response(413, b'{"error": {"message": "too large"}}', "Payload Too Large"))
                return
            raw = await reader.readexactly(length) if length else b""
            if method == "GET" and path == "/stats":
                writer.write(_response(200, stats.as_json()))
            elif method == "GET" and path == "/arrivals":
                writer.write(_response(200, json.dumps([round(t, 4) for t in stats.arrivals]).encode()))
            elif method == "POST" and path.split("?", 1)[0] == "/v1/chat/completions":
                arrived = time.monotonic()
                stats.arrivals.append(arrived - stats.started)
                stats.in_flight += 1
                stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                body = body if isinstance(body, dict) else {}
                try:
                    if body.get("stream") is True:
                        await _stream(writer, body, delay_s)
                    else:
                        await asyncio.sleep(delay_s)
                        writer.write(_response(200, _completion(body)))
                    await writer.drain()
                finally:
                    stats.in_flight -= 1
                stats.answered += 1
                stats.served_s += time.monotonic() - arrived
            else:
                writer.write(_response(404, b'{"error": {"message": "unknown path"}}', "Not Found"))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        stats.connections -= 1
        writer.close()


async def _stream(writer: asyncio.StreamWriter, body: dict[str, Any], delay_s: float) -> None:
    """The answer as SSE chunks (chunked HTTP/1.1), word by word over `delay_s`."""
    words = [word + " " for word in _answer(body).split(" ")]
    words[-1] = words[-1].rstrip()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    base = {
        "id": f"chatcmpl-bench-{time.monotonic_ns()}",
        "object": "chat.completion.chunk",
        "model": "bench",
    }

    def event(payload: object) -> None:
        data = f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    # Each piece is due at a fixed time after the request, not a sleep after the last one: on a
    # busy machine every timer fires late, and ten late sleeps in a row stretched a 1 s answer
    # to 1.4 s, which the benchmark then counted against the workers.
    started = time.monotonic()
    for number, word in enumerate(words, start=1):
        await asyncio.sleep(max(started + delay_s * number / len(words) - time.monotonic(), 0.0))
        event({**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
        await writer.drain()
    event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        event({**base, "choices": [], "usage": usage})
    event("[DONE]")
    writer.write(b"0\r\n\r\n")


async def _watch_loop(stats: Stats, interval_s: float = 0.01) -> None:
    """Measure how late a short timer fires, again and again: the loop's scheduling lag."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(interval_s)
        lag = max(time.monotonic() - before - interval_s, 0.0)
        stats.loop_lag_s += lag
        stats.loop_lag_max_s = max(stats.loop_lag_max_s, lag)
        stats.loop_ticks += 1


async def serve(port: int, delay_s: float) -> None:
    stats = Stats()
    server = await asyncio.start_server(
        lambda r, w: _serve(r, w, delay_s, stats), "127.0.0.1", port, backlog=4096, limit=MAX_BODY_BYTES
    )
    async with server:
        await asyncio.gather(server.serve_forever(), _watch_loop(stats))


def raise_priority() -> None:
    """Run ahead of the workers: the server stands in for a model on another machine.

    On the shared 2-core machine, 512 worker threads kept this one event loop waiting for a CPU:
    its timers fired 50-140 ms late and a 1 s answer took 1.15-1.4 s, which the benchmark counted
    against the workers. The loop uses ~0.1 core, so a real-time priority (root) costs the
    workers nothing; else a lower nice value; else a note.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
        return
    except (OSError, AttributeError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError as exc:
        print(f"model server: could not raise its priority ({exc}); its timers may run late", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds before each answer")
    parser.add_argument(
        "--no-priority",
        action="store_true",
        help="do not raise the server's scheduling priority (see `raise_priority`)",
    )
    args = parser.parse_args()
    if not args.no_priority:
        raise_priority()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.delay))


if __name__ == "__main__":
    main()
