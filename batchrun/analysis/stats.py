"""Run counters, latency percentiles and the end-of-run summary.

    LatencyHistogram   log-bucketed (1% wide) recorder: bounded memory at any
                       ticket count, percentiles within about 1%
    RunStats           every counter of one run, one field each, updated by
                       the engine as checkpoint lines land on disk
                       (`record(outcome)`) and as attempts are made
    RunStats.summary() a flat dict (stored in manifest.json)
    format_summary()   the table printed at the end of `batchrun run`
    format_batch_summary(), format_batch_parts()   batch mode's own: its parts, the
                       provider's batch ids, states, request counts, the completion
                       window (`batchrun run` in batch mode, `batchrun status`)
    format_progress_line()  one plain progress line for logs (`batchrun run
                       --progress-every`; run_logging.py dates it)

The percentile functions of the package live here, once:
    percentile(sorted_values, p)   exact nearest-rank (grading: every latency
                                   of a finished run, read back from disk)
    percentiles(samples_or_histogram) -> {p50, p95, p99, mean}, rounded to 0.1
                                   (through a LatencyHistogram: the run summary,
                                   bench's bare-pattern baseline)
    round1(value)                  round to 0.1, None stays None

Besides latency, `record` keeps the time to first token of streamed answers
(a second histogram: TTFT p50/p95/p99 appear when anything was streamed),
the results kept although truncated (finish_reason "length") or content
filtered, answers rejected by the output check or the finish_reason policy
(`rejected_outputs`; they were paid for, so their cost is in `cost_usd`),
results whose usage the provider did not send (`usage_estimated`: their
tokens were counted with litellm.token_counter and their cost, in
`cost_usd`, is an estimate), results whose usage was sent but not believed
(`usage_invalid`: negative, fractional or absurd counts, estimated the same
way), the kinds of tokens (cached prompt tokens, cache writes, reasoning
tokens) with the cached share of input tokens and what prompt caching saved,
results by the service tier that answered them, and failed tickets by kind.
format_summary accepts summaries from before these
keys existed (a manifest written by an older batchrun).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence, TypedDict

from batchrun.analysis.documents import StoredJSON
from batchrun.analysis.textfmt import duration, kv, ms, terminal_safe, usd
from batchrun.errors import is_permanent
from batchrun.records import Outcome

_LOG_STEP = math.log(1.01)
MAX_MESSAGE_CHARS = 120  # a failure message in the summary is cut to this
MAX_MESSAGES_PER_KIND = 50  # distinct messages counted per kind; the rest are "(other messages)"
OTHER_MESSAGES = "(other messages)"


def short_message(message: str | None) -> str:
    """A failure message fit for a summary: API keys redacted, one line, the provider's own
    message without litellm's class prefixes, numbers standing on their own as N (so messages
    that differ only in counts group together; digits inside a name such as gpt-4o-mini stay),
    at most MAX_MESSAGE_CHARS."""
    import re

    from batchrun.errors import redact_secrets
    from batchrun.providers.error_mapping import provider_message

    text = provider_message(" ".join(redact_secrets(message or "(no message)").split()))
    # "5 tokens" and "7 tokens" are one message; digits inside a name (gpt-4o-mini, org-ab12) stay
    text = re.sub(r"(?<![\w\-./])\d+(?:[.,]\d+)*(?![\w\-/])", "N", text)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS - 1] + "…"


def _top_messages(messages: Mapping[str, int], n: int = 3) -> list[list[str | int]]:
    """[[message, tickets], ...]: the `n` most frequent, as JSON pairs."""
    return [[text, count] for text, count in sorted(messages.items(), key=lambda item: (-item[1], item[0]))[:n]]


@dataclass
class LatencyHistogram:
    counts: dict[int, int] = field(default_factory=dict)  # bucket index -> count
    n: int = 0
    total_ms: float = 0.0

    def add(self, ms: float) -> None:
        bucket = math.floor(math.log(max(ms, 0.01)) / _LOG_STEP)  # floor: int() would merge buckets -1 and 0
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.n += 1
        self.total_ms += ms

    def percentile(self, p: float) -> float | None:
        """The p-th percentile (0-100) in ms, or None with no samples."""
        if not self.n:
            return None
        rank = max(1, math.ceil(self.n * p / 100.0))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return math.exp((bucket + 0.5) * _LOG_STEP)
        return None  # pragma: no cover

    @property
    def mean(self) -> float | None:
        return self.total_ms / self.n if self.n else None


@dataclass
class RunStats:
    tickets_total: int = 0  # tickets in the input (after --limit)
    already_done: int = 0  # done in an earlier run: skipped, never requested
    skipped_failed: int = 0  # failed in an earlier run and skipped (--skip-failed)
    skipped_permanent: int = 0  # failed for good (a permanent kind) in an earlier run: not retried
    rejected_lines: int = 0  # bad input lines skipped (on_bad_input = "skip")
    concurrency_settled: int | None = None  # concurrency = "auto": where AIMD settled
    to_do: int = 0  # tickets this run set out to process
    done: int = 0  # succeeded in this run: line in results.jsonl
    failed: int = 0  # ended in errors.jsonl in this run
    stop_reason: str | None = None  # why dispatch stopped early ("fail_fast", "budget", "signal", ...), if it did
    in_flight: int = 0  # tickets between dispatch and their line on disk
    attempts: int = 0  # requests sent (first tries and retries)
    retries: int = 0  # attempts after a ticket's first
    rate_limited: int = 0  # attempts answered 429
    errors_by_kind: dict[str, int] = field(default_factory=dict)  # failed attempts by kind
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it
    cache_reported_prompt_tokens: int = 0  # prompt tokens of results whose provider said what it cached
    reasoning_tokens: int = 0  # of completion_tokens
    prompt_cache_saved_usd: float = 0.0  # what prompt caching saved (priced results)
    results_by_tier: dict[str, int] = field(default_factory=dict)  # results by the tier that answered them
    flex_fallbacks: int = 0  # results answered at the standard tier after flex 429s
    cost_usd: float = 0.0  # sum over priced results of this run
    unpriced: int = 0  # results of this run with cost_usd = null
    usage_estimated: int = 0  # results whose usage the provider did not send (usage_source "estimated")
    usage_invalid: int = 0  # results whose usage the provider sent was not believed (usage_reported)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # successful attempts
    ttft: LatencyHistogram = field(default_factory=LatencyHistogram)  # streamed successful attempts
    truncated: int = 0  # results kept with finish_reason "length" (on_truncated = "keep")
    content_filtered: int = 0  # results kept with finish_reason "content_filter"
    rejected_outputs: int = 0  # answers turned down (invalid_output, truncated, content_filter)
    rejected_cost_usd: float = 0.0  # what they cost (also in cost_usd)
    rejected_unpriced: int = 0  # of those, answers whose cost is unknown (billed, not in cost_usd)
    cache_hits: int = 0  # results reused (response cache or an identical request in flight): no request sent
    cost_saved_usd: float = 0.0  # what those answers cost when they were obtained (priced ones)
    failed_by_kind: dict[str, int] = field(default_factory=dict)  # tickets in errors.jsonl by error_kind
    # kind -> shortened, redacted message -> tickets; at most MAX_MESSAGES_PER_KIND distinct messages a kind
    failure_messages: dict[str, dict[str, int]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    first_dispatch: float | None = None  # first ticket handed to a worker: start-up (scan, processes) is over
    worker_startup_cpu_s: float = 0.0  # CPU worker processes spent starting (litellm's import), as they said
    worker_cpu_s: float = 0.0  # CPU worker processes spent on this run, start-up included, as they said
    finished: float | None = None
    maybe_billed_ids: list[str] = field(default_factory=list)  # left in flight by the run before (journal)
    # batch mode: provider output lines not believed, by kind (batch/outputs.py), and what the billed ones
    # that no ticket's line carries (unknown or null custom_ids) cost (also in cost_usd)
    batch_anomalies: dict[str, int] = field(default_factory=dict)
    batch_anomalies_cost_usd: float = 0.0
    cluster: Mapping[str, object] | None = None  # engine "ray": actors, actors lost, tickets re-sent, limiter counters
    # what the endpoint reported it sent upstream for this run's recorded attempts (a LiteLLM proxy's
    # x-litellm-attempted-retries/-fallbacks; records.Outcome.upstream_attempts), and the attempts
    # whose answer did not say (an error answer of the proxy, or an endpoint that never says)
    upstream_requests: int = 0
    upstream_reported: int = 0  # lines that reported upstream requests
    upstream_unreported: int = 0

    def record(self, outcome: Outcome) -> None:
        """Count one outcome whose line is on disk."""
        if outcome.upstream_attempts is not None:
            self.upstream_requests += outcome.upstream_attempts
            self.upstream_reported += 1
            self.upstream_unreported += outcome.upstream_unreported
        else:
            self.upstream_unreported += outcome.attempts
        if outcome.rejected_outputs:
            self.rejected_outputs += outcome.rejected_outputs
            self.rejected_cost_usd += outcome.rejected_cost_usd
            self.rejected_unpriced += outcome.rejected_unpriced
            self.cost_usd += outcome.rejected_cost_usd
        if not outcome.ok:
            self.failed += 1
            kind = outcome.error_kind or "unknown"
            self.failed_by_kind[kind] = self.failed_by_kind.get(kind, 0) + 1
            messages = self.failure_messages.setdefault(kind, {})
            text = short_message(outcome.error_message)
            if text not in messages and len(messages) >= MAX_MESSAGES_PER_KIND:
                text = OTHER_MESSAGES
            messages[text] = messages.get(text, 0) + 1
            return
        self.done += 1
        c = outcome.completion
        assert c is not None
        if c.cache_hit:  # no request, no tokens used, no latency: only what it saved
            self.cache_hits += 1
            self.cost_saved_usd += c.cost_saved_usd or 0.0
            return
        self.latency.add(outcome.latency_ms or 0.0)
        if c.ttft_ms is not None:
            self.ttft.add(c.ttft_ms)
        if c.finish_reason == "length":
            self.truncated += 1
        elif c.finish_reason == "content_filter":
            self.content_filtered += 1
        if c.usage_problem is not None:
            self.usage_invalid += 1
        if c.usage is not None:
            if c.usage_source == "estimated" and c.usage_problem is None:
                self.usage_estimated += 1
            self.prompt_tokens += c.usage.prompt_tokens
            self.completion_tokens += c.usage.completion_tokens
            self.total_tokens += c.usage.total_tokens
            self.cached_tokens += c.usage.cached_tokens or 0
            self.cache_write_tokens += c.usage.cache_write_tokens or 0
            self.reasoning_tokens += c.usage.reasoning_tokens or 0
            if c.usage.cached_tokens is not None:
                self.cache_reported_prompt_tokens += c.usage.prompt_tokens
        self.prompt_cache_saved_usd += c.prompt_cache_saved_usd or 0.0
        tier = c.service_tier or "unknown"
        self.results_by_tier[tier] = self.results_by_tier.get(tier, 0) + 1
        self.flex_fallbacks += outcome.flex_fallback
        if c.cost_usd is None:
            self.unpriced += 1
        else:
            self.cost_usd += c.cost_usd

    def record_batch_anomalies(self, records: Iterable[Mapping[str, object]]) -> None:
        """Count batch output lines not believed (batch_anomalies.jsonl records)."""
        for record in records:
            kind = str(record.get("kind"))
            self.batch_anomalies[kind] = self.batch_anomalies.get(kind, 0) + 1
            billed = record.get("billed_usd")
            if record.get("counted") == "anomaly" and isinstance(billed, (int, float)) and billed > 0:
                self.batch_anomalies_cost_usd += billed
                self.cost_usd += billed

    @property
    def failed_permanent(self) -> int:
        """This run's failed tickets a re-run keeps (errors.is_permanent; auth, permission and not-found
        failures are transient when fail-fast stopped the run: the key or model was wrong)."""
        fail_fast = self.stop_reason == "fail_fast"
        return sum(count for kind, count in self.failed_by_kind.items() if is_permanent(kind, fail_fast=fail_fast))

    @property
    def wall_s(self) -> float:
        end = self.finished if self.finished is not None else time.monotonic()
        return max(end - self.started, 1e-9)

    @property
    def startup_s(self) -> float | None:
        """Seconds from the start of the run to the first ticket handed to a worker."""
        return None if self.first_dispatch is None else max(self.first_dispatch - self.started, 0.0)

    def summary(self) -> dict[str, object]:
        """The run's numbers as JSON (manifest.json's "summary"; `format_summary` prints it)."""
        wall = self.wall_s
        finished = self.done + self.failed
        startup = self.startup_s
        sending = max(wall - startup, 1e-9) if startup is not None else None
        return {
            "tickets_total": self.tickets_total,
            "already_done": self.already_done,
            "skipped_failed": self.skipped_failed,
            "skipped_permanent": self.skipped_permanent,
            "rejected_lines": self.rejected_lines,
            "concurrency_settled": self.concurrency_settled,
            "done": self.done,
            "failed": self.failed,
            "failed_permanent": self.failed_permanent,
            "failed_transient": self.failed - self.failed_permanent,
            "stop_reason": self.stop_reason,
            "not_finished": max(self.to_do - finished, 0),
            "wall_s": round(wall, 3),
            "requests": self.attempts,
            # requests the endpoint (a LiteLLM proxy) reported it made upstream for this run's recorded
            # attempts; None when it never said. upstream_unreported: recorded attempts it said nothing on
            "upstream_requests": self.upstream_requests if self.upstream_reported else None,
            "upstream_unreported": self.upstream_unreported if self.upstream_reported else 0,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "errors_by_kind": dict(sorted(self.errors_by_kind.items())),
            "requests_per_s": round(self.attempts / wall, 2),
            "startup_s": None if startup is None else round(startup, 3),
            # the same after start-up (the input scan, worker processes importing litellm)
            "requests_per_s_after_startup": None if sending is None else round(self.attempts / sending, 2),
            "worker_startup_cpu_s": round(self.worker_startup_cpu_s, 3),
            "worker_cpu_s": round(self.worker_cpu_s, 3),
            "cluster": self.cluster,
            "tickets_per_s": round(finished / wall, 2),
            "output_tokens_per_s": round(self.completion_tokens / wall, 1),
            "latency_ms": percentiles(self.latency),
            "ttft_ms": percentiles(self.ttft) if self.ttft.n else None,
            "truncated": self.truncated,
            "content_filtered": self.content_filtered,
            "rejected_outputs": self.rejected_outputs,
            "rejected_cost_usd": round(self.rejected_cost_usd, 9),
            "rejected_unpriced": self.rejected_unpriced,
            "failed_by_kind": dict(sorted(self.failed_by_kind.items())),
            # per kind, most tickets first: count and the three most frequent messages
            "failures": {kind: {"count": count, "top_messages": _top_messages(self.failure_messages.get(kind, {}))}
                         for kind, count in sorted(self.failed_by_kind.items(), key=lambda kv: (-kv[1], kv[0]))},
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            # cached / prompt tokens of the results whose provider said what it cached (None: none said)
            "cached_share": cached_share(self.cached_tokens, self.cache_reported_prompt_tokens),
            "prompt_cache_saved_usd": round(self.prompt_cache_saved_usd, 9),
            "results_by_tier": dict(sorted(self.results_by_tier.items())),
            "flex_fallbacks": self.flex_fallbacks,
            "cost_usd": round(self.cost_usd, 9),
            "cache_hits": self.cache_hits,
            "cost_saved_usd": round(self.cost_saved_usd, 9),
            "unpriced_results": self.unpriced,
            "usage_estimated": self.usage_estimated,
            "usage_invalid": self.usage_invalid,
            "cost_per_1000_tickets_usd": (
                round(self.cost_usd / (self.done - self.unpriced) * 1000, 6)
                if self.done > self.unpriced else None
            ),
            "batch_anomalies": dict(sorted(self.batch_anomalies.items())),
            "batch_anomalies_cost_usd": round(self.batch_anomalies_cost_usd, 9),
            # tickets the in-flight journal says the last run left in flight (may be billed twice)
            "maybe_billed_before": len(self.maybe_billed_ids),
            "maybe_billed_before_ids": self.maybe_billed_ids[:100],
        }


def cached_share(cached: int, reported_prompt_tokens: int) -> float | None:
    """The share (0..1) of input tokens read from the provider's prompt cache, over the results whose
    provider said how many it read; None when none said."""
    return round(cached / reported_prompt_tokens, 4) if reported_prompt_tokens else None


def format_prompt_cache(cached: int, share: float | None, writes: int, saved: float) -> str | None:
    """One line on prompt caching: the cached share of input tokens and what it saved; None when
    nothing was read from or written to the provider's cache."""
    if not cached and not writes:  # nothing read or written (the JSON keeps the share, 0.0 included)
        return None
    text = (f"{share * 100:.1f}% of input tokens read from the provider's cache ({cached:,})" if share is not None
            else f"{cached:,} input tokens read from the provider's cache")
    if writes:
        text += f", {writes:,} written to it"
    return text + f"; {usd(saved)} saved (litellm's or the job's prices)"


