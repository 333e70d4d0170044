"""The Python API, and the one path from a job to a finished run (`batchrun run` takes it too).

For scripts::

    import batchrun
    result = batchrun.run("jobs/classify_tickets.toml", limit=50)
    print(result.state, result.done, result.failed, result.cost_usd)
    for line in result.iter_results():
        print(line["id"], line["output"])

and where an event loop already runs (Jupyter)::

    result = await batchrun.arun("jobs/classify_tickets.toml", limit=50)

`job` is a path to a job file, a `JobSpec`, or a dict in the job file's shape
(relative paths in a dict are taken from the current directory). The keyword
overrides are the command line's: `input`, `run_dir`, `limit`, `concurrency`,
`model`, `api_base`, `live`, `skip_failed`, `force`, `workers`, `max_cost_usd`,
`grace`, `progress`. `tickets=` takes an iterable of dicts in place of an input
file: they are streamed into `<run_dir>/tickets.jsonl`, which becomes the
run's input, so the run directory checkpoints and resumes them like any
input (passing the same tickets again resumes; different ones are refused
unless `force=True`).

The same rules as the command line hold: a job with a [simulator] section
runs against the embedded simulator unless `live=True` or `api_base` is
given; ids already in results.jsonl are never requested again; keys come
from the environment variable the job names. Errors raise `BatchrunError`
(its `exit_code` is the CLI's). The result is an `engine.RunResult`: state,
exit code, this run's summary, `totals` of the whole run directory, paths,
and `iter_results()` / `iter_errors()` streaming the checkpoint files.

Layout of this module (the CLI uses the same pieces):
    sim_config(job)               the simulator's settings from [simulator]
    provider_targets(job, ...)    provider kwargs per model key, keys from the environment
    check_params(job)             [params] keys against what litellm lists for the model
    endpoint_label(targets, ...)  what the manifest records as the endpoint
    run_job(job, ...)             prepare + execute one (single-model) job
    run_batch_job(job, ...)       the same for batch mode (the provider's Batch API)
    run / arun                    the public functions
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qsl, urlsplit

import orjson

from batchrun.errors import ConfigurationError, JobSpecError, RunMismatchError, redact_url

__all__ = ["arun", "check_params", "endpoint_label", "provider_targets", "run", "run_job", "sim_config"]

log = logging.getLogger("batchrun")

TICKETS_FILE = "tickets.jsonl"  # where tickets= are written inside the run directory

_OVERRIDES = ("input", "run_dir", "concurrency", "model", "api_base", "workers")


def sim_config(job: Any) -> Any:
    """The simulator's settings from a job's [simulator] section, its faults and ticket scripts
    (JobSpecError names a bad one)."""
    from batchrun.sim.config import SimConfig
    from batchrun.sim.faults import FaultRule, TicketScript

    spec = job.simulator
    faults = []
    for index, rule in enumerate(spec.faults):
        try:
            faults.append(FaultRule.from_mapping(rule))
        except ValueError as exc:
            raise JobSpecError(f"invalid job: field `simulator.faults[{index}]`: {exc}") from None
    scripts = []
    for index, script in enumerate(spec.scripts):
        try:
            scripts.append(TicketScript.from_mapping(script))
        except ValueError as exc:
            raise JobSpecError(f"invalid job: field `simulator.scripts[{index}]`: {exc}") from None
    return SimConfig(latency_ms=spec.latency_ms, per_token_ms=spec.per_token_ms, jitter=spec.jitter,
                     seed=spec.seed, rpm=spec.rpm, tpm=spec.tpm, capacity=spec.capacity,
                     overload_ms=spec.overload_ms, faults=tuple(faults), scripts=tuple(scripts),
                     model_profiles=tuple((name, p.noise, spec.latency_ms if p.latency_ms is None else p.latency_ms)
                                          for name, p in spec.model_profiles.items()),
                     batch_time_scale=spec.batch_time_scale, batch_duration_s=spec.batch_duration_s,
                     batch_faults=tuple(_batch_faults(spec.batch_faults)))


def _batch_faults(rules: list[dict[str, Any]]) -> list[Any]:
    """[[simulator.batch_faults]] as the simulator's rules (JobSpecError names a bad one)."""
    from batchrun.sim.batch_faults import BatchFault

    out = []
    for index, rule in enumerate(rules):
        try:
            out.append(BatchFault.from_mapping(rule))
        except (TypeError, ValueError) as exc:
            raise JobSpecError(f"invalid job: field `simulator.batch_faults[{index}]`: {exc}") from None
    return out


