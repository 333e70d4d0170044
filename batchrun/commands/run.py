"""`batchrun run JOB`: run a job, or resume it where it stopped.

The click options, one call into the launcher (launcher.launch: keys, models and
[params] checked before anything is sent, the simulator, online or batch mode,
one run per model of a compare job), and the rendering: header lines, progress
and logs on stderr; after each run its summary on stdout (`--json`: one JSON
object at the end). A compare job ends with one line per model (from
`analysis.grading.build_report`). Logging (-v, -vv, --log-file) scrubs API keys
from every record.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import click

from batchrun.analysis.documents import StoredJSON
from batchrun.analysis.textfmt import num, terminal_safe
from batchrun.run_logging import console, route_litellm_logs, setup_logging

if TYPE_CHECKING:
    from batchrun.execution.result import RunResult
    from batchrun.job.spec import JobSpec
    from batchrun.launcher import LaunchOptions

__all__ = ["headline", "run_command", "setup_logging"]


def headline(result: RunResult) -> str:
    """How a run ended, for the summary's title: `done`, `done with 2 failed`, `interrupted`, ..."""
    failed = int(result.summary.get("failed") or 0)
    return f"{result.state} with {failed:,} failed" if failed and result.state == "done" else result.state

RUN_EXAMPLES = """
\b
Examples:
  batchrun run jobs/classify_tickets.toml                  # simulator, resumes if re-run
  batchrun run jobs/classify_tickets.toml --limit 50 --concurrency 8
  batchrun run jobs/classify_tickets.toml --input tonight.jsonl --run-dir runs/2026-11-22
  OPENAI_API_KEY=... batchrun run jobs/classify_tickets.toml --live --run-dir runs/live
  batchrun run jobs/classify_tickets.toml --api-base http://localhost:4000/v1   # a LiteLLM proxy
  batchrun run jobs/classify_tickets.toml --serve          # and its live page on http://127.0.0.1:8765
  batchrun run jobs/classify_tickets.toml --engine ray --ray-address auto      # on a Ray cluster

\b
Exit codes: 0 all done; 2 bad job file, input or environment (nothing sent);
3 finished but some tickets failed (see errors.jsonl; re-run to retry them);
4 stopped by fail-fast (401/403/404 in a row); 5 max_cost_usd reached
(also `batchrun plan` over budget); 6 `batchrun diff --fail-on-accuracy-drop`;
130/143 interrupted by SIGINT/SIGTERM; 1 other errors. Every stopped run
resumes with the same command.
"""


