"""The retry policy: the one place batchrun decides whether to try again.

tenacity is the only retry layer: litellm's `num_retries` and the OpenAI
SDK's `max_retries` are switched off in provider.py, so the simulator (or
the provider) sees exactly `attempts` requests per ticket.

`build_retrying(spec)` composes the policy from tenacity strategies:

    stop   stop_after_attempt(max_attempts) | stop_before_delay(max_elapsed_s)
           | stop_when_retry_after_over(max_retry_after_s): a server asking
           for a longer wait than that ends the ticket (as rate_limited)
           instead of sleeping for a day
    wait   the server's Retry-After when it gave one, else exponential
           backoff with full jitter
           (wait_random_exponential(initial_backoff_s, max_backoff_s))
    retry  only RETRYABLE: rate limit, timeout, connection, 5xx. A 4xx
           (TerminalError) and anything else, cancellation included, ends
           the ticket at once.

The engine drives it with `async for attempt in build_retrying(...)`.
"""

from __future__ import annotations

from typing import Awaitable, Callable, TypedDict

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from batchrun.errors import RetryableError
from batchrun.job.sections import RetrySpec

# The exception types worth another attempt; provider.py maps rate limits,
# timeouts, connection errors and 500/502/503/504 onto RetryableError.
RETRYABLE: tuple[type[BaseException], ...] = (RetryableError,)


class wait_retry_after_or(wait_base):
    """Honour the server's Retry-After (capped), else fall back to `fallback`."""

    def __init__(self, fallback: wait_base, cap_s: float) -> None:
        self.fallback = fallback
        self.cap_s = cap_s

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None and retry_after >= 0:
            return min(float(retry_after), self.cap_s)
        return self.fallback(retry_state)


class stop_when_retry_after_over(stop_base):
    """Stop when the server's Retry-After is longer than `cap_s`."""

    def __init__(self, cap_s: float) -> None:
        self.cap_s = cap_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        return retry_after is not None and retry_after > self.cap_s


class _SleepOption(TypedDict, total=False):
    sleep: Callable[[float], Awaitable[None] | None]  # absent: tenacity's own sleep


def build_retrying(
    spec: RetrySpec,
    *,
    before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None,
    sleep: Callable[[float], Awaitable[None] | None] | None = None,
) -> AsyncRetrying:
    """The retry controller for one ticket (build one per ticket)."""
    kwargs: _SleepOption = {}
    if sleep is not None:
        kwargs["sleep"] = sleep
    return AsyncRetrying(
        stop=(
            stop_after_attempt(spec.max_attempts)
            | stop_before_delay(spec.max_elapsed_s)
            | stop_when_retry_after_over(spec.max_retry_after_s)
        ),
        wait=wait_retry_after_or(
            wait_random_exponential(multiplier=spec.initial_backoff_s, max=spec.max_backoff_s),
            cap_s=spec.max_retry_after_s,
        ),
        retry=retry_if_exception_type(RETRYABLE),
        reraise=True,
        before_sleep=before_sleep,
        **kwargs,
    )