def _key(env_name: str | None, use_sim: bool, secrets: list[str]) -> str | None:
    """The API key from the variable a job (or a [[models]] entry) names; never the key in a file."""
    if use_sim:
        return "sim-key"
    if not env_name:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise ConfigurationError(f"environment variable {env_name} is not set (the job's api_key_env "
                                 "names it); nothing was sent")
    secrets.append(key)
    return key


def provider_targets(job: Any, use_sim: bool, secrets: list[str]) -> dict[str, dict[str, Any]]:
    """Provider kwargs per model key ("" for a single-model job; [[models]] names for a routed one),
    with the simulator's URL left as None to fill in; keys come from the environment now
    (and are appended to `secrets`, for redaction)."""
    from batchrun.sim.config import simulated_model

    entries = [(entry.name, entry) for entry in job.models] if job.routes else [("", None)]
    targets: dict[str, dict[str, Any]] = {}
    for key, entry in entries:
        model = entry.model if entry else job.model
        api_base = (entry.api_base if entry and entry.api_base else job.api_base)
        if api_base and not use_sim:  # a key passed in the URL's query string is a secret too
            secrets.extend(value for _, value in parse_qsl(urlsplit(api_base).query) if len(value) >= 4)
        prices = entry.prices if entry and entry.prices else job.prices
        targets[key] = {
            "model": simulated_model(model) if use_sim else model,
            "api_base": None if use_sim else api_base,
            "api_key": _key(entry.api_key_env if entry and entry.api_key_env else job.api_key_env, use_sim, secrets),
            "params": {**job.params, **(entry.params if entry else {})},
            "prices": prices.model_dump() if prices else None,
            "max_connections": job.max_in_flight,
            # the embedded simulator listens on a new port each run: its answers are keyed by its name
            "cache": ({**job.cache_settings(), "endpoint": "simulator"} if use_sim and job.cache
                      else job.cache_settings()),
        }
    return targets


def check_params(job: Any) -> None:
    """Raise JobSpecError for a [params] key (the job's, or a [[models]] entry's) that litellm does
    not list for the model and that is not in `unchecked_params`: "did you mean temperature?".
    Imports litellm (through provider.py)."""
    from batchrun.providers.litellm_setup import unknown_params

    entries = [(f"models[{e.name}].params", e.model, {**job.params, **e.params}) for e in job.models] \
        or [("params", job.model, job.params)]
    problems = []
    for where, model, params in entries:
        unknown = unknown_params(model, {k: v for k, v in params.items() if k not in job.unchecked_params})
        for key, guess in (unknown or {}).items():
            problems.append(f"  field `{where}.{key}`: litellm knows no such parameter for {model}"
                            + (f": did you mean `{guess}`?" if guess else ""))
    if problems:
        names = ", ".join(f'"{n}"' for n in sorted({line.split("`")[1].rsplit(".", 1)[1] for line in problems}))
        raise JobSpecError("invalid job:\n" + "\n".join(problems) + "\n  (keys you send on purpose: add "
                           f"`unchecked_params = [{names}]` at the top of the job file); nothing was sent")


def endpoint_label(targets: Mapping[str, Mapping[str, Any]], use_sim: bool) -> str:
    """"simulator", or the redacted api_base(s), or "provider default"."""
    if use_sim:
        return "simulator"
    bases = sorted({redact_url(t["api_base"]) if t["api_base"] else "provider default" for t in targets.values()})
    return ", ".join(bases)


def _quiet(message: str) -> None:
    log.info("%s", message)


