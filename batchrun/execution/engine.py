"""The engine: one run of a job over its tickets, resumable, bounded.

Two phases:

    prepare_run(job, ...)  -> PreparedRun       (synchronous, no network)
        opens and locks the run directory, cuts torn checkpoint lines, checks
        the whole input in one pass (every bad line is reported before any
        request), refuses to resume a run directory made by a different job,
        input or endpoint (unless force), and counts what is left to do.

    await execute_run(prepared, provider, ...) -> RunResult
        the async run. Inside one anyio task group:

        producer ──tickets (buffer = concurrency)──> N workers ──outcomes──> writer
          reads the input lazily,        each: render messages,        the only task that
          skips ids already done         retry loop (ticket_runner),   appends checkpoint
          (and failed ones with          one attempt at a time under   lines; updates stats
          skip_failed)                   the RequestGate (limits.py)   and the progress bar
                                                                       after each write

        Memory is bounded by the concurrency: the producer blocks when the
        ticket buffer is full, and no coroutine exists per ticket.

Stopping early. Four things stop dispatch (the producer is cancelled and
queued tickets are left for the next run) while in-flight requests finish
and are written:
  * the first SIGINT/SIGTERM also halts requests (`halt_requests`): no
    request starts any more, not even a retry; tickets sleeping in backoff
    or waiting for the shared 429 pause or a rate limit end at once without
    an outcome (ticket_runner.TicketAbandoned: nothing recorded, they run on
    resume), so the run ends as soon as the requests really in flight are
    answered; those get `grace_s`, then are cancelled (a second signal
    cancels at once); state "interrupted", exit 128 + signal number;
  * `fail_fast_after` tickets in a row ending in 401/403/404 (a bad key or
    model name must not burn through a million tickets), or
    `fail_fast_same_error_after` tickets in a row ending in the same
    non-retryable error, class and message (a LiteLLM proxy answers a bad key
    or model with a 400 such as "Invalid model name"): state "failed", exit 4;
  * `max_cost_usd`: the next ticket's estimated cost would pass the budget
    (spent on disk + reserved for in-flight + estimate): state
    "budget_exhausted", exit 5;
  * a checkpoint write error (full disk, ...): state "failed", exit 1, the
    summary and the file's last good line named. No ticket is ever counted
    done without its line on disk.

In-flight journal (checkpoint.InflightJournal): before each request is sent,
`before_attempt` appends (id, attempt, run) to inflight.jsonl; with worker
processes that do not ask for a permit per attempt, the coordinator writes
the entry when it hands the ticket over, before the child can send it (its
retries are covered by that entry). Outcome lines clear entries; a run
that starts with open entries (the last one died with requests in flight)
says how many tickets may be billed twice, and their lines carry
`maybe_billed_before: true`.
Files are flushed and fsynced and the manifest written in a shielded scope.
Every stopped run resumes with the same command.

The response cache (`cache = true`): a worker whose request (same model
chain, same messages) is already in flight in this run waits for that
request's outcome instead of sending it again (single flight, keyed by a
hash of the request, in the coordinator, so it holds with worker processes
too); a success is recorded for it as a reused answer (`cache_hit`, 0
attempts, cost 0, `cost_saved_usd`); after a failure it asks for itself.
Answers stored by earlier runs are looked up by the provider
(ticket_runner.py), before the ticket's first attempt.

The retry loop around each ticket's attempts is ticket_runner.py (with the
tenacity policy from retrying.py); `coordinator_needs_provider` decides
whether this process needs providers of its own when worker processes send
the requests (`batchrun run` and `batchrun bench` both ask it).

Bad input: with on_bad_input = "fail" (default) prepare_run reports every
bad line and nothing is sent; with "skip" the bad lines go to rejects.jsonl
(file, line, reason), the producer passes over them, and the summary counts
them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from typing import Any, Mapping

import anyio
import orjson
from anyio.abc import TaskStatus

from batchrun import __version__
from batchrun.analysis.stats import RunStats, format_progress_line
from batchrun.errors import (
    BatchrunError,
    CheckpointError,
    ExitCode,
    RateLimitedError,
    RequestError,
)
from batchrun.execution.executors.inline import InlineExecutor
from batchrun.execution.executors.process import (
    ProcessExecutor,
    WorkerCrashedError,
    WorkerPool,
)
from batchrun.execution.limits import (
    AdaptiveConcurrency,
    CostBudget,
    RateLimiter,
    RequestGate,
    parse_rate_limit_headers,
)
from batchrun.execution.preparation import PreparedRun
from batchrun.execution.result import RunResult
from batchrun.execution.ticket_runner import TicketAbandoned, utc_now
from batchrun.job.input_formats import input_format_of
from batchrun.job.spec import JobSpec
from batchrun.job.templates import render_messages
from batchrun.job.tickets import read_tickets
from batchrun.providers.litellm_setup import litellm_version
from batchrun.providers.seam import ChatRequest, Provider
from batchrun.records import Completion, Outcome, Ticket
from batchrun.rundir.checkpoint import (
    CheckpointWriter,
)
from batchrun.rundir.journal import InflightJournal
from batchrun.rundir.manifest import write_manifest

MAX_HISTORY = 100  # runs remembered in manifest.json
FAIL_FAST_KINDS = frozenset({"auth", "permission", "not_found"})
# Kinds that never count toward the same-error streak: retried ones (an outage passes) and the
# verdicts on an answer (they are about one ticket's answer, not about the endpoint).
_NOT_ENDPOINT_KINDS = frozenset({"rate_limited", "timeout", "connection", "server_error", "stream_cut",
                                 "invalid_output", "truncated", "content_filter"})
log = logging.getLogger("batchrun")


def _manifest(prep: PreparedRun, stats: RunStats, failed_ids: set[str], state: str, started_at: str,
              finished_at: str | None, error: str | None) -> dict[str, Any]:
    done_total = len(prep.checkpoint.done_ids)
    summary = stats.summary()
    history = list(prep.manifest.get("history") or [])
    entry = {
        "run": prep.run_number, "state": state, "started_at": started_at, "finished_at": finished_at,
        "done": stats.done, "failed": stats.failed, "requests": stats.attempts,
        "cost_usd": summary["cost_usd"],
    }
    history = [h for h in history if h.get("run") != prep.run_number][-(MAX_HISTORY - 1):] + [entry]
    return {
        "batchrun_version": __version__,
        "litellm_version": litellm_version(),
        "job": {
            "name": prep.job.name,
            "path": str(prep.job_path) if prep.job_path else None,
            "fingerprint": prep.job.fingerprint(),
            "fingerprint_sha256": prep.job.fingerprint_hash(),
        },
        "input": {"path": str(prep.scan.path), "size": prep.scan.size, "sha256": prep.scan.sha256,
                  "tickets": prep.scan.tickets, "format": input_format_of(prep.scan.path, prep.job.input_format)},
        "endpoint": prep.endpoint,
        "limit": prep.limit,
        "run": prep.run_number,
        "pid": os.getpid(),
        "state": state,
        "started_at": started_at,
        "finished_at": finished_at,
        "error": error,
        "counts": {
            "tickets": prep.scan.tickets,
            "done": done_total,
            "failed": len(failed_ids),
            "rejected_lines": prep.scan.problem_count,
        },
        "max_cost_usd": prep.max_cost_usd,
        "summary": summary,
        "history": history,
    }


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
                           ttft_ms=None, rate_limit_headers=None),
        latency_ms=0.0, structured=leader.structured, model_key=leader.model_key, route=route,
    )


build_manifest = _manifest  # the manifest of a run (batch mode writes the same one)


class _Run:
    """State of one execute_run call (kept off the module level)."""

    def __init__(self, prep: PreparedRun, provider: Provider | Mapping[str, Provider] | None, *, grace_s: float,
                 progress: bool, workers: int = 1, provider_kwargs: dict[str, Any] | None = None,
                 worker_pool: WorkerPool | None = None, progress_every: float | None = None,
                 engine: str = "local", ray_address: str | None = None) -> None:
        self.prep = prep
        self.job = prep.job
        # one provider per model key: "" for a single-model job, [[models]] names for a routed one
        providers = dict(provider) if isinstance(provider, Mapping) else ({"": provider} if provider else {})
        self.providers = providers
        self.provider = next(iter(providers.values()), None)  # cost and token estimates
        self.on_ray = engine == "ray"
        if engine == "ray":  # actors on a Ray cluster (ray_engine.py); workers None: one per cluster CPU
            from batchrun.execution.executors.ray_actors import RayExecutor

            if provider_kwargs is None:
                raise ValueError("engine \"ray\" needs provider_kwargs to build a provider in each actor")
            if "model" in provider_kwargs:
                provider_kwargs = {"": provider_kwargs}
            self.executor = RayExecutor(workers or None, self.job, provider_kwargs, self, prep.run_number,
                                        address=ray_address)
        elif workers > 1:
            if provider_kwargs is None:
                raise ValueError("workers > 1 needs provider_kwargs to build a provider in each process")
            if "model" in provider_kwargs:  # one model's kwargs
                provider_kwargs = {"": provider_kwargs}
            self.executor: Any = ProcessExecutor(workers, self.job, provider_kwargs, self, prep.run_number,
                                                 pool=worker_pool)
        else:
            if not providers:
                raise ValueError("workers = 1 needs a provider")
            self.executor = InlineExecutor(providers, self.job, self, prep.run_number)
        self.grace_s = grace_s
        self.stats = RunStats(tickets_total=prep.tickets_total, already_done=prep.already_done,
                              skipped_failed=prep.skipped_failed, to_do=prep.to_do,
                              rejected_lines=prep.scan.problem_count)
        self.stats.maybe_billed_ids = sorted(prep.checkpoint.maybe_billed)
        self.gate = RequestGate()
        self.writer = CheckpointWriter(prep.run_dir, prep.checkpoint.done_ids, prep.checkpoint.maybe_billed)
        self.journal = InflightJournal(prep.run_dir, prep.run_number)
        self.failed_ids = set(prep.checkpoint.failed_ids)  # latest outcome a failure
        self.budget = (CostBudget(prep.max_cost_usd, prep.checkpoint.spent_usd)
                       if prep.max_cost_usd is not None else None)
        self.rate_limiter: RateLimiter | None = None  # made in run(): it needs the event loop's clock
        self.model_limiters: dict[str, RateLimiter] = {}  # routed jobs: [[models]] entries with rpm/tpm
        self.estimated_tokens: dict[str, int] = {}  # ticket id -> tokens reserved per attempt (tpm)
        self.aimd = (AdaptiveConcurrency(self.job.min_concurrency, self.job.max_concurrency,
                                         start=min(self.job.max_concurrency, max(self.job.min_concurrency, 4)))
                     if self.job.adaptive else None)
        self.slots = anyio.CapacityLimiter(self.aimd.limit) if self.aimd is not None else None
        self.flights: dict[bytes, _Flight] = {}  # cache = true: requests in flight by _flight_key
        self.stopping = False  # no new ticket starts once this is set
        self.halt = anyio.Event()  # a signal: no request starts at all; tickets waiting to retry end
        self._waiting: set[anyio.CancelScope] = set()  # attempts waiting for a permit (cancelled by a halt)
        self.stop_reason: str | None = None  # "signal", "fail_fast", "budget" or "checkpoint"
        self.signal_number: int | None = None
        self.fatal: BaseException | None = None  # a checkpoint error: raised after cleanup
        self.abort_message: str | None = None  # why fail-fast or the budget stopped the run
        self.fail_fast_streak = 0  # tickets in a row ending in 401/403/404
        self.same_error: tuple[str | None, str | None] | None = None  # (type, message) of the last failure
        self.same_error_streak = 0  # tickets in a row ending in that same non-retryable error
        self.producer_scope = anyio.CancelScope()
        self.work_scope: anyio.CancelScope | None = None
        self.writer_done = anyio.Event()
        self.bar = _progress_bar(prep.to_do) if progress else None
        self.progress_every = progress_every if progress_every and not progress else None
        self._last_bar = 0.0

    # -- tasks --------------------------------------------------------------------

    async def producer(self, send: Any) -> None:
        async with send:
            with self.producer_scope:
                # the scan already chose the lines to send (limit, done, skipped failures, bad lines):
                # the rest are passed over unparsed
                for ticket in read_tickets(self.job.input, self.job.id_field, only_lines=self.prep.scan.dispatch,
                                           max_line_bytes=self.job.max_line_bytes, input_format=self.job.input_format):
                    try:
                        await send.send(ticket)
                    except anyio.BrokenResourceError:
                        # every worker stopped before this send could see the cancellation (a crash,
                        # a halt): the run is stopping, and the reason is theirs to report
                        return

    async def worker(self, tickets: Any, outcomes: Any) -> None:
        async with tickets, outcomes:
            async for ticket in tickets:
                if self.stopping:
                    break
                request = ChatRequest(ticket.id, render_messages(self.job, ticket), self.job.timeout_s)
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
                            self.stats.in_flight += 1
                            await outcomes.send(_shared_answer(leader.outcome, ticket.id, self.prep.run_number,
                                                               route, (time.monotonic() - t0) * 1000.0))
                            continue
                        if self.stopping:
                            break
                        # the other ticket failed (errors are never shared): this one asks for itself
                    else:
                        flight = self.flights[key] = _Flight(key)
                try:
                    carry_on = await self._dispatch(ticket, request, chain, route, outcomes, flight)
                finally:
                    if flight is not None:  # also when cancelled: waiters then ask for themselves
                        self.flights.pop(flight.key, None)
                        flight.done.set()
                if not carry_on:
                    break

    async def _dispatch(self, ticket: Ticket, request: ChatRequest, chain: list[str], route: str | None,
                        outcomes: Any, flight: "_Flight | None") -> bool:
        """One ticket: the budget, the executor, the outcome to the writer. False: this worker stops."""
        reserved = 0.0
        if self.budget is not None:
            estimate = self.provider.estimate_cost(request) if self.provider is not None else None
            admitted = self.budget.try_reserve(estimate)
            if admitted is None:
                self.stop("budget", (
                    f"budget reached: ${self.budget.spent:.6f} spent (all runs) + "
                    f"${self.budget.reserved:.6f} reserved for requests in flight + about "
                    f"${estimate or self.budget.mean_cost or 0:.6f} for the next ticket would pass "
                    f"max_cost_usd = ${self.budget.max_usd:g}; re-run with a larger budget to continue"))
                return False
            reserved = admitted
        self.stats.in_flight += 1
        if self.stats.first_dispatch is None:
            self.stats.first_dispatch = time.monotonic()
        try:
            if self.slots is not None:
                async with self.slots:
                    outcome = await self.executor.run(request, chain, route)
            else:
                outcome = await self.executor.run(request, chain, route)
        except TicketAbandoned:  # halted before its next request: the ticket stays pending
            self.stats.in_flight -= 1
            self.estimated_tokens.pop(ticket.id, None)
            if self.budget is not None:
                self.budget.settle(reserved, 0.0)
            return False
        except WorkerCrashedError as exc:  # the ticket stays pending; the run stops
            self.stats.in_flight -= 1
            if self.fatal is None:
                self.fatal = exc
                self.stop("crash")
                if self.work_scope is not None:
                    self.work_scope.cancel()
            return False
        except BaseException:  # cancelled mid-request: the ticket stays pending
            self.stats.in_flight -= 1
            raise
        self.estimated_tokens.pop(ticket.id, None)
        if self.budget is not None:
            self.budget.settle(reserved, outcome.spent_usd)
        self.check_fail_fast(outcome)
        if flight is not None:
            flight.outcome = outcome
        await outcomes.send(outcome)
        return True

    def check_fail_fast(self, outcome: Outcome) -> None:
        """Count, as tickets finish, those in a row ending in 401/403/404 (`fail_fast_after`) and
        those in a row ending in the same non-retryable error, class and message
        (`fail_fast_same_error_after`: a proxy answers a bad key or model with a 400)."""
        if outcome.ok:
            self.fail_fast_streak = self.same_error_streak = 0
            self.same_error = None
            return
        self.fail_fast_streak = self.fail_fast_streak + 1 if outcome.error_kind in FAIL_FAST_KINDS else 0
        key = (outcome.error_type, outcome.error_message)
        if outcome.error_kind in _NOT_ENDPOINT_KINDS:
            self.same_error, self.same_error_streak = None, 0
        elif key == self.same_error:
            self.same_error_streak += 1
        else:
            self.same_error, self.same_error_streak = key, 1
        hint = (f"-- check {f'the key in ${self.job.api_key_env}, ' if self.job.api_key_env else 'the API key, '}"
                "the model name and api_base; nothing more is sent. Re-run the same command to resume.")
        status = f" (HTTP {outcome.status_code})" if outcome.status_code else ""
        if self.fail_fast_streak >= self.job.fail_fast_after:
            self.stop("fail_fast", (
                f"stopping: {self.fail_fast_streak} tickets in a row failed with "
                f"{outcome.error_kind}{status}: {outcome.error_message} {hint}"))
        elif self.same_error_streak >= self.job.fail_fast_same_error_after:
            self.stop("fail_fast", (
                f"stopping: {self.same_error_streak} tickets in a row failed with the same error, "
                f"{outcome.error_kind}{status} {outcome.error_type}: {outcome.error_message} "
                f"(fail_fast_same_error_after = {self.job.fail_fast_same_error_after}) {hint}"))

    def stop(self, reason: str, message: str | None = None) -> None:
        """Stop dispatching: no new ticket starts; in-flight ones finish."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_reason = reason
        self.abort_message = message
        self.producer_scope.cancel()
        if message:
            log.warning("%s", message)
            print(f"\nbatchrun: {message}", file=sys.stderr, flush=True)

    # -- AttemptHooks: how a ticket's attempts report to this run ---------------------

    def note_attempt(self, request: ChatRequest, attempt: int) -> None:
        self.stats.attempts += 1
        if attempt > 1:
            self.stats.retries += 1

    async def before_attempt(self, request: ChatRequest, attempt: int, tokens: int | None = None) -> None:
        """Wait for the shared pause and the rate limits, then count the attempt. After a halt
        (a signal) no attempt starts: TicketAbandoned, also for one waiting here."""
        await self.wait_for_attempt(request, attempt, tokens)
        self.count_attempt(request, attempt)

    async def wait_for_attempt(self, request: ChatRequest, attempt: int, tokens: int | None = None) -> None:
        """before_attempt's waiting half (the pause, the rate limits, a halt): nothing counted yet."""
        if self.halt.is_set():
            raise TicketAbandoned()
        with anyio.CancelScope() as waiting:
            self._waiting.add(waiting)
            try:
                await self.gate.wait_for_permit()
                limiter = self._limiter(request)
                if limiter is not None:
                    if limiter.tokens is not None:
                        if tokens is None:
                            tokens = self.estimated_tokens.get(request.ticket_id)
                        provider = self.providers.get(request.model_key or "", self.provider)
                        if tokens is None and provider is not None and hasattr(provider, "estimate_tokens"):
                            tokens = sum(provider.estimate_tokens(request))
                        self.estimated_tokens[request.ticket_id] = tokens or 0
                    await limiter.acquire(tokens or 0)
            finally:
                self._waiting.discard(waiting)
        if waiting.cancelled_caught or self.halt.is_set():
            raise TicketAbandoned()

    def count_attempt(self, request: ChatRequest, attempt: int) -> None:
        """before_attempt's counting half: the journal entry (before the request can leave), the count."""
        self.journal_request(request.ticket_id, attempt)
        self.note_attempt(request, attempt)

    def uncount_attempt(self, request: ChatRequest, attempt: int) -> None:
        """An attempt counted ahead (a Ray actor's first, at hand-over) that was never sent: out of the
        count, and out of the journal (so the next run does not name the ticket as possibly billed)."""
        self.stats.attempts -= 1
        if attempt > 1:
            self.stats.retries -= 1
        try:
            self.journal.note_unsent(request.ticket_id, attempt)
        except OSError:
            pass  # the entry stays: the journal only ever over-reports

    def mark_maybe_billed(self, ticket_id: str) -> None:
        """A request for this ticket was in flight where its answer was lost (a Ray actor died): the
        ticket is sent again, and its line says maybe_billed_before."""
        self.writer.mark_maybe_billed(ticket_id)

    def journal_request(self, ticket_id: str, attempt: int) -> None:
        """Write the journal entry before the request is sent; if it cannot be written, nothing is
        sent and the run stops (TicketAbandoned for this ticket)."""
        try:
            self.journal.note(ticket_id, attempt)
        except OSError as exc:
            if self.fatal is None:
                self.fatal = CheckpointError(f"{self.journal.path}: cannot write the in-flight journal: "
                                             f"{exc.strerror}; nothing more is sent")
                self.stop("checkpoint")
                if self.work_scope is not None:
                    self.work_scope.cancel()
            raise TicketAbandoned() from None

    def halt_requests(self) -> None:
        """The first signal: no request starts from now on (see before_attempt and the backoff sleep)."""
        self.halt.set()
        for waiting in list(self._waiting):
            waiting.cancel()
        self.executor.halt()

    def _limiter(self, request: ChatRequest) -> RateLimiter | None:
        """The rate limiter of the request's model ([[models]] rpm/tpm), else the job's."""
        if request.model_key and request.model_key in self.model_limiters:
            return self.model_limiters[request.model_key]
        return self.rate_limiter

    def attempt_failed(self, request: ChatRequest, attempt: int, error: RequestError) -> None:
        self._count_error(error.kind)
        rate_limited = isinstance(error, RateLimitedError)
        if rate_limited:
            self.stats.rate_limited += 1
            if error.retry_after and error.retry_after <= self.job.retry.max_retry_after_s:
                self.gate.pause_all(error.retry_after)
        if self.aimd is not None and error.kind in ("rate_limited", "timeout", "server_error"):
            self._set_limit(self.aimd.on_result(None, rate_limited=True))

    def attempt_succeeded(self, request: ChatRequest, attempt: int, completion: Completion,
                          latency_ms: float) -> None:
        limiter = self._limiter(request)
        if limiter is not None:
            if completion.usage is not None and request.ticket_id in self.estimated_tokens:
                limiter.correct(self.estimated_tokens[request.ticket_id], completion.usage.total_tokens)
            if completion.rate_limit_headers:
                limiter.observe(parse_rate_limit_headers(completion.rate_limit_headers))
        if self.aimd is not None:
            self._set_limit(self.aimd.on_result(latency_ms, rate_limited=False))

    def _set_limit(self, limit: int) -> None:
        if self.slots is not None and self.slots.total_tokens != limit:
            self.slots.total_tokens = limit
        if self.aimd is not None:
            self.stats.concurrency_settled = self.aimd.settled

    def _count_error(self, kind: str) -> None:
        self.stats.errors_by_kind[kind] = self.stats.errors_by_kind.get(kind, 0) + 1

    async def write_outcomes(self, outcomes: Any) -> None:
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
                    written = await self.writer.write_batch(batch)
                    self.stats.in_flight -= len(batch)
                    for outcome in written:
                        self._account(outcome)
                    self._update_bar()
                    if time.monotonic() - last_sync > 1.0:
                        await self.writer.sync()
                        last_sync = time.monotonic()
        except CheckpointError as exc:
            self.fatal = exc
            self.stop("checkpoint")
            if self.work_scope is not None:
                self.work_scope.cancel()
        finally:
            self.writer_done.set()

    def _account(self, outcome: Outcome) -> None:
        self.stats.record(outcome)
        if outcome.ok:
            self.failed_ids.discard(outcome.ticket_id)
        else:
            self.failed_ids.add(outcome.ticket_id)
            log.info("%s: failed after %d attempt(s): %s: %s", outcome.ticket_id, outcome.attempts,
                     outcome.error_kind, outcome.error_message)

    def _update_bar(self, force: bool = False) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        self.bar.n = self.stats.done + self.stats.failed
        if force or now - self._last_bar >= 0.25:
            self._last_bar = now
            self.bar.set_postfix_str(
                f"failed={self.stats.failed} req/s={self.stats.attempts / self.stats.wall_s:.1f} "
                f"${self.stats.cost_usd:.4f}", refresh=False)
            self.bar.refresh()

    async def print_progress_lines(self, every_s: float) -> None:
        """Without a terminal (cron, a log file): one plain line on stderr every `every_s`."""
        while True:
            await anyio.sleep(every_s)
            print(format_progress_line(self.stats), file=sys.stderr, flush=True)

    async def watch_signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if self.signal_number is None:
                    self.signal_number = int(signum)
                    self.stopping = False  # a signal wins over an earlier stop reason
                    self.stop("signal")
                    self.halt_requests()
                    print(
                        f"\nbatchrun: {signal.Signals(signum).name}: no new requests; waiting up to "
                        f"{self.grace_s:g} s for {self.stats.in_flight} in flight (signal again to stop now)",
                        file=sys.stderr, flush=True,
                    )
                    self._tg.start_soon(self._grace_timer)
                elif self.work_scope is not None:
                    self.work_scope.cancel()

    async def _grace_timer(self) -> None:
        await anyio.sleep(self.grace_s)
        if self.work_scope is not None:
            self.work_scope.cancel()

    async def run(self) -> None:
        await self.writer.open()
        try:
            self.journal.open()
        except (OSError, CheckpointError) as exc:
            raise CheckpointError(f"{self.journal.path}: cannot open the in-flight journal: {exc}") from None
        # (on Ray the limiter actor holds the rate limits for the whole cluster: ray_limiter.py)
        if (self.job.rpm or self.job.tpm) and not self.on_ray:
            self.rate_limiter = RateLimiter(self.job.rpm, self.job.tpm)
        self.model_limiters = {entry.name: RateLimiter(entry.rpm or self.job.rpm, entry.tpm or self.job.tpm)
                               for entry in self.job.models if (entry.rpm or entry.tpm) and not self.on_ray}
        n_workers = min(self.job.max_in_flight, max(self.prep.to_do, 1))
        tickets_send, tickets_recv = anyio.create_memory_object_stream[Ticket](self.job.max_in_flight)
        # Each worker holds at most one outcome, so this buffer never blocks a worker:
        # a finished request is never lost to a cancelled send.
        outcomes_send, outcomes_recv = anyio.create_memory_object_stream[Outcome](n_workers)
        async with anyio.create_task_group() as outer:
            self._tg = outer
            outer.start_soon(self.write_outcomes, outcomes_recv)
            if self.progress_every:
                outer.start_soon(self.print_progress_lines, self.progress_every)
            await outer.start(self.watch_signals)
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
                self.fatal = exc
                outer.cancel_scope.cancel()
                return
            self.stats.worker_startup_cpu_s = getattr(self.executor, "startup_cpu_s", 0.0)
            async with anyio.create_task_group() as work:
                self.work_scope = work.cancel_scope
                work.start_soon(self.producer, tickets_send)
                for _ in range(n_workers):
                    work.start_soon(self.worker, tickets_recv.clone(), outcomes_send.clone())
                tickets_recv.close()
                outcomes_send.close()
            with anyio.CancelScope(shield=True):
                await self.writer_done.wait()
                await self.executor.aclose()
                self.stats.worker_cpu_s = getattr(self.executor, "cpu_s", 0.0)
                self.stats.cluster = getattr(self.executor, "cluster_summary", None)
            outer.cancel_scope.cancel()


