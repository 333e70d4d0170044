"""ProcessExecutor: the same tickets in several worker processes on this machine, one run.

litellm spends several milliseconds of CPU per request, so one process tops
out far below what a provider allows. With `workers = N` the coordinator keeps
the producer, every limit, the counts and the single writer, and hands tickets
to N child processes (`python -m batchrun.execution.executors.worker_child`),
each with its own event loop and litellm. The frames (frames.py) that come back
are handled by RemoteTickets (remote.py), as for Ray actors: a job with rpm/tpm
asks for a permit before every attempt, so the buckets stay shared and exact;
other jobs send two frames per ticket and one per failed attempt, and a 429's
Retry-After is sent to every child as a pause.

A child that dies unexpectedly fails the run with a clear message; the run
resumes like any other. A coordinator killed with SIGKILL takes its children
with it (they exit when their stdin closes).

    ProcessExecutor    the Executor (seam.py) over worker processes
    WorkerPool         children kept from run to run in one event loop
                       (`open_worker_pool`; batchrun bench): litellm imported
                       once, a dead child replaced
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import AsyncIterator, Mapping, Sequence

import anyio
import anyio.abc

from batchrun.execution.executors.frames import Frame, decode_frames, encode
from batchrun.execution.executors.remote import Counting, RemoteTickets
from batchrun.execution.executors.seam import (
    CoordinatorHooks,
    ExecutorFigures,
    WorkerCrashedError,
)
from batchrun.job.spec import JobSpec
from batchrun.providers.litellm_setup import size_connection_pool
from batchrun.providers.online import ProviderArgs
from batchrun.providers.seam import ChatRequest
from batchrun.records import Outcome


class _Child:
    """One worker process, seen from the coordinator.

    Its reader task routes frames to the executor that currently owns it
    (`owner`; a pooled child has none between runs). Frames to the child are
    queued with `post` (never blocks) and written by its flusher task: every
    frame posted in one turn of the event loop leaves in one write, so the
    child wakes once for a wave of tickets.
    """

    def __init__(self, index: int, process: anyio.abc.Process) -> None:
        assert process.stdin is not None and process.stdout is not None, "started with pipes (_spawn)"
        self.index = index
        self.process = process
        self.stdin: anyio.abc.ByteSendStream = process.stdin
        self.stdout: anyio.abc.ByteReceiveStream = process.stdout
        self.owner: ProcessExecutor | None = None
        self.load = 0  # tickets this child holds
        self.peak_load = 0
        self.held: set[str] = set()  # the tickets it holds (RemoteTickets keeps these for every Link)
        self.in_flight: set[str] = set()
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

    def post(self, frame: Frame) -> None:
        self.outbox.append(encode(frame))
        self.wake.set()

    def begin_run(self, owner: ProcessExecutor) -> None:
        self.owner = owner
        self.load = self.peak_load = 0
        self.held.clear()
        self.in_flight.clear()
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
                    await self.stdin.send(data)
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
                buffer += await self.stdout.receive(1 << 20)
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
                        self.owner.frame_from(self, message)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        self.gone = True
        for event in (self.loaded, self.ready, self.ended):
            event.set()
        owner = self.owner
        if owner is not None and not owner.closing:
            code = await self.process.wait()
            owner.child_died(self, WorkerCrashedError(
                f"worker process {self.index} (pid {self.process.pid}) exited unexpectedly (code {code}); "
                "the tickets it held stay pending: re-run to resume"))

    async def stop(self) -> None:
        """Write what is queued, close stdin (the child exits), wait; kill it if slow."""
        self.closing = True
        self.wake.set()
        with anyio.move_on_after(5):
            await self.flushed.wait()
        try:
            await self.stdin.aclose()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        with anyio.move_on_after(10):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def _spawn(index: int, task_group: anyio.abc.TaskGroup, max_connections: int | None) -> _Child:
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

    def __init__(self, task_group: anyio.abc.TaskGroup, max_connections: int | None) -> None:
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
    """Hand tickets to `n` child processes; see the module docstring. The frames that come back are
    handled by RemoteTickets (remote.py), as for Ray actors."""

    def __init__(self, n: int, job: JobSpec, provider_kwargs: Mapping[str, ProviderArgs],
                 hooks: CoordinatorHooks, run_number: int, startup_timeout: float = 120.0,
                 pool: WorkerPool | None = None) -> None:
        self.n = n
        self.job = job
        self.provider_kwargs = {key: kwargs.copy() for key, kwargs in provider_kwargs.items()}
        self.run_number = run_number
        self.startup_timeout = startup_timeout
        self.max_connections = max((kw.get("max_connections") or 0 for kw in provider_kwargs.values()),
                                   default=0) or None
        self.pool = pool if pool is not None and pool.fits(self.max_connections) else None
        self.children: list[_Child] = []
        self.closing = False
        # a job with rpm/tpm or a budget asks for a permit before every attempt, so the buckets and
        # the budget stay shared and exact; other jobs send two frames per ticket (and one per failed attempt)
        counting = Counting.EACH_PERMIT if job.has_rate_limits or job.max_cost_usd is not None else Counting.AT_OUTCOME
        self.tickets = RemoteTickets(job, hooks, counting, requeue_when_lost=False, on_pause=self._pause_all)

    def figures(self) -> ExecutorFigures:
        """CPU the children spent before this run's first ticket (litellm's import when they were
        started for it) and on the whole run, as they reported it (reused children are not in the
        OS's count of finished children, so this is the figure)."""
        return ExecutorFigures(startup_cpu_s=sum(child.startup_cpu_s for child in self.children),
                               cpu_s=sum(child.startup_cpu_s + child.run_cpu_s for child in self.children))

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Spawn the children (or take them from the pool) and wait until each is ready."""
        self.tickets.start(task_group)
        init = {"t": "init", "job": self.job.model_dump(mode="json"), "provider": self.provider_kwargs,
                "run": self.run_number, "counting": self.tickets.counting.value,
                "reports_results": self.job.has_rate_limits or self.job.adaptive,
                "reports_answers": self.job.max_cost_usd is not None}
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
                self.tickets._raise_crashed()

    async def run(self, request: ChatRequest, chain: Sequence[str], route: str | None = None) -> Outcome:
        return await self.tickets.run(self.children, request, chain, route)

    def frame_from(self, child: _Child, frame: Frame) -> None:
        self.tickets.handle(child, frame)

    def child_died(self, child: _Child, error: WorkerCrashedError) -> None:
        """A child exited while the run needed it: the run fails (the tickets it held stay pending)."""
        self.tickets.link_lost(child)
        self.tickets.fail_all(error)
        for each in self.children:
            each.ready.set()

    def _pause_all(self, seconds: float) -> None:
        for child in self.children:
            child.post({"t": "pause", "seconds": seconds})

    def halt(self) -> None:
        """A signal: every child stops starting requests (see RemoteHooks.halt_now)."""
        for child in self.children:
            child.post({"t": "halt"})

    async def aclose(self) -> None:
        """End the run in every child ("end": it cancels what it still holds and reports its CPU),
        then hand the children back to the pool, or stop them (stdin closed, killed if slow)."""
        self.closing = True
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
            # self.children stays: figures() reads their CPU after the run


def package_root() -> str:
    """The folder holding the batchrun package (a child's PYTHONPATH starts with it)."""
    return str(Path(__file__).resolve().parents[3])