async def run_job(job: Any, job_path: Path | None, targets: dict[str, dict[str, Any]], sim_url: str | None, *,
                  limit: int | None = None, skip_failed: bool = False, force: bool = False, grace: float = 30.0,
                  progress: bool = False, progress_every: float | None = None, max_cost_usd: float | None = None,
                  say: Callable[[str], None] = _quiet, before_execute: Callable[[], None] | None = None) -> Any:
    """Prepare and execute one single-model (or routed) job; `say` gets the lines a person
    should see on stderr (notes, the header). Returns an engine.RunResult with run_dir,
    run_number and totals set; a run with nothing to do returns state "done" at once."""
    from batchrun.execution.result import RunResult
    from batchrun.providers.online import build_providers
    from batchrun.execution.engine import coordinator_needs_provider, execute_run
    from batchrun.execution.preparation import prepare_run
    from batchrun.analysis.stats import RunStats

    use_sim = sim_url is not None
    endpoint = endpoint_label(targets, use_sim)
    prep = prepare_run(job, job_path=job_path, endpoint=endpoint, limit=limit,
                       skip_failed=skip_failed, force=force, max_cost_usd=max_cost_usd)
    try:
        for note in prep.notes:
            say(note)
        if prep.to_do == 0:
            stats = RunStats(tickets_total=prep.tickets_total, already_done=prep.already_done,
                             skipped_failed=prep.skipped_failed)
            stats.finished = stats.started
            result = RunResult(state="done", exit_code=0, summary=stats.summary(), nothing_to_do=True)
        else:
            models = ", ".join(t["model"] for t in targets.values())
            say(f"{job.name}: {prep.to_do:,} to do, {prep.already_done:,} already done, "
                f"model {models} via {endpoint}, concurrency {job.concurrency}, run {prep.run_number} "
                f"in {prep.run_dir}")
            on_ray = job.engine == "ray"
            # Ray: `workers` actors, 0 = one per CPU the cluster offers (known once it is joined)
            workers = (job.workers if isinstance(job.workers, int) else 0) if on_ray else job.worker_count(prep.to_do)
            provider_kwargs = {key: {**kwargs, "api_base": sim_url if use_sim else kwargs["api_base"]}
                               for key, kwargs in targets.items()}
            providers = None
            if coordinator_needs_provider(job, workers, prep.max_cost_usd):
                if "litellm" not in sys.modules:
                    say("loading litellm...")
                providers = build_providers(provider_kwargs)
            if on_ray:
                say(f"Ray at {job.ray_address or 'a local instance started for the run'}, "
                    f"{workers or 'one per cluster CPU'} actor(s)")
            elif workers > 1:
                say(f"starting {workers} worker processes (each loads litellm)...")
            if before_execute is not None:
                before_execute()
            result = await execute_run(prep, providers, grace_s=grace, progress=progress, workers=workers,
                                       provider_kwargs=provider_kwargs, progress_every=progress_every,
                                       engine=job.engine, ray_address=job.ray_address)
        result.run_dir = prep.run_dir
        result.run_number = prep.run_number
        result.totals = _totals(prep.run_dir, prep.tickets_total, prep.scan.tickets)
        return result
    finally:
        prep.release()



async def run_batch_job(job: Any, job_path: Path | None, targets: dict[str, dict[str, Any]], sim_url: str | None,
                        time_scale: float, *, limit: int | None = None, skip_failed: bool = False,
                        force: bool = False, max_cost_usd: float | None = None, no_wait: bool = False,
                        finish_online: bool = False, progress: bool = False,
                        say: Callable[[str], None] = _quiet) -> Any:
    """Prepare + execute a batch-mode job (docs/batch.md): one LiteLLMBatchAPI per model key
    (refused where litellm has no batch creation), then `batch_mode.execute_batch_run`.
    With `finish_online`, parts still running are cancelled and collected, nothing new is
    submitted; the caller sends the rest online."""
    from batchrun.batch.run import execute_batch_run
    from batchrun.batch.ledger import ledger_summary
    from batchrun.execution.result import RunResult
    from batchrun.execution.preparation import prepare_run
    from batchrun.errors import ConfigurationError
    from batchrun.providers.batch_api import BATCH_PROVIDERS, LiteLLMBatchAPI
    from batchrun.job.sections import PricesSpec

    use_sim = sim_url is not None
    endpoint = endpoint_label(targets, use_sim)
    apis = {}
    for key, kwargs in targets.items():
        prices = PricesSpec.model_validate(kwargs["prices"]) if kwargs["prices"] else None
        api = LiteLLMBatchAPI(model=kwargs["model"], api_base=sim_url if use_sim else kwargs["api_base"],
                              api_key=kwargs["api_key"], timeout_s=max(job.timeout_s, 300.0), prices=prices)
        if api.provider not in BATCH_PROVIDERS:
            raise ConfigurationError(
                f"{kwargs['model']}: litellm has no batch creation for provider {api.provider!r}; "
                f"batch mode needs one of {', '.join(sorted(BATCH_PROVIDERS))} (use --mode online)")
        apis[key] = api
    params = {key: kwargs["params"] for key, kwargs in targets.items()}
    prep = prepare_run(job, job_path=job_path, endpoint=endpoint, limit=limit, skip_failed=skip_failed,
                       force=force, max_cost_usd=max_cost_usd)
    try:
        for note in prep.notes:
            say(note)
        ledger = ledger_summary(prep.run_dir)
        live = ledger["live"] if ledger else 0
        if prep.to_do == 0 and not live:
            return RunResult(state="done", exit_code=0, summary={"done": 0, "failed": 0,
                             "already_done": prep.already_done, "tickets_total": prep.tickets_total},
                             run_dir=prep.run_dir, run_number=prep.run_number, nothing_to_do=True)
        models = ", ".join(t["model"] for t in targets.values())
        say(f"{job.name}: batch mode, {prep.to_do:,} to do ({live} part(s) already submitted), "
            f"model {models} via {endpoint}, run {prep.run_number} in {prep.run_dir}")
        result = await execute_batch_run(prep, apis, params, no_wait=no_wait, stop_submitting=finish_online,
                                         time_scale=time_scale, progress=progress)
        result.run_dir, result.run_number = prep.run_dir, prep.run_number
        return result
    finally:
        prep.release()

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


