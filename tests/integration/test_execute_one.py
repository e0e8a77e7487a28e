"""app.db.execute_one: one statement straight through psycopg, with SQLAlchemy's error handling."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from app.db import execute_one, make_engine
from app.settings import Settings


@pytest.fixture(params=[True, False], ids=["autocommit", "transactional"])
def small_engine(request: pytest.FixtureRequest, settings: Settings) -> Engine:
    engine = make_engine(settings, pool_size=2, max_overflow=0, pre_ping=False, autocommit=request.param)
    yield engine
    engine.dispose()


def test_a_row_comes_back_and_a_write_is_committed(small_engine: Engine, engine: Engine) -> None:
    assert execute_one(small_engine, text("SELECT CAST(:n AS int) + 1, 'x'"), {"n": 41}) == (42, "x")
    assert execute_one(small_engine, text("SELECT 1 WHERE false"), {}) is None
    execute_one(
        small_engine,
        text("INSERT INTO users (id, email, plan, monthly_credits) VALUES (gen_random_uuid(), :e, 'pro', 5)"),
        {"e": "execute-one@example.com"},
    )
    with engine.connect() as other:  # committed: another connection sees it
        assert other.scalar(text("SELECT count(*) FROM users WHERE email = 'execute-one@example.com'")) == 1


def test_a_failed_statement_raises_sqlalchemys_error_and_leaves_the_connection_usable(
    small_engine: Engine,
) -> None:
    insert = text(
        "INSERT INTO users (id, email, plan, monthly_credits) VALUES (:id, 'dup@example.com', 'pro', 5)"
    )
    row = execute_one(small_engine, text("SELECT gen_random_uuid()"), {})
    assert row is not None
    execute_one(small_engine, insert, {"id": row[0]})
    with pytest.raises(IntegrityError):
        execute_one(small_engine, insert, {"id": row[0]})
    for _ in range(4):  # both pooled connections are still good
        assert execute_one(small_engine, text("SELECT 1"), {}) == (1,)


def test_a_connection_postgres_dropped_is_discarded_with_the_rest_of_the_pool(
    small_engine: Engine, engine: Engine
) -> None:
    first = small_engine.raw_connection()
    second = small_engine.raw_connection()
    pids = [conn.driver_connection.info.backend_pid for conn in (first, second)]  # type: ignore[union-attr]
    first.close()
    second.close()
    with engine.connect() as admin:  # as a Postgres restart does to every connection
        admin.execute(
            text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:pids AS int[])) AS pid"), {"pids": pids}
        )
    with pytest.raises(OperationalError) as raised:
        execute_one(small_engine, text("SELECT 1"), {})
    assert raised.value.connection_invalidated
    # The next statements get new connections: neither dropped one is handed out again.
    for _ in range(4):
        assert execute_one(small_engine, text("SELECT 1"), {}) == (1,)
    now = small_engine.raw_connection()
    try:
        assert now.driver_connection.info.backend_pid not in pids  # type: ignore[union-attr]
    finally:
        now.close()


def test_a_connection_held_elsewhere_when_the_pool_is_invalidated_is_replaced_too(
    small_engine: Engine, engine: Engine
) -> None:
    """Another thread's connection, checked out while one statement found its connection
    dropped, is not handed out again (nor left open in a pool nobody uses)."""
    held = small_engine.raw_connection()
    free = small_engine.raw_connection()
    pids = [conn.driver_connection.info.backend_pid for conn in (held, free)]  # type: ignore[union-attr]
    free.close()
    with engine.connect() as admin:
        admin.execute(
            text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:pids AS int[])) AS pid"), {"pids": pids}
        )
    with pytest.raises(OperationalError):
        execute_one(small_engine, text("SELECT 1"), {})
    held.close()  # back to the pool after the invalidation
    again = [small_engine.raw_connection(), small_engine.raw_connection()]
    try:
        assert all(conn.driver_connection.info.backend_pid not in pids for conn in again)  # type: ignore[union-attr]
    finally:
        for conn in again:
            conn.close()
    assert execute_one(small_engine, text("SELECT 1"), {}) == (1,)
