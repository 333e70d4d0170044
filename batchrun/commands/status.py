"""`batchrun status RUN_DIR`: the counts of a run directory, finished or in progress.

The counts are `rundir.run_status`; `format_status` is the table (also printed by
`batchrun run` when there is nothing left to do). A compare directory (one run
directory per model under models/) gets one line per model
(`rundir.compare_status`, `format_compare_status`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import click

from batchrun.analysis.documents import StoredJSON
from batchrun.analysis.stats import (describe_anomalies, format_batch_parts, format_batch_summary, format_prompt_cache,
                                     format_summary, upstream_text)
from batchrun.analysis.textfmt import error_line, kv, table, terminal_safe, usd

__all__ = ["format_status", "status_command"]



@click.command(name="status", epilog="\b\nExamples:\n  batchrun status runs/classify_tickets\n"
                                     "  batchrun status runs/compare_models       # one line per model")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status_command(run_dir: Path, as_json: bool) -> None:
    """Print the counts of a run directory (finished or in progress)."""
    import orjson

    from batchrun.errors import BatchrunError
    from batchrun.rundir.status import compare_status, run_status

    try:
        models = compare_status(run_dir)
        status = run_status(run_dir) if models is None else None
    except BatchrunError as exc:
        click.echo(error_line(exc), err=True)
        sys.exit(int(exc.exit_code))
    if as_json:
        click.echo(orjson.dumps(models if models is not None else status, option=orjson.OPT_INDENT_2).decode())
    elif models is not None:
        click.echo(format_compare_status(run_dir, models))
    elif status is not None:
        click.echo(format_status(status))


def format_compare_status(run_dir: Path, models: Sequence[StoredJSON]) -> str:
    """One line per model of a compare directory, and the total cost."""
    rows = [[m["model"], m["model_name"], m["state"], f"{m['done']:,}", f"{m['failed']:,}",
             f"{m['pending_asked']:,}", f"{m['not_asked']:,}", usd(m["cost_usd"])] for m in models]
    lines = [f"compare directory {run_dir}: {len(models)} models (batchrun status {run_dir}/models/NAME for one)", ""]
    lines += table(["model", "litellm model", "state", "done", "failed", "pending", "not asked", "cost"], rows, left=3)
    lines.append(f"\ntotal cost (all models, all runs): {usd(sum(m['cost_usd'] for m in models))}")
    return terminal_safe("\n".join(lines))




def format_status(status: StoredJSON) -> str:
    """The table `batchrun status` prints, from `rundir.run_status`."""
    cache_line = format_prompt_cache(status.get("cached_tokens") or 0, status.get("cached_share"),
                                     status.get("cache_write_tokens") or 0, status.get("prompt_cache_saved_usd") or 0)
    tiers = status.get("service_tiers") or {}
    rows = [
        ("run directory", status["run_dir"]),
        ("job", status["job"]),
        ("state", f"{status['state']} (run {status['run']}, started {status['started_at']}"
                  + (f", finished {status['finished_at']})" if status["finished_at"] else ")")
                  + (f": {status['state_note']}" if status.get("state_note") else "")),
        ("endpoint", status["endpoint"]),
        ("input", status["input"]),
        ("tickets", f"{status['tickets']:,} in the input"),
        *([("asked", f"{status['asked']:,} (--limit {status['limit']:,} in run {status['run']})")]
          if status.get("limit") is not None else []),
        ("done", f"{status['done']:,}"),
        ("failed", f"{status['failed']:,}" + (
            f" ({status.get('failed_permanent', 0):,} permanent: kept by a re-run, --retry-permanent sends them; "
            f"{status.get('failed_transient', 0):,} transient: a re-run retries them)" if status["failed"] else "")),
        *([("pending", f"{status['pending_asked']:,} of those asked"),
           ("not asked yet", f"{status['not_asked']:,} of the input (run without --limit, or a larger one)")]
          if status.get("limit") is not None else [("pending", f"{status['pending']:,}")]),
        *([("rejected input lines", f"{status['rejected_lines']:,} (rejects.jsonl)")] if status["rejected_lines"] else []),
        ("total tokens", f"{status['total_tokens']:,}"),
        ("cost (all runs)", usd(status['cost_usd'])
         + (f" ({status['unpriced_results']} unpriced)" if status["unpriced_results"] else "")),
        *([("reused answers (all runs)", f"{status['cache_hits']:,}, {usd(status['cost_saved_usd'])} saved")]
          if status.get("cache_hits") else []),
        *([("prompt cache (all runs)", cache_line)] if cache_line else []),
        *([("service tiers", ", ".join(f"{k} {v:,}" for k, v in tiers.items()))]
          if set(tiers) - {"default"} else []),
        *([("requests", f"{status['requests']:,} sent by batchrun, all runs (recorded in the lines)")]
          if status.get("requests") is not None else []),
        *([("upstream requests", upstream_text(status["upstream_requests"], status.get("upstream_unreported")))]
          if status.get("upstream_requests") is not None else []),
    ]
    if status.get("batch_anomalies"):
        rows.append(("batch output not believed", describe_anomalies(status["batch_anomalies"],
                                                                      status.get("batch_anomalies_cost_usd"))))
    current = status.get("current_run")
    if current:
        dead = status["state"] != "running"
        rows.append((f"run {current['run']} ({'when it died' if dead else 'so far'})", (
            f"{current['done']:,} done, {current['failed']:,} failed, {usd(current['cost_usd'])} spent, "
            f"{current['requests']:,} requests"
            + (f" ({current['upstream_requests']:,} upstream)" if current.get("upstream_requests") is not None else "")
            + (f", {status['maybe_billed_before']:,} in flight when it died" if dead else "")
            + " (from the files)")))
    if status["error"]:
        rows.append(("error", status["error"]))
    if status.get("maybe_billed_before"):
        ids = status["maybe_billed_before_ids"]
        more = status["maybe_billed_before"] - len(ids[:10])
        rows.append(("may be billed twice", (
            f"{status['maybe_billed_before']:,} ticket(s) were in flight when the last run died: "
            + ", ".join(ids[:10]) + (f" and {more:,} more" if more > 0 else "")
            + " (the next run marks their lines maybe_billed_before)")))
    text = "\n".join(kv(rows))
    parts = format_batch_parts(status.get("batch"))
    if parts:
        text += "\n\nbatch parts:\n" + "\n".join(parts)
    if status["last_summary"]:
        title = f"last run (run {status['run']})"
        text += "\n\n" + (format_batch_summary(status["last_summary"], status["batch"], title=title, with_parts=False)
                           if status.get("batch") else format_summary(status["last_summary"], title=title))
    return terminal_safe(text)
