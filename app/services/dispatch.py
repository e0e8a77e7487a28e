"""Messages to send after a commit: ids only, one per run, on the run's priority queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import overload

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.models.enums import Priority
from app.services.run_rows import status_is

#: Queue per priority (the Redis broker has no message priority); actors bind one each.
QUEUE_PREFIX = "runs"
#: Dramatiq runs lower numbers first within a worker.
ACTOR_PRIORITY: dict[Priority, int] = {
    Priority.URGENT: 0,
    Priority.HIGH: 10,
    Priority.MEDIUM: 20,
    Priority.LOW: 30,
}


def queue_name(priority: str) -> str:
    return f"{QUEUE_PREFIX}.{Priority(priority).value}"


def actor_name(priority: str) -> str:
    return f"execute_run_{Priority(priority).value}"


@dataclass(frozen=True, slots=True)
class Dispatch:
    run_id: uuid.UUID
    priority: str
    delay_ms: int = 0
    #: Chosen before the send when the run row already records it (see `tasks.create_task`).
    message_id: str | None = None


class RecordedRuns(Sequence[Dispatch]):
    """Undelayed dispatches of queued runs whose rows already record their message ids, held as
    the scheduling pass's statement answers them: per priority, "run-id message-id" pairs,
    comma-separated. `actors.sending` gives that text to Redis as it is, so a burst costs no
    Python object per run; to anything else this is an ordinary sequence, built when first read.
    """

    def __init__(self, pairs_by_priority: Mapping[str, str], count: int) -> None:
        self.pairs_by_priority = pairs_by_priority
        self._count = count
        self._built: list[Dispatch] | None = None

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Dispatch: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Dispatch]: ...
    def __getitem__(self, index: int | slice) -> Dispatch | Sequence[Dispatch]:
        return self._dispatches()[index]

    def __iter__(self) -> Iterator[Dispatch]:
        return iter(self._dispatches())

    def sent(self) -> list[tuple[uuid.UUID, str]]:
        """(run id, message id) of each run, as a sender reports what it sent."""
        return [(uuid.UUID(run_id), message_id) for run_id, message_id, _ in self._pairs()]

    def _pairs(self) -> Iterator[tuple[str, str, str]]:
        for priority, pairs in self.pairs_by_priority.items():
            for pair in pairs.split(","):
                run_id, message_id = pair.split(" ")
                yield run_id, message_id, priority

    def _dispatches(self) -> list[Dispatch]:
        if self._built is None:
            self._built = [
                Dispatch(uuid.UUID(run_id), priority, message_id=message_id)
                for run_id, message_id, priority in self._pairs()
            ]
        return self._built


_MARK_SENT = text(
    f"""
    UPDATE task_runs AS r
       SET message_sent_at = :now, message_id = s.message_id
      FROM unnest(CAST(:run_ids AS uuid[]), CAST(:message_ids AS text[])) AS s(run_id, message_id)
     WHERE r.id = s.run_id AND {status_is("queued", "r")}
    """
)


def mark_sent(session: Session, sent: Sequence[tuple[uuid.UUID, str]], now: datetime) -> None:
    """Record that each run's message reached Redis (and under which message id)."""
    if not sent:
        return
    session.execute(
        _MARK_SENT,
        {
            "run_ids": [run_id for run_id, _ in sent],
            "message_ids": [mid for _, mid in sent],
            "now": now,
        },
    )
