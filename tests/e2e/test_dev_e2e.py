"""`agentsched dev` for real: another shell's commands find its servers; health follows its processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

UNREACHABLE = {
    "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/agentsched",
    "REDIS_URL": "redis://127.0.0.1:2/0",
}


def command(*args: str, cwd: Path, configured: bool = False) -> subprocess.CompletedProcess[str]:
    """A command typed in another shell of the dev's checkout, where nothing is configured
    (or, `configured`, where DATABASE_URL and REDIS_URL name the servers dev used)."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        # Configured: only this checkout's state file counts (not that of a dev in the repo).
        env={
            **os.environ,
            **(
                {"AGENTSCHED_DEV_STATE": str(cwd / ".agentsched" / "dev.json")} if configured else UNREACHABLE
            ),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_for(condition: object, timeout_s: float, what: str, log: Path) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s}s; dev log:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


def test_commands_beside_a_running_dev_use_its_servers(tmp_path: Path, migrated_database: str) -> None:
    checkout = tmp_path / "checkout"  # the dev's working directory: its .agentsched/ goes here
    checkout.mkdir()
    log = tmp_path / "dev.log"
    dev = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "dev", "--port", str(free_port())],
        cwd=checkout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    state = checkout / ".agentsched" / "dev.json"
    try:
        wait_for(lambda: "export API_KEY=ask_" in log.read_text(), 120, "the banner", log)
        assert state.exists()
        assert "/dashboard" in log.read_text()  # the banner names the dashboard's URL

        status = command("status", cwd=checkout)
        assert status.returncode == 0, status.stderr
        assert f"running `agentsched dev` (pid {dev.pid}" in status.stderr

        # The dev's worker and scheduler beat; health sees them.
        for process in ("worker", "scheduler"):
            wait_for(
                lambda process=process: command("health", process, cwd=checkout).returncode == 0,  # type: ignore[misc]
                60,
                f"a healthy {process}",
                log,
            )
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
    assert dev.returncode == 0, log.read_text()[-3000:]
    assert not state.exists()
    # Gone with it: the state file, and the heartbeats of its worker and scheduler.
    for process in ("worker", "scheduler"):
        after = command("health", process, cwd=checkout, configured=True)
        assert after.returncode == 1, after.stdout
        assert f"unhealthy: no {process} heartbeat" in after.stderr
        assert "no .agentsched/dev.json of a running dev" in after.stderr
