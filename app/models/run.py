from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.enums import Priority, RunStatus, Trigger, sql_in


class TaskRun(Base):
    """One execution of a task. The row exists before its message is sent; Redis only carries its id."""

    __tablename__ = "task_runs"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_in(RunStatus)})", name="status"),
        CheckConstraint(f"priority IN ({sql_in(Priority)})", name="priority"),
        CheckConstraint(f"trigger IN ({sql_in(Trigger)})", name="trigger"),
        # One run per (task, slot): NULLs are distinct, so unscheduled runs are unaffected.
        UniqueConstraint("task_id", "scheduled_for"),
        Index("ix_task_runs_task_id_queued_at", "task_id", "queued_at", "id"),
        Index("ix_task_runs_user_id_queued_at", "user_id", "queued_at"),
        Index(
            "ix_task_runs_unfinished",
            "status",
            "queued_at",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        Index("ix_task_runs_finished_at", "finished_at"),
        # The overlap rule asks, per due task, whether it has a run still queued or running.
        Index(
            "ix_task_runs_active_task_id",
            "task_id",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        # A user's queued runs: those with a message out (parked_at NULL) count against their
        # concurrency limit when a new run is created; the parked ones wait for a slot.
        Index(
            "ix_task_runs_queued_user_id",
            "user_id",
            "parked_at",
            postgresql_where=text("status = 'queued'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=text("gen_random_uuid()")
    )
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    trigger: Mapped[str] = mapped_column(String(10))
    #: The cron slot this run is for (scheduled runs only).
    scheduled_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(
        String(10), default=RunStatus.QUEUED.value, server_default=RunStatus.QUEUED.value
    )
    priority: Mapped[str] = mapped_column(String(10))
    #: Attempts claimed so far; also the fencing token of the current attempt.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer)
    timeout_ms: Mapped[int] = mapped_column(Integer)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    #: Earliest time the next attempt may start (retry backoff).
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: When the message for the current attempt went to Redis, and its Dramatiq message id (also
    #: its key in the broker's `<queue>.msgs` hash, which the reconciler checks).
    message_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    message_id: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: A running attempt past this time belongs to a dead worker and may be claimed again.
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Set while a queued run waits in Postgres for one of its user's slots (it has no message
    #: then; a run of the user that ends releases it, see app.services.concurrency).
    parked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    credits_used: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: Credits this run holds on its user until it ends.
    credits_reserved: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: Tokens the provider reported past the run's token budget (not charged: the charge is
    #: capped at the reservation).
    tokens_over_budget: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    #: Token kinds as the provider reported them, summed over the run's model calls (cached
    #: tokens are part of the prompt tokens); `tokens_used` is prompt + completion.
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    #: Steps (`run_steps` rows) completed.
    step_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: The run's last event number (every status change and step write takes the next one),
    #: and the number of its last status change; the live event stream is ordered by them.
    event_seq: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    status_seq: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: A live event stream watches the run until then: its writes notify (app.services.run_steps).
    watched_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    #: The error of each attempt that was retried, in order: [{attempt, error, at}] (migration 0008);
    #: `error` holds the last one's (and the final attempt's).
    attempt_errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
