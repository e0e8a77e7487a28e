"""The run actors: one per priority queue, all executing `app.services.execution.execute_run`.

Each message carries the run id only. Actor names are stable (`execute_run_<priority>`) so a
rename here never orphans queued messages.
"""

from __future__ import annotations

import uuid

import dramatiq

from actors.sending import send_dispatches
from actors.webhooks import install_outbox
from actors.worker import run_environment
from app.logging import run_context
from app.models.enums import Priority
from app.services.concurrency import release_after_delivery
from app.services.dispatch import ACTOR_PRIORITY, actor_name, queue_name
from app.services.execution import execute_run

#: Backstop only: a run's own deadline (at most 1 h) ends it well before this.
ACTOR_TIME_LIMIT_MS = 3_600_000 + 300_000


def execute(run_id: str) -> None:
    with run_context(run_id):  # every log line of the run carries its id (LOG_FORMAT=json)
        _execute(run_id)


def _execute(run_id: str) -> None:
    env = run_environment()
    install_outbox(env.session_factory)  # the run's webhook message goes out after its end commits
    retry = execute_run(env, uuid.UUID(run_id))
    to_send = [retry] if retry is not None else []
    # A run that left `running` frees a slot of its user: its next waiting runs go out now.
    to_send += release_after_delivery(env.session_factory, uuid.UUID(run_id), env.clock.now())
    if to_send:
        send_dispatches(env.session_factory, to_send, env.clock)


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
