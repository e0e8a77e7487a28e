"""OpenAIProvider against a real HTTP server on 127.0.0.1: answers, failures, streamed answers."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.errors import ProviderError, RunTimeout
from app.providers.base import ChatMessage, Completion
from app.providers.openai import OpenAIProvider
from tests.support.openai_calls import BUSY_MACHINE_SLACK_S, MESSAGES, complete, make_provider
from tests.support.openai_stub import OpenAIStub

# --- answers ----------------------------------------------------------------------------------


def test_success_returns_text_usage_and_sends_the_request(stub: OpenAIStub, provider: OpenAIProvider) -> None:
    stub.reply_with("hello there", prompt_tokens=21, completion_tokens=3)

    result = complete(provider, model="gpt-test")

    assert result == Completion(text="hello there", prompt_tokens=21, completion_tokens=3, model="gpt-test")
    assert stub.requests == [
        {
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello to the tests"},
            ],
            "max_tokens": 64,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ]
    assert stub.request_headers[0]["content-type"] == "application/json"


def test_default_model_is_used_when_model_is_none(stub: OpenAIStub, provider: OpenAIProvider) -> None:
    result = complete(provider, model=None)

    assert stub.requests[0]["model"] == "default-model"
    assert result.model == "default-model"
    assert result.text == "stub answer: Say hello to the tests"


def test_stub_answers_a_plan_request_with_a_json_array(stub: OpenAIStub, provider: OpenAIProvider) -> None:
    messages = [ChatMessage("user", "Plan it. Respond with a JSON array of steps, nothing else.")]

    result = provider.complete(messages, model=None, max_tokens=64, timeout_s=5)

    assert result.text == '["step one", "step two"]'


def test_authorization_header_sent_only_when_a_key_is_set(stub: OpenAIStub) -> None:
    with make_provider(stub.base_url, api_key="sk-test-123") as keyed:
        complete(keyed)
    with make_provider(stub.base_url, api_key=None) as anonymous:
        complete(anonymous)

    assert stub.request_headers[0]["authorization"] == "Bearer sk-test-123"
    assert "authorization" not in stub.request_headers[1]


def test_missing_usage_is_estimated_from_text_length(stub: OpenAIStub, provider: OpenAIProvider) -> None:
    stub.reply_raw('{"choices": [{"message": {"role": "assistant", "content": "abcdefghij"}}]}')

    result = complete(provider)

    prompt_chars = sum(len(m.content) for m in MESSAGES)
    assert (result.prompt_tokens, result.completion_tokens) == (-(-prompt_chars // 4), 3)  # rounded up
    assert result.usage_estimated
    assert result.model == "m"


def test_null_content_is_an_empty_answer(stub: OpenAIStub, provider: OpenAIProvider) -> None:
    stub.reply_raw(
        '{"choices": [{"message": {"role": "assistant", "content": null}}],'
        ' "usage": {"prompt_tokens": 4, "completion_tokens": 0}}'
    )

    assert complete(provider).text == ""


def test_connections_are_kept_alive_between_calls(stub: OpenAIStub, provider: OpenAIProvider) -> None:
    for _ in range(3):
        complete(provider)

    assert len(stub.requests) == 3
    assert stub.connections_accepted == 1


def test_concurrent_calls_share_one_client(stub: OpenAIStub, provider: OpenAIProvider) -> None:
    """Hundreds of calls in flight at once, on one provider: none waits for another.

    More than httpx's default pool (100) allows. The stub answers only once every call of the
    burst is in flight together, so this holds however busy the machine is, with no clock: a
    client that queued calls behind others would get 504s (after a minute) instead.
    """
    calls = 300
    with ThreadPoolExecutor(max_workers=calls) as pool:
        for _ in range(2):  # the second round reuses the kept-alive connections
            stub.answer_together(calls, timeout_s=60)
            results = list(pool.map(lambda _: complete(provider, timeout_s=90), range(calls)))

            assert len(results) == calls

    assert len(stub.requests) == 2 * calls
    assert stub.connections_accepted <= calls


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_server_errors_are_retryable_and_not_retried_by_the_client(
    stub: OpenAIStub, provider: OpenAIProvider, status: int
) -> None:
    stub.always_fail(status)

    with pytest.raises(ProviderError) as raised:
        complete(provider)

    assert raised.value.retryable is True
    assert str(status) in raised.value.message
    assert "stub failure" in raised.value.message  # an excerpt of the error body
    assert len(stub.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_request_errors_are_not_retryable(stub: OpenAIStub, provider: OpenAIProvider, status: int) -> None:
    stub.always_fail(status)

    with pytest.raises(ProviderError) as raised:
        complete(provider)

    assert raised.value.retryable is False
    assert str(status) in raised.value.message
    assert len(stub.requests) == 1


def test_a_failure_does_not_spoil_the_next_call(stub: OpenAIStub, provider: OpenAIProvider) -> None:
    stub.fail_times(1, status=503)

    with pytest.raises(ProviderError):
        complete(provider)
    assert complete(provider).text.startswith("stub answer:")
    assert len(stub.requests) == 2


@pytest.mark.parametrize(
    "body",
    [
        "this is not json",
        '{"choices": [{"message": {"role": "assistant", "content": "cut off',
        '{"choices": []}',
        '{"id": "x"}',
        '{"choices": [{"message": {"role": "assistant", "content": 42}}]}',
        "[1, 2, 3]",
    ],
)
def test_malformed_answers_are_retryable_provider_errors(
    stub: OpenAIStub, provider: OpenAIProvider, body: str
) -> None:
    stub.reply_raw(body)

    with pytest.raises(ProviderError) as raised:
        complete(provider)

    assert raised.value.retryable is True
    assert "HTTP 200" in raised.value.message


def test_connection_refused_is_a_retryable_provider_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # nothing listens on `port` any more

    with (
        make_provider(f"http://127.0.0.1:{port}/v1") as provider,
        pytest.raises(ProviderError) as raised,
    ):
        complete(provider)

    assert raised.value.retryable is True
    assert "could not reach" in raised.value.message


def test_a_streamed_answer_arrives_piece_by_piece_with_its_usage_and_cached_tokens(
    stub: OpenAIStub, provider: OpenAIProvider
) -> None:
    stub.reply_with("one two three four", prompt_tokens=40, completion_tokens=4, cached_tokens=32)
    pieces: list[str] = []
    result = provider.complete(MESSAGES, model="m", max_tokens=64, timeout_s=5, on_delta=pieces.append)
    assert pieces == ["one ", "two ", "three ", "four"]
    assert result == Completion(
        text="one two three four", prompt_tokens=40, completion_tokens=4, model="m", cached_tokens=32
    )
    assert result.total_tokens == 44  # cached tokens are part of the prompt tokens, not extra


def test_a_stream_without_a_usage_chunk_is_estimated_and_says_so(
    stub: OpenAIStub, provider: OpenAIProvider
) -> None:
    stub.reply_with("abcdefghij klm")
    stub.streaming.usage = False  # older vLLM, Ollama, llama.cpp
    result = complete(provider)
    assert result.text == "abcdefghij klm"
    assert result.usage_estimated
    assert result.completion_tokens == 4  # 14 characters, 4 a token, rounded up
    assert result.prompt_tokens == -(-sum(len(m.content) for m in MESSAGES) // 4)
    assert result.cached_tokens == 0


def test_a_stream_cut_mid_answer_fails_retryably(stub: OpenAIStub, provider: OpenAIProvider) -> None:
    stub.reply_with("one two three four five")
    stub.streaming.cut_after, stub.streaming.cuts = 2, 1
    pieces: list[str] = []
    with pytest.raises(ProviderError) as raised:
        provider.complete(MESSAGES, model="m", max_tokens=64, timeout_s=5, on_delta=pieces.append)
    assert raised.value.retryable
    assert pieces == ["one ", "two "]
    assert complete(provider).text == "one two three four five"  # the next call is whole


def test_a_slow_stream_is_still_cut_at_the_deadline(stub: OpenAIStub, provider: OpenAIProvider) -> None:
    stub.reply_with("a b c d e f g h i j")
    stub.streaming.piece_delay_s = 0.3  # every piece arrives in time; the whole answer does not
    started = time.monotonic()
    with pytest.raises(RunTimeout):
        complete(provider, timeout_s=1.0)
    assert time.monotonic() - started < 1.0 + BUSY_MACHINE_SLACK_S


def test_streaming_can_be_turned_off(stub: OpenAIStub) -> None:
    stub.reply_with("plain", prompt_tokens=5, completion_tokens=1, cached_tokens=2)
    with OpenAIProvider(base_url=stub.base_url, api_key=None, default_model="m", stream=False) as plain:
        pieces: list[str] = []
        result = plain.complete(MESSAGES, model=None, max_tokens=8, timeout_s=5, on_delta=pieces.append)
    assert "stream" not in stub.requests[0]
    assert pieces == []
    assert (result.text, result.prompt_tokens, result.cached_tokens) == ("plain", 5, 2)
