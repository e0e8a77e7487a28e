"""One model call of a run (`plan`, each `step`, `final`): a durable row, replayed on resume."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, DateTime, ForeignKey, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.enums import StepKind, StepStatus, sql_in


class RunStep(Base):
    """A run's step `index` (0 the plan, 1..n the steps, n+1 the final call), as last written.

    A step that failed is written again by the attempt that redoes it; a completed step is
    never written again. `seq` orders a run's events (see app.services.run_steps).
    """

    __tablename__ = "run_steps"
    __table_args__ = (
        CheckConstraint(f"kind IN ({sql_in(StepKind)})", name="kind"),
        CheckConstraint(f"status IN ({sql_in(StepStatus)})", name="status"),
    )

    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("task_runs.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    title: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10))
    #: The run attempt that wrote this step last.
    attempt: Mapped[int] = mapped_column(Integer)
    model: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: Prompt tokens the provider served from its cache (part of prompt_tokens, not extra).
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: The server reported no usage; the tokens are an estimate (app.providers.base).
    usage_estimated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    #: Time the call waited before it was made (provider budget, a 429's wait); not in latency_ms.
    waited_ms: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    #: The run's event number of this row's latest write, and of the write that started it
    #: (the live deltas of the call are numbered after it).
    seq: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    start_seq: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
