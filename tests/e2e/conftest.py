"""End-to-end fixtures: the real processes (API, worker, scheduler) as subprocesses.

Subprocesses inherit os.environ, which tests/conftest.py pointed at the test database and the
test Redis database at import; the `migrated_database` fixture builds that database.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
#: How long a process may take to stop after SIGTERM before it is killed (seconds).
STOP_TIMEOUT_S = 20


@pytest.fixture(autouse=True)
def _isolated(clean_state: None) -> None:
    """Every end-to-end test starts from empty tables and an empty Redis database."""


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then wait; the exit code (killed: negative)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)  # its own group: started below
                self.popen.wait(timeout=STOP_TIMEOUT_S)
        return self.popen.returncode


Spawn = Callable[..., Process]


@pytest.fixture
def spawn(tmp_path: Path, migrated_database: str) -> Iterator[Spawn]:
    """Start a process in its own process group with the test environment (plus `env`)."""
    started: list[Process] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        log_path = tmp_path / f"{name}.log"
        popen = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process = Process(name, popen, log_path)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(check: Callable[[], bool], *, timeout_s: float, what: str, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s} s\n{logs()}")
        time.sleep(0.1)


@pytest.fixture
def api(spawn: Spawn) -> Iterator[httpx.Client]:
    """The API served by uvicorn on a free port, ready (GET /api/health answers 200)."""
    port = free_port()
    process = spawn("api", "-m", "uvicorn", "api.app:app", "--port", str(port), "--log-level", "warning")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

        def healthy() -> bool:
            assert process.popen.poll() is None, process.log()
            try:
                return client.get("/api/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout_s=30, what="API start", logs=process.log)
        yield client
