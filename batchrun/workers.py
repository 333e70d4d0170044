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
from typing import Any

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


def encode(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message)
    return _LEN.pack(len(body)) + body


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
    def __init__(self, index: int, process: Any) -> None:
        self.index = index
        self.process = process
        self.load = 0  # tickets this child holds
        self.send_lock = anyio.Lock()
        self.ready = anyio.Event()
        self.startup_cpu_s = 0.0  # CPU the child spent before "ready" (mostly litellm's import)

    async def send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.process.stdin.send(encode(message))


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
            await child.send(init)
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
            await child.send({"t": "ticket", "id": request.ticket_id, "messages": request.messages,
                              "timeout": request.timeout_s, "chain": chain, "route": route})
            await pending.done.wait()
        finally:
            child.load -= 1
            self.pending.pop(request.ticket_id, None)
        if pending.outcome is None:
            raise self.crashed or WorkerCrashedError("a worker process ended without an outcome")
        return pending.outcome

    async def _read(self, child: _Child) -> None:
        from anyio.streams.buffered import BufferedByteReceiveStream

        stream = BufferedByteReceiveStream(child.process.stdout)
        try:
            while True:
                (length,) = _LEN.unpack(await stream.receive_exactly(4))
                message = orjson.loads(await stream.receive_exactly(length))
                kind = message["t"]
                if kind == "want":
                    self._tg.start_soon(self._grant, child, message)
                elif kind == "failed":
                    pending = self.pending.get(message["id"])
                    if pending is not None:
                        error = error_from_wire(message["error"])
                        self.hooks.attempt_failed(pending.request, message["attempt"], error)
                        if isinstance(error, RateLimitedError) and error.retry_after and \
                                error.retry_after <= self.job.retry.max_retry_after_s:
                            self._tg.start_soon(self._broadcast, {"t": "pause", "seconds": error.retry_after})
                elif kind == "succeeded":
                    pending = self.pending.get(message["id"])
                    if pending is not None:
                        usage = message.get("usage")
                        slim = Completion(text="", finish_reason=None, model=None,
                                          usage=Usage(**usage) if usage else None, cost_usd=None,
                                          cost_status="", rate_limit_headers=message.get("headers"))
                        request = dataclasses.replace(pending.request, model_key=message.get("model"))
                        self.hooks.attempt_succeeded(request, message["attempt"], slim, message["latency_ms"])
                elif kind == "outcome":
                    outcome = outcome_from_wire(message["outcome"])
                    pending = self.pending.get(outcome.ticket_id)
                    if pending is not None:
                        if not self.counts_each_attempt:  # the child sent no frame per attempt
                            for attempt in range(1, outcome.attempts + 1):
                                self.hooks.note_attempt(pending.request, attempt)
                        pending.outcome = outcome
                        pending.done.set()
                elif kind == "ready":
                    child.startup_cpu_s = float(message.get("cpu_s") or 0.0)
                    child.ready.set()
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        if not self._closing:
            code = await child.process.wait()
            self._fail_all(WorkerCrashedError(
                f"worker process {child.index} (pid {child.process.pid}) exited unexpectedly (code {code}); "
                "the tickets it held stay pending: re-run to resume"))

    def _fail_all(self, error: WorkerCrashedError) -> None:
        self.crashed = error
        for child in self.children:
            child.ready.set()
        for pending in list(self.pending.values()):
            pending.done.set()

    async def _broadcast(self, message: dict[str, Any]) -> None:
        for child in self.children:
            try:
                await child.send(message)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async def _grant(self, child: _Child, message: dict[str, Any]) -> None:
        pending = self.pending.get(message["id"])
        if pending is None:
            return
        request = dataclasses.replace(pending.request, model_key=message.get("model"))
        await self.hooks.before_attempt(request, message["attempt"], tokens=message.get("tokens"))
        try:
            await child.send({"t": "permit", "id": message["id"]})
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def aclose(self) -> None:
        """Close every child's stdin (they exit), then wait; kill the slow ones."""
        self._closing = True
        with anyio.CancelScope(shield=True):
            for child in self.children:
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
        await self.send({"t": "want", "id": request.ticket_id, "attempt": attempt, "tokens": tokens,
                         "model": request.model_key})
        await event.wait()

    def attempt_failed(self, request: ChatRequest, attempt: int, error: RequestError) -> None:
        self._later({"t": "failed", "id": request.ticket_id, "attempt": attempt, "error": error_to_wire(error)})

    def attempt_succeeded(self, request: ChatRequest, attempt: int, completion: Completion,
                          latency_ms: float) -> None:
        if self.reports_results:
            usage = completion.usage
            self._later({"t": "succeeded", "id": request.ticket_id, "model": request.model_key,
                         "attempt": attempt, "latency_ms": latency_ms,
                         "usage": dataclasses.asdict(usage) if usage else None,
                         "headers": dict(completion.rate_limit_headers or {}) or None})

    def finished(self, ticket_id: str) -> None:
        self.tokens.pop(ticket_id, None)

    def permit(self, ticket_id: str) -> None:
        event = self.permits.pop(ticket_id, None)
        if event is not None:
            event.set()

    def _later(self, message: dict[str, Any]) -> None:
        self.task_group.start_soon(self.send, message)


async def _child_main() -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    frames_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed by a library goes to stderr, never into the frame stream
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    write_transport, write_protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, frames_out)
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)

    async def send(message: dict[str, Any]) -> None:
        writer.write(encode(message))
        await writer.drain()

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
        await send({"t": "outcome", "outcome": outcome_to_wire(outcome)})

    async with anyio.create_task_group() as tg:
        hooks.task_group = tg
        usage = resource.getrusage(resource.RUSAGE_SELF)
        await send({"t": "ready", "cpu_s": usage.ru_utime + usage.ru_stime})
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
