"""The numbers of a concurrency sweep: one row per setting, the ideal throughput under the
simulator's limits, the table, and the recommended setting (the lowest concurrency within
DEFAULT_TIE_WITHIN of the best throughput, under the 429 rate). Pure functions.

A long night runs at the rate limit's sustained rate, not at its burst: a rate limit's buckets
start full (a minute's allowance at once) and then refill at limit / 60 per second. A sample that
never drains the burst measures the burst. So every row carries `sustained_tickets_per_s`, its
throughput capped at the sustained rate (`sustained_rate`), `burst_drained` says whether the
sample got past the burst, and the recommendation compares the sustained figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NotRequired, Sequence, TypedDict

from batchrun.analysis.documents import StoredJSON
from batchrun.analysis.textfmt import num, pct, table
from batchrun.bench.baseline import BareRun, Throughput

DEFAULT_CONCURRENCY = "1,4,16,64,256"
AUTO_WAVES = 4  # --tickets auto: 4 x concurrency tickets per setting ...
AUTO_MIN_TICKETS = 32  # ... at least this many ...
AUTO_MAX_TICKETS = 512  # ... at most this many
DEFAULT_MAX_429_RATE = 0.01
DEFAULT_TIE_WITHIN = 0.05  # throughputs within 5% of the best are a tie: the lowest concurrency wins
P95_FACTOR = 3.0  # default --max-p95-ms: this times the lowest p95 of the sweep


# --------------------------------------------------------------------------------------------
# The rows (bench.json)
# --------------------------------------------------------------------------------------------


class ServerStats(TypedDict):
    """The simulator's counters for one run (None under --live)."""

    peak_in_flight: int | None
    rate_limited: int | None
    responses_by_status: dict[str, int] | None
    total_requests: int | None


class Baseline(BareRun):
    """The bare pattern at one setting, with what the sweep measured around it."""

    transport: str
    cpu_s: float
    cpu_ms_per_request: float | None
    server: ServerStats | None
    speed_ratio: float | None  # batchrun's requests/s over the bare pattern's
    cpu_ratio: float | None
    speed_ratio_after_startup: float | None
    cpu_ratio_after_startup: float | None


class IdealLimits(TypedDict, total=False):
    """The simulator's limits `ideal_throughput` takes."""

    rpm: int | None
    tpm: int | None
    tokens_per_request: float | None
    capacity: int | None
    overload_ms: float


class _Measured(Throughput):
    tickets: int
    state: str
    not_finished: int
    retries: int
    errors_by_kind: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    cost_per_1000_tickets_usd: float | None
    ideal_latency_ms: float | None
    ideal_rps: float | None
    ideal_limited_by: str
    efficiency: float | None
    sustained_tickets_per_s: float | None  # tickets/s capped at the rate limit's sustained rate (None: no limit)
    sustained_limit_rps: float | None
    burst_drained: bool | None  # did the sample get past the rate limit's burst (None: no limit)
    drain_tickets: int | None  # a sample that would
    cpu_s: float
    cpu_ms_per_request: float | None
    startup_s: float | None
    worker_startup_cpu_s: float | None
    requests_per_s_after_startup: float | None
    cpu_ms_per_request_after_startup: float | None
    server: ServerStats | None
    baseline: Baseline | None
    workers: NotRequired[int]  # set by the sweep
    cpu_s_coordinator: NotRequired[float]  # with worker processes: where the CPU went
    cpu_s_workers: NotRequired[float]


class BenchRow(_Measured):
    """One fixed concurrency setting (`build_row`, then the sweep)."""

    concurrency: int


class AutoRow(_Measured):
    """The concurrency = "auto" run: where AIMD settled, up to the job's max_concurrency."""

    concurrency: str  # "auto"
    concurrency_max: int
    concurrency_settled: int | None


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


def sustained_rate(limits: IdealLimits) -> float | None:
    """Requests/s a rate limit allows once its buckets are empty (rpm / 60, tpm / 60 / tokens per
    request, the smaller), or None without a limit."""
    rates = []
    rpm, tpm, per_request = limits.get("rpm"), limits.get("tpm"), limits.get("tokens_per_request")
    if rpm:
        rates.append(rpm / 60.0)
    if tpm and per_request:
        rates.append(tpm / 60.0 / per_request)
    return min(rates) if rates else None


