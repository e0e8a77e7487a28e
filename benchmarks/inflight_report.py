"""The printed report of `benchmarks.inflight`: throughput against the ideal, where a run's time
goes, what the worker threads do, CPU per run, RSS and connections."""

from __future__ import annotations

import argparse
import os

from benchmarks.common import (
    median,
    pg_setting,
)
from benchmarks.inflight_model import (
    GOAL_IN_FLIGHT,
    GOAL_RSS_MB,
    GOAL_SHARE_OF_IDEAL,
    STALE_RUNNING_S,
    WORKER_GROUP,
    Result,
    Sample,
)


def report(args: argparse.Namespace, result: Result) -> dict[str, float]:
    samples = result.samples
    total_threads = args.processes * args.threads
    print(f"\n== {result.label}: {args.runs:,} runs, model delay {args.delay:g} s")
    figures: dict[str, float] = {}
    if not samples:
        print("   no samples")
        return figures
    print(f"   statuses: {result.statuses}")
    start = next((s for s in samples if s.finished >= 0.1 * args.runs), None)
    end = next((s for s in samples if s.finished >= args.runs - total_threads), samples[-1])
    # Plan, two steps, final answer: what the model server's plan makes a run do. Measured over the
    # whole run when every run finished (the steady window's edges cut runs in half).
    calls_per_run = 4.0
    finished_all, answered_all = samples[-1].finished, samples[-1].model_answered
    if finished_all >= args.runs and answered_all > 0:
        calls_per_run = answered_all / finished_all
    ideal_latency = calls_per_run * args.delay
    ideal = total_threads / ideal_latency
    if start is None or end.t <= start.t:
        print("   no steady state reached (too few runs finished, or too few runs for the threads)")
    else:
        window = [s for s in samples if start.t <= s.t <= end.t]
        rate = (end.finished - start.finished) / (end.t - start.t)
        # A thread runs one run at a time: more 'running' rows than threads are stuck ones.
        running = median([min(s.running - s.stale, total_threads) for s in window])
        model = median([s.model_in_flight for s in window])
        figures = {"rate": rate, "ideal": ideal, "running": running, "model": model}
        print(f"   steady state ({end.t - start.t:.1f} s, {start.finished:,}..{end.finished:,} finished):")
        print(
            f"     throughput {rate:.1f} runs/s = {100 * rate / ideal:.0f}% of ideal {ideal:.1f} runs/s "
            f"({total_threads} threads / ({calls_per_run:.2f} calls x {args.delay:g} s))"
        )
        print(
            f"     runs in flight (status running, less stuck ones): median {running:.0f}, "
            f"max {max(min(s.running - s.stale, total_threads) for s in window)}; "
            f"model calls in flight: median {model:.0f}, "
            f"max {max(s.model_in_flight for s in window)}"
        )
        print(
            f"     runs parked by the per-user limit ({args.users} users): median "
            f"{median([s.parked for s in window]):.0f}, max {max(s.parked for s in window)}"
        )
        stuck = max(max(s.running - total_threads, s.stale) for s in window)
        if stuck > 0:
            print(
                f"     plus up to {stuck} runs stuck 'running' (beyond the threads, or started over "
                f"{STALE_RUNNING_S} s ago)"
            )
        _report_model_time(args, start, end, result.step_latency_ms, rate, total_threads / calls_per_run)
        verdict = running >= GOAL_IN_FLIGHT and rate >= GOAL_SHARE_OF_IDEAL * ideal
        print(
            f"     goal >= {GOAL_IN_FLIGHT} in flight at >= {GOAL_SHARE_OF_IDEAL:.0%} of ideal: "
            f"{'met' if verdict else 'NOT met'}"
        )
    p50, p99, queued_wait = result.latency_s
    print(
        f"   one run, claimed to finished: p50 {p50:.2f} s, p99 {p99:.2f} s (ideal {ideal_latency:.2f} s); "
        f"mean wait in queue {queued_wait:.1f} s"
    )
    if result.timeline_s:
        claim, around, call, between, finish = result.timeline_s
        print(
            f"   a run's time, mean s: claim to first step {claim:.3f}; per step: in the model call "
            f"{call:.3f}, outside it (start written, deltas flushed) {around:.3f}; step end to next "
            f"start {between:.3f}; last step to run end {finish:.3f}"
        )
    if result.pool_holds is not None:
        rate, mean_ms, p50_ms, p99_ms = result.pool_holds
        print(
            f"   pooled Postgres connections (--pool-holds, busiest reports): {rate:.0f} check-outs a "
            f"second per process, each held {mean_ms:.1f} ms on average (p50 {p50_ms:.1f}, "
            f"p99 up to {p99_ms:.0f})"
        )
    _report_threads(result)
    _report_cpu(result)
    _report_budget(result, figures)
    columns = max(len(s.rss_mb) for s in samples)
    sampled = [max(s.rss_mb[i] for s in samples if len(s.rss_mb) > i) for i in range(columns)]
    print(
        f"   RSS per worker process: peak (VmHWM) {', '.join(f'{m:.0f}' for m in result.peak_rss_mb)} MiB; "
        f"largest sampled {', '.join(f'{m:.0f}' for m in sampled)} MiB (goal <= {GOAL_RSS_MB:.0f} MiB)"
    )
    print(
        f"   Postgres connections to the benchmark db: max {max(s.connections for s in samples)} "
        f"(max_connections {pg_setting('max_connections')}, worker role limit "
        f"{args.role_connection_limit or 'none'})"
    )
    errors = {k: v for k, v in result.errors.items() if v}
    print(f"   worker log: {result.worker_log}; {errors or 'no errors'}")
    intruders = max(s.consumers for s in samples) - args.processes - 1  # and our enqueuing broker
    if intruders > 0:
        print(
            f"   WARNING: {intruders} Dramatiq consumer(s) besides ours used Redis db 12 during the run; "
            "they take messages away (runs stay queued): the figures are not valid"
        )
    for note in result.notes:
        print(f"   NOTE: {note}")
    if args.timeline:
        _print_timeline(samples)
    return figures


