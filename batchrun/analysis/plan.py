"""`batchrun plan`: what a run of a job would do and cost, before any request.

This module computes and returns the plan (`make_plan`) and its text
(`format_plan`); the command is commands/plan.py.

SYNOPSIS

    batchrun plan JOB [--input PATH] [--limit N] [--run-dir DIR] [--model NAME]
                      [--concurrency N] [--skip-failed] [--max-cost-usd X]
                      [--sample N] [--assume-latency-ms MS] [--json]

Nothing is sent and nothing is written: the job file and the input are read,
and the run directory's checkpoint files when it exists (without its lock,
so a plan can be made while a run is going on).

WHAT IT COUNTS (per model)

tickets to do
    The input is checked as `batchrun run` checks it (a bad line with
    `on_bad_input = "fail"` fails the plan too, exit 2). Of the first
    `--limit` good tickets, those already in the run directory's
    results.jsonl are done; tickets that failed before count as to do
    (a run retries them) unless `--skip-failed`. The same flags as `run`
    (`--input`, `--limit`, `--run-dir`, `--model`, `--concurrency`) give the
    same counts.

input tokens
    `litellm.token_counter` on each ticket's rendered messages
    (`engine.render_messages`, with the job's tools when it has some), for
    the model's tokenizer (the simulator's count for a simulated run). Exact when there are at most `--sample` tickets
    to do (default 1,000); beyond that, counted exactly on a seeded uniform
    sample of that many of them and extrapolated by the sample's mean, and
    the plan says so, with one standard error of the estimate.

output tokens
    The average completion tokens of the run directory's finished results
    when there are some (the model's real habit on this prompt); else, for a
    simulated run of a plain-text job, the simulator's own answers to the
    sampled tickets (a pure function of the messages and the seed); else
    `params.max_tokens` (or `max_completion_tokens`) per ticket, an upper
    bound; else 1,024 per ticket, the same assumption as the run's budget
    check. The plan says which. With max_tokens set, it also prints the
    ceiling: the cost if every answer used all of max_tokens.

price
    The job's `[prices]` ("job file [prices]") when set, as in a run; else,
    for a live run with an api_base (`--api-base`, or `--live` and the job's
    api_base), what the endpoint says the model costs: a LiteLLM proxy's
    `/model/info` price for the alias ("the endpoint's own prices", what it
    reports as each answer's cost; providers/endpoint_prices.py; if it says
    nothing, a note says why); else litellm's `cost_per_token` for the model ("litellm price list (local
    copy)": the cost map installed with litellm, never fetched); else, when
    the run directory has results the endpoint priced (an alias a LiteLLM
    proxy serves and prices itself), their average cost per ticket ("the run
    directory's finished results"); else "unpriced", with how to set
    `[prices]`: the plan shows tokens and time but no cost.

simulated or live
    A job with a `[simulator]` section is planned as the run `batchrun run`
    would make: the simulated one, its prompt tokens counted as the simulator
    counts them (that run records those, priced as the named model), unless
    `--live`: then litellm's token counter for the model, as the provider
    will bill.

duration
    The larger of
      * the concurrency bound: tickets x latency / concurrency (at least one
        latency), where the latency is the median `latency_ms` of the run
        directory's finished results when there are some (the plan names
        the endpoint they came from: the simulator's latency is not a real
        provider's), else `--assume-latency-ms` (default 1,000 ms, stated);
        `concurrency = "auto"` counts as its max_concurrency;
      * the job's `rpm`: tickets / rpm minutes;
      * the job's `tpm`: (input + output tokens) / tpm minutes.
    The plan names the bound that decides. Retries, 429s and worker start-up
    come on top.

budget
    `max_cost_usd` (the job's, or `--max-cost-usd`) covers every run on the
    directory, as the run's budget check does: the plan compares the cost
    already on disk (results and rejected answers) plus the expected cost
    with it. Over budget: a line starting "OVER BUDGET" and exit code 5, the
    code of a run stopped by its budget, so a script can refuse to start.
    An unpriced model makes the budget uncheckable; the plan says so.

MODELS

The plan is a list of per-model rows (`model_entries`):

  * a single-model job: one row;
  * a compare job (`[[models]]` without `[[routes]]`): one row per model,
    each a run of its own (`JobSpec.for_model`: its run directory
    `RUN_DIR/models/<name>/`, its merged params, its prices), so each has its
    own resume counts, finished results, spend and budget check (a compare
    run checks `max_cost_usd` per model directory); the models run one
    after another, so the total duration is their sum;
  * a routed job (`[[routes]]`): one row per model with the tickets to do
    that the rules send to it (`JobSpec.route`, the same rules the run
    applies); finished results are attributed by their `model_key`; the
    models share the job's run directory, budget, concurrency and rate
    limits, so the total duration is the shared bound. Fallbacks happen only
    after failures and are not planned for.

Exit codes: 0 plan printed; 2 bad job file or input (as `run`); 5 the plan
is over max_cost_usd.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, TypedDict

from batchrun.analysis.documents import BatchPrice, BudgetScope, Plan, PlanRow, StoredJSON
from batchrun.analysis.textfmt import kv, terminal_safe, usd

if TYPE_CHECKING:
    from batchrun.job.sections import PricesSpec
    from batchrun.job.spec import JobSpec
    from batchrun.records import KindTotals, Ticket

DEFAULT_SAMPLE = 1000  # tickets whose tokens are counted exactly
DEFAULT_ASSUMED_LATENCY_MS = 1000.0  # without finished results to measure
DEFAULT_OUTPUT_TOKENS = 1024  # without max_tokens: what provider.estimate_tokens assumes too
SAMPLE_SEED = 0
OVER_BUDGET_EXIT = 5  # errors.ExitCode.BUDGET_EXHAUSTED
PRICE_SOURCES = {"job": "job file [prices]", "endpoint": "the endpoint's own prices (a LiteLLM proxy's /model/info)",
                 "litellm": "litellm price list (local copy)",
                 "finished": "the run directory's finished results (as the endpoint priced them)", None: "unpriced"}


@dataclass
class ModelEntry:
    """One model a run of the job would call, with what decides its cost and time."""

    key: str  # the [[models]] name; the job name for a single-model job
    model: str  # the litellm model string
    job: JobSpec  # renders its prompts (a compare job's per-model job)
    params: Mapping[str, object]  # the litellm params of its requests
    prices: PricesSpec | None
    max_in_flight: int  # concurrency ("auto": max_concurrency)
    concurrency: int | str  # as the job says it
    rpm: int | None
    tpm: int | None
    run_dir: Path  # where its checkpoint files are
    route: str | None = None  # routed jobs: only the tickets the rules send to this [[models]] name
    api_base: str | None = None  # a live run's endpoint (asked for its prices: a LiteLLM proxy's aliases)
    api_key_env: str | None = None


def plan_mode(job: JobSpec) -> str:
    """"single", "compare" ([[models]] without [[routes]]) or "route"."""
    if not getattr(job, "models", None):
        return "single"
    return "route" if getattr(job, "routes", None) else "compare"


def _entry(key: str, job: JobSpec) -> ModelEntry:
    return ModelEntry(
        key=key, model=job.model, job=job, params=dict(job.params), prices=job.prices,
        max_in_flight=job.max_in_flight, concurrency=job.concurrency, rpm=getattr(job, "rpm", None),
        tpm=getattr(job, "tpm", None), run_dir=Path(job.resolved_run_dir()),
        api_base=getattr(job, "api_base", None), api_key_env=getattr(job, "api_key_env", None))


def model_entries(job: JobSpec) -> list[ModelEntry]:
    """The models of a job, one entry each (see MODELS in the module docstring)."""
    mode = plan_mode(job)
    if mode == "compare":
        return [_entry(spec.name, job.for_model(spec)) for spec in job.models]
    if mode == "route":
        return [dataclasses.replace(_entry(spec.name, job), model=spec.model, params={**job.params, **spec.params},
                                    prices=spec.prices or job.prices, route=spec.name,
                                    api_base=spec.api_base or job.api_base,
                                    api_key_env=spec.api_key_env or job.api_key_env) for spec in job.models]
    return [_entry(job.name, job)]


def _max_tokens(params: Mapping[str, object]) -> int | None:
    value = params.get("max_tokens") or params.get("max_completion_tokens")
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


class _Finished(TypedDict):
    """What the run directory's finished results say (`_finished`)."""

    results: int
    avg_completion_tokens: float | None
    with_usage: int
    avg_prompt_tokens: float | None
    median_latency_ms: float | None
    median_flex_latency_ms: float | None  # of the results served at the flex tier
    cache: KindTotals  # the pilot: what the finished results say the provider's cache served
    spent_usd: float
    priced_results: int
    avg_result_cost_usd: float | None
    manifest: StoredJSON


