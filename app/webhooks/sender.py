"""One HTTP POST of a webhook to an address already checked: no redirects, one timeout.

The connection goes to `Target.ip` (the address `addresses.resolve_target` checked), never to
a second lookup of the name; the Host header and, for https, SNI and certificate checks use the
name. Redirects are answers like any other non-2xx (Standard Webhooks: not followed).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from app.webhooks.addresses import Target

#: No answer within this many seconds is a failed attempt (contract: 10 s).
SEND_TIMEOUT_S = 10.0
#: Bytes of an answer's body read (and kept in `lastError` when it is not 2xx).
ANSWER_PREVIEW_BYTES = 512
USER_AGENT = "agentsched-webhooks/1"


@dataclass(frozen=True, slots=True)
class SendResult:
    #: None when no HTTP answer came (timeout, connection refused or reset, TLS error).
    status_code: int | None
    error: str | None
    elapsed_s: float
    #: The answer's `Retry-After`, in seconds, when it gave one (429, 503).
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._ip = target.ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(target.host, target.port, timeout=timeout, context=self._tls)
        self._ip = target.ip

    def connect(self) -> None:
        raw = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def _abort(connection: http.client.HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def post(
    target: Target, body: bytes, headers: dict[str, str], *, timeout_s: float = SEND_TIMEOUT_S
) -> SendResult:
    """POST `body` to the target; a timeout or a broken connection is a result, not an error."""
    started = time.monotonic()
    connection: http.client.HTTPConnection
    if target.scheme == "https":
        connection = _PinnedHTTPSConnection(target, timeout_s)
    else:
        connection = _PinnedHTTPConnection(target, timeout_s)
    # The socket timeout bounds each read; this bounds the whole exchange (a receiver that
    # trickles its answer byte by byte is cut off too).
    watchdog = threading.Timer(timeout_s, _abort, args=(connection,))
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.request(
            "POST",
            target.target,
            body=body,
            headers={
                **headers,
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "Content-Length": str(len(body)),
            },
        )
        answer = connection.getresponse()
        preview = answer.read(ANSWER_PREVIEW_BYTES)
        status = answer.status
        retry_after = _seconds(answer.getheader("Retry-After"))
    except (OSError, http.client.HTTPException) as exc:
        elapsed = time.monotonic() - started
        if isinstance(exc, TimeoutError) or elapsed >= timeout_s:
            return SendResult(None, f"timeout: no answer within {timeout_s:g} s", elapsed)
        return SendResult(None, f"connection error: {type(exc).__name__}: {exc}", elapsed)
    finally:
        watchdog.cancel()
        connection.close()
    elapsed = time.monotonic() - started
    if 200 <= status < 300:
        return SendResult(status, None, elapsed)
    text = preview.decode(errors="replace").strip()
    return SendResult(status, f"HTTP {status}" + (f": {text}" if text else ""), elapsed, retry_after)


def _seconds(value: str | None) -> float | None:
    """A `Retry-After` in seconds (the delay form; an HTTP date is ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
