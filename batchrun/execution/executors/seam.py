"""The executor seam: how the coordinator hands a ticket to whatever sends its requests.

    Executor          start(task_group), run(request, chain, route) -> Outcome,
                      halt(), aclose(), figures(): implemented by InlineExecutor
                      (this event loop), ProcessExecutor (worker processes) and
                      RayExecutor (Ray actors)
    CoordinatorHooks  every call an executor makes on the coordinator: the
                      ticket runner's AttemptHooks, the waiting half of a
                      permit, and the run's AttemptAccounting
    ExecutorFigures   what an executor reports at the end (CPU, the cluster)
    WorkerCrashedError  a process or actor the run needed is gone
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import anyio.abc

from batchrun.errors import BatchrunError
from batchrun.execution.ticket_runner import AttemptHooks
from batchrun.providers.seam import ChatRequest
from batchrun.records import Outcome

if TYPE_CHECKING:
    from batchrun.execution.accounting import AttemptAccounting

__all__ = ["CoordinatorHooks", "Executor", "ExecutorFigures", "WorkerCrashedError"]


class WorkerCrashedError(BatchrunError):
    """A worker process (or the last Ray actor) exited while the run needed it."""


@dataclass(frozen=True, slots=True)
class ExecutorFigures:
    """What an executor says of its run once it is closed."""

    startup_cpu_s: float = 0.0  # CPU its processes spent before the first ticket (litellm's import)
    cpu_s: float = 0.0  # CPU its processes spent on the run, start-up included
    cluster: dict[str, object] | None = None  # Ray: actors, actors lost, tickets re-sent, limiter counters


class CoordinatorHooks(AttemptHooks, Protocol):
    """The coordinator as an executor sees it (execution/coordinator.py implements it).

    An executor that runs tickets in this event loop passes the hooks to the
    ticket runner as they are (`before_attempt` waits for a permit and
    counts). One whose tickets run elsewhere calls `wait_for_attempt` when
    the other side asks to send, then counts through `accounting`."""

    @property
    def accounting(self) -> AttemptAccounting: ...

    async def wait_for_attempt(self, request: ChatRequest, attempt: int, tokens: int | None = None) -> None:
        """The shared 429 pause and the rate limits; TicketAbandoned after a halt. Counts nothing."""
        ...


class Executor(Protocol):
    """Runs tickets to their outcomes; see the module docstring."""

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Be ready for run(): processes started, actors placed (raises BatchrunError if it cannot)."""
        ...

    async def run(self, request: ChatRequest, chain: Sequence[str], route: str | None = None) -> Outcome:
        """The ticket's outcome; TicketAbandoned after a halt, WorkerCrashedError when the executor broke."""
        ...

    def halt(self) -> None:
        """A signal: no request starts any more, wherever the tickets run."""
        ...

    async def aclose(self) -> None:
        """End the run: stop or hand back what start() made. Safe to call after a failed start()."""
        ...

    def figures(self) -> ExecutorFigures: ...
