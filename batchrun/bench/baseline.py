"""The bare pattern bench measures batchrun against: litellm.acompletion under a semaphore,
as a user would write it, on the same tickets; and the sample the sweep runs on."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence, TypedDict

from batchrun.analysis.stats import Percentiles, percentiles

if TYPE_CHECKING:
    from batchrun.job.spec import JobSpec
    from batchrun.providers.online import LiteLLMProvider
    from batchrun.providers.seam import ChatRequest
    from batchrun.records import Ticket

SIM_API_KEY = "sim-key"


class Throughput(TypedDict):
    """What bench measures of any runner at one setting: the bare pattern's and batchrun's alike."""

    requests: int
    done: int
    failed: int
    rate_limited: int
    wall_s: float
    requests_per_s: float
    tickets_per_s: float
    output_tokens_per_s: float
    latency_ms: Percentiles
    ttft_ms: Percentiles | None
    rate_429: float
    error_rate: float


class BareRun(Throughput):
    """What `run_baseline` measured of the bare pattern at one setting."""

    errors_by_type: dict[str, int]  # exception class name -> requests


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU of this process (worker processes report their own: `worker_cpu_s`)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_sample(job: JobSpec, count: int, path: Path) -> int:
    """Write the first `count` valid tickets of the job's input to `path`; returns how many
    distinct tickets the input gave (fewer than `count`: the sample is cycled, ids suffixed)."""
    import orjson

    from batchrun.errors import TicketError
    from batchrun.job.templates import MissingFieldError, render_messages
    from batchrun.job.tickets import read_tickets, scan_input

    def valid(skip: frozenset[int] | set[int]) -> Iterator[Ticket]:
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
        templates = job.prompt_templates
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


async def run_baseline(job: JobSpec, tickets: Sequence[Ticket], concurrency: int, *, model: str,
                       api_base: str | None, api_key: str | None, stream: bool) -> BareRun:
    """The bare pattern: acompletion under asyncio.Semaphore(C), every ticket via asyncio.gather."""
    import asyncio
    import time

    from batchrun.job.templates import render_messages
    from batchrun.providers.litellm_setup import bare_acompletion, is_rate_limit_error

    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    ttfts: list[float] = []
    completion_tokens = 0
    extra: dict[str, object] = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}

    async def one(ticket: Ticket) -> object:  # litellm's response
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


def make_provider(job: JobSpec, model: str, api_base: str | None, api_key: str | None,
                   max_connections: int | None = None) -> LiteLLMProvider:
    """A LiteLLMProvider as `batchrun run` builds it (streaming comes from the job, per request);
    the first one sizes litellm's connection pool for the sweep's largest setting."""
    from batchrun.providers.online import LiteLLMProvider

    return LiteLLMProvider(model=model, api_base=api_base, api_key=api_key, params=job.params, prices=job.prices,
                           max_connections=max_connections)


def warmup_request(job: JobSpec, ticket: Ticket) -> ChatRequest:
    """A request like the engine's for this ticket (with the job's stream/schema options)."""
    from batchrun.job.templates import render_messages
    from batchrun.providers.seam import ChatRequest, RequestOptions

    return ChatRequest(f"warmup-{ticket.id}", render_messages(job, ticket), job.timeout_s,
                       options=RequestOptions.for_job(job))


@contextlib.contextmanager
def openai_transport_set(name: str) -> Iterator[None]:
    """Within the block, litellm sends openai/ chat calls through `name` ("openai-sdk" or "litellm-http")."""
    from batchrun.providers.tuning import OPENAI_HTTP_HANDLER_ENV

    before = os.environ.get(OPENAI_HTTP_HANDLER_ENV)
    os.environ[OPENAI_HTTP_HANDLER_ENV] = "true" if name == "litellm-http" else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(OPENAI_HTTP_HANDLER_ENV, None)
        else:
            os.environ[OPENAI_HTTP_HANDLER_ENV] = before