def _finished(run_dir: Path, model_key: str | None = None) -> _Finished:
    """Average completion tokens and median latency of the finished results, if any
    (with `model_key`: only the lines that model answered)."""
    from batchrun.rundir.layout import ERRORS, RESULTS
    from batchrun.rundir.lines import iter_lines, scan_jsonl
    from batchrun.records import KindTotals, line_money
    from batchrun.rundir.manifest import read_manifest

    completions: list[int] = []
    prompts: list[int] = []
    latencies: list[float] = []
    flex_latencies: list[float] = []
    cache = KindTotals()
    for line in iter_lines(run_dir / RESULTS):
        if model_key is not None and line.get("model_key") != model_key:
            continue
        cache.add(line_money(line))
        if line.get("service_tier") == "flex" and isinstance(line.get("latency_ms"), (int, float)):
            flex_latencies.append(float(line["latency_ms"]))
        usage = line.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            completions.append(usage["completion_tokens"])
            if isinstance(usage.get("prompt_tokens"), int):
                prompts.append(usage["prompt_tokens"])
        if isinstance(line.get("latency_ms"), (int, float)):
            latencies.append(float(line["latency_ms"]))
    results = scan_jsonl(run_dir / RESULTS)
    spent = results.cost_usd + scan_jsonl(run_dir / ERRORS).cost_usd
    priced = results.lines - results.unpriced
    manifest = None
    try:
        manifest = read_manifest(run_dir)
    except Exception:  # an unreadable manifest only loses the endpoint name and the mismatch check
        pass
    return {
        "results": len(latencies),
        "avg_completion_tokens": statistics.fmean(completions) if completions else None,
        "with_usage": len(completions),
        "avg_prompt_tokens": statistics.fmean(prompts) if prompts else None,
        "median_latency_ms": statistics.median(latencies) if latencies else None,
        "median_flex_latency_ms": statistics.median(flex_latencies) if flex_latencies else None,
        "cache": cache,  # the pilot: what the finished results say the provider's cache served
        "spent_usd": spent,
        "priced_results": priced,  # results with a cost_usd (the whole file, every model)
        "avg_result_cost_usd": results.cost_usd / priced if priced > 0 else None,
        "manifest": manifest or {},
    }


