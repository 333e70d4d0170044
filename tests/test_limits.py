"""Rate-limit arithmetic, header parsing and the AIMD controller (pure, no clocks)."""

from __future__ import annotations

import pytest

from batchrun.execution.limits import (
    AdaptiveConcurrency,
    TokenBucket,
    parse_rate_limit_headers,
    parse_reset,
)


def test_token_bucket_refills_continuously_and_caps_at_capacity():
    bucket = TokenBucket(600, now=0.0)  # 10 per second, capacity one second's worth
    assert bucket.capacity == 10 and bucket.wait_s(1, 0.0) == 0
    bucket.take(10, 0.0)
    assert bucket.wait_s(1, 0.0) == pytest.approx(0.1)
    assert bucket.wait_s(1, 0.05) == pytest.approx(0.05)
    assert bucket.wait_s(1, 0.1) == 0
    bucket._refill(100.0)
    assert bucket.tokens == 10  # never above capacity after a quiet spell


def test_token_bucket_debt_delays_later_takers_and_give_refunds():
    bucket = TokenBucket(60, capacity=100, now=0.0)  # 1 token per second
    bucket.take(150, 0.0)  # an under-estimate corrected after the fact: 50 in debt
    assert bucket.wait_s(10, 0.0) == pytest.approx(60.0)
    bucket.give(40, 0.0)
    assert bucket.wait_s(10, 0.0) == pytest.approx(20.0)


def test_a_request_larger_than_the_bucket_waits_for_a_full_bucket_not_forever():
    bucket = TokenBucket(60, capacity=5, now=0.0)
    bucket.take(5, 0.0)
    assert bucket.wait_s(1000, 0.0) == pytest.approx(5.0)


def test_drain_until_honours_the_servers_reset():
    bucket = TokenBucket(600, now=0.0)
    bucket.drain_until(2.0, 0.0)
    assert bucket.wait_s(1, 0.0) == pytest.approx(2.1)


@pytest.mark.parametrize("value, seconds", [
    ("1s", 1.0), ("120ms", 0.12), ("6m0s", 360.0), ("1m30.5s", 90.5), ("0.5", 0.5), ("2h", 7200.0),
])
def test_parse_reset_durations(value, seconds):
    assert parse_reset(value) == pytest.approx(seconds)


def test_parse_reset_rejects_garbage_and_reads_iso_times():
    assert parse_reset("soon") is None and parse_reset(None) is None
    assert parse_reset("2000-01-01T00:00:00Z") == 0.0  # in the past: no wait


def test_parse_openai_and_anthropic_rate_limit_headers():
    openai = parse_rate_limit_headers({
        "llm_provider-x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "850ms",
        "X-RateLimit-Remaining-Tokens": "1200", "x-ratelimit-reset-tokens": "1s"})
    assert openai.remaining_requests == 0 and openai.reset_requests_s == pytest.approx(0.85)
    assert openai.remaining_tokens == 1200 and openai.reset_tokens_s == 1.0
    anthropic = parse_rate_limit_headers({"anthropic-ratelimit-requests-remaining": "3",
                                          "anthropic-ratelimit-tokens-remaining": "0"})
    assert anthropic.remaining_requests == 3 and anthropic.remaining_tokens == 0
    assert parse_rate_limit_headers(None).empty and parse_rate_limit_headers({"server": "x"}).empty


def test_aimd_increases_by_one_per_healthy_window():
    aimd = AdaptiveConcurrency(2, 10, start=4, slow_start=False)
    for _ in range(4):
        aimd.on_result(100.0, rate_limited=False)
    assert aimd.limit == 5
    for _ in range(5):
        aimd.on_result(100.0, rate_limited=False)
    assert aimd.limit == 6 and aimd.history == [5, 6]


