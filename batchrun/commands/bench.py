"""`batchrun bench JOB`: sweep a job's concurrency and recommend a setting.

Options here; the sweep is `bench.run_bench` (the measuring, the report dict and
the recommendation), the text tables `bench.format_table` and
`bench.format_baseline_table`, the plot `charts.draw_plot`. This module prints
them and writes OUT/bench.json and OUT/bench.png.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from batchrun.analysis.textfmt import error_line

from batchrun.analysis.charts import PLOT_HINT, draw_plot
from batchrun.bench.recommend import (
    AUTO_MAX_TICKETS,
    AUTO_MIN_TICKETS,
    AUTO_WAVES,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_429_RATE,
    DEFAULT_TIE_WITHIN,
    P95_FACTOR,
    Recommendation,
    format_baseline_table,
    format_table,
    parse_concurrency,
    reached,
)
from batchrun.bench.sweep import run_bench

if TYPE_CHECKING:
    from batchrun.bench.recommend import BenchRow
    from batchrun.bench.sweep import BenchReport, Sweep
    from batchrun.job.spec import JobSpec

__all__ = ["bench_command"]

BENCH_EXAMPLES = """
\b
Examples:
  batchrun bench jobs/classify_tickets.toml                      # simulator, 200 ms, 1..256
  batchrun bench jobs/classify_tickets.toml --baseline           # + the bare acompletion pattern
  batchrun bench jobs/classify_tickets.toml --concurrency 8,32,128 --tickets 2000
  batchrun bench jobs/classify_tickets.toml --rpm 3000 --capacity 64 --concurrency 16,64,256
  OPENAI_API_KEY=... batchrun bench jobs/classify_tickets.toml --live --concurrency 1,8,32 --tickets 100