def _prices(entry: ModelEntry, mean_in: float, mean_out: float, *, live: bool = False,
            notes: list[str] | None = None) -> tuple[float | None, float | None, str | None]:
    """(USD per input token, USD per output token, source) for the entry's model: the job's [prices],
    else (a live run with an api_base) the endpoint's own (a LiteLLM proxy prices its aliases and
    reports that cost on each answer), else litellm's price map."""
    if entry.prices is not None:
        return entry.prices.input_per_million / 1e6, entry.prices.output_per_million / 1e6, "job"
    if live and entry.api_base:
        import os

        from batchrun.providers.endpoint_prices import EndpointPrices, endpoint_prices

        key = os.environ.get(entry.api_key_env) if entry.api_key_env else None
        reported = endpoint_prices(entry.api_base, entry.model, key)
        if isinstance(reported, EndpointPrices):
            return reported.input_per_token, reported.output_per_token, "endpoint"
        if notes is not None:
            notes.append(f"the endpoint reports no price for {entry.model}: {reported}")
    from batchrun.providers.litellm_setup import price_for

    # priced on a typical request, so a model with per-request tiers (long prompts) is priced right
    p_in, p_out = max(1, round(mean_in)), max(1, round(mean_out))
    prompt_price, completion_price = price_for(entry.model, p_in, 0), price_for(entry.model, 0, p_out)
    if prompt_price is None or completion_price is None:  # litellm does not know the model: unpriced
        return None, None, None
    in_cost, out_cost = prompt_price[0], completion_price[1]
    return float(in_cost) / p_in, float(out_cost) / p_out, "litellm"


def _count_tokens(entry: ModelEntry, job: JobSpec, tickets: list[Ticket], simulated: bool = False) -> list[int]:
    """Prompt tokens per ticket: as the model's tokenizer counts them (litellm.token_counter), or,
    for a simulated run, as the simulator counts them (what that run records and is priced on)."""
    from batchrun.job.templates import render_messages

    tools = job.tools_payload
    if simulated:
        import orjson

        from batchrun.sim.tokens import count_prompt_tokens, count_tokens

        extra = count_tokens(orjson.dumps(tools).decode()) if tools else 0
        if job.output_schema is not None and job.send_json_schema != "never":
            extra += count_tokens(orjson.dumps(job.output_schema).decode())
        return [count_prompt_tokens(render_messages(job, ticket)) + extra for ticket in tickets]
    from batchrun.providers.litellm_setup import estimate_tokens

    return [estimate_tokens(entry.model, render_messages(job, ticket), tools) for ticket in tickets]


def _simulated_output_tokens(job: JobSpec, model: str, tickets: list[Ticket], max_tokens: int | None) -> float | None:
    """Mean completion tokens of the simulator's answers to `tickets` (its answers are a pure
    function of the messages, the seed and the model's noise), cut at max_tokens; None for a job
    whose answers are JSON or tool calls (the plan keeps max_tokens as the bound then)."""
    if not tickets or job.output_schema is not None or job.tools_payload or job.simulator is None:
        return None
    from batchrun.job.templates import render_messages
    from batchrun.sim.answers import compose_answer
    from batchrun.sim.tokens import count_tokens

    name = model.split("/", 1)[-1]
    profile = job.simulator.model_profiles.get(name)
    noise = profile.noise if profile is not None else None
    counts = []
    for ticket in tickets:
        n = count_tokens(compose_answer(render_messages(job, ticket), job.simulator.seed, noise))
        counts.append(min(n, max_tokens) if max_tokens else n)
    return statistics.fmean(counts)


