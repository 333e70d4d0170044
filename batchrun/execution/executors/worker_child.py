"""The other side of the worker protocol: one run's tickets in a worker process or a Ray actor.

    RemoteHooks     the ticket runner's AttemptHooks over there: asks the
                    coordinator's permit ("want"/"permit") when the run's
                    Counting says so, mirrors its pauses and halt, reports
                    failed attempts, answers and outcomes as frames; a Lease
                    (Ray's cluster limiter) is asked first when there is one
    serve_run()     one run's tickets until "end"
    child_main()    a worker process's loop: litellm loaded once, then one run
                    after another (`python -m batchrun.execution.executors.worker_child`)
    relax_gc()      the garbage collector kept out of the request path

Frames: frames.py; the coordinator's side: remote.py. A worker process
ignores SIGINT/SIGTERM (the coordinator decides about shutdown) and exits
when its stdin closes, so a coordinator killed with SIGKILL takes its
children with it.
"""

from __future__ import annotations

import collections
import os
import resource
import signal
import sys
from typing import Awaitable, Callable, Mapping, Protocol

import anyio

from batchrun.errors import RateLimitedError, RequestError
from batchrun.execution.executors.frames import (
    Frame,
    decode_frames,
    encode,
    error_from_wire,
    error_to_wire,
)
from batchrun.execution.executors.remote import Counting
from batchrun.execution.limits import RequestGate
from batchrun.execution.ticket_runner import TicketAbandoned, run_chain
from batchrun.job.spec import JobSpec
from batchrun.providers.seam import ChatRequest, Provider
from batchrun.records import Completion

__all__ = ["GC_GEN0_THRESHOLD", "Lease", "RemoteHooks", "child_main", "main", "relax_gc", "serve_run"]

Send = Callable[[Frame], None]
Receive = Callable[[], Awaitable[Frame | None]]


class Lease(Protocol):
    """Rate permits held outside the coordinator (Ray: the cluster's limiter actor)."""

    def limits(self, request: ChatRequest) -> bool:
        """Whether the request's model has rpm/tpm to lease."""
        ...

    async def acquire(self, request: ChatRequest, tokens: int) -> None:
        """A permit for one request of `tokens` prompt tokens; TicketAbandoned when none can come."""
        ...

    def paused(self, seconds: float) -> None:
        """A 429 asked for a pause: tell everyone else who sends."""
        ...

    def correct(self, request: ChatRequest, estimated: int, actual: int) -> None:
        """The provider counted `actual` tokens where `estimated` were leased."""
        ...


class RemoteHooks:
    """AttemptHooks of a ticket run away from its coordinator (module docstring)."""

    def __init__(self, send: Send, job: JobSpec, provider: Provider, *, counting: Counting,
                 reports_results: bool, lease: Lease | None = None, reports_answers: bool = False) -> None:
        self.send = send
        self.reports_answers = reports_answers  # "answered" frames: the coordinator holds a budget
        self.denied: dict[str, Frame] = {}  # tickets whose next attempt the budget refused (a "deny")
        self.provider = provider  # prompt-token estimates (tpm)
        self.counting = counting
        self.counts_tokens = job.counts_tokens
        self.reports_results = reports_results  # "succeeded" frames: the coordinator holds limits or AIMD
        self.lease = lease
        self.max_retry_after_s = job.retry.max_retry_after_s
        self.gate = RequestGate()  # the coordinator's pauses, mirrored
        self.permits: dict[str, anyio.Event] = {}
        self.tokens: dict[str, int] = {}
        # tickets whose first attempt the coordinator counted when it handed them over: no "want" for it
        self.prepermitted: set[str] = set()
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
        if self.lease is not None:  # the 429 pause, then a rate permit from outside (Ray's limiter)
            await self.gate.wait_for_permit()
            if self.lease.limits(request):
                await self.lease.acquire(request, self.estimated_tokens(request) if self.counts_tokens else 0)
                await self.gate.wait_for_permit()  # a pause that came while the lease was under way
        if attempt == 1 and request.ticket_id in self.prepermitted:
            self.prepermitted.discard(request.ticket_id)  # counted at hand-over: it may leave now
            return
        if self.counting is Counting.AT_OUTCOME:  # counted from the outcome: no frame per attempt
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
        refusal = self.denied.pop(request.ticket_id, None)
        if refusal is not None:  # the budget refused it: the ticket ends as failed (kind "budget")
            raise error_from_wire(refusal)

    def estimated_tokens(self, request: ChatRequest) -> int:
        """The ticket's prompt tokens as the provider estimates them, once per ticket (tpm jobs)."""
        if request.ticket_id not in self.tokens:
            self.tokens[request.ticket_id] = sum(self.provider.estimate_tokens(request))
        return self.tokens[request.ticket_id]

    def attempt_failed(self, request: ChatRequest, attempt: int, error: RequestError) -> None:
        self.send({"t": "failed", "id": request.ticket_id, "attempt": attempt, "error": error_to_wire(error)})
        if error.kind == "budget_exceeded":  # the endpoint's budget is spent: halt here at once, not
            self.halt_now()                  # a frame later (the coordinator halts every other worker)
        if (self.lease is not None and isinstance(error, RateLimitedError) and error.retry_after
                and error.retry_after <= self.max_retry_after_s):
            self.gate.pause_all(error.retry_after)
            self.lease.paused(error.retry_after)

    def attempt_answered(self, request: ChatRequest, attempt: int, completion: Completion) -> None:
        if self.reports_answers:
            self.send({"t": "answered", "id": request.ticket_id, "model": request.model_key, "attempt": attempt,
                       "cost": completion.cost_usd, "usage": completion.usage, "source": completion.usage_source})

    def attempt_succeeded(self, request: ChatRequest, attempt: int, completion: Completion,
                          latency_ms: float) -> None:
        if self.reports_results:
            self.send({"t": "succeeded", "id": request.ticket_id, "model": request.model_key,
                       "attempt": attempt, "latency_ms": latency_ms, "usage": completion.usage,
                       "headers": dict(completion.rate_limit_headers or {}) or None})
        if (self.lease is not None and self.counts_tokens and completion.usage is not None
                and request.ticket_id in self.tokens):
            self.lease.correct(request, self.tokens[request.ticket_id], completion.usage.total_tokens)

    def handed_over(self, frame: Frame) -> None:
        """A "ticket" frame arrived; "counted": its first attempt needs no "want"."""
        if frame.get("counted"):
            self.prepermitted.add(frame["id"])

    def finished(self, ticket_id: str) -> None:
        self.tokens.pop(ticket_id, None)
        if ticket_id in self.prepermitted:  # counted at hand-over, never sent (a cache hit, a halt)
            self.prepermitted.discard(ticket_id)
            self.send({"t": "unsent", "id": ticket_id})

    def permit(self, ticket_id: str) -> None:
        event = self.permits.pop(ticket_id, None)
        if event is not None:
            event.set()

    def deny(self, ticket_id: str, error: Frame) -> None:
        """The coordinator refused the attempt (the budget): it raises `error` instead of sending."""
        if ticket_id in self.permits:
            self.denied[ticket_id] = error
            self.permit(ticket_id)


