"""`batchrun run JOB`: run a job, or resume it where it stopped.

Options, API keys from the environment (checked before anything is sent),
the simulator when the job has one, then for each model `engine.prepare_run`
and `engine.execute_run` (the one event loop of a run), and the summary
table. A compare job ends with one line per model (from `grading.build_report`).
Logging (-v, -vv, --log-file) scrubs API keys from every record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from batchrun.errors import redact_url
from batchrun.sim.config import simulated_model
from batchrun.textfmt import num

__all__ = ["run_command", "setup_logging", "sim_config"]

RUN_EXAMPLES = """
\b
Examples:
  batchrun run jobs/classify_tickets.toml                  # simulator, resumes if re-run
  batchrun run jobs/classify_tickets.toml --limit 50 --concurrency 8
  batchrun run jobs/classify_tickets.toml --input tonight.jsonl --run-dir runs/2026-11-22
  OPENAI_API_KEY=... batchrun run jobs/classify_tickets.toml --live --run-dir runs/live
  batchrun run jobs/classify_tickets.toml --api-base http://localhost:4000/v1   # a LiteLLM proxy
  batchrun run jobs/classify_tickets.toml --engine ray --ray-address auto      # on a Ray cluster

\b
Exit codes: 0 all done; 2 bad job file, input or environment (nothing sent);
3 finished but some tickets failed (see errors.jsonl; re-run to retry them);
4 stopped by fail-fast (401/403/404 in a row); 5 max_cost_usd reached
(also `batchrun plan` over budget); 6 `batchrun diff --fail-on-accuracy-drop`;
130/143 interrupted by SIGINT/SIGTERM; 1 other errors. Every stopped run
resumes with the same command.
"""


class _RedactingFilter(logging.Filter):
    """Scrubs API keys from every log record before any handler sees it."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        from batchrun.errors import redact_secrets

        record.msg = redact_secrets(record.getMessage(), self.secrets)
        record.args = ()
        if record.exc_info:
            import traceback

            record.msg += "\n" + redact_secrets("".join(traceback.format_exception(*record.exc_info)),
                                                self.secrets)
            record.exc_info = None
            record.exc_text = None
        return True


def setup_logging(verbose: int, log_file: Path | None, secrets: list[str]) -> None:
    """-v: batchrun's retries and failures; -vv: debug, litellm's too. Keys scrubbed."""
    if not verbose and log_file is None:
        return
    level = logging.DEBUG if verbose >= 2 else logging.INFO
    handlers: list[logging.Handler] = []
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    redact = _RedactingFilter(secrets)
    for handler in handlers:
        handler.addFilter(redact)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(level)
    root = logging.getLogger()
    root.setLevel(level)
    for handler in handlers:
        root.addHandler(handler)
    logging.getLogger("batchrun").setLevel(level)


def route_litellm_logs(verbose: int) -> None:
    """With -vv, send litellm's own loggers through our (redacting) handlers only."""
    if verbose < 2:
        return
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.DEBUG)


def sim_config(job: Any) -> Any:
    """The simulator's settings from a job's [simulator] section (JobSpecError names a bad fault)."""
    from batchrun.errors import JobSpecError
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
                                          for name, p in spec.model_profiles.items()))


@click.command(name="run", epilog=RUN_EXAMPLES)
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input", "input_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Tickets file to use instead of the job's `input`.")
@click.option("--concurrency", type=click.IntRange(min=1), help="Requests in flight at most.")
@click.option("--limit", type=click.IntRange(min=0), help="Only the first N tickets of the input.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory instead of the job's `run_dir`.")
@click.option("--model", envvar="BATCHRUN_MODEL", help="litellm model string [env: BATCHRUN_MODEL].")
@click.option("--api-base", envvar="BATCHRUN_API_BASE",
              help="OpenAI-compatible server to talk to (no simulator) [env: BATCHRUN_API_BASE].")
@click.option("--live", is_flag=True, help="Use the job's real model even if it has a [simulator] section.")
@click.option("--skip-failed", is_flag=True, help="Do not retry tickets that failed in an earlier run.")
@click.option("--force", is_flag=True, help="Resume even if the job, input or endpoint changed.")
@click.option("--grace", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds in-flight requests get to finish after SIGINT/SIGTERM.")
@click.option("--workers", type=click.IntRange(min=1, max=64),
              help="Worker processes [default: the job's `workers`; auto = one per core for big runs].")
@click.option("--engine", type=click.Choice(["local", "ray"]),
              help="Where tickets run: this machine, or Ray actors (docs/cluster.md) [default: the job's `engine`].")
@click.option("--ray-address", help="Ray cluster to join (implies --engine ray): auto, ray://HOST:10001 "
              "[default: the job's `ray_address`, else a local Ray started for the run].")
@click.option("--max-cost-usd", type=click.FloatRange(min=0, min_open=True),
              help="Stop dispatching before the run directory's total cost would pass this.")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: on a terminal].")
