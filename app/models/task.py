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
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.enums import Priority, TaskStatus, sql_in


class Task(Base):
    """What a user asked for: a goal for an agent type, run once or on a cron schedule."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_in(TaskStatus)})", name="status"),
        CheckConstraint(f"priority IN ({sql_in(Priority)})", name="priority"),
        Index("ix_tasks_schedule_enabled_next_run_at", "schedule_enabled", "next_run_at"),
        Index("ix_tasks_status_priority", "status", "priority"),
        Index("ix_tasks_user_id_created_at", "user_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=text("gen_random_uuid()")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    #: The goal, as the user wrote it.
    description: Mapped[str] = mapped_column(Text)
    agent_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(
        String(20), default=TaskStatus.PENDING.value, server_default=TaskStatus.PENDING.value
    )
    priority: Mapped[str] = mapped_column(
        String(10), default=Priority.MEDIUM.value, server_default=Priority.MEDIUM.value
    )
    #: The schedule object as given ({enabled, cron, timezone}); the columns below drive it.
    schedule: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    schedule_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    cron: Mapped[str | None] = mapped_column(String(200))
    timezone: Mapped[str | None] = mapped_column(String(64))
    next_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: {timeout (ms), maxRetries, model}
    agent_config: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'"))
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    credits_used: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: Token kinds summed over the task's finished runs (see TaskRun).
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    #: Where run events are POSTed (`webhook.url`), which events (`webhook.events`), and when a
    #: receiver's 410 Gone turned it off (set again by a PATCH of `webhook`).
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_events: Mapped[list[str] | None] = mapped_column(ARRAY(String(32)))
    webhook_disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