def test_aimd_cuts_multiplicatively_on_429_and_respects_bounds():
    aimd = AdaptiveConcurrency(3, 10, start=10, slow_start=False)
    for _ in range(9):
        aimd.on_result(100.0, rate_limited=False)
    aimd.on_result(None, rate_limited=True)
    assert aimd.limit == 7
    for _ in range(10):
        for _ in range(aimd.limit):
            aimd.on_result(None, rate_limited=True)
    assert aimd.limit == 3  # never below minimum


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def finish(aimd: AdaptiveConcurrency, clock: FakeClock, count: int, latency_ms: float) -> None:
    """`count` requests, each sent after the previous one ended, end `latency_ms` after they started."""
    for _ in range(count):
        clock.now += latency_ms / 1000.0
        aimd.on_result(latency_ms, rate_limited=False)


def test_aimd_cuts_by_the_share_of_latency_that_is_queueing():
    clock = FakeClock()
    aimd = AdaptiveConcurrency(1, 50, start=20, slow_start=False, clock=clock)
    finish(aimd, clock, 20, 100.0)
    assert aimd.limit == 21 and aimd.best_median == 100.0
    finish(aimd, clock, 21, 125.0)  # within the tolerance (1.3x the best median)
    assert aimd.limit == 22
    finish(aimd, clock, 22, 160.0)  # queueing: cut to best / median = 0.625 of the limit
    assert aimd.limit == 13  # int(22 * 0.625)
    finish(aimd, clock, 13, 100.0)
    assert aimd.limit == 14


def test_aimd_latency_cuts_are_between_half_and_decrease():
    clock = FakeClock()
    aimd = AdaptiveConcurrency(1, 50, start=10, slow_start=False, clock=clock)
    finish(aimd, clock, 10, 100.0)
    assert aimd.limit == 11
    finish(aimd, clock, 11, 1000.0)  # 10x the best: cut by half, no more
    assert aimd.limit == 5
    finish(aimd, clock, 5, 100.0)
    assert aimd.limit == 6
    finish(aimd, clock, 6, 135.0)  # just over the tolerance: cut by `decrease` (0.7) at least
    assert aimd.limit == 4


def test_aimd_does_not_judge_requests_sent_before_a_big_change():
    clock = FakeClock()
    aimd = AdaptiveConcurrency(1, 100, start=8, clock=clock)
    finish(aimd, clock, 8, 100.0)
    assert aimd.limit == 16  # slow start
    # requests sent before the doubling end now, slow: they measure the old limit and are not judged
    clock.now += 0.05
    for _ in range(40):
        aimd.on_result(900.0, rate_limited=False)
    assert aimd.limit == 16 and aimd.history == [16]
    finish(aimd, clock, 16, 100.0)  # a window of requests sent at 16
    assert aimd.limit == 32
    # 429s count whenever they come (their start is not known)
    aimd.on_result(None, rate_limited=True)
    finish(aimd, clock, 31, 100.0)
    assert aimd.limit == 22 and not aimd.slow_start
    # after an additive step (+1) nothing is set aside: the next window is judged as it ends
    finish(aimd, clock, 22, 100.0)
    assert aimd.limit == 23
    clock.now += 0.01
    for _ in range(23):
        aimd.on_result(100.0, rate_limited=False)  # started just before the +1: still judged
    assert aimd.limit == 24


def test_aimd_settled_is_the_median_of_recent_limits():
    aimd = AdaptiveConcurrency(1, 100, start=1)
    aimd.history = [10, 12, 11, 50, 11]
    assert aimd.settled == 11


def test_aimd_slow_start_doubles_until_the_first_decrease():
    clock = FakeClock()
    aimd = AdaptiveConcurrency(1, 100, start=4, clock=clock)
    for expected in (8, 16, 32):
        finish(aimd, clock, aimd.limit, 100.0)
        assert aimd.limit == expected
    finish(aimd, clock, aimd.limit, 300.0)  # the server starts queueing: 1/3 is service, cut by half
    assert aimd.limit == 16 and not aimd.slow_start
    finish(aimd, clock, aimd.limit, 100.0)
    assert aimd.limit == 17  # additive from now on
