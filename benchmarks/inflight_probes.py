"""What `benchmarks.inflight` reads after a scenario: the runs' latencies and timeline from
Postgres, the pool-holds probe the workers can import, and the errors in the worker log."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def latencies(engine: Any) -> tuple[float, float, float]:
    from sqlalchemy import text

    with engine.connect() as conn:
        row = conn.execute(
            text(
                """
                SELECT percentile_cont(0.5)
                           WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
                       percentile_cont(0.99)
                           WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
                       avg(extract(epoch FROM started_at - queued_at))
                  FROM task_runs WHERE status = 'completed'
                """
            )
        ).one()
    p50, p99, wait = (float(v or 0.0) for v in row)
    return p50, p99, wait


_RUN_TIMELINE = """
WITH s AS (
    SELECT s.run_id, s.index, s.started_at, s.finished_at, s.latency_ms,
           lag(s.finished_at) OVER (PARTITION BY s.run_id ORDER BY s.index) AS previous_end,
           r.started_at AS run_started, r.finished_at AS run_finished,
           s.index = max(s.index) OVER (PARTITION BY s.run_id) AS last
      FROM run_steps AS s JOIN task_runs AS r ON r.id = s.run_id
     WHERE s.status = 'completed' AND r.status = 'completed' AND r.attempts = 1
)
SELECT avg(extract(epoch FROM started_at - run_started)) FILTER (WHERE index = 0),
       avg(extract(epoch FROM finished_at - started_at) - latency_ms / 1000.0),
       avg(latency_ms / 1000.0),
       avg(extract(epoch FROM started_at - previous_end)) FILTER (WHERE index > 0),
       avg(extract(epoch FROM run_finished - finished_at)) FILTER (WHERE last)
  FROM s
"""


def run_timeline(engine: Any) -> tuple[float, ...]:
    """Mean seconds a run spends: claim to its first step, a step outside its model call (its
    start written, the deltas flushed), in the call, from a step's end to the next one's start
    (the end written), from the last step's end to the run's end (the finish written)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        row = conn.execute(text(_RUN_TIMELINE)).one()
    return tuple(float(value or 0.0) for value in row)


def step_latency_ms(engine: Any) -> float:
    from sqlalchemy import text

    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT avg(latency_ms) FROM run_steps WHERE status = 'completed'")
        ).scalar_one()
    return float(value or 0.0)


# A module `dramatiq` imports instead of the worker module: it imports that module, then logs
# how long each pooled Postgres connection stays checked out, every _HOLDS_EVERY_S seconds.
_POOL_HOLDS_PROBE = """\
import logging, threading, time
from sqlalchemy import event
from sqlalchemy.pool import Pool
from {module} import broker  # noqa: F401

_holds, _lock, _log = [], threading.Lock(), logging.getLogger("pool_holds")


@event.listens_for(Pool, "checkout")
def _out(dbapi_connection, record, proxy):
    record.info["out_at"] = time.monotonic()


@event.listens_for(Pool, "checkin")
def _in(dbapi_connection, record):
    out = record.info.pop("out_at", None)
    if out is not None:
        with _lock:
            _holds.append(time.monotonic() - out)


def _report():
    while True:
        time.sleep({every})
        with _lock:
            holds = sorted(_holds)
            _holds.clear()
        if holds:
            _log.warning("pool holds: %d %.3f %.3f %.3f", len(holds), 1000 * sum(holds) / len(holds),
                         1000 * holds[len(holds) // 2], 1000 * holds[int(len(holds) * 0.99)])


threading.Thread(target=_report, name="pool-holds", daemon=True).start()
"""
_HOLDS_EVERY_S = 5
_HOLDS_LINE = re.compile(r"pool holds: (\d+) ([\d.]+) ([\d.]+) ([\d.]+)")


def pool_holds_probe(logs: Path, module: str) -> str:
    (logs / "pool_holds_probe.py").write_text(_POOL_HOLDS_PROBE.format(module=module, every=_HOLDS_EVERY_S))
    return "pool_holds_probe"


def pool_holds(path: Path | None) -> tuple[float, float, float, float] | None:
    """The busiest half of the probe's 5 s reports (the steady state), averaged over processes."""
    if path is None or not path.exists():
        return None
    reports = [
        tuple(float(v) for v in m.groups()) for m in _HOLDS_LINE.finditer(path.read_text(errors="replace"))
    ]
    if not reports:
        return None
    busiest = sorted(reports, key=lambda r: -r[0])[: max(1, len(reports) // 2)]
    count = sum(r[0] for r in busiest)
    return (
        count / len(busiest) / _HOLDS_EVERY_S,
        sum(r[0] * r[1] for r in busiest) / count,
        sum(r[0] * r[2] for r in busiest) / count,
        max(r[3] for r in busiest),
    )


_ERROR_PATTERNS = {
    "too many connections": re.compile(r"too many (connections|clients)", re.I),
    "pool timeout (QueuePool limit reached)": re.compile(r"QueuePool limit", re.I),
    "actor failed, will retry": re.compile(r"Retrying message", re.I),
    "model call errors": re.compile(r"could not reach the model provider|model provider answered HTTP", re.I),
    "tracebacks": re.compile(r"^Traceback", re.M),
}


def log_errors(path: Path | None) -> dict[str, int]:
    if path is None or not path.exists():
        return {}
    text = path.read_text(errors="replace")
    return {name: len(pattern.findall(text)) for name, pattern in _ERROR_PATTERNS.items()}


# --- reporting ------------------------------------------------------------------------------------
