"""What runs_throughput reads back from Postgres after the runs: statements per run
(pg_stat_statements), the runs' own timings, and whether the credit books balance."""

from __future__ import annotations

from typing import Any

from benchmarks.runs_measurement import Measurement

#: How pg_stat_statements' normalized texts of a run's statements are told apart (first match).
_STATEMENT_KINDS = (
    ("claim", "WITH locked_run AS"),
    ("step end", "prompt_tokens = prompt_tokens +"),
    ("step start", "INSERT INTO run_steps"),
    ("finish", "WITH finished AS"),
    ("look for parked runs", "SELECT r.user_id FROM task_runs AS r"),
    ("completed steps read", "SELECT index, output FROM run_steps"),
    ("lease heartbeat", "SET lease_expires_at ="),
)
#: The benchmark's own statements (polling, set-up), not counted.
_OWN_STATEMENTS = (
    "pg_stat",
    "GROUP BY status",
    "VACUUM",
    "TRUNCATE",
    "generate_series",
    "SET message_sent_at",
)


def reset_statement_counts(engine: Any) -> bool:
    """Zero pg_stat_statements; False when the extension is not loaded (nothing is counted)."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
            conn.execute(text("SELECT pg_stat_statements_reset()"))
        return True
    except SQLAlchemyError:
        return False


def statement_counts(engine: Any, runs: int) -> dict[str, float]:
    """Statements per run by kind, from pg_stat_statements, in this database."""
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).all()
    kinds: dict[str, float] = {}
    for query, calls in rows:
        if any(own in query for own in _OWN_STATEMENTS):
            continue
        kind = next((name for name, marker in _STATEMENT_KINDS if marker in query), "other")
        kinds[kind] = kinds.get(kind, 0.0) + calls / runs
    return kinds


def db_figures(engine: Any, result: Measurement) -> None:
    from sqlalchemy import text

    with engine.connect() as conn:
        count, span, p50, p99, mean = conn.execute(
            text(
                """
                SELECT count(*),
                       extract(epoch FROM max(finished_at) - min(started_at)),
                       percentile_cont(0.5)
                           WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
                       percentile_cont(0.99)
                           WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
                       avg(extract(epoch FROM finished_at - started_at))
                  FROM task_runs WHERE finished_at IS NOT NULL
                """
            )
        ).one()
    if count and span:
        result.rate_db = float(count) / float(span)
        result.run_latency_ms = (float(p50) * 1000, float(p99) * 1000, float(mean) * 1000)


def consistency_problems(engine: Any) -> list[str]:
    """Credits must balance after a run: nothing held, the ledger sums to what users were charged."""
    from sqlalchemy import text

    with engine.connect() as conn:
        held, used, ledger, charges, charged_runs = conn.execute(
            text(
                """
                SELECT (SELECT coalesce(sum(credits_reserved), 0) FROM users),
                       (SELECT coalesce(sum(credits_used), 0) FROM users),
                       (SELECT coalesce(sum(amount), 0) FROM credit_ledger),
                       (SELECT count(*) FROM credit_ledger WHERE kind = 'charge'),
                       (SELECT count(*) FROM task_runs WHERE credits_used > 0)
                """
            )
        ).one()
    problems = []
    if held:
        problems.append(f"CONSISTENCY: users still hold {held} reserved credits")
    if used != ledger:
        problems.append(f"CONSISTENCY: users were charged {used} credits but the ledger sums to {ledger}")
    if charges != charged_runs:
        problems.append(f"CONSISTENCY: {charges} ledger charges for {charged_runs} charged runs")
    return problems
