"""The Ray engine: a run's tickets on the actors of a Ray cluster.

`engine = "ray"` (or `batchrun run JOB --engine ray`) runs the same engine
as ever (engine.py: the producer, the concurrency slots, the budget, the
statistics, the run directory's single writer, all in the driver) with this
module's `RayExecutor` in place of workers.py's ProcessExecutor. The split is
the one worker processes use, and so is the protocol: the same frames
(workers.encode / decode_frames), the same child-side loop
(`workers._serve_run`, batchrun's retry loop on litellm), only carried by
Ray actor calls instead of a pipe.

    driver (engine.py + RayExecutor)               TicketActor x N (one event loop
      producer -> slots -> RayExecutor.run()         and one litellm each)
        the least-loaded live actor takes the   push(frames)  -> serve_run ->
        ticket; one push call in flight per     <- pull(wait)     run_chain
        actor carries every frame posted since       "want" before an attempt not
        the last one (chunks, back-pressure)         counted at hand-over, outcomes,
      "want" -> count + journal -> "permit"          failed attempts, "unsent", "ended"
      writer <- outcomes                              |
                                                      v  lease / pause
                                               ClusterLimiter (ray_limiter.py):
                                               rpm/tpm buckets, the 429 pause

Every attempt is counted before it can leave. In a job without rpm/tpm the
driver journals and counts a ticket's first attempt when it hands the
ticket over (the frame says "counted"); an attempt counted so and never
sent (a cache hit, a halt) comes back as "unsent" and is taken out of the
count and the journal. Every other attempt (retries; every attempt of a
rate-limited job, after its permit from the limiter) asks the driver
("want"), which journals and counts it, then answers "permit". Frames ride
on batched Ray calls: at most one pull and one push per actor per
PULL_INTERVAL_S / PUSH_INTERVAL_S, so under load a call carries many
frames and after a quiet spell a frame leaves at once.

Tickets per actor are bounded: the driver never has more than `concurrency`
tickets out, and each goes to the least-loaded actor, so an actor holds at
most ceil(concurrency / actors) of them (a test checks it). An actor that
dies (ray.kill, OOM, its node lost) is noticed by its pending pull or push;
the tickets it held go to the other actors, and since only the driver writes
and a ticket's outcome is accepted once, each ticket is recorded once. A run
whose actors are all gone fails with WorkerCrashedError and resumes like any
other. The attempts a dead actor made are in the run's request count (each
was counted when permitted); those whose fate is unknown (permitted, no
report back: the request may have reached the provider and be billed) are
named in the log and the summary (`in_flight_on_lost_actors`), and the
ticket's line says `maybe_billed_before`. The count can exceed what reached
the provider only by such tickets, one attempt each; it is never lower.
`actors_lost` and `tickets_requeued` say how many actors died and tickets
were sent again.

Ray itself: with `address` None and no Ray initialised in this process, a
new local instance is started for the run (also when `ray start` left one
running on this machine) and shut down after it; "auto" joins
the cluster of `ray start --head` on this machine, "ray://HOST:10001" a
remote one through Ray Client. `workers` is the number of actors; by
default one per CPU the cluster offers, at most the job's concurrency. Each
actor asks for min(1, cluster CPUs / actors) CPUs. Worker nodes need
batchrun installed (the same version) in the Python that runs Ray.

    TicketActor     the actor class (made a Ray actor by `ray.remote` when
                    the executor starts, so `import batchrun.ray_engine`
                    does not need Ray)
    RayExecutor     start(task_group), run(request, chain, route) -> Outcome,
                    aclose(): the executor interface of engine.py
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
from typing import Any

import anyio

from batchrun.errors import ConfigurationError, RateLimitedError, RequestError
from batchrun.execution.executors.frames import decode_frames, encode
from batchrun.execution.executors.process import (
    PendingTicket,
    ProcessExecutor,
    WorkerCrashedError,
)
from batchrun.execution.executors.ray_limiter import (
    NAMESPACE,
    ClusterLimiter,
    LimiterGoneError,
    PermitClient,
    limiter_name,
    require_ray,
)
from batchrun.execution.executors.worker_child import RemoteHooks, relax_gc, serve_run
from batchrun.execution.ticket_runner import TicketAbandoned
from batchrun.job.spec import JobSpec
from batchrun.providers.seam import ChatRequest
from batchrun.records import Completion, Outcome

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


class _RayHooks(RemoteHooks):
    """A ticket's attempts inside an actor: permits leased from the cluster's limiter, a 429's pause
    sent to the limiter (which tells every other actor); errors and outcomes go to the driver as frames."""

    def __init__(self, send: Any, job: JobSpec, provider: Any, client: PermitClient, limiter: Any,
                 index: int) -> None:
        super().__init__(send, job, provider)
        # every attempt asks the driver ("want"), which counts and journals it before it may leave;
        # rate permits come from the limiter actor, before that
        self.asks_permits = True
        self.reports_results = job.adaptive  # the driver's AIMD needs latencies
        # tickets whose first attempt the driver counted and journaled when it handed them over
        # (jobs without rpm/tpm): that attempt needs no "want"
        self.prepermitted: set[str] = set()
        self.client = client
        self.limiter = limiter
        self.index = index
        self.max_retry_after_s = job.retry.max_retry_after_s

    def _key(self, request: ChatRequest) -> str:
        key = request.model_key or ""
        return key if self.client.limited(key) else ""

    async def _wait_for_permit(self, request: ChatRequest, attempt: int) -> None:
        """The 429 pause, a rate permit from the limiter actor (rpm/tpm jobs), then the driver's
        permit: the driver has counted and journaled the attempt before it may leave, so an actor
        killed with requests in flight leaves no request uncounted."""
        await self.gate.wait_for_permit()
        key = self._key(request)
        if self.client.limited(key):
            tokens = self.estimated_tokens(request) if self.counts_tokens else 0
            try:
                await self.client.acquire(key, tokens)
            except LimiterGoneError as gone:
                # the cluster's rate limit cannot be held any more: the driver stops the run
                self.send({"t": "limiter_gone", "error": str(gone)})
                raise TicketAbandoned() from None
            await self.gate.wait_for_permit()  # a pause that came while the lease was under way
        if attempt == 1 and request.ticket_id in self.prepermitted:
            self.prepermitted.discard(request.ticket_id)  # counted at hand-over: it may leave now
            return
        await self._ask_coordinator(request, attempt)

    def finished(self, ticket_id: str) -> None:
        super().finished(ticket_id)
        if ticket_id in self.prepermitted:  # counted at hand-over, never sent (a cache hit, a halt)
            self.prepermitted.discard(ticket_id)
            self.send({"t": "unsent", "id": ticket_id})

    def attempt_failed(self, request: ChatRequest, attempt: int, error: RequestError) -> None:
        super().attempt_failed(request, attempt, error)
        if isinstance(error, RateLimitedError) and error.retry_after and \
                error.retry_after <= self.max_retry_after_s:
            self.gate.pause_all(error.retry_after)
            self.limiter.pause.remote(time.time() + error.retry_after, self.index)

    def attempt_succeeded(self, request: ChatRequest, attempt: int, completion: Completion,
                          latency_ms: float) -> None:
        super().attempt_succeeded(request, attempt, completion, latency_ms)
        if self.counts_tokens and completion.usage is not None and request.ticket_id in self.tokens:
            self.client.correct(self._key(request), self.tokens[request.ticket_id], completion.usage.total_tokens)


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
        self.inbox: collections.deque[dict[str, Any]] = collections.deque()
        self.inbox_ready = asyncio.Event()
        self.outbox: list[bytes] = []
        self.outbox_ready = asyncio.Event()
        self.last_pull = 0.0
        self.hooks: _RayHooks | None = None
        self.task: asyncio.Task[None] | None = None
        self.loaded_cpu_s = _cpu_now()

    def loaded(self) -> float:
        return self.loaded_cpu_s

    def node(self) -> str:
        """The id of the Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def _send(self, message: dict[str, Any]) -> None:
        self.outbox.append(encode(message))
        self.outbox_ready.set()

    async def _receive(self) -> dict[str, Any] | None:
        while not self.inbox:
            self.inbox_ready.clear()
            await self.inbox_ready.wait()
        return self.inbox.popleft()

    async def push(self, data: bytes) -> None:
        frames = decode_frames(bytearray(data))
        if self.hooks is not None:
            for frame in frames:
                if frame.get("counted"):  # its first attempt is counted: no "want" for it
                    self.hooks.prepermitted.add(frame["id"])
        self.inbox.extend(frames)
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

    async def start_run(self, init: dict[str, Any], limiter: Any, limited_keys: list[str]) -> float:
        import ray

        from batchrun.job.sections import PricesSpec
        from batchrun.providers.online import LiteLLMProvider

        job = JobSpec.model_validate(init["job"])
        providers = {}
        for key, kwargs in init["provider"].items():
            kwargs = dict(kwargs)
            if kwargs.get("prices") is not None:
                kwargs["prices"] = PricesSpec.model_validate(kwargs["prices"])
            providers[key] = LiteLLMProvider(**kwargs)
        client = PermitClient(limiter, set(limited_keys))
        await client.start()
        await limiter.register.remote(self.index, ray.get_runtime_context().current_actor)
        self.hooks = _RayHooks(self._send, job, next(iter(providers.values())), client, limiter, self.index)
        self.inbox.clear()
        self.task = asyncio.get_running_loop().create_task(
            self._serve(job, providers, int(init["run"]), self.hooks, client))
        return _cpu_now()

    async def _serve(self, job: JobSpec, providers: dict[str, Any], run_number: int, hooks: _RayHooks,
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
    """One TicketActor seen from the driver, with the attributes engine code reads of a worker process."""

    def __init__(self, index: int, actor: Any) -> None:
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

    def post(self, message: dict[str, Any]) -> None:
        self.outbox.append(encode(message))
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
                    owner._handle(self, message)  # type: ignore[arg-type]
        except Exception as exc:
            owner._actor_died(self, exc)


class RayExecutor(ProcessExecutor):
    """ProcessExecutor's interface and frame handling, over Ray actors; see the module docstring."""

    def __init__(self, n: int | None, job: JobSpec, provider_kwargs: dict[str, dict[str, Any]], hooks: Any,
                 run_number: int, *, address: str | None = None, startup_timeout: float = 300.0) -> None:
        super().__init__(n or 1, job, provider_kwargs, hooks, run_number, startup_timeout)
        self.requested = n
        self.address = address
        self.counts_each_attempt = True  # each attempt is counted before an actor may send it
        # jobs without rpm/tpm: a ticket's first attempt is counted and journaled when it is handed
        # over (one frame each way fewer); rate-limited jobs ask for it after their lease
        self.counts_at_handover = not limits_for(job)
        self.started_ray = False
        self.limiter: Any = None
        self.limiter_counters: dict[str, Any] = {}
        self.actors_lost = 0
        self.tickets_requeued = 0
        self.lost_in_flight: list[str] = []  # tickets with a request in flight on an actor that died
        self.children: list[_ActorChild] = []  # type: ignore[assignment]
        self._ray: Any = None

    def actor_count(self, cluster_cpus: float) -> int:
        if self.requested:
            return self.requested
        return max(1, min(int(cluster_cpus) or 1, self.job.max_in_flight))

    async def start(self, task_group: Any) -> None:
        ray = self._ray = require_ray()
        self._tg = task_group
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
        init = {"job": self.job.model_dump(mode="json"), "provider": self.provider_kwargs, "run": self.run_number}
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

    async def run(self, request: ChatRequest, chain: list[str], route: str | None = None) -> Outcome:
        pending = PendingTicket(request)
        ticket_id = request.ticket_id
        self.pending[ticket_id] = pending
        message = {"t": "ticket", "id": ticket_id, "messages": request.messages,
                   "timeout": request.timeout_s, "chain": chain, "route": route,
                   "counted": self.counts_at_handover}
        try:
            while True:
                if self.crashed is not None:
                    raise self.crashed.with_traceback(None)  # one task's frames, not every raiser's
                child = min((c for c in self.children if not c.gone), key=lambda c: c.load)
                child.load += 1
                child.peak_load = max(child.peak_load, child.load)
                child.held.add(ticket_id)
                if self.counts_at_handover:  # before the actor can send it: journal, count
                    self.hooks.count_attempt(request, 1)
                    child.in_flight.add(ticket_id)
                try:
                    child.post(message)
                    await pending.done.wait()
                finally:
                    child.load -= 1
                    child.held.discard(ticket_id)
                if pending.outcome is not None:
                    return pending.outcome
                if pending.abandoned is not None:  # halted (a signal): no outcome, not sent again
                    raise pending.abandoned
                if self.crashed is not None:
                    raise self.crashed.with_traceback(None)  # one task's frames, not every raiser's
                pending.done = anyio.Event()  # its actor died: the next live one takes it
                self.tickets_requeued += 1
        finally:
            self.pending.pop(ticket_id, None)

    async def _grant(self, child: Any, message: dict[str, Any]) -> None:
        """Count and journal the attempt (the engine's before_attempt), then permit it; the actor
        sends nothing before. A ticket its actor no longer holds (the actor died) gets no permit."""
        ticket_id = message["id"]
        pending = self.pending.get(ticket_id)
        if pending is None or child.gone or ticket_id not in child.held:
            return
        try:
            await self.hooks.wait_for_attempt(pending.request, message["attempt"])  # a 429 pause, a halt
        except TicketAbandoned:
            return  # halted: the actor got "halt" and ends the ticket itself
        if child.gone or ticket_id not in child.held:
            return  # the actor died meanwhile: nothing was counted, nothing can be sent
        self.hooks.count_attempt(pending.request, message["attempt"])
        # counted: from here until the actor reports on it, a death of the actor leaves the attempt's
        # fate unknown (it may have reached the provider, and be billed)
        child.in_flight.add(ticket_id)
        child.post({"t": "permit", "id": ticket_id})

    def _handle(self, child: Any, message: dict[str, Any]) -> None:
        if message["t"] == "limiter_gone":
            if self.crashed is None:
                self._fail_all(WorkerCrashedError(
                    f"the run's rate limiter (a Ray actor) is gone ({message['error']}): the cluster-wide "
                    "rpm/tpm limit cannot be held, so nothing more is sent; re-run to resume"))
            return
        if message["t"] == "unsent":  # counted at hand-over, never sent (a cache hit, a halt)
            pending = self.pending.get(message["id"])
            if pending is not None:
                self.hooks.uncount_attempt(pending.request, 1)
            child.in_flight.discard(message["id"])
            return
        if message["t"] in ("failed", "outcome", "abandoned"):
            child.in_flight.discard(message.get("id") or message.get("outcome", {}).get("ticket_id"))
        super()._handle(child, message)

    def _actor_died(self, child: _ActorChild, exc: BaseException) -> None:
        if child.gone:
            return
        child.gone = True
        child.ended.set()
        if self._closing:
            return
        self.actors_lost += 1
        lost_in_flight = sorted(child.in_flight & child.held)
        for ticket_id in lost_in_flight:
            self.hooks.mark_maybe_billed(ticket_id)  # its line will say maybe_billed_before
        self.lost_in_flight += lost_in_flight
        for ticket_id in list(child.held):
            pending = self.pending.get(ticket_id)
            if pending is not None and pending.outcome is None:
                pending.done.set()
        log.warning("a Ray actor died (%s: %s); its %d ticket(s) go to the other actors%s",
                    type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "", len(child.held),
                    f"; {len(lost_in_flight)} had a request in flight and may be billed twice: "
                    f"{', '.join(lost_in_flight[:20])}{' ...' if len(lost_in_flight) > 20 else ''}"
                    if lost_in_flight else "")
        if all(c.gone for c in self.children):
            self._fail_all(WorkerCrashedError(
                f"every Ray actor of the run is gone (the last: {type(exc).__name__}: {exc}); "
                "the tickets they held stay pending: re-run to resume"))

    def _broadcast(self, message: dict[str, Any]) -> None:
        if message.get("t") == "pause":
            return  # the actor that saw the 429 told the limiter, which tells every actor
        for child in self.children:
            if not child.gone:
                child.post(message)

    @property
    def peak_tickets_per_actor(self) -> int:
        return max((c.peak_load for c in self.children), default=0)

    @property
    def cluster_summary(self) -> dict[str, Any]:
        """What the run summary says of the cluster (RunStats.cluster)."""
        return {"actors": len(self.children), "actors_lost": self.actors_lost,
                "tickets_requeued": self.tickets_requeued, "peak_tickets_per_actor": self.peak_tickets_per_actor,
                # tickets whose request was in flight on an actor that died: counted, possibly billed,
                # sent again (their lines say maybe_billed_before)
                "in_flight_on_lost_actors": len(self.lost_in_flight),
                "in_flight_on_lost_actors_ids": self.lost_in_flight[:100],
                "limiter": self.limiter_counters or None}

    async def aclose(self) -> None:
        """End the run in every live actor, then kill the actors and the limiter (and Ray, if started here)."""
        self._closing = True
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
