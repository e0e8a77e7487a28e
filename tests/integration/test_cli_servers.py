"""The CLI beside a running `agentsched dev`: it uses the dev's servers, found in its state file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli.servers import DevState, dev_state_path, remove_dev_state, write_dev_state
from app.settings import Settings

# Nothing listens on port 1 or 2: a command that used these would fail.
UNREACHABLE_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:1/agentsched"
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:2/0"

pytestmark = pytest.mark.timeout(120)


def agentsched(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "DATABASE_URL": UNREACHABLE_DATABASE_URL,
        "REDIS_URL": UNREACHABLE_REDIS_URL,
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A directory standing for a checkout in which `agentsched dev` runs."""
    return tmp_path / "checkout"


@pytest.fixture
def live_dev(checkout: Path, settings: Settings) -> DevState:
    """The state file a running dev writes: this test process stands for the dev process."""
    state = DevState(os.getpid(), settings.database_url, settings.broker_url, "http://127.0.0.1:8000")
    write_dev_state(dev_state_path(checkout), state)
    return state


def test_commands_use_the_servers_of_a_running_dev_and_say_so(checkout: Path, live_dev: DevState) -> None:
    # DATABASE_URL and REDIS_URL point nowhere: only the state file can lead to the servers.
    created = agentsched("users", "create", "--email", "cli@example.com", "--plan", "pro", cwd=checkout)
    assert created.returncode == 0, created.stderr
    assert "created user cli@example.com (pro" in created.stdout
    using = created.stderr.strip().splitlines()
    assert len(using) == 1, created.stderr
    assert f"running `agentsched dev` (pid {live_dev.pid}" in using[0]
    assert "127.0.0.1:1/" not in using[0]

    status = agentsched("status", cwd=checkout)
    assert status.returncode == 0, status.stderr
    assert "queued" in status.stdout.lower()

    # From a subdirectory of the checkout too.
    (checkout / "app").mkdir()
    key = agentsched("keys", "create", "--email", "cli@example.com", "--name", "laptop", cwd=checkout / "app")
    assert key.returncode == 0, key.stderr
    assert key.stdout.strip().splitlines()[-1].startswith("ask_")


def test_a_state_file_whose_dev_is_gone_is_ignored_and_removed(checkout: Path, settings: Settings) -> None:
    path = dev_state_path(checkout)
    write_dev_state(path, DevState(dead_pid(), settings.database_url, settings.broker_url, ""))
    result = agentsched("status", cwd=checkout, env={"AGENTSCHED_DEV_STATE": str(path)})
    assert result.returncode == 2
    assert not path.exists()
    assert "Traceback" not in result.stderr
    # One line saying what it uses, one naming what it tried.
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert "stale (dev pid" in lines[1]
    assert any(
        f"cannot reach {what}" in lines[1]
        for what in (f"Postgres at {UNREACHABLE_DATABASE_URL}", f"Redis at {UNREACHABLE_REDIS_URL}")
    ), lines[1]


def test_a_state_file_whose_servers_are_dead_is_ignored(checkout: Path) -> None:
    path = dev_state_path(checkout)
    write_dev_state(path, DevState(os.getpid(), UNREACHABLE_DATABASE_URL, UNREACHABLE_REDIS_URL, ""))
    result = agentsched(
        "users",
        "create",
        "--email",
        "nobody@example.com",
        cwd=checkout,
        env={
            "AGENTSCHED_DEV_STATE": str(path),
            "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/other",
        },
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "its Postgres (127.0.0.1:1) does not answer" in result.stderr
    assert "cannot reach Postgres at postgresql+psycopg://postgres@127.0.0.1:1/other" in result.stderr


def test_with_nothing_reachable_health_says_why_in_one_line(checkout: Path) -> None:
    checkout.mkdir()
    missing = dev_state_path(checkout)
    result = agentsched("health", "worker", cwd=checkout, env={"AGENTSCHED_DEV_STATE": str(missing)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("unhealthy: Redis at redis://127.0.0.1:2/0")


def test_dev_removes_only_its_own_state_file(checkout: Path, settings: Settings) -> None:
    path = dev_state_path(checkout)
    write_dev_state(path, DevState(os.getpid() + 1, settings.database_url, settings.broker_url, ""))
    remove_dev_state(path)  # another dev's file
    assert path.exists()
    write_dev_state(path, DevState(os.getpid(), settings.database_url, settings.broker_url, ""))
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert path.stat().st_mode & 0o077 == 0  # it may hold a database password
    remove_dev_state(path)
    assert not path.exists()


def test_keys_are_created_listed_and_revoked_from_the_cli(checkout: Path, live_dev: DevState) -> None:
    assert agentsched("users", "create", "--email", "k@example.com", cwd=checkout).returncode == 0
    created = agentsched("keys", "create", "--email", "k@example.com", "--name", "ci", cwd=checkout)
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.split(", id ")[1].split()[0]
    secret = created.stdout.strip().splitlines()[-1]

    listed = agentsched("keys", "list", "--email", "k@example.com", cwd=checkout)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(key_id))
    assert secret[:10] in row
    assert row.endswith("ci")
    assert secret not in listed.stdout

    revoked = agentsched("keys", "revoke", "--id", key_id, cwd=checkout)
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked key {key_id}" in revoked.stdout
    listed = agentsched("keys", "list", "--email", "k@example.com", cwd=checkout)
    row = next(line for line in listed.stdout.splitlines() if line.startswith(key_id))
    assert row.split()[-2] != "-"  # the revoked column holds a time

    unknown = agentsched("keys", "revoke", "--id", "not-a-uuid", cwd=checkout)
    assert unknown.returncode == 2
    assert "Traceback" not in unknown.stderr