class Percentiles(TypedDict):
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None


def percentiles(samples: LatencyHistogram | Iterable[float]) -> Percentiles:
    """p50/p95/p99/mean of a histogram (or of samples, put through one), rounded to 0.1."""
    if isinstance(samples, LatencyHistogram):
        histogram = samples
    else:
        histogram = LatencyHistogram()
        for value in samples:
            histogram.add(value)
    return {
        "p50": round1(histogram.percentile(50)),
        "p95": round1(histogram.percentile(95)),
        "p99": round1(histogram.percentile(99)),
        "mean": round1(histogram.mean),
    }


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank p-th percentile (0-100) of an ascending sequence; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(len(sorted_values) * p / 100.0))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def round1(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def format_summary(summary: StoredJSON, *, title: str = "batchrun summary") -> str:
    """The end-of-run table, from a `RunStats.summary()` dict (or one read back from a manifest)."""
    lat = summary["latency_ms"]
    per_1000 = summary["cost_per_1000_tickets_usd"]
    cost = usd(summary['cost_usd'])
    if summary["unpriced_results"]:
        cost += f"  ({summary['unpriced_results']} result(s) unpriced: cost_usd null)"
    kinds = ", ".join(f"{k} {v}" for k, v in summary["errors_by_kind"].items()) or "none"
    rows = [
        ("tickets in input", f"{summary['tickets_total']:,}"),
        ("done in this run", f"{summary['done']:,}"),
        ("failed in this run", f"{summary['failed']:,}" + (
            f" ({summary.get('failed_permanent', 0):,} permanent, {summary.get('failed_transient', 0):,} transient: "
            "a re-run retries the transient ones)" if summary["failed"] else "")),
        ("already done before", f"{summary['already_done']:,}"),
    ]
    if summary.get("concurrency_settled"):
        rows.append(("concurrency (auto) settled at", f"{summary['concurrency_settled']}"))
    if summary.get("rejected_lines"):
        rows.append(("bad input lines skipped", f"{summary['rejected_lines']:,} (rejects.jsonl)"))
    if summary["skipped_failed"]:
        rows.append(("skipped (failed before)", f"{summary['skipped_failed']:,}"))
    if summary.get("skipped_permanent"):
        rows.append(("kept (permanent failures)", f"{summary['skipped_permanent']:,} from earlier runs, not retried "
                                                  "(--retry-permanent sends them)"))
    if summary["not_finished"]:
        rows.append(("not finished (resume)", f"{summary['not_finished']:,}"))
    cluster = summary.get("cluster")
    if cluster:
        rows.append(("Ray actors", f"{cluster['actors']} ({cluster['actors_lost']} lost, "
                                   f"{cluster['tickets_requeued']:,} tickets sent again)"))
        lost = cluster.get("in_flight_on_lost_actors") or 0
        if lost:
            ids = cluster.get("in_flight_on_lost_actors_ids") or []
            more = lost - len(ids[:10])
            rows.append(("may be billed twice", (
                f"{lost:,} ticket(s) had a request in flight on an actor that died (counted, sent again): "
                + ", ".join(ids[:10]) + (f" and {more:,} more" if more > 0 else "")
                + " (lines marked maybe_billed_before)")))
    rows += [
        ("wall time", f"{summary['wall_s']:,.2f} s"),
        ("requests", f"{summary['requests']:,} ({summary['retries']:,} retries, {summary['rate_limited']:,} answered 429)"),
        *([("upstream requests", upstream_text(summary.get("upstream_requests"), summary.get("upstream_unreported")))]
          if summary.get("upstream_requests") is not None else []),
        ("failed attempts", kinds),
        ("requests/s", f"{summary['requests_per_s']:,.1f}"),
        ("output tokens/s", f"{summary['output_tokens_per_s']:,.1f}"),
        ("latency p50/p95/p99", f"{ms(lat['p50'], ' ms')} / {ms(lat['p95'], ' ms')} / {ms(lat['p99'], ' ms')}"),
    ]
    ttft = summary.get("ttft_ms")
    if ttft:
        rows.append(("TTFT p50/p95/p99", f"{ms(ttft['p50'], ' ms')} / {ms(ttft['p95'], ' ms')} / {ms(ttft['p99'], ' ms')}"))
    if summary.get("truncated") or summary.get("content_filtered") or summary.get("rejected_outputs"):
        rows.append(("answers flagged", (
            f"{summary.get('truncated', 0):,} truncated and {summary.get('content_filtered', 0):,} "
            f"content-filtered kept; {summary.get('rejected_outputs', 0):,} rejected "
            f"(${summary.get('rejected_cost_usd', 0.0):,.6f}"
            + (f"; {summary['rejected_unpriced']:,} of them unpriced: billed, cost unknown"
               if summary.get("rejected_unpriced") else "") + ")")))
    failed_kinds = summary.get("failed_by_kind")
    failures = summary.get("failures") or {}
    if failed_kinds:
        rows.append(("failed tickets by kind", ", ".join(f"{k} {v}" for k, v in failed_kinds.items())))
    tokens = f"{summary['total_tokens']:,} ({summary['prompt_tokens']:,} + {summary['completion_tokens']:,})"
    if summary.get("reasoning_tokens"):
        tokens += f"; {summary['reasoning_tokens']:,} of the completion tokens were reasoning"
    cache_line = format_prompt_cache(summary.get("cached_tokens") or 0, summary.get("cached_share"),
                                     summary.get("cache_write_tokens") or 0, summary.get("prompt_cache_saved_usd") or 0)
    tiers = {k: v for k, v in (summary.get("results_by_tier") or {}).items() if k != "unknown"}
    rows += [
        ("tokens (prompt+completion)", tokens),
        *([("prompt cache", cache_line)] if cache_line else []),
        *([("service tiers", ", ".join(f"{k} {v:,}" for k, v in tiers.items())
            + (f" ({summary['flex_fallbacks']:,} sent at the standard tier after flex 429s)"
               if summary.get("flex_fallbacks") else ""))]
          if set(tiers) - {"default"} or summary.get("flex_fallbacks") else []),
        ("cost", cost),
        *([("reused answers (cache)", f"{summary['cache_hits']:,}, {usd(summary.get('cost_saved_usd') or 0)} saved")]
          if summary.get("cache_hits") else []),
        ("cost per 1,000 tickets", usd(per_1000)),
    ]
    if summary.get("usage_estimated"):
        rows.insert(len(rows) - 2, ("usage estimated", (
            f"{summary['usage_estimated']:,} result(s) without usage from the provider: tokens counted "
            "with litellm.token_counter, cost_status \"estimated\"")))
    if summary.get("usage_invalid"):
        rows.insert(len(rows) - 2, ("usage not believed", (
            f"{summary['usage_invalid']:,} result(s) with token counts the provider cannot have meant "
            "(negative, fractional or over the model's limit): estimated instead, cost_status names the "
            "problem, usage_reported keeps them")))
    if summary.get("batch_anomalies"):
        rows.append(("batch output not believed", describe_anomalies(summary["batch_anomalies"],
                                                                      summary.get("batch_anomalies_cost_usd"))))
    if summary.get("maybe_billed_before"):
        ids = summary.get("maybe_billed_before_ids") or []
        more = summary["maybe_billed_before"] - len(ids[:10])
        rows.append(("may be billed twice", (
            f"{summary['maybe_billed_before']:,} ticket(s) were in flight when the last run died: "
            + ", ".join(ids[:10]) + (f" and {more:,} more (lines marked maybe_billed_before)" if more > 0 else ""))))
    lines = [title, "-" * len(title)] + kv(rows)
    if failures:
        lines += ["", "failed tickets, most frequent messages (all lines in errors.jsonl):"]
        kind_width = max(len(kind) for kind in failures)
        for kind, group in failures.items():
            lines.append(f"  {kind:<{kind_width}}  {group['count']:>6,}")
            for text, count in group.get("top_messages") or []:
                lines.append(f"  {'':<{kind_width}}  {count:>6,} x {text}")
    return terminal_safe("\n".join(lines))  # failure messages are the provider's text


ANOMALY_NAMES = {"duplicate": "duplicate line(s)", "unknown_id": "unknown custom_id(s)",
                 "null_id": "null custom_id(s)", "non_json": "line(s) not JSON"}


def describe_anomalies(counts: Mapping[str, int], cost_usd: float | None = None) -> str:
    """"2 duplicate line(s), 1 unknown custom_id(s) ...; $X billed outside any ticket (batch_anomalies.jsonl)"."""
    text = ", ".join(f"{n:,} {ANOMALY_NAMES.get(kind, kind)}" for kind, n in counts.items())
    if cost_usd:
        text += f"; {usd(cost_usd)} billed for lines no ticket carries"
    return text + " (batch_anomalies.jsonl)"


def _count(value: object) -> str:
    """A request count the provider sent: shown only when it is a plain non-negative integer."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else "-"


def _when(epoch: object) -> str:
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return "-"
    from datetime import datetime, timezone

    return datetime.fromtimestamp(float(epoch), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def format_batch_parts(batch: StoredJSON | None) -> list[str]:
    """The parts of a batch-mode run (rundir.status.batch_parts) as a table: each part's model, state,
    the provider's status and batch id, its request counts (completed / failed / total), the
    completion window and when it ends."""
    from batchrun.analysis.textfmt import table, terminal_safe

    parts = (batch or {}).get("parts") or []
    if not parts:
        return []
    rows = []
    for part in parts:
        counts = part.get("counts") if isinstance(part.get("counts"), Mapping) else {}
        rows.append([str(part["number"]), terminal_safe(str(part.get("model_key") or "")) or "-", str(part["state"]),
                     terminal_safe(str(part.get("status") or "-")), terminal_safe(str(part.get("batch_id") or "-")),
                     f"{part.get('tickets') or 0:,}",
                     f"{_count(counts.get('completed'))} / {_count(counts.get('failed'))} / {_count(counts.get('total'))}",
                     str(part.get("completion_window") or "-"), _when(part.get("submitted_at")),
                     _when(part.get("expires_at"))])
    lines = table(["part", "model", "state", "provider status", "batch id", "tickets", "done / failed / total",
                   "window", "submitted", "ends by"], rows, left=5)
    for part in parts:
        if part.get("note") or part.get("retry"):
            lines.append(f"  part {part['number']}: " + "; ".join(
                x for x in ((f"{part['retry']:,} to resubmit" if part.get("retry") else ""),
                            terminal_safe(str(part.get("note") or ""))) if x))
    return lines


def format_batch_summary(summary: StoredJSON, batch: StoredJSON | None, *,
                         title: str = "batchrun batch summary", with_parts: bool = True) -> str:
    """The end of a batch-mode run: tickets, results collected, cost, and (`with_parts`) the table
    of its parts (no request rates or latencies: a batch has none worth showing)."""
    parts = (batch or {}).get("parts") or []
    live = sum(1 for part in parts if part.get("state") == "submitted")
    rows = [
        ("tickets in input", f"{summary.get('tickets_total', 0):,}"),
        ("already done before", f"{summary.get('already_done', 0):,}"),
        ("parts", f"{len(parts):,} ({live:,} at the provider)"),
        ("results collected", f"{summary.get('done', 0):,} done, {summary.get('failed', 0):,} failed in this run"),
    ]
    if summary.get("failed_by_kind"):
        rows.append(("failed tickets by kind", ", ".join(f"{k} {v}" for k, v in summary["failed_by_kind"].items())))
    if "total_tokens" in summary:
        rows.append(("tokens (prompt+completion)", f"{summary.get('total_tokens', 0):,} "
                                                   f"({summary.get('prompt_tokens', 0):,} + {summary.get('completion_tokens', 0):,})"))
    cost = usd(summary.get("cost_usd") or 0.0)
    if summary.get("unpriced_results"):
        cost += f"  ({summary['unpriced_results']} result(s) unpriced: cost_usd null)"
    rows.append(("cost (batch price)", cost))
    lines = [title, "-" * len(title)] + kv(rows)
    table_lines = format_batch_parts(batch) if with_parts else []
    if table_lines:
        lines += [""] + table_lines
    return "\n".join(lines)


def upstream_text(upstream: int | None, unreported: int | None) -> str:
    """What the endpoint (a LiteLLM proxy) said it sent upstream, for the summary and status."""
    text = f"{upstream or 0:,} made upstream by the endpoint (LiteLLM proxy: x-litellm-attempted-retries)"
    if unreported:
        text += (f", plus {unreported:,} attempt(s) answered with an error that does not say "
                 "(at least 1 upstream request each, unless the proxy refused it itself)")
    return text


def format_progress_line(stats: RunStats, now: float | None = None) -> str:
    """One plain progress line: done/failed/to do, req/s, $ spent, elapsed, ETA.

    The rate behind the ETA counts from the first dispatch, so start-up (input
    scan, worker processes) does not make it look slow."""
    now = time.monotonic() if now is None else now
    elapsed = max(now - stats.started, 0.0)
    finished = stats.done + stats.failed
    remaining = max(stats.to_do - finished, 0)
    since = max(now - (stats.first_dispatch or stats.started), 1e-9)
    eta = remaining / (finished / since) if finished else None
    cost = f"${stats.cost_usd:,.4f}" + (f" (+{stats.unpriced} unpriced)" if stats.unpriced else "")
    return (f"progress: done {stats.done:,}, failed {stats.failed:,}, to do {remaining:,} "
            f"of {stats.to_do:,} | {stats.attempts / max(elapsed, 1e-9):,.1f} req/s | {cost} | "
            f"elapsed {duration(elapsed)} | ETA {duration(eta) if remaining else '0 s'}")