def _plan_entry(entry: ModelEntry, *, limit: int | None, skip_failed: bool, sample: int,
                assume_latency_ms: float, simulated: bool = False, retry_permanent: bool = False) -> PlanRow:
    from batchrun.errors import TicketError
    from batchrun.job.tickets import read_tickets, scan_input
    from batchrun.rundir.lines import load_done_ids, load_failed_kinds, permanent_failures
    from batchrun.rundir.manifest import fail_fast_runs, read_manifest

    job = entry.job
    run_dir = entry.run_dir
    done = load_done_ids(run_dir)
    kinds = load_failed_kinds(run_dir, done)
    failed = set(kinds)
    permanent = frozenset() if retry_permanent else permanent_failures(kinds, fail_fast_runs(read_manifest(run_dir)))
    templates = job.prompt_templates
    skip_bad = job.on_bad_input == "skip"
    scan = scan_input(job.input, job.id_field, templates, max_problems=None if skip_bad else 20,
                      max_line_bytes=job.max_line_bytes, done_ids=done,
                      failed_ids=failed if skip_failed else frozenset(), limit=limit,
                      input_format=job.input_format, permanent_ids=permanent)
    if scan.file_problems or (scan.problem_count and not skip_bad):
        raise TicketError(scan.describe_problems().replace("nothing was requested", "a run would refuse it"))
    job_to_do = scan.selected - scan.already_done - scan.skipped_failed - scan.skipped_permanent

    # One pass over the tickets to do: a seeded reservoir sample, the retries of failed ones,
    # and for a routed job the tickets its rules send to this model.
    rng = random.Random(SAMPLE_SEED)
    reservoir: list[Ticket] = []
    seen = retried = 0
    for ticket in read_tickets(job.input, job.id_field, skip_lines=scan.bad_lines,
                               max_line_bytes=job.max_line_bytes, only_lines=scan.dispatch,
                               input_format=job.input_format):
        if entry.route is not None and job.route(ticket.fields)[0] != entry.route:
            continue
        seen += 1
        retried += ticket.id in failed
        if len(reservoir) < sample:
            reservoir.append(ticket)
        else:
            slot = rng.randrange(seen)
            if slot < sample:
                reservoir[slot] = ticket
    to_do = seen if entry.route is not None else job_to_do
    counts = _count_tokens(entry, job, reservoir, simulated)
    exact = len(counts) >= to_do
    mean_in = statistics.fmean(counts) if counts else 0.0
    if exact:
        input_tokens, stderr = float(sum(counts)), 0.0
    else:
        n, big_n = len(counts), to_do
        sd = statistics.stdev(counts) if n > 1 else 0.0
        input_tokens = mean_in * big_n
        stderr = big_n * sd / math.sqrt(n) * math.sqrt((big_n - n) / (big_n - 1)) if n else 0.0

    finished = _finished(run_dir, entry.key if entry.route is not None else None)
    max_tokens = _max_tokens(entry.params)
    simulated_out = (_simulated_output_tokens(job, entry.model, reservoir, max_tokens)
                     if simulated and finished["avg_completion_tokens"] is None else None)
    if finished["avg_completion_tokens"] is not None:
        per_ticket_out, out_source = finished["avg_completion_tokens"], "finished"
    elif simulated_out is not None:
        per_ticket_out, out_source = simulated_out, "simulator"
    elif max_tokens is not None:
        per_ticket_out, out_source = float(max_tokens), "max_tokens"
    else:
        per_ticket_out, out_source = float(DEFAULT_OUTPUT_TOKENS), "assumed"
    output_tokens = per_ticket_out * to_do

    notes: list[str] = []
    in_rate, out_rate, price_source = _prices(entry, mean_in, per_ticket_out, live=not simulated, notes=notes)
    per_result_usd = finished["avg_result_cost_usd"]
    cost = ceiling = None
    if in_rate is not None and out_rate is not None:  # priced: _prices named a source
        cost = input_tokens * in_rate + output_tokens * out_rate
        if max_tokens is not None:
            ceiling = input_tokens * in_rate + max_tokens * to_do * out_rate
    elif per_result_usd is not None and entry.route is None:
        # litellm has no price (an alias a proxy serves, say) but the endpoint priced what it answered
        price_source = "finished"
        cost = per_result_usd * to_do

    batch: BatchPrice | None = None
    if job.mode == "batch":  # the Batch API's price next to the online one (docs/batch.md)
        from batchrun.providers.batch_api import batch_prices_of

        prices = batch_prices_of(entry.model, entry.prices)
        batch = {"window": "24h", "price_source": None if prices is None else prices.status,
                 "online_cost_usd": None if cost is None else round(cost, 6),
                 "input_per_million_usd": None if prices is None else round(prices.input_per_token * 1e6, 6),
                 "output_per_million_usd": None if prices is None else round(prices.output_per_token * 1e6, 6),
                 "parts": math.ceil(to_do / job.batch_max_requests) if to_do else 0}
        if prices is None:
            cost = ceiling = None
        else:
            cost = input_tokens * prices.input_per_token + output_tokens * prices.output_per_token
            if max_tokens is not None:
                ceiling = input_tokens * prices.input_per_token + max_tokens * to_do * prices.output_per_token

    if finished["median_latency_ms"] is not None:
        latency_ms, latency_source = finished["median_latency_ms"], "finished"
    else:
        latency_ms, latency_source = assume_latency_ms, "assumed"
    bounds = {"concurrency": (max(latency_ms / 1000.0, to_do * latency_ms / 1000.0 / entry.max_in_flight)
                              if to_do else 0.0)}
    if entry.rpm:
        bounds["rpm"] = to_do / entry.rpm * 60.0
    if entry.tpm:
        bounds["tpm"] = (input_tokens + output_tokens) / entry.tpm * 60.0
    bound = max(bounds, key=lambda k: bounds[k])

    from batchrun.analysis.tier_forecast import forecast_cache, tier_table

    cache = forecast_cache(job, entry.model, to_do=to_do, concurrency=entry.max_in_flight, mean_in=mean_in,
                           pilot=finished["cache"], simulated=simulated)
    tier = getattr(job, "service_tier", None)
    if price_source in ("job", "litellm") and job.mode != "batch" and to_do and (
            cache["cached_per_ticket"] or cache["writes_per_ticket"] or tier in ("flex", "priority")):
        from batchrun.analysis.tier_forecast import ticket_usage
        from batchrun.providers.pricing import Pricing

        pricing = Pricing(entry.model, entry.prices)
        usage, scale = ticket_usage(mean_in, per_ticket_out, cache)
        scaled, _ = pricing.cost(usage, tier)
        if scaled is not None:  # the cached tokens at the cached price, at the job's tier
            cost = scaled * to_do / scale
            if max_tokens is not None:
                usage, scale = ticket_usage(mean_in, max_tokens, cache)
                most, _ = pricing.cost(usage, tier)
                ceiling = None if most is None else most * to_do / scale
    simulator = getattr(job, "simulator", None)
    tiers = tier_table(entry, to_do=to_do, mean_in=mean_in, out=per_ticket_out, cache=cache,
                       standard_seconds=bounds[bound], latency_ms=latency_ms, latency_source=latency_source,
                       flex_latency_ms=finished["median_flex_latency_ms"],
                       batch_window_s=(simulator.batch_duration_s / simulator.batch_time_scale
                                       if simulated and simulator is not None else None)) if to_do else None

    manifest = finished["manifest"]
    if manifest:
        old_job = manifest.get("job") or {}
        if old_job.get("fingerprint_sha256") and old_job["fingerprint_sha256"] != job.fingerprint_hash():
            notes.append(f"{run_dir} holds a run of a different job (model, prompt, params or id field "
                         "changed): `batchrun run` would refuse to resume it without --force; "
                         "use another --run-dir for a fresh run")
        old_sha = (manifest.get("input") or {}).get("sha256")
        if old_sha and old_sha != scan.sha256:
            notes.append(f"{run_dir} was run on different input bytes: `batchrun run` would refuse to "
                         "resume it without --force")
    if scan.problem_count:
        notes.append(f"{scan.problem_count:,} bad input line(s) would be skipped (on_bad_input = \"skip\")")
    return {
        "key": entry.key,
        "model": entry.model,
        "run_dir": str(run_dir),
        "route": entry.route,
        "tickets": {"input": scan.tickets, "limit": limit, "selected": scan.selected, "already_done": scan.already_done,
                    "failed_before_retried": retried, "failed_before_skipped": scan.skipped_failed,
                    "permanent_kept": scan.skipped_permanent,
                    "to_do": to_do, "job_to_do": job_to_do, "bad_lines": scan.problem_count},
        "input_tokens": {"total": round(input_tokens), "exact": exact, "sampled": len(counts),
                         "counted_as": "simulator" if simulated else "tokenizer",
                         "mean_per_ticket": round(mean_in, 2), "standard_error": round(stderr),
                         "finished_mean_reported": (None if finished["avg_prompt_tokens"] is None
                                                    else round(finished["avg_prompt_tokens"], 2))},
        "output_tokens": {"total": round(output_tokens), "per_ticket": round(per_ticket_out, 3),
                          "source": out_source, "finished_results": finished["with_usage"],
                          "max_tokens": max_tokens},
        "price": {"source": price_source, "label": PRICE_SOURCES[price_source],
                  "per_ticket_usd": (round(per_result_usd, 9) if price_source == "finished" and per_result_usd is not None
                                     else None),
                  "priced_results": finished["priced_results"] if price_source == "finished" else None,
                  "input_per_million_usd": None if in_rate is None else round(in_rate * 1e6, 6),
                  "output_per_million_usd": None if out_rate is None else round(out_rate * 1e6, 6)},
        "cached_tokens": {"total": round(cache["cached_per_ticket"] * to_do),
                          "writes": round(cache["writes_per_ticket"] * to_do),
                          "share": round(cache["cached_per_ticket"] / mean_in, 4) if mean_in else None,
                          "source": cache["source"], "prefix_tokens": cache["prefix_tokens"], "note": cache["note"]},
        "service_tier": tier,
        "tiers": tiers,  # the same tickets at the standard, flex and batch tiers, with the time of each
        "cost_usd": None if cost is None else round(cost, 6),
        "ceiling_usd": None if ceiling is None else round(ceiling, 6),
        "batch": batch,  # batch mode: cost_usd above is at the batch price; the online price is here
        "spent_usd": round(finished["spent_usd"], 6),
        "duration": {"seconds": round(bounds[bound], 3), "bound": bound,
                     "bounds_s": {k: round(v, 3) for k, v in bounds.items()},
                     "latency_ms": round(latency_ms, 1), "latency_source": latency_source,
                     "latency_results": finished["results"],
                     "latency_endpoint": manifest.get("endpoint") if latency_source == "finished" else None,
                     "concurrency": entry.concurrency, "max_in_flight": entry.max_in_flight,
                     "rpm": entry.rpm, "tpm": entry.tpm},
        "notes": notes,
    }


