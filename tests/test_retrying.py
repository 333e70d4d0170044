"""Tests of the retry policy (`batchrun.retrying`), driven the way the engine
drives it (`async for attempt in build_retrying(...)`) with a fake `sleep`
that records the waits instead of sleeping."""

from __future__ import annotations

import asyncio
import random
from typing import Callable

import pytest

from batchrun.errors import RateLimitedError, RequestError, RetryableError, TerminalError
from batchrun.execution.retrying import RETRYABLE, build_retrying
from batchrun.job.sections import RetrySpec


class Recorder:
    def __init__(self) -> None:
        self.delays: list[float] = []
        self.attempts = 0

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)


async def drive(spec: RetrySpec, fail: Callable[[int], BaseException | None], rec: Recorder | None = None,
                **kwargs) -> tuple[str, Recorder]:
    """Run one ticket: `fail(n)` gives the exception of attempt n, or None for success."""
    rec = rec or Recorder()
    async for attempt in build_retrying(spec, sleep=rec.sleep, **kwargs):
        with attempt:
            rec.attempts += 1
            exc = fail(rec.attempts)
            if exc is not None:
                raise exc
    return "ok", rec


def always(exc_factory: Callable[[], BaseException]) -> Callable[[int], BaseException]:
    return lambda n: exc_factory()


SPEC = RetrySpec(max_attempts=4, max_elapsed_s=300, initial_backoff_s=0.5, max_backoff_s=30)


def test_only_retryable_errors_are_retryable():
    assert RETRYABLE == (RetryableError,)
    assert issubclass(RateLimitedError, RETRYABLE)
    assert not issubclass(TerminalError, RETRYABLE)


async def test_success_on_first_attempt_never_sleeps():
    result, rec = await drive(SPEC, lambda n: None)
    assert result == "ok"
    assert (rec.attempts, rec.delays) == (1, [])


async def test_retryable_error_is_retried_until_success():
    result, rec = await drive(SPEC, lambda n: RetryableError("boom", kind="server_error") if n < 3 else None)
    assert result == "ok"
    assert rec.attempts == 3
    assert len(rec.delays) == 2


@pytest.mark.parametrize(
    "factory",
    [lambda: RetryableError("503", kind="server_error", status_code=503),
     lambda: RetryableError("t", kind="timeout"),
     lambda: RateLimitedError("429", kind="rate_limited", status_code=429)],
)
async def test_stops_after_max_attempts_and_reraises_the_last_error(factory):
    rec = Recorder()
    with pytest.raises(RetryableError) as info:
        await drive(SPEC, always(factory), rec)
    assert rec.attempts == SPEC.max_attempts == 4
    assert len(rec.delays) == 3
    assert type(info.value) is type(factory())  # the original error, not tenacity's RetryError


@pytest.mark.parametrize("max_attempts", [1, 2, 7])
async def test_attempt_count_follows_max_attempts(max_attempts):
    spec = RetrySpec(max_attempts=max_attempts, initial_backoff_s=0.01, max_backoff_s=0.02)
    rec = Recorder()
    with pytest.raises(RetryableError):
        await drive(spec, always(lambda: RetryableError("x")), rec)
    assert rec.attempts == max_attempts
    assert len(rec.delays) == max_attempts - 1


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (lambda: TerminalError("bad", kind="bad_request", status_code=400), TerminalError),
        (lambda: RequestError("odd"), RequestError),
        (lambda: ValueError("a bug"), ValueError),
        (lambda: KeyError("x"), KeyError),
        (lambda: ConnectionError("raw"), ConnectionError),  # untranslated: not ours to judge
    ],
)
async def test_other_errors_end_the_ticket_at_once(factory, expected):
    rec = Recorder()
    with pytest.raises(expected):
        await drive(SPEC, always(factory), rec)
    assert (rec.attempts, rec.delays) == (1, [])


@pytest.mark.parametrize("exc_type", [asyncio.CancelledError, KeyboardInterrupt, SystemExit])
async def test_cancellation_is_never_retried(exc_type):
    rec = Recorder()
    with pytest.raises(exc_type):
        await drive(SPEC, always(exc_type), rec)
    assert (rec.attempts, rec.delays) == (1, [])


async def test_real_task_cancellation_passes_through():
    started = asyncio.Event()
    rec = Recorder()

    async def ticket():
        async for attempt in build_retrying(SPEC, sleep=rec.sleep):
            with attempt:
                rec.attempts += 1
                started.set()
                await asyncio.Event().wait()  # a request that never answers

    task = asyncio.create_task(ticket())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (rec.attempts, rec.delays) == (1, [])


async def test_retry_after_is_honoured():
    rec = Recorder()
    with pytest.raises(RateLimitedError):
        await drive(SPEC, always(lambda: RateLimitedError("429", retry_after=7.0)), rec)
    assert rec.delays == [7.0, 7.0, 7.0]


