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
stderr so a stray print cannot corrupt the stream).

    coordinator -> child                    child -> coordinator
    {"t": "init", job, provider, run}       {"t": "ready", cpu_s}   (provider: kwargs per model key;
                                                                 cpu_s: the child's start-up CPU)
    {"t": "ticket", id, messages, timeout,  {"t": "want", id, attempt, tokens}    (rpm/tpm jobs)
     chain, route}
    {"t": "permit", id}                     (other jobs: attempts counted from the outcome)
    {"t": "pause", seconds}                 {"t": "failed", id, attempt, error}
                                            {"t": "succeeded", id, attempt, latency_ms, usage, headers}
                                                                          (rate-limited or "auto" jobs)
                                            {"t": "outcome", outcome}

A job with rpm/tpm asks for a permit before every attempt, so the token
buckets stay shared and exact. Other jobs send three frames per ticket
(ticket, outcome, and a failure frame per failed attempt); a 429 with
Retry-After is broadcast as a pause to every child.

A child ignores SIGINT/SIGTERM (the coordinator decides about shutdown) and
exits when its stdin closes, so a coordinator killed with SIGKILL takes its
children with it. A child that dies unexpectedly fails the run with a clear
message; the run resumes like any other.

    ProcessExecutor   coordinator side: start(), run(request) -> Outcome, aclose()
    InlineExecutor    the same interface without processes (workers = 1)
    main()            child side: `python -m batchrun.workers`
"""

from __future__ import annotations

import dataclasses
import os
import resource
import signal
import struct
import sys
from typing import Any, Mapping

import anyio
import orjson

from batchrun.errors import BatchrunError, RateLimitedError, RequestError, RetryableError, TerminalError
from batchrun.provider import ChatRequest, Provider
from batchrun.limits import RequestGate
from batchrun.records import Completion, Outcome, ToolCall, Usage
from batchrun.spec import JobSpec
from batchrun.ticket_runner import AttemptHooks, run_chain

__all__ = ["InlineExecutor", "ProcessExecutor", "WorkerCrashedError", "main"]

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
        messages.append(orjson.loads(bytes(buffer[pos + 4:pos + 4 + length])))
        pos += 4 + length
    del buffer[:pos]
    return messages


def completion_to_wire(completion: Completion) -> dict[str, Any]:
    return dataclasses.asdict(completion)


def completion_from_wire(data: dict[str, Any]) -> Completion:
    data = dict(data)
    usage = data.pop("usage", None)
    tool_calls = tuple(ToolCall(**call) for call in data.pop("tool_calls", None) or ())
    return Completion(**data, usage=Usage(**usage) if usage else None, tool_calls=tool_calls)


def outcome_to_wire(outcome: Outcome) -> dict[str, Any]:
    data = dataclasses.asdict(outcome)
    if outcome.completion is not None:
        data["completion"] = completion_to_wire(outcome.completion)
    return data


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

    async def aclose(self) -> None:
        return None  # the provider belongs to whoever passed it in


class _Pending:
    __slots__ = ("request", "done", "outcome")

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self.done = anyio.Event()
        self.outcome: Outcome | None = None


class _Child:
    """One worker process, seen from the coordinator.

    Frames to the child are queued with `post` (never blocks) and written by
    the child's flusher task: every frame posted in one turn of the event loop
    leaves in one write, so the child wakes once for a wave of tickets.
    """

    def __init__(self, index: int, process: Any) -> None:
        self.index = index
        self.process = process
        self.load = 0  # tickets this child holds
        self.ready = anyio.Event()
        self.startup_cpu_s = 0.0  # CPU the child spent before "ready" (mostly litellm's import)
        self.outbox: list[bytes] = []  # encoded frames not yet written
        self.wake = anyio.Event()  # set when the outbox has something (or on close)
        self.closing = False  # the flusher writes what is left, then ends
        self.flushed = anyio.Event()  # the flusher has ended

    def post(self, message: dict[str, Any]) -> None:
        self.outbox.append(encode(message))
        self.wake.set()

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


class ProcessExecutor:
    """Hand tickets to `n` child processes; see the module docstring."""

    def __init__(self, n: int, job: JobSpec, provider_kwargs: dict[str, dict[str, Any]], hooks: AttemptHooks,
                 run_number: int, startup_timeout: float = 120.0) -> None:
        self.n = n
        self.job = job
        self.provider_kwargs = provider_kwargs
        self.hooks = hooks
        self.run_number = run_number
        self.startup_timeout = startup_timeout
        self.children: list[_Child] = []
        self.pending: dict[str, _Pending] = {}
        self._tg: Any = None
        self._closing = False
        self.crashed: WorkerCrashedError | None = None
        self.counts_each_attempt = bool(job.rpm or job.tpm or any(m.rpm or m.tpm for m in job.models))

    @property
    def startup_cpu_s(self) -> float:
        """CPU seconds the children spent starting (importing litellm), as they reported it."""
        return sum(child.startup_cpu_s for child in self.children)

    async def start(self, task_group: Any) -> None:
        """Spawn the children in `task_group` and wait until each has loaded litellm."""
        self._tg = task_group
        init = {"t": "init", "job": self.job.model_dump(mode="json"), "provider": self.provider_kwargs,
                "run": self.run_number}
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH")]))
        for index in range(self.n):
            process = await anyio.open_process(
                [sys.executable, "-m", "batchrun.workers"], stdin=-1, stdout=-1, stderr=None, env=env)
            child = _Child(index, process)
            self.children.append(child)
            task_group.start_soon(self._read, child)
            task_group.start_soon(child.flush_forever)
            child.post(init)
        with anyio.fail_after(self.startup_timeout):
            for child in self.children:
                await child.ready.wait()
                if self.crashed is not None:
                    raise self.crashed

    async def run(self, request: ChatRequest, chain: list[str], route: str | None = None) -> Outcome:
        if self.crashed is not None:
            raise self.crashed
        child = min(self.children, key=lambda c: c.load)
        pending = _Pending(request)
        self.pending[request.ticket_id] = pending
        child.load += 1
        try:
            child.post({"t": "ticket", "id": request.ticket_id, "messages": request.messages,
                        "timeout": request.timeout_s, "chain": chain, "route": route})
            await pending.done.wait()
        finally:
            child.load -= 1
            self.pending.pop(request.ticket_id, None)
        if pending.outcome is None:
            raise self.crashed or WorkerCrashedError("a worker process ended without an outcome")
        return pending.outcome

    async def _read(self, child: _Child) -> None:
        buffer = bytearray()
        try:
            while True:
                buffer += await child.process.stdout.receive(1 << 20)
                for message in decode_frames(buffer):
                    self._handle(child, message)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        if not self._closing:
            code = await child.process.wait()
            self._fail_all(WorkerCrashedError(
                f"worker process {child.index} (pid {child.process.pid}) exited unexpectedly (code {code}); "
                "the tickets it held stay pending: re-run to resume"))

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
        elif kind == "ready":
            child.startup_cpu_s = float(message.get("cpu_s") or 0.0)
            child.ready.set()

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
        await self.hooks.before_attempt(request, message["attempt"], tokens=message.get("tokens"))
        child.post({"t": "permit", "id": message["id"]})

    async def aclose(self) -> None:
        """Close every child's stdin (they exit), then wait; kill the slow ones."""
        self._closing = True
        with anyio.CancelScope(shield=True):
            for child in self.children:
                child.closing = True
                child.wake.set()
            for child in self.children:
                with anyio.move_on_after(5):
                    await child.flushed.wait()
                try:
                    await child.process.stdin.aclose()
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass
            for child in self.children:
                with anyio.move_on_after(10):
                    await child.process.wait()
                if child.process.returncode is None:
                    child.process.kill()
                    await child.process.wait()
            self.children.clear()


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

    async def before_attempt(self, request: ChatRequest, attempt: int) -> None:
        if not self.asks_permits:  # attempts are counted from the outcome: no frame per attempt
            await self.gate.wait_for_permit()
            return
        tokens = None
        if self.counts_tokens:
            if request.ticket_id not in self.tokens:
                self.tokens[request.ticket_id] = sum(self.provider.estimate_tokens(request))
            tokens = self.tokens[request.ticket_id]
        event = self.permits[request.ticket_id] = anyio.Event()
        self.send({"t": "want", "id": request.ticket_id, "attempt": attempt, "tokens": tokens,
                         "model": request.model_key})
        await event.wait()

    def attempt_failed(self, request: ChatRequest, attempt: int, error: RequestError) -> None:
        self.send({"t": "failed", "id": request.ticket_id, "attempt": attempt, "error": error_to_wire(error)})

    def attempt_succeeded(self, request: ChatRequest, attempt: int, completion: Completion,
                          latency_ms: float) -> None:
        if self.reports_results:
            usage = completion.usage
            self.send({"t": "succeeded", "id": request.ticket_id, "model": request.model_key,
                         "attempt": attempt, "latency_ms": latency_ms,
                         "usage": usage,
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

    async def receive() -> dict[str, Any] | None:
        try:
            (length,) = _LEN.unpack(await reader.readexactly(4))
            return orjson.loads(await reader.readexactly(length))
        except asyncio.IncompleteReadError:
            return None

    init = await receive()
    if init is None or init.get("t") != "init":
        return
    from batchrun.provider import LiteLLMProvider
    from batchrun.spec import PricesSpec

    job = JobSpec.model_validate(init["job"])
    providers = {}
    for key, kwargs in init["provider"].items():
        kwargs = dict(kwargs)
        if kwargs.get("prices") is not None:
            kwargs["prices"] = PricesSpec.model_validate(kwargs["prices"])
        providers[key] = LiteLLMProvider(**kwargs)
    run_number = int(init["run"])
    hooks = _RemoteHooks(send, job, next(iter(providers.values())))

    async def one(message: dict[str, Any]) -> None:
        request = ChatRequest(message["id"], message["messages"], float(message["timeout"]))
        outcome = await run_chain(request, providers, message["chain"], job, hooks, run_number, message["route"])
        hooks.finished(request.ticket_id)
        send({"t": "outcome", "outcome": outcome})

    async with anyio.create_task_group() as tg:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        send({"t": "ready", "cpu_s": usage.ru_utime + usage.ru_stime})
        while (message := await receive()) is not None:
            if message["t"] == "ticket":
                tg.start_soon(one, message)
            elif message["t"] == "permit":
                hooks.permit(message["id"])
            elif message["t"] == "pause":
                hooks.gate.pause_all(float(message["seconds"]))
        tg.cancel_scope.cancel()  # stdin closed: the coordinator is gone or done


def main() -> None:
    """Entry point of a worker process (`python -m batchrun.workers`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    anyio.run(_child_main)


if __name__ == "__main__":
    main()
