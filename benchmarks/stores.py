"""The benchmark database and Redis db: rebuilt, emptied, inspected (settings, connections,
consumers, messages left)."""

from __future__ import annotations

from typing import Any

from benchmarks.environment import ADMIN_DATABASE_URL, BENCH_DATABASE, DATABASE_URL, REDIS_URL


def recreate_database() -> None:
    """Drop and create `agentsched_bench_runs`, then build it with the migrations."""
    import psycopg

    from app.migrate import upgrade_to_head
    from app.services.run_events import libpq_conninfo

    with psycopg.connect(libpq_conninfo(ADMIN_DATABASE_URL), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    upgrade_to_head(DATABASE_URL)


def drop_database() -> None:
    import psycopg

    from app.services.run_events import libpq_conninfo

    with psycopg.connect(libpq_conninfo(ADMIN_DATABASE_URL), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')


def pg_setting(name: str) -> str:
    import psycopg

    from app.services.run_events import libpq_conninfo

    with psycopg.connect(libpq_conninfo(ADMIN_DATABASE_URL), autocommit=True) as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
    return str(row[0]) if row else "?"


def pg_connections_in_use() -> int:
    """Client connections open on the whole server (other engineers' included)."""
    import psycopg

    from app.services.run_events import libpq_conninfo

    with psycopg.connect(libpq_conninfo(ADMIN_DATABASE_URL), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        ).fetchone()
    return int(row[0]) if row else 0


def bench_connections() -> int:
    """Client connections open on the benchmark database."""
    import psycopg

    from app.services.run_events import libpq_conninfo

    with psycopg.connect(libpq_conninfo(ADMIN_DATABASE_URL), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (BENCH_DATABASE,)
        ).fetchone()
    return int(row[0]) if row else 0


def pg_sessions_opened() -> int:
    """Connections ever opened to the benchmark database (pg_stat_database.sessions, PG 14+)."""
    import psycopg

    from app.services.run_events import libpq_conninfo

    with psycopg.connect(libpq_conninfo(ADMIN_DATABASE_URL), autocommit=True) as conn:
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (BENCH_DATABASE,)
        ).fetchone()
    return int(row[0]) if row else 0


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


def flush_redis() -> None:
    client = redis_client()
    try:
        client.flushdb()
    finally:
        client.close()


def make_bench_engine(pool_size: int = 5) -> Any:
    from sqlalchemy import create_engine

    return create_engine(DATABASE_URL, pool_size=pool_size, max_overflow=pool_size)


def consumers_on_bench_redis() -> int:
    """Dramatiq consumers that sent a heartbeat to Redis db 12 (ours, plus any intruder's).

    Each worker process heartbeats under its own id; more ids than the processes we started means
    another program consumes our queues (a test suite pointed at db 12, say), which silently takes
    messages away and makes the figures meaningless.
    """
    client = redis_client()
    try:
        return int(client.zcard("dramatiq:__heartbeats__"))
    finally:
        client.close()


def lost_messages(statuses: dict[str, int]) -> str:
    """A warning when runs are still queued although Redis db 12 holds no message at all."""
    queued = statuses.get("queued", 0)
    if not queued:
        return ""
    client = redis_client()
    try:
        held = sum(
            int(client.llen(key)) if client.type(key) == b"list" else 0
            for key in client.scan_iter("dramatiq:*")
        ) + sum(int(client.scard(key)) for key in client.scan_iter("dramatiq:__acks__.*"))
    finally:
        client.close()
    if held:
        return ""
    return (
        f"WARNING: {queued} runs are still queued but Redis db 12 holds no message for them: "
        "something else consumed or deleted them (another program on db 12?); figures not valid"
    )
