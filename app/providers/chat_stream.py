"""Reading a streamed Chat Completions answer (`stream: true`): server-sent events, one chunk each.

Each `data:` line holds a `chat.completion.chunk`; the answer is the concatenation of
`choices[0].delta.content`; with `stream_options: {include_usage: true}` the last chunk (with
empty `choices`) carries `usage`; `data: [DONE]` ends the stream. Every read is bounded by the
call's deadline (the transport's network backend), so a server that trickles chunks cannot
hold a call past it. A stream that stops before `[DONE]` (or a finish reason) is cut: the call
fails, retryably, and the step is redone.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from typing import Any

from app.errors import ProviderError
from app.providers.base import DeltaCallback


@dataclass
class StreamedAnswer:
    text: str = ""
    usage: dict[str, Any] | None = None
    model: str | None = None
    finish_reason: str | None = None
    done: bool = False
    pieces: list[str] = field(default_factory=list)


async def read_chat_stream(
    chunks: AsyncIterable[bytes], on_delta: DeltaCallback | None, max_bytes: int
) -> StreamedAnswer:
    """The answer of an event stream's body, calling `on_delta` with each piece as it arrives.

    No line may exceed `max_bytes` bytes, nor the answer `max_bytes` characters.
    """
    lines = DataLines(max_bytes)
    reader = ChatStreamReader(on_delta, max_bytes)
    async for chunk in chunks:
        for line in lines.feed(chunk):
            reader.feed(line)
    for line in lines.finish():
        reader.feed(line)
    return reader.finish()


class ChatStreamReader:
    """The answer of an event stream fed one line at a time (for readers that get lines pushed)."""

    def __init__(self, on_delta: DeltaCallback | None, max_chars: int) -> None:
        self.answer = StreamedAnswer()
        self.on_delta = on_delta
        self.max_chars = max_chars
        self.size = 0

    def feed(self, line: str) -> None:
        if not line.startswith("data:"):
            return  # comments (": keep-alive"), `event:` and `id:` lines, blank separators
        answer = self.answer
        data = line[5:].strip()
        if data == "[DONE]":
            answer.done = True  # read on to the body's end, so the connection can be reused
            return
        if answer.done:
            return
        piece = _apply(answer, _json(data))
        if piece:
            self.size += len(piece)
            if self.size > self.max_chars:
                raise ProviderError(f"model provider streamed an answer over {self.max_chars} characters")
            answer.pieces.append(piece)
            if self.on_delta is not None:
                self.on_delta(piece)

    def finish(self) -> StreamedAnswer:
        answer = self.answer
        answer.text = "".join(answer.pieces)
        if not answer.done and answer.finish_reason is None:
            raise ProviderError("the model provider's stream ended before the answer was complete")
        return answer


class DataLines:
    """The `data:` lines of an event stream, split from its bytes as they arrive.

    Decoding every chunk to text and splitting it in Python line by line (httpx's `iter_lines`)
    costs more than it needs to: an answer's stream is mostly `data: {...}` lines, so we split
    bytes and decode only those. CR LF and a lone CR end a line too (the SSE grammar); other
    lines (comments, `event:`, `id:`, the blank ones between events) mean nothing to a chat
    completion and are skipped.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        if self.pending:
            chunk = self.pending + chunk
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        self.pending = lines.pop()
        if len(self.pending) > self.max_line_bytes:
            raise ProviderError(f"model provider streamed a line over {self.max_line_bytes} bytes")
        return [line.decode("utf-8", errors="replace") for line in lines if line.startswith(b"data:")]

    def finish(self) -> list[str]:
        last, self.pending = self.pending, b""
        return [last.decode("utf-8", errors="replace")] if last.startswith(b"data:") else []


def _json(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ProviderError(f"model provider streamed a chunk that is not JSON: {data[:200]}") from None
    if not isinstance(chunk, dict):
        raise ProviderError(f"model provider streamed a chunk that is not an object: {data[:200]}")
    error = chunk.get("error")
    if error is not None:  # some servers report a failure inside the stream
        message = error.get("message") if isinstance(error, dict) else error
        raise ProviderError(f"model provider failed mid-stream: {str(message)[:300]}")
    return chunk


def _apply(answer: StreamedAnswer, chunk: dict[str, Any]) -> str:
    """Fold one chunk into the answer; the text piece it carries."""
    if isinstance(chunk.get("model"), str) and chunk["model"]:
        answer.model = chunk["model"]
    if isinstance(chunk.get("usage"), dict):
        answer.usage = chunk["usage"]
    choices = chunk.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(first, dict):
        return ""
    if isinstance(first.get("finish_reason"), str):
        answer.finish_reason = first["finish_reason"]
    delta = first.get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""