class _WorkersType(click.ParamType):
    """--workers N|auto, as the job file's `workers` (and `batchrun bench`) accept."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r}: a number of processes (1-64) or 'auto'", param, ctx)
        if not 1 <= number <= 64:
            self.fail(f"{number}: between 1 and 64, or 'auto'", param, ctx)
        return number


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
@click.option("--retry-permanent", is_flag=True,
              help="Also send again tickets whose earlier failure was permanent (context window, content "
                   "policy, invalid request, auth, not found); a re-run otherwise retries transient ones only.")
@click.option("--force", is_flag=True, help="Resume even if the job, input or endpoint changed.")
@click.option("--grace", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds in-flight requests get to finish after SIGINT/SIGTERM.")
@click.option("--workers", type=_WorkersType(),
              help="Worker processes (Ray actors with --engine ray), N or auto [default: the job's `workers`; "
                   "auto = one per core for big runs].")
@click.option("--engine", type=click.Choice(["local", "ray"]),
              help="Where tickets run: this machine, or Ray actors (docs/cluster.md) [default: the job's `engine`].")
@click.option("--ray-address", help="Ray cluster to join (implies --engine ray): auto, ray://HOST:10001 "
              "[default: the job's `ray_address`, else a local Ray started for the run].")
@click.option("--max-cost-usd", type=click.FloatRange(min=0, min_open=True),
              help="Stop dispatching before the run directory's total cost would pass this.")
@click.option("--service-tier", type=click.Choice(["flex", "priority", "default"]),
              help="OpenAI's service tier for every request: flex (about half price, slower, may answer 429 "
                   "resource_unavailable), priority, default [default: the job's `service_tier`].")
@click.option("--cache/--no-cache", "cache", default=None,
              help="Reuse answers already obtained for the same request [default: the job's `cache`].")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: on a terminal].")
@click.option("--mode", type=click.Choice(["online", "batch"]),
              help="online: one call per ticket; batch: the provider's Batch API, about half price, "
                   "answers within 24 h [default: the job's `mode`].")
@click.option("--no-wait", is_flag=True, help="Batch mode: submit and exit (state `submitted`); the same "
                                              "command later collects without resubmitting.")
@click.option("--finish-online", is_flag=True, help="Batch mode: cancel parts still running (keeping what they "
                                                    "answered) and send the tickets left online now.")
@click.option("--progress-every", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              metavar="SECONDS", help="Without a progress bar (cron, a log file): one plain progress line "
                                      "on stderr this often.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as one JSON object on stdout (for scripts); logs stay on stderr.")
@click.option("-v", "--verbose", count=True, help="-v: log retries and failures; -vv: debug (litellm too).")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the log here (API keys scrubbed).")
@click.option("--dry-run", "dry_run", type=click.IntRange(min=0), is_flag=False, flag_value=3, default=None,
              metavar="[N]", help="Send nothing: check the job and input, print the first N tickets' messages "
                                  "(default 3) and the forecast of `batchrun plan` (put it after JOB).")
@click.option("--serve-linger", "serve_linger", type=click.FloatRange(min=0), metavar="SECONDS",
              help="With --serve: after the run, keep its page served this long [default: until Ctrl-C on a "
                   "terminal; 0 without one, so cron is never held].")
@click.option("--serve", "serve_port", type=click.IntRange(0, 65535), is_flag=False, flag_value=8765,
              default=None, metavar="[PORT]",
              help="Also serve this run's live page on 127.0.0.1:PORT (default 8765) while it runs "
                   "(a `batchrun serve` process on the run directory's parent).")
def run_command(job_file: Path, input_path: Path | None, concurrency: int | None, limit: int | None,
        run_dir: Path | None, model: str | None, api_base: str | None, live: bool, skip_failed: bool,
        retry_permanent: bool, force: bool, grace: float, workers: int | str | None, engine: str | None, ray_address: str | None,
        max_cost_usd: float | None, service_tier: str | None, cache: bool | None, progress: bool | None, mode: str | None,
        no_wait: bool, finish_online: bool, progress_every: float, as_json: bool, verbose: int,
        log_file: Path | None, dry_run: int | None, serve_linger: float | None, serve_port: int | None) -> None:
    """Run JOB_FILE over its tickets, or resume it where it stopped.

    Ids already in the run directory's results.jsonl are never requested again.
    A job with a [simulator] section runs against the embedded simulator unless
    --live or --api-base is given. Progress and logs go to stderr, the summary
    to stdout.
    """
    from batchrun.errors import BatchrunError
    from batchrun.launcher import LaunchOptions, resolve_job

    bar = sys.stderr.isatty() if progress is None else progress
    options = LaunchOptions(input=input_path, run_dir=run_dir, limit=limit, concurrency=concurrency, model=model,
                            api_base=api_base, live=live, workers=workers, engine=engine, ray_address=ray_address,
                            mode=mode, cache=cache, max_cost_usd=max_cost_usd, service_tier=service_tier,
                            skip_failed=skip_failed, retry_permanent=retry_permanent, force=force,
                            grace=grace, no_wait=no_wait, finish_online=finish_online, progress=bar,
                            # a bar on the terminal: the plain lines still go to the log file
                            progress_every=progress_every if not bar or log_file is not None else None)
    secrets: list[str] = []
    setup_logging(verbose, log_file, secrets, bar=bar)  # the filter redacts the keys as they are read
    try:
        job, _ = resolve_job(job_file, options)
        if dry_run is not None:
            _dry_run(job, job_file, options, dry_run, as_json)
            return
        with contextlib.ExitStack() as stack:
            server = None
            if serve_port is not None:
                from batchrun.serve.server import serve_in_background

                run_dir_path = job.resolved_run_dir()
                run_dir_path.mkdir(parents=True, exist_ok=True)
                server = stack.enter_context(serve_in_background(run_dir_path, serve_port))
            result = _launch(job, job_file, options, secrets, verbose=verbose, as_json=as_json)
            if as_json:
                _echo_json(job.name, result)
            elif job.compare_mode:
                _print_comparison(job)
            if server is not None:
                _linger(server, serve_linger)
        _final_line(result.state, result.summary, result.exit_code)
        code = result.exit_code
    except BatchrunError as exc:
        from batchrun.errors import redact_secrets

        message = redact_secrets(str(exc), secrets)
        console.error("%s", terminal_safe(message))
        if as_json:  # a script reads stdout: say why there is no summary
            import orjson

            click.echo(orjson.dumps({"error": message, "exit_code": int(exc.exit_code)}).decode())
        _final_line("not_started", {}, int(exc.exit_code))
        sys.exit(int(exc.exit_code))
    sys.exit(code)


def _linger(server: Any, seconds: float | None) -> None:
    """--serve: the finished run's page stays up (its final state) until Ctrl-C or --serve-linger."""
    from batchrun.serve.server import linger

    if seconds is None:
        seconds = None if sys.stdin.isatty() and sys.stderr.isatty() else 0.0
    if seconds == 0:
        return
    sys.stdout.flush()
    _say("the run is over; its page stays served (final state) "
         + ("until Ctrl-C" if seconds is None else f"for {seconds:g} s (--serve-linger)"))
    linger(seconds, server)


