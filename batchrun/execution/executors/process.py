"""Worker processes: the same tickets, several event loops, one run.

litellm spends several milliseconds of CPU per request, so one process tops
out far below what a provider allows. With `workers = N`, the engine (the
coordinator) keeps the producer, every limit (concurrency, 429 pause, rate
limits, budget), the stats and the single checkpoint writer, and hands
tickets to N child processes that each run their own event loop, litellm and
`ticket_runner.run_ticket`. Every attempt in a child first asks the
coordinator for a permit, so the limits stay shared and exact; outcomes come
back to the one writer, so results keep their guarantees (one line per
ticket, resume unchanged).

Protocol (the only coupling between the two sides, so the same split can
later run over TCP on other machines): frames of a 4-byte big-endian length
and an orjson object, over the child's stdin (coordinator -> child) and a
private copy of its stdout (child -> coordinator; fd 1 itself is pointed at
stderr so a stray print cannot corrupt the stream). Frames written in one
turn of either side's event loop leave in one write; records (Outcome,
Usage) go on the wire as orjson writes dataclasses.

    coordinator -> child                    child -> coordinator
                                            {"t": "loaded", cpu_s}   (litellm imported, at start)
    {"t": "init", job, provider, run}       {"t": "ready", cpu_s}    (provider: kwargs per model key)
    {"t": "ticket", id, messages, timeout,  {"t": "want", id, attempt, tokens}    (rpm/tpm jobs;
     chain, route}                                                      every job on Ray actors)
    {"t": "permit", id}                     (other jobs: attempts counted from the outcome)
    {"t": "pause", seconds}                 {"t": "failed", id, attempt, error}
    {"t": "halt"}                           {"t": "abandoned", id, attempts}   (a ticket halted
     (a signal: no request starts; tickets   before its next request: no outcome)
     waiting to retry end)
                                            {"t": "succeeded", id, attempt, latency_ms, usage, headers}
                                                                          (rate-limited or "auto" jobs)
                                            {"t": "outcome", outcome}
    {"t": "end"}                            {"t": "ended", cpu_s}    (the run is over; the child
                                                                      waits for the next init)

`cpu_s` is the child's CPU so far: the coordinator turns it into the
start-up CPU of a run (before "ready", not counted by an earlier run or
the pool's warm-up) and the run's CPU ("ready" to "ended").

A job with rpm/tpm asks for a permit before every attempt, so the token
buckets stay shared and exact. Other jobs send two frames per ticket
(ticket and outcome) and one per failed attempt; a 429 with Retry-After is
broadcast as a pause to every child.

A child ignores SIGINT/SIGTERM (the coordinator decides about shutdown) and
exits when its stdin closes, so a coordinator killed with SIGKILL takes its
children with it. A child that dies unexpectedly fails the run with a clear
message; the run resumes like any other.

    ProcessExecutor   coordinator side: start(), run(request) -> Outcome, aclose()
    WorkerPool        children kept from run to run in one event loop
                      (`open_worker_pool`; batchrun bench): litellm is
                      imported once, a dead child is replaced
    InlineExecutor    the same interface without processes (workers = 1)
    main()            child side: `python -m batchrun.execution.executors.worker_child`
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Any, AsyncIterator

import anyio

from batchrun.errors import BatchrunError, RateLimitedError
from batchrun.execution.executors.frames import (
    decode_frames,
    encode,
    error_from_wire,
    outcome_from_wire,
)
from batchrun.execution.ticket_runner import AttemptHooks, TicketAbandoned
from batchrun.job.spec import JobSpec
from batchrun.providers.litellm_setup import size_connection_pool
from batchrun.providers.seam import ChatRequest
from batchrun.records import Completion, Outcome, Usage


class WorkerCrashedError(BatchrunError):
    """A worker process exited while the run needed it."""


class PendingTicket:
    __slots__ = ("request", "done", "outcome", "abandoned")

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self.done = anyio.Event()
        self.outcome: Outcome | None = None
        self.abandoned: TicketAbandoned | None = None  # halted in the child before its next request


class _Child:
    """One worker process, seen from the coordinator.

    Its reader task routes frames to the executor that currently owns it
    (`owner`; a pooled child has none between runs). Frames to the child are
    queued with `post` (never blocks) and written by its flusher task: every
    frame posted in one turn of the event loop leaves in one write, so the
    child wakes once for a wave of tickets.
    """

    def __init__(self, index: int, process: Any) -> None:
        self.index = index
        self.process = process
        self.owner: ProcessExecutor | None = None
        self.load = 0  # tickets this child holds
        self.loaded = anyio.Event()  # litellm imported ("loaded" frame)
        self.ready = anyio.Event()  # this run's init done ("ready" frame)
        self.ended = anyio.Event()  # this run's "ended" frame (or the child is gone)
        self.gone = False  # the process closed its side: exited or crashed
        self.cpu_s = 0.0  # the child's CPU so far, as its last frame said
        self.accounted_cpu_s = 0.0  # the part already counted (a previous run, or the pool's warm-up)
        self.startup_cpu_s = 0.0  # CPU before this run's "ready" not counted before (litellm's import, if fresh)
        self.run_cpu_s = 0.0  # CPU from "ready" to "ended"
        self.outbox: list[bytes] = []  # encoded frames not yet written
        self.wake = anyio.Event()  # set when the outbox has something (or on close)
        self.closing = False  # the flusher writes what is left, then ends
        self.flushed = anyio.Event()  # the flusher has ended

    def post(self, message: dict[str, Any]) -> None:
        self.outbox.append(encode(message))
        self.wake.set()

    def begin_run(self, owner: ProcessExecutor) -> None:
        self.owner = owner
        self.load = 0
        self.ready = anyio.Event()
        self.ended = anyio.Event()
        self.startup_cpu_s = self.run_cpu_s = 0.0

    async def flush_forever(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake = anyio.Event()
                if self.outbox:
                    data = b"".join(self.outbox)
                    self.outbox.clear()
                    await self.process.stdin.send(data)
                if self.closing:
                    return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the child is gone: its reader reports it
        finally:
            self.flushed.set()

    async def read_forever(self) -> None:
        buffer = bytearray()
        try:
            while True:
                buffer += await self.process.stdout.receive(1 << 20)
                for message in decode_frames(buffer):
                    kind = message["t"]
                    if kind == "loaded":
                        self.cpu_s = float(message["cpu_s"])
                        self.loaded.set()
                    elif kind == "ready":
                        self.cpu_s = float(message["cpu_s"])
                        self.startup_cpu_s = self.cpu_s - self.accounted_cpu_s
                        self.ready.set()
                    elif kind == "ended":
                        self.run_cpu_s = float(message["cpu_s"]) - self.cpu_s
                        self.cpu_s = self.accounted_cpu_s = float(message["cpu_s"])
                        self.ended.set()
                    elif self.owner is not None:
                        self.owner._handle(self, message)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        self.gone = True
        for event in (self.loaded, self.ready, self.ended):
            event.set()
        owner = self.owner
        if owner is not None and not owner._closing:
            code = await self.process.wait()
            owner._fail_all(WorkerCrashedError(
                f"worker process {self.index} (pid {self.process.pid}) exited unexpectedly (code {code}); "
                "the tickets it held stay pending: re-run to resume"))

    async def stop(self) -> None:
        """Write what is queued, close stdin (the child exits), wait; kill it if slow."""
        self.closing = True
        self.wake.set()
        with anyio.move_on_after(5):
            await self.flushed.wait()
        try:
            await self.process.stdin.aclose()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        with anyio.move_on_after(10):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def _spawn(index: int, task_group: Any, max_connections: int | None) -> _Child:
    """Start `python -m batchrun.execution.executors.worker_child`; its reader and flusher run in `task_group`.

    litellm sizes its aiohttp pool from the environment when it is imported,
    and a child imports it at once, so the limits go in the child's environment."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root(), env.get("PYTHONPATH")]))
    size_connection_pool(env, max_connections)
    process = await anyio.open_process([sys.executable, "-m", "batchrun.execution.executors.worker_child"], stdin=-1, stdout=-1,
                                       stderr=None, env=env)
    child = _Child(index, process)
    task_group.start_soon(child.read_forever)
    task_group.start_soon(child.flush_forever)
    return child


