"""TODO: from batchrun.workers."""

from __future__ import annotations

from typing import Any

from batchrun.execution.ticket_runner import AttemptHooks, run_chain
from batchrun.job.spec import JobSpec
from batchrun.providers.seam import ChatRequest, Provider
from batchrun.records import Outcome


class InlineExecutor:
    """Run each ticket in the coordinator's own event loop."""

    def __init__(self, providers: dict[str, Provider], job: JobSpec, hooks: AttemptHooks, run_number: int) -> None:
        self.providers = providers  # "" for a single-model job, else [[models]] names
        self.job = job
        self.hooks = hooks
        self.run_number = run_number

    async def start(self, task_group: Any) -> None:
        return None

    async def run(self, request: ChatRequest, chain: list[str], route: str | None = None) -> Outcome:
        return await run_chain(request, self.providers, chain, self.job, self.hooks, self.run_number, route)

    def halt(self) -> None:
        return None  # the tickets run in this loop and see the coordinator's own hooks.halt

    async def aclose(self) -> None:
        return None  # the provider belongs to whoever passed it in
