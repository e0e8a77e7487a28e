from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, Date, DateTime, ForeignKey, Index, Integer, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class CreditLedgerEntry(Base):
    """Every change to a user's `credits_used`: a run's charge, or an operator's adjustment."""

    __tablename__ = "credit_ledger"
    __table_args__ = (
        # A run is charged at most once, whatever retries or duplicate deliveries happen.
        Index(
            "uq_credit_ledger_run_charge",
            "run_id",
            unique=True,
            postgresql_where=text("kind = 'charge'"),
        ),
        Index("ix_credit_ledger_user_id_period", "user_id", "period"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    run_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("task_runs.id", ondelete="SET NULL"))
    #: 'charge' (a run's cost), 'adjustment' (a reset by an operator) or 'plan' (a plan change,
    #: amount 0).
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    #: The UTC calendar month (its first day) the entry counts in.
    period: Mapped[date] = mapped_column(Date)
    #: What an operator's row did ("credits reset", "plan free (100/month) -> pro ...").
    note: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