@click.option("-v", "--verbose", count=True, help="-v: log retries and failures; -vv: debug (litellm too).")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the log here (API keys scrubbed).")
def run_command(job_file: Path, input_path: Path | None, concurrency: int | None, limit: int | None,
        run_dir: Path | None, model: str | None, api_base: str | None, live: bool, skip_failed: bool,
        force: bool, grace: float, workers: int | None, engine: str | None, ray_address: str | None,
        max_cost_usd: float | None, progress: bool | None, verbose: int, log_file: Path | None) -> None:
    """Run JOB_FILE over its tickets, or resume it where it stopped.

    Ids already in the run directory's results.jsonl are never requested again.
    A job with a [simulator] section runs against the embedded simulator unless
    --live or --api-base is given.
    """
    from batchrun.errors import BatchrunError, redact_secrets
    from batchrun.spec import load_job

    secrets: list[str] = []
    try:
        job = load_job(job_file)
        if engine == "local" and job.ray_address is not None:  # --engine local wins over the job's cluster
            job = job.model_copy(update={"ray_address": None})
        job = job.with_overrides(
            input=input_path, concurrency=concurrency, run_dir=run_dir, model=model, api_base=api_base,
            workers=workers, engine="ray" if ray_address and engine is None else engine, ray_address=ray_address)
        use_sim = job.simulator is not None and not live and api_base is None
        jobs = [job.for_model(entry) for entry in job.models] if job.compare_mode else [job]
        targets = {each.name: _targets(each, use_sim, secrets) for each in jobs}  # keys checked up front
        setup_logging(verbose, log_file, secrets)
        options = dict(limit=limit, skip_failed=skip_failed, force=force, grace=grace,
                       progress=sys.stderr.isatty() if progress is None else progress,
                       max_cost_usd=max_cost_usd, verbose=verbose)
        with contextlib.ExitStack() as stack:
            sim_url = None
            if use_sim:
                from batchrun.sim.process import start_simulator

                sim_url = stack.enter_context(start_simulator(sim_config(job))).base_url
            codes = [_run(each, job_file, targets[each.name], sim_url, **options) for each in jobs]
        if job.compare_mode:
            _print_comparison(job, jobs)
        code = max(codes, key=lambda c: (c != 0, c))
    except BatchrunError as exc:
        click.echo(f"batchrun: error: {redact_secrets(str(exc), secrets)}", err=True)
        sys.exit(int(exc.exit_code))
    sys.exit(code)


def _key(env_name: str | None, use_sim: bool, secrets: list[str]) -> str | None:
    """The API key from the variable a job (or a [[models]] entry) names; never the key in a file."""
    from batchrun.errors import ConfigurationError

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


def _targets(job: Any, use_sim: bool, secrets: list[str]) -> dict[str, dict[str, Any]]:
    """Provider kwargs per model key ("" for a single-model job; [[models]] names for a routed one),
    with the simulator's URL left as None to fill in; keys come from the environment now."""
    entries = [(entry.name, entry) for entry in job.models] if job.routes else [("", None)]
    targets: dict[str, dict[str, Any]] = {}
    for key, entry in entries:
        model = entry.model if entry else job.model
        api_base = (entry.api_base if entry and entry.api_base else job.api_base)
        if api_base and not use_sim:  # a key passed in the URL's query string is a secret too
            from urllib.parse import parse_qsl

            secrets.extend(value for _, value in parse_qsl(urlsplit(api_base).query) if len(value) >= 4)
        prices = entry.prices if entry and entry.prices else job.prices
        targets[key] = {
            "model": simulated_model(model) if use_sim else model,
            "api_base": None if use_sim else api_base,
            "api_key": _key(entry.api_key_env if entry and entry.api_key_env else job.api_key_env, use_sim, secrets),
            "params": {**job.params, **(entry.params if entry else {})},
            "prices": prices.model_dump() if prices else None,
            "max_connections": job.max_in_flight,
        }
    return targets


def _endpoint(targets: dict[str, dict[str, Any]], use_sim: bool) -> str:
    if use_sim:
        return "simulator"
    bases = sorted({redact_url(t["api_base"]) if t["api_base"] else "provider default" for t in targets.values()})
    return ", ".join(bases)


