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
    main()            child side: `python -m batchrun.workers`
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import resource
import signal
import struct
import sys
from typing import Any, AsyncIterator, Mapping

import anyio
import orjson

from batchrun.errors import BatchrunError, RateLimitedError, RequestError, RetryableError, TerminalError
from batchrun.provider import ChatRequest, Provider, size_connection_pool
from batchrun.limits import RequestGate
from batchrun.records import Completion, Outcome, ToolCall, Usage
from batchrun.spec import JobSpec
from batchrun.ticket_runner import AttemptHooks, TicketAbandoned, run_chain

__all__ = ["InlineExecutor", "ProcessExecutor", "WorkerCrashedError", "WorkerPool", "main", "open_worker_pool"]

_LEN = struct.Struct(">I")


class WorkerCrashedError(BatchrunError):
    """A worker process exited while the run needed it."""


def _wire_default(value: Any) -> Any:
    """orjson's fallback: any other Mapping (response headers) goes out as a plain object."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot send {type(value).__name__} to a worker process")


def encode(message: dict[str, Any]) -> bytes:
    """One frame. Records (Outcome, Completion, ...) may be passed as they are: orjson writes a
    dataclass as the object `dataclasses.asdict` would give, without asdict's deep copies."""
    body = orjson.dumps(message, default=_wire_default)
    return _LEN.pack(len(body)) + body


def decode_frames(buffer: bytearray) -> list[dict[str, Any]]:
    """Take every complete frame off the front of `buffer`; a partial one stays for the next read."""
    messages = []
    pos, end = 0, len(buffer)
    while end - pos >= 4:
        (length,) = _LEN.unpack_from(buffer, pos)
        if end - pos - 4 < length:
            break
        messages.append(orjson.loads(buffer[pos + 4:pos + 4 + length]))
        pos += 4 + length
    del buffer[:pos]
    return messages


def completion_from_wire(data: dict[str, Any]) -> Completion:
    data = dict(data)
    usage = data.pop("usage", None)
    tool_calls = tuple(ToolCall(**call) for call in data.pop("tool_calls", None) or ())
    return Completion(**data, usage=Usage(**usage) if usage else None, tool_calls=tool_calls)


def outcome_to_wire(outcome: Outcome) -> dict[str, Any]:
    """The wire form of an Outcome as a dict (`encode` writes the same for the record itself)."""
    return dataclasses.asdict(outcome)


def outcome_from_wire(data: dict[str, Any]) -> Outcome:
    data = dict(data)
    completion = data.pop("completion", None)
    return Outcome(**data, completion=completion_from_wire(completion) if completion else None)


def error_to_wire(error: RequestError) -> dict[str, Any]:
    return {"kind": error.kind, "message": error.message, "status_code": error.status_code,
            "retry_after": error.retry_after, "error_type": error.error_type, "retryable": error.retryable}


def error_from_wire(data: dict[str, Any]) -> RequestError:
    cls: type[RequestError]
    if data["kind"] == "rate_limited":
        cls = RateLimitedError
    else:
        cls = RetryableError if data.get("retryable") else TerminalError
    return cls(data["message"], kind=data["kind"], status_code=data.get("status_code"),
               retry_after=data.get("retry_after"), error_type=data.get("error_type"))


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


