"""The run actors: one per priority queue, all executing `app.services.execution.execute_run`.

Each message carries the run id only. Actor names are stable (`execute_run_<priority>`) so a
rename here never orphans queued messages.
"""

from __future__ import annotations

import uuid

import dramatiq

from actors.sending import send_dispatches
from actors.worker import run_environment
from app.models.enums import Priority
from app.services.dispatch import ACTOR_PRIORITY, actor_name, queue_name
from app.services.execution import execute_run

#: Backstop only: a run's own deadline (at most 1 h) ends it well before this.
ACTOR_TIME_LIMIT_MS = 3_600_000 + 300_000


def execute(run_id: str) -> None:
    env = run_environment()
    retry = execute_run(env, uuid.UUID(run_id))
    if retry is not None:
        send_dispatches(env.session_factory, [retry], env.clock)


RUN_ACTORS: dict[str, dramatiq.Actor[[str], None]] = {
    priority.value: dramatiq.actor(  # type: ignore[call-overload]
        execute,
        actor_name=actor_name(priority),
        queue_name=queue_name(priority),
        priority=ACTOR_PRIORITY[priority],
        time_limit=ACTOR_TIME_LIMIT_MS,
    )
    for priority in Priority
}
