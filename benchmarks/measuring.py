"""Figures a benchmark reports: percentiles, the machine's load, and the CPU processes used."""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Callable, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine_note() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds the processes have used so far."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def pg_backend_pids(engine: Any) -> list[int]:
    """The Postgres backends serving the benchmark database (not this query's own)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return [
            int(pid)
            for (pid,) in conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                )
            )
        ]


def redis_server_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"]


class CpuMeter:
    """CPU seconds used by groups of processes between `start()` and `stop()`.

    `groups()` is asked again at every `sample()`, so processes that start later (a pool's
    overflow connections, say) are counted from their start; one that exits between samples loses
    its CPU since the last sample.
    """

    def __init__(
        self,
        groups: Callable[[], dict[str, list[int]]],
        counters: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self._groups = groups
        self._counters = counters or (lambda: {})
        self._baseline: dict[int, float] = {}
        self._latest: dict[int, tuple[str, float]] = {}
        self._counters_start: dict[str, float] = {}

    def start(self) -> None:
        self._latest = {}
        self.sample()
        self._baseline = {pid: cpu for pid, (_, cpu) in self._latest.items()}
        self._counters_start = self._counters()

    def sample(self) -> None:
        import psutil

        for name, pids in self._groups().items():
            for pid in pids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = psutil.Process(pid).cpu_times()
                    self._latest[pid] = (name, times.user + times.system)

    def stop(self) -> dict[str, float]:
        self.sample()
        used: dict[str, float] = {}
        for pid, (name, cpu) in self._latest.items():
            used[name] = used.get(name, 0.0) + cpu - self._baseline.get(pid, 0.0)
        for name, value in self._counters().items():
            used[name] = value - self._counters_start.get(name, 0.0)
        return used


def exited_pg_backends_cpu() -> dict[str, float]:
    """CPU of Postgres backends that have exited (the postmaster's reaped children), all databases.

    Short-lived connections (a pool's overflow) are otherwise invisible to per-process sampling;
    on a shared server this includes other clients' connections.
    """
    import psutil

    for process in psutil.process_iter(["name", "ppid"]):
        with contextlib.suppress(psutil.Error):
            if (
                process.info["name"] == "postgres"
                and psutil.Process(process.info["ppid"]).name() != "postgres"
            ):
                times = process.cpu_times()
                return {
                    "postgres backends that exited (all dbs)": times.children_user + times.children_system
                }
    return {}