class _Pending:
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
    """Start `python -m batchrun.workers`; its reader and flusher run in `task_group`.

    litellm sizes its aiohttp pool from the environment when it is imported,
    and a child imports it at once, so the limits go in the child's environment."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH")]))
    size_connection_pool(env, max_connections)
    process = await anyio.open_process([sys.executable, "-m", "batchrun.workers"], stdin=-1, stdout=-1,
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
        self.pending: dict[str, _Pending] = {}
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
        pending = _Pending(request)
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
        """A signal: every child stops starting requests (see _RemoteHooks.halt_now)."""
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


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the child side ------------------------------------------------------------------


class _RemoteHooks:
    """AttemptHooks of a child: report to the coordinator (see the protocol)."""

    def __init__(self, send: Any, job: JobSpec, provider: Any) -> None:
        self.send = send
        self.provider = provider
        self.asks_permits = bool(job.rpm or job.tpm or any(m.rpm or m.tpm for m in job.models))
        self.counts_tokens = bool(job.tpm or any(m.tpm for m in job.models))
        self.reports_results = self.asks_permits or job.adaptive
        self.gate = RequestGate()  # the coordinator's pauses, mirrored
        self.permits: dict[str, anyio.Event] = {}
        self.tokens: dict[str, int] = {}
        self.halt = anyio.Event()  # the coordinator's "halt": no request starts any more
        self._waiting: set[anyio.CancelScope] = set()

    def halt_now(self) -> None:
        self.halt.set()
        for waiting in list(self._waiting):
            waiting.cancel()

    async def before_attempt(self, request: ChatRequest, attempt: int) -> None:
        if self.halt.is_set():
            raise TicketAbandoned()
        with anyio.CancelScope() as waiting:
            self._waiting.add(waiting)
            try:
                await self._wait_for_permit(request, attempt)
            finally:
                self._waiting.discard(waiting)
                self.permits.pop(request.ticket_id, None)
        if waiting.cancelled_caught or self.halt.is_set():
            raise TicketAbandoned()

    async def _wait_for_permit(self, request: ChatRequest, attempt: int) -> None:
        if not self.asks_permits:  # attempts are counted from the outcome: no frame per attempt
            await self.gate.wait_for_permit()
            return
        await self._ask_coordinator(request, attempt)

    async def _ask_coordinator(self, request: ChatRequest, attempt: int) -> None:
        """Send "want" and wait for the coordinator's "permit": it has counted and journaled the
        attempt (and held it to the limits) before this side may send it."""
        event = self.permits[request.ticket_id] = anyio.Event()
        self.send({"t": "want", "id": request.ticket_id, "attempt": attempt,
                   "tokens": self.estimated_tokens(request) if self.counts_tokens else None,
                   "model": request.model_key})
        await event.wait()

    def estimated_tokens(self, request: ChatRequest) -> int:
        """The ticket's prompt tokens as the provider estimates them, once per ticket (tpm jobs)."""
        if request.ticket_id not in self.tokens:
            self.tokens[request.ticket_id] = sum(self.provider.estimate_tokens(request))
        return self.tokens[request.ticket_id]

    def attempt_failed(self, request: ChatRequest, attempt: int, error: RequestError) -> None:
        self.send({"t": "failed", "id": request.ticket_id, "attempt": attempt, "error": error_to_wire(error)})

    def attempt_succeeded(self, request: ChatRequest, attempt: int, completion: Completion,
                          latency_ms: float) -> None:
        if self.reports_results:
            self.send({"t": "succeeded", "id": request.ticket_id, "model": request.model_key,
                       "attempt": attempt, "latency_ms": latency_ms, "usage": completion.usage,
                       "headers": dict(completion.rate_limit_headers or {}) or None})

    def finished(self, ticket_id: str) -> None:
        self.tokens.pop(ticket_id, None)

    def permit(self, ticket_id: str) -> None:
        event = self.permits.pop(ticket_id, None)
        if event is not None:
            event.set()



