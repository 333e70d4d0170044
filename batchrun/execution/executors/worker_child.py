"""TODO: from batchrun.workers."""

from __future__ import annotations

import collections
import os
import resource
import signal
import sys
from typing import Any

import anyio

from batchrun.errors import RequestError
from batchrun.execution.executors.frames import decode_frames, encode, error_to_wire
from batchrun.execution.limits import RequestGate
from batchrun.execution.ticket_runner import TicketAbandoned, run_chain
from batchrun.job.spec import JobSpec
from batchrun.providers.seam import ChatRequest
from batchrun.records import Completion

# -- the child side ------------------------------------------------------------------


class RemoteHooks:
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



async def child_main() -> None:
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

    from batchrun.job.sections import PricesSpec
    from batchrun.providers.litellm_setup import preload
    from batchrun.providers.online import LiteLLMProvider

    preload()  # seconds: done once, before the first run (the pool sizes come from the environment)
    relax_gc()
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
        stdin_open = await serve_run(job, providers, int(init["run"]), send, receive)
        for provider in providers.values():
            with anyio.CancelScope(shield=True):
                await provider.aclose()
        send({"t": "ended", "cpu_s": cpu_now()})
        if not stdin_open:
            break
    flush()


#: The collector's first-generation threshold in a worker process (Python's default: 700).
GC_GEN0_THRESHOLD = 50_000


def relax_gc() -> None:
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


async def serve_run(job: JobSpec, providers: dict[str, Any], run_number: int, send: Any, receive: Any,
                     hooks: RemoteHooks | None = None) -> bool:
    """One run's tickets until "end" (True) or stdin closes (False: the coordinator is gone).
    `hooks`: another way to ask for permits (ray_engine's actors lease them from the cluster's limiter)."""
    if hooks is None:
        hooks = RemoteHooks(send, job, next(iter(providers.values())))

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
    anyio.run(child_main)


if __name__ == "__main__":
    main()
