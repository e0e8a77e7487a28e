"""The outbox: a delivery row is written by the very statement that ends a run, and its message
is sent only after that transaction commits.

`insert_deliveries_sql` is the INSERT that the run-ending statements embed as a CTE (the
one-statement finish in `app.services.runs`, the scheduling pass for skipped runs, the cancel of
queued runs): it writes one row per ended run whose task has a live webhook subscribed to the
event, each with the id of the message that will carry it. The statement's caller hands the
returned (delivery id, message id) pairs to `stash`; a session factory prepared with `install`
sends whatever its session stashed once the commit succeeded, and forgets it on rollback. A
process that dies in between leaves a pending row whose message is in no Redis queue: the
reconciler (`app.webhooks.recovery`) sends it again.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

_STASH_KEY = "agentsched_webhook_deliveries"
_senders: weakref.WeakKeyDictionary[sessionmaker[Session], DeliverySender] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """A delivery to send a message for: its id, the message's id, and a delay."""

    delivery_id: uuid.UUID
    message_id: str
    delay_ms: int = 0


DeliverySender = Callable[[Sequence[PendingDelivery]], object]


def insert_deliveries_sql(source: str, event_expr: str) -> str:
    """An INSERT ... RETURNING (id, run_id, message_id) of one delivery per row of `source`
    (a CTE or subquery with `id`, `task_id`, `user_id` of ended runs) whose task's webhook is
    live and subscribed to `event_expr` (an SQL text expression). Uses the `:now` parameter."""
    return f"""
        INSERT INTO webhook_deliveries (run_id, task_id, user_id, event, url, status, attempts,
                                        occurred_at, next_attempt_at, message_id, created_at)
        SELECT s.id, s.task_id, s.user_id, {event_expr}, wt.webhook_url, 'pending', 0,
               :now, :now, CAST(gen_random_uuid() AS text), :now
          FROM {source} AS s
          JOIN tasks AS wt ON wt.id = s.task_id
         WHERE wt.webhook_url IS NOT NULL AND wt.webhook_disabled_at IS NULL
           AND {event_expr} = ANY (wt.webhook_events)
        ON CONFLICT (run_id, event) DO NOTHING
        RETURNING id, run_id, message_id
    """


_FOR_RUNS = text(
    "WITH ended AS (SELECT id, task_id, user_id FROM task_runs WHERE id = ANY (CAST(:run_ids AS uuid[])))"
    + insert_deliveries_sql("ended", "CAST(:event AS text)")
)


def record_run_events(session: Session, run_ids: Sequence[uuid.UUID], event_name: str, now: datetime) -> int:
    """Write the deliveries of `event_name` for these ended runs (for ends written row by row,
    like a cancel of queued runs); stashed for sending after commit. Returns how many."""
    if not run_ids:
        return 0
    rows = session.execute(_FOR_RUNS, {"run_ids": list(run_ids), "event": event_name, "now": now}).all()
    stash(session, [PendingDelivery(row.id, row.message_id) for row in rows])
    return len(rows)


def stash(session: Session, deliveries: Iterable[PendingDelivery]) -> None:
    """Remember deliveries whose messages go out once this session's transaction commits."""
    items = [d for d in deliveries if d.delivery_id is not None]
    if items:
        session.info.setdefault(_STASH_KEY, []).extend(items)


def stash_row(session: Session, delivery_id: Any, message_id: Any) -> None:
    """`stash` for a statement that returned one (possibly NULL) delivery id and message id."""
    if delivery_id is not None and message_id is not None:
        stash(session, [PendingDelivery(uuid.UUID(str(delivery_id)), str(message_id))])


def install(factory: sessionmaker[Session], send: DeliverySender) -> None:
    """Send what sessions of `factory` stash, after each successful commit (once per factory)."""
    if factory in _senders:
        return
    _senders[factory] = send

    def after_commit(session: Session) -> None:
        pending: list[PendingDelivery] = session.info.pop(_STASH_KEY, [])
        if pending:
            _send(send, pending)

    def after_rollback(session: Session) -> None:
        session.info.pop(_STASH_KEY, None)

    event.listen(factory, "after_commit", after_commit)
    event.listen(factory, "after_rollback", after_rollback)


def send_committed(factory: sessionmaker[Session], delivery_id: Any, message_id: Any) -> None:
    """For a statement that committed on its own (`app.db.execute_one`): send the delivery it
    wrote now, as `install`'s sender would after a session's commit (none installed: the
    reconciler sends it)."""
    send = _senders.get(factory)
    if send is not None and delivery_id is not None and message_id is not None:
        _send(send, [PendingDelivery(uuid.UUID(str(delivery_id)), str(message_id))])


def _send(send: DeliverySender, pending: Sequence[PendingDelivery]) -> None:
    try:
        send(pending)
    except Exception:  # the rows are committed; the reconciler sends them
        logger.exception("could not send %d webhook message(s); the reconciler will", len(pending))
