"""What runs_throughput measured for one configuration (`Measurement`), the rates it derives from
its polls, and how it prints them."""

from __future__ import annotations

from dataclasses import dataclass, field

GOAL_RUNS_PER_S = 1_000.0


@dataclass
class Measurement:
    label: str
    count: int
    finished: int = 0
    rate_first_to_last: float = 0.0
    rate_steady: float = 0.0
    rate_db: float = 0.0
    enqueue_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    window_s: float = 0.0
    sessions_opened: int = 0
    run_latency_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    peak_rss_mb: float = 0.0
    profile: str = ""
    #: Postgres statements per run by kind (pg_stat_statements), when the extension is loaded.
    statements: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def finish_rates(samples: list[tuple[float, int]], total: int) -> tuple[float, float]:
    """Rates (first finish .. last finish, and 10%..90%) from (time, finished) polls.

    The first window runs from the last poll that saw nothing finished to the first poll that saw
    everything finished, so it overstates the duration by up to two polls.
    """
    zero_t = next((t for t, done in reversed(samples) if done == 0), samples[0][0])
    end_t = next((t for t, done in samples if done >= total), samples[-1][0])
    overall = min(samples[-1][1], total) / (end_t - zero_t) if end_t > zero_t else 0.0
    low = next(((t, d) for t, d in samples if d >= 0.1 * total), None)
    high = next(((t, d) for t, d in samples if d >= 0.9 * total), None)
    steady = (high[1] - low[1]) / (high[0] - low[0]) if low and high and high[0] > low[0] else 0.0
    return overall, steady


def check_intruders(result: Measurement, consumers: int, processes: int) -> None:
    if consumers > processes + 1:  # the workers, and this script's broker (it enqueued)
        result.notes.append(
            f"WARNING: {consumers - processes - 1} Dramatiq consumer(s) besides ours used Redis db 12; "
            "they take messages away: the figures are not valid"
        )


def print_measurement(m: Measurement, baseline: Measurement | None) -> None:
    print(f"\n== {m.label}: {m.finished:,}/{m.count:,} finished")
    print(f"   sending {m.count:,} messages took {m.enqueue_s:.2f} s ({m.count / m.enqueue_s:,.0f} msg/s)")
    line = (
        f"   rate, first..last finish: {m.rate_first_to_last:,.0f}/s; steady 10%..90%: {m.rate_steady:,.0f}/s"
    )
    if m.rate_db:
        line += f"; exact from started_at/finished_at: {m.rate_db:,.0f}/s"
    print(line)
    if baseline is not None and baseline.rate_steady:
        print(
            f"   = {100 * m.rate_steady / baseline.rate_steady:.0f}% of the bare no-op actor "
            f"({baseline.rate_steady:,.0f}/s); goal {GOAL_RUNS_PER_S:,.0f}/s"
        )
    if m.statuses:
        print(f"   statuses: {m.statuses}")
    if m.run_latency_ms[0]:
        p50, p99, mean = m.run_latency_ms
        print(f"   one run, claimed to finished: p50 {p50:.1f} ms, p99 {p99:.1f} ms, mean {mean:.1f} ms")
    print(f"   peak RSS per worker process: {m.peak_rss_mb:.0f} MiB")
    if m.cpu and m.window_s:
        runs = 0.8 * m.count
        total = sum(m.cpu.values())
        print(f"   CPU between 10% and 90% done ({m.window_s:.1f} s), per run:")
        for name, seconds in sorted(m.cpu.items(), key=lambda item: -item[1]):
            print(
                f"     {1e6 * seconds / runs:8.0f} us  {100 * seconds / total if total else 0:4.0f}%  {name}"
            )
        print(
            f"     {1e6 * total / runs:8.0f} us  total: {total / m.window_s:.2f} of the 2 cores "
            f"(at most {2 * runs / total:,.0f} runs/s if the machine were ours alone)"
        )
        print(
            f"   Postgres connections opened meanwhile: {m.sessions_opened:,}"
            + (
                " (pool overflow churn: a pool smaller than the worker's threads)"
                if m.sessions_opened > 10
                else ""
            )
        )
    if m.statements:
        parts = ", ".join(f"{n:.2f} {kind}" for kind, n in sorted(m.statements.items(), key=lambda i: -i[1]))
        print(
            f"   Postgres statements per run (pg_stat_statements): {sum(m.statements.values()):.2f}: {parts}"
        )
    for note in m.notes:
        print(f"   NOTE: {note}")
    if m.profile:
        print("   py-spy profile of one worker process:")
        print("     " + m.profile.replace("\n", "\n     "))
