"""execute_run: one online run of a prepared job, from its first ticket to its manifest.

    prepare_run(job, ...) -> PreparedRun     preparation.py: lock, input check, resume choice
    await execute_run(prep, providers, ...)  here: a Coordinator (coordinator.py), an
                                             executor (executors/), the Dispatcher's tasks
                                             (dispatcher.py), then the one finish (finish.py)

How a run stops early and what each stop means (signals, fail-fast, the
budget, a full disk, a crashed worker): docs/reliability.md. Every stopped
run resumes with the same command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from batchrun.errors import CheckpointError
from batchrun.execution.coordinator import Coordinator
from batchrun.execution.dispatcher import Dispatcher
from batchrun.execution.executors import ExecutorChoice, open_executor
from batchrun.execution.executors.process import WorkerPool
from batchrun.execution.finish import RunFinish
from batchrun.execution.preparation import PreparedRun
from batchrun.execution.result import RunResult
from batchrun.job.spec import JobSpec
from batchrun.providers.seam import Provider

if TYPE_CHECKING:
    from batchrun.providers.online import ProviderArgs

__all__ = ["coordinator_needs_provider", "execute_run"]

#: how a stop reason ends the run's state (no reason: "done")
STOP_STATES = {"signal": "interrupted", "fail_fast": "failed", "budget": "budget_exhausted",
               "local_resource": "failed"}


def coordinator_needs_provider(job: JobSpec, workers: int, max_cost_usd: float | None) -> bool:
    """Whether the coordinating process needs providers (and so litellm) of its own.

    With one process the coordinator sends the requests itself; with worker
    processes it still prices the budget's estimates (`max_cost_usd`) and
    counts prompt tokens for the token limit (`tpm`); Ray actors count tokens
    themselves."""
    if job.engine == "ray":
        return max_cost_usd is not None
    return workers == 1 or max_cost_usd is not None or bool(job.tpm)


async def execute_run(
    prep: PreparedRun,
    provider: Provider | Mapping[str, Provider] | None,
    *,
    grace_s: float = 30.0,
    progress: bool = False,
    workers: int = 1,
    provider_kwargs: ProviderArgs | Mapping[str, ProviderArgs] | None = None,
    worker_pool: WorkerPool | None = None,
    progress_every: float | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> RunResult:
    """Run the prepared job; always leaves a parseable run directory.

    `provider`: one Provider, or one per model key ("" for a single-model job,
    [[models]] names for a routed one). workers = 1 runs every ticket on it in
    this event loop; workers > 1 starts that many worker processes, each
    building its own LiteLLMProvider from `provider_kwargs` (`provider` is then
    only used for cost estimates when a budget is set, and may be None); with
    `worker_pool` the processes are taken from it and handed back after the
    run. engine "ray" runs the tickets on `workers` Ray actors (0: one per CPU
    of the cluster) at `ray_address`. `progress`: a progress bar on stderr;
    without one, `progress_every` seconds between plain progress lines."""
    providers = dict(provider) if isinstance(provider, Mapping) else ({"": provider} if provider else {})
    choice = ExecutorChoice.choose(engine=engine, workers=workers, providers=providers,
                               provider_kwargs=provider_kwargs, worker_pool=worker_pool, ray_address=ray_address)
    coordinator = Coordinator(prep, providers, rate_limits_here=choice.kind != "ray")
    executor = open_executor(choice, prep.job, coordinator, prep.run_number)
    dispatcher = Dispatcher(coordinator, executor, grace_s=grace_s, progress=progress, progress_every=progress_every)

    async def close_providers() -> None:
        for each in providers.values():
            await each.aclose()

    finish = RunFinish(prep, coordinator.stats, coordinator.failed_ids, coordinator.writer,
                       cleanup=(dispatcher.close_bar, coordinator.journal.close, close_providers))
    async with finish:
        await dispatcher.run()
        fatal = coordinator.fatal
        if fatal is not None and not isinstance(fatal, CheckpointError):
            raise fatal  # a worker that crashed or could not start: the run fails, the error is raised
        if isinstance(fatal, CheckpointError):  # a full disk: the run ends as failed, summary shown
            finish.end("failed", error=str(fatal), stop_reason="checkpoint")
        else:
            finish.end(STOP_STATES.get(coordinator.stop_reason or "", "done"), error=coordinator.abort_message,
                       stop_reason=coordinator.stop_reason, signal_number=coordinator.signal_number)
    return finish.result()
