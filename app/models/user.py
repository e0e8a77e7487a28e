from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import Boolean, CheckConstraint, Date, DateTime, ForeignKey, Integer, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.enums import Plan, sql_in


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"plan IN ({sql_in(Plan)})", name="plan"),
        CheckConstraint("credits_used >= 0 AND credits_reserved >= 0", name="credits_nonnegative"),
        CheckConstraint("max_concurrent_runs >= 0 AND running_runs >= 0", name="concurrency_nonnegative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=text("gen_random_uuid()")
    )
    email: Mapped[str] = mapped_column(String(320), unique=True)
    plan: Mapped[str] = mapped_column(String(20), default=Plan.FREE.value, server_default=Plan.FREE.value)
    monthly_credits: Mapped[int] = mapped_column(Integer)
    #: Credits charged in `credits_period` (the first day of a UTC month); the ledger sums to it.
    credits_used: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: Credits held by runs in flight; released or turned into a charge when each run ends.
    credits_reserved: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    credits_period: Mapped[date] = mapped_column(
        Date, server_default=text("(date_trunc('month', now()))::date")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    #: Runs of this user that may be `running` at once (plan default, `plan set --concurrency`).
    max_concurrent_runs: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    #: Runs of this user now `running`; kept by triggers on task_runs (migration 0006).
    running_runs: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: Webhook signing secret (`whsec_...`), encrypted with WEBHOOK_SECRETS_KEY when set, else as is
    #: (signing needs the secret itself: app.webhooks.secret_store).
    webhook_secret: Mapped[str | None] = mapped_column(String(255))
    #: The secret before the last rotation, which also signs until `webhook_secret_previous_until`.
    webhook_secret_previous: Mapped[str | None] = mapped_column(String(255))
    webhook_secret_previous_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: May open the dashboard's operations page (`agentsched users admin --email E`).
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class ApiKey(Base):
    """An API key, stored as its SHA-256 only; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=text("gen_random_uuid()")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: The first characters of the key, so a user can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    #: The owner's label for the key ("laptop", "ci"); may be empty.
    name: Mapped[str] = mapped_column(String(100), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    #: When the key last authenticated a request, to the minute (written at most once a minute).
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
