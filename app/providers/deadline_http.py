"""An httpx transport whose every socket operation ends by the calling thread's deadline.

httpx's timeouts restart on every read, so a server that trickles bytes (even in its headers)
could hold a call open forever. The network backend here clamps every connect, read, write and
TLS handshake to the time left before the deadline set with `call_deadline(...)`, and fails the
operation once it has passed. Sync httpx does its I/O in the calling thread, so a thread-local
deadline follows the call exactly, whichever pooled connection it uses.
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpcore._backends.sync as httpcore_sync
import httpx

logger = logging.getLogger(__name__)

#: Connection limits of each of the client's pools, sized so that they never throttle us.
POOL_LIMITS = httpx.Limits(
    max_connections=1000,
    max_keepalive_connections=1000,
    # Below the 5 s idle timeout of uvicorn-based servers (vLLM), so we do not reuse a connection
    # the server is closing at that very moment.
    keepalive_expiry=4.0,
)
#: How many connection pools the client's connections are spread over (see `DeadlineTransport`);
#: `POOL_LIMITS` applies to each.
POOL_SHARDS = 32
#: A bigger answer than this is not a chat completion; refuse it rather than buffer it.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: Largest slice handed to one socket write, so a slow reader cannot stretch a write past the
#: deadline by many partial sends.
_WRITE_SLICE = 16 * 1024
EXCERPT_CHARS = 300
#: A socket read waits at most this long before looking at the deadlines again (seconds).
STOP_POLL_S = 1.0
DEADLINE_MESSAGE = "model call exceeded the run's deadline"

#: Statuses worth another attempt; any other non-2xx means the request itself is wrong.


class _ThreadState(threading.local):
    deadline: float | None = None
    shard: int | None = None


_thread = _ThreadState()
_next_shard = itertools.count()
#: When the worker is stopping: every call of the process ends by then (monotonic), whatever
#: its own deadline (app.services.leases.LeaseKeeper.begin_stop).
_stop_deadline: float | None = None


def set_stop_deadline(deadline: float | None) -> None:
    """Cut every call of this process at `deadline` (monotonic); None lifts the cut."""
    global _stop_deadline
    _stop_deadline = deadline


@contextmanager
def call_deadline(deadline: float) -> Iterator[None]:
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
    if _stop_deadline is not None and deadline is not None:
        deadline = min(deadline, _stop_deadline)
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:  # never hand 0 to a socket: that means non-blocking, not "expired"
        raise expired("the call's deadline has passed")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        # A plain or TLS socket (not TLS inside a TLS proxy) is read here directly: httpcore's
        # `SyncStream.read` calls `settimeout` before every read, and CPython drops and retakes
        # the GIL around the ioctl that does, so each streamed chunk cost one more GIL handoff
        # (among 256 threads, a wait in line) on top of the poll and the recv.
        self._sock: socket.socket | None = (
            inner.get_extra_info("socket") if type(inner) is httpcore_sync.SyncStream else None
        )

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # A read waits in slices of at most STOP_POLL_S, so a worker that starts stopping while
        # the model is still thinking cuts the call at its grace (`set_stop_deadline`).
        while True:
            clamped = _clamp(timeout, httpcore.ReadTimeout)
            waited = STOP_POLL_S if clamped is None else min(clamped, STOP_POLL_S)
            try:
                return self._read(max_bytes, waited)
            except httpcore.ReadTimeout:
                if clamped is not None and waited >= clamped:
                    raise

    def _read(self, max_bytes: int, timeout: float) -> bytes:
        sock = self._sock
        if sock is None:
            return self._inner.read(max_bytes, timeout)
        try:
            if sock.gettimeout() != timeout:  # far from the deadline it stays STOP_POLL_S
                sock.settimeout(timeout)
            return sock.recv(max_bytes)
        except TimeoutError as exc:  # what httpcore's own read maps these to
            raise httpcore.ReadTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.ReadError(exc) from exc

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


class DeadlineTransport(httpx.BaseTransport):
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
