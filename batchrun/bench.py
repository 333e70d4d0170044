"""`batchrun bench`: sweep the concurrency of a job and recommend a setting.

This module measures and returns data (`run_bench`, the rows, the recommendation,
the text tables); the command (options, printing, bench.json) is commands/bench.py,
the plot charts.py.

SYNOPSIS

    batchrun bench JOB [--concurrency 1,4,16,64,256[,auto]] [--tickets N] [--stream]
                       [--live] [--baseline] [--out DIR] [--workers N|auto]
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
share of the best fixed setting (issue 4 wants >= 80%), in its own table and
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

WHAT IT MEASURES (one row per setting)

    req/s       requests sent / wall time (retries and 429s included)
    tickets/s   tickets done / wall time: the throughput used to recommend
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

THE RECOMMENDATION

The setting with the highest tickets/s among those whose 429 rate is at most
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

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from batchrun.errors import redact_url
from batchrun.sim.config import simulated_model as sim_model
from batchrun.stats import percentiles
from batchrun.textfmt import num, pct, table

__all__ = [
    "AUTO_MAX_TICKETS",
    "AUTO_MIN_TICKETS",
    "AUTO_WAVES",
    "Recommendation",
    "format_baseline_table",
    "format_table",
    "ideal_throughput",
    "parse_concurrency",
    "reached",
    "recommend",
    "sim_model",
    "tickets_for",
]

DEFAULT_CONCURRENCY = "1,4,16,64,256"
AUTO_WAVES = 4  # --tickets auto: 4 x concurrency tickets per setting ...
AUTO_MIN_TICKETS = 32  # ... at least this many ...
AUTO_MAX_TICKETS = 512  # ... at most this many
DEFAULT_MAX_429_RATE = 0.01
DEFAULT_TIE_WITHIN = 0.05  # throughputs within 5% of the best are a tie: the lowest concurrency wins
P95_FACTOR = 3.0  # default --max-p95-ms: this times the lowest p95 of the sweep
SIM_API_KEY = "sim-key"


# --------------------------------------------------------------------------------------------
# Pure pieces (tested without a network)
# --------------------------------------------------------------------------------------------


def parse_concurrency(text: str) -> list[int | str]:
    """'1,4,16,auto' -> [1, 4, 16, 'auto']: positive integers, sorted, duplicates dropped, then
    'auto' (the job's adaptive concurrency) if given."""
    values: set[int] = set()
    auto = False
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if part.lower() == "auto":
            auto = True
            continue
        try:
            value = int(part)
        except ValueError:
            raise ValueError(f"{part!r} is not an integer") from None
        if not 1 <= value <= 4096:
            raise ValueError(f"{value} is outside 1..4096")
        values.add(value)
    if not values and not auto:
        raise ValueError("no concurrency given")
    return [*sorted(values), *(["auto"] if auto else [])]


def tickets_for(concurrency: int, tickets: int | None) -> int:
    """Tickets run at one setting: `tickets` if given, else clamp(4 x C, 32, 512)."""
    if tickets is not None:
        return tickets
    return max(AUTO_MIN_TICKETS, min(AUTO_WAVES * concurrency, AUTO_MAX_TICKETS))


def ideal_throughput(
    concurrency: int,
    latency_s: float | None,
    tickets: int,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    tokens_per_request: float | None = None,
    capacity: int | None = None,
    overload_ms: float = 0.0,
) -> tuple[float | None, str]:
    """(requests/s a perfect client could reach, what limits it).

    `latency_s` is the server's latency of one request without overload.
    Limits: "concurrency" (C / latency, in whole waves of min(C, tickets)
    requests: "tickets" when the last wave is partial), "capacity" (above K
    in flight the server adds overload_ms per extra request: the better of
    holding K or C in flight), "rpm" / "tpm" (token buckets that start full,
    then refill at limit / 60 per second). None when the latency is unknown.
    """
    if not latency_s or latency_s <= 0 or tickets <= 0:
        return None, "unknown"
    in_flight = max(1, min(concurrency, tickets))
    candidates = [in_flight]
    if capacity is not None and in_flight > capacity:
        candidates.append(capacity)

    def duration(k: int) -> float:
        latency = latency_s + overload_ms / 1000.0 * max(0, k - (capacity or k))
        return math.ceil(tickets / k) * latency

    best_k = min(candidates, key=lambda k: (duration(k), -k))
    needed = duration(best_k)
    if best_k != in_flight or (capacity is not None and in_flight > capacity and overload_ms > 0):
        limited_by = "capacity"
    elif tickets % in_flight:
        limited_by = "tickets"  # a partial last wave
    else:
        limited_by = "concurrency"
    for name, per_minute, cost in (("rpm", rpm, 1.0), ("tpm", tpm, tokens_per_request)):
        if per_minute and cost and cost > 0:
            burst = per_minute / cost  # requests a full bucket admits at once
            rate = per_minute / cost / 60.0  # requests/s once it is empty
            limit_time = max(0.0, tickets - burst) / rate
            if limit_time > needed:
                needed, limited_by = limit_time, name
    return tickets / needed, limited_by


@dataclass(frozen=True)
class Recommendation:
    concurrency: int | None  # None: no setting met the thresholds
    reason: str
    max_429_rate: float
    max_p95_ms: float | None
    tie_within: float = DEFAULT_TIE_WITHIN

    def as_dict(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "reason": self.reason,
                "max_429_rate": self.max_429_rate, "max_p95_ms": self.max_p95_ms,
                "tie_within": self.tie_within}


def _p95(row: Mapping[str, Any]) -> float | None:
    return (row.get("latency_ms") or {}).get("p95")


REACHED_SHARE = 0.9  # a setting counts as tested when the server saw this share of it in flight
TICKETS_PER_SLOT = 8  # tickets a sweep needs per request in flight to reach a setting (a rule of thumb)


def reached(row: Mapping[str, Any]) -> bool:
    """Whether the sweep really had the row's concurrency in flight: the server's peak
    in-flight count is at least REACHED_SHARE of it, rounded down (unknown peak, e.g. --live: True)."""
    peak = (row.get("server") or {}).get("peak_in_flight")
    return peak is None or peak >= max(1, math.floor(REACHED_SHARE * row["concurrency"]))


def unreached_text(row: Mapping[str, Any]) -> str:
    """Why a setting was not reached, and what would test it: the average in flight the client
    kept (tickets/s x p50 latency) and, for a sample under TICKETS_PER_SLOT tickets a slot, the
    sample size that would."""
    concurrency, tickets = row["concurrency"], int(row.get("tickets") or 0)
    peak = (row.get("server") or {}).get("peak_in_flight")
    p50 = (row.get("latency_ms") or {}).get("p50")
    rate = float(row.get("tickets_per_s") or 0.0)
    parts = [f"at most {peak} in flight"]
    if p50:
        parts.append(f"{rate:,.1f} tickets/s x p50 {p50:,.0f} ms = {rate * p50 / 1000:,.0f} on average")
    needed = TICKETS_PER_SLOT * concurrency
    if tickets < needed:
        parts.append(f"the sample of {tickets:,} tickets was too small to test it: it would need about "
                     f"{needed:,} (--tickets {needed})")
    else:
        parts.append(f"{tickets:,} tickets: this client could not send faster")
    return ", ".join(parts)


def recommend(rows: Sequence[Mapping[str, Any]], *, max_429_rate: float = DEFAULT_MAX_429_RATE,
              max_p95_ms: float | None = None, tie_within: float = DEFAULT_TIE_WITHIN) -> Recommendation:
    """The setting with the highest `tickets_per_s` whose `rate_429` <= max_429_rate, whose
    `latency_ms.p95` <= max_p95_ms (default 3 x the lowest p95 among the rows) and whose
    `error_rate` is 0 (and none was left unfinished by an interrupt), among the settings the
    sweep reached (`reached`: never one it did not have in flight; the reason says why and
    how many tickets would test it). Throughputs within `tie_within` (a fraction) of the best count as a tie,
    and a tie goes to the lowest `concurrency`: the same work with fewer requests in flight.
    Pure: rows in, choice out."""
    p95s = [p for p in (_p95(r) for r in rows) if p is not None]
    if max_p95_ms is None and p95s:
        max_p95_ms = round(P95_FACTOR * min(p95s), 1)
    limit_text = f"{max_p95_ms:,.0f} ms" if max_p95_ms is not None else "-"

    def tps(row: Mapping[str, Any]) -> float:
        return float(row.get("tickets_per_s") or 0.0)

    def broken(row: Mapping[str, Any]) -> str | None:
        if not reached(row):
            return unreached_text(row)
        if row.get("not_finished", 0) > 0:
            return f"interrupted ({row['not_finished']} tickets not finished)"
        if row.get("error_rate", 0) > 0:
            return f"{pct(row['error_rate'])} of tickets failed"
        if row.get("rate_429", 0) > max_429_rate:
            return f"429 rate {pct(row['rate_429'])} > {pct(max_429_rate)}"
        p95 = _p95(row)
        if p95 is None:
            return "no successful request"
        if max_p95_ms is not None and p95 > max_p95_ms:
            return f"p95 {p95:,.0f} ms > {limit_text}"
        return None

    ok = [r for r in rows if broken(r) is None]
    if not ok:
        why = "; ".join(f"C={r['concurrency']}: {broken(r)}" for r in sorted(rows, key=lambda r: r["concurrency"]))
        return Recommendation(None, f"no setting met the thresholds ({why or 'no rows'})",
                              max_429_rate, max_p95_ms, tie_within)
    best = max(ok, key=lambda r: (tps(r), -r["concurrency"]))
    chosen = min((r for r in ok if tps(r) >= tps(best) * (1.0 - tie_within)), key=lambda r: r["concurrency"])
    if chosen is best:
        reason = f"highest throughput ({tps(chosen):,.1f} tickets/s)"
    else:
        reason = (f"{tps(chosen):,.1f} tickets/s, within {tie_within * 100:g}% of the best "
                  f"(C={best['concurrency']}: {tps(best):,.1f}/s) with fewer in flight")
    reason += (f", 429 rate {pct(chosen.get('rate_429', 0))} <= {pct(max_429_rate)}, "
               f"p95 {_p95(chosen):,.0f} ms <= {limit_text}")
    faster = sorted((r for r in rows if broken(r) is not None and reached(r) and tps(r) > tps(best)),
                    key=lambda r: -tps(r))
    if faster:
        reason += f"; C={faster[0]['concurrency']} was faster ({tps(faster[0]):,.1f}/s) but {broken(faster[0])}"
    unreached = sorted((r for r in rows if not reached(r)), key=lambda r: r["concurrency"])
    if unreached:
        reason += "; not recommended, never reached: " + "; ".join(
            f"C={r['concurrency']} ({unreached_text(r)})" for r in unreached)
    return Recommendation(chosen["concurrency"], reason, max_429_rate, max_p95_ms, tie_within)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def build_row(concurrency: int, tickets: int, state: str, summary: Mapping[str, Any], cpu_s: float, *,
              latency_s: float | None, server: Mapping[str, Any] | None = None,
              limits: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One JSON row from a run's summary (stats.RunStats.summary()) and its measurements."""
    done, failed, requests = summary["done"], summary["failed"], summary["requests"]
    wall = max(float(summary["wall_s"]), 1e-9)
    tickets_per_s = round(done / wall, 2)
    limits = dict(limits or {})
    ideal, limited_by = ideal_throughput(concurrency, latency_s, tickets, **limits)
    ttft = summary.get("ttft_ms") or summary.get("time_to_first_token_ms")
    return {
        "concurrency": concurrency,
        "tickets": tickets,
        "state": state,
        "done": done,
        "failed": failed,
        "not_finished": summary.get("not_finished", 0),
        "requests": requests,
        "retries": summary.get("retries", 0),
        "rate_limited": summary.get("rate_limited", 0),
        "errors_by_kind": dict(summary.get("errors_by_kind") or {}),
        "wall_s": summary["wall_s"],
        "requests_per_s": summary["requests_per_s"],
        "tickets_per_s": tickets_per_s,
        "output_tokens_per_s": summary["output_tokens_per_s"],
        "latency_ms": dict(summary["latency_ms"]),
        "ttft_ms": dict(ttft) if ttft else None,
        "rate_429": round(summary.get("rate_limited", 0) / requests, 4) if requests else 0.0,
        "error_rate": round(failed / tickets, 4) if tickets else 0.0,
        "prompt_tokens": summary.get("prompt_tokens", 0),
        "completion_tokens": summary.get("completion_tokens", 0),
        "cost_usd": summary.get("cost_usd"),
        "cost_per_1000_tickets_usd": summary.get("cost_per_1000_tickets_usd"),
        "ideal_latency_ms": round(latency_s * 1000, 1) if latency_s else None,
        "ideal_rps": round(ideal, 2) if ideal is not None else None,
        "ideal_limited_by": limited_by,
        "efficiency": round(tickets_per_s / ideal, 3) if ideal else None,
        "cpu_s": round(cpu_s, 3),
        "cpu_ms_per_request": round(cpu_s * 1000 / requests, 3) if requests else None,
        # start-up apart: the seconds before the first ticket was handed out, and the CPU worker
        # processes spent importing litellm (the bare pattern's process has litellm loaded already)
        "startup_s": summary.get("startup_s"),
        "worker_startup_cpu_s": summary.get("worker_startup_cpu_s"),
        "requests_per_s_after_startup": summary.get("requests_per_s_after_startup"),
        "cpu_ms_per_request_after_startup": (
            round((cpu_s - float(summary.get("worker_startup_cpu_s") or 0.0)) * 1000 / requests, 3)
            if requests else None),
        "server": dict(server) if server is not None else None,
        "baseline": None,
    }


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-setting table (TTFT columns only when some row has them)."""
    with_ttft = any(r.get("ttft_ms") for r in rows)
    header = ["conc", "tickets", "req/s", "tickets/s", "out tok/s", "p50 ms", "p95 ms", "p99 ms"]
    if with_ttft:
        header += ["ttft p50", "ttft p95", "ttft p99"]
    header += ["429", "err", "cost $", "ideal/s", "eff", "peak", "cpu ms/req"]
    with_workers = any((r.get("workers") or 1) > 1 for r in rows)
    if with_workers:
        header.append("procs")
    lines = []
    for r in rows:
        lat = r["latency_ms"]
        tickets = str(r["tickets"]) + ("*" if r.get("not_finished") else "")
        conc = str(r["concurrency"])
        if r["concurrency"] == "auto" and r.get("concurrency_settled") is not None:
            conc = f"auto:{r['concurrency_settled']}"
        line = [conc, tickets, num(r["requests_per_s"], ",.1f"), num(r["tickets_per_s"], ",.1f"),
                num(r["output_tokens_per_s"], ",.1f"), num(lat.get("p50"), ",.0f"), num(lat.get("p95"), ",.0f"),
                num(lat.get("p99"), ",.0f")]
        if with_ttft:
            ttft = r.get("ttft_ms") or {}
            line += [num(ttft.get(k), ",.0f") for k in ("p50", "p95", "p99")]
        ideal = "-" if r["ideal_rps"] is None else f"{r['ideal_rps']:,.1f}"
        if r["ideal_limited_by"] not in ("concurrency", "unknown"):
            ideal += f" ({r['ideal_limited_by']})"
        peak = (r.get("server") or {}).get("peak_in_flight")
        line += [pct(r["rate_429"]), pct(r["error_rate"]),
                 "-" if r["cost_usd"] is None else f"{r['cost_usd']:.6f}", ideal,
                 "-" if r["efficiency"] is None else f"{r['efficiency'] * 100:.0f}%",
                 "-" if peak is None else str(peak), num(r["cpu_ms_per_request"], ",.2f")]
        if with_workers:
            line.append(str(r.get("workers") or 1))
        lines.append(line)
    return "\n".join(table(header, lines, left=0))


def format_baseline_table(rows: Sequence[Mapping[str, Any]], after_startup: bool = False) -> str:
    """batchrun next to the bare acompletion-under-a-semaphore pattern, with the ratios.

    `after_startup`: batchrun's figures without its start-up (the seconds
    before the first ticket, and any CPU worker processes spent importing
    litellm for the run: the bare pattern's process has it loaded already).
    """
    header = ["conc", "batchrun req/s", "bare req/s", "ratio", "batchrun cpu ms/req", "bare cpu ms/req",
              "cpu ratio"] + (["start-up s", "procs"] if after_startup else ["bare err", "bare peak"])

    def x(value: float | None) -> str:
        return "-" if value is None else num(value, ".2f") + "x"

    lines = []
    for r in rows:
        b = r.get("baseline")
        if not b:
            continue
        if after_startup:
            lines.append([str(r["concurrency"]), num(r.get("requests_per_s_after_startup"), ",.1f"),
                          num(b["requests_per_s"], ",.1f"), x(b.get("speed_ratio_after_startup")),
                          num(r.get("cpu_ms_per_request_after_startup"), ",.2f"),
                          num(b["cpu_ms_per_request"], ",.2f"), x(b.get("cpu_ratio_after_startup")),
                          num(r.get("startup_s"), ",.2f"), str(r.get("workers") or 1)])
            continue
        peak = (b.get("server") or {}).get("peak_in_flight")
        lines.append([str(r["concurrency"]), num(r["requests_per_s"], ",.1f"), num(b["requests_per_s"], ",.1f"),
                      x(b["speed_ratio"]), num(r["cpu_ms_per_request"], ",.2f"),
                      num(b["cpu_ms_per_request"], ",.2f"), x(b["cpu_ratio"]), pct(b["error_rate"]),
                      "-" if peak is None else str(peak)])
    return "\n".join(table(header, lines, left=0))


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU of this process (worker processes report their own: `worker_cpu_s`)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_sample(job: Any, count: int, path: Path) -> int:
    """Write the first `count` valid tickets of the job's input to `path`; returns how many
    distinct tickets the input gave (fewer than `count`: the sample is cycled, ids suffixed)."""
    import orjson

    from batchrun.engine import render_messages
    from batchrun.errors import TicketError
    from batchrun.spec import MissingFieldError
    from batchrun.tickets import read_tickets, scan_input

    def valid(skip: frozenset[int] | set[int]) -> Iterable[Any]:
        seen: set[str] = set()
        for ticket in read_tickets(job.input, job.id_field, skip_lines=skip, max_line_bytes=job.max_line_bytes):
            if ticket.id in seen:
                continue
            try:
                render_messages(job, ticket)
            except MissingFieldError:
                continue
            seen.add(ticket.id)
            yield ticket
            if len(seen) >= count:
                return

    try:
        originals = list(valid(frozenset()))
    except TicketError:  # a bad line before `count` good ones: find every bad line, pass over them
        templates = [t for t in (job.system_template, job.user_template) if t is not None]
        scan = scan_input(job.input, job.id_field, templates, max_problems=0, max_line_bytes=job.max_line_bytes)
        originals = list(valid(scan.bad_lines))
    if not originals:
        raise TicketError(f"{job.input}: no valid ticket to benchmark with")
    with path.open("wb") as handle:
        for i in range(count):
            ticket = originals[i % len(originals)]
            fields = dict(ticket.fields)
            if i >= len(originals):
                fields[job.id_field] = f"{ticket.id}~r{i // len(originals) + 1}"
            handle.write(orjson.dumps(fields) + b"\n")
    return len(originals)


async def run_baseline(job: Any, tickets: Sequence[Any], concurrency: int, *, model: str,
                       api_base: str | None, api_key: str | None, stream: bool) -> dict[str, Any]:
    """The bare pattern: acompletion under asyncio.Semaphore(C), every ticket via asyncio.gather."""
    import asyncio
    import time

    from batchrun.engine import render_messages
    from batchrun.provider import bare_acompletion, is_rate_limit_error

    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    ttfts: list[float] = []
    completion_tokens = 0
    extra: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}

    async def one(ticket: Any) -> Any:
        nonlocal completion_tokens
        async with sem:
            t0 = time.perf_counter()
            response = await bare_acompletion(
                model=model, messages=render_messages(job, ticket), api_base=api_base, api_key=api_key,
                timeout=job.timeout_s, num_retries=0, max_retries=0, **extra, **job.params)
            if stream:
                usage, first = None, True
                async for chunk in response:
                    if first:
                        ttfts.append((time.perf_counter() - t0) * 1000)
                        first = False
                    usage = getattr(chunk, "usage", None) or usage
            else:
                usage = getattr(response, "usage", None)
            latencies.append((time.perf_counter() - t0) * 1000)
            completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
            return response

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(t) for t in tickets), return_exceptions=True)
    wall = max(time.perf_counter() - t0, 1e-9)
    errors = [r for r in results if isinstance(r, BaseException)]
    rate_limited = sum(1 for e in errors if is_rate_limit_error(e))
    kinds: dict[str, int] = {}
    for e in errors:
        kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
    n = len(tickets)
    return {
        "requests": n,
        "done": n - len(errors),
        "failed": len(errors),
        "rate_limited": rate_limited,
        "errors_by_type": dict(sorted(kinds.items())),
        "wall_s": round(wall, 3),
        "requests_per_s": round(n / wall, 2),
        "tickets_per_s": round((n - len(errors)) / wall, 2),
        "output_tokens_per_s": round(completion_tokens / wall, 1),
        "latency_ms": percentiles(latencies),
        "ttft_ms": percentiles(ttfts) if stream else None,
        "rate_429": round(rate_limited / n, 4) if n else 0.0,
        "error_rate": round(len(errors) / n, 4) if n else 0.0,
    }


def _make_provider(job: Any, model: str, api_base: str | None, api_key: str | None,
                   max_connections: int | None = None) -> Any:
    """A LiteLLMProvider as `batchrun run` builds it (streaming comes from the job, per request);
    the first one sizes litellm's connection pool for the sweep's largest setting."""
    from batchrun.provider import LiteLLMProvider

    return LiteLLMProvider(model=model, api_base=api_base, api_key=api_key, params=job.params, prices=job.prices,
                           max_connections=max_connections)


def _warmup_request(job: Any, ticket: Any) -> Any:
    """A request like the engine's for this ticket (with the job's stream/schema options)."""
    from batchrun.engine import render_messages
    from batchrun.provider import ChatRequest, RequestOptions

    return ChatRequest(f"warmup-{ticket.id}", render_messages(job, ticket), job.timeout_s,
                       options=RequestOptions.for_job(job))


@dataclass
class _Plan:
    job: Any
    job_path: Path
    settings: list[int | str]
    tickets: int | None
    live: bool
    baseline: bool
    stream: bool
    warmup: int
    sim_config: Any  # SimConfig or None
    model: str
    api_base: str | None
    api_key: str | None
    endpoint: str
    workdir: Path
    auto_rows: list[dict[str, Any]] | None = None  # the "auto" setting's row, when swept
    baseline_transport: str = "openai-sdk"  # the bare pattern's path for openai/ calls (module docstring)
    say: Callable[[str], None] = lambda _message: None  # progress lines (the command prints them)


@contextlib.contextmanager
def _openai_transport(name: str) -> Iterator[None]:
    """Within the block, litellm sends openai/ chat calls through `name` ("openai-sdk" or "litellm-http")."""
    from batchrun.provider import OPENAI_HTTP_HANDLER_ENV

    before = os.environ.get(OPENAI_HTTP_HANDLER_ENV)
    os.environ[OPENAI_HTTP_HANDLER_ENV] = "true" if name == "litellm-http" else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(OPENAI_HTTP_HANDLER_ENV, None)
        else:
            os.environ[OPENAI_HTTP_HANDLER_ENV] = before


def auto_ceiling(job: Any) -> int:
    """The most requests in flight concurrency = "auto" may reach (the job's max_concurrency)."""
    return int(job.max_concurrency)


def setting_tickets(setting: int | str, tickets: int | None, job: Any) -> int:
    return tickets_for(auto_ceiling(job) if setting == "auto" else int(setting), tickets)


class _Interrupted(Exception):
    pass


async def _sweep(plan: _Plan, sim: Any, rows: list[dict[str, Any]]) -> None:
    """Warm up, then every setting: batchrun (and the baseline); rows are appended as measured."""
    import gc

    import anyio

    from batchrun.engine import coordinator_needs_provider, execute_run, prepare_run
    from batchrun.provider import preload
    from batchrun.tickets import read_tickets

    largest = max([int(c) for c in plan.settings if c != "auto"] + [plan.job.max_concurrency])
    preload(max_connections=largest)  # the pool is sized when litellm is imported
    sample = plan.workdir / "sample.jsonl"
    all_tickets = list(read_tickets(sample, plan.job.id_field))

    if plan.warmup:
        warm = all_tickets[: plan.warmup]
        provider = _make_provider(plan.job, plan.model, plan.api_base, plan.api_key, max_connections=largest)
        try:
            for ticket in warm:
                await provider.complete(_warmup_request(plan.job, ticket))
            if plan.baseline:
                with _openai_transport(plan.baseline_transport):
                    await run_baseline(plan.job, warm, len(warm), model=plan.model,
                                       api_base=plan.api_base, api_key=plan.api_key, stream=plan.stream)
        except Exception as exc:  # the sweep will say it better, per setting
            plan.say(f"warm-up request failed: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            await provider.aclose()

    limits: dict[str, Any] = {}
    cfg = plan.sim_config
    if cfg is not None:
        limits = {"rpm": cfg.rpm, "tpm": cfg.tpm, "capacity": cfg.capacity, "overload_ms": cfg.overload_ms}
    max_tokens = plan.job.params.get("max_tokens") or plan.job.params.get("max_completion_tokens")

    def server_stats() -> dict[str, Any] | None:
        if sim is None:
            return None
        s = sim.stats()
        return {"peak_in_flight": s.get("peak_in_flight"), "rate_limited": s.get("rate_limited"),
                "responses_by_status": s.get("responses_by_status"), "total_requests": s.get("total_requests")}

    # Worker processes: the same choice as `batchrun run`.
    provider_kwargs = {"model": plan.model, "api_base": plan.api_base, "api_key": plan.api_key,
                       "params": plan.job.params,
                       "prices": plan.job.prices.model_dump() if plan.job.prices else None,
                       "max_connections": largest}

    # One pool of worker processes for the whole sweep: they import litellm once, now, and every
    # multi-process setting reuses them (the bare pattern reuses this process's litellm the same way).
    from batchrun.workers import open_worker_pool

    most_workers = max(plan.job.with_overrides(concurrency=c).worker_count(
        setting_tickets(c, plan.tickets, plan.job)) for c in plan.settings)
    async with open_worker_pool(largest) as pool:
        if most_workers > 1:
            await pool.warm(most_workers)
        for c in plan.settings:
            n = setting_tickets(c, plan.tickets, plan.job)
            c_ceiling = auto_ceiling(plan.job) if c == "auto" else int(c)
            label = "auto" if c == "auto" else f"c{int(c):04d}"
            job_c = plan.job.with_overrides(input=sample, run_dir=plan.workdir / label, concurrency=c)
            prep = prepare_run(job_c, job_path=plan.job_path, endpoint=plan.endpoint, limit=n)
            workers = job_c.worker_count(prep.to_do)
            try:
                provider = None
                if coordinator_needs_provider(job_c, workers, prep.max_cost_usd):  # as `batchrun run`
                    provider = _make_provider(job_c, plan.model, plan.api_base, plan.api_key)
                if sim is not None:
                    sim.reset()
                gc.collect()
                before = cpu_seconds()
                result = await execute_run(prep, provider, grace_s=5.0, progress=False, workers=workers,
                                           provider_kwargs=provider_kwargs, worker_pool=pool)
                cpu_self = cpu_seconds() - before
            finally:
                prep.release()
            summary = result.summary
            cpu = cpu_self + float(summary.get("worker_cpu_s") or 0.0)  # what the workers said (0 without)
            done = summary["done"]
            if cfg is not None:
                mean_out = summary["completion_tokens"] / done if done else 0.0
                latency_s: float | None = (cfg.latency_ms + cfg.per_token_ms * mean_out) / 1000.0
                if cfg.tpm and done:
                    per_request = summary["prompt_tokens"] / done + (max_tokens or mean_out)
                    limits["tokens_per_request"] = per_request
            else:
                mean = summary["latency_ms"].get("mean")
                latency_s = mean / 1000.0 if mean else None
            row = build_row(c_ceiling, n, result.state, summary, cpu, latency_s=latency_s, server=server_stats(),
                            limits=limits)
            row["workers"] = workers
            if workers > 1:  # where the CPU went: this process (the coordinator) and the worker processes
                row["cpu_s_coordinator"] = round(cpu_self, 3)
                row["cpu_s_workers"] = round(cpu - cpu_self, 3)
            if c == "auto":
                row["concurrency"] = "auto"
                row["concurrency_max"] = c_ceiling
                row["concurrency_settled"] = summary.get("concurrency_settled")
                (plan.auto_rows if plan.auto_rows is not None else []).append(row)
            else:
                rows.append(row)
            plan.say(f"C={c}: {n} tickets in {row['wall_s']:.2f} s, {row['requests_per_s']:.1f} req/s, "
                 f"p95 {num(row['latency_ms'].get('p95'), ',.0f')} ms, {row['failed']} failed"
                 + (f", {workers} worker processes" if workers > 1 else "")
                 + (f", settled at {row['concurrency_settled']}" if c == "auto" else "")
                 + (f" ({result.error})" if result.error else ""))
            if result.state == "interrupted":
                raise _Interrupted()

            if plan.baseline and c != "auto":
                if sim is not None:
                    sim.reset()
                gc.collect()
                before = cpu_seconds()
                with _openai_transport(plan.baseline_transport):
                    base = await run_baseline(plan.job, all_tickets[:n], c, model=plan.model,
                                              api_base=plan.api_base, api_key=plan.api_key, stream=plan.stream)
                base_cpu = cpu_seconds() - before
                base["transport"] = plan.baseline_transport
                base["cpu_s"] = round(base_cpu, 3)
                base["cpu_ms_per_request"] = round(base_cpu * 1000 / base["requests"], 3) if base["requests"] else None
                base["server"] = server_stats()
                base["speed_ratio"] = _ratio(row["requests_per_s"], base["requests_per_s"])
                base["cpu_ratio"] = _ratio(row["cpu_ms_per_request"], base["cpu_ms_per_request"])
                base["speed_ratio_after_startup"] = _ratio(row["requests_per_s_after_startup"],
                                                           base["requests_per_s"])
                base["cpu_ratio_after_startup"] = _ratio(row["cpu_ms_per_request_after_startup"],
                                                         base["cpu_ms_per_request"])
                row["baseline"] = base
                plan.say(f"C={c}: bare pattern {base['requests_per_s']:.1f} req/s, {base['failed']} failed")
            await anyio.sleep(0)


def compare_auto(auto_row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """concurrency = "auto" against the best fixed setting of the sweep (issue 4: >= 80% of it)."""
    fixed = [r for r in rows if not r.get("not_finished") and not r.get("failed")]
    best = max(fixed, key=lambda r: r["tickets_per_s"], default=None)
    return {
        "row": dict(auto_row),
        "settled": auto_row.get("concurrency_settled"),
        "tickets_per_s": auto_row["tickets_per_s"],
        "best_fixed_concurrency": best["concurrency"] if best else None,
        "best_fixed_tickets_per_s": best["tickets_per_s"] if best else None,
        "share_of_best": _ratio(auto_row["tickets_per_s"], best["tickets_per_s"] if best else None),
    }


def _report(job: Any, job_file: Path, plan: _Plan, rows: list[dict[str, Any]], rec: Recommendation, *,
            interrupted: bool) -> dict[str, Any]:
    import dataclasses
    import platform
    from datetime import datetime, timezone

    from batchrun import __version__
    from batchrun.provider import litellm_version, openai_transport

    sim = None
    if plan.sim_config is not None:
        sim = {k: v for k, v in dataclasses.asdict(plan.sim_config).items() if k != "faults"}
    return {
        "batchrun_version": __version__,
        "litellm_version": litellm_version(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpu_count": os.cpu_count()},
        "argv": list(sys.argv),
        "job": {"name": job.name, "path": str(job_file), "model": job.model, "input": str(job.input)},
        "mode": "live" if plan.live else "simulator",
        "model": plan.model,
        "endpoint": plan.endpoint,
        "simulator": sim,
        "stream": plan.stream,
        "baseline": plan.baseline,
        "transport": {"batchrun": openai_transport(plan.stream),
                      "baseline": plan.baseline_transport if plan.baseline else None},
        "settings": plan.settings,
        "tickets": plan.tickets if plan.tickets is not None else "auto",
        "interrupted": interrupted,
        "rows": rows,
        "recommendation": rec.as_dict(),
    }


@dataclass
class BenchOutcome:
    """What `run_bench` measured: the rows, the recommendation and the report (bench.json)."""

    job: Any
    plan: _Plan
    rows: list[dict[str, Any]]
    recommendation: Recommendation
    report: dict[str, Any]
    interrupted: bool


def run_bench(job_file: Path, *, settings: list[int | str], tickets: int | None = None, stream: bool = False,
              live: bool = False, baseline: bool = False, baseline_transport: str = "openai-sdk",
              workers: int | str | None = None, warmup: int = 4, sim_options: Mapping[str, Any] | None = None,
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
    from batchrun.spec import load_job

    secrets = secrets if secrets is not None else []
    rows: list[dict[str, Any]] = []
    auto_rows: list[dict[str, Any]] = []
    interrupted = False
    sim_options = dict(sim_options or {})
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
        sim_config = SimConfig(**{"latency_ms": 200.0, "overload_ms": 20.0, "jitter": 0.1, **sim_options})
    counts = {c: setting_tickets(c, tickets, job) for c in settings}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="batchrun-bench-")))
        needed = max(max(counts.values()), warmup)
        distinct = write_sample(job, needed, workdir / "sample.jsonl")
        if distinct < needed:
            say(f"{job.input} has {distinct} valid tickets; the sample of {needed} repeats them with suffixed ids")
        # litellm's import (seconds) overlaps the simulator's start-up (its own imports).
        from batchrun.provider import preload

        largest = max([int(c) for c in settings if c != "auto"] + [job.max_concurrency])
        importer = threading.Thread(target=preload, kwargs={"max_connections": largest},
                                    name="bench-import-litellm", daemon=True)
        importer.start()
        sim = None
        if sim_config is not None:
            from batchrun.sim.process import start_simulator

            sim = stack.enter_context(start_simulator(sim_config))
            api_base = sim.base_url
        else:
            api_base = job.api_base
        importer.join()
        say(f"{job.name}: model {model} via {endpoint}"
            + (f" ({api_base}, latency {sim_config.latency_ms:g} ms)" if sim is not None else "")
            + f"; settings {', '.join(f'{c} ({counts[c]} tickets)' for c in settings)}"
            + ("; with the bare-pattern baseline" if baseline else ""))
        plan = _Plan(job=job, job_path=job_file, settings=settings, tickets=tickets, live=live,
                     baseline=baseline, stream=stream, warmup=warmup, sim_config=sim_config, model=model,
                     api_base=api_base, api_key=api_key, endpoint=endpoint, workdir=workdir,
                     auto_rows=auto_rows, baseline_transport=baseline_transport, say=say)
        try:
            anyio.run(_sweep, plan, sim, rows)
        except (_Interrupted, KeyboardInterrupt):
            interrupted = True
            say("interrupted: writing the rows measured so far")
    rec = recommend(rows, max_429_rate=max_429_rate, max_p95_ms=max_p95_ms, tie_within=tie_within)
    auto = compare_auto(auto_rows[0], rows) if auto_rows else None
    report = _report(job, job_file, plan, rows, rec, interrupted=interrupted)
    report["auto"] = auto
    return BenchOutcome(job=job, plan=plan, rows=rows, recommendation=rec, report=report, interrupted=interrupted)
