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

`job` is a path to a job file, a `JobSpec`, or a dict in the job file's shape
(relative paths in a dict are taken from the current directory). The keyword
overrides are the command line's flags that make sense in Python (README,
"Python API"); `tickets=` takes an iterable of dicts in place of an input
file. Errors raise `BatchrunError` (its `exit_code` is the CLI's).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from batchrun.execution.result import RunResult
from batchrun.records import Fields

if TYPE_CHECKING:
    from batchrun.launcher import JobSource

__all__ = ["arun", "run"]


async def arun(job: JobSource, *, tickets: Iterable[Fields] | None = None, input: str | Path | None = None,
               run_dir: str | Path | None = None, limit: int | None = None, concurrency: int | str | None = None,
               model: str | None = None, api_base: str | None = None, live: bool = False,
               skip_failed: bool = False, force: bool = False, workers: int | str | None = None,
               engine: str | None = None, ray_address: str | None = None, mode: str | None = None,
               cache: bool | None = None, max_cost_usd: float | None = None, service_tier: str | None = None,
               no_wait: bool = False,
               finish_online: bool = False, grace: float = 30.0, progress: bool = False,
               progress_every: float | None = None) -> RunResult:
    """Run (or resume) `job` in the running event loop; see the module docstring.

    `tickets`: dicts streamed into `<run_dir>/tickets.jsonl`, the run's input (the same tickets
    again resume; others are refused unless `force=True`). `mode`: "online" or "batch" (a job
    with mode = "batch" runs its provider's Batch API, as `batchrun run` does); `engine`:
    "local" or "ray"; `cache`: reuse answers already paid for; `service_tier`: "flex", "priority"
    or "default". The rest as the command line."""
    from batchrun.launcher import LaunchOptions, launch, resolve_job

    options = LaunchOptions(
        input=Path(input) if input is not None else None, run_dir=Path(run_dir) if run_dir is not None else None,
        limit=limit, concurrency=concurrency, model=model, api_base=api_base, live=live, workers=workers,
        engine=engine, ray_address=ray_address, mode=mode, cache=cache, max_cost_usd=max_cost_usd,
        service_tier=service_tier,
        skip_failed=skip_failed, force=force, grace=grace, no_wait=no_wait, finish_online=finish_online,
        progress=progress, progress_every=progress_every)
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
