"""Declarative base, engine and session factories."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, MetaData, Row, TextClause, create_engine
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.settings import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


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


def execute_one(engine: Engine, statement: TextClause, params: Mapping[str, Any]) -> Row[Any] | None:
    """Run one textual statement as its own unit of work; its first row, if it returns rows.

    For the worker's hottest statements (a run's step writes, about ten a run): an ORM Session
    around each costs ~110 us of CPU against ~55 us for a Core connection executing the
    statement's driver SQL (compiled once per dialect), measured with 3,000 executions of one
    statement (benchmarks/README.md, "runs_throughput"). SQLAlchemy still owns the connection:
    its pool, and its handling of a connection Postgres dropped (the pool is invalidated).
    """
    with engine.begin() as connection:
        result = connection.exec_driver_sql(driver_sql(statement, engine.dialect), dict(params))
        return result.first() if result.returns_rows else None
