"""A provider for any OpenAI-compatible Chat Completions endpoint (OpenAI, Ollama, vLLM, llama.cpp).

Two things matter more here than in a typical HTTP client:

* **No retries below us.** A failed call raises at once; the run-level retry logic decides.
* **`timeout_s` is a hard deadline for the whole call**, not per socket operation. httpx's
  timeouts restart on every read, so a server that trickles bytes (even in its headers) could
  hold a call open forever. We therefore plug a network backend into httpcore that clamps every
  connect, read, write and TLS handshake to the time left before the calling thread's deadline,
  and fails the operation once the deadline has passed. Sync httpx does its I/O in the calling
  thread, so a thread-local deadline follows the call exactly, whichever pooled connection it uses.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType

import httpx

from app.errors import ProviderError, ProviderRateLimited, RunTimeout
from app.providers.base import (
    CHARS_PER_ESTIMATED_TOKEN,
    ChatMessage,
    Completion,
    DeltaCallback,
    estimate_tokens,
)
from app.providers.chat_stream import read_chat_stream
from app.providers.deadline_http import (
    DEADLINE_MESSAGE,
    EXCERPT_CHARS,
    MAX_RESPONSE_BYTES,
    POOL_LIMITS,
    DeadlineTransport,
    call_deadline,
)
from app.providers.rate_headers import provider_error_code, rate_limit_wait_s

logger = logging.getLogger(__name__)

#: Statuses worth another attempt; any other non-2xx means the request itself is wrong.
RETRYABLE_STATUSES = frozenset({408, 429})


def _excerpt(body: bytes) -> str:
    """A short, one-line excerpt of a response body; the `error.message` of an OpenAI error."""
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        message = data["error"].get("message")
        if isinstance(message, str) and message.strip():
            text = message
    text = " ".join(text.split()) or "(empty body)"
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _token_count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _is_event_stream(response: httpx.Response) -> bool:
    content_type = str(response.headers.get("content-type", ""))
    return content_type.split(";")[0].strip().lower() == "text/event-stream"


def _data_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The `data:` lines of an event stream, split from its bytes.

    httpx's `iter_lines` decodes every chunk to text and splits it in Python, line by line; an
    answer's stream is mostly `data: {...}` lines, so we split bytes and decode only those. CR LF
    and a lone CR end a line too (the SSE grammar); other lines (comments, `event:`, `id:`, the
    blank ones between events) mean nothing to a chat completion and are skipped.
    """
    pending = b""
    for chunk in chunks:
        if pending:
            chunk = pending + chunk
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        pending = lines.pop()
        if len(pending) > MAX_RESPONSE_BYTES:
            raise ProviderError(f"model provider streamed a line over {MAX_RESPONSE_BYTES} bytes")
        for line in lines:
            if line.startswith(b"data:"):
                yield line.decode("utf-8", errors="replace")
    if pending.startswith(b"data:"):
        yield pending.decode("utf-8", errors="replace")