class WorkerPool:
    """Worker processes kept from one run to the next in one event loop.

    `batchrun run` starts its workers per run (one run per process). `batchrun
    bench` runs a setting after another: with a pool its workers import
    litellm once, during the warm-up, and every setting reuses them, as the
    bare pattern reuses its process's litellm. A child that died is replaced.
    Open it with `open_worker_pool(max_connections)`.
    """

    def __init__(self, task_group: Any, max_connections: int | None) -> None:
        self._tg = task_group
        self.max_connections = max_connections  # the children's aiohttp pool size (see _spawn)
        self.idle: list[_Child] = []
        self._spawned = 0

    def fits(self, max_connections: int | None) -> bool:
        """Whether the children's connection pool is large enough for a run needing `max_connections`."""
        return (max_connections or 0) <= max(self.max_connections or 0, 500)

    async def _fill(self, n: int) -> None:
        """At least `n` idle children that have not died (new ones are still importing litellm)."""
        self.idle = [child for child in self.idle if not child.gone]
        while len(self.idle) < n:
            self.idle.append(await _spawn(self._spawned, self._tg, self.max_connections))
            self._spawned += 1

    async def warm(self, n: int, timeout: float = 120.0) -> None:
        """Have `n` idle children with litellm loaded."""
        await self._fill(n)
        with anyio.fail_after(timeout):
            for child in self.idle:
                await child.loaded.wait()
                if not child.accounted_cpu_s:  # never ran: its import is the warm-up's, not a run's
                    child.accounted_cpu_s = child.cpu_s

    async def take(self, n: int) -> list[_Child]:
        await self._fill(n)
        taken, self.idle = self.idle[:n], self.idle[n:]
        return taken

    def give_back(self, children: list[_Child]) -> None:
        for child in children:
            child.owner = None
            if child.gone or not child.ended.is_set():
                self._tg.start_soon(child.stop)  # crashed, or did not finish its run: not reused
            else:
                self.idle.append(child)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            children, self.idle = self.idle, []
            async with anyio.create_task_group() as tg:
                for child in children:
                    tg.start_soon(child.stop)


