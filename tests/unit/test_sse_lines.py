"""Splitting a streamed answer's bytes into `data:` lines, however the bytes are chunked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from app.errors import ProviderError
from app.providers.chat_stream import DataLines, StreamedAnswer, read_chat_stream


def _event(content: str | None = None, **extra: object) -> bytes:
    chunk: dict[str, object] = {"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": None}]}
    if content is not None:
        chunk["choices"] = [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
    chunk.update(extra)
    return f"data: {json.dumps(chunk)}\n\n".encode()


def _read(chunks: list[bytes], on_delta=None) -> StreamedAnswer:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return asyncio.run(read_chat_stream(body(), on_delta, 1000))


def _lines(chunks: list[bytes], max_line_bytes: int = 1000) -> list[str]:
    lines = DataLines(max_line_bytes)
    return [line for chunk in chunks for line in lines.feed(chunk)] + lines.finish()


STREAM = (
    b": keep-alive\n\n"
    + _event("Grüße ")
    + b"event: message\nid: 7\n"
    + _event("aus 東京")
    + _event(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
    + _event(choices=[], usage={"prompt_tokens": 3, "completion_tokens": 2})
    + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_split_of_the_stream_gives_the_same_answer(newline: bytes) -> None:
    body = STREAM.replace(b"\n", newline)
    for cut in range(len(body) + 1):
        for second_cut in (cut, min(cut + 1, len(body)), min(cut + 7, len(body))):
            chunks = [body[:cut], body[cut:second_cut], body[second_cut:]]
            answer = _read(chunks)
            assert answer.text == "Grüße aus 東京", (newline, cut, second_cut)
            assert answer.usage == {"prompt_tokens": 3, "completion_tokens": 2}
            assert answer.done


def test_only_data_lines_come_out_and_a_last_line_without_newline_counts() -> None:
    lines = _lines([b': c\nevent: x\ndata: {"a": 1}\n\nid: 2\ndata:[DONE]'])
    assert lines == ['data: {"a": 1}', "data:[DONE]"]


def test_pieces_are_handed_on_as_their_chunks_arrive() -> None:
    pieces: list[str] = []
    seen_before_each_chunk: list[list[str]] = []

    async def body() -> AsyncIterator[bytes]:
        for chunk in (_event("one "), _event("two"), b"data: [DONE]\n\n"):
            seen_before_each_chunk.append(list(pieces))
            yield chunk

    answer = asyncio.run(read_chat_stream(body(), pieces.append, 1000))
    assert seen_before_each_chunk == [[], ["one "], ["one ", "two"]]  # each piece before the next read
    assert pieces == ["one ", "two"]
    assert answer.done


def test_a_line_longer_than_any_answer_is_refused() -> None:
    with pytest.raises(ProviderError, match="line over 64 bytes"):
        _lines([b"data: " + b"x" * 100], max_line_bytes=64)
