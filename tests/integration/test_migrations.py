"""The migrations build the schema on an empty database, match the models, and downgrade cleanly."""

from __future__ import annotations

import os

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from app.db import Base
from app.migrate import alembic_config, downgrade_to_base, upgrade_to_head
from app.services.run_events import libpq_conninfo
from tests.support.fixtures import recreate_database


@pytest.fixture
def empty_database(settings) -> str:
    url = make_url(settings.database_url).set(
        database=f"{make_url(settings.database_url).database}_migrations"
    )
    rendered = url.render_as_string(hide_password=False)
    recreate_database(rendered)
    yield rendered
    with psycopg.connect(
        libpq_conninfo(os.environ["AGENTSCHED_ADMIN_DATABASE_URL"]), autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')


def test_upgrade_builds_the_models_schema_and_downgrade_removes_it(empty_database):
    upgrade_to_head(empty_database)
    engine = create_engine(empty_database)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == [], f"models and migrations disagree: {diff}"
            inspector = inspect(conn)
            assert {"users", "api_keys", "tasks", "task_runs", "credit_ledger"} <= set(
                inspector.get_table_names()
            )
            task_indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("tasks")}
            assert task_indexes["ix_tasks_schedule_enabled_next_run_at"] == [
                "schedule_enabled",
                "next_run_at",
            ]
            assert task_indexes["ix_tasks_status_priority"] == ["status", "priority"]
            uniques = [uq["column_names"] for uq in inspector.get_unique_constraints("task_runs")]
            assert ["task_id", "scheduled_for"] in uniques
        downgrade_to_base(empty_database)
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        command.upgrade(alembic_config(empty_database), "head")  # and up again
    finally:
        engine.dispose()