def _load(job: Any) -> tuple[Any, Path | None]:
    from batchrun.job.spec import JobSpec, load_job

    if isinstance(job, JobSpec):
        return job, None
    if isinstance(job, Mapping):
        return dict(job), None
    if isinstance(job, (str, os.PathLike)):
        return load_job(job), Path(job)
    raise TypeError(f"job must be a path to a job file, a JobSpec or a dict, not {type(job).__name__}")


def _validate_dict(data: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from batchrun.job.spec import JobSpec, describe_validation_error

    try:
        return JobSpec.model_validate(data, context={"base_dir": Path.cwd()})
    except ValidationError as exc:
        raise JobSpecError(describe_validation_error(exc, "job dict")) from None


def _write_tickets(tickets: Iterable[Mapping[str, Any]], run_dir: Path, force: bool) -> Path:
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


def _prepare_job(job: Any, overrides: dict[str, Any], tickets: Iterable[Mapping[str, Any]] | None,
                 force: bool) -> tuple[Any, Path | None]:
    loaded, job_path = _load(job)
    changes = {name: overrides.get(name) for name in _OVERRIDES}
    if tickets is not None and changes["input"] is not None:
        raise TypeError("give tickets= or input=, not both")
    if isinstance(loaded, dict):
        data = {**loaded, **{k: v for k, v in changes.items() if v is not None}}
        if tickets is not None:
            data.setdefault("input", TICKETS_FILE)  # replaced below, once run_dir is known
        spec = _validate_dict(data)
    else:
        spec = loaded.with_overrides(**changes)
    if tickets is not None:
        spec = spec.with_overrides(input=_write_tickets(tickets, spec.resolved_run_dir(), force))
    return spec, job_path


async def arun(job: Any, *, tickets: Iterable[Mapping[str, Any]] | None = None, input: str | Path | None = None,
               run_dir: str | Path | None = None, limit: int | None = None, concurrency: int | str | None = None,
               model: str | None = None, api_base: str | None = None, live: bool = False,
               skip_failed: bool = False, force: bool = False, workers: int | str | None = None,
               max_cost_usd: float | None = None, grace: float = 30.0, progress: bool = False) -> Any:
    """Run (or resume) `job` in the running event loop; see the module docstring."""
    import anyio

    from batchrun.execution.result import RunResult
    from batchrun.sim.process import start_simulator

    overrides = {"input": Path(input) if input is not None else None,
                 "run_dir": Path(run_dir) if run_dir is not None else None,
                 "concurrency": concurrency, "model": model, "api_base": api_base, "workers": workers}
    spec, job_path = _prepare_job(job, overrides, tickets, force)
    use_sim = spec.simulator is not None and not live and api_base is None
    jobs = [spec.for_model(entry) for entry in spec.models] if spec.compare_mode else [spec]
    secrets: list[str] = []
    targets = {each.name: provider_targets(each, use_sim, secrets) for each in jobs}  # keys checked up front
    check_params(spec)
    options = dict(limit=limit, skip_failed=skip_failed, force=force, grace=grace, progress=progress,
                   max_cost_usd=max_cost_usd)
    with contextlib.ExitStack() as stack:
        sim_url = None
        if use_sim:
            manager = start_simulator(sim_config(spec))
            sim = await anyio.to_thread.run_sync(manager.__enter__)
            stack.push(manager.__exit__)
            sim_url = sim.base_url
        results = [await run_job(each, job_path, targets[each.name], sim_url, **options) for each in jobs]
    if not spec.compare_mode:
        return results[0]
    return RunResult.combined({entry.name: result for entry, result in zip(spec.models, results)},
                              spec.resolved_run_dir())


def run(job: Any, **overrides: Any) -> Any:
    """Run (or resume) `job` to the end and return its RunResult; see the module docstring.
    Inside a running event loop (Jupyter), use `await batchrun.arun(...)`."""
    import asyncio

    import anyio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("an event loop is already running here (Jupyter?): use `await batchrun.arun(...)`")
    return anyio.run(lambda: arun(job, **overrides))