def burst_size(limits: IdealLimits) -> float | None:
    """Requests the full buckets admit at once (a minute's allowance), or None without a limit."""
    sizes = []
    rpm, tpm, per_request = limits.get("rpm"), limits.get("tpm"), limits.get("tokens_per_request")
    if rpm:
        sizes.append(float(rpm))
    if tpm and per_request:
        sizes.append(tpm / per_request)
    return min(sizes) if sizes else None


def drain_tickets(limits: IdealLimits, seconds: float = 30.0) -> int | None:
    """Tickets a setting needs to get past the burst and then run `seconds` at the sustained rate."""
    rate, burst = sustained_rate(limits), burst_size(limits)
    if rate is None or burst is None:
        return None
    return int(math.ceil(burst + rate * seconds))
class RecommendationJSON(TypedDict):
    concurrency: int | None
    reason: str
    max_429_rate: float
    max_p95_ms: float | None
    tie_within: float


@dataclass(frozen=True)
class Recommendation:
    concurrency: int | None  # None: no setting met the thresholds
    reason: str
    max_429_rate: float
    max_p95_ms: float | None
    tie_within: float = DEFAULT_TIE_WITHIN

    def as_dict(self) -> RecommendationJSON:
        return {"concurrency": self.concurrency, "reason": self.reason,
                "max_429_rate": self.max_429_rate, "max_p95_ms": self.max_p95_ms,
                "tie_within": self.tie_within}


def p95_of(row: BenchRow) -> float | None:
    latency = row.get("latency_ms")
    return latency.get("p95") if latency else None


REACHED_SHARE = 0.9  # a setting counts as tested when the server saw this share of it in flight
TICKETS_PER_SLOT = 8  # tickets a sweep needs per request in flight to reach a setting (a rule of thumb)


def reached(row: BenchRow) -> bool:
    """Whether the sweep really had the row's concurrency in flight: the server's peak
    in-flight count is at least REACHED_SHARE of it, rounded down (unknown peak, e.g. --live: True)."""
    server = row.get("server")
    peak = server.get("peak_in_flight") if server else None
    return peak is None or peak >= max(1, math.floor(REACHED_SHARE * row["concurrency"]))


def unreached_text(row: BenchRow) -> str:
    """Why a setting was not reached, and what would test it: the average in flight the client
    kept (tickets/s x p50 latency) and, for a sample under TICKETS_PER_SLOT tickets a slot, the
    sample size that would."""
    concurrency, tickets = row["concurrency"], int(row.get("tickets") or 0)
    server, latency = row.get("server"), row.get("latency_ms")
    peak = server.get("peak_in_flight") if server else None
    p50 = latency.get("p50") if latency else None
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


