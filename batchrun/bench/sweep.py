"""`batchrun bench`: sweep the concurrency of a job and recommend a setting.

This module measures and returns data (`run_bench`, the rows, the recommendation,
the text tables); the command (options, printing, bench.json) is commands/bench.py,
the plot charts.py.

SYNOPSIS

    batchrun bench JOB [--concurrency 1,4,16,64,256[,auto]] [--tickets N] [--stream]
                       [--live] [--baseline] [--out DIR] [--workers N|auto] [--wide]
                       [--latency-ms MS] [--per-token-ms MS] [--jitter J] [--seed S]
                       [--rpm N] [--tpm N] [--capacity K] [--overload-ms MS]
                       [--max-429-rate R] [--max-p95-ms MS] [--tie-within F]
                       [--warmup N]

WHAT IT DOES

For each concurrency setting C, bench runs a sample of JOB's tickets through
the real engine (`engine.prepare_run` + `engine.execute_run` with a
`provider.LiteLLMProvider`: the code path of `batchrun run`), each setting in
a fresh temporary run directory. The job's own run directory is never
touched. The sample is the first valid tickets of the job's input (bad
lines, duplicate ids and tickets lacking a prompt field are passed over);
an input shorter than the sample is cycled with suffixed ids (`T1~r2`).

`auto` in the --concurrency list also runs the job with concurrency = "auto"
(AIMD between the job's min_concurrency and max_concurrency) on a sample
sized for max_concurrency, reports where it settled and its throughput as a
share of the best fixed setting (it should reach 80%), in its own table and
as a horizontal line on the plot; it is not a candidate for the
recommendation and gets no baseline.

Worker processes: each run uses as many as `batchrun run` would (the job's
`workers`, "auto" by default: one per core for runs of 5,000 tickets or more
at concurrency 32 or more, else 1); `--workers N|auto` overrides the job.
The sweep starts its worker processes once, during the warm-up, and every
setting reuses them (workers.open_worker_pool): each imports litellm once
(seconds), as the bare pattern's process has it loaded before it is
measured. A `batchrun run` starts its workers per run: its summary's
`startup_s` and `worker_startup_cpu_s` show what that costs. A reused
process is not in the OS's count of ended children, so the workers' CPU is
the figure each reports for the run (`worker_cpu_s`).

Tickets per setting: `--tickets N` runs the same N tickets at every setting.
By default (`auto`) a setting runs 4 x C tickets, at least 32 and at most
512 (32, 32, 64, 256, 512 for the default sweep): several "waves" of
requests, enough to see the steady state, without C=1 spending minutes (200
tickets one at a time at 200 ms is 40 s, twice that with --baseline) or a
high setting finishing in a single wave. The default sweep with --baseline
takes about a minute on a 2-core machine. For a figure to quote, give a
fixed count: `--concurrency 128 --tickets 2000 --baseline`.

Endpoint: by default an embedded simulator (`sim.process.start_simulator`)
on 127.0.0.1, one for the whole sweep, its counters reset before each run;
its behaviour comes from the flags, not from the job's [simulator] section:
latency `--latency-ms` (200) + `--per-token-ms` (0) per output token, scaled
by a uniform factor in [1 - jitter, 1 + jitter] (`--jitter` 0.1), optional
server-side `--rpm` / `--tpm` limits (429 with Retry-After) and a capacity
model (`--capacity K`: each request arriving with N > K in flight waits
`--overload-ms` x (N - K) more). The job's model is routed to it as
`openai/<name>`, so litellm prices the tokens as the named model. `--live`
uses the job's real model, api_base and key (the variable named by
`api_key_env`; bench fails at once if it is unset). A live sweep sends real,
billed requests: about sum(tickets per setting), twice that with --baseline.

`--stream` sets the job's `stream = true` when this batchrun's job spec has
that field (otherwise it says so and runs without streaming); TTFT columns
appear when the run summary carries `ttft_ms`.

Before the first measured setting, `--warmup` (4) requests go through both
batchrun's provider and bare litellm, so import and first-call costs are not
measured; the simulator's counters are then reset.

WHAT IT MEASURES (one row per setting; the table shows at most 8 columns, --wide all of them)

    req/s       requests sent / wall time (retries and 429s included)
    tickets/s   tickets done / wall time
    sustained/s tickets/s capped at what a rate limit sustains (below): the
                throughput used to recommend; "(capped)" where the measured
                figure was above it (the burst's)
    out tok/s   completion tokens / wall time
    p50/p95/p99 latency of successful attempts (ms); TTFT likewise when streaming
    429         attempts answered 429 / attempts
    err         tickets failed / tickets
    cost        USD for the setting's tickets (litellm's price of the model,
                or the job's [prices])
    ideal, eff  see below
    peak        the simulator's peak in-flight count (server side)
    procs       worker processes (shown when a run used more than one)
    cpu/req     CPU seconds per request, user + system: this process
                (getrusage RUSAGE_SELF) plus, with worker processes, the
                CPU they report for the run (`worker_cpu_s`: the sweep's
                workers live on, so RUSAGE_CHILDREN never counts them)

Ideal and efficiency. The ideal is what a perfect client could reach with C
requests in flight: C / mean latency, where the latency is the simulator's
nominal one (latency_ms + per_token_ms x mean output tokens: what the server
spends, free of client-side CPU delays) or, with --live, the measured mean.
It is then capped, and the cap named in the `ideal` column:
  * tickets: N tickets at C in flight need ceil(N / min(C, N)) waves;
  * capacity: above K in flight the simulator slows every request down, so
    the ideal is the better of holding K or C in flight;
  * rpm / tpm: the simulator's token buckets start full (a burst of one
    minute's allowance) and then refill at limit / 60 per second; tokens per
    request are estimated as the simulator does (prompt tokens + max_tokens).
efficiency = tickets/s achieved / ideal.

A LONG NIGHT: THE SUSTAINED RATE

A rate limit (the simulator's --rpm / --tpm, or with --live the job's rpm /
tpm) lets a minute's allowance through at once, then limit / 60 per second.
A sample smaller than that burst measures the burst: C=64 at 138 tickets/s
under --rpm 4000, where a night of tickets runs at 66.7/s. Each row therefore
has `sustained_tickets_per_s`: its tickets/s capped at the sustained rate
(times the share of requests that gave a ticket), and `burst_drained`: whether
the sample sent more requests than the burst. The recommendation compares the
sustained figures (so the lowest setting that reaches the limit wins the tie),
and the command says when the burst was not drained and how many tickets
would get past it (`--tickets N`).

THE RECOMMENDATION

The setting with the highest sustained tickets/s among those whose 429 rate is at most
`--max-429-rate` (0.01), whose p95 latency is at most `--max-p95-ms`
(default: 3 x the lowest p95 of the sweep) and where no ticket failed.
Throughputs within `--tie-within` (0.05, i.e. 5%) of the best are a tie,
and a tie goes to the lowest concurrency: on a busy machine two settings 5%
apart are the same, and fewer requests in flight cost less memory and fewer
429s. One line says why, naming a faster setting that was ruled out and the
threshold it broke. `recommend(rows)` is the pure function behind it.

Never a setting the sweep did not reach: a setting counts only when the
simulator saw at least 90% of it (rounded down) in flight (its peak in-flight count). A
setting that was not reached is named with why: a sample smaller than 8
tickets per slot ("it would need about N tickets: --tickets N"), or a client
that could not send faster (its tickets/s x latency).

--baseline

Also runs, at every setting, on the same tickets against the same endpoint in
the same process, the bare pattern users write by hand::

    sem = asyncio.Semaphore(C)
    async def one(ticket):
        async with sem:
            return await litellm.acompletion(model, render_messages(job, ticket),
                api_base=..., api_key=..., timeout=job.timeout_s,
                num_retries=0, max_retries=0, **job.params)
    await asyncio.gather(*(one(t) for t in tickets), return_exceptions=True)

(no retries, no checkpoint), with its requests/s and CPU per request measured
the same way, and prints batchrun's next to it with the ratios.

The bare pattern runs with litellm's defaults, as users write it: OpenAI-style
calls through the OpenAI SDK and litellm's request preparation in a thread
(`--baseline-transport openai-sdk`). batchrun sends plain calls through
litellm's own HTTP handler and prepares them on the loop thread (provider.py),
which is where its CPU advantage comes from; `--baseline-transport
litellm-http` gives the bare pattern the same HTTP path, to see what the rest
costs. Both transports are recorded in bench.json.

OUTPUT

A table on stdout (and the baseline table with --baseline), `DIR/bench.json`
(every row, the settings, the versions, the recommendation) and `DIR/bench.png`
(tickets/s, the ideal and the baseline against concurrency on a log2 axis,
p95 latency on a second y axis) when matplotlib is importable
(`pip install 'batchrun[plots]'`). DIR is `--out` (default `bench_out/`).
Progress goes to stderr. Exit code 0; 2 for a bad job file, input or missing
key; 130 if interrupted (the rows measured so far are still written).

Timings are measurements of this machine at this moment: no unit test
asserts on them (tests/test_bench.py checks the fields and the arithmetic).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NotRequired, TypedDict

from batchrun.analysis.textfmt import num
from batchrun.bench.baseline import (
    SIM_API_KEY,
    cpu_seconds,
    make_provider,
    openai_transport_set,
    run_baseline,
    warmup_request,
    write_sample,
)
from batchrun.bench.recommend import (
    DEFAULT_MAX_429_RATE,
    DEFAULT_TIE_WITHIN,
    AutoComparison,
    AutoRow,
    Baseline,
    BenchRow,
    IdealLimits,
    Recommendation,
    RecommendationJSON,
    ServerStats,
    build_row,
    compare_auto,
    ratio,
    recommend,
    tickets_for,
)
from batchrun.errors import redact_url
from batchrun.sim.config import simulated_model as sim_model

if TYPE_CHECKING:
    from batchrun.job.spec import JobSpec
    from batchrun.providers.online import ProviderArgs
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import SimulatorProcess


class SimOptions(TypedDict, total=False):
    """The simulator's knobs `batchrun bench` sets (SimConfig fields)."""

    latency_ms: float
    per_token_ms: float
    jitter: float
    seed: int
    rpm: int | None
    tpm: int | None
    capacity: int | None
    overload_ms: float


