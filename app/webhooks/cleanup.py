"""Old delivery rows go: a delivered or failed delivery is kept for DELIVERY_RETENTION_DAYS
after its event, long enough to answer "what happened to my webhook?", then deleted, so the
outbox table does not grow with every run ever ended."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

#: Finished deliveries are kept this long after their event (days).
DELIVERY_RETENTION_DAYS = 30
#: Rows deleted per statement, so no statement holds locks for long.
CLEANUP_BATCH = 10_000

_CLEANUP = text(
    """
    DELETE FROM webhook_deliveries
     WHERE id = ANY (ARRAY(SELECT id FROM webhook_deliveries
                            WHERE status <> 'pending' AND occurred_at < :cutoff
                            LIMIT :batch))
    """
)


def delete_old_deliveries(
    session: Session,
    now: datetime,
    *,
    retention_days: int = DELIVERY_RETENTION_DAYS,
    batch: int = CLEANUP_BATCH,
) -> int:
    """Delete finished deliveries older than the retention, a batch per statement; returns how many."""
    cutoff = now - timedelta(days=retention_days)
    total = 0
    while True:
        deleted = int(session.execute(_CLEANUP, {"cutoff": cutoff, "batch": batch}).rowcount or 0)  # type: ignore[attr-defined]
        total += deleted
        if deleted < batch:
            return total
