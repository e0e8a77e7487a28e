"""run steps, token kinds and heartbeat leases

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 08:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "cached_tokens")


def upgrade() -> None:
    op.create_table(
        "run_steps",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("usage_estimated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("seq", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("start_seq", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint("kind IN ('plan', 'step', 'final')", name=op.f("ck_run_steps_kind")),
        sa.CheckConstraint("status IN ('running', 'completed', 'failed')", name=op.f("ck_run_steps_status")),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["task_runs.id"],
            name=op.f("fk_run_steps_run_id_task_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "index", name=op.f("pk_run_steps")),
    )
    for table in ("task_runs", "tasks"):
        for column in _TOKEN_KINDS:
            op.add_column(
                table, sa.Column(column, sa.BigInteger(), server_default=sa.text("0"), nullable=False)
            )
    for column in ("step_count", "event_seq", "status_seq"):
        op.add_column(
            "task_runs", sa.Column(column, sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
    op.add_column("task_runs", sa.Column("watched_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("task_runs", "watched_until")
    for column in ("status_seq", "event_seq", "step_count"):
        op.drop_column("task_runs", column)
    for table in ("tasks", "task_runs"):
        for column in reversed(_TOKEN_KINDS):
            op.drop_column(table, column)
    op.drop_table("run_steps")
