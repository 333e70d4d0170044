"""InlineExecutor: a run's tickets in the coordinator's own event loop (workers = 1).

The ticket runner gets the coordinator itself as its hooks: each attempt
waits for the coordinator's permit and is counted there before it is sent.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import anyio.abc

from batchrun.execution.executors.seam import CoordinatorHooks, ExecutorFigures
from batchrun.execution.ticket_runner import run_chain
from batchrun.job.spec import JobSpec
from batchrun.providers.seam import ChatRequest, Provider
from batchrun.records import Outcome

__all__ = ["InlineExecutor"]


class InlineExecutor:
    """The Executor of one process: run_chain in this event loop, one ticket per dispatcher worker."""

    def __init__(self, providers: Mapping[str, Provider], job: JobSpec, hooks: CoordinatorHooks,
                 run_number: int) -> None:
        self.providers = dict(providers)  # "" for a single-model job, else [[models]] names
        self.job = job
        self.hooks = hooks
        self.run_number = run_number

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        return None

    async def run(self, request: ChatRequest, chain: Sequence[str], route: str | None = None) -> Outcome:
        return await run_chain(request, self.providers, list(chain), self.job, self.hooks, self.run_number, route)

    def halt(self) -> None:
        return None  # the tickets run in this loop and see the coordinator's own halt

    async def aclose(self) -> None:
        return None  # the providers belong to whoever passed them in

    def figures(self) -> ExecutorFigures:
        return ExecutorFigures()