def recommend(rows: Sequence[BenchRow], *, max_429_rate: float = DEFAULT_MAX_429_RATE,
              max_p95_ms: float | None = None, tie_within: float = DEFAULT_TIE_WITHIN) -> Recommendation:
    """The setting with the highest `tickets_per_s` whose `rate_429` <= max_429_rate, whose
    `latency_ms.p95` <= max_p95_ms (default 3 x the lowest p95 among the rows) and whose
    `error_rate` is 0 (and none was left unfinished by an interrupt), among the settings the
    sweep reached (`reached`: never one it did not have in flight; the reason says why and
    how many tickets would test it). Throughputs within `tie_within` (a fraction) of the best count as a tie,
    and a tie goes to the lowest `concurrency`: the same work with fewer requests in flight.
    Pure: rows in, choice out."""
    p95s = [p for p in (p95_of(r) for r in rows) if p is not None]
    if max_p95_ms is None and p95s:
        max_p95_ms = round(P95_FACTOR * min(p95s), 1)
    limit_text = f"{max_p95_ms:,.0f} ms" if max_p95_ms is not None else "-"

    def tps(row: BenchRow) -> float:  # what a long night sustains (sustained_rate)
        sustained = row.get("sustained_tickets_per_s")
        return float(row.get("tickets_per_s") or 0.0) if sustained is None else float(sustained)

    def broken(row: BenchRow) -> str | None:
        if not reached(row):
            return unreached_text(row)
        if row.get("not_finished", 0) > 0:
            return f"interrupted ({row['not_finished']} tickets not finished)"
        if row.get("error_rate", 0) > 0:
            return f"{pct(row['error_rate'])} of tickets failed"
        if row.get("rate_429", 0) > max_429_rate:
            return f"429 rate {pct(row['rate_429'])} > {pct(max_429_rate)}"
        p95 = p95_of(row)
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
    sustained = any(r.get("sustained_tickets_per_s") is not None for r in ok)
    if chosen is best:
        reason = f"highest throughput ({tps(chosen):,.1f} tickets/s" + (" sustained)" if sustained else ")")
    else:
        reason = (f"{tps(chosen):,.1f} tickets/s{' sustained' if sustained else ''}, within {tie_within * 100:g}% "
                  f"of the best (C={best['concurrency']}: {tps(best):,.1f}/s) with fewer in flight")
    reason += (f", 429 rate {pct(chosen.get('rate_429', 0))} <= {pct(max_429_rate)}, "
               f"p95 {p95_of(chosen):,.0f} ms <= {limit_text}")
    faster = sorted((r for r in rows if broken(r) is not None and reached(r) and tps(r) > tps(best)),
                    key=lambda r: -tps(r))
    if faster:
        reason += f"; C={faster[0]['concurrency']} was faster ({tps(faster[0]):,.1f}/s) but {broken(faster[0])}"
    unreached = sorted((r for r in rows if not reached(r)), key=lambda r: r["concurrency"])
    if unreached:
        reason += "; not recommended, never reached: " + "; ".join(
            f"C={r['concurrency']} ({unreached_text(r)})" for r in unreached)
    return Recommendation(chosen["concurrency"], reason, max_429_rate, max_p95_ms, tie_within)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def build_row(concurrency: int, tickets: int, state: str, summary: StoredJSON, cpu_s: float, *,
              latency_s: float | None, server: ServerStats | None = None,
              limits: IdealLimits | None = None) -> BenchRow:
    """One JSON row from a run's summary (stats.RunStats.summary()) and its measurements."""
    done, failed, requests = summary["done"], summary["failed"], summary["requests"]
    wall = max(float(summary["wall_s"]), 1e-9)
    tickets_per_s = round(done / wall, 2)
    limits = limits or {}
    ideal, limited_by = ideal_throughput(concurrency, latency_s, tickets, **limits)
    rate, burst = sustained_rate(limits), burst_size(limits)
    # at the sustained rate, a share of the requests (done / requests) give a ticket done
    sustained = None if rate is None else round(min(tickets_per_s, rate * done / requests if requests else 0.0), 2)
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
        # capped at what the rate limit sustains once its burst is spent (None: no rate limit)
        "sustained_tickets_per_s": sustained,
        "sustained_limit_rps": None if rate is None else round(rate, 3),
        # did the sample get past the rate limit's burst (None: no rate limit)?
        "burst_drained": None if burst is None else requests > burst,
        "drain_tickets": drain_tickets(limits),  # a sample that gets past the burst and runs 30 s sustained
        "output_tokens_per_s": summary["output_tokens_per_s"],
        "latency_ms": summary["latency_ms"].copy(),
        "ttft_ms": ttft.copy() if ttft else None,
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
        "server": server.copy() if server is not None else None,
        "baseline": None,
    }


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


#: The default table's columns (at most 8; --wide shows every column: format_table(wide=True)).
NARROW = ("conc", "tickets/s", "sustained/s", "out tok/s", "p50 ms", "p95 ms", "429", "err", "cost $")


