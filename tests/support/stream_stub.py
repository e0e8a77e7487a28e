"""How the OpenAI stub streams an answer (`stream: true`): SSE chunks over chunked HTTP/1.1."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any


@dataclass
class StreamBehaviour:
    """What the next streamed answers do; changed by the stub's methods, under its lock."""

    #: Send the usage chunk (`stream_options.include_usage`); False as older servers do.
    usage: bool = True
    #: Cut the next `cuts` streams after this many answer pieces (the connection just closes).
    cut_after: int | None = None
    cuts: int = 0
    #: Streams answered whole before the cuts begin.
    whole_first: int = 0
    #: Pause between pieces (seconds): a model "thinking" while it streams.
    piece_delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_cut(self) -> int | None:
        with self.lock:
            if self.cut_after is None or self.cuts <= 0:
                return None
            if self.whole_first > 0:
                self.whole_first -= 1
                return None
            self.cuts -= 1
            return self.cut_after


def pieces_of(answer: str) -> list[str]:
    """The answer word by word, each word with the spaces after it."""
    return re.findall(r"\S+\s*|\s+", answer) or [""]


def send_stream(
    handler: BaseHTTPRequestHandler,
    body: dict[str, Any],
    answer: str,
    tokens: tuple[int, int, int],
    behaviour: StreamBehaviour,
) -> None:
    """An OpenAI-style event stream: one chunk per piece, a finish chunk, usage, `[DONE]`."""
    prompt_tokens, completion_tokens, cached_tokens = tokens
    model = body.get("model") or "stub-model"
    include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and behaviour.usage
    cut_after = behaviour.take_cut()
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()

    def event(payload: object) -> None:
        data = f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()
        handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        handler.wfile.flush()

    base = {"id": f"chatcmpl-stub-{time.monotonic_ns()}", "object": "chat.completion.chunk", "model": model}
    event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    for number, piece in enumerate(pieces_of(answer)):
        if cut_after is not None and number >= cut_after:
            handler.close_connection = True
            return  # no terminating chunk: the client sees the stream end mid-answer
        if behaviour.piece_delay_s:
            time.sleep(behaviour.piece_delay_s)
        event({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
        event({**base, "choices": [], "usage": usage})
    event("[DONE]")
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()
