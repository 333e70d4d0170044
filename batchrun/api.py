"""The Python API: `batchrun.run` and `batchrun.arun`, the command line's `batchrun run` for scripts
and notebooks. Both go through the one launcher (launcher.py), as the command does.

For scripts::

    import batchrun
    result = batchrun.run("jobs/classify_tickets.toml", limit=50)
    print(result.state, result.done, result.failed, result.cost_usd)
    for line in result.iter_results():
        print(line["id"], line["output"])

and where an event loop already runs (Jupyter)::

    result = await batchrun.arun("jobs/classify_tickets.toml", limit=50)

`job` is a path to a job file (a `str` or a `Path`, as every path here), a
`JobSpec`, or a dict in the job file's shape (relative paths in a dict are
taken from the current directory). The keyword overrides are the command
line's flags that make sense in Python (README, "Python API"); `tickets=` takes
an iterable of dicts in place of an input file. `progress` defaults to a bar
when interactive (a notebook, through tqdm.auto, or a terminal). Errors raise
`BatchrunError` (its `exit_code` is the CLI's).

    export(run_dir, out=None, format="jsonl", ...)   `batchrun export` for scripts
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from batchrun.execution.result import RunResult
from batchrun.records import Fields

if TYPE_CHECKING:
    from batchrun.launcher import JobSource

__all__ = ["arun", "export", "interactive", "run"]


def interactive() -> bool:
    """Is someone watching: a Jupyter/IPython kernel, or stderr on a terminal? (a progress bar then)"""
    import sys

    if "ipykernel" in sys.modules or "IPython" in sys.modules:
        try:
            from IPython import get_ipython

            if get_ipython() is not None:
                return True
        except ImportError:
            pass
    return sys.stderr.isatty()


async def arun(job: JobSource, *, tickets: Iterable[Fields] | None = None, input: str | Path | None = None,
               run_dir: str | Path | None = None, limit: int | None = None, concurrency: int | str | None = None,
               model: str | None = None, api_base: str | None = None, live: bool = False,
               skip_failed: bool = False, retry_permanent: bool = False, force: bool = False, workers: int | str | None = None,
               engine: str | None = None, ray_address: str | None = None, mode: str | None = None,
               cache: bool | None = None, max_cost_usd: float | None = None, service_tier: str | None = None,
               no_wait: bool = False, finish_online: bool = False, grace: float = 30.0, progress: bool | None = None,
               progress_every: float | None = None,
               prompt: Callable[[dict[str, Any]], list[dict[str, str]]] | None = None) -> RunResult:
    """Run (or resume) `job` in the running event loop; see the module docstring.

    `tickets`: dicts streamed into `<run_dir>/tickets.jsonl`, the run's input (the same tickets
    again resume; others are refused unless `force=True`). `mode`: "online" or "batch" (a job
    with mode = "batch" runs its provider's Batch API, as `batchrun run` does); `engine`:
    "local" or "ray"; `cache`: reuse answers already paid for; `service_tier`: "flex", "priority"
    or "default"; `progress`: a progress bar (None:
    when `interactive()`); `prompt`: a callable (a ticket's fields -> its messages, a list of
    {"role", "content"} dicts) in place of the job's templates (its name and source are part of
    the fingerprint: resuming with another is refused). The rest as the command line."""
    from batchrun.launcher import LaunchOptions, launch, resolve_job

    options = LaunchOptions(
        input=Path(input) if input is not None else None, run_dir=Path(run_dir) if run_dir is not None else None,
        limit=limit, concurrency=concurrency, model=model, api_base=api_base, live=live, workers=workers,
        engine=engine, ray_address=ray_address, mode=mode, cache=cache, max_cost_usd=max_cost_usd,
        service_tier=service_tier,
        skip_failed=skip_failed, retry_permanent=retry_permanent, force=force, grace=grace, no_wait=no_wait, finish_online=finish_online,
        progress=interactive() if progress is None else progress, progress_every=progress_every, prompt=prompt)
    spec, job_path = resolve_job(job, options, tickets)
    return await launch(spec, job_path, options)


def run(job: JobSource, **overrides: Any) -> RunResult:  # overrides: arun's keywords
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


def export(run_dir: str | Path, out: str | Path | None = None, format: str = "jsonl", *, with_input: bool = False,
           input: str | Path | None = None) -> Any:
    """`batchrun export` for scripts: one row per ticket of `run_dir` in input order, written to `out`
    (default RUN_DIR/export.<format>: jsonl, csv or parquet); returns the ExportResult (path, rows,
    done, failed, pending). `input` overrides the input the manifest names."""
    from batchrun.analysis.export import export_run

    return export_run(run_dir, out, format, with_input=with_input, input=input)
