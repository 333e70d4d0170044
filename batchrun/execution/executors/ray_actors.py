"""RayExecutor: a run's tickets on the actors of a Ray cluster (`engine = "ray"`; docs/cluster.md).

The driver keeps what it keeps for worker processes (the producer, the
limits, the budget, the counts, the single writer); each TicketActor runs the
worker side (worker_child.serve_run) in its own event loop, with frames
(frames.py) carried on batched push/pull calls instead of a pipe: at most one
of each per actor per PULL_INTERVAL_S / PUSH_INTERVAL_S. The frames that come
back are handled by RemoteTickets (remote.py), as for worker processes; here
a ticket whose actor dies goes to another actor, and attempts that were in
flight on it are named as possibly billed twice.

Counting (remote.Counting): in a job without rpm/tpm a ticket's first attempt
is counted at hand-over and its retries at their permit; with rpm/tpm every
attempt asks, after its rate permit from the cluster's limiter actor
(ray_limiter.py, on the driver's node), through ClusterLease.

    TicketActor     the actor class (made a Ray actor by `ray.remote` when the
                    executor starts: importing this module needs no Ray)
    RayExecutor     the Executor (seam.py) over Ray actors
    ClusterLease    an actor's rate permits from the limiter (worker_child.Lease)
    limits_for(job) the rpm/tpm budgets the limiter holds, per model key
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import resource
import time
import uuid
from types import ModuleType
from typing import Any, Mapping, Sequence

import anyio
import anyio.abc

from batchrun.errors import ConfigurationError
from batchrun.execution.executors.frames import Frame, decode_frames, encode
from batchrun.execution.executors.ray_limiter import (
    NAMESPACE,
    ClusterLimiter,
    LimiterGoneError,
    PermitClient,
    limiter_name,
    require_ray,
)
from batchrun.execution.executors.remote import Counting, RemoteTickets, describe_lost
from batchrun.execution.executors.seam import (
    CoordinatorHooks,
    ExecutorFigures,
    WorkerCrashedError,
)
from batchrun.execution.executors.worker_child import (
    RemoteHooks,
    Send,
    hooks_for,
    providers_from,
    relax_gc,
    serve_run,
)
from batchrun.execution.ticket_runner import TicketAbandoned
from batchrun.job.spec import JobSpec
from batchrun.providers.online import ProviderArgs
from batchrun.providers.seam import ChatRequest, Provider
from batchrun.records import Outcome

log = logging.getLogger("batchrun")

PULL_WAIT_S = 1.0  # an idle actor's pull returns empty after this long (the driver then asks again)
# At most one pull (push) per actor per this interval: a Ray call costs far more CPU than a frame,
# so under load each call carries every frame of the last interval; a frame after a quiet interval
# leaves at once (no added latency when little is going on).
PULL_INTERVAL_S = 0.010
PUSH_INTERVAL_S = 0.010
PUSH_BURST_S = 0.001


def actor_name(run_id: str, index: int) -> str:
    """Worker actors are named, so `ray list actors` (and tests) can find them."""
    return f"batchrun-actor-{run_id}-{index}"


def limits_for(job: JobSpec) -> dict[str, list[float | None]]:
    """{model key: [rpm, tpm]} as engine.py's limiters: "" for the job, [[models]] entries with their own."""
    limits: dict[str, list[float | None]] = {}
    if job.rpm or job.tpm:
        limits[""] = [job.rpm, job.tpm]
    for entry in job.models:
        if entry.rpm or entry.tpm:
            limits[entry.name] = [entry.rpm or job.rpm, entry.tpm or job.tpm]
    return limits


REACH_TIMEOUT_S = 10.0


