"""Issue 26, point 8: bench for a long night. Recommendations hold at the rate limit's sustained
rate (a sample that never drains the burst says so, and the sustained figure decides); the
default table has at most 8 columns (--wide: all); `make bench` runs without the baseline."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from batchrun.bench.recommend import build_row, format_table, recommend, sustained_rate
from conftest import ROOT

LIMITS = {"rpm": 4000, "tpm": None, "capacity": None, "overload_ms": 0.0}


def summary(tickets_per_s: float, done: int = 256) -> dict:
    wall = done / tickets_per_s
    return {"done": done, "failed": 0, "not_finished": 0, "requests": done, "retries": 0, "rate_limited": 0,
            "errors_by_kind": {}, "wall_s": round(wall, 3), "requests_per_s": tickets_per_s,
            "output_tokens_per_s": 5 * tickets_per_s, "latency_ms": {"p50": 230.0, "p95": 290.0, "p99": 300.0,
                                                                    "mean": 240.0},
            "prompt_tokens": 150 * done, "completion_tokens": 5 * done, "cost_usd": 0.001}


def test_the_recommendation_holds_at_the_sustained_rate_not_the_burst():
    rows = [build_row(c, 256, "done", summary(tps), cpu_s=1.0, latency_s=0.2, server={"peak_in_flight": c},
                      limits=LIMITS) for c, tps in ((4, 17.0), (16, 64.0), (64, 138.0))]
    assert sustained_rate(LIMITS) == pytest.approx(66.667, abs=0.01)
    assert [r["sustained_tickets_per_s"] for r in rows] == [17.0, 64.0, 66.67]
    assert all(r["burst_drained"] is False for r in rows)  # 256 requests: the burst is 4,000
    rec = recommend(rows)
    # C=64's 138 tickets/s is the burst's; at the sustained 66.7/s, C=16 (64/s) is a tie with fewer in flight
    assert rec.concurrency == 16, rec.reason
    assert "sustained" in rec.reason


def test_the_default_table_has_at_most_8_columns_and_wide_has_all():
    rows = [build_row(c, 256, "done", summary(tps), cpu_s=1.0, latency_s=0.2, server={"peak_in_flight": c},
                      limits=LIMITS) for c, tps in ((16, 64.0), (64, 138.0))]
    narrow = format_table(rows).splitlines()
    columns = re.split(r"\s{2,}", narrow[0].strip())
    assert len(columns) <= 8 and columns[:3] == ["conc", "tickets/s", "sustained/s"], columns
    assert "(capped)" in narrow[3]
    wide = format_table(rows, wide=True).splitlines()[0]
    for column in ("req/s", "p99", "ideal/s", "eff", "peak", "cpu"):
        assert column in wide
    header = format_table([build_row(16, 64, "done", summary(30.0, 64), cpu_s=1.0, latency_s=0.2)]).splitlines()[0]
    assert "out tok/s" in header and "sustained/s" not in header  # no rate limit: no sustained column


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_bench_runs_without_the_baseline(tmp_path):
    out = subprocess.run(["make", "--no-print-directory", f"VENV={tmp_path / 'venv'}", "-n", "bench"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60).stdout
    command = next(line for line in out.splitlines() if "batchrun bench" in line)
    assert "--baseline" not in command