@dataclass
class Sweep:
    """One sweep: its settings and the endpoint it measures (run_bench builds it)."""

    job: JobSpec
    job_path: Path
    settings: list[int | str]
    tickets: int | None
    live: bool
    baseline: bool
    stream: bool
    warmup: int
    sim_config: SimConfig | None  # None: --live
    model: str
    api_base: str | None
    api_key: str | None
    endpoint: str
    workdir: Path
    auto_rows: list[AutoRow] | None = None  # the "auto" setting's row, when swept
    baseline_transport: str = "openai-sdk"  # the bare pattern's path for openai/ calls (module docstring)
    say: Callable[[str], None] = lambda _message: None  # progress lines (the command prints them)


def auto_ceiling(job: JobSpec) -> int:
    """The most requests in flight concurrency = "auto" may reach (the job's max_concurrency)."""
    return int(job.max_concurrency)


def setting_tickets(setting: int | str, tickets: int | None, job: JobSpec) -> int:
    return tickets_for(auto_ceiling(job) if setting == "auto" else int(setting), tickets)


class _Interrupted(Exception):
    pass


async def _measure_settings(sweep: Sweep, sim: SimulatorProcess | None, rows: list[BenchRow]) -> None:
    """Warm up, then every setting: batchrun (and the baseline); rows are appended as measured."""
    import gc

    import anyio

    from batchrun.job.tickets import read_tickets
    from batchrun.launcher import LaunchOptions, run_online
    from batchrun.providers.litellm_setup import preload

    largest = max([int(c) for c in sweep.settings if c != "auto"] + [sweep.job.max_concurrency])
    preload(max_connections=largest)  # the pool is sized when litellm is imported
    sample = sweep.workdir / "sample.jsonl"
    all_tickets = list(read_tickets(sample, sweep.job.id_field))

    if sweep.warmup:
        warm = all_tickets[: sweep.warmup]
        provider = make_provider(sweep.job, sweep.model, sweep.api_base, sweep.api_key, max_connections=largest)
        try:
            for ticket in warm:
                await provider.complete(warmup_request(sweep.job, ticket))
            if sweep.baseline:
                with openai_transport_set(sweep.baseline_transport):
                    await run_baseline(sweep.job, warm, len(warm), model=sweep.model,
                                       api_base=sweep.api_base, api_key=sweep.api_key, stream=sweep.stream)
        except Exception as exc:  # the sweep will say it better, per setting
            sweep.say(f"warm-up request failed: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            await provider.aclose()

    limits: IdealLimits = {}
    cfg = sweep.sim_config
    if cfg is not None:
        limits = {"rpm": cfg.rpm, "tpm": cfg.tpm, "capacity": cfg.capacity, "overload_ms": cfg.overload_ms}
    else:  # --live: the job's own rpm / tpm pace it (a second's burst, then limit / 60 per second)
        limits = {"rpm": sweep.job.rpm, "tpm": sweep.job.tpm}
    max_tokens = sweep.job.params.get("max_tokens") or sweep.job.params.get("max_completion_tokens")

    def server_stats() -> ServerStats | None:
        if sim is None:
            return None
        s = sim.stats()
        return {"peak_in_flight": s.get("peak_in_flight"), "rate_limited": s.get("rate_limited"),
                "responses_by_status": s.get("responses_by_status"), "total_requests": s.get("total_requests")}

    # The run's provider, as `batchrun run` builds it (the launcher's run_online); worker processes
    # and the coordinator's own provider are the same choice as there.
    target: ProviderArgs = {"model": sweep.model, "api_base": sweep.api_base, "api_key": sweep.api_key, "params": sweep.job.params,
              "prices": sweep.job.prices.model_dump() if sweep.job.prices else None, "max_connections": largest,
              "cache": sweep.job.cache_settings()}

    # One pool of worker processes for the whole sweep: they import litellm once, now, and every
    # multi-process setting reuses them (the bare pattern reuses this process's litellm the same way).
    from batchrun.execution.executors.process import open_worker_pool

    most_workers = max(sweep.job.with_overrides(concurrency=c).worker_count(
        setting_tickets(c, sweep.tickets, sweep.job)) for c in sweep.settings)
    async with open_worker_pool(largest) as pool:
        if most_workers > 1:
            await pool.warm(most_workers)
        for c in sweep.settings:
            n = setting_tickets(c, sweep.tickets, sweep.job)
            c_ceiling = auto_ceiling(sweep.job) if c == "auto" else int(c)
            label = "auto" if c == "auto" else f"c{int(c):04d}"
            job_c = sweep.job.with_overrides(input=sample, run_dir=sweep.workdir / label, concurrency=c)
            workers = job_c.worker_count(n)
            started: list[float] = []

            def start_measuring() -> None:
                if sim is not None:
                    sim.reset()
                gc.collect()
                started.append(cpu_seconds())

            sim_url = sweep.api_base if sim is not None else None  # the simulator: recorded as "simulator"
            each: ProviderArgs = {**target, "api_base": None} if sim_url else target
            result = await run_online(job_c, sweep.job_path, {"": each},
                                      sim_url, LaunchOptions(limit=n, grace=5.0), before_execute=start_measuring,
                                      worker_pool=pool)
            cpu_self = cpu_seconds() - started[0]
            summary = result.summary
            cpu = cpu_self + float(summary.get("worker_cpu_s") or 0.0)  # what the workers said (0 without)
            done = summary["done"]
            if limits.get("tpm") and done:
                mean_out = summary["completion_tokens"] / done
                limits["tokens_per_request"] = summary["prompt_tokens"] / done + (max_tokens or mean_out)
            if cfg is not None:
                mean_out = summary["completion_tokens"] / done if done else 0.0
                latency_s: float | None = (cfg.latency_ms + cfg.per_token_ms * mean_out) / 1000.0
            else:
                mean = summary["latency_ms"].get("mean")
                latency_s = mean / 1000.0 if mean else None
            row = build_row(c_ceiling, n, result.state, summary, cpu, latency_s=latency_s, server=server_stats(),
                            limits=limits)
            row["workers"] = workers
            if workers > 1:  # where the CPU went: this process (the coordinator) and the worker processes
                row["cpu_s_coordinator"] = round(cpu_self, 3)
                row["cpu_s_workers"] = round(cpu - cpu_self, 3)
            settled = ""
            if c == "auto":
                auto_row: AutoRow = {**row, "concurrency": "auto", "concurrency_max": c_ceiling,
                                     "concurrency_settled": summary.get("concurrency_settled")}
                settled = f", settled at {auto_row['concurrency_settled']}"
                (sweep.auto_rows if sweep.auto_rows is not None else []).append(auto_row)
            else:
                rows.append(row)
            sweep.say(f"C={c}: {n} tickets in {row['wall_s']:.2f} s, {row['requests_per_s']:.1f} req/s, "
                 f"p95 {num(row['latency_ms'].get('p95'), ',.0f')} ms, {row['failed']} failed"
                 + (f", {workers} worker processes" if workers > 1 else "")
                 + settled
                 + (f" ({result.error})" if result.error else ""))
            if result.state == "interrupted":
                raise _Interrupted()

            if sweep.baseline and c != "auto":
                if sim is not None:
                    sim.reset()
                gc.collect()
                before = cpu_seconds()
                with openai_transport_set(sweep.baseline_transport):
                    bare = await run_baseline(sweep.job, all_tickets[:n], c_ceiling, model=sweep.model,
                                              api_base=sweep.api_base, api_key=sweep.api_key, stream=sweep.stream)
                base_cpu = cpu_seconds() - before
                base_cpu_ms = round(base_cpu * 1000 / bare["requests"], 3) if bare["requests"] else None
                base: Baseline = {
                    **bare,
                    "transport": sweep.baseline_transport,
                    "cpu_s": round(base_cpu, 3),
                    "cpu_ms_per_request": base_cpu_ms,
                    "server": server_stats(),
                    "speed_ratio": ratio(row["requests_per_s"], bare["requests_per_s"]),
                    "cpu_ratio": ratio(row["cpu_ms_per_request"], base_cpu_ms),
                    "speed_ratio_after_startup": ratio(row["requests_per_s_after_startup"], bare["requests_per_s"]),
                    "cpu_ratio_after_startup": ratio(row["cpu_ms_per_request_after_startup"], base_cpu_ms),
                }
                row["baseline"] = base
                sweep.say(f"C={c}: bare pattern {base['requests_per_s']:.1f} req/s, {base['failed']} failed")
            await anyio.sleep(0)


class BenchMachine(TypedDict):
    python: str
    platform: str
    cpu_count: int | None


class BenchJob(TypedDict):
    name: str
    path: str
    model: str
    input: str


class BenchTransport(TypedDict):
    batchrun: str
    baseline: str | None


class BenchReport(TypedDict):
    """bench.json."""

    batchrun_version: str
    litellm_version: str
    created_at: str
    machine: BenchMachine
    argv: list[str]
    job: BenchJob
    mode: str  # "live" or "simulator"
    model: str
    endpoint: str
    simulator: dict[str, object] | None  # the SimConfig's fields but its faults
    stream: bool
    baseline: bool
    transport: BenchTransport
    settings: list[int | str]
    tickets: int | str  # per setting, or "auto"
    interrupted: bool
    rows: list[BenchRow]
    recommendation: RecommendationJSON
    auto: NotRequired[AutoComparison | None]


def _report(job: JobSpec, job_file: Path, sweep: Sweep, rows: list[BenchRow], rec: Recommendation, *,
            interrupted: bool) -> BenchReport:
    import dataclasses
    import platform
    from datetime import datetime, timezone

    from batchrun import __version__
    from batchrun.providers.litellm_setup import litellm_version, openai_transport

    sim: dict[str, object] | None = None
    if sweep.sim_config is not None:
        sim = {k: v for k, v in dataclasses.asdict(sweep.sim_config).items() if k != "faults"}
    return {
        "batchrun_version": __version__,
        "litellm_version": litellm_version(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpu_count": os.cpu_count()},
        "argv": list(sys.argv),
        "job": {"name": job.name, "path": str(job_file), "model": job.model, "input": str(job.input)},
        "mode": "live" if sweep.live else "simulator",
        "model": sweep.model,
        "endpoint": sweep.endpoint,
        "simulator": sim,
        "stream": sweep.stream,
        "baseline": sweep.baseline,
        "transport": {"batchrun": openai_transport(sweep.stream),
                      "baseline": sweep.baseline_transport if sweep.baseline else None},
        "settings": sweep.settings,
        "tickets": sweep.tickets if sweep.tickets is not None else "auto",
        "interrupted": interrupted,
        "rows": rows,
        "recommendation": rec.as_dict(),
    }


@dataclass
class BenchOutcome:
    """What `run_bench` measured: the rows, the recommendation and the report (bench.json)."""

    job: JobSpec
    sweep: Sweep
    rows: list[BenchRow]
    recommendation: Recommendation
    report: BenchReport
    interrupted: bool


def run_bench(job_file: Path, *, settings: list[int | str], tickets: int | None = None, stream: bool = False,
              live: bool = False, baseline: bool = False, baseline_transport: str = "openai-sdk",
              workers: int | str | None = None, warmup: int = 4, sim_options: SimOptions | None = None,
              max_429_rate: float = DEFAULT_MAX_429_RATE, max_p95_ms: float | None = None,
              tie_within: float = DEFAULT_TIE_WITHIN, say: Callable[[str], None] = lambda _m: None,
              secrets: list[str] | None = None) -> BenchOutcome:
    """Sweep `settings` of JOB_FILE (each in a fresh temporary run directory, against the
    embedded simulator built from `sim_options` unless `live`) and recommend one.

    `say` receives progress lines; API keys read for --live are appended to `secrets`
    (for the caller's error redaction). Interrupted (SIGINT) sweeps return what they
    measured, with `interrupted` set. Runs its own event loop (anyio.run)."""
    import contextlib
    import tempfile
    import threading

    import anyio

    from batchrun.errors import ConfigurationError
    from batchrun.job.spec import load_job

    secrets = secrets if secrets is not None else []
    rows: list[BenchRow] = []
    auto_rows: list[AutoRow] = []
    interrupted = False
    job = load_job(job_file)
    if workers is not None:
        job = job.with_overrides(workers=workers)
    if stream:
        job = job.with_overrides(stream=True)
    if live:
        api_key = None
        if job.api_key_env:
            api_key = os.environ.get(job.api_key_env)
            if not api_key:
                raise ConfigurationError(
                    f"--live: environment variable {job.api_key_env} is not set "
                    f"(the job's api_key_env names it); nothing was sent")
            secrets.append(api_key)
        model, sim_config = job.model, None
        endpoint = redact_url(job.api_base) if job.api_base else "provider default"
    else:
        from batchrun.sim.config import SimConfig

        api_key, model, endpoint = SIM_API_KEY, sim_model(job.model), "simulator"
        options: SimOptions = {"latency_ms": 200.0, "overload_ms": 20.0, "jitter": 0.1, **(sim_options or {})}
        sim_config = SimConfig(**options)
    counts = {c: setting_tickets(c, tickets, job) for c in settings}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="batchrun-bench-")))
        needed = max(max(counts.values()), warmup)
        distinct = write_sample(job, needed, workdir / "sample.jsonl")
        if distinct < needed:
            say(f"{job.input} has {distinct} valid tickets; the sample of {needed} repeats them with suffixed ids")
        # litellm's import (seconds) overlaps the simulator's start-up (its own imports).
        from batchrun.providers.litellm_setup import preload

        largest = max([int(c) for c in settings if c != "auto"] + [job.max_concurrency])
        importer = threading.Thread(target=preload, kwargs={"max_connections": largest},
                                    name="bench-import-litellm", daemon=True)
        importer.start()
        sim = None
        api_base: str | None
        if sim_config is not None:
            from batchrun.sim.process import start_simulator

            sim = stack.enter_context(start_simulator(sim_config))
            api_base = sim.base_url
        else:
            api_base = job.api_base
        importer.join()
        say(f"{job.name}: model {model} via {endpoint}"
            + (f" ({api_base}, latency {sim_config.latency_ms:g} ms)" if sim_config is not None else "")
            + f"; settings {', '.join(f'{c} ({counts[c]} tickets)' for c in settings)}"
            + ("; with the bare-pattern baseline" if baseline else ""))
        sweep = Sweep(job=job, job_path=job_file, settings=settings, tickets=tickets, live=live,
                     baseline=baseline, stream=stream, warmup=warmup, sim_config=sim_config, model=model,
                     api_base=api_base, api_key=api_key, endpoint=endpoint, workdir=workdir,
                     auto_rows=auto_rows, baseline_transport=baseline_transport, say=say)
        try:
            anyio.run(_measure_settings, sweep, sim, rows)
        except (_Interrupted, KeyboardInterrupt):
            interrupted = True
            say("interrupted: writing the rows measured so far")
    rec = recommend(rows, max_429_rate=max_429_rate, max_p95_ms=max_p95_ms, tie_within=tie_within)
    auto = compare_auto(auto_rows[0], rows) if auto_rows else None
    report = _report(job, job_file, sweep, rows, rec, interrupted=interrupted)
    report["auto"] = auto
    return BenchOutcome(job=job, sweep=sweep, rows=rows, recommendation=rec, report=report, interrupted=interrupted)
