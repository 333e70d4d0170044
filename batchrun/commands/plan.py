"""`batchrun plan JOB`: forecast tickets, tokens, cost and duration, sending nothing.

Options here; the forecast is `plan.make_plan`, the text `plan.format_plan`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchrun.analysis.textfmt import error_line

from batchrun.analysis.plan import (
    DEFAULT_ASSUMED_LATENCY_MS,
    DEFAULT_SAMPLE,
    OVER_BUDGET_EXIT,
    format_plan,
    make_plan,
)

__all__ = ["plan_command"]

PLAN_EXAMPLES = """
\b
Examples:
  batchrun plan jobs/classify_tickets.toml
  batchrun plan jobs/classify_tickets.toml --input tonight.jsonl --run-dir runs/2026-11-22 --max-cost-usd 5
  batchrun plan jobs/classify_tickets.toml --model anthropic/claude-3-5-haiku-latest --json
  batchrun plan jobs/classify_batch.toml --mode batch          # batch price next to online, parts, window
  batchrun plan jobs/classify_tickets.toml --api-base http://localhost:4000/v1 --model openai/my-alias
                                      # a LiteLLM proxy's alias, priced by the proxy (/model/info)

\b
Exit codes: 0 plan printed; 2 bad job file or input (nothing would be sent);
5 over max_cost_usd (the code of a run stopped by its budget).
"""


@click.command(name="plan", epilog=PLAN_EXAMPLES)
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input", "input_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Tickets file to use instead of the job's `input`.")
@click.option("--limit", type=click.IntRange(min=0), help="Only the first N tickets of the input.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory instead of the job's `run_dir` (what is already done there is not counted).")
@click.option("--model", envvar="BATCHRUN_MODEL", help="litellm model string [env: BATCHRUN_MODEL].")
@click.option("--concurrency", type=click.IntRange(min=1), help="Requests in flight at most.")
@click.option("--skip-failed", is_flag=True, help="Do not count tickets that failed in an earlier run.")
@click.option("--max-cost-usd", type=click.FloatRange(min=0, min_open=True),
              help="Budget for the run directory (all runs) [default: the job's max_cost_usd].")
@click.option("--sample", type=click.IntRange(min=1),
              help=f"Count input tokens exactly on at most N tickets, extrapolate beyond [default: {DEFAULT_SAMPLE:,}].")
@click.option("--assume-latency-ms", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_ASSUMED_LATENCY_MS, show_default=True,
              help="Latency per request when the run directory has no finished results to measure.")
@click.option("--live", is_flag=True,
              help="Plan the live run (--live) of a job that has a [simulator] section [default: the simulated run].")
@click.option("--api-base", envvar="BATCHRUN_API_BASE",
              help="Plan the run against this endpoint (implies --live); a LiteLLM proxy is asked what its alias "
                   "costs (GET /model/info, nothing sent to a model) [env: BATCHRUN_API_BASE].")
@click.option("--mode", type=click.Choice(["online", "batch"]),
              help="Forecast online calls or the Batch API (batch price next to online) [default: the job's].")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_command(job_file: Path, input_path: Path | None, limit: int | None, run_dir: Path | None,
                 model: str | None, concurrency: int | None, skip_failed: bool, max_cost_usd: float | None,
                 sample: int | None, assume_latency_ms: float, live: bool, api_base: str | None, mode: str | None,
                 as_json: bool) -> None:
    """Forecast tickets, tokens, cost and duration of running JOB_FILE, sending nothing.

    Respects resume: what the run directory already holds is not counted.
    """
    import orjson

    from batchrun.errors import BatchrunError
    from batchrun.job.spec import load_job

    try:
        job = load_job(job_file).with_overrides(input=input_path, run_dir=run_dir, model=model,
                                                concurrency=concurrency, mode=mode, api_base=api_base)
        plan = make_plan(job, job_path=job_file, limit=limit, skip_failed=skip_failed,
                         max_cost_usd=max_cost_usd, sample=sample, assume_latency_ms=assume_latency_ms,
                         live=live or api_base is not None)
    except BatchrunError as exc:
        click.echo(error_line(exc), err=True)
        sys.exit(int(exc.exit_code))
    if as_json:
        click.echo(orjson.dumps(plan, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_plan(plan), nl=False)
    if plan["budget"]["over"]:
        sys.exit(OVER_BUDGET_EXIT)