def hooks_for(init: Frame, send: Send, job: JobSpec, providers: Mapping[str, Provider],
              lease: Lease | None = None) -> RemoteHooks:
    """The RemoteHooks an "init" frame asks for."""
    return RemoteHooks(send, job, next(iter(providers.values())), counting=Counting(init["counting"]),
                       reports_results=bool(init["reports_results"]), lease=lease,
                       reports_answers=bool(init.get("reports_answers")))


def providers_from(init: Frame) -> dict[str, Provider]:
    """One LiteLLMProvider per model key, from an "init" frame's provider arguments."""
    from batchrun.job.sections import PricesSpec
    from batchrun.providers.online import LiteLLMProvider

    providers: dict[str, Provider] = {}
    for key, kwargs in init["provider"].items():
        kwargs = dict(kwargs)
        if kwargs.get("prices") is not None:
            kwargs["prices"] = PricesSpec.model_validate(kwargs["prices"])
        providers[key] = LiteLLMProvider(**kwargs)
    return providers


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

    def send(message: Frame) -> None:
        """Queue a frame; every frame queued in one turn of the loop leaves in one write.
        Never blocks: a child holds at most its tickets' frames (the coordinator bounds them)."""
        outbox.append(encode(message))
        if len(outbox) == 1:
            loop.call_soon(flush)

    inbox: collections.deque[Frame] = collections.deque()  # frames read, not yet handled
    buffer = bytearray()

    async def receive() -> Frame | None:
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

    from batchrun.providers.litellm_setup import preload

    preload()  # seconds: done once, before the first run (the pool sizes come from the environment)
    relax_gc()
    send({"t": "loaded", "cpu_s": cpu_now()})  # cpu_s in loaded/ready/ended: the process's CPU so far
    while (init := await receive()) is not None:
        if init.get("t") != "init":
            continue  # a late frame of the run that ended
        job = JobSpec.model_validate(init["job"])
        providers = providers_from(init)
        send({"t": "ready", "cpu_s": cpu_now()})
        stdin_open = await serve_run(job, providers, int(init["run"]), send, receive,
                                     hooks_for(init, send, job, providers))
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
    faster. Only worker processes and Ray actors (ray_actors.py) do this: they
    run nothing but requests.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


async def serve_run(job: JobSpec, providers: Mapping[str, Provider], run_number: int, send: Send,
                    receive: Receive, hooks: RemoteHooks) -> bool:
    """One run's tickets until "end" (True) or the frames stop (False: the coordinator is gone)."""

    async def one(message: Frame) -> None:
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
                    hooks.handed_over(message)
                    tg.start_soon(one, message)
                elif kind == "permit":
                    hooks.permit(message["id"])
                elif kind == "deny":
                    hooks.deny(message["id"], message["error"])
                elif kind == "pause":
                    hooks.gate.pause_all(float(message["seconds"]))
                elif kind == "halt":
                    hooks.halt_now()
                elif kind == "end":
                    return True
            return False
        finally:
            tg.cancel_scope.cancel()  # what is still in flight was given up by the coordinator
    return False  # only when the task group's own scope swallowed a cancellation (None before: as falsy)


def main() -> None:
    """Entry point of a worker process (`python -m batchrun.execution.executors.worker_child`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    anyio.run(child_main)


if __name__ == "__main__":
    main()
