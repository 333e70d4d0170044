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
from typing import Any, Mapping, Sequence

from batchrun.textfmt import pct

__all__ = ["PLOT_HINT", "draw_plot", "write_charts"]

PLOT_HINT = "pip install 'batchrun[plots]'"


def write_charts(analysis: Any, out: Path) -> list[Path] | None:
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

    graded = [m for m in models if m["grading"] and m["grading"]["labels"]]
    if graded:
        fig, axes = plt.subplots(1, len(graded), figsize=(5.5 * len(graded), 5), squeeze=False)
        try:
            for ax, m in zip(axes[0], graded):
                conf = m["grading"]["confusion"]
                matrix = conf["matrix"]
                image = ax.imshow(matrix, cmap="Blues")
                ax.set_xticks(range(len(conf["columns"])), conf["columns"], rotation=45, ha="right")
                ax.set_yticks(range(len(conf["rows"])), conf["rows"])
                ax.set_xlabel("predicted")
                ax.set_ylabel("gold")
                ax.set_title(f"{m['key']}: accuracy {pct(m['grading']['accuracy'])}", fontsize="medium")
                peak = max((max(row) for row in matrix), default=0)
                for i, row in enumerate(matrix):
                    for j, n in enumerate(row):
                        ax.text(j, i, f"{n}", ha="center", va="center", fontsize="small",
                                color="white" if peak and n > peak / 2 else "black")
                fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
            fig.tight_layout()
            path = out / "confusion_matrix.png"
            fig.savefig(path, dpi=110)
            written.append(path)
        finally:
            plt.close(fig)

    with_latency = [(m["key"], analysis.series[m["key"]].latencies) for m in models
                    if analysis.series[m["key"]].latencies]
    if with_latency:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        try:
            top = max(max(values) for _, values in with_latency)
            bins = [top * i / 50 for i in range(51)] if top > 0 else 10
            for key, values in with_latency:
                ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"{key} (n={len(values):,})")
            ax.set_xlabel("latency of the successful attempt (ms)")
            ax.set_ylabel("results")
            ax.set_title("latency", fontsize="medium")
            ax.legend(fontsize="small")
            ax.grid(True, alpha=0.3)
            fig.tight_layout()
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


def _nice_width(raw: float) -> float:
    """A bin width of 1, 2 or 5 times a power of ten, at least 0.1 s."""
    raw = max(raw, 0.1)
    power = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 5, 10):
        if raw <= step * power:
            return step * power
    return 10 * power  # pragma: no cover


def draw_plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str, recommended: int | None = None,
              auto: Mapping[str, Any] | None = None) -> bool:
    """bench.png: tickets/s (batchrun, ideal, bare pattern) and p95 latency against concurrency,
    the recommended setting marked. False when matplotlib is not installed.

    The throughput axis is scaled to the measured curves; an ideal far above
    them is clipped (its legend entry says so) rather than flattening them."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    xs = [r["concurrency"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5))
    try:
        measured = [r["tickets_per_s"] for r in rows]
        ax.plot(xs, measured, "o-", color="tab:blue", label="batchrun tickets/s")
        if any(r.get("baseline") for r in rows):
            bx = [r["concurrency"] for r in rows if r.get("baseline")]
            by = [r["baseline"]["tickets_per_s"] for r in rows if r.get("baseline")]
            measured += by
            ax.plot(bx, by, "s--", color="tab:green", label="bare acompletion + semaphore")
        top = max(measured + [1.0]) * 1.5
        ideal = [r.get("ideal_rps") for r in rows]
        if any(ideal):
            clipped = any(v is not None and v > top for v in ideal)
            ax.plot(xs, ideal, ":", color="tab:gray", label="ideal" + (" (clipped: see bench.json)" if clipped else ""))
        if auto is not None:
            ax.axhline(auto["tickets_per_s"], color="tab:orange", linestyle="--",
                       label=f"concurrency = auto (settled at {auto.get('concurrency_settled')})")
        if recommended is not None:
            ax.axvline(recommended, color="tab:purple", alpha=0.4, linewidth=6, label=f"recommended: {recommended}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel("throughput (tickets/s)")
        ax.set_ylim(0, top)
        ax2 = ax.twinx()
        ax2.plot(xs, [(r.get("latency_ms") or {}).get("p95") for r in rows], "^-.", color="tab:red", label="batchrun p95 latency (right)")
        ax2.set_ylabel("p95 latency (ms)")
        ax2.set_ylim(bottom=0)
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
        ax.legend(handles, labels, loc="upper left", fontsize="small")
        ax.set_title(title, fontsize="medium")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return True
