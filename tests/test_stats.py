"""Tests of run statistics (`batchrun.stats`): the log-bucketed latency
histogram, `RunStats.summary()` and the printed `format_summary` table.
Wall time is set by hand (started/finished), never measured."""

from __future__ import annotations

import math
import random

import pytest

from batchrun.analysis.stats import LatencyHistogram, RunStats, format_summary


def exact_percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile, the definition LatencyHistogram approximates."""
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * p / 100.0))
    return ordered[rank - 1]


def filled(values) -> LatencyHistogram:
    hist = LatencyHistogram()
    for v in values:
        hist.add(v)
    return hist


# -- LatencyHistogram ---------------------------------------------------------------


def test_empty_histogram():
    hist = LatencyHistogram()
    assert hist.percentile(50) is None
    assert hist.percentile(99) is None
    assert hist.mean is None
    assert hist.n == 0


@pytest.mark.parametrize("p", [1, 10, 25, 50, 75, 90, 95, 99, 99.9, 100])
def test_percentiles_close_to_exact_on_a_lognormal_sample(p):
    rng = random.Random(7)
    values = [rng.lognormvariate(math.log(200), 0.8) for _ in range(20_000)]
    hist = filled(values)
    exact = exact_percentile(values, p)
    assert hist.percentile(p) == pytest.approx(exact, rel=0.01)  # docstring: within about 1%


@pytest.mark.parametrize("p", [5, 50, 95, 99])
def test_percentiles_close_to_exact_on_a_uniform_sample(p):
    rng = random.Random(11)
    values = [rng.uniform(20, 5_000) for _ in range(10_000)]
    hist = filled(values)
    assert hist.percentile(p) == pytest.approx(exact_percentile(values, p), rel=0.02)


@pytest.mark.parametrize("p", [1, 50, 99])
def test_sub_millisecond_latencies_are_as_accurate(p):
    """Below 1 ms the bucket index is negative: it must be floored, not
    truncated toward zero (which would shift every estimate up by a bucket)."""
    rng = random.Random(3)
    values = [rng.uniform(0.05, 0.99) for _ in range(10_000)]
    hist = filled(values)
    assert hist.percentile(p) == pytest.approx(exact_percentile(values, p), rel=0.006)


@pytest.mark.parametrize("value", [0.3, 0.995, 1.0, 1.004, 7.0, 250.0, 12_345.0])
def test_a_single_value_comes_back_within_half_a_bucket(value):
    hist = filled([value] * 5)
    for p in (0, 50, 100):
        assert hist.percentile(p) == pytest.approx(value, rel=0.006)


def test_percentiles_are_monotonic_and_bracket_the_data():
    values = [float(v) for v in range(1, 1001)]
    hist = filled(values)
    ps = [hist.percentile(p) for p in (0, 10, 50, 90, 99, 100)]
    assert ps == sorted(ps)
    assert ps[0] == pytest.approx(1, rel=0.01) and ps[-1] == pytest.approx(1000, rel=0.01)
    assert hist.percentile(50) == pytest.approx(500, rel=0.01)


def test_mean_is_exact():
    hist = filled([10.0, 20.0, 60.0])
    assert hist.mean == pytest.approx(30.0)
    assert hist.total_ms == pytest.approx(90.0)
    assert hist.n == 3


def test_zero_and_tiny_latencies_do_not_crash():
    hist = filled([0.0, 0.0, 1e-9, 5.0])
    assert hist.n == 4
    assert hist.percentile(50) is not None and hist.percentile(50) <= 0.011


def test_bounded_number_of_buckets_after_100k_samples():
    rng = random.Random(1)
    hist = filled(rng.uniform(1.0, 100_000.0) for _ in range(100_000))
    assert hist.n == 100_000
    # 1 ms .. 100 s at 1% per bucket: log(1e5) / log(1.01) ~ 1157 buckets at most
    assert len(hist.counts) <= math.ceil(math.log(100_000) / math.log(1.01)) + 1
    assert sum(hist.counts.values()) == 100_000


def test_bucket_count_does_not_grow_with_repeats():
    hist = filled([123.0, 456.0] * 50_000)
    assert len(hist.counts) == 2


# -- RunStats.summary -------------------------------------------------------------------


def make_stats(**overrides) -> RunStats:
    stats = RunStats(
        tickets_total=1000, already_done=100, skipped_failed=0, to_do=900, done=850, failed=20,
        attempts=1000, retries=130, rate_limited=40, errors_by_kind={"timeout": 30, "rate_limited": 40,
                                                                     "bad_request": 20},
        prompt_tokens=80_000, completion_tokens=4_000, total_tokens=84_000,
        cost_usd=0.425, unpriced=0, started=100.0, finished=110.0,
    )
    for v in [100.0] * 50 + [200.0] * 45 + [900.0] * 4 + [2000.0]:
        stats.latency.add(v)
    for key, value in overrides.items():
        setattr(stats, key, value)
    return stats


def test_summary_fields():
    summary = make_stats().summary()
    assert summary["tickets_total"] == 1000
    assert summary["already_done"] == 100
    assert summary["done"] == 850
    assert summary["failed"] == 20
    assert summary["not_finished"] == 30  # 900 to do - 870 finished
    assert summary["wall_s"] == 10.0
    assert summary["requests"] == 1000
    assert summary["retries"] == 130
    assert summary["rate_limited"] == 40
    assert list(summary["errors_by_kind"]) == ["bad_request", "rate_limited", "timeout"]  # sorted
    assert summary["requests_per_s"] == 100.0
    assert summary["tickets_per_s"] == 87.0
    assert summary["output_tokens_per_s"] == 400.0
    assert summary["prompt_tokens"] == 80_000 and summary["total_tokens"] == 84_000
    assert summary["cost_usd"] == pytest.approx(0.425)
    assert summary["unpriced_results"] == 0
    assert summary["cost_per_1000_tickets_usd"] == pytest.approx(0.5)  # 0.425 / 850 * 1000
    lat = summary["latency_ms"]
    assert lat["p50"] == pytest.approx(100, rel=0.01)
    assert lat["p95"] == pytest.approx(200, rel=0.01)
    assert lat["p99"] == pytest.approx(900, rel=0.01)
    assert lat["mean"] == pytest.approx((100 * 50 + 200 * 45 + 900 * 4 + 2000) / 100, rel=1e-3)


def test_summary_separates_start_up_from_sending():
    # 10 s in all, the first ticket handed out after 2 s: 1000 requests in the 8 s after start-up.
    summary = make_stats(first_dispatch=102.0, worker_startup_cpu_s=7.25).summary()
    assert summary["startup_s"] == 2.0
    assert summary["requests_per_s"] == 100.0
    assert summary["requests_per_s_after_startup"] == 125.0
    assert summary["worker_startup_cpu_s"] == 7.25
    untouched = make_stats().summary()  # no ticket was handed out
    assert untouched["startup_s"] is None and untouched["requests_per_s_after_startup"] is None


def test_summary_cost_per_1000_counts_priced_results_only():
    summary = make_stats(done=100, unpriced=20, cost_usd=0.4).summary()
    assert summary["cost_per_1000_tickets_usd"] == pytest.approx(5.0)  # 0.4 over 80 priced results
    assert make_stats(done=10, unpriced=10, cost_usd=0.0).summary()["cost_per_1000_tickets_usd"] is None
    assert make_stats(done=0, unpriced=0, cost_usd=0.0).summary()["cost_per_1000_tickets_usd"] is None


def test_summary_of_an_empty_run():
    summary = RunStats(started=5.0, finished=5.0).summary()
    assert summary["done"] == summary["failed"] == summary["requests"] == 0
    assert summary["latency_ms"] == {"p50": None, "p95": None, "p99": None, "mean": None}
    assert summary["requests_per_s"] == 0.0
    assert summary["cost_per_1000_tickets_usd"] is None
    assert summary["not_finished"] == 0
    format_summary(summary)  # and it prints


# -- format_summary ------------------------------------------------------------------------


def test_format_summary_has_the_key_lines():
    text = format_summary(make_stats().summary(), title="job: run 2 done")
    lines = text.splitlines()
    assert lines[0] == "job: run 2 done"
    assert lines[1] == "-" * len("job: run 2 done")

    def row(label: str) -> str:
        (found,) = [ln for ln in lines if ln.startswith(label + "  ")]  # labels are padded, then 2 spaces
        return found[len(label):].strip()

    assert row("tickets in input") == "1,000"
    assert row("done in this run") == "850"
    assert row("failed in this run") == ("20 (0 permanent, 20 transient: a re-run retries the transient ones)")
    assert row("already done before") == "100"
    assert row("not finished (resume)") == "30"
    assert row("requests/s") == "100.0"
    assert row("requests") == "1,000 (130 retries, 40 answered 429)"
    assert row("failed attempts") == "bad_request 20, rate_limited 40, timeout 30"
    p50, p95, p99 = row("latency p50/p95/p99").split(" / ")
    for text_ms, expected in ((p50, 100), (p95, 200), (p99, 900)):
        assert text_ms.endswith(" ms")
        assert float(text_ms[:-3].replace(",", "")) == pytest.approx(expected, rel=0.01)
    assert row("cost") == "$0.425000"
    assert row("cost per 1,000 tickets") == "$0.500000"
    assert "unpriced" not in text
    assert "skipped" not in text


def test_format_summary_mentions_unpriced_results():
    text = format_summary(make_stats(done=100, unpriced=20, cost_usd=0.4).summary())
    assert "20 result(s) unpriced" in text
    assert "cost_usd null" in text
    assert "$5.000000" in text  # per 1,000 priced tickets


def test_format_summary_without_latency_or_prices():
    text = format_summary(RunStats(started=0.0, finished=1.0, skipped_failed=3).summary())
    assert "latency p50/p95/p99" in text and "- / - / -" in text
    assert "skipped (failed before)" in text
    cost_line = [ln for ln in text.splitlines() if ln.startswith("cost per 1,000 tickets")][0]
    assert cost_line.rstrip().endswith("-")
    assert "failed attempts" in text and "none" in text
