"""Worker benchmarks' start-up: the model server (benchmarks.model_server) as a child process,
the workers' environment that points their provider at it, and what it saw."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

from benchmarks.common import Child, bench_environment, wait_for_port


def start_model_server(started: list[Child], port: int, delay_s: float, logs: Path) -> Child:
    """The model server on `port`, answering each call after `delay_s`; returns once it listens.
    It is appended to `started` (a `children()` list), so it stops with the benchmark."""
    argv = [sys.executable, "-m", "benchmarks.model_server", "--port", str(port), "--delay", str(delay_s)]
    server = Child("model server", argv, bench_environment(), logs / "model-server.log")
    started.append(server.start())
    wait_for_port(port, child=server)
    return server


def worker_environment(port: int, **overrides: str) -> dict[str, str]:
    """The benchmark environment with the model server on `port` as the OpenAI-compatible provider."""
    return bench_environment(
        LLM_PROVIDER="openai", LLM_BASE_URL=f"http://127.0.0.1:{port}/v1", LLM_API_KEY="x", **overrides
    )


def model_arrivals(port: int) -> list[float]:
    """When each completion request reached the model server (seconds since it started); a call
    cut short by a killed worker counts: it was paid for."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/arrivals", timeout=10) as answer:
        arrivals: list[float] = json.loads(answer.read())
    return arrivals
