"""textfmt.py and the shared percentiles in stats.py: the one spelling of each helper."""

from __future__ import annotations

from batchrun.analysis.stats import LatencyHistogram, percentile, percentiles, round1
from batchrun.analysis.textfmt import kv, ms, num, pct, table, usd


def test_unknown_is_a_dash_never_zero():
    assert [num(None), pct(None), usd(None), ms(None), ms(None, " ms")] == ["-"] * 5


def test_numbers():
    assert num(1234.5) == "1,234"  # default: grouped, no decimals (run's compare table)
    assert num(1234.56, ",.1f") == "1,234.6"  # bench's tables
    assert num(0.81234, ".3f") == "0.812"  # grading's F1 and kappa
    assert num(0.0012, ",.6f") == "0.001200"


def test_percent_money_and_milliseconds():
    assert pct(0.1234) == "12.3%" and pct(1) == "100.0%" and pct(0.5, 0) == "50%"
    assert usd(0.5) == "$0.500000" and usd(1234.5) == "$1,234.500000"
    assert ms(1234.4) == "1,234" and ms(12, " ms") == "12 ms"


def test_table_aligns_left_then_right():
    lines = table(["name", "n"], [["a", 1], ["bbb", 22]])
    assert lines == ["name   n", "----  --", "a      1", "bbb   22"]
    right = table(["conc", "req/s"], [["1", "2.0"]], left=0)  # bench's all-right-aligned tables
    assert right == ["conc  req/s", "----  -----", "   1    2.0"]
    assert table(["a", "b"], []) == ["a  b", "-  -"]


def test_kv_pads_labels():
    assert kv([("x", 1), ("long", "v")], indent="  ") == ["  x     1", "  long  v"]


def test_nearest_rank_percentile():
    assert percentile([], 50) is None
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0 and percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0


def test_histogram_percentiles_from_samples_or_histogram():
    samples = [100.0] * 90 + [1000.0] * 10
    hist = LatencyHistogram()
    for value in samples:
        hist.add(value)
    assert percentiles(samples) == percentiles(hist)
    result = percentiles(samples)
    assert abs(result["p50"] - 100.0) <= 1.0 and abs(result["p99"] - 1000.0) <= 10.0
    assert result["mean"] == 190.0
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "mean": None}
    assert round1(None) is None and round1(1.26) == 1.3
