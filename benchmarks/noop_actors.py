"""The baseline worker: a bare Dramatiq no-op actor on the benchmark Redis db (default middleware).

`dramatiq benchmarks.noop_actors --processes 2 --threads 8`; messages go to the `noop` queue.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

NOOP_QUEUE = "noop"
NOOP_ACTOR = "noop"

broker = RedisBroker(url=os.environ["REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name=NOOP_ACTOR, queue_name=NOOP_QUEUE)
def noop(run_id: str) -> None:
    """Does nothing: what is left is Dramatiq's own fetch, decode, middleware and ack."""