def make_plan(job: JobSpec, *, job_path: Path | None = None, limit: int | None = None, skip_failed: bool = False,
              max_cost_usd: float | None = None, sample: int | None = None,
              assume_latency_ms: float = DEFAULT_ASSUMED_LATENCY_MS, live: bool = False,
              retry_permanent: bool = False) -> Plan:
    """The plan as a JSON-ready dict (see the module docstring); raises BatchrunError subclasses.
    A job with a [simulator] section is planned as the simulated run `batchrun run` would make,
    unless `live` (then as the live run `batchrun run --live` would make)."""
    if job.simulator is None or live:  # as in `batchrun run`: a live model must be one litellm can route
        from batchrun.providers.litellm_setup import check_models

        check_models(job, prices=False)  # an unpriced model is planned as unpriced
    sample = DEFAULT_SAMPLE if sample is None else sample
    mode = plan_mode(job)
    simulated = job.simulator is not None and not live
    rows = [_plan_entry(entry, limit=limit, skip_failed=skip_failed, sample=sample, assume_latency_ms=assume_latency_ms,
                        simulated=simulated, retry_permanent=retry_permanent) for entry in model_entries(job)]
    budget = max_cost_usd if max_cost_usd is not None else job.max_cost_usd

    # Budget scopes: what one run directory spends. A compare job has one per model.
    groups = [[row] for row in rows] if mode == "compare" else [rows]
    scopes: list[BudgetScope] = []
    for group in groups:
        unpriced = [r["model"] for r in group if r["cost_usd"] is None and r["tickets"]["to_do"]]
        expected = sum(r["cost_usd"] or 0.0 for r in group)
        ceiling = sum((r["ceiling_usd"] if r["ceiling_usd"] is not None else r["cost_usd"] or 0.0) for r in group)
        spent = group[0]["spent_usd"]  # the group's run directory (shared by a routed job's rows)
        over = budget is not None and not unpriced and spent + expected > budget
        scopes.append({
            "name": group[0]["key"] if mode == "compare" else job.name, "run_dir": group[0]["run_dir"],
            "spent_usd": round(spent, 6), "expected_usd": None if unpriced else round(expected, 6),
            "ceiling_usd": None if unpriced else round(ceiling, 6), "unpriced_models": unpriced, "over": over,
            "ceiling_over": bool(budget is not None and not unpriced and not over and spent + ceiling > budget)})

    if mode == "compare":  # the models run one after another
        seconds = sum(r["duration"]["seconds"] for r in rows)
    elif mode == "route":  # one run: the models share the concurrency slots and the rate limits
        first = rows[0]["duration"]
        bounds = {"concurrency": sum(r["duration"]["bounds_s"]["concurrency"] for r in rows)}
        to_do = sum(r["tickets"]["to_do"] for r in rows)
        if first["rpm"]:
            bounds["rpm"] = to_do / first["rpm"] * 60.0
        if first["tpm"]:
            bounds["tpm"] = sum(r["input_tokens"]["total"] + r["output_tokens"]["total"] for r in rows) / first["tpm"] * 60.0
        seconds = max(bounds.values())
    else:
        seconds = rows[0]["duration"]["seconds"]
    unpriced_all = [m for scope in scopes for m in scope["unpriced_models"]]
    return {
        "job": job.name,
        "job_path": str(job_path) if job_path is not None else None,
        "mode": mode,
        "input": str(job.input),
        "run_dir": str(job.resolved_run_dir()),
        "limit": limit,
        "skip_failed": skip_failed,
        "simulator": job.simulator is not None,
        "simulated": simulated,
        "models": rows,
        "total": {"to_do": sum(r["tickets"]["to_do"] for r in rows),
                  "input_tokens": sum(r["input_tokens"]["total"] for r in rows),
                  "output_tokens": sum(r["output_tokens"]["total"] for r in rows),
                  "cost_usd": None if unpriced_all else round(sum(r["cost_usd"] or 0.0 for r in rows), 6),
                  "spent_usd": round(sum(scope["spent_usd"] for scope in scopes), 6),
                  "seconds": round(seconds, 3)},
        "budget": {"max_cost_usd": budget, "over": any(scope["over"] for scope in scopes),
                   "unpriced_models": unpriced_all, "scopes": scopes},
    }


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def _per_million(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if value >= 0.01 and round(value, 2) == round(value, 6) else f"${value:,.4g}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:,.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.1f} h"


def _format_row(r: PlanRow, single: bool = True) -> list[str]:
    t = r["tickets"]
    counts = (f"{t['selected']:,} (the first {t['limit']:,} of {t['input']:,}: --limit)" if t["limit"] is not None
              else f"{t['input']:,} in input") + f": {t['already_done']:,} already done"
    if t["failed_before_retried"]:
        counts += f", {t['failed_before_retried']:,} failed before (retried)"
    if t["failed_before_skipped"]:
        counts += f", {t['failed_before_skipped']:,} failed before (skipped: --skip-failed)"
    if t.get("permanent_kept"):
        counts += f", {t['permanent_kept']:,} failed for good before (kept: --retry-permanent sends them)"
    counts += f"; {t['job_to_do']:,} to do"
    if r["route"] is not None:
        counts += f", {t['to_do']:,} of them routed to this model by the job's [[routes]]"
    it = r["input_tokens"]
    counter = ("the simulator's token count" if it.get("counted_as") == "simulator"
               else "litellm.token_counter")
    if t["to_do"] == 0:
        in_text = "0"
    elif it["exact"]:
        in_text = (f"{it['total']:,} (exact: {counter} on the rendered messages of all "
                   f"{t['to_do']:,} tickets to do; {it['mean_per_ticket']:,.1f} per ticket)")
    else:
        in_text = (f"~{it['total']:,} ± {it['standard_error']:,} (ESTIMATE: counted exactly on a random "
                   f"sample of {it['sampled']:,} of {t['to_do']:,} tickets to do, {it['mean_per_ticket']:,.1f} "
                   f"per ticket, extrapolated by the mean; ± one standard error)")
    if t["to_do"] and it["finished_mean_reported"] is not None:
        in_text += (f"; the finished results averaged {it['finished_mean_reported']:,.1f} prompt tokens "
                    "as their endpoint reported")
    ot = r["output_tokens"]
    if ot["source"] == "finished":
        out_text = (f"{ot['total']:,} (average {ot['per_ticket']:,.2f} per ticket over {ot['finished_results']:,} "
                    "finished results in the run directory"
                    + (f"; max_tokens {ot['max_tokens']:,} allows at most {ot['max_tokens'] * t['to_do']:,})"
                       if ot["max_tokens"] and t["to_do"] else ")"))
    elif ot["source"] == "simulator":
        out_text = (f"{ot['total']:,} (average {ot['per_ticket']:,.2f} per ticket: the simulator's answers to the "
                    f"same {it['sampled']:,} tickets" + (f"; max_tokens {ot['max_tokens']:,} allows at most "
                                                         f"{ot['max_tokens'] * t['to_do']:,})" if ot["max_tokens"] else ")"))
    elif ot["source"] == "max_tokens":
        out_text = f"{ot['total']:,} (UPPER BOUND: max_tokens {ot['max_tokens']:,} per ticket; no finished results yet)"
    else:
        out_text = (f"{ot['total']:,} (ASSUMED: {DEFAULT_OUTPUT_TOKENS:,} per ticket: the job sets no max_tokens "
                    "and the run directory has no finished results)")
    p = r["price"]
    if p["source"] is None:
        price = (f"unpriced: litellm's price list has no {r['model']} (an alias a LiteLLM proxy or your own "
                 "server serves?) and the job has no [prices]; set [prices] input_per_million and "
                 "output_per_million in the job file to plan its cost, plan with --api-base (a LiteLLM proxy "
                 "says what its alias costs), or run a few tickets first: the plan then uses what the endpoint "
                 "charged")
    elif p["source"] == "finished":
        price = (f"{usd(p['per_ticket_usd'])} per ticket, the average of {p['priced_results']:,} finished results "
                 f"as the endpoint priced them (litellm has no price for {r['model']}; [prices] in the job "
                 "file would say per token)")
    else:
        price = (f"{_per_million(p['input_per_million_usd'])} in / {_per_million(p['output_per_million_usd'])} "
                 f"out per million tokens" + (" at the standard tier" if r["service_tier"] else "")
                 + f"; source: {p['label']}")
    if r["cost_usd"] is None:
        cost = "unknown (unpriced model)"
    else:
        cost = usd(r["cost_usd"])
        if r["ceiling_usd"] is not None and r["ceiling_usd"] > r["cost_usd"] + 1e-12:
            cost += f" (at most {usd(r['ceiling_usd'])} if every answer used all of max_tokens)"
    d = r["duration"]
    conc = (f"concurrency {d['concurrency']}" if d["concurrency"] != "auto"
            else f"concurrency auto (up to {d['max_in_flight']})")
    if d["latency_source"] == "finished":
        lat = (f"median latency {d['latency_ms']:,.0f} ms of {d['latency_results']:,} finished results"
               + (f" (endpoint: {d['latency_endpoint']})" if d["latency_endpoint"] else ""))
    else:
        lat = f"ASSUMED latency {d['latency_ms']:,.0f} ms (--assume-latency-ms; no finished results to measure)"
    if t["to_do"] == 0:
        duration = "0 s: nothing to do"
    else:
        limits = ", ".join(f"{k} {d[k]:,}" for k in ("rpm", "tpm") if d[k]) or "no rpm/tpm limits set"
        others = "; ".join(f"{k} bound {_duration(v)}" for k, v in d["bounds_s"].items() if k != d["bound"])
        duration = (f"~{_duration(d['seconds'])}, set by the {d['bound']} bound: {conc}, {lat}; {limits}"
                    + (f" ({others})" if others else ""))
    ct = r["cached_tokens"]
    if t["to_do"] and (ct["total"] or ct["writes"] or ct["source"] == "finished"):
        cached_text = f"~{ct['total']:,} ({(ct['share'] or 0) * 100:.1f}% of input"
        cached_text += (f"; {ct['writes']:,} written to the cache" if ct["writes"] else "") + f": {ct['note']})"
    else:
        cached_text = ct["note"] or "none"
    rows = [("tickets", counts), ("input tokens", in_text), ("cached input tokens", cached_text),
            ("output tokens", out_text), ("price", price),
            ("expected cost", cost + (f" (service_tier {r['service_tier']})" if r["service_tier"] else ""))]
    tiers = r["tiers"]
    if tiers:
        rows.append(("by tier", "the same tickets, cached tokens at each tier's cached price:"))
        for name in ("standard", "flex", "batch"):
            each = tiers[name]
            if "unavailable" in each:
                rows.append((f"  {name}", f"- ({each['unavailable']})"))
            else:
                amount = each.get("cost_usd")
                rows.append((f"  {name}", f"{usd(amount) if amount is not None else 'unpriced':>12}"
                             f"   ~{_duration(each.get('seconds', 0.0))} ({each.get('time', '')})"))
    b = r.get("batch")
    if b:
        rows[3] = ("price", price + " (online)")
        rows.append(("batch mode", f"{_per_million(b['input_per_million_usd'])} in / "
                     f"{_per_million(b['output_per_million_usd'])} out per million tokens "
                     f"({b['price_source'] or 'unpriced'}); expected cost above is at this price, "
                     f"{usd(b['online_cost_usd']) if b['online_cost_usd'] is not None else 'unknown'} online; "
                     f"{b['parts']} part(s), answers within the {b['window']} window"))
    if r["route"] is None:  # a routed job's models share one run directory: its spend is in the budget line
        rows.append(("already spent", f"{usd(r['spent_usd'])} in this run directory"))
    rows.append(("duration", duration + (" (if it had the job's slots to itself)" if r["route"] is not None
                                         and t["to_do"] else "")
                 + (f" (at the standard tier's latency; {r['service_tier']}: see by tier)"
                    if r["service_tier"] == "flex" and r["tiers"] else "")))
    name = f"model {r['model']}" if single else f"model {r['key']}: {r['model']}"
    lines = [f"{name}  (run directory {r['run_dir']})"]
    lines += kv(rows, indent="  ")
    lines += [f"  note: {n}" for n in r["notes"]]
    return lines


def format_plan(plan: Plan) -> str:
    head = f"batchrun plan: {plan['job']}" + (f" ({plan['job_path']})" if plan["job_path"] else "")
    head += ": no request sent"
    lines = [head, "-" * len(head)]
    first = plan["models"][0]["tickets"] if plan["models"] else None
    if first is not None:
        lines.append(f"input: {plan['input']}: {first['input']:,} tickets"
                     + (f" (--limit {plan['limit']:,})" if plan["limit"] is not None else ""))
    if plan.get("simulated"):
        lines.append("the job has a [simulator] section: this is the plan of the simulated run `batchrun run` "
                     "makes (tokens as the simulator counts them, priced as the named model); "
                     "`batchrun plan --live` plans the live run")
    elif plan["simulator"]:
        lines.append("planned as the live run `batchrun run --live` makes (the model's tokenizer and price)")
    lines.append("")
    for row in plan["models"]:
        lines += _format_row(row, plan["mode"] == "single") + [""]
    total = plan["total"]
    if len(plan["models"]) > 1:
        how = {"compare": "every ticket on every model, one model after another",
               "route": "each ticket on the model its route picks, in one run"}[plan["mode"]]
        lines.append(f"total: {total['to_do']:,} requests, {total['input_tokens']:,} input + "
                     f"{total['output_tokens']:,} output tokens, {usd(total['cost_usd'])}, "
                     f"~{_duration(total['seconds'])} ({how})")
    b = plan["budget"]
    if b["max_cost_usd"] is None:
        all_in = None if total["cost_usd"] is None else total["spent_usd"] + total["cost_usd"]
        lines.append("budget: max_cost_usd not set"
                     + (f"; spent + expected = {usd(all_in)}" if all_in is not None else ""))
    for scope in b["scopes"] if b["max_cost_usd"] is not None else []:
        where = f"budget [{scope['name']}]" if len(b["scopes"]) > 1 else "budget"
        all_in = None if scope["expected_usd"] is None else scope["spent_usd"] + scope["expected_usd"]
        if scope["unpriced_models"]:
            lines.append(f"{where}: max_cost_usd {usd(b['max_cost_usd'])} cannot be checked: unpriced model(s) "
                         + ", ".join(scope["unpriced_models"]) + " (set [prices] in the job)")
        elif scope["over"]:
            lines.append(f"OVER BUDGET{where[6:]}: already spent {usd(scope['spent_usd'])} + expected "
                         f"{usd(scope['expected_usd'])} = {usd(all_in)} > max_cost_usd {usd(b['max_cost_usd'])}: "
                         "the run would stop at the budget (exit 5) before finishing; raise max_cost_usd or "
                         "--limit the run")
        else:
            lines.append(f"{where}: spent {usd(scope['spent_usd'])} + expected {usd(scope['expected_usd'])} = "
                         f"{usd(all_in)} of max_cost_usd {usd(b['max_cost_usd'])}: within budget")
            if scope["ceiling_over"]:
                lines.append("  but if every answer used all of max_tokens it would not be: the run reserves "
                             "max_tokens per request in flight, so it may stop short of the last tickets")
    return terminal_safe("\n".join(lines) + "\n")
