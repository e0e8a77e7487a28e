"""Declarative base, engine and session factories."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from psycopg.pq import ExecStatus
from sqlalchemy import Engine, MetaData, TextClause, create_engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.settings import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


TUPLES_OK = ExecStatus.TUPLES_OK


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(
    settings: Settings,
    *,
    pool_size: int = 10,
    max_overflow: int | None = None,
    pre_ping: bool = True,
    autocommit: bool = False,
    **kwargs: object,
) -> Engine:
    """An engine on DATABASE_URL.

    `autocommit` suits code whose every unit of work is a single statement (the worker's claim
    and finish): no BEGIN/COMMIT round trips. Without `pre_ping`, a connection that died with a
    Postgres restart fails its first statement instead of being tested at every checkout;
    SQLAlchemy then discards the whole pool, and the caller's retry gets fresh connections.
    """
    if autocommit:
        kwargs["isolation_level"] = "AUTOCOMMIT"
        # No transaction is ever open on such a connection: nothing to roll back at check-in.
        kwargs.setdefault("pool_reset_on_return", None)
    return create_engine(
        settings.database_url,
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_pre_ping=pre_ping,
        **kwargs,
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def engine_of(session_factory: sessionmaker[Session]) -> Engine:
    """The engine a session factory is bound to."""
    bind = session_factory.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError("the session factory is not bound to an engine")
    return bind


@functools.lru_cache(maxsize=256)
def driver_sql(statement: TextClause, dialect: Dialect) -> str:
    """The statement's SQL as the driver takes it (psycopg: `%(name)s` parameters)."""
    return str(statement.compile(dialect=dialect))


def execute_one(engine: Engine, statement: TextClause, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Run one textual statement as its own unit of work; its first row, if it returns rows.

    For the worker's hottest statements (a run's step writes, about ten a run), straight through
    psycopg on a connection of the engine's pool. CPU per statement, `benchmarks.statement_overhead`
    (one thread, 3,000 executions; quiet machine / load 5.5): an ORM Session around each 112 /
    219 us, a Core connection 68 / 145 us (its result objects), this 25 / 56 us, bare psycopg
    20 / 49 us. What SQLAlchemy would do on an error is kept: the error is raised as SQLAlchemy's
    (OperationalError, ...), and when Postgres dropped the connection, the connection is discarded
    and so is the rest of the pool (they were opened before the drop).
    """
    sql = driver_sql(statement, engine.dialect)
    pooled = engine.raw_connection()
    driver: Any = pooled.driver_connection
    try:
        with driver.cursor() as cursor:
            cursor.execute(sql, params)
            # (not `cursor.description`: it builds every column's description each time)
            result = cursor.pgresult
            row = cursor.fetchone() if result is not None and result.status == TUPLES_OK else None
        if not driver.autocommit:
            driver.commit()
        return tuple(row) if row is not None else None
    except engine.dialect.loaded_dbapi.Error as exc:
        disconnected = engine.dialect.is_disconnect(exc, driver, None)
        if disconnected:
            # As SQLAlchemy's own Connection does on a disconnect: this connection is closed and
            # every older one is replaced at its next check-out, those other threads hold too
            # (`Engine.dispose` would leave those open, in a pool nobody uses any more).
            engine.pool._invalidate(pooled, exc)
        elif not driver.closed:
            try:
                driver.rollback()
            except engine.dialect.loaded_dbapi.Error:
                pooled.invalidate(exc)
        raise DBAPIError.instance(
            sql, dict(params), exc, engine.dialect.loaded_dbapi.Error, connection_invalidated=disconnected
        ) from exc
    finally:
        pooled.close()