async def _child_main() -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    frames_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed by a library goes to stderr, never into the frame stream
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    write_transport, _ = await loop.connect_write_pipe(asyncio.Protocol, frames_out)

    outbox: list[bytes] = []

    def flush() -> None:
        data = b"".join(outbox)
        outbox.clear()
        if not write_transport.is_closing():
            write_transport.write(data)  # buffered by the transport if the pipe is full

    def send(message: dict[str, Any]) -> None:
        """Queue a frame; every frame queued in one turn of the loop leaves in one write.
        Never blocks: a child holds at most its tickets' frames (the coordinator bounds them)."""
        outbox.append(encode(message))
        if len(outbox) == 1:
            loop.call_soon(flush)

    inbox: collections.deque[dict[str, Any]] = collections.deque()  # frames read, not yet handled
    buffer = bytearray()

    async def receive() -> dict[str, Any] | None:
        """The next frame; None when stdin closed. One read takes every frame that has arrived."""
        while not inbox:
            chunk = await reader.read(1 << 20)
            if not chunk:
                return None
            buffer.extend(chunk)
            inbox.extend(decode_frames(buffer))
        return inbox.popleft()

    def cpu_now() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    from batchrun.provider import LiteLLMProvider, preload
    from batchrun.spec import PricesSpec

    preload()  # seconds: done once, before the first run (the pool sizes come from the environment)
    _relax_gc()
    send({"t": "loaded", "cpu_s": cpu_now()})  # cpu_s in loaded/ready/ended: the process's CPU so far
    while (init := await receive()) is not None:
        if init.get("t") != "init":
            continue  # a late frame of the run that ended
        job = JobSpec.model_validate(init["job"])
        providers = {}
        for key, kwargs in init["provider"].items():
            kwargs = dict(kwargs)
            if kwargs.get("prices") is not None:
                kwargs["prices"] = PricesSpec.model_validate(kwargs["prices"])
            providers[key] = LiteLLMProvider(**kwargs)
        send({"t": "ready", "cpu_s": cpu_now()})
        stdin_open = await _serve_run(job, providers, int(init["run"]), send, receive)
        for provider in providers.values():
            with anyio.CancelScope(shield=True):
                await provider.aclose()
        send({"t": "ended", "cpu_s": cpu_now()})
        if not stdin_open:
            break
    flush()


#: The collector's first-generation threshold in a worker process (Python's default: 700).
GC_GEN0_THRESHOLD = 50_000


def _relax_gc() -> None:
    """Keep the cyclic garbage collector out of the request path of a worker process.

    litellm's import leaves hundreds of thousands of long-lived objects, and
    each request allocates thousands more, so with Python's defaults the
    collector runs every 700 allocations and its older generations keep
    walking the import's objects. `gc.freeze()` moves everything alive after
    the import out of its reach (those objects live as long as the process
    anyway), and a first-generation threshold of 50,000 lets it run about 70
    times less often; cyclic garbage still goes, a little later. Measured
    (benchmarks/README.md): two workers, 128 in flight, 3,000 tickets, four
    alternating pairs: 226.6 -> 242.3 requests/s on average, every pair
    faster. Only worker processes and Ray actors (ray_engine.py) do this: they
    run nothing but requests.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


async def _serve_run(job: JobSpec, providers: dict[str, Any], run_number: int, send: Any, receive: Any,
                     hooks: _RemoteHooks | None = None) -> bool:
    """One run's tickets until "end" (True) or stdin closes (False: the coordinator is gone).
    `hooks`: another way to ask for permits (ray_engine's actors lease them from the cluster's limiter)."""
    if hooks is None:
        hooks = _RemoteHooks(send, job, next(iter(providers.values())))

    async def one(message: dict[str, Any]) -> None:
        request = ChatRequest(message["id"], message["messages"], float(message["timeout"]))
        try:
            outcome = await run_chain(request, providers, message["chain"], job, hooks, run_number,
                                      message["route"])
        except TicketAbandoned as halted:
            hooks.finished(request.ticket_id)
            send({"t": "abandoned", "id": request.ticket_id, "attempts": halted.attempts})
            return
        hooks.finished(request.ticket_id)
        send({"t": "outcome", "outcome": outcome})

    async with anyio.create_task_group() as tg:
        try:
            while (message := await receive()) is not None:
                kind = message["t"]
                if kind == "ticket":
                    tg.start_soon(one, message)
                elif kind == "permit":
                    hooks.permit(message["id"])
                elif kind == "pause":
                    hooks.gate.pause_all(float(message["seconds"]))
                elif kind == "halt":
                    hooks.halt_now()
                elif kind == "end":
                    return True
            return False
        finally:
            tg.cancel_scope.cancel()  # what is still in flight was given up by the coordinator


def main() -> None:
    """Entry point of a worker process (`python -m batchrun.workers`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    anyio.run(_child_main)


if __name__ == "__main__":
    main()
