"""`agentsched health worker|scheduler`: healthy while the process beats, unhealthy once it is dead."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from app.services.heartbeats import WORKER_KEY_PREFIX, check, record_worker_heartbeat
from app.services.stats import SCHEDULER_KEY_PREFIX
from app.settings import Settings
from scheduler.jobs import HEARTBEAT_TTL_S, SchedulerContext, heartbeat, stop_heartbeat
from tests.integration.conftest import StartWorker

pytestmark = pytest.mark.timeout(120)


def health(process: str, settings: Settings, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.broker_url,
        "AGENTSCHED_DEV_STATE": str(tmp_path / "no-dev.json"),
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "health", process, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def wait_until(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_a_running_worker_is_healthy_and_a_stopped_one_is_not(
    start_worker: StartWorker, redis_client: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    assert health("worker", settings, tmp_path).returncode == 1
    worker = start_worker(threads=1)
    wait_until(lambda: check(redis_client, "worker").healthy)
    answer = health("worker", settings, tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("healthy: worker ")
    assert f"pid {os.getpid()} on {socket.gethostname()}" in answer.stdout

    worker.stop(timeout=10_000)
    answer = health("worker", settings, tmp_path)
    assert answer.returncode == 1
    assert answer.stderr.strip().splitlines()[-1].startswith("unhealthy: no worker heartbeat on host")


def test_a_heartbeat_left_by_a_dead_process_is_not_health(
    redis_client: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    # A worker killed with SIGKILL leaves its key until it expires: its pid tells the truth.
    value = {"startedAt": 0, "beatAt": time.time(), "pid": dead_pid(), "host": socket.gethostname()}
    redis_client.set(WORKER_KEY_PREFIX + "killed", json.dumps(value), ex=30)
    answer = health("worker", settings, tmp_path)
    assert answer.returncode == 1
    assert "is gone" in answer.stderr
    # Elsewhere, a pid means nothing here: only --anywhere counts a heartbeat of another host.
    record_worker_heartbeat(redis_client, "remote", datetime.now(UTC), threads=1, ttl_s=30)
    remote = json.loads(redis_client.get(WORKER_KEY_PREFIX + "remote") or b"{}")
    redis_client.set(WORKER_KEY_PREFIX + "remote", json.dumps({**remote, "host": "elsewhere"}), ex=30)
    assert health("worker", settings, tmp_path).returncode == 1
    assert health("worker", settings, tmp_path, "--anywhere").returncode == 0


def test_a_heartbeat_expires_when_nothing_renews_it(redis_client: redis.Redis) -> None:
    record_worker_heartbeat(redis_client, "hung", datetime.now(UTC), threads=1, ttl_s=1)
    assert check(redis_client, "worker").healthy
    wait_until(lambda: not check(redis_client, "worker").healthy, timeout_s=10)


def test_the_scheduler_is_healthy_while_it_beats(
    session_factory: sessionmaker[Session], redis_client: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    ctx = SchedulerContext(
        settings=settings, session_factory=session_factory, redis_client=redis_client, send=lambda _: []
    )
    assert health("scheduler", settings, tmp_path).returncode == 1
    heartbeat(ctx)
    assert redis_client.pttl(SCHEDULER_KEY_PREFIX + ctx.scheduler_id) <= HEARTBEAT_TTL_S * 1000
    answer = health("scheduler", settings, tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert f"scheduler {ctx.scheduler_id}" in answer.stdout
    stop_heartbeat(ctx)
    assert health("scheduler", settings, tmp_path).returncode == 1