def _dry_run(job: JobSpec, job_file: Path, options: LaunchOptions, count: int, as_json: bool) -> None:
    """--dry-run N: the tickets' messages and the plan on stdout; nothing sent, nothing written."""
    import orjson

    from batchrun.analysis.plan import format_plan
    from batchrun.analysis.textfmt import terminal_safe
    from batchrun.launcher import dry_run

    if "litellm" not in sys.modules:
        _say("loading litellm (token counts and prices for the forecast)...")
    shown = dry_run(job, job_file, options, count)
    for note in shown["notes"]:
        _say(note)
    if as_json:
        click.echo(orjson.dumps(shown).decode())
        return
    click.echo(f"{job.name}: dry run, nothing sent ({'simulated' if shown['simulated'] else 'live'} run)")
    for ticket in shown["tickets"]:
        click.echo(f"\n-- ticket {terminal_safe(ticket['id'])} (input line {ticket['line']}) --")
        for message in ticket["messages"]:
            body = terminal_safe(message["content"]).split("\n")
            click.echo(f"[{message['role']}] {body[0]}")
            for row in body[1:]:
                click.echo(f"    {row}")
    if not shown["tickets"]:
        click.echo("\nno ticket to send: every one is done (or kept)")
    click.echo("")
    click.echo(format_plan(shown["plan"]), nl=False)


def _say(message: str) -> None:
    console.info("%s", terminal_safe(message))


def _final_line(state: str, summary: dict[str, Any], code: int) -> None:
    """The last line of every `batchrun run` on stderr and in the log file: how it ended."""
    console.info("state=%s done=%d failed=%d cost=$%.6f exit=%d", state, int(summary.get("done") or 0),
                 int(summary.get("failed") or 0), float(summary.get("cost_usd") or 0.0), code)


def _launch(job: JobSpec, job_file: Path, options: LaunchOptions, secrets: list[str], *, verbose: int,
            as_json: bool) -> RunResult:
    """The launch, with this command's rendering after each run."""
    import anyio

    from batchrun.launcher import launch

    def after_run(each: JobSpec, result: RunResult, mode: str) -> None:
        _log_failures(result)
        if not as_json:
            (_print_batch if mode == "batch" else _print_online)(each, result)
        elif result.nothing_to_do and mode == "batch":
            _say(f"Nothing to do: {result.summary['already_done']:,} of {result.summary['tickets_total']:,} "
                 f"tickets already done in {result.run_dir}. No batch submitted.")

    return anyio.run(lambda: launch(job, job_file, options, say=_say, secrets=secrets,
                                    before_execute=lambda: route_litellm_logs(verbose), after_run=after_run))


def _log_failures(result: RunResult) -> None:
    """Each failure kind of the run once on stderr (and in the log file): its count, whether a re-run
    retries it, its most frequent message."""
    from batchrun.errors import is_permanent

    fail_fast = result.summary.get("stop_reason") == "fail_fast"
    for kind, group in (result.summary.get("failures") or {}).items():
        top = (group.get("top_messages") or [["", 0]])[0][0]
        console.info("failed: %s %d (%s)%s", kind, group["count"],
                     "permanent: kept by a re-run" if is_permanent(kind, fail_fast=fail_fast)
                     else "transient: a re-run retries them",
                     f": {top}" if top else "")


class RunJSON(TypedDict):
    """`batchrun run --json`: a RunResult (with "job" in front at the top level)."""

    state: str
    exit_code: int
    run: int | None
    run_dir: str | None
    error: str | None
    totals: dict[str, int] | None
    summary: StoredJSON  # RunStats.summary()
    models: NotRequired[dict[str, RunJSON]]  # a compare run: one per model


def _result_json(result: RunResult) -> RunJSON:
    body: RunJSON = {
        "state": result.state, "exit_code": result.exit_code, "run": result.run_number,
        "run_dir": str(result.run_dir) if result.run_dir else None, "error": result.error,
        "totals": result.totals, "summary": result.summary,
    }
    if result.models:
        body["models"] = {name: _result_json(each) for name, each in result.models.items()}
    return body


def _echo_json(name: str, result: RunResult) -> None:
    import orjson

    click.echo(orjson.dumps({"job": name, **_result_json(result)}).decode())


