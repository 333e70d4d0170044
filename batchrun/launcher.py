"""The one launcher: a job and the caller's choices to finished runs. `batchrun run`, `batchrun.run`
/ `arun` and `batchrun bench` all start runs here; every run ends through execution/finish.py.

    LaunchOptions                what the caller chose: the command line's flags, the API's keywords
    resolve_job(job, options)    a JobSpec (from a path, a JobSpec or a dict) with the overrides
                                 applied; tickets= written into the run directory as its input
    launch(job, path, options)   decides the simulator or the live endpoint, one run per model of a
                                 compare job, online or batch mode (and --finish-online), the engine;
                                 preflight first, then (litellm loaded) the model names, prices and
                                 [params] per model; starts the simulator; returns the RunResult (a
                                 compare job's combined)
    preflight(...)               everything checkable without litellm, in one pass, each problem
                                 once (PreflightError): [params] typos, key variables, each run
                                 directory's lock, each input's fields; the prepared runs, locked
    dry_run(job, path, options, n)  `batchrun run --dry-run N`: the same checks (no lock taken, nothing
                                 written), N tickets' rendered messages and the plan's forecast
    run_online(...)              one online run: prepare_run -> execute_run (bench calls it per setting)
    run_batch(...)               one batch-mode run: prepare_run -> execute_batch_run
    batch_apis(job, targets, ...) the BatchAPI of each model key (Anthropic's or litellm's)
    cancel_run(run_dir, api_base) `batchrun cancel`: the parts of a batch-mode run directory (every
                                 model's, for a compare job) still running asked to cancel, through
                                 the provider access the run used (the simulator started again on
                                 the run's saved batches for a simulated run)

    sim_config(job)              the simulator's settings from [simulator]
    provider_targets(job, ...)   provider arguments per model key, keys read from the environment
    endpoint_label(targets, ...) what the manifest records as the endpoint
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, TypeVar
from urllib.parse import parse_qsl, urlsplit

import orjson

from batchrun.errors import (
    BatchrunError,
    ConfigurationError,
    JobSpecError,
    PreflightError,
    RunMismatchError,
    TicketError,
    redact_url,
)
from batchrun.execution.result import RunResult
from batchrun.job.sections import SimRule
from batchrun.job.spec import JobSpec
from batchrun.providers.param_checks import PARAMS_ON_PURPOSE, check_param_names, check_params, raw_param_typos
from batchrun.records import Fields

if TYPE_CHECKING:
    from batchrun.batch.ledger import Part
    from batchrun.execution.preparation import PreparedRun
    from batchrun.providers.online import ProviderArgs
    from batchrun.providers.seam import BatchAPI
    from batchrun.sim.config import SimConfig

if TYPE_CHECKING:
    from batchrun.execution.executors.process import WorkerPool
    from batchrun.execution.preparation import PreparedRun

__all__ = ["LaunchOptions", "batch_apis", "cancel_run", "dry_run", "endpoint_label", "launch", "preflight",
           "provider_targets", "resolve_job", "run_batch", "run_online", "sim_config"]

log = logging.getLogger("batchrun")

TICKETS_FILE = "tickets.jsonl"  # where tickets= are written inside the run directory
SIM_BATCHES_DIR = "simulator-batches"  # batch mode on the simulator: its batches outlive one process

Say = Callable[[str], None]
#: What a launch takes as its job: a path to a job file, a JobSpec, or a job file's content as a dict.
JobSource = JobSpec | Mapping[str, Any] | str | os.PathLike[str]
_Rule = TypeVar("_Rule")  # a simulator rule (FaultRule, TicketScript, BatchFault)


def _quiet(message: str) -> None:
    log.info("%s", message)


@dataclass(frozen=True)
class LaunchOptions:
    """The choices of one launch. None keeps what the job file says."""

    input: Path | None = None
    run_dir: Path | None = None
    limit: int | None = None
    concurrency: int | str | None = None
    model: str | None = None
    api_base: str | None = None
    live: bool = False  # the job's real model even when it has a [simulator] section
    workers: int | str | None = None
    engine: str | None = None  # "local" or "ray"
    ray_address: str | None = None  # implies engine "ray"
    mode: str | None = None  # "online" or "batch"
    cache: bool | None = None
    max_cost_usd: float | None = None
    service_tier: str | None = None  # "flex", "priority" or "default"
    skip_failed: bool = False
    retry_permanent: bool = False  # send again tickets whose failure was permanent (context window, ...)
    force: bool = False
    grace: float = 30.0
    no_wait: bool = False  # batch mode: submit and return (state "submitted")
    finish_online: bool = False  # batch mode: cancel and collect what runs, send the rest online
    progress: bool = False  # a progress bar on stderr
    progress_every: float | None = None  # without a bar: seconds between plain progress lines
    prompt: Callable[[dict[str, Any]], Any] | None = None  # the API's prompt=: ticket fields -> messages

    def job_overrides(self) -> dict[str, object]:
        """The options that change the job itself (JobSpec.with_overrides)."""
        engine = self.engine
        if self.ray_address and engine is None:
            engine = "ray"
        return {"input": self.input, "run_dir": self.run_dir, "concurrency": self.concurrency, "model": self.model,
                "api_base": self.api_base, "workers": self.workers, "cache": self.cache, "mode": self.mode,
                "engine": engine, "ray_address": self.ray_address, "service_tier": self.service_tier}


# -- the job ------------------------------------------------------------------------------------


def _load(job: JobSource) -> tuple[JobSpec | dict[str, Any], Path | None]:
    from batchrun.job.spec import load_job

    if isinstance(job, JobSpec):
        return job, None
    if isinstance(job, Mapping):
        return dict(job), None
    if isinstance(job, (str, os.PathLike)):
        try:
            return load_job(job), Path(job)
        except JobSpecError as exc:
            typos = raw_param_typos(Path(job))
            if not typos:
                raise
            raise JobSpecError(str(exc) + "\n" + "\n".join(typos) + PARAMS_ON_PURPOSE) from None
    raise TypeError(f"job must be a path to a job file, a JobSpec or a dict, not {type(job).__name__}")


def _validate_dict(data: Mapping[str, object]) -> JobSpec:
    from pydantic import ValidationError

    from batchrun.job.spec import describe_validation_error

    try:
        return JobSpec.model_validate(data, context={"base_dir": Path.cwd()})
    except ValidationError as exc:
        raise JobSpecError(describe_validation_error(exc, "job dict")) from None


def _write_tickets(tickets: Iterable[Fields], run_dir: Path, force: bool) -> Path:
    """Stream `tickets` into run_dir/tickets.jsonl (one line each, bounded memory). The same
    tickets again keep the file (and so resume); different ones are refused unless force."""
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / TICKETS_FILE
    partial = run_dir / (TICKETS_FILE + ".new")
    digest = hashlib.sha256()
    with partial.open("wb") as handle:
        for index, ticket in enumerate(tickets):
            if not isinstance(ticket, Mapping):
                partial.unlink()
                raise JobSpecError(f"tickets[{index}]: each ticket must be a dict, not {type(ticket).__name__}")
            line = orjson.dumps(dict(ticket), option=orjson.OPT_NON_STR_KEYS) + b"\n"
            digest.update(line)
            handle.write(line)
    if target.exists():
        old = hashlib.sha256()
        with target.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                old.update(block)
        if old.digest() == digest.digest():
            partial.unlink()
            return target
        if not force:
            partial.unlink()
            raise RunMismatchError(f"{run_dir} was started with other tickets ({target}); pass the same "
                                   "tickets to resume, another run_dir for a new run, or force=True")
    os.replace(partial, target)
    return target


def resolve_job(job: JobSource, options: LaunchOptions,
                tickets: Iterable[Fields] | None = None) -> tuple[JobSpec, Path | None]:
    """The JobSpec to run and the job file's path (None for a JobSpec or a dict): `job` as loaded,
    with `options`' overrides; `tickets` (an iterable of dicts) become the run's input; `options.prompt`
    (a callable) renders the messages in place of the templates (a dict job may then leave [prompt] out)."""
    loaded, job_path = _load(job)
    changes = options.job_overrides()
    if tickets is not None and changes["input"] is not None:
        raise TypeError("give tickets= or input=, not both")
    if isinstance(loaded, dict):
        data = {**loaded, **{k: v for k, v in changes.items() if v is not None}}
        if tickets is not None:
            data.setdefault("input", TICKETS_FILE)  # replaced below, once run_dir is known
        if options.prompt is not None:  # the callable renders the messages: no [prompt] needed
            data.setdefault("prompt", {"user": "{" + str(data.get("id_field") or "id") + "}"})
        spec = _validate_dict(data)
    else:
        if options.engine == "local" and loaded.ray_address is not None:  # local wins over the job's cluster
            loaded = loaded.model_copy(update={"ray_address": None})
        spec = loaded.with_overrides(**changes)
    if tickets is not None:
        spec = spec.with_overrides(input=_write_tickets(tickets, spec.resolved_run_dir(), options.force))
    if options.prompt is not None:
        spec = spec.with_prompt_function(options.prompt)
    return spec, job_path


# -- what a run talks to ------------------------------------------------------------------------


def sim_config(job: JobSpec, *, batches_of: Path | None = None) -> SimConfig:
    """The simulator's settings from a job's [simulator] section, its faults and ticket scripts
    (JobSpecError names a bad one). `batches_of`: the batch-mode run directory whose saved batches
    (SIM_BATCHES_DIR) the simulator keeps, so they outlive one simulator process."""
    from batchrun.sim.batch_faults import BatchFault
    from batchrun.sim.config import SimConfig
    from batchrun.sim.faults import FaultRule, TicketScript

    spec = job.simulator
    assert spec is not None, "a job without [simulator]"

    def parsed(name: str, rules: list[SimRule], parse: Callable[[SimRule], _Rule]) -> list[_Rule]:
        out = []
        for index, rule in enumerate(rules):
            try:
                out.append(parse(rule))
            except (TypeError, ValueError) as exc:
                raise JobSpecError(f"invalid job: field `simulator.{name}[{index}]`: {exc}") from None
        return out

    return SimConfig(latency_ms=spec.latency_ms, per_token_ms=spec.per_token_ms, jitter=spec.jitter,
                     seed=spec.seed, rpm=spec.rpm, tpm=spec.tpm, capacity=spec.capacity,
                     overload_ms=spec.overload_ms, faults=tuple(parsed("faults", spec.faults, FaultRule.from_mapping)),
                     scripts=tuple(parsed("scripts", spec.scripts, TicketScript.from_mapping)),
                     model_profiles=tuple((name, p.noise, spec.latency_ms if p.latency_ms is None else p.latency_ms)
                                          for name, p in spec.model_profiles.items()),
                     batch_time_scale=spec.batch_time_scale, batch_duration_s=spec.batch_duration_s,
                     batch_faults=tuple(parsed("batch_faults", spec.batch_faults, BatchFault.from_mapping)),
                     prompt_token_scale=spec.prompt_token_scale, flex_unavailable_rate=spec.flex_unavailable_rate,
                     batch_state_dir=None if batches_of is None else str((batches_of / SIM_BATCHES_DIR).resolve()))


def _key(env_name: str | None, use_sim: bool, secrets: list[str], missing: list[str]) -> str | None:
    """The API key from the variable a job (or a [[models]] entry) names; never the key in a file.
    A variable that is not set is appended to `missing`."""
    if use_sim:
        return "sim-key"
    if not env_name:
        return None
    key = os.environ.get(env_name)
    if not key:
        if env_name not in missing:
            missing.append(env_name)
        return None
    secrets.append(key)
    return key


def provider_targets(job: JobSpec, use_sim: bool, secrets: list[str]) -> dict[str, ProviderArgs]:
    """Provider kwargs per model key ("" for a single-model job; [[models]] names for a routed one),
    with the simulator's URL left as None to fill in; keys come from the environment now
    (and are appended to `secrets`, for redaction)."""
    from batchrun.sim.config import simulated_model

    entries = [(entry.name, entry) for entry in job.models] if job.routes else [("", None)]
    targets: dict[str, ProviderArgs] = {}
    missing: list[str] = []
    for key, entry in entries:
        model = entry.model if entry else job.model
        api_base = (entry.api_base if entry and entry.api_base else job.api_base)
        if api_base and not use_sim:  # a key passed in the URL's query string is a secret too
            secrets.extend(value for _, value in parse_qsl(urlsplit(api_base).query) if len(value) >= 4)
        prices = entry.prices if entry and entry.prices else job.prices
        cache = job.cache_settings()  # None when the job has no cache
        targets[key] = {
            "model": simulated_model(model) if use_sim else model,
            "api_base": None if use_sim else api_base,
            "api_key": _key(entry.api_key_env if entry and entry.api_key_env else job.api_key_env, use_sim, secrets,
                            missing),
            "params": {**job.params, **(entry.params if entry else {})},
            "prices": prices.model_dump() if prices else None,
            "max_connections": job.max_in_flight,
            # the embedded simulator listens on a new port each run: its answers are keyed by its name
            "cache": {**cache, "endpoint": "simulator"} if use_sim and cache is not None else cache,
            # what a request costs (docs/job-file.md, "Service tiers and prompt caching")
            "service_tier": job.service_tier,
            "fallback_tier": "default" if job.service_tier == "flex" and job.flex_fallback_after else None,
            "prompt_cache": job.prompt_cache,
            "cache_prefix": job.prompt.shared_prefix,
            "prompt_cache_key": job.prompt_cache_key() if job.prompt_cache else None,
            # a simulated run is priced as the named model (litellm does not map openai/claude-...)
            "price_model": model if use_sim else None,
        }
    if missing:
        names = " and ".join(missing)
        raise ConfigurationError(f"environment variable {names} {'is' if len(missing) == 1 else 'are'} not set "
                                 f"(the job's api_key_env names {'it' if len(missing) == 1 else 'them'}); "
                                 "nothing was sent")
    return targets


def budget_notes(providers: Mapping[str, object]) -> list[str]:
    """What a person should know about a budget's reservations: a model without max_tokens is
    reserved its largest answer per request in flight (docs/reliability.md, "Budget")."""
    notes = []
    for provider in providers.values():
        limit = getattr(provider, "max_output_tokens", None)
        if limit is None:
            continue
        tokens, source = limit()
        if source != "max_tokens":
            where = (f"{getattr(provider, 'model', 'the model')}'s largest answer in litellm's map" if source == "model"
                     else "an assumed largest answer (litellm does not know the model's)")
            notes.append(f"max_cost_usd: [params] max_tokens is not set, so each request in flight reserves "
                         f"{where}, {tokens:,} output tokens: set max_tokens (the most an answer needs) to let "
                         "more of the budget be used at once and the last tickets fit")
    return notes


def endpoint_label(targets: Mapping[str, ProviderArgs], use_sim: bool) -> str:
    """"simulator", or the redacted api_base(s), or "provider default"."""
    if use_sim:
        return "simulator"
    bases = sorted({redact_url(t["api_base"]) if t["api_base"] else "provider default" for t in targets.values()})
    return ", ".join(bases)


def _endpoint_of(job: JobSpec, use_sim: bool) -> str:
    """endpoint_label of the job's targets, from the job alone (no key needed)."""
    if use_sim:
        return "simulator"
    entries = job.models if job.routes else []
    bases = [(entry.api_base or job.api_base) for entry in entries] or [job.api_base]
    return ", ".join(sorted({redact_url(base) if base else "provider default" for base in bases}))


