"""money: over-budget tokens on runs, notes on operators' ledger rows

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 08:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "task_runs",
        sa.Column("tokens_over_budget", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("credit_ledger", sa.Column("note", sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column("credit_ledger", "note")
    op.drop_column("task_runs", "tokens_over_budget")