def coordinator_needs_provider(job: JobSpec, workers: int, max_cost_usd: float | None) -> bool:
    """Whether the coordinating process needs providers (and so litellm) of its own.

    With one process the coordinator sends the requests itself; with worker
    processes it still prices the budget's estimates (`max_cost_usd`) and
    counts prompt tokens for the token limit (`tpm`). `batchrun run` and
    `batchrun bench` both ask here."""
    if job.engine == "ray":  # actors send and count tokens themselves (ray_engine.py)
        return max_cost_usd is not None
    return workers == 1 or max_cost_usd is not None or bool(job.tpm)


def _progress_bar(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="ticket", dynamic_ncols=True, file=sys.stderr, mininterval=0.25)


async def execute_run(
    prep: PreparedRun,
    provider: Provider | Mapping[str, Provider] | None,
    *,
    grace_s: float = 30.0,
    progress: bool = False,
    workers: int = 1,
    provider_kwargs: dict[str, Any] | None = None,
    worker_pool: WorkerPool | None = None,
    progress_every: float | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> RunResult:
    """Run the prepared job; always leaves a parseable run directory.

    workers = 1 runs every ticket on `provider` in this event loop; workers > 1
    starts that many worker processes, each building its own LiteLLMProvider
    from `provider_kwargs` (see workers.py); `provider` is then only used for
    cost estimates when a budget is set, and may be None. With `worker_pool`
    (workers.open_worker_pool) the processes are taken from it and handed
    back at the end instead of being started and stopped for this run.
    With `progress_every` (seconds) and no progress bar, a plain progress line
    (stats.format_progress_line) goes to stderr at that interval.
    With engine "ray" the tickets go to `workers` Ray actors (0: one per
    CPU of the cluster) joined at `ray_address` (None: a local Ray started
    for the run, unless this process already initialised Ray); see
    ray_engine.py.
    """
    run = _Run(prep, provider, grace_s=grace_s, progress=progress, workers=workers,
               provider_kwargs=provider_kwargs, worker_pool=worker_pool, progress_every=progress_every,
               engine=engine, ray_address=ray_address)
    started_at = utc_now()
    write_manifest(prep.run_dir, _manifest(prep, run.stats, run.failed_ids, "running", started_at, None, None))
    state, error = "failed", None
    try:
        await run.run()
        if isinstance(run.fatal, CheckpointError):  # a full disk: the run ends as failed, summary shown
            state, error = "failed", str(run.fatal)
        elif run.fatal is not None:
            raise run.fatal
        else:
            state = {"signal": "interrupted", "fail_fast": "failed", "budget": "budget_exhausted"}.get(
                run.stop_reason or "", "done")
            error = run.abort_message
    except BatchrunError as exc:
        error = str(exc)
        raise
    except anyio.get_cancelled_exc_class():
        state = "interrupted"
        raise
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        with anyio.CancelScope(shield=True):
            run.stats.finished = time.monotonic()
            if run.bar is not None:
                run._update_bar(force=True)
                run.bar.close()
            run.journal.close()
            try:
                await run.writer.close()
            except (OSError, CheckpointError) as exc:  # the disk went away: say so, keep the first error
                error = error or f"cannot flush checkpoint: {exc}"
                state = "failed"
            try:
                write_manifest(prep.run_dir, _manifest(prep, run.stats, run.failed_ids, state, started_at,
                                                       utc_now(), error))
            except CheckpointError as exc:
                error = error or str(exc)
                state = "failed"
            for each in run.providers.values():
                await each.aclose()
    summary = run.stats.summary()
    if state == "interrupted":
        code = 128 + (run.signal_number or signal.SIGINT)
    elif run.stop_reason == "fail_fast":
        code = ExitCode.ABORTED
    elif state == "failed":
        code = ExitCode.ERROR
    elif state == "budget_exhausted":
        code = ExitCode.BUDGET_EXHAUSTED
    elif run.stats.failed:
        code = ExitCode.TICKETS_FAILED
    else:
        code = ExitCode.OK
    return RunResult(state=state, exit_code=int(code), summary=summary, error=error)