@contextlib.asynccontextmanager
async def open_worker_pool(max_connections: int | None = None) -> AsyncIterator[WorkerPool]:
    """A WorkerPool for the duration of the block; its children are stopped at the end."""
    async with anyio.create_task_group() as tg:
        pool = WorkerPool(tg, max_connections)
        try:
            yield pool
        finally:
            await pool.aclose()
            tg.cancel_scope.cancel()


class ProcessExecutor:
    """Hand tickets to `n` child processes; see the module docstring."""

    def __init__(self, n: int, job: JobSpec, provider_kwargs: dict[str, dict[str, Any]], hooks: AttemptHooks,
                 run_number: int, startup_timeout: float = 120.0, pool: WorkerPool | None = None) -> None:
        self.n = n
        self.job = job
        self.provider_kwargs = provider_kwargs
        self.hooks = hooks
        self.run_number = run_number
        self.startup_timeout = startup_timeout
        self.max_connections = max((kw.get("max_connections") or 0 for kw in provider_kwargs.values()),
                                   default=0) or None
        self.pool = pool if pool is not None and pool.fits(self.max_connections) else None
        self.children: list[_Child] = []
        self.pending: dict[str, PendingTicket] = {}
        self._tg: Any = None
        self._closing = False
        self.crashed: WorkerCrashedError | None = None
        self.counts_each_attempt = bool(job.rpm or job.tpm or any(m.rpm or m.tpm for m in job.models))

    @property
    def startup_cpu_s(self) -> float:
        """CPU seconds the children spent before this run's first ticket (litellm's import when they
        were started for it), as they reported it."""
        return sum(child.startup_cpu_s for child in self.children)

    @property
    def cpu_s(self) -> float:
        """CPU seconds the children spent on this run, start-up included, as they reported it
        (reused children are not in the OS's count of finished children, so this is the figure)."""
        return sum(child.startup_cpu_s + child.run_cpu_s for child in self.children)

    async def start(self, task_group: Any) -> None:
        """Spawn the children (or take them from the pool) and wait until each is ready."""
        self._tg = task_group
        init = {"t": "init", "job": self.job.model_dump(mode="json"), "provider": self.provider_kwargs,
                "run": self.run_number}
        if self.pool is not None:
            self.children = await self.pool.take(self.n)
        else:
            for index in range(self.n):
                self.children.append(await _spawn(index, task_group, self.max_connections))
        for child in self.children:
            child.begin_run(self)
            child.post(init)
        with anyio.fail_after(self.startup_timeout):
            for child in self.children:
                await child.ready.wait()
                if self.crashed is not None:
                    raise self.crashed.with_traceback(None)  # one task's frames, not every raiser's

    async def run(self, request: ChatRequest, chain: list[str], route: str | None = None) -> Outcome:
        if self.crashed is not None:
            raise self.crashed.with_traceback(None)  # one task's frames, not every raiser's
        child = min(self.children, key=lambda c: c.load)
        pending = PendingTicket(request)
        self.pending[request.ticket_id] = pending
        if not self.counts_each_attempt:  # the child asks no permit: journal the ticket before it can be sent
            self.hooks.journal_request(request.ticket_id, 1)
        child.load += 1
        try:
            child.post({"t": "ticket", "id": request.ticket_id, "messages": request.messages,
                        "timeout": request.timeout_s, "chain": chain, "route": route})
            await pending.done.wait()
        finally:
            child.load -= 1
            self.pending.pop(request.ticket_id, None)
        if pending.abandoned is not None:
            raise pending.abandoned
        if pending.outcome is None:
            crashed = self.crashed or WorkerCrashedError("a worker process ended without an outcome")
            raise crashed.with_traceback(None)
        return pending.outcome

    def _handle(self, child: _Child, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "outcome":
            outcome = outcome_from_wire(message["outcome"])
            pending = self.pending.get(outcome.ticket_id)
            if pending is not None:
                if not self.counts_each_attempt:  # the child sent no frame per attempt
                    for attempt in range(1, outcome.attempts + 1):
                        self.hooks.note_attempt(pending.request, attempt)
                pending.outcome = outcome
                pending.done.set()
        elif kind == "abandoned":
            pending = self.pending.get(message["id"])
            if pending is not None:
                attempts = int(message.get("attempts") or 0)
                if not self.counts_each_attempt:
                    for attempt in range(1, attempts + 1):
                        self.hooks.note_attempt(pending.request, attempt)
                pending.abandoned = TicketAbandoned(attempts)
                pending.done.set()
        elif kind == "want":
            self._tg.start_soon(self._grant, child, message)
        elif kind == "failed":
            pending = self.pending.get(message["id"])
            if pending is not None:
                error = error_from_wire(message["error"])
                self.hooks.attempt_failed(pending.request, message["attempt"], error)
                if isinstance(error, RateLimitedError) and error.retry_after and \
                        error.retry_after <= self.job.retry.max_retry_after_s:
                    self._broadcast({"t": "pause", "seconds": error.retry_after})
        elif kind == "succeeded":
            pending = self.pending.get(message["id"])
            if pending is not None:
                usage = message.get("usage")
                slim = Completion(text="", finish_reason=None, model=None,
                                  usage=Usage(**usage) if usage else None, cost_usd=None,
                                  cost_status="", rate_limit_headers=message.get("headers"))
                request = dataclasses.replace(pending.request, model_key=message.get("model"))
                self.hooks.attempt_succeeded(request, message["attempt"], slim, message["latency_ms"])

    def _fail_all(self, error: WorkerCrashedError) -> None:
        self.crashed = error
        for child in self.children:
            child.ready.set()
        for pending in list(self.pending.values()):
            pending.done.set()

    def _broadcast(self, message: dict[str, Any]) -> None:
        for child in self.children:
            child.post(message)

    async def _grant(self, child: _Child, message: dict[str, Any]) -> None:
        pending = self.pending.get(message["id"])
        if pending is None:
            return
        request = dataclasses.replace(pending.request, model_key=message.get("model"))
        try:
            await self.hooks.before_attempt(request, message["attempt"], tokens=message.get("tokens"))
        except TicketAbandoned:
            return  # halted: the child got "halt" and ends the ticket itself
        child.post({"t": "permit", "id": message["id"]})

    def halt(self) -> None:
        """A signal: every child stops starting requests (see RemoteHooks.halt_now)."""
        self._broadcast({"t": "halt"})

    async def aclose(self) -> None:
        """End the run in every child ("end": it cancels what it still holds and reports its CPU),
        then hand the children back to the pool, or stop them (stdin closed, killed if slow)."""
        self._closing = True
        with anyio.CancelScope(shield=True):
            for child in self.children:
                child.post({"t": "end"})
            for child in self.children:
                with anyio.move_on_after(10):
                    await child.ended.wait()
            if self.pool is not None:
                self.pool.give_back(self.children)
            else:
                async with anyio.create_task_group() as tg:
                    for child in self.children:
                        tg.start_soon(child.stop)
            # self.children stays: startup_cpu_s and cpu_s are read after the run


def package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
