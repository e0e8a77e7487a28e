"""The webhook outbox: one row per (run, event) to deliver, written with the run's end."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

DELIVERY_STATUSES = ("pending", "delivered", "failed")


class WebhookDelivery(Base):
    """A run's event on its way to the task's webhook URL; its id is the `webhook-id` header."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
        # One delivery per run and event, however often the statement that ends a run is retried.
        UniqueConstraint("run_id", "event"),
        # The reconciler looks for pending deliveries whose attempt is overdue.
        Index(
            "ix_webhook_deliveries_pending_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_task_id", "task_id"),
        # The cleanup deletes finished deliveries by age (app.webhooks.cleanup).
        Index(
            "ix_webhook_deliveries_finished_occurred_at",
            "occurred_at",
            postgresql_where=text("status <> 'pending'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("task_runs.id", ondelete="CASCADE"))
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    #: run.completed, run.failed, run.cancelled or run.skipped.
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2000))
    status: Mapped[str] = mapped_column(String(10), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    #: When the event happened (the run's end); the payload's `timestamp`.
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: An attempt in progress past this time belongs to a dead sender and may be claimed again.
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The Redis id of the latest message sent for it (the reconciler looks for it).
    message_id: Mapped[str | None] = mapped_column(String(64))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))
