"""`agentsched test`: pytest against real Postgres and Redis, embedded ones when none answer."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from app.embedded import ensure_services
from app.logging import configure_logging
from app.settings import load_settings

log = logging.getLogger(__name__)

#: Apart from `agentsched dev`'s, so a test run never touches the dev data or its queues.
STATE_DIR = Path(".agentsched") / "test"
PYTEST_NO_TESTS_COLLECTED = 5
INTERRUPT_GRACE_S = 30


def run_tests(pytest_args: list[str]) -> int:
    """Run pytest (default: the whole suite) with DATABASE_URL and REDIS_URL set; its exit code."""
    configure_logging()
    # SIGTERM unwinds like Ctrl-C, so the embedded services are stopped (pytest gets it too).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
    settings = load_settings()
    with ensure_services(Path.cwd() / STATE_DIR, settings.database_url, settings.broker_url) as services:
        os.environ["DATABASE_URL"] = services.database_url
        os.environ["REDIS_URL"] = services.redis_url
        log.info("DATABASE_URL=%s REDIS_URL=%s", services.database_url, services.redis_url)
        code = _run_pytest(pytest_args or ["tests"])
        if code < 0:  # killed by a signal: report it the way a shell does
            code = 128 - code
    if code == PYTEST_NO_TESTS_COLLECTED:
        print("agentsched test: pytest collected no tests; that counts as a failure", file=sys.stderr)
        return 1
    return code


def _run_pytest(args: list[str]) -> int:
    process = subprocess.Popen([sys.executable, "-m", "pytest", *args])

    terminations: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        # The first SIGTERM (a CI timeout) reaches pytest as Ctrl-C, so it still prints which
        # tests failed so far and which one was running; a second one terminates it.
        terminations.append(signum)
        process.send_signal(signal.SIGINT if len(terminations) == 1 else signal.SIGTERM)

    # Ctrl-C reaches pytest directly (same process group).
    previous = signal.signal(signal.SIGTERM, forward)
    try:
        try:
            return process.wait()
        except KeyboardInterrupt:
            try:
                return process.wait(INTERRUPT_GRACE_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                process.kill()
                return process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
