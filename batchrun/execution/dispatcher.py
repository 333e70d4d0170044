"""The dispatcher: the tasks that move one online run's tickets, bounded by the concurrency.

    producer ──tickets (buffer = concurrency)──> N workers ──outcomes──> writer
      reads the input lazily,        each: the budget's        the only task that
      only the lines the scan        reservation, single       appends checkpoint
      chose (not done, not           flight, executor.run()    lines; then counts
      skipped, not bad)              (one ticket at a time)    them and the progress

Memory is bounded by the concurrency: the producer blocks when the ticket
buffer is full, and no coroutine exists per ticket. Each worker holds at most
one outcome and the outcome buffer has a place for each, so a finished
request is never lost to a cancelled send. Signals: the first SIGINT/SIGTERM
stops dispatch and halts requests (coordinator.py), in-flight requests get
`grace_s`, a second signal (or the end of the grace) cancels them.

Single flight (`cache = true`): a worker whose request (same model chain, same
messages) is already in flight waits for that outcome instead of sending it
again; a success is recorded for it as a reused answer (a cache hit, 0
attempts, cost 0, `cost_saved_usd`), after a failure it asks for itself.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import anyio
import orjson
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batchrun.analysis.stats import format_progress_line
from batchrun.errors import BatchrunError, CheckpointError, JobSpecError
from batchrun.execution.coordinator import Coordinator
from batchrun.execution.executors.seam import (
    Executor,
    ExecutorFigures,
    WorkerCrashedError,
)
from batchrun.execution.ticket_runner import TicketAbandoned, utc_now
from batchrun.job.templates import render_messages
from batchrun.job.tickets import read_tickets
from batchrun.providers.seam import ChatRequest
from batchrun.records import Outcome, Ticket

console = logging.getLogger("batchrun.console")  # what a person sees on stderr (run_logging.py)

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["Dispatcher"]

WRITER_SYNC_S = 1.0  # the writer fsyncs at most this often (and at the end)


class _Flight:
    """A request in flight with `cache = true`: identical ones wait for its outcome."""

    __slots__ = ("key", "done", "outcome")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.done = anyio.Event()
        self.outcome: Outcome | None = None


def _flight_key(chain: list[str], request: ChatRequest) -> bytes:
    """Identical requests of one run: the same model chain and messages (the job's params, schema
    and tools are the same for all its requests)."""
    return hashlib.sha256(orjson.dumps([chain, request.messages])).digest()


def _shared_answer(leader: Outcome, ticket_id: str, run_number: int, route: str | None,
                   waited_ms: float) -> Outcome:
    """The outcome of a ticket that waited for an identical request in flight: its answer,
    reused (a cache hit, 0 attempts, cost 0, cost_saved_usd what the answer cost)."""
    c = leader.completion
    assert c is not None
    saved = c.cost_saved_usd if c.cache_hit else c.cost_usd
    now = utc_now()
    return Outcome(
        ticket_id=ticket_id, attempts=0, started_at=now, finished_at=now, elapsed_ms=waited_ms, run=run_number,
        completion=replace(c, cost_usd=0.0, cost_status="cache_hit", cache_hit=True, cost_saved_usd=saved,
                           ttft_ms=None, rate_limit_headers=None, cost_source="cache", upstream_attempts=None),
        latency_ms=0.0, structured=leader.structured, model_key=leader.model_key, route=route,
    )


class Dispatcher:
    """The tasks of one online run (module docstring); `run()` returns when they are all done."""

    def __init__(self, coordinator: Coordinator, executor: Executor, *, grace_s: float, progress: bool,
                 progress_every: float | None) -> None:
        self.co = coordinator
        self.job = coordinator.job
        self.executor = executor
        coordinator.on_halt.append(executor.halt)  # a halt stops the executor's workers too
        self.grace_s = grace_s
        self.flights: dict[bytes, _Flight] = {}  # cache = true: requests in flight by _flight_key
        self.writer_done = anyio.Event()
        self.bar: tqdm | None = None
        if progress:
            from tqdm.auto import tqdm  # a notebook's widget, else the terminal's bar

            self.bar = tqdm(total=coordinator.prep.to_do, unit="ticket", dynamic_ncols=True, file=sys.stderr,
                            mininterval=0.25)
        self.progress_every = progress_every or None  # with a bar too: the log file gets the lines
        self._last_bar = 0.0
        self.figures = ExecutorFigures()

    # -- tasks --------------------------------------------------------------------

    async def producer(self, send: MemoryObjectSendStream[Ticket]) -> None:
        async with send:
            with self.co.producer_scope:
                prep = self.co.prep
                for ticket in read_tickets(self.job.input, self.job.id_field, only_lines=prep.scan.dispatch,
                                           max_line_bytes=self.job.max_line_bytes, input_format=self.job.input_format):
                    try:
                        await send.send(ticket)
                    except anyio.BrokenResourceError:
                        # every worker stopped before this send could see the cancellation (a crash,
                        # a halt): the run is stopping, and the reason is theirs to report
                        return

    async def worker(self, tickets: MemoryObjectReceiveStream[Ticket], outcomes: MemoryObjectSendStream[Outcome]) -> None:
        async with tickets, outcomes:
            async for ticket in tickets:
                if self.co.stopping:
                    break
                try:
                    messages = render_messages(self.job, ticket)
                except Exception as exc:  # the API's prompt callable raised, or answered something else
                    self.co.fail(exc if isinstance(exc, BatchrunError) else JobSpecError(
                        f"the prompt callable raised {type(exc).__name__} for ticket {ticket.id!r}: {exc}"))
                    break
                request = ChatRequest(ticket.id, messages, self.job.timeout_s)
                chain, route = [""], None
                if self.job.routes:
                    name, route = self.job.route(ticket.fields)
                    chain = self.job.fallback_chain(name)
                flight: _Flight | None = None
                if self.job.cache:  # single flight: an identical request in flight is not sent again
                    key = _flight_key(chain, request)
                    leader = self.flights.get(key)
                    if leader is not None:
                        t0 = time.monotonic()
                        await leader.done.wait()
                        if leader.outcome is not None and leader.outcome.ok:
                            self.co.stats.in_flight += 1
                            await outcomes.send(_shared_answer(leader.outcome, ticket.id, self.co.prep.run_number,
                                                               route, (time.monotonic() - t0) * 1000.0))
                            continue
                        if self.co.stopping:
                            break
                        # the other ticket failed (errors are never shared): this one asks for itself
                    else:
                        flight = self.flights[key] = _Flight(key)
                try:
                    carry_on = await self._dispatch(request, chain, route, outcomes, flight)
                finally:
                    if flight is not None:  # also when cancelled: waiters then ask for themselves
                        self.flights.pop(flight.key, None)
                        flight.done.set()
                if not carry_on:
                    break

    async def _dispatch(self, request: ChatRequest, chain: list[str], route: str | None,
                        outcomes: MemoryObjectSendStream[Outcome], flight: _Flight | None) -> bool:
        """One ticket: the budget, the executor, the outcome to the writer. False: this worker stops."""
        co = self.co
        reserved = await co.admit(request, chain)
        if reserved is None:
            return False
        co.stats.in_flight += 1
        if co.stats.first_dispatch is None:
            co.stats.first_dispatch = time.monotonic()
        try:
            if co.slots is not None:
                async with co.slots:
                    outcome = await self.executor.run(request, chain, route)
            else:
                outcome = await self.executor.run(request, chain, route)
        except TicketAbandoned:  # halted before its next request: the ticket stays pending
            co.stats.in_flight -= 1
            co.settle(request.ticket_id, None)
            return False
        except WorkerCrashedError as exc:  # the ticket stays pending; the run stops
            co.stats.in_flight -= 1
            co.settle(request.ticket_id, None)
            co.fail(exc)
            return False
        except BaseException:  # cancelled mid-request: the ticket stays pending
            co.stats.in_flight -= 1
            raise
        co.settle(request.ticket_id, outcome)
        co.check_fail_fast(outcome)
        if flight is not None:
            flight.outcome = outcome
        await outcomes.send(outcome)
        return True

    async def write_outcomes(self, outcomes: MemoryObjectReceiveStream[Outcome]) -> None:
        """The single writer: batches of outcomes to disk, then their counts."""
        co = self.co
        last_sync = time.monotonic()
        try:
            async with outcomes:
                async for first in outcomes:
                    batch = [first]
                    while True:
                        try:
                            batch.append(outcomes.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    written = await co.writer.write_batch(batch)
                    co.stats.in_flight -= len(batch)
                    for outcome in written:
                        co.account(outcome)
                    self.update_bar()
                    if time.monotonic() - last_sync > WRITER_SYNC_S:
                        await co.writer.sync()
                        last_sync = time.monotonic()
        except CheckpointError as exc:
            for outcome in getattr(exc, "written", ()):  # lines that made it whole before the disk filled
                co.account(outcome)
            co.fail(exc)
        finally:
            self.writer_done.set()

    def update_bar(self, force: bool = False) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        stats = self.co.stats
        self.bar.n = stats.done + stats.failed
        if force or now - self._last_bar >= 0.25:
            self._last_bar = now
            self.bar.set_postfix_str(
                f"failed={stats.failed} req/s={stats.attempts / stats.wall_s:.1f} ${stats.cost_usd:.4f}",
                refresh=False)
            self.bar.refresh()

    def close_bar(self) -> None:
        if self.bar is not None:
            self.update_bar(force=True)
            self.bar.close()

    async def print_progress_lines(self, every_s: float) -> None:
        """Without a terminal (cron, a log file): one plain line on stderr every `every_s`."""
        while True:
            await anyio.sleep(every_s)
            console.info("%s", format_progress_line(self.co.stats), extra={"progress": True})

    async def watch_signals(self, tg: anyio.abc.TaskGroup, *,
                            task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        co = self.co
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if co.signal_number is None:
                    co.signal_number = int(signum)
                    co.stopping = False  # a signal wins over an earlier stop reason
                    co.stop("signal")
                    co.halt_requests()  # and the executor's (on_halt)
                    console.warning("%s: no new requests; waiting up to %g s for %d in flight (signal again "
                                    "to stop now)", signal.Signals(signum).name, self.grace_s, co.stats.in_flight)
                    tg.start_soon(self._grace_timer)
                elif co.work_scope is not None:
                    co.work_scope.cancel()

    async def _grace_timer(self) -> None:
        await anyio.sleep(self.grace_s)
        if self.co.work_scope is not None:
            self.co.work_scope.cancel()

    async def run(self) -> None:
        """Open the writer and the journal, start the executor, run the tasks, close the executor."""
        co = self.co
        await co.writer.open()
        try:
            co.journal.open()
        except (OSError, CheckpointError) as exc:
            raise CheckpointError(f"{co.journal.path}: cannot open the in-flight journal: {exc}") from None
        co.open_limiters()
        n_workers = min(self.job.max_in_flight, max(co.prep.to_do, 1))
        tickets_send, tickets_recv = anyio.create_memory_object_stream[Ticket](self.job.max_in_flight)
        outcomes_send, outcomes_recv = anyio.create_memory_object_stream[Outcome](n_workers)
        async with anyio.create_task_group() as outer:
            outer.start_soon(self.write_outcomes, outcomes_recv)
            if self.progress_every:
                outer.start_soon(self.print_progress_lines, self.progress_every)
            await outer.start(self.watch_signals, outer)
            try:
                await self.executor.start(outer)
            except BaseException as exc:
                outcomes_send.close()
                tickets_send.close()
                with anyio.CancelScope(shield=True):
                    await self.executor.aclose()
                if not isinstance(exc, BatchrunError):
                    raise
                # (no Ray there, a worker that cannot start): execute_run raises it as it is, not
                # wrapped in this task group's ExceptionGroup
                co.fatal = exc
                outer.cancel_scope.cancel()
                return
            self.co.stats.worker_startup_cpu_s = self.executor.figures().startup_cpu_s
            async with anyio.create_task_group() as work:
                co.work_scope = work.cancel_scope
                work.start_soon(self.producer, tickets_send)
                for _ in range(n_workers):
                    work.start_soon(self.worker, tickets_recv.clone(), outcomes_send.clone())
                tickets_recv.close()
                outcomes_send.close()
            with anyio.CancelScope(shield=True):
                await self.writer_done.wait()
                await self.executor.aclose()
                self.figures = self.executor.figures()
                co.stats.worker_cpu_s = self.figures.cpu_s
                co.stats.cluster = self.figures.cluster
            outer.cancel_scope.cancel()