def format_table(rows: Sequence[BenchRow | AutoRow], *, wide: bool = False) -> str:
    """The per-setting table: at most 8 columns (conc, tickets/s, sustained/s when a rate limit
    applies or else out tok/s, p50, p95, 429, err, cost); `wide`: every column (TTFT columns only
    when some row has them)."""
    if not wide:
        return _narrow_table(rows)
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
            ttft = r.get("ttft_ms")
            line += [num(v, ",.0f") for v in ((ttft.get("p50"), ttft.get("p95"), ttft.get("p99")) if ttft
                                              else (None,) * 3)]
        ideal = "-" if r["ideal_rps"] is None else f"{r['ideal_rps']:,.1f}"
        if r["ideal_limited_by"] not in ("concurrency", "unknown"):
            ideal += f" ({r['ideal_limited_by']})"
        server = r.get("server")
        peak = server.get("peak_in_flight") if server else None
        line += [pct(r["rate_429"]), pct(r["error_rate"]),
                 "-" if r["cost_usd"] is None else f"{r['cost_usd']:.6f}", ideal,
                 "-" if r["efficiency"] is None else f"{r['efficiency'] * 100:.0f}%",
                 "-" if peak is None else str(peak), num(r["cpu_ms_per_request"], ",.2f")]
        if with_workers:
            line.append(str(r.get("workers") or 1))
        lines.append(line)
    return "\n".join(table(header, lines, left=0))


def _conc(r: BenchRow | AutoRow) -> str:
    if r["concurrency"] == "auto" and r.get("concurrency_settled") is not None:
        return f"auto:{r['concurrency_settled']}"
    return str(r["concurrency"])


def _narrow_table(rows: Sequence[BenchRow | AutoRow]) -> str:
    limited = any(r.get("sustained_tickets_per_s") is not None for r in rows)
    header = [h for h in NARROW if h != ("out tok/s" if limited else "sustained/s")]
    lines = []
    for r in rows:
        lat = r["latency_ms"]
        line = [_conc(r), num(r["tickets_per_s"], ",.1f") + ("*" if r.get("not_finished") else "")]
        if limited:
            sustained = r.get("sustained_tickets_per_s")
            capped = sustained is not None and sustained < r["tickets_per_s"]
            line.append(num(sustained, ",.1f") + (" (capped)" if capped else ""))
        else:
            line.append(num(r["output_tokens_per_s"], ",.1f"))
        line += [num(lat.get("p50"), ",.0f"), num(lat.get("p95"), ",.0f"), pct(r["rate_429"]), pct(r["error_rate"]),
                 "-" if r["cost_usd"] is None else f"{r['cost_usd']:.6f}"]
        lines.append(line)
    return "\n".join(table(header, lines, left=0))


def format_baseline_table(rows: Sequence[BenchRow], after_startup: bool = False) -> str:
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
        server = b.get("server")
        peak = server.get("peak_in_flight") if server else None
        lines.append([str(r["concurrency"]), num(r["requests_per_s"], ",.1f"), num(b["requests_per_s"], ",.1f"),
                      x(b["speed_ratio"]), num(r["cpu_ms_per_request"], ",.2f"),
                      num(b["cpu_ms_per_request"], ",.2f"), x(b["cpu_ratio"]), pct(b["error_rate"]),
                      "-" if peak is None else str(peak)])
    return "\n".join(table(header, lines, left=0))


class AutoComparison(TypedDict):
    row: AutoRow
    settled: int | None
    tickets_per_s: float
    best_fixed_concurrency: int | None
    best_fixed_tickets_per_s: float | None
    share_of_best: float | None


def compare_auto(auto_row: AutoRow, rows: Sequence[BenchRow]) -> AutoComparison:
    """concurrency = "auto" against the best fixed setting of the sweep (it should reach 80% of it)."""
    fixed = [r for r in rows if not r.get("not_finished") and not r.get("failed")]
    best = max(fixed, key=lambda r: r["tickets_per_s"], default=None)
    return {
        "row": auto_row.copy(),
        "settled": auto_row.get("concurrency_settled"),
        "tickets_per_s": auto_row["tickets_per_s"],
        "best_fixed_concurrency": best["concurrency"] if best else None,
        "best_fixed_tickets_per_s": best["tickets_per_s"] if best else None,
        "share_of_best": ratio(auto_row["tickets_per_s"], best["tickets_per_s"] if best else None),
    }
