"""How a statement that picks task_runs rows by id tests their status."""

from __future__ import annotations


def status_is(status: str, alias: str = "") -> str:
    """SQL for "this run row's status is `status`", in a statement that picks the row by its id.

    Written `(status = 'x') IS TRUE` so that the planner cannot use it as a condition on
    ix_task_runs_unfinished (status, queued_at) and takes the primary key. With the plain
    `status = 'running'`, statistics gathered while most runs were queued make that partial
    index look cheaper, and every step write walked its dead entries: 1,200 buffer hits and
    1.3 ms per statement in benchmarks.runs_throughput, against 3 with the primary key.
    (status is NOT NULL, so the meaning is the same.)
    """
    column = f"{alias}.status" if alias else "status"
    return f"({column} = '{status}') IS TRUE"
