"""Provider rate limits: one LLM_RPM / LLM_TPM budget for every worker process, and 429s waited out.

The budget is a Redis token bucket, one script call per model call (`ProviderBudget`), not
Dramatiq's rate limiters: those answer "acquired or not" for one unit, so a caller that must
wait can only poll, and they have no notion of a call costing `max_tokens` tokens. Here a call
*reserves* its cost at once (the bucket may go into debt) and the script answers how long the
reservation has to wait for the bucket to refill: the caller sleeps exactly that long, once —
no busy loop, no thundering herd, callers served in arrival order. Time is Redis' own clock
(`TIME`), so workers on several hosts share one budget. The bucket holds at most half a
second of budget (`BURST_MS`), so no 10 s window sees more than 105% of it.

Tokens are charged as the call's `max_tokens` up front and corrected by what the provider
reports once it answers. A call that cannot get its turn before the run's deadline gives its
reservation back and fails the attempt as a timeout.

A 429 (`ProviderRateLimited`) is waited out inside the same model call, as long as the
provider's `Retry-After` / `x-ratelimit-reset-*` say (capped by the deadline), and pauses the
shared budget for everyone as long; it does not use up one of the run's retries. A 429 whose
error code is `insufficient_quota` fails the run at once with `provider_quota`.

Time spent waiting is added to the step's `waitedMs` (the current `ModelCall`, registered by
`track_call`, a `before_call` hook of the runtime).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from app.errors import ProviderQuota, ProviderRateLimited, RunTimeout
from app.metrics import PROVIDER_429S, PROVIDER_BUDGET_WAIT
from app.providers.base import ChatMessage, Completion, ModelProvider

if TYPE_CHECKING:
    from redis import Redis

    from app.agents.steps import ModelCall

logger = logging.getLogger(__name__)

BUDGET_KEY = "agentsched:llm:budget"
#: Calls waiting for the budget or a 429 now: member per thread, score = when its wait ends (ms).
WAITING_KEY = "agentsched:llm:waiting"
#: 429s received per UTC day (a counter per day, kept a week).
RATE_LIMITED_KEY_PREFIX = "agentsched:llm:429:"
#: The bucket holds this many milliseconds' worth of budget (the largest burst).
BURST_MS = 500
#: A 429 that names no wait is retried after 1 s, then 2, 4, ... up to this (seconds).
MAX_UNNAMED_429_WAIT_S = 30.0

# Reserve (requests, tokens); answers the wait in ms (a string: Lua numbers are doubles).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local need_r, need_t, burst_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[1], 'r', 't', 'ts', 'pause')
local last = tonumber(state[3]) or now
local elapsed = math.max(0, now - last)
local wait = 0
local r, tk = 0, 0
if rpm > 0 then
    local cap = math.max(1, rpm * burst_ms / 60000)
    r = math.min(cap, (tonumber(state[1]) or cap) + elapsed * rpm / 60000) - need_r
    if r < 0 then wait = math.max(wait, -r * 60000 / rpm) end
end
if tpm > 0 then
    local cap = math.max(1, tpm * burst_ms / 60000)
    tk = math.min(cap, (tonumber(state[2]) or cap) + elapsed * tpm / 60000) - need_t
    if tk < 0 then wait = math.max(wait, -tk * 60000 / tpm) end
end
local pause = tonumber(state[4]) or 0
if pause > now then wait = math.max(wait, pause - now) end
redis.call('HSET', KEYS[1], 'r', tostring(r), 't', tostring(tk), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 3600000)
return tostring(wait)
"""

# Give back (requests, tokens): a reservation not used, or tokens the provider did not count.
_GIVE_BACK = """
local r = tonumber(redis.call('HGET', KEYS[1], 'r') or '0') + tonumber(ARGV[1])
local tk = tonumber(redis.call('HGET', KEYS[1], 't') or '0') + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'r', tostring(r), 't', tostring(tk))
return 1
"""

# Nobody calls before `ARGV[1]` ms from now (a 429 said so).
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local pause = tonumber(redis.call('HGET', KEYS[1], 'pause') or '0')
if until_ms > pause then redis.call('HSET', KEYS[1], 'pause', tostring(until_ms)) end
redis.call('PEXPIRE', KEYS[1], 3600000)
return 1
"""


class ProviderBudget:
    """The shared LLM_RPM / LLM_TPM bucket (0 or None: that dimension is unlimited)."""

    def __init__(self, client: Redis, *, rpm: int | None, tpm: int | None, key: str = BUDGET_KEY) -> None:
        self.client = client
        self.rpm = rpm or 0
        self.tpm = tpm or 0
        self.key = key

    def reserve(self, tokens: int) -> float:
        """Reserve one request and `tokens` tokens; the seconds to wait before calling."""
        if not (self.rpm or self.tpm):
            return 0.0
        wait_ms = self.client.eval(_RESERVE, 1, self.key, self.rpm, self.tpm, 1, tokens, BURST_MS)
        return float(wait_ms) / 1000

    def give_back(self, requests: float, tokens: float) -> None:
        if (requests and self.rpm) or (tokens and self.tpm):
            self.client.eval(_GIVE_BACK, 1, self.key, requests, tokens)

    def pause(self, seconds: float) -> None:
        self.client.eval(_PAUSE, 1, self.key, int(seconds * 1000))


_current = threading.local()


def track_call(call: ModelCall) -> None:
    """`before_call` hook: the call whose `waited_ms` this thread's waits add to."""
    _current.call = call


def _add_waited(seconds: float) -> None:
    call = getattr(_current, "call", None)
    if call is not None and seconds > 0:
        call.waited_ms += round(seconds * 1000)


