"""Every Prometheus metric of agentsched, defined once, in one registry.

Counters and histograms are recorded in whichever process does the work (API, worker,
scheduler) and reach the API's ``/metrics`` through Redis (see :mod:`app.metrics_sharing`).
Gauges describe shared state (queue depth, scheduler heartbeats); the API sets them from Redis
when it is scraped, so they are never shared between processes.

To add a metric: define it here on :data:`REGISTRY` with a ``agentsched_`` name, bounded
labels, and (for a histogram) its buckets; record it where the work happens. Nothing else is
needed for it to appear on ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# Bucket bounds, in seconds.
RUN_DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
MODEL_CALL_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
LATENESS_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)
HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# -- counters

RUNS = Counter(
    "agentsched_runs",
    "Runs that reached an end, by final status (completed, failed, cancelled) and agent type.",
    ("status", "agent_type"),
    registry=REGISTRY,
)
MODEL_CALLS = Counter(
    "agentsched_model_calls",
    "Model calls, by outcome (ok, error, timeout).",
    ("outcome",),
    registry=REGISTRY,
)
TOKENS = Counter(
    "agentsched_tokens",
    "Model tokens as providers report them, by kind (prompt, completion, cached); "
    "cached tokens are part of prompt tokens.",
    ("kind",),
    registry=REGISTRY,
)

PROVIDER_429S = Counter(
    "agentsched_provider_rate_limited",
    "429 answers received from the model provider, by its error code (insufficient_quota fails "
    "the run; anything else is waited out).",
    ("code",),
    registry=REGISTRY,
)
PROVIDER_BUDGET_WAIT = Counter(
    "agentsched_provider_wait_seconds",
    "Seconds model calls waited before calling, for the shared LLM_RPM/LLM_TPM budget (budget) "
    "or as a 429 asked (429).",
    ("reason",),
    registry=REGISTRY,
)

# -- histograms

RUN_DURATION = Histogram(
    "agentsched_run_duration_seconds",
    "Duration of one attempt of a run, from its claim to its outcome, by status "
    "(completed, failed, cancelled, retrying).",
    ("status",),
    buckets=RUN_DURATION_BUCKETS_S,
    registry=REGISTRY,
)
MODEL_CALL_DURATION = Histogram(
    "agentsched_model_call_duration_seconds",
    "Latency of one model call, by outcome (ok, error, timeout).",
    ("outcome",),
    buckets=MODEL_CALL_BUCKETS_S,
    registry=REGISTRY,
)
SCHEDULE_LATENESS = Histogram(
    "agentsched_schedule_lateness_seconds",
    "Scheduled runs: time from their slot to the start of their first attempt.",
    buckets=LATENESS_BUCKETS_S,
    registry=REGISTRY,
)
HTTP_REQUEST_DURATION = Histogram(
    "agentsched_http_request_duration_seconds",
    "API requests, by method, route template and status code.",
    ("method", "route", "status"),
    buckets=HTTP_BUCKETS_S,
    registry=REGISTRY,
)

SCHEDULING_PASS_DURATION = Histogram(
    "agentsched_scheduling_pass_duration_seconds",
    "Duration of one scheduling pass (claiming due tasks and queueing their runs).",
    buckets=HTTP_BUCKETS_S,
    registry=REGISTRY,
)
SCHEDULE_SLOTS = Counter(
    "agentsched_schedule_slots",
    "Schedule slots handled by scheduling passes, by outcome (queued; skipped: the previous "
    "run still going; missed: older slots after downtime, never run).",
    ("outcome",),
    registry=REGISTRY,
)

# -- gauges (set by the API at scrape time, from Redis)

QUEUE_DEPTH = Gauge(
    "agentsched_queue_depth",
    "Run messages waiting in each priority's Redis queue, not yet taken by a worker.",
    ("priority",),
    registry=REGISTRY,
)
SCHEDULER_HEARTBEAT_AGE = Gauge(
    "agentsched_scheduler_heartbeat_age_seconds",
    "Seconds since the freshest scheduler heartbeat; +Inf when no scheduler is alive.",
    registry=REGISTRY,
)


def record_model_call(
    outcome: str,
    seconds: float,
    *,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cached_tokens: int = 0,
) -> None:
    """One model call ended (`outcome` ok, error or timeout) after `seconds`."""
    MODEL_CALLS.labels(outcome).inc()
    MODEL_CALL_DURATION.labels(outcome).observe(seconds)
    for kind, count in (
        ("prompt", prompt_tokens),
        ("completion", completion_tokens),
        ("cached", cached_tokens),
    ):
        if count > 0:
            TOKENS.labels(kind).inc(count)


def run_status(error_code: str | None) -> str:
    """The status a run ends in for an outcome's error code (as app.services.runs.finish says)."""
    if error_code is None:
        return "completed"
    return "cancelled" if error_code == "cancelled" else "failed"


