"""webhooks: task webhook, user secrets, delivery outbox

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 08:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("webhook_url", sa.String(length=2000), nullable=True))
    op.add_column("tasks", sa.Column("webhook_events", postgresql.ARRAY(sa.String(length=32)), nullable=True))
    op.add_column("tasks", sa.Column("webhook_disabled_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("webhook_secret", sa.String(length=255), nullable=True))
    op.add_column("users", sa.Column("webhook_secret_previous", sa.String(length=255), nullable=True))
    op.add_column(
        "users", sa.Column("webhook_secret_previous_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("status", sa.String(length=10), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("message_id", sa.String(length=64), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')", name=op.f("ck_webhook_deliveries_status")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["task_runs.id"],
            name=op.f("fk_webhook_deliveries_run_id_task_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_webhook_deliveries_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_webhook_deliveries_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("run_id", "event", name=op.f("uq_webhook_deliveries_run_id_event")),
    )
    op.create_index(
        "ix_webhook_deliveries_pending_next_attempt_at",
        "webhook_deliveries",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index("ix_webhook_deliveries_task_id", "webhook_deliveries", ["task_id"], unique=False)
    op.create_index(
        "ix_webhook_deliveries_finished_occurred_at",
        "webhook_deliveries",
        ["occurred_at"],
        unique=False,
        postgresql_where=sa.text("status <> 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_finished_occurred_at", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_task_id", table_name="webhook_deliveries")
    op.drop_index(
        "ix_webhook_deliveries_pending_next_attempt_at",
        table_name="webhook_deliveries",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_table("webhook_deliveries")
    op.drop_column("users", "webhook_secret_previous_until")
    op.drop_column("users", "webhook_secret_previous")
    op.drop_column("users", "webhook_secret")
    op.drop_column("tasks", "webhook_disabled_at")
    op.drop_column("tasks", "webhook_events")
    op.drop_column("tasks", "webhook_url")