def _totals(run_dir: Path, asked: int, input_tickets: int) -> dict[str, int]:
    """Counts of the whole run directory: what the input holds, what this run was asked to
    consider (after limit), and done / failed / remaining of the input."""
    from batchrun.rundir.layout import ERRORS, RESULTS
    from batchrun.rundir.lines import scan_jsonl

    done_ids = scan_jsonl(run_dir / RESULTS, totals=False).ids
    failed = len(scan_jsonl(run_dir / ERRORS, totals=False).ids - done_ids)
    done = len(done_ids)
    return {"input_tickets": input_tickets, "asked": asked, "done": done, "failed": failed,
            "remaining": max(input_tickets - done - failed, 0)}


def _without_unreadable_cache(job: JobSpec, say: Say) -> JobSpec:
    """The job, or the job with `cache` off when its disk cache cannot be read (a damaged store):
    one line says so; the run goes on without reusing or storing answers (providers/cache.py)."""
    if not job.cache:
        return job
    from batchrun.providers.cache import unreadable_cache

    problem = unreadable_cache(job.cache_settings())
    if problem is None:
        return job
    say(f"warning: {problem}; this run goes on without it (answers are neither reused nor stored)")
    return job.with_overrides(cache=False)


def _fit_file_limit(prep: PreparedRun, workers: int, say: Say) -> PreparedRun:
    """The prepared run with its concurrency lowered to what the file-descriptor limit allows
    (execution/file_limits.py), saying so in one line; unchanged when it fits (the soft limit
    raised where needed)."""
    from batchrun.execution.file_limits import fit_concurrency

    job = prep.job
    asked = job.max_in_flight
    processes = max(workers, 1)
    fit = fit_concurrency(-(-asked // processes))
    if not fit.lowered:
        return prep
    say(f"warning: {fit.describe(asked, processes)}")
    return dataclasses.replace(prep, job=job.with_overrides(concurrency=fit.in_flight * processes))


def _nothing_to_do(prep: PreparedRun) -> RunResult:
    from batchrun.analysis.stats import RunStats

    stats = RunStats(tickets_total=prep.tickets_total, already_done=prep.already_done,
                     skipped_failed=prep.skipped_failed, skipped_permanent=prep.skipped_permanent)
    stats.finished = stats.started
    return RunResult(state="done", exit_code=0, summary=stats.summary(), nothing_to_do=True)


# -- one run ----------------------------------------------------------------------------------


def _prepare(job: JobSpec, job_path: Path | None, endpoint: str, options: LaunchOptions) -> PreparedRun:
    from batchrun.execution.preparation import prepare_run

    return prepare_run(job, job_path=job_path, endpoint=endpoint, limit=options.limit,
                       skip_failed=options.skip_failed, force=options.force, max_cost_usd=options.max_cost_usd,
                       retry_permanent=options.retry_permanent)


async def run_online(job: JobSpec, job_path: Path | None, targets: dict[str, ProviderArgs], sim_url: str | None,
                     options: LaunchOptions, *, say: Say = _quiet, before_execute: Callable[[], None] | None = None,
                     worker_pool: WorkerPool | None = None, prep: PreparedRun | None = None) -> RunResult:
    """Prepare (unless `prep`, already prepared by `preflight`, is given) and execute one online run
    of a single-model (or routed) job; `say` gets the lines a person should see on stderr (notes, the
    header). The RunResult has run_dir, run_number and totals set; a run with nothing to do returns
    state "done" at once. The prepared run is released at the end either way."""
    from batchrun.execution.engine import coordinator_needs_provider, execute_run
    from batchrun.providers.online import build_providers

    use_sim = sim_url is not None
    endpoint = endpoint_label(targets, use_sim)
    prep = prep if prep is not None else _prepare(job, job_path, endpoint, options)
    try:
        for note in prep.notes:
            say(note)
        if prep.to_do == 0:
            result = _nothing_to_do(prep)
        else:
            models = _models_as_given(job)
            on_ray = job.engine == "ray"
            # Ray: `workers` actors, 0 = one per CPU the cluster offers (known once it is joined)
            workers = (job.workers if isinstance(job.workers, int) else 0) if on_ray else job.worker_count(prep.to_do)
            if not on_ray:  # file descriptors for the requests in flight here (worker processes inherit it)
                prep = _fit_file_limit(prep, workers, say)
                job = prep.job
            say(f"{job.name}: {prep.to_do:,} to do, {prep.already_done:,} already done, "
                f"model {models} via {endpoint}, concurrency {job.concurrency}, run {prep.run_number} "
                f"in {prep.run_dir}")
            provider_kwargs: dict[str, ProviderArgs] = {
                key: {**kwargs, "api_base": sim_url if use_sim else kwargs["api_base"]}
                               for key, kwargs in targets.items()}
            providers = None
            if coordinator_needs_provider(job, workers, prep.max_cost_usd):
                if "litellm" not in sys.modules:
                    say("loading litellm...")
                providers = build_providers(provider_kwargs)
                if prep.max_cost_usd is not None:
                    for note in budget_notes(providers):
                        say(note)
            if on_ray:
                say(f"Ray at {job.ray_address or 'a local instance started for the run'}, "
                    f"{workers or 'one per cluster CPU'} actor(s)")
            elif workers > 1 and worker_pool is None:
                say(f"starting {workers} worker processes (each loads litellm)...")
            if before_execute is not None:
                before_execute()
            result = await execute_run(prep, providers, grace_s=options.grace, progress=options.progress,
                                       workers=workers, provider_kwargs=provider_kwargs, worker_pool=worker_pool,
                                       progress_every=options.progress_every, engine=job.engine,
                                       ray_address=job.ray_address)
        result.run_dir = prep.run_dir
        result.run_number = prep.run_number
        result.totals = _totals(prep.run_dir, prep.tickets_total, prep.scan.tickets)
        return result
    finally:
        prep.release()


async def run_batch(job: JobSpec, job_path: Path | None, targets: dict[str, ProviderArgs], sim_url: str | None,
                    time_scale: float, options: LaunchOptions, *, say: Say = _quiet,
                    prep: PreparedRun | None = None) -> RunResult:
    """Prepare and execute one batch-mode run (docs/batch.md): one BatchAPI per model key
    (providers.batch_api.build_batch_api: Anthropic's Message Batches for an Anthropic model,
    litellm's batch functions for the others, refused where there are none), then
    batch/run.execute_batch_run. With `finish_online`, parts still running are cancelled and
    collected, nothing new is submitted. `prep`: the run preflight prepared (its lock held)."""
    from batchrun.batch.ledger import ledger_summary
    from batchrun.batch.run import execute_batch_run

    use_sim = sim_url is not None
    endpoint = endpoint_label(targets, use_sim)
    try:
        apis = batch_apis(job, targets, sim_url)
    except BaseException:
        if prep is not None:
            prep.release()
        raise
    params = {key: kwargs["params"] for key, kwargs in targets.items()}
    prep = prep if prep is not None else _prepare(job, job_path, endpoint, options)
    try:
        for note in prep.notes:
            say(note)
        ledger = ledger_summary(prep.run_dir)
        live = ledger["live"] if ledger else 0
        if prep.to_do == 0 and not live:
            result = RunResult(state="done", exit_code=0, summary={"done": 0, "failed": 0,
                               "already_done": prep.already_done, "tickets_total": prep.tickets_total},
                               nothing_to_do=True)
        else:
            models = _models_as_given(job)
            say(f"{job.name}: batch mode, {prep.to_do:,} to do ({live} part(s) already submitted), "
                f"model {models} via {endpoint}, run {prep.run_number} in {prep.run_dir}")
            result = await execute_batch_run(prep, apis, params, no_wait=options.no_wait,
                                             stop_submitting=options.finish_online, time_scale=time_scale,
                                             progress=options.progress)
        result.run_dir, result.run_number = prep.run_dir, prep.run_number
        result.totals = _totals(prep.run_dir, prep.tickets_total, prep.scan.tickets)
        return result
    finally:
        prep.release()


def batch_apis(job: JobSpec, targets: Mapping[str, ProviderArgs], sim_url: str | None) -> dict[str, BatchAPI]:
    """The BatchAPI of each model key of `job` (run_batch, `batchrun cancel`): for the model the job
    names (the targets carry the simulator's name of it), on the simulator at `sim_url` if given."""
    from batchrun.job.sections import PricesSpec
    from batchrun.providers.batch_api import build_batch_api

    models = {entry.name: entry.model for entry in job.models} if job.routes else {"": job.model}
    return {key: build_batch_api(models[key], api_base=sim_url or kwargs["api_base"], api_key=kwargs["api_key"],
                                 timeout_s=max(job.timeout_s, 300.0), simulator=sim_url is not None,
                                 prices=PricesSpec.model_validate(kwargs["prices"]) if kwargs["prices"] else None,
                                 prompt_cache=job.prompt_cache, cache_prefix=job.prompt.shared_prefix)
            for key, kwargs in targets.items()}


# -- a launch ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _simulator(job: JobSpec, use_sim: bool, say: Say) -> Iterator[str | None]:
    """The embedded simulator for the launch (its URL), or None for a live endpoint."""
    if not use_sim:
        yield None
        return
    from batchrun.sim.process import start_simulator

    # batches outlive this simulator: --no-wait, then collect
    config = sim_config(job, batches_of=job.resolved_run_dir() if job.mode == "batch" else None)
    with start_simulator(config) as sim:
        say(f"simulator listening on {urlsplit(sim.base_url).netloc}")
        yield sim.base_url


def runs_of(job: JobSpec) -> list[JobSpec]:
    """The runs of a job: one per [[models]] entry of a compare job, else the job itself."""
    return [job.for_model(entry) for entry in job.models] if job.compare_mode else [job]


def dry_run(job: JobSpec, job_path: Path | None, options: LaunchOptions, count: int) -> dict[str, Any]:
    """What `batchrun run JOB --dry-run N` shows, sending nothing and writing nothing: the checks a
    run makes before its first request (a missing key variable is a note here, not an error), the
    first `count` tickets it would send with their rendered messages, and the plan's forecast
    (analysis/plan.make_plan: tickets, tokens, cost, duration)."""
    from batchrun.analysis.plan import make_plan
    from batchrun.job.templates import render_messages
    from batchrun.job.tickets import read_tickets, scan_input
    from batchrun.providers.litellm_setup import check_models
    from batchrun.rundir.lines import load_failed_kinds, permanent_failures, scan_jsonl
    from batchrun.rundir.manifest import fail_fast_runs, read_manifest

    use_sim = job.simulator is not None and not options.live and options.api_base is None
    notes: list[str] = []
    check_param_names(job, job_path)
    try:
        for each in runs_of(job):
            provider_targets(each, use_sim, [])
    except ConfigurationError as exc:
        notes.append(f"{str(exc).removesuffix('; nothing was sent')}: a run would stop here")
    first = runs_of(job)[0]
    run_dir = first.resolved_run_dir()
    done = scan_jsonl(run_dir / "results.jsonl", totals=False).ids
    kinds = load_failed_kinds(run_dir, done)
    templates = first.prompt_templates
    scan = scan_input(first.input, first.id_field, templates, max_line_bytes=first.max_line_bytes,
                      done_ids=done, failed_ids=set(kinds) if options.skip_failed else frozenset(),
                      permanent_ids=frozenset() if options.retry_permanent else
                      permanent_failures(kinds, fail_fast_runs(read_manifest(run_dir))),
                      limit=options.limit, input_format=first.input_format)
    if scan.file_problems or (scan.problem_count and first.on_bad_input == "fail"):
        raise TicketError(scan.describe_problems())
    shown = []
    if count:
        for ticket in read_tickets(first.input, first.id_field, only_lines=scan.dispatch,
                                   max_line_bytes=first.max_line_bytes, input_format=first.input_format):
            shown.append({"id": ticket.id, "line": ticket.line, "messages": render_messages(first, ticket)})
            if len(shown) >= count:
                break
    notes += check_models(job, options.api_base)
    from batchrun.providers.litellm_setup import check_service_tier

    check_service_tier(job)  # as a run would
    plan = make_plan(job, job_path=job_path, limit=options.limit, skip_failed=options.skip_failed,
                     max_cost_usd=options.max_cost_usd, live=not use_sim, retry_permanent=options.retry_permanent)
    return {"job": job.name, "simulated": use_sim, "tickets": shown, "notes": notes, "plan": plan}


def _models_as_given(job: JobSpec) -> str:
    """The model string(s) of a run exactly as the job (or --model) gave them, for the header."""
    return ", ".join(entry.model for entry in job.models) if job.routes else job.model


def preflight(job: JobSpec, jobs: list[JobSpec], job_path: Path | None, options: LaunchOptions, use_sim: bool,
              secrets: list[str]) -> tuple[dict[str, dict[str, ProviderArgs]], dict[str, PreparedRun]]:
    """Everything checkable before litellm loads, in one pass (docs/reliability.md, "Checked before
    anything is sent"): [params] typos, the key variables, and for each run its directory (lock,
    resume match) and its input (every bad line; a field the prompt uses that the file lacks, once).
    Every problem is reported once, together (PreflightError, or the one problem's own error).
    Returns the provider targets and the prepared runs, their run directories locked."""
    problems: list[BatchrunError] = []

    def add(problem: BatchrunError) -> None:
        if all(str(problem) != str(seen) for seen in problems):
            problems.append(problem)

    try:
        check_param_names(job, job_path)
    except JobSpecError as exc:
        add(exc)
    targets: dict[str, dict[str, ProviderArgs]] = {}
    for each in jobs:
        try:
            targets[each.name] = provider_targets(each, use_sim, secrets)
        except ConfigurationError as exc:
            add(exc)
    preps: dict[str, PreparedRun] = {}
    for each in jobs:
        try:
            preps[each.name] = _prepare(each, job_path, _endpoint_of(each, use_sim), options)
        except BatchrunError as exc:
            add(exc)
    for name, prep in preps.items():  # a prompt callable: its answer for the first ticket to send
        if prep.job.prompt_function is not None and prep.to_do:
            try:
                _first_messages(prep)
            except Exception as exc:
                add(exc if isinstance(exc, BatchrunError) else JobSpecError(
                    f"the prompt callable raised {type(exc).__name__} on the first ticket: {exc}"))
    if problems:
        for prep in preps.values():
            prep.release()
        raise problems[0] if len(problems) == 1 else PreflightError(problems)
    return targets, preps


def _first_messages(prep: PreparedRun) -> list[dict[str, str]]:
    from batchrun.job.templates import render_messages
    from batchrun.job.tickets import read_tickets

    job = prep.job
    for ticket in read_tickets(job.input, job.id_field, only_lines=prep.scan.dispatch,
                               max_line_bytes=job.max_line_bytes, input_format=job.input_format):
        return render_messages(job, ticket)
    return []


async def launch(job: JobSpec, job_path: Path | None, options: LaunchOptions, *, say: Say = _quiet,
                 secrets: list[str] | None = None, before_execute: Callable[[], None] | None = None,
                 after_run: Callable[[JobSpec, RunResult, str], None] | None = None) -> RunResult:
    """Every run of `job` (module docstring): the RunResult, a compare job's combined over its models.

    Everything checkable is checked before anything is sent: first what needs no litellm
    (`preflight`: answered in about a second), then, litellm loaded, the model strings (routable,
    priced) and [params] per model, before the simulator starts. `secrets` collects the keys read,
    for the caller's redaction; `before_execute` runs just before the first request of each online
    run (routing litellm's logs); `after_run(job, result, mode)` after each run, mode "online" or
    "batch" (the command line prints its summary there)."""
    if (options.no_wait or options.finish_online) and job.mode != "batch":
        raise JobSpecError("--no-wait and --finish-online are for batch mode (mode = \"batch\" or --mode batch)")
    secrets = secrets if secrets is not None else []
    from batchrun.rundir.layout import require_free_space

    require_free_space(job.resolved_run_dir())  # a full disk: one line, before litellm loads
    use_sim = job.simulator is not None and not options.live and options.api_base is None
    job = _without_unreadable_cache(job, say)  # a damaged disk cache: off, said once (a cache job only)
    jobs = runs_of(job)
    targets, preps = preflight(job, jobs, job_path, options, use_sim, secrets)
    try:
        if "litellm" not in sys.modules:
            say("loading litellm...")
        from batchrun.providers.litellm_setup import check_models

        for note in check_models(job, options.api_base):  # every run, simulated or live
            say(note)
        check_params(job)
        from batchrun.providers.litellm_setup import check_service_tier

        check_service_tier(job)
        results: dict[str, RunResult] = {}
        with _simulator(job, use_sim, say) as sim_url:
            for each in jobs:
                prep = preps.pop(each.name)
                if job.mode == "batch":
                    scale = job.simulator.batch_time_scale if use_sim and job.simulator is not None else 1.0
                    result = await run_batch(each, job_path, targets[each.name], sim_url, scale, options, say=say,
                                             prep=prep)
                    if after_run is not None:
                        after_run(each, result, "batch")
                    if options.finish_online and result.state == "done" and not result.nothing_to_do:
                        say("--finish-online: sending the tickets left online")
                        result = await run_online(each, job_path, targets[each.name], sim_url,
                                                  dataclasses.replace(options, finish_online=False), say=say,
                                                  before_execute=before_execute)
                        if after_run is not None:
                            after_run(each, result, "online")
                else:
                    result = await run_online(each, job_path, targets[each.name], sim_url, options, say=say,
                                              before_execute=before_execute, prep=prep)
                    if after_run is not None:
                        after_run(each, result, "online")
                results[each.name] = result
    finally:
        for prep in preps.values():
            prep.release()
    if not job.compare_mode:
        return results[job.name]
    return RunResult.combined({entry.name: results[each.name] for entry, each in zip(job.models, jobs)},
                              job.resolved_run_dir())


def cancel_run(run_dir: Path, api_base: str | None, secrets: list[str]) -> list[tuple[Path, Part]]:
    """Ask the provider to cancel every part of `run_dir` still running (batch/cancel.py keeps what
    they answered); the (directory, part) asked. Keys read from the environment go into `secrets`."""
    import anyio

    from batchrun.batch.cancel import cancel_batches
    from batchrun.batch.ledger import LEDGER
    from batchrun.job.spec import load_job
    from batchrun.rundir.manifest import read_manifest

    dirs = [d for d in [run_dir, *sorted((run_dir / "models").glob("*"))] if (d / LEDGER).exists()]
    if not dirs:
        raise ConfigurationError(f"{run_dir}: no {LEDGER}: not a batch-mode run directory")
    manifest = read_manifest(dirs[0]) or {}
    job_path = (manifest.get("job") or {}).get("path")
    if not job_path:
        raise ConfigurationError(f"{dirs[0]}: the manifest does not name its job file")
    job = load_job(job_path)
    use_sim = manifest.get("endpoint") == "simulator" and api_base is None
    if api_base:
        job = job.with_overrides(api_base=api_base)
    asked: list[tuple[Path, Part]] = []
    with contextlib.ExitStack() as stack:
        sim_url = None
        if use_sim:
            from batchrun.sim.process import start_simulator

            sim_url = stack.enter_context(start_simulator(sim_config(job, batches_of=run_dir))).base_url
        for each_dir in dirs:
            each = job
            if each_dir.parent.name == "models" and job.compare_mode:
                each = job.for_model(job.model_entry(each_dir.name))
            apis = batch_apis(each, provider_targets(each, use_sim, secrets), sim_url)
            asked += [(each_dir, part) for part in anyio.run(cancel_batches, each_dir, apis)]
    return asked