async def check_reachable(address: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """A TCP connection to an explicit address (HOST:PORT or ray://HOST:PORT) before ray.init, which
    retries an unreachable cluster for many minutes; ConfigurationError at once if it is not there.
    "auto" and other forms are left to Ray."""
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with anyio.fail_after(timeout_s):
            stream = await anyio.connect_tcp(host.strip("[]"), int(port))
        await stream.aclose()
    except (OSError, TimeoutError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc  # anyio: "All connection attempts failed"
        why = (f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError)
               else os.strerror(cause.errno) if cause.errno else str(cause))
        hint = ("ray://HOST:PORT is the head's Ray Client port (10001 unless `ray start --head "
                "--ray-client-server-port` said otherwise; the head needs grpcio: pip install 'ray[client]')"
                if address.startswith("ray://") else
                "HOST:PORT is the head's GCS port (6379 unless `ray start --head --port` said otherwise)")
        raise ConfigurationError(f"cannot reach the Ray cluster at {address}: {why}. Is `ray start --head` "
                                 f"running there? {hint}; on the head node itself, use --ray-address auto") from None


def _cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the actor side --------------------------------------------------------------------


class ClusterLease:
    """The Lease of an actor's tickets (worker_child.Lease): rate permits from the cluster's limiter
    actor, a 429's pause sent to it (which tells every other actor)."""

    def __init__(self, client: PermitClient, limiter: Any, index: int, send: Send) -> None:  # limiter: its actor handle
        self.client = client
        self.limiter = limiter
        self.index = index
        self.send = send

    def _key(self, request: ChatRequest) -> str:
        key = request.model_key or ""
        return key if self.client.limited(key) else ""

    def limits(self, request: ChatRequest) -> bool:
        return self.client.limited(self._key(request))

    async def acquire(self, request: ChatRequest, tokens: int) -> None:
        try:
            await self.client.acquire(self._key(request), tokens)
        except LimiterGoneError as gone:
            # the cluster's rate limit cannot be held any more: the driver stops the run
            self.send({"t": "limiter_gone", "error": str(gone)})
            raise TicketAbandoned() from None

    def paused(self, seconds: float) -> None:
        self.limiter.pause.remote(time.time() + seconds, self.index)

    def correct(self, request: ChatRequest, estimated: int, actual: int) -> None:
        self.client.correct(self._key(request), estimated, actual)


class TicketActor:
    """One Ray actor: batchrun's worker loop (workers._serve_run) in the actor's event loop.

        push(frames)      frames from the driver (tickets, "end")
        pull(wait_s)      frames for the driver: waits for at least one (or
                          `wait_s`), then returns every frame queued
        start_run(init, limiter, limited_keys) -> CPU seconds so far
        pause(until)      the limiter's broadcast of a 429 pause
        loaded() -> CPU seconds after litellm's import
        node() -> the Ray node id it runs on
    """

    def __init__(self, index: int, max_connections: int | None) -> None:
        from batchrun.providers.litellm_setup import preload

        preload(max_connections)  # litellm, now: before the run's first ticket
        relax_gc()  # as in a worker process: the collector kept out of the request path
        self.index = index
        self.inbox: collections.deque[Frame] = collections.deque()
        self.inbox_ready = asyncio.Event()
        self.outbox: list[bytes] = []
        self.outbox_ready = asyncio.Event()
        self.last_pull = 0.0
        self.hooks: RemoteHooks | None = None
        self.task: asyncio.Task[None] | None = None
        self.loaded_cpu_s = _cpu_now()

    def loaded(self) -> float:
        return self.loaded_cpu_s

    def node(self) -> str:
        """The id of the Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def _send(self, message: Frame) -> None:
        self.outbox.append(encode(message))
        self.outbox_ready.set()

    async def _receive(self) -> Frame | None:
        while not self.inbox:
            self.inbox_ready.clear()
            await self.inbox_ready.wait()
        return self.inbox.popleft()

    async def push(self, data: bytes) -> None:
        self.inbox.extend(decode_frames(bytearray(data)))
        self.inbox_ready.set()

    async def pull(self, wait_s: float) -> bytes:
        if not self.outbox:
            self.outbox_ready.clear()
            try:
                await asyncio.wait_for(self.outbox_ready.wait(), wait_s)
            except asyncio.TimeoutError:
                return b""
        delay = self.last_pull + PULL_INTERVAL_S - time.monotonic()
        if delay > 0:  # the last pull was recent: what finishes meanwhile joins this one
            await asyncio.sleep(delay)
        self.last_pull = time.monotonic()
        data = b"".join(self.outbox)
        self.outbox.clear()
        return data

    async def pause(self, until: float) -> None:
        if self.hooks is not None:
            self.hooks.gate.pause_all(max(0.0, until - time.time()))

    async def start_run(self, init: Frame, limiter: Any, limited_keys: list[str]) -> float:  # limiter: a handle
        import ray

        job = JobSpec.model_validate(init["job"])
        providers = providers_from(init)
        client = PermitClient(limiter, set(limited_keys))
        await client.start()
        await limiter.register.remote(self.index, ray.get_runtime_context().current_actor)
        self.hooks = hooks_for(init, self._send, job, providers, ClusterLease(client, limiter, self.index, self._send))
        self.inbox.clear()
        self.task = asyncio.get_running_loop().create_task(
            self._serve(job, providers, int(init["run"]), self.hooks, client))
        return _cpu_now()

    async def _serve(self, job: JobSpec, providers: Mapping[str, Provider], run_number: int, hooks: RemoteHooks,
                     client: PermitClient) -> None:
        try:
            await serve_run(job, providers, run_number, self._send, self._receive, hooks)
        finally:
            client.release()
            for provider in providers.values():
                await provider.aclose()
            self._send({"t": "ended", "cpu_s": _cpu_now()})


# -- the driver side -------------------------------------------------------------------


class _ActorChild:
    """One TicketActor seen from the driver: a Link of remote.py (load, held, in flight, post)."""

    def __init__(self, index: int, actor: Any) -> None:  # actor: the TicketActor's handle
        self.index = index
        self.actor = actor
        self.load = 0  # tickets this actor holds
        self.peak_load = 0
        self.held: set[str] = set()
        self.in_flight: set[str] = set()  # held tickets with an attempt permitted and no report of it yet
        self.ready = anyio.Event()
        self.ended = anyio.Event()
        self.gone = False
        self.startup_cpu_s = 0.0
        self.run_cpu_s = 0.0
        self.ready_cpu_s = 0.0
        self.outbox: list[bytes] = []
        self.wake = anyio.Event()
        self.closing = False

    def post(self, frame: Frame) -> None:
        self.outbox.append(encode(frame))
        self.wake.set()

    async def push_forever(self, owner: "RayExecutor") -> None:
        """One push call in flight at a time: what was posted meanwhile leaves in the next one."""
        try:
            last_push = 0.0
            while not self.gone:
                await self.wake.wait()
                # recent: what is posted meanwhile joins this one; after a quiet spell, a millisecond
                # for the rest of a burst (the tickets handed out together at the start)
                delay = max(last_push + PUSH_INTERVAL_S - time.monotonic(), PUSH_BURST_S)
                if not self.closing:
                    await anyio.sleep(delay)
                self.wake = anyio.Event()
                if self.outbox:
                    data = b"".join(self.outbox)
                    self.outbox.clear()
                    last_push = time.monotonic()
                    await self.actor.push.remote(data)
                if self.closing and not self.outbox:
                    return
        except Exception as exc:  # the actor died (RayActorError and kin)
            owner._actor_died(self, exc)

    async def pull_forever(self, owner: "RayExecutor") -> None:
        buffer = bytearray()
        try:
            while not self.gone:
                buffer += await self.actor.pull.remote(PULL_WAIT_S)
                for message in decode_frames(buffer):
                    if message["t"] == "ended":
                        self.run_cpu_s = float(message["cpu_s"]) - self.ready_cpu_s
                        self.ended.set()
                        return
                    owner.tickets.handle(self, message)
        except Exception as exc:
            owner._actor_died(self, exc)


class RayExecutor:
    """The Executor over Ray actors (module docstring); the frames that come back are handled by
    RemoteTickets (remote.py), as for worker processes."""

    def __init__(self, n: int | None, job: JobSpec, provider_kwargs: Mapping[str, ProviderArgs],
                 hooks: CoordinatorHooks, run_number: int, *, address: str | None = None,
                 startup_timeout: float = 300.0) -> None:
        self.requested = n
        self.n = n or 1
        self.job = job
        self.provider_kwargs = {key: kwargs.copy() for key, kwargs in provider_kwargs.items()}
        self.run_number = run_number
        self.address = address
        self.startup_timeout = startup_timeout
        self.max_connections = max((kw.get("max_connections") or 0 for kw in provider_kwargs.values()),
                                   default=0) or None
        # every attempt is counted before an actor may send it: in jobs without rpm/tpm a ticket's
        # first attempt when it is handed over (one frame each way fewer), the others when permitted
        counting = Counting.EACH_PERMIT if limits_for(job) else Counting.FIRST_AT_HANDOVER
        # a 429's pause: the actor that saw it told the limiter, which tells every actor
        self.tickets = RemoteTickets(job, hooks, counting, requeue_when_lost=True, on_pause=None)
        self.started_ray = False
        self.limiter: Any = None  # the limiter's actor handle (Ray types an actor's methods as Never)
        self.limiter_counters: dict[str, float] = {}
        self.actors_lost = 0
        self.closing = False
        self.children: list[_ActorChild] = []
        self._ray: ModuleType | None = None

    def actor_count(self, cluster_cpus: float) -> int:
        if self.requested:
            return self.requested
        return max(1, min(int(cluster_cpus) or 1, self.job.max_in_flight))

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        ray = self._ray = require_ray()
        self.tickets.start(task_group)
        if not ray.is_initialized():
            if self.address:
                await check_reachable(self.address)
            # blocks this event loop for the few seconds Ray needs: nothing has been sent yet
            try:
                # no address: a new local Ray ("local"), even when `ray start` left one on this machine
                ray.init(address=self.address or "local", namespace=NAMESPACE, include_dashboard=False,
                         log_to_driver=True, configure_logging=False)
            except Exception as exc:  # no cluster there, a version mismatch, ...
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
                raise ConfigurationError(f"cannot start or join {where}: {type(exc).__name__}: {exc}") from None
            self.started_ray = True
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        self.n = self.actor_count(cpus)
        limits = limits_for(self.job)
        self.run_id = uuid.uuid4().hex[:12]
        # on the driver's node: a node lost with its actors must not take the cluster's rate limit with
        # it (the driver's node is the one the run cannot lose anyway). Hard affinity: a soft one lets
        # Ray place it elsewhere about half the time even though it needs no CPU.
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.limiter = ray.remote(ClusterLimiter).options(
            name=limiter_name(self.run_id), namespace=NAMESPACE, num_cpus=0, scheduling_strategy=here,
            max_concurrency=10_000, enable_task_events=False).remote(limits, self.n)
        actor_class = ray.remote(TicketActor)
        cpus_each = min(1.0, cpus / self.n)
        self.children = [
            _ActorChild(index, actor_class.options(name=actor_name(self.run_id, index), namespace=NAMESPACE,
                                                   num_cpus=cpus_each, max_concurrency=100_000,
                                                   # no task event (sent to Ray's GCS) per push and pull
                                                   enable_task_events=False)
                        .remote(index, self.max_connections))
            for index in range(self.n)]
        init = {"job": self.job.model_dump(mode="json"), "provider": self.provider_kwargs, "run": self.run_number,
                "counting": self.tickets.counting.value, "reports_results": self.job.adaptive,
                "reports_answers": self.job.max_cost_usd is not None}
        try:
            with anyio.fail_after(self.startup_timeout):
                loaded = [await child.actor.loaded.remote() for child in self.children]
                for child, loaded_cpu in zip(self.children, loaded):
                    child.ready_cpu_s = await child.actor.start_run.remote(init, self.limiter, list(limits))
                    child.startup_cpu_s = child.ready_cpu_s
                    child.ready.set()
        except TimeoutError:
            raise WorkerCrashedError(f"Ray actors not ready within {self.startup_timeout:g} s") from None
        except Exception as exc:
            if isinstance(exc, WorkerCrashedError):
                raise
            raise WorkerCrashedError(f"a Ray actor failed to start: {type(exc).__name__}: {exc}") from None
        for child in self.children:
            task_group.start_soon(child.pull_forever, self)
            task_group.start_soon(child.push_forever, self)

    async def run(self, request: ChatRequest, chain: Sequence[str], route: str | None = None) -> Outcome:
        return await self.tickets.run(self.children, request, chain, route)

    def _actor_died(self, child: _ActorChild, exc: BaseException) -> None:
        if child.gone:
            return
        child.gone = True
        child.ended.set()
        if self.closing:
            return
        self.actors_lost += 1
        held = len(child.held)
        lost = self.tickets.link_lost(child)  # named as possibly billed twice; the tickets go elsewhere
        log.warning("a Ray actor died (%s: %s); its %d ticket(s) go to the other actors%s",
                    type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "", held,
                    describe_lost(lost))
        if all(c.gone for c in self.children):
            self.tickets.fail_all(WorkerCrashedError(
                f"every Ray actor of the run is gone (the last: {type(exc).__name__}: {exc}); "
                "the tickets they held stay pending: re-run to resume"))

    def halt(self) -> None:
        """A signal: every live actor stops starting requests."""
        for child in self.children:
            if not child.gone:
                child.post({"t": "halt"})

    def figures(self) -> ExecutorFigures:
        return ExecutorFigures(startup_cpu_s=sum(child.startup_cpu_s for child in self.children),
                               cpu_s=sum(child.startup_cpu_s + child.run_cpu_s for child in self.children),
                               cluster=self.cluster_summary)

    @property
    def peak_tickets_per_actor(self) -> int:
        return max((c.peak_load for c in self.children), default=0)

    @property
    def cluster_summary(self) -> dict[str, object]:
        """What the run summary says of the cluster (RunStats.cluster)."""
        lost = self.tickets.accounting.lost_ids
        return {"actors": len(self.children), "actors_lost": self.actors_lost,
                "tickets_requeued": self.tickets.requeued, "peak_tickets_per_actor": self.peak_tickets_per_actor,
                # tickets whose request was in flight on an actor that died: counted, possibly billed,
                # sent again (their lines say maybe_billed_before)
                "in_flight_on_lost_actors": len(lost),
                "in_flight_on_lost_actors_ids": lost[:100],
                "limiter": self.limiter_counters or None}

    async def aclose(self) -> None:
        """End the run in every live actor, then kill the actors and the limiter (and Ray, if started here)."""
        self.closing = True
        with anyio.CancelScope(shield=True):
            for child in self.children:
                if not child.gone:
                    child.closing = True
                    child.post({"t": "end"})
            for child in self.children:
                with anyio.move_on_after(10):
                    await child.ended.wait()
            ray = self._ray
            if ray is None:
                return
            if self.limiter is not None:
                with anyio.move_on_after(5):
                    try:
                        self.limiter_counters = await self.limiter.counters.remote()
                    except Exception:
                        pass
            for child in self.children:
                child.gone = True
                try:
                    ray.kill(child.actor)
                except Exception:
                    pass
            if self.limiter is not None:
                try:
                    ray.kill(self.limiter)
                except Exception:
                    pass
            if self.started_ray:
                ray.shutdown()
