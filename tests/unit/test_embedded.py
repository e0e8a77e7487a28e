"""Embedded Postgres and Redis: started when the configured ones do not answer, then stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
import redis

from app.embedded import Services, ensure_services
from app.embedded.common import libpq_url, pid_alive

# Nothing listens on ports 1 and 2, so the configured services count as unreachable.
UNREACHABLE_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:1/agentsched"
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:2/3"

pytestmark = pytest.mark.timeout(300)


def server_pids(services: Services) -> list[int]:
    pids = [server.pid for server in services.servers]
    assert None not in pids
    return [pid for pid in pids if pid is not None]


def assert_answers(services: Services) -> None:
    with psycopg.connect(libpq_url(services.database_url)) as conn:
        assert conn.execute("SELECT 1, current_database()").fetchone() == (1, "agentsched")
    client = redis.Redis.from_url(services.redis_url)
    try:
        assert client.ping()
        assert client.connection_pool.connection_kwargs["db"] == 3
    finally:
        client.close()


def test_unreachable_services_are_replaced_by_embedded_ones_that_stop_afterwards(
    tmp_path: Path,
) -> None:
    services = ensure_services(tmp_path, UNREACHABLE_DATABASE_URL, UNREACHABLE_REDIS_URL)
    try:
        assert services.started == ["Postgres", "Redis"]
        assert services.database_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
        assert services.redis_url.startswith("redis://127.0.0.1:")
        pids = server_pids(services)
        assert all(pid_alive(pid) for pid in pids)
        assert_answers(services)
    finally:
        services.stop()
    assert not any(pid_alive(pid) for pid in pids)


def test_servers_left_by_a_crashed_run_are_reused_and_then_stopped(tmp_path: Path) -> None:
    crashed = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert crashed.stdout is not None
        left = json.loads(crashed.stdout.readline())
        crashed.send_signal(signal.SIGKILL)
    finally:
        crashed.kill()
        crashed.wait()
        if crashed.stdout is not None:
            crashed.stdout.close()

    with ensure_services(tmp_path, UNREACHABLE_DATABASE_URL, UNREACHABLE_REDIS_URL) as services:
        assert [services.database_url, services.redis_url] == left["urls"]
        pids = server_pids(services)
        assert pids == left["pids"]
        assert_answers(services)
    assert not any(pid_alive(pid) for pid in pids)


CRASHING_RUN = textwrap.dedent(
    f"""
    import json, sys, time
    from pathlib import Path
    from app.embedded import ensure_services

    services = ensure_services(Path(sys.argv[1]), {UNREACHABLE_DATABASE_URL!r},
                               {UNREACHABLE_REDIS_URL!r})
    pids = [server.pid for server in services.servers]
    print(json.dumps({{"urls": [services.database_url, services.redis_url], "pids": pids}}),
          flush=True)
    time.sleep(600)
    """
)
