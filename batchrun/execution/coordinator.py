"""The coordinator: one online run's shared state, and the hooks every attempt reports to.

Whatever executor sends the requests (this event loop, worker processes, Ray
actors), the limits, the counts and the decisions to stop live here, once:

    hooks (CoordinatorHooks)   before_attempt = wait_for_attempt (the shared 429
                               pause, rpm/tpm, a halt, the budget's reservation)
                               + accounting.count; attempt_answered (the budget:
                               a reservation becomes a cost), attempt_failed /
                               attempt_succeeded (429 pauses, token corrections, AIMD)
    stop(reason, message)      no new ticket starts: "signal", "fail_fast",
                               "budget", "checkpoint", "crash" or "local_resource"
                               (EMFILE: out of file descriptors); requests in
                               flight finish
    halt_requests()            a signal, or the endpoint's budget spent: not even a
                               retry starts (here or in the executor's workers);
                               tickets waiting for a permit or a backoff end
                               unrecorded (they run on resume)
    attempt_failed(...)        an answer of kind budget_exceeded (the endpoint's
                               budget or quota is spent): stop("budget") and halt,
                               so at most the requests already in flight are sent
    fail(error)                a fatal error (a checkpoint write, a crashed worker):
                               stop and cancel the work; raised after cleanup
    check_fail_fast(outcome)   401/403/404 in a row, the same non-retryable error
                               in a row (fail_fast_after, fail_fast_same_error_after)
    admit(request, chain)      the budget's reservation for a ticket (budget.py: it
                               waits while requests in flight may free money), or
                               None: the run stops
    account(outcome)           the counts of an outcome whose line is on disk; the
                               first one showing the endpoint (a LiteLLM proxy)
                               retried on its own: one warning naming `num_retries: 0`

The tasks that move tickets (producer, workers, writer) are dispatcher.py's.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping

import anyio

from batchrun.analysis.stats import RunStats
from batchrun.analysis.textfmt import terminal_safe
from batchrun.errors import (
    FAIL_FAST_KINDS,
    BatchrunError,
    CheckpointError,
    RateLimitedError,
    RequestError,
)
from batchrun.execution.accounting import AttemptAccounting
from batchrun.execution.budget import RunBudget
from batchrun.execution.limits import (
    AdaptiveConcurrency,
    CostBudget,
    RateLimiter,
    RequestGate,
    parse_rate_limit_headers,
)
from batchrun.execution.preparation import PreparedRun
from batchrun.execution.ticket_runner import TicketAbandoned
from batchrun.providers.seam import ChatRequest, Provider
from batchrun.records import Completion, Outcome
from batchrun.rundir.checkpoint import CheckpointWriter
from batchrun.rundir.journal import InflightJournal

__all__ = ["Coordinator", "FAIL_FAST_KINDS"]

# Kinds that never count toward the same-error streak: retried ones (an outage passes) and the
# verdicts on an answer (they are about one ticket's answer, not about the endpoint).
_NOT_ENDPOINT_KINDS = frozenset({"rate_limited", "resource_unavailable", "timeout", "connection", "server_error",
                                 "stream_cut", "budget",
                                 "invalid_output", "invalid_response", "truncated", "content_filter",
                                 "local_resource"})
log = logging.getLogger("batchrun")
console = logging.getLogger("batchrun.console")  # what a person sees on stderr (run_logging.py)


class Coordinator:
    """One online run's state and its CoordinatorHooks (module docstring)."""

    def __init__(self, prep: PreparedRun, providers: Mapping[str, Provider], *, rate_limits_here: bool = True) -> None:
        self.prep = prep
        self.job = prep.job
        self.providers = dict(providers)  # "" for a single-model job, [[models]] names for a routed one
        self.provider = next(iter(self.providers.values()), None)  # cost and token estimates
        self.rate_limits_here = rate_limits_here  # False on Ray: the cluster's limiter actor holds them
        self.stats = RunStats(tickets_total=prep.tickets_total, already_done=prep.already_done,
                              skipped_failed=prep.skipped_failed, skipped_permanent=prep.skipped_permanent,
                              to_do=prep.to_do,
                              rejected_lines=prep.scan.problem_count)
        self.stats.maybe_billed_ids = sorted(prep.checkpoint.maybe_billed)
        self.gate = RequestGate()
        self.writer = CheckpointWriter(prep.run_dir, prep.checkpoint.done_ids, prep.checkpoint.maybe_billed,
                                       max_output_bytes=self.job.max_output_bytes)
        self.journal = InflightJournal(prep.run_dir, prep.run_number)
        self._accounting = AttemptAccounting(self.stats, self.journal, self.writer, self.fail)
        self.failed_ids = set(prep.checkpoint.failed_ids)  # latest outcome a failure
        self.budget = (CostBudget(prep.max_cost_usd, prep.checkpoint.spent_usd)
                       if prep.max_cost_usd is not None else None)
        self.run_budget = (RunBudget(self.budget, self.providers, lambda message: self.stop("budget", message),
                                     lambda: self.stopping) if self.budget is not None else None)
        self.rate_limiter: RateLimiter | None = None  # made in open_limiters(): it needs the event loop's clock
        self.model_limiters: dict[str, RateLimiter] = {}  # routed jobs: [[models]] entries with rpm/tpm
        self.estimated_tokens: dict[str, int] = {}  # ticket id -> tokens reserved per attempt (tpm)
        self.aimd = (AdaptiveConcurrency(self.job.min_concurrency, self.job.max_concurrency,
                                         start=min(self.job.max_concurrency, max(self.job.min_concurrency, 4)))
                     if self.job.adaptive else None)
        self.slots = anyio.CapacityLimiter(self.aimd.limit) if self.aimd is not None else None
        self.stopping = False  # no new ticket starts once this is set
        self.halt = anyio.Event()  # a signal: no request starts at all; tickets waiting to retry end
        self._waiting: set[anyio.CancelScope] = set()  # attempts waiting for a permit (cancelled by a halt)
        self.on_halt: list[Callable[[], None]] = []  # the executor's halt (dispatcher.py): its workers stop too
        self.stop_reason: str | None = None  # "signal", "fail_fast", "budget", "checkpoint" or "crash"
        self.signal_number: int | None = None
        self.fatal: BatchrunError | None = None  # a checkpoint error or a crash: raised after cleanup
        self.abort_message: str | None = None  # why fail-fast or the budget stopped the run
        self.fail_fast_streak = 0  # tickets in a row ending in 401/403/404
        self.same_error: tuple[str | None, str | None] | None = None  # (type, message) of the last failure
        self.same_error_streak = 0  # tickets in a row ending in that same non-retryable error
        self.warned_upstream_retries = False  # the proxy-retries warning, said once
        self.producer_scope = anyio.CancelScope()
        self.work_scope: anyio.CancelScope | None = None

    @property
    def accounting(self) -> AttemptAccounting:
        return self._accounting

    def open_limiters(self) -> None:
        """The rpm/tpm token buckets, in the running event loop (on Ray the limiter actor holds them)."""
        if not self.rate_limits_here:
            return
        if self.job.rpm or self.job.tpm:
            self.rate_limiter = RateLimiter(self.job.rpm, self.job.tpm)
        self.model_limiters = {entry.name: RateLimiter(entry.rpm or self.job.rpm, entry.tpm or self.job.tpm)
                               for entry in self.job.models if entry.rpm or entry.tpm}

    # -- stopping ---------------------------------------------------------------------

    def stop(self, reason: str, message: str | None = None) -> None:
        """Stop dispatching: no new ticket starts; in-flight ones finish."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_reason = reason
        self.stats.stop_reason = reason
        self.abort_message = message
        self.producer_scope.cancel()
        if self.run_budget is not None:  # tickets waiting for money: no new one starts now
            self.run_budget.wake()
        if message:
            console.warning("%s", terminal_safe(message))  # once: the end of the run does not repeat it

    def fail(self, error: BatchrunError) -> None:
        """A fatal error (the journal or a checkpoint file cannot be written, a worker crashed): the
        run stops at once and the error is raised (CheckpointError: reported) after cleanup."""
        if self.fatal is None:
            self.fatal = error
            self.stop("checkpoint" if isinstance(error, CheckpointError) else "crash")
            if self.work_scope is not None:
                self.work_scope.cancel()

    def halt_requests(self) -> None:
        """The first signal: no request starts from now on (see wait_for_attempt and the backoff sleep)."""
        self.halt.set()
        for waiting in list(self._waiting):
            waiting.cancel()
        for halt in self.on_halt:
            halt()

    def endpoint_budget_spent(self, error: RequestError) -> None:
        """The endpoint answered that a budget or quota is spent (kind budget_exceeded): no request
        starts from now on, not even a retry; the run ends budget_exhausted with its message."""
        if self.halt.is_set():
            return
        status = f" (HTTP {error.status_code})" if error.status_code else ""
        self.stop("budget", (
            f"the endpoint's budget or quota is spent{status}: {error.message} -- nothing more is sent "
            f"({self.stats.in_flight} request(s) in flight finish). Raise the budget or quota there (or wait "
            "for it to reset), then re-run the same command to resume."))
        self.halt_requests()

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

    # -- the budget -----------------------------------------------------------------------

    async def admit(self, request: ChatRequest, chain: list[str] | None = None) -> float | None:
        """What the budget reserves for this ticket's first request (0 without a budget), or None:
        it would pass max_cost_usd even once the requests in flight are paid (the run stops)."""
        if self.run_budget is None:
            return 0.0
        return await self.run_budget.admit(request, chain or [""])

    def settle(self, ticket_id: str, outcome: Outcome | None) -> None:
        """A ticket left the executor: what it still holds is released, what it spent is charged
        (nothing if it ended unrecorded)."""
        self.estimated_tokens.pop(ticket_id, None)
        if self.run_budget is not None:
            self.run_budget.settle(ticket_id, outcome)

    # -- CoordinatorHooks: how a ticket's attempts report to this run ---------------------

    async def before_attempt(self, request: ChatRequest, attempt: int) -> None:
        """Wait for the shared pause and the rate limits, then journal and count the attempt.
        After a halt (a signal) no attempt starts: TicketAbandoned, also for one waiting here."""
        await self.wait_for_attempt(request, attempt)
        self._accounting.count(request.ticket_id, attempt)

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
                        if tokens is None and provider is not None:
                            tokens = sum(provider.estimate_tokens(request))
                        self.estimated_tokens[request.ticket_id] = tokens or 0
                    await limiter.acquire(tokens or 0)
                if self.run_budget is not None:  # a re-ask or a fallback model: a new reservation
                    await self.run_budget.cover(request)
            finally:
                self._waiting.discard(waiting)
        if waiting.cancelled_caught or self.halt.is_set():
            raise TicketAbandoned()

    def _limiter(self, request: ChatRequest) -> RateLimiter | None:
        """The rate limiter of the request's model ([[models]] rpm/tpm), else the job's."""
        if request.model_key and request.model_key in self.model_limiters:
            return self.model_limiters[request.model_key]
        return self.rate_limiter

    def attempt_failed(self, request: ChatRequest, attempt: int, error: RequestError) -> None:
        self.stats.errors_by_kind[error.kind] = self.stats.errors_by_kind.get(error.kind, 0) + 1
        if error.kind == "local_resource":  # the machine, not the server: no new request would fare better
            self.stop("local_resource", f"stopping: {error.message} ({self.stats.in_flight} in flight finish; "
                                        "no new request is sent)")
        if error.kind == "budget_exceeded":
            self.endpoint_budget_spent(error)
        rate_limited = isinstance(error, RateLimitedError)
        if rate_limited:
            self.stats.rate_limited += 1
            if error.retry_after and error.retry_after <= self.job.retry.max_retry_after_s:
                self.gate.pause_all(error.retry_after)
        if self.aimd is not None and error.kind in ("rate_limited", "resource_unavailable", "timeout",
                                                    "server_error"):
            self._set_limit(self.aimd.on_result(None, rate_limited=True))

    def attempt_answered(self, request: ChatRequest, attempt: int, completion: Completion) -> None:
        """An answer arrived (accepted or not): the provider billed it (the budget)."""
        if self.run_budget is not None:
            self.run_budget.answered(request, completion)

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

    def warn_upstream_retries(self, upstream: int, attempts: int) -> None:
        """Once per run: the endpoint (a LiteLLM proxy) sent more requests upstream than batchrun sent it."""
        if self.warned_upstream_retries:
            return
        self.warned_upstream_retries = True
        message = (
            f"warning: the endpoint (a LiteLLM proxy) retries on its own: it sent {upstream} request(s) upstream "
            f"for {attempts} of batchrun's (x-litellm-attempted-retries). They are counted (upstream_attempts in "
            "each line, \"upstream requests\" in the summary), but batchrun's retry policy, Retry-After handling "
            "and budget see only its own requests: set `num_retries: 0` in the proxy's config (litellm_settings "
            "or router_settings) so that batchrun is the one retry layer.")
        console.warning("%s", message)  # stderr and --log-file, dated (run_logging.py)

    # -- outcomes -----------------------------------------------------------------------

    def account(self, outcome: Outcome) -> None:
        """Count an outcome whose line is on disk."""
        self.stats.record(outcome)
        reported = outcome.attempts - outcome.upstream_unreported  # attempts whose answer said
        if outcome.upstream_attempts is not None and outcome.upstream_attempts > reported:
            self.warn_upstream_retries(outcome.upstream_attempts, reported)
        if outcome.ok:
            self.failed_ids.discard(outcome.ticket_id)
        else:
            self.failed_ids.add(outcome.ticket_id)
            log.info("%s: failed after %d attempt(s): %s: %s", outcome.ticket_id, outcome.attempts,
                     outcome.error_kind, outcome.error_message)