def record_attempt(error_code: str | None, seconds: float, *, agent_type: str, retried: bool) -> None:
    """One attempt of a run ended after `seconds`: a retry follows, or the run ended."""
    RUN_DURATION.labels("retrying" if retried else run_status(error_code)).observe(seconds)
    if not retried:
        RUNS.labels(run_status(error_code), agent_type).inc()


def record_run_ended(error_code: str | None, agent_type: str) -> None:
    """A run ended without an attempt (cancelled before it started, no credits, ...)."""
    RUNS.labels(run_status(error_code), agent_type).inc()


def record_scheduling_pass(seconds: float, *, queued: int, skipped: int, missed: int) -> None:
    """One scheduling pass took `seconds` and handled these slots."""
    SCHEDULING_PASS_DURATION.observe(seconds)
    for outcome, count in (("queued", queued), ("skipped", skipped), ("missed", missed)):
        SCHEDULE_SLOTS.labels(outcome).inc(count)


def record_lateness(seconds: float) -> None:
    """A scheduled run started `seconds` after its slot."""
    SCHEDULE_LATENESS.observe(max(0.0, seconds))


# -- webhooks (app.webhooks)

WEBHOOK_DELIVERY_BUCKETS_S = (
    *(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    *(1800, 3600, 21600, 86400),
)

WEBHOOK_ATTEMPTS = Counter(
    "agentsched_webhook_attempts",
    "Webhook delivery attempts, by outcome (delivered, retrying, failed, gone, forbidden).",
    ("outcome",),
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "agentsched_webhook_deliveries",
    "Webhook deliveries that reached their final state, by outcome (delivered, failed).",
    ("outcome",),
    registry=REGISTRY,
)
#: An attempt's outcome -> the final outcome of its delivery (absent: the delivery goes on).
_FINAL_OUTCOMES = {"delivered": "delivered", "failed": "failed", "gone": "failed", "forbidden": "failed"}
WEBHOOK_DELIVERY_LATENCY = Histogram(
    "agentsched_webhook_delivery_latency_seconds",
    "Delivered webhooks: time from the run's end to the receiver's 2xx, retries included.",
    buckets=WEBHOOK_DELIVERY_BUCKETS_S,
    registry=REGISTRY,
)
WEBHOOK_REQUEST_DURATION = Histogram(
    "agentsched_webhook_request_duration_seconds",
    "One webhook POST, from connecting to the answer (or the timeout), by outcome.",
    ("outcome",),
    buckets=HTTP_BUCKETS_S,
    registry=REGISTRY,
)


def record_webhook_attempt(outcome: str, request_s: float | None, *, delivered_after_s: float | None) -> None:
    """One delivery attempt ended with `outcome`; `delivered_after_s` from the event when delivered."""
    WEBHOOK_ATTEMPTS.labels(outcome).inc()
    final = _FINAL_OUTCOMES.get(outcome)
    if final is not None:
        WEBHOOK_DELIVERIES.labels(final).inc()
    if request_s is not None:
        WEBHOOK_REQUEST_DURATION.labels(outcome).observe(request_s)
    if delivered_after_s is not None:
        WEBHOOK_DELIVERY_LATENCY.observe(max(0.0, delivered_after_s))


def record_webhook_deliveries_failed(count: int) -> None:
    """`count` deliveries failed without an attempt of their own (a 410 to another one)."""
    if count:
        WEBHOOK_DELIVERIES.labels("failed").inc(count)