class WaitBoard:
    """Who is waiting now (for `runs waiting for the provider budget`), kept in Redis."""

    def __init__(self, client: Redis | None) -> None:
        self.client = client
        self._prefix = f"{socket.gethostname()}:{os.getpid()}:"

    def sleep(self, seconds: float, reason: str) -> None:
        member = self._prefix + str(threading.get_ident())
        if self.client is not None:
            try:
                self.client.zadd(WAITING_KEY, {member: (time.time() + seconds) * 1000})
            except RedisError:
                logger.debug("could not record a wait", exc_info=True)
        PROVIDER_BUDGET_WAIT.labels(reason).inc(seconds)
        time.sleep(seconds)
        _add_waited(seconds)
        if self.client is not None:
            try:
                self.client.zrem(WAITING_KEY, member)
            except RedisError:
                logger.debug("could not record the end of a wait", exc_info=True)

    def count_429(self) -> None:
        if self.client is None:
            return
        key = RATE_LIMITED_KEY_PREFIX + time.strftime("%Y-%m-%d", time.gmtime())
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, 8 * 86_400)
            pipe.execute()
        except RedisError:
            logger.debug("could not count a 429", exc_info=True)


def rate_limited_today(client: Redis, day: str) -> int:
    """429s the provider answered on `day` (UTC, YYYY-MM-DD), across all workers."""
    return int(client.get(RATE_LIMITED_KEY_PREFIX + day) or 0)


def waiting_for_budget(client: Redis) -> int:
    """Model calls waiting now for the provider budget or a 429's wait, across all workers."""
    now_ms = time.time() * 1000
    client.zremrangebyscore(WAITING_KEY, "-inf", now_ms - 60_000)  # left by dead processes
    return int(client.zcount(WAITING_KEY, now_ms, "+inf"))


class RateLimitedProvider:
    """Waits for the shared budget before each call and waits out 429s, within the deadline."""

    def __init__(
        self,
        inner: ModelProvider,
        budget: ProviderBudget | None,
        *,
        board: WaitBoard | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.budget = budget
        self.board = board or WaitBoard(budget.client if budget else None)
        self.monotonic = monotonic

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def complete(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, timeout_s: float, **kwargs: Any
    ) -> Completion:
        deadline = self.monotonic() + timeout_s
        unnamed_wait_s = 1.0
        while True:
            self._wait_for_budget(max_tokens, deadline)
            remaining = deadline - self.monotonic()
            if remaining <= 0:
                raise RunTimeout("the run exceeded its timeout waiting for the provider budget")
            try:
                completion = self.inner.complete(
                    messages, max_tokens=max_tokens, timeout_s=remaining, **kwargs
                )
            except ProviderRateLimited as exc:
                PROVIDER_429S.labels(exc.error_code or "rate_limited").inc()
                self.board.count_429()
                if exc.error_code == "insufficient_quota":
                    raise ProviderQuota(f"the provider account is out of quota: {exc.message}") from exc
                wait_s = exc.retry_after_s
                if wait_s is None:
                    wait_s, unnamed_wait_s = unnamed_wait_s, min(unnamed_wait_s * 2, MAX_UNNAMED_429_WAIT_S)
                self._wait_out_429(wait_s, deadline, exc)
                continue
            self._correct_tokens(max_tokens, completion)
            return completion

    def _wait_for_budget(self, max_tokens: int, deadline: float) -> None:
        if self.budget is None:
            return
        try:
            wait_s = self.budget.reserve(max_tokens)
        except RedisError:
            logger.warning("provider budget: Redis unreachable; calling without it", exc_info=True)
            return
        if wait_s <= 0:
            return
        if wait_s >= deadline - self.monotonic():
            self._give_back(1, max_tokens)
            raise RunTimeout(
                f"the provider budget (LLM_RPM/LLM_TPM) has no room for this call within the run's "
                f"deadline (next room in {wait_s:.1f} s)"
            )
        self.board.sleep(wait_s, "budget")

    def _wait_out_429(self, wait_s: float, deadline: float, exc: ProviderRateLimited) -> None:
        if self.budget is not None:
            try:
                self.budget.pause(wait_s)
            except RedisError:
                logger.debug("could not pause the provider budget", exc_info=True)
        if wait_s >= deadline - self.monotonic():
            raise RunTimeout(
                f"the provider rate-limited the call (429) for {wait_s:.1f} s, past the run's deadline"
            ) from exc
        logger.info("model provider answered 429; waiting %.2f s as it asks, then calling again", wait_s)
        self.board.sleep(wait_s, "429")

    def _correct_tokens(self, charged: int, completion: Completion) -> None:
        if self.budget is None or not self.budget.tpm:
            return
        self._give_back(0, charged - completion.total_tokens)

    def _give_back(self, requests: float, tokens: float) -> None:
        assert self.budget is not None
        try:
            self.budget.give_back(requests, tokens)
        except RedisError:
            logger.debug("could not give tokens back to the provider budget", exc_info=True)


def rate_limited(
    provider: ModelProvider, *, rpm: int | None, tpm: int | None, redis_url: str
) -> ModelProvider:
    """`provider` behind the shared budget (when LLM_RPM or LLM_TPM is set) and 429 handling."""
    from app.redis_client import shared_client

    client = shared_client(redis_url, socket_timeout=5, socket_connect_timeout=5)
    budget = ProviderBudget(client, rpm=rpm, tpm=tpm) if rpm or tpm else None
    return RateLimitedProvider(provider, budget, board=WaitBoard(client))