async def test_retry_after_over_the_cap_ends_the_ticket_instead_of_sleeping():
    rec = Recorder()
    with pytest.raises(RateLimitedError):
        await drive(SPEC, always(lambda: RateLimitedError("429", retry_after=1000.0)), rec)
    assert (rec.attempts, rec.delays) == (1, [])


async def test_retry_after_up_to_the_cap_is_honoured_even_above_max_backoff():
    spec = SPEC.model_copy(update={"max_retry_after_s": 45.0})
    rec = Recorder()
    with pytest.raises(RateLimitedError):
        await drive(spec, always(lambda: RateLimitedError("429", retry_after=40.0)), rec)
    assert rec.delays[0] == 40.0 > spec.max_backoff_s


async def test_retry_after_zero_means_now():
    rec = Recorder()
    with pytest.raises(RateLimitedError):
        await drive(SPEC, always(lambda: RateLimitedError("429", retry_after=0.0)), rec)
    assert rec.delays == [0.0, 0.0, 0.0]


async def test_retry_after_on_a_plain_retryable_error_is_honoured_too():
    rec = Recorder()
    result, rec = await drive(SPEC, lambda n: RetryableError("503", retry_after=2.5) if n == 1 else None, rec)
    assert rec.delays == [2.5]


async def test_stop_before_delay_stops_when_the_next_wait_would_pass_max_elapsed():
    spec = RetrySpec(max_attempts=10, max_elapsed_s=5, initial_backoff_s=0.5, max_backoff_s=10)
    rec = Recorder()
    with pytest.raises(RateLimitedError):
        await drive(spec, always(lambda: RateLimitedError("429", retry_after=6.0)), rec)
    assert (rec.attempts, rec.delays) == (1, [])  # waiting 6 s would end past 5 s: give up now


async def test_stop_before_delay_allows_waits_within_the_budget():
    spec = RetrySpec(max_attempts=3, max_elapsed_s=5, initial_backoff_s=0.5, max_backoff_s=10)
    rec = Recorder()
    with pytest.raises(RateLimitedError):
        await drive(spec, always(lambda: RateLimitedError("429", retry_after=1.0)), rec)
    assert (rec.attempts, rec.delays) == (3, [1.0, 1.0])


async def test_jittered_exponential_waits_stay_in_bounds():
    spec = RetrySpec(max_attempts=8, max_elapsed_s=1000, initial_backoff_s=0.5, max_backoff_s=6)
    bounds = [min(spec.max_backoff_s, spec.initial_backoff_s * 2**n) for n in range(spec.max_attempts - 1)]
    assert bounds == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0, 6.0]
    state = random.getstate()
    random.seed(20251122)
    try:
        samples: list[list[float]] = []
        for _ in range(200):
            rec = Recorder()
            with pytest.raises(RetryableError):
                await drive(spec, always(lambda: RetryableError("503")), rec)
            assert len(rec.delays) == len(bounds)
            samples.append(rec.delays)
    finally:
        random.setstate(state)
    for n, bound in enumerate(bounds):
        waits = [s[n] for s in samples]
        assert all(0.0 <= w <= bound for w in waits), (n, bound, max(waits))
        assert max(waits) > 0.8 * bound  # the range is used up to its top ...
        assert min(waits) < 0.2 * bound  # ... and down to near zero: full jitter
        assert len(set(waits)) > 150  # not a fixed schedule


async def test_rate_limit_without_retry_after_uses_the_jittered_backoff():
    spec = RetrySpec(max_attempts=3, max_elapsed_s=1000, initial_backoff_s=0.5, max_backoff_s=6)
    rec = Recorder()
    with pytest.raises(RateLimitedError):
        await drive(spec, always(lambda: RateLimitedError("429", retry_after=None)), rec)
    assert 0 <= rec.delays[0] <= 0.5 and 0 <= rec.delays[1] <= 1.0


async def test_before_sleep_sees_each_retry():
    seen: list[tuple[int, str]] = []

    def before_sleep(state) -> None:
        seen.append((state.attempt_number, state.outcome.exception().kind))

    rec = Recorder()
    result, _ = await drive(
        SPEC, lambda n: RetryableError("x", kind=f"k{n}") if n < 3 else None, rec, before_sleep=before_sleep)
    assert seen == [(1, "k1"), (2, "k2")]


async def test_each_ticket_gets_a_fresh_controller():
    rec1, rec2 = Recorder(), Recorder()
    with pytest.raises(RetryableError):
        await drive(SPEC, always(lambda: RetryableError("x")), rec1)
    assert rec1.attempts == 4
    result, rec2 = await drive(SPEC, lambda n: RetryableError("x") if n < 4 else None, rec2)
    assert result == "ok" and rec2.attempts == 4
