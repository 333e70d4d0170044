"""charts.py's geometry: the ideal curve stays inside the bench plot's axes; the
plots are written (and looked at by a person: see the issue's closing note)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from batchrun.analysis.charts import _clip_to, draw_plot


def test_the_ideal_is_cut_where_it_leaves_the_axes():
    points = [(1, 5.0), (4, 20.0), (16, 80.0), (64, 320.0)]
    inside, left_at = _clip_to(points, top=50.0)
    assert inside[:2] == [(1, 5.0), (4, 20.0)]
    x, y = inside[-1]
    assert y == 50.0 and 4 < x < 16 and left_at == x
    assert math.isclose(math.log2(x), 2 + (50 - 20) / (80 - 20) * 2)  # on the log2 axis
    assert _clip_to(points, top=1000.0) == (points, None)


def test_bench_plot_is_written_with_unreached_settings(tmp_path: Path):
    pytest.importorskip("matplotlib")
    rows = [{"concurrency": c, "tickets_per_s": t, "ideal_rps": 5.0 * c, "latency_ms": {"p50": 200, "p95": 250}}
            for c, t in ((1, 4.5), (4, 18.0), (16, 60.0), (64, 70.0))]
    path = tmp_path / "bench.png"
    assert draw_plot(rows, path, "test", recommended=16, unreached=[64])
    assert path.stat().st_size > 10_000