def _report_model_time(
    args: argparse.Namespace,
    start: Sample,
    end: Sample,
    step_latency_ms: float,
    rate: float,
    calls_per_s: float,
) -> None:
    """Where a model call's time goes: the server's side (a starved server stretches the delay)
    against the workers' (a step's latency_ms: from the request to the answer's last piece read)."""
    answered = end.model_answered - start.model_answered
    ticks = end.model_lag_ticks - start.model_lag_ticks
    if answered <= 0 or ticks <= 0:
        return
    served = (end.model_served_s - start.model_served_s) / answered
    lag_ms = 1000 * (end.model_lag_s - start.model_lag_s) / ticks
    print(
        f"     a model call: {served:.2f} s at the server (delay {args.delay:g} s; its loop's timers "
        f"{lag_ms:.1f} ms late on average), {step_latency_ms / 1000:.2f} s in the worker (steps' "
        f"latency, mean)"
    )
    if served > args.delay:
        print(
            f"     (at the server's own {served:.2f} s a call the ideal is "
            f"{calls_per_s / served:.1f} runs/s; the workers reached "
            f"{100 * rate * served / calls_per_s:.0f}% of that)"
        )


def _report_threads(result: Result) -> None:
    if not result.dumps:
        return
    threads = sum(result.threads.values()) / result.dumps
    print(
        f"   worker threads of one process, mean of {result.dumps} py-spy dumps in the steady state "
        f"({threads:.0f} threads; {result.dump_s / (result.dumps + result.failed_dumps):.1f} s a dump, "
        f"{result.failed_dumps} failed):"
    )
    for state, count in result.threads.most_common():
        print(f"     {count / result.dumps:6.1f}  {state}")


