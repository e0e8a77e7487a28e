"""The Redis client that many worker threads share.

redis-py 8 caps a default pool at 100 connections and raises `MaxConnectionsError` past that, so a
worker with 128 or 256 threads writing stream deltas or asking the provider budget lost pieces and
calls. A blocking pool makes a thread wait (briefly: every command here is short) for a free
connection instead, and bounds what one process holds open.
"""

from __future__ import annotations

from redis import BlockingConnectionPool, Redis

#: Connections one process may hold open to Redis through a shared client.
POOL_CONNECTIONS = 64
#: How long a thread waits for a free connection before the command fails (seconds).
POOL_WAIT_S = 5.0


def shared_client(redis_url: str, **options: float) -> Redis:
    """A client over a blocking pool, for use by every thread of a process."""
    pool = BlockingConnectionPool.from_url(
        redis_url, max_connections=POOL_CONNECTIONS, timeout=POOL_WAIT_S, **options
    )
    return Redis(connection_pool=pool)
