"""CPU per statement of each way the worker can run one short statement (app.db.execute_one's case).

    .venv/bin/python -m benchmarks.statement_overhead [--executions 3000]

One textual statement with two parameters, executed N times on one thread against the machine's
Postgres (the `postgres` database; it writes nothing) through: an ORM Session per statement
(`sessionmaker.begin()`), a Core connection (`engine.begin()` + `execute(text)`), Core's
`exec_driver_sql`, `app.db.execute_one` (psycopg on a pooled connection), and a bare psycopg
connection (the floor). Prints this process's CPU and the wall time per execution.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable

from benchmarks.common import ADMIN_DATABASE_URL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--executions", type=int, default=3000)
    args = parser.parse_args(argv)

    import psycopg
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import sessionmaker

    from app.db import driver_sql, execute_one
    from app.services.run_events import libpq_conninfo

    engine = create_engine(ADMIN_DATABASE_URL, isolation_level="AUTOCOMMIT", pool_size=2, pool_pre_ping=False)
    sessions = sessionmaker(engine, expire_on_commit=False)
    statement = text("SELECT CAST(:a AS int) + 1 WHERE CAST(:b AS uuid) IS NOT NULL")
    params = {"a": 1, "b": uuid.uuid4()}
    sql = driver_sql(statement, engine.dialect)
    bare = psycopg.connect(libpq_conninfo(ADMIN_DATABASE_URL), autocommit=True)

    def session() -> None:
        with sessions.begin() as s:
            s.execute(statement, params).scalar()

    def core() -> None:
        with engine.begin() as c:
            c.execute(statement, params).scalar()

    def core_driver_sql() -> None:
        with engine.begin() as c:
            c.exec_driver_sql(sql, params).scalar()

    def raw_pooled() -> None:
        execute_one(engine, statement, params)

    def bare_psycopg() -> None:
        bare.execute(sql, params).fetchone()

    ways: list[tuple[str, Callable[[], None]]] = [
        ("ORM Session per statement", session),
        ("Core connection, execute(text)", core),
        ("Core connection, exec_driver_sql", core_driver_sql),
        ("app.db.execute_one (psycopg, pooled)", raw_pooled),
        ("bare psycopg connection (floor)", bare_psycopg),
    ]
    load = os.getloadavg()[0]
    print(f"{args.executions:,} executions each, one thread; load average {load:.2f}")
    for name, way in ways:
        for _ in range(200):
            way()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(args.executions):
            way()
        cpu_us = 1e6 * (time.process_time() - cpu) / args.executions
        wall_us = 1e6 * (time.perf_counter() - wall) / args.executions
        print(f"  {cpu_us:6.0f} us CPU  {wall_us:6.0f} us wall  {name}")
    bare.close()
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
