"""Executors: what sends a run's requests. One seam (seam.py), one implementation per backend.

    seam.py          the Executor and CoordinatorHooks protocols, ExecutorFigures
    inline.py        InlineExecutor: tickets in the coordinator's own event loop
    frames.py        the frames worker processes and Ray actors exchange with it
    remote.py        RemoteTickets: the coordinator's side of tickets run elsewhere
                     (pending tickets, frames back, permits), shared by the next two
    process.py       ProcessExecutor and WorkerPool: worker processes on this machine
    worker_child.py  the other side, in a worker process or a Ray actor
    ray_actors.py    RayExecutor and TicketActor: Ray actors on a cluster
    ray_limiter.py   the cluster-wide rpm/tpm limiter actor

`open_executor(choice, job, hooks, run_number)` picks the implementation from
`ExecutorChoice.kind` through the EXECUTORS table (Ray is imported only when
asked for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, Mapping, cast

from batchrun.execution.executors.seam import (
    CoordinatorHooks,
    Executor,
    ExecutorFigures,
    WorkerCrashedError,
)
from batchrun.job.spec import JobSpec
from batchrun.providers.seam import Provider

if TYPE_CHECKING:
    from batchrun.execution.executors.process import WorkerPool
    from batchrun.providers.online import ProviderArgs

__all__ = ["EXECUTORS", "CoordinatorHooks", "Executor", "ExecutorFigures", "ExecutorChoice", "WorkerCrashedError",
           "open_executor"]

ExecutorKind = Literal["inline", "process", "ray"]


@dataclass(frozen=True)
class ExecutorChoice:
    """Which executor runs a run's tickets, and what it needs."""

    kind: ExecutorKind = "inline"
    workers: int = 1  # worker processes; Ray actors (0: one per CPU of the cluster)
    providers: Mapping[str, Provider] = field(default_factory=dict)  # inline: per model key
    # process and Ray: the LiteLLMProvider arguments per model key, to build providers over there
    provider_kwargs: Mapping[str, ProviderArgs] = field(default_factory=dict)
    worker_pool: WorkerPool | None = None  # process: children kept from run to run (bench)
    ray_address: str | None = None  # Ray: None starts a local Ray for the run

    @classmethod
    def choose(cls, *, engine: str, workers: int, providers: Mapping[str, Provider],
               provider_kwargs: ProviderArgs | Mapping[str, ProviderArgs] | None,
               worker_pool: WorkerPool | None = None, ray_address: str | None = None) -> ExecutorChoice:
        """The choice for `engine` ("local" or "ray") with `workers` processes or actors;
        `provider_kwargs` per model key, or one model's (those have a "model" key)."""
        kwargs: dict[str, ProviderArgs]
        # casts: mypy cannot tell the two shapes apart by a key, and "model" is a key of ProviderArgs
        if provider_kwargs and "model" in provider_kwargs:  # one model's kwargs
            kwargs = {"": cast("ProviderArgs", dict(provider_kwargs))}
        else:
            kwargs = dict(cast("Mapping[str, ProviderArgs]", provider_kwargs or {}))
        if engine == "ray":
            if not kwargs:
                raise ValueError("engine \"ray\" needs provider_kwargs to build a provider in each actor")
            return cls("ray", workers, providers, kwargs, None, ray_address)
        if workers > 1:
            if not kwargs:
                raise ValueError("workers > 1 needs provider_kwargs to build a provider in each process")
            return cls("process", workers, providers, kwargs, worker_pool)
        if not providers:
            raise ValueError("workers = 1 needs a provider")
        return cls("inline", 1, providers)


def _inline(choice: ExecutorChoice, job: JobSpec, hooks: CoordinatorHooks, run_number: int) -> Executor:
    from batchrun.execution.executors.inline import InlineExecutor

    return InlineExecutor(choice.providers, job, hooks, run_number)


def _process(choice: ExecutorChoice, job: JobSpec, hooks: CoordinatorHooks, run_number: int) -> Executor:
    from batchrun.execution.executors.process import ProcessExecutor

    return ProcessExecutor(choice.workers, job, choice.provider_kwargs, hooks, run_number, pool=choice.worker_pool)


def _ray(choice: ExecutorChoice, job: JobSpec, hooks: CoordinatorHooks, run_number: int) -> Executor:
    from batchrun.execution.executors.ray_actors import RayExecutor

    return RayExecutor(choice.workers or None, job, choice.provider_kwargs, hooks, run_number, address=choice.ray_address)


EXECUTORS: dict[ExecutorKind, Callable[[ExecutorChoice, JobSpec, CoordinatorHooks, int], Executor]] = {
    "inline": _inline, "process": _process, "ray": _ray}


def open_executor(choice: ExecutorChoice, job: JobSpec, hooks: CoordinatorHooks, run_number: int) -> Executor:
    """The executor of `choice.kind` for one run (not started yet: its start() does that)."""
    return EXECUTORS[choice.kind](choice, job, hooks, run_number)
