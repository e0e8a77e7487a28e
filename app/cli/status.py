"""`agentsched status`: the orchestrator status block, read from Postgres and Redis."""

from __future__ import annotations

import redis

from app.clock import SYSTEM_CLOCK
from app.db import make_engine, make_session_factory
from app.services.stats import format_status_block, queue_stats
from app.settings import Settings


def print_status(settings: Settings) -> int:
    engine = make_engine(settings, pool_size=1)
    client = redis.Redis.from_url(settings.broker_url)
    try:
        with make_session_factory(engine)() as session:
            print(format_status_block(queue_stats(client, session, SYSTEM_CLOCK.now())))
    finally:
        client.close()
        engine.dispose()
    return 0
