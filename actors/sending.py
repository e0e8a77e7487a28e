"""Sending run messages after commit, and recording in Postgres that they were sent."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

import dramatiq
from sqlalchemy.orm import Session, sessionmaker

from app.clock import Clock
from app.services.dispatch import Dispatch, actor_name, mark_sent, queue_name

logger = logging.getLogger(__name__)


def send_dispatches(
    session_factory: sessionmaker[Session], dispatches: Sequence[Dispatch], clock: Clock
) -> list[tuple[uuid.UUID, str]]:
    """Enqueue one message per run (ids only), then record each run's message id.

    A message that fails to reach Redis is left unrecorded; the reconciler sends it later.
    """
    if not dispatches:
        return []
    broker = dramatiq.get_broker()
    sent: list[tuple[uuid.UUID, str]] = []
    for dispatch in dispatches:
        message = dramatiq.Message(
            queue_name=queue_name(dispatch.priority),
            actor_name=actor_name(dispatch.priority),
            args=(str(dispatch.run_id),),
            kwargs={},
            options={},
        )
        try:
            enqueued = broker.enqueue(message, delay=dispatch.delay_ms or None)
        except dramatiq.errors.ConnectionError:
            logger.exception("run %s: could not reach Redis; the reconciler will resend", dispatch.run_id)
            continue
        sent.append((dispatch.run_id, enqueued.message_id))
    with session_factory.begin() as session:
        mark_sent(session, sent, clock.now())
    return sent
