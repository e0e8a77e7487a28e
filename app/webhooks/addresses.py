"""What a webhook may point at: http(s), at most 2,000 characters, known events, and a host
that resolves to no loopback, private, link-local or cloud-metadata address (unless allowed).

The address rule is checked when the webhook is set and again at every send, after DNS
resolution, and the sender connects to the very address that was checked (see `sender`), so
a name that changes its answer between the check and the connection cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from app.errors import AppError

URL_MAX_CHARS = 2_000
EVENTS = ("run.completed", "run.failed", "run.cancelled", "run.skipped")
DEFAULT_EVENTS = ("run.completed", "run.failed")
WEBHOOK_FIELDS = frozenset({"url", "events"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

#: Addresses no webhook may reach: cloud metadata services, on top of every address that is
#: not globally routable (loopback, private, link-local, CGNAT, reserved, multicast...).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)


class ForbiddenAddress(AppError):
    """The webhook's host is (or resolves to) an address webhooks may not reach."""

    code = "forbidden_address"


class UnresolvableHost(AppError):
    code = "dns_error"


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    events: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect for a URL: the checked IP, the port, and the parts of the request."""

    scheme: str
    host: str
    port: int
    ip: str
    #: Path and query, as sent on the request line.
    target: str


def is_forbidden_ip(address: IPAddress) -> bool:
    """True for loopback, private, link-local, metadata and every other non-global address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address in METADATA_ADDRESSES or not address.is_global or address.is_multicast


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (TCP), in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHost(f"cannot resolve {host!r}: {exc}") from None
    seen: list[str] = []
    for info in infos:
        ip = str(info[4][0])
        if ip not in seen:
            seen.append(ip)
    return seen


def _split(url: str) -> tuple[SplitResult, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts, port


def resolve_target(url: str, *, allow_private: bool, resolver: Resolver = system_resolver) -> Target:
    """The address to connect to for `url`: every address of its host must be allowed.

    Raises `ForbiddenAddress` when one is not (so a name with one public and one private
    answer is refused too), `UnresolvableHost` when the name does not resolve.
    """
    parts, port = _split(url)
    host = parts.hostname or ""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    ips = [host] if literal is not None else list(resolver(host, port))
    if not ips:
        raise UnresolvableHost(f"{host!r} has no address")
    if not allow_private:
        for ip in ips:
            if is_forbidden_ip(ipaddress.ip_address(ip.split("%")[0])):
                raise ForbiddenAddress(
                    f"{host} resolves to {ip}, a loopback, private, link-local or metadata address"
                )
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Target(parts.scheme, host, port, ips[0], target)


def _check_url(url: str) -> str | None:
    """What is wrong with the URL's form, or None."""
    if len(url) > URL_MAX_CHARS:
        return f"must be at most {URL_MAX_CHARS:,} characters (got {len(url):,})"
    try:
        parts, _ = _split(url)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username or parts.password:
        return "must not carry credentials"
    if any(ch.isspace() for ch in url):
        return "must not contain whitespace"
    return None


def _check_events(value: Any) -> tuple[tuple[str, ...], str | None]:
    if value is None:
        return DEFAULT_EVENTS, None
    valid = ", ".join(EVENTS)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return DEFAULT_EVENTS, f"must be a non-empty list of events from {valid}"
    unknown = [v for v in value if v not in EVENTS]
    if unknown:
        return DEFAULT_EVENTS, f"unknown event(s) {', '.join(unknown)}; valid: {valid}"
    return tuple(e for e in EVENTS if e in value), None


def parse_webhook(
    value: Any,
    *,
    allow_private: bool,
    resolver: Resolver = system_resolver,
    field: str = "webhook",
) -> tuple[WebhookConfig | None, dict[str, str]]:
    """Validate a `webhook` object: (the config or None, {field: problem} for every problem)."""
    if value is None:
        return None, {}
    if not isinstance(value, Mapping):
        return None, {field: "must be an object with url and events"}
    problems: dict[str, str] = {}
    for name in value:
        if name not in WEBHOOK_FIELDS:
            problems[f"{field}.{name}"] = "unknown field"
    url = value.get("url")
    if not isinstance(url, str) or not url.strip():
        problems[f"{field}.url"] = "is required: an http:// or https:// URL"
    else:
        url = url.strip()
        problem = _check_url(url)
        if problem is None:
            try:
                resolve_target(url, allow_private=allow_private, resolver=resolver)
            except (ForbiddenAddress, UnresolvableHost) as exc:
                problem = exc.message
        if problem is not None:
            problems[f"{field}.url"] = problem
    events, events_problem = _check_events(value.get("events"))
    if events_problem is not None:
        problems[f"{field}.events"] = events_problem
    if problems:
        return None, problems
    assert isinstance(url, str)
    return WebhookConfig(url=url, events=events), {}
