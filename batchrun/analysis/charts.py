"""Charts (PNG, matplotlib): the one module that draws.

    write_charts(analysis, out) -> [paths] | None
        `batchrun report --out`: the confusion matrix of each graded model and
        the latency histograms (grading.Analysis in, PNG files out)
    draw_plot(rows, path, title, recommended, auto) -> bool
        `batchrun bench`: tickets/s (batchrun, ideal, bare pattern) and p95
        latency against concurrency, the recommended setting marked

matplotlib is optional (pip install 'batchrun[plots]'): it is imported inside
each function, which answers None/False when it is missing so the caller can
say so and write its JSON anyway.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, TypedDict

from batchrun.analysis.stats import percentile
from batchrun.analysis.textfmt import ms, pct

if TYPE_CHECKING:
    from typing_extensions import ReadOnly

    from batchrun.analysis.grading import Analysis

PLOT_HINT = "pip install 'batchrun[plots]'"


# What `draw_plot` reads of bench's rows (bench.recommend.BenchRow, AutoRow): read-only, so a row
# with more keys, or with a narrower type in one, is one of these.


class PlotLatency(TypedDict):
    p95: ReadOnly[float | None]


class PlotBaseline(TypedDict):
    tickets_per_s: ReadOnly[float]


class PlotRow(TypedDict):
    concurrency: ReadOnly[int]
    tickets_per_s: ReadOnly[float]
    ideal_rps: ReadOnly[float | None]
    latency_ms: ReadOnly[PlotLatency]
    baseline: ReadOnly[PlotBaseline | None]


class PlotAuto(TypedDict):
    tickets_per_s: ReadOnly[float]
    concurrency_settled: ReadOnly[int | None]


def write_charts(analysis: Analysis, out: Path) -> list[Path] | None:
    """The PNG charts in `out`; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    models = analysis.report["models"]

    graded = [(m, grading) for m in models if (grading := m["grading"]) and grading["labels"]]
    if graded:
        # one colour scale for every panel, so the same shade means the same count in each model
        peak = max((n for _, grading in graded for row in grading["confusion"]["matrix"] for n in row), default=0)
        fig, axes = plt.subplots(1, len(graded), figsize=(4.6 * len(graded) + 1.2, 4.8), squeeze=False,
                                 layout="constrained")
        try:
            image = None
            for ax, (m, grading) in zip(axes[0], graded):
                conf = grading["confusion"]
                matrix = conf["matrix"]
                image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(peak, 1))
                ax.set_xticks(range(len(conf["columns"])), conf["columns"], rotation=45, ha="right")
                ax.set_yticks(range(len(conf["rows"])), conf["rows"])
                ax.set_xlabel("predicted label")
                ax.set_ylabel("gold label")
                ax.set_title(f"{m['key']}: accuracy {pct(grading['accuracy'])}", fontsize="medium")
                for i, row in enumerate(matrix):
                    for j, n in enumerate(row):
                        ax.text(j, i, f"{n}", ha="center", va="center", fontsize="small",
                                color="white" if peak and n > peak / 2 else "black")
            assert image is not None  # one panel per graded model, and there is one
            bar = fig.colorbar(image, ax=axes[0].tolist(), fraction=0.05, pad=0.02, shrink=0.9)
            bar.set_label("tickets (same scale for every model)" if len(graded) > 1 else "tickets")
            path = out / "confusion_matrix.png"
            fig.savefig(path, dpi=110)
            written.append(path)
        finally:
            plt.close(fig)

    with_latency = [(m["key"], analysis.series[m["key"]].latencies) for m in models
                    if analysis.series[m["key"]].latencies]
    if with_latency:
        fig, ax = plt.subplots(figsize=(8.5, 5.6))
        try:
            marks = {key: _marks(values) for key, values in with_latency}
            low = min(min(values) for _, values in with_latency)
            high = max(max(values) for _, values in with_latency)
            # the x axis: from just below the fastest result to a little past the slowest p99;
            # a few slower outliers are counted in the legend rather than squeezing the rest
            right = min(high, max(p99 for _, _, p99 in marks.values()) * 1.25)
            left = max(0.0, low - (right - low) * 0.05)
            bins = [left + (right - left) * i / 50 for i in range(51)] if right > left else 10
            colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
            for index, (key, values) in enumerate(with_latency):
                color = colors[index % len(colors)]
                beyond = sum(1 for v in values if v > right)
                p50, p95, p99 = marks[key]
                label = (f"{key} (n={len(values):,}): p50 {ms(p50)} / p95 {ms(p95)} / p99 {ms(p99)} ms"
                         + (f"; {beyond:,} above {ms(right)} ms not shown" if beyond else ""))
                ax.hist([min(v, right) for v in values if v <= right], bins=bins, histtype="step",
                        linewidth=1.5, color=color, label=label)
                for value, style in ((p50, "-"), (p95, "--"), (p99, ":")):
                    ax.axvline(value, color=color, linestyle=style, linewidth=1.1, alpha=0.8)
            ax.plot([], [], color="gray", linestyle="-", label="p50")
            ax.plot([], [], color="gray", linestyle="--", label="p95")
            ax.plot([], [], color="gray", linestyle=":", label="p99")
            ax.set_xlim(left, right)
            ax.set_xlabel("latency of the successful attempt (ms)")
            ax.set_ylabel("results per bin")
            ax.set_title("latency of successful requests, per model (p50 / p95 / p99 marked)", fontsize="medium")
            ax.grid(True, alpha=0.3)
            rows_below = len(with_latency) + 1
            fig.legend(*ax.get_legend_handles_labels(), loc="lower center", fontsize="small", frameon=False,
                       ncol=1 if len(with_latency) > 1 else 2)
            fig.tight_layout(rect=(0, min(0.06 * rows_below, 0.4), 1, 1))
            path = out / "latency_histogram.png"
            fig.savefig(path, dpi=110)
            written.append(path)
        finally:
            plt.close(fig)

    with_times = [(m["key"], sorted(analysis.series[m["key"]].finished), analysis.series[m["key"]].first_start)
                  for m in models if analysis.series[m["key"]].finished]
    if with_times:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        try:
            origin = min(min(times[0], start if start is not None else times[0]) for _, times, start in with_times)
            span = max(times[-1] for _, times, _ in with_times) - origin
            width = _nice_width(span / 50)  # about 50 bins
            for key, times, _ in with_times:
                nbins = int((times[-1] - origin) // width) + 1
                counts = [0] * nbins
                for t in times:
                    counts[int((t - origin) // width)] += 1
                xs = [(i + 0.5) * width for i in range(nbins)]
                ax.plot(xs, [n / width for n in counts], marker=".", linewidth=1.2,
                        label=f"{key} ({len(times):,} results)")
            ax.set_xlabel("seconds since the first request started (all runs of the directory)")
            ax.set_ylabel(f"results finished per second ({width:g} s bins)")
            ax.set_ylim(bottom=0)
            ax.set_xlim(left=0)
            ax.set_title("throughput over time", fontsize="medium")
            ax.legend(fontsize="small")
            ax.grid(True, alpha=0.3)
            fig.tight_layout()
            path = out / "throughput.png"
            fig.savefig(path, dpi=110)
            written.append(path)
        finally:
            plt.close(fig)
    return written


def _marks(values: list[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 of a model's latencies (there is at least one)."""
    ordered = sorted(values)
    p50, p95, p99 = (percentile(ordered, p) for p in (50, 95, 99))
    assert p50 is not None and p95 is not None and p99 is not None
    return p50, p95, p99


def _nice_width(raw: float) -> float:
    """A bin width of 1, 2 or 5 times a power of ten, at least 0.1 s."""
    raw = max(raw, 0.1)
    power = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 5, 10):
        if raw <= step * power:
            return step * power
    return 10 * power  # pragma: no cover


def draw_plot(rows: Sequence[PlotRow], path: Path, title: str, recommended: int | None = None,
              auto: PlotAuto | None = None, unreached: Sequence[int] = ()) -> bool:
    """bench.png: tickets/s (batchrun, ideal, bare pattern) and p95 latency against concurrency,
    the recommended setting marked. False when matplotlib is not installed.

    The throughput axis is scaled to the measured curves; the ideal is drawn
    inside the axes up to where it leaves them, and its value at the last
    setting is written at the edge. The recommendation is a band from zero to
    the measured point at that setting (only where the sweep has data);
    settings the sweep never had in flight (`unreached`, from bench.reached)
    are hollow points.
    The legend sits below the axes, clear of the lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    xs = [r["concurrency"] for r in rows]
    fig, ax = plt.subplots(figsize=(8.5, 6.2))
    try:
        measured = [r["tickets_per_s"] for r in rows]
        ax.plot(xs, measured, "-", color="tab:blue", label="batchrun tickets/s")
        done = [(x, y) for x, y in zip(xs, measured) if x not in unreached]
        missed = [(x, y) for x, y in zip(xs, measured) if x in unreached]
        if done:
            ax.plot(*zip(*done), "o", color="tab:blue")
        if missed:
            ax.plot(*zip(*missed), "o", markerfacecolor="white", color="tab:blue",
                    label="setting not reached (peak in flight < 90%)")
        tops = list(measured)
        if any(r.get("baseline") for r in rows):
            bx = [r["concurrency"] for r in rows if r.get("baseline")]
            by = [base["tickets_per_s"] for r in rows if (base := r.get("baseline"))]
            tops += by
            ax.plot(bx, by, "s--", color="tab:green", label="bare acompletion + semaphore")
        if auto is not None:
            tops.append(auto["tickets_per_s"])
        top = max(tops + [1.0]) * 1.35
        ideal = [(x, rps) for x, r in zip(xs, rows) if (rps := r.get("ideal_rps")) is not None]
        if ideal:
            inside, clipped_at = _clip_to(ideal, top)
            ax.plot([x for x, _ in inside], [y for _, y in inside], ":", color="tab:gray", linewidth=1.6,
                    label="ideal (latency and limits only)")
            if clipped_at is not None:
                x_last, y_last = ideal[-1]
                ax.annotate(f"ideal at C={x_last}: {y_last:,.0f}/s", xy=(inside[-1][0], top), xytext=(4, -14),
                            textcoords="offset points", fontsize="small", color="tab:gray")
        if auto is not None:
            ax.axhline(auto["tickets_per_s"], color="tab:orange", linestyle="--",
                       label=f"concurrency = auto (settled at {auto.get('concurrency_settled')})")
        if recommended is not None and recommended in xs:
            y = measured[xs.index(recommended)]
            ax.vlines(recommended, 0, y, color="tab:purple", alpha=0.35, linewidth=10,
                      label=f"recommended: {recommended}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel("throughput (tickets/s)")
        ax.set_ylim(0, top)
        ax2 = ax.twinx()
        p95s = [latency.get("p95") if (latency := r.get("latency_ms")) else None for r in rows]
        ax2.plot(xs, [math.nan if p95 is None else p95 for p95 in p95s], "^-.", color="tab:red",  # None: a gap
                 label="batchrun p95 latency (right axis)")
        ax2.set_ylabel("p95 latency (ms)")
        ax2.set_ylim(bottom=0, top=max([p95 or 0 for p95 in p95s] + [1]) * 1.35)
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize="small", frameon=False)
        ax.set_title(title, fontsize="medium")
        ax.grid(True, alpha=0.3)
        fig.tight_layout(rect=(0, 0.14, 1, 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return True


def _clip_to(points: Sequence[tuple[float, float]], top: float) -> tuple[list[tuple[float, float]], float | None]:
    """The ideal curve's points up to where it crosses `top` (the crossing included, on a log2 x
    axis), and the x where it left the axes (None when it never does)."""
    inside: list[tuple[float, float]] = []
    for (x0, y0), (x1, y1) in zip([(None, None)] + list(points[:-1]), points):
        if y1 <= top:
            inside.append((x1, y1))
            continue
        if x0 is not None and y0 is not None and y0 < top:
            share = (top - y0) / (y1 - y0)
            x = 2 ** (math.log2(x0) + share * (math.log2(x1) - math.log2(x0)))
            inside.append((x, top))
            return inside, x
        return inside or [(x1, top)], x1
    return inside, None
