"""Limits on how hard a run pushes: requests in flight, a shared pause, money.

Concurrency is a count of tickets in flight: the engine runs exactly
`concurrency` workers, each holding at most one ticket (and so at most one
request) at a time, so no semaphore is needed for it. What this module adds:

    RequestGate()
        .wait_for_permit()   awaited before every attempt: returns at once
                             unless the shared pause is on
        .pause_all(s)        after a 429 with Retry-After: no attempt starts
                             for `s` seconds, in any worker, instead of each
                             one hammering the server on its own schedule

    CostBudget(max_usd, spent_before)   max_cost_usd as a hard cap
        .fits(bound) / .reserve(bound)   a request is sent only when spent +
                                 reserved + its upper bound stays within it
        .release(amount), .charge(cost)  its reservation swapped for what it cost
        .observe(estimate, counted)      calibration: the provider's prompt-token
                                 count against the client's estimate
        .prompt_factor           what prompt estimates are multiplied by

    RateLimiter(rpm, tpm)        requests and tokens per minute as token
                                 buckets (TokenBucket), corrected by actual
                                 usage and by the provider's rate-limit
                                 headers (parse_rate_limit_headers)

    AdaptiveConcurrency(min, max)  AIMD for concurrency = "auto"
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import anyio

from batchrun.providers.error_mapping import parse_wait, provider_headers


class RequestGate:
    def __init__(self) -> None:
        self._resume_at = 0.0  # anyio clock time before which no attempt starts

    def pause_all(self, seconds: float) -> None:
        self._resume_at = max(self._resume_at, anyio.current_time() + seconds)

    async def wait_for_permit(self) -> None:
        while (delay := self._resume_at - anyio.current_time()) > 0:
            await anyio.sleep(delay)


class CostBudget:
    """`max_cost_usd` as a hard cap: what the provider bills never passes it, at any concurrency.

    A request is sent only when spent + reserved + its own upper bound stays
    within the budget (`fits`, `reserve`); the reservation is held while it is
    in flight and swapped for what its answer cost when the answer arrives
    (`release`, `charge`). `spent` starts with the cost already on disk from
    earlier runs, so a resumed run with the same budget sends nothing more, and
    a larger budget lets it continue.

    The upper bound (the coordinator asks the provider for it) is the prompt
    estimate (litellm.token_counter) x `prompt_factor` + the most output
    tokens the request may use, at the dearest price it may be billed at. The
    client's estimate is not what the provider counts (another tokenizer,
    hidden system tokens), so the factor is learned: START_FACTOR until the
    provider's first count, then the highest ratio of its counts to the
    estimates seen (`observe`) times 1 + MARGIN. A model without a price is
    bounded by the mean cost so far.
    """

    START_FACTOR = 1.5  # before the provider counted anything: a tokenizer may count half as much again
    MARGIN = 0.1  # over the highest ratio observed

    def __init__(self, max_usd: float, spent_before: float = 0.0) -> None:
        self.max_usd = max_usd
        self.spent = spent_before  # USD already paid, this run and earlier ones
        self.reserved = 0.0  # USD held for requests in flight
        self._costs = 0.0  # this run: sum and count of actual costs, for the mean
        self._count = 0
        self.max_ratio: float | None = None  # the highest provider count / client estimate seen
        self.observations = 0

    @property
    def mean_cost(self) -> float | None:
        return self._costs / self._count if self._count else None

    @property
    def left(self) -> float:
        """What is neither spent nor reserved."""
        return self.max_usd - self.spent - self.reserved

    @property
    def prompt_factor(self) -> float:
        """What a prompt estimate is multiplied by in an upper bound (class docstring)."""
        if self.max_ratio is None:
            return self.START_FACTOR
        return self.max_ratio * (1.0 + self.MARGIN)

    def observe(self, estimate: int, counted: int) -> None:
        """The provider counted `counted` prompt tokens where the client estimated `estimate`."""
        if estimate > 0 and counted > 0:
            ratio = counted / estimate
            self.max_ratio = ratio if self.max_ratio is None else max(self.max_ratio, ratio)
            self.observations += 1

    def bound_or_mean(self, bound: float | None) -> float:
        """`bound`, or for a model without a price the mean cost so far (0 before any)."""
        return bound if bound is not None else (self.mean_cost or 0.0)

    def fits(self, amount: float) -> bool:
        return self.spent + self.reserved + amount <= self.max_usd

    def reserve(self, amount: float) -> None:
        self.reserved += amount

    def release(self, amount: float) -> None:
        self.reserved = max(self.reserved - amount, 0.0)

    def charge(self, cost: float) -> None:
        """An answer cost `cost` (USD the provider bills)."""
        self.spent += cost
        self._costs += cost
        self._count += 1

    def try_reserve(self, estimate: float | None) -> float | None:
        """The amount reserved, or None when it would pass the budget (one call: fits + reserve)."""
        amount = self.bound_or_mean(estimate)
        if not self.fits(amount):
            return None
        self.reserve(amount)
        return amount

    def settle(self, reserved: float, actual: float | None) -> None:
        """Swap a reservation for what was spent."""
        self.release(reserved)
        if actual is not None:
            self.charge(actual)


class TokenBucket:
    """A bucket refilled continuously at `per_minute / 60` per second.

    `capacity` is the burst allowed after a quiet spell (default: one second's
    worth, at least 1, so a run starts smoothly instead of firing a whole
    minute's allowance at once). `take(n)` removes n (going negative is
    allowed: the debt delays later takers) and `wait_s(n)` says how long until
    n would be available. `give(n)` returns an over-estimate.
    """

    def __init__(self, per_minute: float, *, capacity: float | None = None, now: float = 0.0) -> None:
        self.rate = per_minute / 60.0  # per second
        self.capacity = capacity if capacity is not None else max(1.0, self.rate)
        self.tokens = self.capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait_s(self, n: float, now: float) -> float:
        self._refill(now)
        need = min(n, self.capacity) - self.tokens  # a request bigger than the bucket waits for a full one
        return max(0.0, need / self.rate) if self.rate > 0 else float("inf")

    def take(self, n: float, now: float) -> None:
        self._refill(now)
        self.tokens -= n

    def give(self, n: float, now: float) -> None:
        self._refill(now)
        self.tokens = min(self.capacity, self.tokens + n)

    def drain_until(self, seconds: float, now: float) -> None:
        """The server says nothing is left for `seconds`: empty the bucket so."""
        self._refill(now)
        self.tokens = min(self.tokens, -seconds * self.rate)


class RateLimiter:
    """Requests and tokens per minute, as two token buckets, plus what the
    provider's rate-limit headers say.

        await acquire(tokens)        before each attempt: one request and its
                                     estimated tokens (prompt + max_tokens)
        correct(estimated, actual)   after it: give back or take the difference
        observe(headers)             x-ratelimit-remaining/reset-* (OpenAI) or
                                     anthropic-ratelimit-*: when the provider
                                     says the allowance is spent, wait for its
                                     reset instead of collecting a 429

    `headroom` (0.98) paces slightly under the limit so that clock skew
    between us and the server does not turn into 429s.
    """

    def __init__(self, rpm: float | None, tpm: float | None, *, headroom: float = 0.98) -> None:
        now = anyio.current_time()
        self.requests = TokenBucket(rpm * headroom, now=now) if rpm else None
        self.tokens = TokenBucket(tpm * headroom, capacity=max(1.0, tpm * headroom / 60.0), now=now) if tpm else None
        self.lock = anyio.Lock()

    async def acquire(self, tokens: float = 0.0) -> None:
        async with self.lock:  # first come, first served
            while True:
                now = anyio.current_time()
                wait = 0.0
                if self.requests is not None:
                    wait = max(wait, self.requests.wait_s(1, now))
                if self.tokens is not None and tokens:
                    wait = max(wait, self.tokens.wait_s(tokens, now))
                if wait <= 0:
                    break
                await anyio.sleep(wait)
            if self.requests is not None:
                self.requests.take(1, now)
            if self.tokens is not None and tokens:
                self.tokens.take(tokens, now)

    def correct(self, estimated: float, actual: float) -> None:
        if self.tokens is None:
            return
        now = anyio.current_time()
        if actual < estimated:
            self.tokens.give(estimated - actual, now)
        elif actual > estimated:
            self.tokens.take(actual - estimated, now)

    def observe(self, headers: "RateLimitHeaders") -> None:
        now = anyio.current_time()
        if self.requests is not None and headers.remaining_requests is not None \
                and headers.remaining_requests < 1 and headers.reset_requests_s:
            self.requests.drain_until(headers.reset_requests_s, now)
        if self.tokens is not None and headers.remaining_tokens is not None \
                and headers.remaining_tokens < 1 and headers.reset_tokens_s:
            self.tokens.drain_until(headers.reset_tokens_s, now)


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    remaining_requests: float | None = None
    remaining_tokens: float | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None

    @property
    def empty(self) -> bool:
        return self.remaining_requests is None and self.remaining_tokens is None


#: OpenAI's reset durations ("1s", "6m0s", "120ms"), plain seconds or an ISO-8601 time (Anthropic's
#: *-reset headers): the one wait parser (providers/error_mapping.parse_wait)
parse_reset = parse_wait


def parse_rate_limit_headers(headers: "Mapping[str, str] | None") -> RateLimitHeaders:
    """Read OpenAI-style and Anthropic-style rate-limit headers (any case,
    with or without litellm's "llm_provider-" prefixes: error_mapping.provider_headers)."""
    lower = provider_headers(headers)  # the one header reader: any case, any llm_provider- prefixes
    if not lower:
        return RateLimitHeaders()

    def number(*names: str) -> float | None:
        for name in names:
            if name in lower:
                try:
                    return float(lower[name])
                except ValueError:
                    return None
        return None

    def reset(*names: str) -> float | None:
        for name in names:
            if name in lower:
                return parse_reset(lower[name])
        return None

    return RateLimitHeaders(
        remaining_requests=number("x-ratelimit-remaining-requests", "anthropic-ratelimit-requests-remaining"),
        remaining_tokens=number("x-ratelimit-remaining-tokens", "anthropic-ratelimit-tokens-remaining",
                                "anthropic-ratelimit-input-tokens-remaining"),
        reset_requests_s=reset("x-ratelimit-reset-requests", "anthropic-ratelimit-requests-reset"),
        reset_tokens_s=reset("x-ratelimit-reset-tokens", "anthropic-ratelimit-tokens-reset",
                             "anthropic-ratelimit-input-tokens-reset"),
    )


class AdaptiveConcurrency:
    """AIMD for `concurrency = "auto"`: find the concurrency a server sustains.

    Results are judged in windows of `limit` results (one round trip of every
    slot). After a window:
      * any 429 (or timeout, 5xx) in it: multiply the limit by `decrease` (0.7);
      * its median latency above `tolerance` (1.3) x the best window median
        seen so far (the server is queueing): multiply the limit by best /
        median (the share of the latency that is service, not queueing),
        but by no less than 0.5 and no more than `decrease`;
      * otherwise: add 1 (additive increase), or, until the first decrease,
        double it (slow start, as TCP does), so a run finds the server's
        capacity in a few windows instead of hundreds.
    After a doubling or a decrease, results of requests that started before
    the change (their end, from `clock`, minus their latency) are not judged:
    they measure the old limit, and judging them made slow start double past
    the server's capacity and then cut several times for one overload.
    Always within [minimum, maximum]. `history` keeps the limit after each
    window; `settled` is the median of the last 20 of them: what the summary
    reports as the concurrency the run settled on.
    """

    def __init__(self, minimum: int, maximum: int, *, start: int | None = None, decrease: float = 0.7,
                 tolerance: float = 1.3, slow_start: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.limit = max(minimum, min(maximum, start if start is not None else minimum))
        self.decrease = decrease
        self.tolerance = tolerance
        self.best_median: float | None = None
        self.slow_start = slow_start
        self.clock = clock
        self.history: list[int] = []
        self._latencies: list[float] = []
        self._results = 0  # results in the current window
        self._throttled = False
        self._judge_from = float("-inf")  # results of requests started before this are not judged

    def on_result(self, latency_ms: float | None, rate_limited: bool) -> int:
        """Count one finished attempt; returns the (possibly new) limit."""
        if rate_limited:
            self._throttled = True
        elif latency_ms is not None:
            if self.clock() - latency_ms / 1000.0 < self._judge_from:
                return self.limit  # sent under the limit before the last big change
            self._latencies.append(latency_ms)
        self._results += 1
        if self._results >= self.limit:
            self._adjust()
        return self.limit

    def _adjust(self) -> None:
        latencies = sorted(self._latencies)
        median = latencies[len(latencies) // 2] if latencies else None
        if median is not None and (self.best_median is None or median < self.best_median):
            self.best_median = median
        overloaded = median is not None and self.best_median is not None and \
            median > self.tolerance * self.best_median
        before = self.limit
        if self._throttled:
            self.limit = max(self.minimum, int(self.limit * self.decrease))
            self.slow_start = False
        elif overloaded:
            assert median is not None and self.best_median is not None  # what `overloaded` says
            factor = max(0.5, min(self.decrease, self.best_median / median))
            self.limit = max(self.minimum, int(self.limit * factor))
            self.slow_start = False
        elif self.slow_start:
            self.limit = min(self.maximum, self.limit * 2)
        else:
            self.limit = min(self.maximum, self.limit + 1)
        if abs(self.limit - before) > 1:
            self._judge_from = self.clock()
        self.history.append(self.limit)
        self._latencies = []
        self._results = 0
        self._throttled = False

    @property
    def settled(self) -> int:
        recent = sorted(self.history[-20:]) or [self.limit]
        return recent[len(recent) // 2]