def _content_text(content: object) -> str | None:
    """`message.content` as text: a string, null, or (some servers) a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, dict)]
        if all(isinstance(part, str) for part in parts):
            return "".join(part for part in parts if isinstance(part, str))
    return None


class OpenAIProvider:
    """Chat completions from `{base_url}/chat/completions`; one pooled client, shared by threads."""

    name = "openai"

    def __init__(
        self, *, base_url: str, api_key: str | None, default_model: str, stream: bool = True
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.default_model = default_model
        #: Ask for `stream: true` answers (LLM_STREAM); a server may still answer plain JSON.
        self.stream = stream
        self._url = httpx.URL(f"{self.base_url}/chat/completions")
        self._headers = {
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": f"python-httpx/{httpx.__version__}",
        }
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # Requests go straight to the transport, not through an `httpx.Client`: we use none of
        # what the client adds (no redirects followed, no auth flow, no cookies, no hooks), and
        # its cookie jar and per-request log line cost ~0.2 ms of CPU a call. `DeadlineTransport`
        # reads the environment's proxies itself.
        self._transport = DeadlineTransport(self._url, POOL_LIMITS)

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None,
        max_tokens: int,
        timeout_s: float,
        on_delta: DeltaCallback | None = None,
    ) -> Completion:
        if timeout_s <= 0:
            raise RunTimeout(DEADLINE_MESSAGE)
        deadline = time.monotonic() + timeout_s
        chosen = model or self.default_model
        payload = {
            "model": chosen,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
        }
        if self.stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        request = httpx.Request(
            "POST",
            self._url,
            json=payload,
            headers=self._headers,
            extensions={"timeout": httpx.Timeout(timeout_s).as_dict()},
        )
        try:
            with call_deadline(deadline):
                response = self._transport.handle_request(request)
                response.request = request
                try:
                    if response.is_success and _is_event_stream(response):
                        streamed = read_chat_stream(
                            _data_lines(response.iter_bytes()), on_delta, MAX_RESPONSE_BYTES
                        )
                        return self._completion(
                            streamed.text, streamed.usage, streamed.model, chosen, messages
                        )
                    body = self._read_body(response)
                finally:
                    response.close()
        except httpx.TimeoutException as exc:
            raise RunTimeout(DEADLINE_MESSAGE) from exc
        except httpx.RequestError as exc:  # connection, protocol or content-decoding errors
            if time.monotonic() >= deadline:
                raise RunTimeout(DEADLINE_MESSAGE) from exc
            error = ProviderError(
                f"could not reach the model provider at {self.base_url}: {type(exc).__name__}: {exc}"
            )
            if isinstance(exc, httpx.UnsupportedProtocol):
                error.retryable = False  # a wrong base URL does not get better with time
            raise error from exc
        if not response.is_success:
            raise self._status_error(response, body)
        return self._parse(body, chosen, messages)

    def _read_body(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():  # a read past the deadline raises ReadTimeout
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise ProviderError(
                    f"model provider answered HTTP {response.status_code} with a body over "
                    f"{MAX_RESPONSE_BYTES} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _status_error(self, response: httpx.Response, body: bytes) -> ProviderError:
        status = response.status_code
        message = f"model provider answered HTTP {status}"
        if response.reason_phrase:
            message += f" {response.reason_phrase}"
        message += f": {_excerpt(body)}"
        retry_after = response.headers.get("retry-after")
        if retry_after:
            message += f" (retry-after: {retry_after[:40]})"
        if status == 429:  # waited out by app.providers.ratelimit, never a run retry
            return ProviderRateLimited(
                message,
                retry_after_s=rate_limit_wait_s(response.headers),
                error_code=provider_error_code(body),
            )
        error = ProviderError(message)
        if status not in RETRYABLE_STATUSES and status < 500:
            error.retryable = False
        return error

    def _parse(self, body: bytes, chosen: str, messages: Sequence[ChatMessage]) -> Completion:
        try:
            data = json.loads(body)
        except ValueError:
            raise ProviderError(
                f"model provider answered HTTP 200 with a body that is not JSON: {_excerpt(body)}"
            ) from None
        choices = data.get("choices") if isinstance(data, dict) else None
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, dict) else None
        text = _content_text(message.get("content")) if isinstance(message, dict) else None
        if text is None:
            raise ProviderError(
                f"model provider answered HTTP 200 without choices[0].message.content: {_excerpt(body)}"
            )
        usage = data.get("usage")
        answered_by = data.get("model")
        return self._completion(
            text,
            usage if isinstance(usage, dict) else None,
            answered_by if isinstance(answered_by, str) else None,
            chosen,
            messages,
        )

    def _completion(
        self,
        text: str,
        usage: dict[str, object] | None,
        answered_by: str | None,
        chosen: str,
        messages: Sequence[ChatMessage],
    ) -> Completion:
        """The answer with its tokens as reported; estimated (and said so) when not reported."""
        usage = usage or {}
        prompt_tokens = _token_count(usage.get("prompt_tokens"))
        completion_tokens = _token_count(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        cached = _token_count(details.get("cached_tokens")) if isinstance(details, dict) else None
        estimated = prompt_tokens is None or completion_tokens is None
        if estimated:
            logger.debug(
                "model provider at %s reported no token usage; estimating %d characters a token",
                self.base_url,
                CHARS_PER_ESTIMATED_TOKEN,
            )
        prompt = (
            estimate_tokens("".join(m.content for m in messages)) if prompt_tokens is None else prompt_tokens
        )
        completion = estimate_tokens(text) if completion_tokens is None else completion_tokens
        return Completion(
            text=text,
            prompt_tokens=prompt,
            completion_tokens=completion,
            model=answered_by or chosen,
            cached_tokens=min(cached or 0, prompt),
            usage_estimated=estimated,
        )

    def close(self) -> None:
        """Close the pooled connections; the provider must not be used afterwards."""
        self._transport.close()

    def __enter__(self) -> OpenAIProvider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