def _report_cpu(result: Result) -> None:
    seconds, runs = result.cpu_window
    if not result.cpu_s or not runs:
        return
    total = sum(result.cpu_s.values())
    print(f"   CPU in the steady state ({seconds:.1f} s, {runs:,} runs), per run:")
    for name, cpu in sorted(result.cpu_s.items(), key=lambda item: -item[1]):
        print(f"     {1000 * cpu / runs:7.2f} ms  {name}")
    print(
        f"     {1000 * total / runs:7.2f} ms  total = {total / seconds:.2f} of the machine's "
        f"{os.cpu_count()} cores busy with this benchmark"
    )
    if result.sessions_opened:
        print(
            f"   Postgres connections opened in the steady state: {result.sessions_opened:,} "
            f"({result.sessions_opened / runs:.1f} a run: pool overflow connections closed and reopened)"
        )


def _report_budget(result: Result, figures: dict[str, float]) -> None:
    """What the workers could spend a run at the goal's rate, given what the rest costs a run here.

    The rest (Postgres, the model server, Redis) shares the machine's cores with the workers;
    at the goal's throughput its measured CPU a run takes that many cores, and what is left,
    spread over the runs, is all the workers may use, with no core ever idle. A bound, read
    at this scenario's cost per run (a busier machine may cost more or less a run)."""
    _, runs = result.cpu_window
    if not result.cpu_s or not runs or not figures:
        return
    cores = os.cpu_count() or 1
    worker_ms = 1000 * result.cpu_s.get(WORKER_GROUP, 0.0) / runs
    rest_ms = 1000 * sum(cpu for name, cpu in result.cpu_s.items() if name != WORKER_GROUP) / runs
    goal_rate = GOAL_SHARE_OF_IDEAL * figures["ideal"]
    rest_cores = goal_rate * rest_ms / 1000
    left_ms = 1000 * (cores - rest_cores) / goal_rate
    figures.update(worker_ms=worker_ms, rest_ms=rest_ms, left_ms=left_ms)
    print(
        f"   at the goal's {goal_rate:.1f} runs/s the rest ({rest_ms:.2f} ms a run: Postgres, model "
        f"server, Redis) would keep {rest_cores:.2f} of the {cores} cores busy, leaving the workers "
        f"at most {left_ms:.2f} ms of CPU a run (they used {worker_ms:.2f})"
    )


def print_summary(summary: list[tuple[str, dict[str, float], Result]]) -> None:
    """Each scenario's figures, then the product's as a share of each same-resource baseline's."""
    print("\nsummary:")
    for label, figures, result in summary:
        if figures:
            print(
                f"  {label}: {figures['rate']:.1f} runs/s of ideal {figures['ideal']:.1f} "
                f"({100 * figures['rate'] / figures['ideal']:.0f}%), {figures['running']:.0f} running, "
                f"{figures['model']:.0f} model calls in flight, worker CPU "
                f"{figures.get('worker_ms', 0.0):.2f} ms a run, peak RSS "
                f"{max(result.peak_rss_mb, default=0):.0f} MiB"
            )
        else:
            print(f"  {label}: no steady state; statuses {result.statuses}")
    products = [(label, figures) for label, figures, result in summary if figures and not result.baseline]
    baselines = [(label, figures) for label, figures, result in summary if figures and result.baseline]
    for label, figures in products:
        for base_label, base in baselines:
            print(
                f"  {label} = {100 * figures['rate'] / base['rate']:.0f}% of the runs/s of "
                f"'{base_label}' (same run)"
            )


def _print_timeline(samples: list[Sample]) -> None:
    print("   timeline: t(s) running finished queued model_in_flight connections rss(MiB)")
    t0 = samples[0].t
    for s in samples[:: max(1, len(samples) // 40)]:
        print(
            f"     {s.t - t0:6.1f} {s.running:5d} {s.finished:6d} {s.queued:6d} {s.model_in_flight:5d} "
            f"{s.connections:4d}  {' '.join(f'{m:.0f}' for m in s.rss_mb)}"
        )
