"""index the unfinished runs of a task, for the scheduling pass's overlap rule

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 15:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_task_runs_active_task_id",
        "task_runs",
        ["task_id"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_task_runs_active_task_id",
        table_name="task_runs",
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
