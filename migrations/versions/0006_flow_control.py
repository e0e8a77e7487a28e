"""flow control: per-user concurrency and idempotency keys

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 08:20:00

`users.running_runs` is kept by triggers on `task_runs` (every change into or out of
`running`, whoever's statement makes it), so the claim can admit a run against the user's
limit by locking one row, and no code path can forget to give a slot back.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COUNT_FUNCTION = """
CREATE OR REPLACE FUNCTION agentsched_count_running_runs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'running' THEN
        UPDATE users SET running_runs = GREATEST(running_runs - 1, 0) WHERE id = OLD.user_id;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.status = 'running' THEN
        UPDATE users SET running_runs = running_runs + 1 WHERE id = NEW.user_id;
    END IF;
    RETURN NULL;
END
$$
"""

_TRIGGERS = (
    """CREATE TRIGGER task_runs_running_insert AFTER INSERT ON task_runs
       FOR EACH ROW WHEN (NEW.status = 'running') EXECUTE FUNCTION agentsched_count_running_runs()""",
    """CREATE TRIGGER task_runs_running_update AFTER UPDATE OF status ON task_runs
       FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                          AND (OLD.status = 'running' OR NEW.status = 'running'))
       EXECUTE FUNCTION agentsched_count_running_runs()""",
    """CREATE TRIGGER task_runs_running_delete AFTER DELETE ON task_runs
       FOR EACH ROW WHEN (OLD.status = 'running') EXECUTE FUNCTION agentsched_count_running_runs()""",
)


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("max_concurrent_runs", sa.Integer(), server_default=sa.text("1"), nullable=False)
    )
    op.add_column(
        "users", sa.Column("running_runs", sa.Integer(), server_default=sa.text("0"), nullable=False)
    )
    op.execute(
        "UPDATE users SET max_concurrent_runs ="
        " CASE plan WHEN 'pro' THEN 5 WHEN 'enterprise' THEN 20 ELSE 1 END"
    )
    op.execute(
        "UPDATE users AS u SET running_runs = (SELECT count(*) FROM task_runs AS r"
        " WHERE r.user_id = u.id AND r.status = 'running')"
    )
    op.create_check_constraint(
        op.f("ck_users_concurrency_nonnegative"), "users", "max_concurrent_runs >= 0 AND running_runs >= 0"
    )
    op.add_column("task_runs", sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_task_runs_queued_user_id",
        "task_runs",
        ["user_id", "parked_at"],
        unique=False,
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.execute(_COUNT_FUNCTION)
    for statement in _TRIGGERS:
        op.execute(statement)
    op.add_column(
        "run_steps", sa.Column("waited_ms", sa.Integer(), server_default=sa.text("0"), nullable=False)
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_idempotency_keys_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_column("run_steps", "waited_ms")
    for name in ("task_runs_running_insert", "task_runs_running_update", "task_runs_running_delete"):
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON task_runs")
    op.execute("DROP FUNCTION IF EXISTS agentsched_count_running_runs()")
    op.drop_index(
        "ix_task_runs_queued_user_id",
        table_name="task_runs",
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.drop_column("task_runs", "parked_at")
    op.drop_constraint(op.f("ck_users_concurrency_nonnegative"), "users", type_="check")
    op.drop_column("users", "running_runs")
    op.drop_column("users", "max_concurrent_runs")
