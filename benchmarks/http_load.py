"""The load generators api_throughput drives: `wrk` when installed, else an httpx client in a process
of its own; each answers requests, seconds, p50/p99 latency and errors as a `Load`."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.measuring import percentile


@dataclass
class Load:
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    error_detail: str = ""
    tool: str = ""


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
local answered = 0
function response(status, headers, body)
  answered = answered + 1
  if answered >= {per_thread} then wrk.thread:stop() end
end
"""

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS_MS[unit]


def run_wrk(
    url: str, key: str, body: dict[str, Any], connections: int, seconds: float, max_requests: int
) -> Load:
    threads = 1 if connections <= 64 else 2
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            _WRK_SCRIPT.format(
                body=json.dumps(json.dumps(body)), key=key, per_thread=max(1, max_requests // threads)
            )
        )
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        script.name,
        url,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False).stdout
    Path(script.name).unlink(missing_ok=True)
    load = Load(tool="wrk")
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not match:
        load.error_detail = f"could not read wrk's output:\n{out}"
        return load
    load.requests = int(match.group(1))
    load.seconds = _ms(match.group(2) + match.group(3)) / 1000
    p50 = re.search(r"50%\s+([\d.]+\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    load.p50_ms = _ms(p50.group(1)) if p50 else float("nan")
    load.p99_ms = _ms(p99.group(1)) if p99 else float("nan")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    load.errors = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(map(int, sockets.groups())) if sockets else 0
    )
    if load.errors:
        load.error_detail = " ".join(x.group(0) for x in (non_2xx, sockets) if x)
    return load


def run_httpx(
    url: str, key: str, body: dict[str, Any], connections: int, seconds: float, max_requests: int
) -> Load:
    """The fallback load generator, in a process of its own (`--loadgen-child`)."""
    argv = [
        sys.executable,
        "-m",
        "benchmarks.api_throughput",
        "--loadgen-child",
        url,
        key,
        json.dumps(body),
        str(connections),
        str(seconds),
        str(max_requests),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    try:
        data = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return Load(tool="httpx", error_detail=f"the httpx load generator failed:\n{out.stderr[-2000:]}")
    return Load(tool="httpx", **data)


async def _httpx_load(
    url: str, key: str, body: str, connections: int, seconds: float, max_requests: int
) -> Load:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:

        async def one_connection() -> None:
            while time.monotonic() < deadline and len(latencies) + sum(errors.values()) < max_requests:
                started = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                if response.is_success:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(one_connection() for _ in range(connections)))
        elapsed = time.monotonic() - started
    return Load(
        requests=len(latencies) + sum(errors.values()),
        seconds=elapsed,
        p50_ms=1000 * percentile(latencies, 50),
        p99_ms=1000 * percentile(latencies, 99),
        errors=sum(errors.values()),
        error_detail=json.dumps(errors) if errors else "",
    )


def loadgen_child(argv: list[str]) -> int:
    """The httpx load generator's process: run it and print its `Load` as JSON."""
    url, key, body, connections, seconds, max_requests = argv
    load = asyncio.run(_httpx_load(url, key, body, int(connections), float(seconds), int(max_requests)))
    print(json.dumps({k: v for k, v in load.__dict__.items() if k != "tool"}))
    return 0