"""


def _concurrency_option(ctx: click.Context, param: click.Parameter, value: str) -> list[int | str]:
    try:
        return parse_concurrency(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _tickets_option(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    if value in (None, "auto"):
        return None
    try:
        number = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: an integer or 'auto'") from None
    if number < 1:
        raise click.BadParameter("at least 1")
    return number


@click.command(name="bench", epilog=BENCH_EXAMPLES,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--concurrency", "settings", default=DEFAULT_CONCURRENCY, show_default=True,
              callback=_concurrency_option, help="Comma-separated concurrency settings to sweep.")
@click.option("--tickets", default="auto", show_default=True, callback=_tickets_option,
              help=f"Tickets per setting; auto: {AUTO_WAVES} x concurrency, "
                   f"at least {AUTO_MIN_TICKETS}, at most {AUTO_MAX_TICKETS}.")
@click.option("--stream", is_flag=True, help="Stream responses (when the job spec supports `stream`); adds TTFT.")
@click.option("--live", is_flag=True, help="Use the job's real model, api_base and key (billed requests).")
@click.option("--baseline", is_flag=True,
              help="Also run the bare acompletion-under-a-semaphore pattern and print the ratios.")
@click.option("--baseline-transport", type=click.Choice(["openai-sdk", "litellm-http"]), default="openai-sdk",
              show_default=True,
              help="The bare pattern's path for openai/ calls: litellm's default (the OpenAI SDK) "
                   "or litellm's own HTTP handler, which batchrun uses.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench_out"),
              show_default=True, help="Where bench.json and bench.png go.")
@click.option("--latency-ms", type=click.FloatRange(min=0), default=200.0, show_default=True,
              help="Simulator: base latency per request.")
@click.option("--per-token-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Simulator: extra latency per output token.")
@click.option("--jitter", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Simulator: latency scaled by a factor in [1-J, 1+J].")
@click.option("--seed", type=int, default=0, show_default=True, help="Simulator: seed for answers and jitter.")
@click.option("--rpm", type=click.IntRange(min=1), help="Simulator: requests per minute before 429.")
@click.option("--tpm", type=click.IntRange(min=1), help="Simulator: tokens per minute before 429.")
@click.option("--capacity", type=click.IntRange(min=1),
              help="Simulator: requests in flight before each extra one slows every arrival down.")
@click.option("--overload-ms", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="Simulator: extra latency per request in flight above --capacity.")
@click.option("--max-429-rate", type=click.FloatRange(0, 1), default=DEFAULT_MAX_429_RATE, show_default=True,
              help="Recommendation: highest 429 rate allowed.")
@click.option("--max-p95-ms", type=click.FloatRange(min=0, min_open=True),
              help=f"Recommendation: highest p95 latency allowed [default: {P95_FACTOR:g} x the lowest p95 seen].")
@click.option("--tie-within", type=click.FloatRange(0, 1), default=DEFAULT_TIE_WITHIN, show_default=True,
              help="Recommendation: throughputs this close (a fraction) to the best are a tie; "
                   "the lowest concurrency wins.")
@click.option("--workers", "workers_opt", default=None, metavar="N|auto",
              help="Worker processes per run [default: the job's `workers`; auto: as `batchrun run` decides].")
@click.option("--warmup", type=click.IntRange(min=0), default=4, show_default=True,
              help="Requests sent before the first measured setting (not measured).")
@click.option("--wide", is_flag=True, help="Every column (req/s, p99, ideal, efficiency, peak in flight, "
                                           "CPU per request...); the default table has at most 8.")
def bench_command(job_file: Path, settings: list[int | str], tickets: int | None, stream: bool, live: bool,
                  baseline: bool, baseline_transport: str, out_dir: Path, latency_ms: float, per_token_ms: float,
                  jitter: float, seed: int, rpm: int | None, tpm: int | None, capacity: int | None, overload_ms: float,
                  max_429_rate: float, max_p95_ms: float | None, tie_within: float, workers_opt: str | None,
                  warmup: int, wide: bool) -> None:
    """Sweep JOB_FILE's concurrency on a sample of its tickets and recommend a setting.

    Each setting runs through the real engine in a fresh temporary run directory
    (the job's run directory is never touched), against the embedded simulator
    unless --live. Prints a table, writes OUT/bench.json and OUT/bench.png.
    """
    from batchrun.errors import BatchrunError

    secrets: list[str] = []
    try:
        workers = None if workers_opt is None else (workers_opt if workers_opt == "auto" else _positive(workers_opt))
        outcome = run_bench(job_file, settings=settings, tickets=tickets, stream=stream, live=live,
                            baseline=baseline, baseline_transport=baseline_transport, workers=workers,
                            warmup=warmup, sim_options={"latency_ms": latency_ms, "per_token_ms": per_token_ms,
                                                        "jitter": jitter, "seed": seed, "rpm": rpm, "tpm": tpm,
                                                        "capacity": capacity, "overload_ms": overload_ms},
                            max_429_rate=max_429_rate, max_p95_ms=max_p95_ms, tie_within=tie_within,
                            say=_say, secrets=secrets)
    except BatchrunError as exc:
        click.echo(error_line(exc, secrets), err=True)
        sys.exit(int(exc.exit_code))
    _write_outputs(outcome.report, outcome.rows, outcome.recommendation, out_dir, outcome.job, outcome.sweep, wide)
    if outcome.interrupted:
        sys.exit(130)


def _say(message: str) -> None:
    click.echo(f"bench: {message}", err=True)


def _say_burst(rows: list[BenchRow], sweep: Sweep) -> None:
    """Say when a sample never drained the rate limit's burst, and what the sustained rate is."""
    burst_only = [r for r in rows if r.get("burst_drained") is False]
    limited = [r for r in rows if r.get("sustained_limit_rps")]
    if not limited:
        return
    rate = limited[0]["sustained_limit_rps"]
    if burst_only:
        need = max((r.get("drain_tickets") or 0) for r in burst_only) or None
        names = ", ".join(f"C={r['concurrency']}" for r in burst_only)
        click.echo(f"\nnote: {names} never drained the rate limit's burst (a minute's allowance at once, then "
                   f"{rate:,.1f} requests/s): their tickets/s are the burst's, not what a long night sustains. "
                   f"The recommendation uses the sustained figure (sustained/s)"
                   + (f"; about {need:,} tickets per setting would measure it (--tickets {need})" if need else "")
                   + ".")
    else:
        click.echo(f"\nnote: the rate limit sustains {rate:,.1f} requests/s; sustained/s caps each setting there.")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: a number of processes or 'auto'", param_hint="--workers") from None
    if value < 1:
        raise click.BadParameter("at least 1", param_hint="--workers")
    return value


def _write_outputs(report: BenchReport, rows: list[BenchRow], rec: Recommendation, out_dir: Path,
                   job: JobSpec, sweep: Sweep, wide: bool = False) -> None:
    import orjson

    click.echo(f"\n{job.name}: batchrun bench, {report['mode']}"
               + (f" (latency {sweep.sim_config.latency_ms:g} ms)" if sweep.sim_config is not None else "")
               + (", streaming" if sweep.stream else ""))
    click.echo(format_table(rows, wide=wide) if rows else "(no setting finished)")
    _say_burst(rows, sweep)
    notes = sorted({r["ideal_limited_by"] for r in rows} - {"concurrency", "unknown"}) if wide else []
    explain = {
        "tickets": "the last wave of requests is partial",
        "capacity": "the simulator slows down above --capacity in flight",
        "rpm": "the simulator's --rpm allows less", "tpm": "the simulator's --tpm allows less",
    }
    for name in notes:
        click.echo(f"ideal ({name}): capped because {explain.get(name, name)}")
    for r in rows:
        if r.get("not_finished"):
            click.echo(f"*C={r['concurrency']}: interrupted, {r['not_finished']} of {r['tickets']} tickets not finished")
    if any(r.get("baseline") for r in rows):
        t = report.get("transport") or {}
        click.echo("\nbatchrun vs the bare pattern (acompletion under asyncio.Semaphore, asyncio.gather, no retries); "
                   f"openai/ calls through: batchrun {t.get('batchrun')}, bare {t.get('baseline')}:")
        click.echo(format_baseline_table(rows))
        if any((r.get("workers") or 1) > 1 for r in rows if r.get("baseline")):
            click.echo("\nthe same after start-up (the seconds before the first ticket; the sweep's worker processes "
                       "imported litellm once, during the warm-up):")
            click.echo(format_baseline_table(rows, after_startup=True))
    auto = report.get("auto")
    if auto:
        click.echo(f"\nconcurrency = \"auto\" (up to {auto['row'].get('concurrency_max')}):")
        click.echo(format_table([auto["row"]], wide=wide))
        share = auto["share_of_best"]
        click.echo(f"auto settled at {auto['settled'] if auto['settled'] is not None else '?'}: "
                   f"{auto['tickets_per_s']:,.1f} tickets/s"
                   + (f" = {share * 100:.0f}% of the best fixed setting (C={auto['best_fixed_concurrency']}: "
                      f"{auto['best_fixed_tickets_per_s']:,.1f}/s)" if share is not None else ""))
    if rec.concurrency is not None:
        click.echo(f"\nrecommendation: concurrency = {rec.concurrency}  ({rec.reason})")
    else:
        click.echo(f"\nrecommendation: none: {rec.reason}")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "bench.json"
    json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    png_path = out_dir / "bench.png"
    title = f"{job.name}: {sweep.model} via {sweep.endpoint}"
    unreached = [r["concurrency"] for r in rows if not reached(r)]
    if rows and draw_plot(rows, png_path, title, rec.concurrency, auto=auto["row"] if auto else None,
                          unreached=unreached):
        click.echo(f"wrote {json_path} and {png_path}")
    else:
        click.echo(f"wrote {json_path}" + (f" (no plot: {PLOT_HINT} to get {png_path})" if rows else ""))