def _run(job, job_file, targets, sim_url, *, limit, skip_failed, force, grace, progress, max_cost_usd,
         verbose) -> int:
    import anyio

    from batchrun.commands.status import format_status
    from batchrun.engine import build_providers, coordinator_needs_provider, execute_run, prepare_run
    from batchrun.rundir import run_status
    from batchrun.stats import format_summary

    use_sim = sim_url is not None
    endpoint = _endpoint(targets, use_sim)
    prep = prepare_run(job, job_path=job_file, endpoint=endpoint, limit=limit,
                       skip_failed=skip_failed, force=force, max_cost_usd=max_cost_usd)
    try:
        for note in prep.notes:
            click.echo(f"batchrun: {note}", err=True)
        if prep.to_do == 0:
            click.echo(
                f"Nothing to do: {prep.already_done:,} of {prep.tickets_total:,} tickets already done"
                + (f", {prep.skipped_failed:,} failed before and skipped" if prep.skipped_failed else "")
                + f" in {prep.run_dir}. No requests sent.\n")
            click.echo(format_status(run_status(prep.run_dir)))
            return 0
        models = ", ".join(t["model"] for t in targets.values())
        click.echo(
            f"batchrun: {job.name}: {prep.to_do:,} to do, {prep.already_done:,} already done, "
            f"model {models} via {endpoint}, concurrency {job.concurrency}, run {prep.run_number} "
            f"in {prep.run_dir}", err=True)
        on_ray = job.engine == "ray"
        # Ray: `workers` actors, 0 = one per CPU the cluster offers (known once it is joined)
        workers = (job.workers if isinstance(job.workers, int) else 0) if on_ray else job.worker_count(prep.to_do)
        provider_kwargs = {key: {**kwargs, "api_base": sim_url if use_sim else kwargs["api_base"]}
                           for key, kwargs in targets.items()}
        providers = None
        if coordinator_needs_provider(job, workers, prep.max_cost_usd):
            providers = build_providers(provider_kwargs)
        if on_ray:
            click.echo(f"batchrun: Ray at {job.ray_address or 'a local instance started for the run'}, "
                       f"{workers or 'one per cluster CPU'} actor(s)", err=True)
        elif workers > 1:
            click.echo(f"batchrun: {workers} worker processes", err=True)
        route_litellm_logs(verbose)
        result = anyio.run(lambda: execute_run(prep, providers, grace_s=grace, progress=progress,
                                               workers=workers, provider_kwargs=provider_kwargs,
                                               engine=job.engine, ray_address=job.ray_address))
        title = f"{job.name}: run {prep.run_number} {result.state}"
        click.echo(format_summary(result.summary, title=title))
        click.echo(f"run directory: {prep.run_dir}  (batchrun status {prep.run_dir})")
        if result.state == "interrupted":
            click.echo("Interrupted: re-run the same command to resume.", err=True)
        elif result.error:
            click.echo(f"batchrun: {result.state}: {result.error}", err=True)
        if result.summary["failed"] and result.state != "interrupted":
            click.echo(f"{result.summary['failed']} ticket(s) failed: see {prep.run_dir / 'errors.jsonl'}; "
                       "re-run to retry them (or --skip-failed).", err=True)
        return result.exit_code
    finally:
        prep.release()


def _print_comparison(job: Any, jobs: list[Any]) -> None:
    """The end of a compare run: one line per model, the label distribution
    and agreement between models (from batchrun report's grading)."""
    from batchrun.grading import build_report

    run_dir = job.resolved_run_dir()
    report = build_report(run_dir)
    click.echo(f"\n{job.name}: {len(jobs)} models on the same tickets (full report: batchrun report {run_dir})")
    header = (f"{'model':<12} {'done':>6} {'failed':>6} {'accuracy':>8} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'ttft p50':>8} {'tokens':>9} {'cost $':>10} {'$/1k':>9}  labels")
    click.echo(header)
    click.echo("-" * len(header))
    for model in report["models"]:
        grading = model.get("grading") or {}
        accuracy = grading.get("accuracy")
        latency, ttft = model.get("latency_ms") or {}, model.get("ttft_ms") or {}
        counts = model.get("counts") or {}
        done, failed = counts.get("done"), counts.get("failed")
        cost = model.get("cost") or {}
        tokens = model.get("tokens") or {}
        labels = " ".join(f"{k} {v}" for k, v in sorted((model.get("label_distribution") or {}).items()))
        click.echo(f"{model['key']:<12} {num(done):>6} {num(failed):>6} "
                   f"{'-' if accuracy is None else f'{accuracy:.1%}':>8} {num(latency.get('p50')):>8} "
                   f"{num(latency.get('p95')):>8} {num(ttft.get('p50')):>8} {num(tokens.get('total')):>9} "
                   f"{num(cost.get('usd'), ',.6f'):>10} {num(cost.get('per_1000_tickets_usd'), ',.6f'):>9}  {labels}")
    for pair in report.get("agreement") or []:
        click.echo(f"agreement {pair['a']} vs {pair['b']}: {pair['rate']:.1%} of {pair['both_answered']:,} tickets")
