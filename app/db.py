"""Declarative base, engine and session factories."""

from __future__ import annotations

from sqlalchemy import Engine, MetaData, create_engine
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