def _print_online(job: JobSpec, result: RunResult) -> None:
    """The end of an online run: its summary on stdout, what to do next on stderr."""
    from batchrun.analysis.stats import format_summary
    from batchrun.commands.status import format_status
    from batchrun.rundir.status import run_status

    totals = result.totals or {}
    assert result.run_dir is not None
    if result.nothing_to_do:
        summary = result.summary
        click.echo(
            f"Nothing to do: {summary['already_done']:,} of {summary['tickets_total']:,} tickets already done"
            + (f", {summary['skipped_failed']:,} failed before and skipped" if summary["skipped_failed"] else "")
            + f" in {result.run_dir}. No requests sent.\n")
        click.echo(format_status(run_status(result.run_dir)))
        return
    click.echo(format_summary(result.summary, title=f"{job.name}: run {result.run_number} {headline(result)}"))
    click.echo(f"run directory: {result.run_dir}  (batchrun status {result.run_dir})")
    if result.state == "interrupted":
        _say("interrupted: re-run the same command to resume")
    elif result.error and result.state == "failed":  # a stop (budget, fail-fast) was said when it happened
        console.error("%s: %s", result.state, terminal_safe(result.error))
    failed, permanent = result.summary["failed"], result.summary.get("failed_permanent", 0)
    if failed and result.state != "interrupted":
        _say(f"{failed} ticket(s) failed: details in {result.run_dir / 'errors.jsonl'} (batchrun show "
             f"{result.run_dir} ID); " + ("a re-run retries the transient ones" if failed > permanent
                                          else "all permanent: a re-run keeps them")
             + (" (--retry-permanent sends the permanent ones again)" if permanent else ""))
    if totals.get("remaining") and result.state == "done":
        _say(f"{totals['remaining']:,} ticket(s) of the input not asked for yet (--limit): "
             "re-run with a larger --limit, or without it, to continue")


def _print_batch(job: JobSpec, result: RunResult) -> None:
    """The end of a batch-mode run: batch mode's own summary, its parts with the provider's batch ids."""
    from batchrun.analysis.stats import format_batch_summary
    from batchrun.rundir.status import batch_parts

    assert result.run_dir is not None
    if result.nothing_to_do:
        click.echo(f"Nothing to do: {result.summary['already_done']:,} of {result.summary['tickets_total']:,} "
                   f"tickets already done in {result.run_dir}. No batch submitted.")
        return
    click.echo(format_batch_summary(result.summary, batch_parts(result.run_dir),
                                    title=f"{job.name}: run {result.run_number} (batch) {headline(result)}"))
    click.echo(f"run directory: {result.run_dir}  (batchrun status {result.run_dir})")
    if result.state == "submitted":
        _say("submitted: run the same command later to collect the answers (nothing is sent again)")
    elif result.error:
        console.error("%s: %s", result.state, terminal_safe(result.error))


def _print_comparison(job: JobSpec) -> None:
    """The end of a compare run: one line per model, the label distribution
    and agreement between models (from batchrun report's grading)."""
    from batchrun.analysis.grading import build_report

    run_dir = job.resolved_run_dir()
    report = build_report(run_dir)
    click.echo(f"\n{job.name}: {len(job.models)} models on the same tickets (full report: batchrun report {run_dir})")
    header = (f"{'model':<12} {'done':>6} {'failed':>6} {'accuracy':>8} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'ttft p50':>8} {'tokens':>9} {'cost $':>10} {'$/1k':>9}  labels")
    click.echo(header)
    click.echo("-" * len(header))
    for model in report["models"]:
        grading, latency, ttft = model.get("grading"), model.get("latency_ms"), model.get("ttft_ms")
        accuracy = grading.get("accuracy") if grading else None
        counts, cost, tokens = model.get("counts"), model.get("cost"), model.get("tokens")
        done, failed = (counts.get("done"), counts.get("failed")) if counts else (None, None)
        distribution = sorted((model.get("label_distribution") or {}).items())
        labels = terminal_safe(" ".join(f"{k} {v}" for k, v in distribution))  # the models' answers
        click.echo(f"{model['key']:<12} {num(done):>6} {num(failed):>6} "
                   f"{'-' if accuracy is None else f'{accuracy:.1%}':>8} "
                   f"{num(latency.get('p50') if latency else None):>8} "
                   f"{num(latency.get('p95') if latency else None):>8} {num(ttft.get('p50') if ttft else None):>8} "
                   f"{num(tokens.get('total') if tokens else None):>9} "
                   f"{num(cost.get('usd') if cost else None, ',.6f'):>10} "
                   f"{num(cost.get('per_1000_tickets_usd') if cost else None, ',.6f'):>9}  {labels}")
    for pair in report.get("agreement") or []:
        click.echo(f"agreement {pair['a']} vs {pair['b']}: {pair['rate']:.1%} of {pair['both_answered']:,} tickets")
