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

import itertools
import json
import logging
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import httpcore
import httpx

from app.errors import ProviderError, RunTimeout
from app.providers.base import ChatMessage, Completion

logger = logging.getLogger(__name__)

#: Connection limits of each of the client's pools, sized so that they never throttle us.
POOL_LIMITS = httpx.Limits(
    max_connections=1000,
    max_keepalive_connections=1000,
    # Below the 5 s idle timeout of uvicorn-based servers (vLLM), so we do not reuse a connection
    # the server is closing at that very moment.
    keepalive_expiry=4.0,
)
#: How many connection pools the client's connections are spread over (see `_DeadlineTransport`);
#: `POOL_LIMITS` applies to each.
POOL_SHARDS = 32
#: A bigger answer than this is not a chat completion; refuse it rather than buffer it.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: Largest slice handed to one socket write, so a slow reader cannot stretch a write past the
#: deadline by many partial sends.
_WRITE_SLICE = 16 * 1024
EXCERPT_CHARS = 300
DEADLINE_MESSAGE = "model call exceeded the run's deadline"

#: Statuses worth another attempt; any other non-2xx means the request itself is wrong.
RETRYABLE_STATUSES = frozenset({408, 429})


# --- the deadline-enforcing transport -------------------------------------------------------


class _ThreadState(threading.local):
    deadline: float | None = None
    shard: int | None = None


_thread = _ThreadState()
_next_shard = itertools.count()


@contextmanager
def _deadline(deadline: float) -> Iterator[None]:
    """Every socket operation of this thread inside the block ends by `deadline` (monotonic)."""
    previous = _thread.deadline
    _thread.deadline = deadline
    try:
        yield
    finally:
        _thread.deadline = previous


def _clamp(timeout: float | None, expired: type[httpcore.TimeoutException]) -> float | None:
    """`timeout` shortened to the time left before this thread's deadline; raises once it passed."""
    deadline = _thread.deadline
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:  # never hand 0 to a socket: that means non-blocking, not "expired"
        raise expired("the call's deadline has passed")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), _WRITE_SLICE):
            chunk = buffer[start : start + _WRITE_SLICE]
            self._inner.write(chunk, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        clamped = _clamp(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, clamped))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        clamped = _clamp(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, clamped, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        clamped = _clamp(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, clamped, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


#: httpcore exceptions as httpx ones, most specific first (what httpx's own transport does).
_EXCEPTION_MAP: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _httpx_exceptions(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core_type, httpx_type in _EXCEPTION_MAP:
            if isinstance(exc, core_type):
                raise httpx_type(str(exc) or type(exc).__name__, request=request) from exc
        raise


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes], request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_exceptions(self._request):
            yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def _environment_proxy(url: httpx.URL) -> httpx.Proxy | None:
    """The HTTP(S) proxy the environment (HTTPS_PROXY, NO_PROXY, ...) names for `url`, if any."""
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass(url.host):
        return None
    proxy_url = proxies.get(url.scheme) or proxies.get("all")
    if not proxy_url:
        return None
    proxy = httpx.Proxy(proxy_url)
    if proxy.url.scheme not in ("http", "https"):
        logger.warning(
            "ignoring %s proxy from the environment: only http(s) proxies are supported",
            proxy.url.scheme,
        )
        return None
    return proxy


def _make_pool(
    ssl_context: ssl.SSLContext, limits: httpx.Limits, proxy: httpx.Proxy | None
) -> httpcore.ConnectionPool:
    if proxy is None:
        return httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=0,
            network_backend=_DeadlineBackend(),
        )
    return httpcore.HTTPProxy(
        proxy_url=httpcore.URL(
            scheme=proxy.url.raw_scheme,
            host=proxy.url.raw_host,
            port=proxy.url.port,
            target=proxy.url.raw_path,
        ),
        proxy_auth=proxy.raw_auth,
        proxy_headers=proxy.headers.raw,
        ssl_context=ssl_context,
        proxy_ssl_context=proxy.ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        retries=0,
        network_backend=_DeadlineBackend(),
    )


class _DeadlineTransport(httpx.BaseTransport):
    """httpx's HTTP transport, on a deadline-enforcing network backend, with no retries.

    Its connections live in `shards` httpcore pools, each thread using one of them. httpcore
    1.0's pool does work quadratic in its connection count on every request and release
    (encode/httpcore#1035): one pool of 400 busy connections adds seconds to every burst of
    400 calls. Small pools keep that cost negligible; a thread keeps its pool, so it keeps
    reusing its own kept-alive connection.
    """

    def __init__(self, target: httpx.URL, limits: httpx.Limits, shards: int = POOL_SHARDS) -> None:
        ssl_context = httpx.create_ssl_context()
        proxy = _environment_proxy(target)
        self._pools = [_make_pool(ssl_context, limits, proxy) for _ in range(shards)]

    def _pool(self) -> httpcore.ConnectionPool:
        """This thread's pool: threads are dealt to pools in turn, and keep theirs."""
        if _thread.shard is None:
            _thread.shard = next(_next_shard)
        return self._pools[_thread.shard % len(self._pools)]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_exceptions(request):
            core_response = self._pool().handle_request(core_request)
        assert isinstance(core_response.stream, Iterable)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream, request),
            extensions=core_response.extensions,
        )

    def close(self) -> None:
        for pool in self._pools:
            pool.close()


# --- the provider ---------------------------------------------------------------------------


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

    def __init__(self, *, base_url: str, api_key: str | None, default_model: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.default_model = default_model
        self._url = httpx.URL(f"{self.base_url}/chat/completions")
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # trust_env=False: with it, httpx would mount its own transports for proxies named in
        # the environment and bypass ours; `_DeadlineTransport` reads those proxies itself.
        self._client = httpx.Client(
            transport=_DeadlineTransport(self._url, POOL_LIMITS),
            headers=headers,
            follow_redirects=False,
            trust_env=False,
        )

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None,
        max_tokens: int,
        timeout_s: float,
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
        request = self._client.build_request(
            "POST", self._url, json=payload, timeout=httpx.Timeout(timeout_s)
        )
        try:
            with _deadline(deadline):
                response = self._client.send(request, stream=True)
                try:
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
        usage = usage if isinstance(usage, dict) else {}
        prompt_tokens = _token_count(usage.get("prompt_tokens"))
        completion_tokens = _token_count(usage.get("completion_tokens"))
        if prompt_tokens is None or completion_tokens is None:
            logger.debug(
                "model provider at %s reported no token usage; estimating 4 characters a token",
                self.base_url,
            )
            if prompt_tokens is None:
                prompt_tokens = sum(len(m.content) for m in messages) // 4
            if completion_tokens is None:
                completion_tokens = len(text) // 4
        answered_by = data.get("model")
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            model=answered_by if isinstance(answered_by, str) and answered_by else chosen,
        )

    def close(self) -> None:
        """Close the pooled connections; the provider must not be used afterwards."""
        self._client.close()

    def __enter__(self) -> OpenAIProvider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
