"""A provider for any OpenAI-compatible Chat Completions endpoint (OpenAI, Ollama, vLLM, llama.cpp).

Two things matter more here than in a typical HTTP client:

* **No retries below us.** A failed call raises at once; the run-level retry logic decides.
* **`timeout_s` is a hard deadline for the whole call**, not per socket operation: aiohttp's
  and httpx's read timeouts restart on every read, so a server that trickles bytes (even in
  its headers) could hold a call open forever. The call runs under `call_deadline.cut_at`.

The HTTP exchange runs on the process's I/O loop (`app.io_loop`) with aiohttp (its C parser),
while the calling thread sleeps until the answer: a streamed answer's chunks are read and its
pieces handed to `on_delta` on the loop, so 256 threads of a worker no longer wake up for each
chunk. Measured from one process, 256 streamed calls in flight against a 1 s server: the
threaded httpx-style client 1.10 ms of CPU a call at 97% of ideal, aiohttp 0.59-0.69 ms at 100%
(`httpx.AsyncClient` 18.9 ms at 11%: its pool's cost grows with its connections,
encode/httpcore#1035).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from types import TracebackType

import aiohttp

from app import io_loop
from app.errors import ProviderError, ProviderRateLimited, RunTimeout
from app.providers.base import (
    CHARS_PER_ESTIMATED_TOKEN,
    ChatMessage,
    Completion,
    DeltaCallback,
    estimate_tokens,
)
from app.providers.call_deadline import cut_at
from app.providers.chat_stream import read_chat_stream
from app.providers.rate_headers import provider_error_code, rate_limit_wait_s

logger = logging.getLogger(__name__)

#: Statuses worth another attempt; any other non-2xx means the request itself is wrong.
RETRYABLE_STATUSES = frozenset({408, 429})
#: A bigger answer than this is not a chat completion; refuse it rather than buffer it.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
EXCERPT_CHARS = 300
DEADLINE_MESSAGE = "model call exceeded the run's deadline"
#: Below the 5 s idle timeout of uvicorn-based servers (vLLM), so we do not reuse a connection
#: the server is closing at that very moment.
KEEPALIVE_S = 4.0
#: Connections open at once, sized so that they never throttle a worker's calls.
MAX_CONNECTIONS = 1000


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


def environment_proxy(url: str) -> str | None:
    """The HTTP(S) proxy the environment (HTTPS_PROXY, NO_PROXY, ...) names for `url`, if any."""
    proxies = urllib.request.getproxies_environment()
    parts = urllib.parse.urlsplit(url)
    if not proxies or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and urllib.parse.urlsplit(proxy).scheme not in ("http", "https"):
        logger.warning(
            "ignoring the %s proxy from the environment: only http(s) proxies are supported", proxy
        )
        return None
    return proxy or None


def _is_event_stream(headers: Mapping[str, str]) -> bool:
    content_type = str(headers.get("content-type", ""))
    return content_type.split(";")[0].strip().lower() == "text/event-stream"


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():  # each read ends by the call's deadline
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise ProviderError(
                f"model provider answered HTTP {response.status} with a body over {MAX_RESPONSE_BYTES} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


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
        self._url = f"{self.base_url}/chat/completions"
        self._headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"agentsched aiohttp/{aiohttp.__version__}",
        }
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        #: The proxy the environment names for the endpoint, read once (aiohttp's `trust_env`
        #: reads the environment and parses ~/.netrc in a thread for every request: 12% of a
        #: streaming worker's GIL time).
        self._proxy = environment_proxy(self._url)
        #: Created on the I/O loop at the first call (a session belongs to its loop).
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

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
        payload: dict[str, object] = {
            "model": chosen,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
        }
        if self.stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        body = json.dumps(payload, ensure_ascii=False).encode()
        return io_loop.run(self._call(body, deadline, on_delta, chosen, messages))

    async def _call(
        self,
        body: bytes,
        deadline: float,
        on_delta: DeltaCallback | None,
        chosen: str,
        messages: Sequence[ChatMessage],
    ) -> Completion:
        try:
            async with (
                cut_at(deadline),
                self._client().post(
                    self._url, data=body, headers=self._headers, proxy=self._proxy
                ) as response,
            ):
                if 200 <= response.status < 300 and _is_event_stream(response.headers):
                    return await self._streamed(response, on_delta, chosen, messages)
                answer = await _read_body(response)
                status, reason, headers = response.status, response.reason, response.headers
        except TimeoutError as exc:
            raise RunTimeout(DEADLINE_MESSAGE) from exc
        except aiohttp.ClientError as exc:  # connection, protocol or content-decoding errors
            if time.monotonic() >= deadline:
                raise RunTimeout(DEADLINE_MESSAGE) from exc
            error = ProviderError(
                f"could not reach the model provider at {self.base_url}: {type(exc).__name__}: {exc}"
            )
            if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
                error.retryable = False  # a wrong base URL does not get better with time
            raise error from exc
        if not 200 <= status < 300:
            raise self._status_error(status, reason, headers, answer)
        return self._parse(answer, chosen, messages)

    def _client(self) -> aiohttp.ClientSession:
        """The pooled session (on the I/O loop); again after a fork, whose loop is a new one."""
        session = self._session
        loop = asyncio.get_running_loop()
        if session is None or session.closed or self._session_loop is not loop:
            self._session_loop = loop
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S),
                # our own deadline bounds the call (`cut_at`); no timeout of aiohttp's restarts it
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=True,
            )
        return session

    async def _streamed(
        self,
        response: aiohttp.ClientResponse,
        on_delta: DeltaCallback | None,
        chosen: str,
        messages: Sequence[ChatMessage],
    ) -> Completion:
        streamed = await read_chat_stream(response.content.iter_any(), on_delta, MAX_RESPONSE_BYTES)
        return self._completion(streamed.text, streamed.usage, streamed.model, chosen, messages)

    def _status_error(
        self, status: int, reason: str | None, headers: Mapping[str, str], body: bytes
    ) -> ProviderError:
        message = f"model provider answered HTTP {status}"
        if reason:
            message += f" {reason}"
        message += f": {_excerpt(body)}"
        retry_after = headers.get("retry-after")
        if retry_after:
            message += f" (retry-after: {retry_after[:40]})"
        if status == 429:  # waited out by app.providers.ratelimit, never a run retry
            return ProviderRateLimited(
                message,
                retry_after_s=rate_limit_wait_s(headers),
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
        session, self._session = self._session, None
        loop = self._session_loop
        if session is not None and not session.closed and loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout=5)

    def __enter__(self) -> OpenAIProvider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
