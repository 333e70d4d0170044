"""One ticket from its first attempt to its outcome: the retry loop.

    run_ticket(request, provider, job, hooks, run_number) -> Outcome
    run_chain(request, providers, chain, ...) -> Outcome   the same on a model,
        then on its fallbacks after a terminal failure (multi-model jobs)

The loop is `retrying.build_retrying(job.retry)` around one provider call per
attempt, each call guarded by a hard timeout (1.5 x timeout_s + 5 s; litellm's
own `timeout` normally fires first). The retry deadline (`retry.max_elapsed_s`,
counted from the ticket's start) caps each attempt: its timeout is the
smaller of `timeout_s` and the time left (at least `MIN_ATTEMPT_TIMEOUT_S`,
for an attempt that waited past the deadline for a rate-limit permit), and
the hard guard fires at most `DEADLINE_GUARD_SLACK_S` after the time left, so
a ticket never runs a whole `timeout_s` past its deadline. Every exception from the provider is
translated once (`provider.translate_error`); the ticket ends as a success or
as a terminal failure, both returned as an `Outcome`, never raised.
Cancellation passes straight through: it is never retried or recorded.
Once the run is halted (`hooks.halt` set by the first SIGINT/SIGTERM), no
request starts: `before_attempt` and the backoff sleep raise
`TicketAbandoned`, and the ticket ends unrecorded (it runs on resume).

Every answer is judged before it counts as a success (`_judge`; nothing to
do for a plain job that ends with finish_reason "stop": no extra work per
request):

    finish_reason "content_filter", on_content_filter = "fail" (default)
        -> TerminalError kind content_filter: not retried
    finish_reason "length", on_truncated = "fail"
        -> TerminalError kind truncated: not retried (the same request is cut
           at the same max_tokens again; at temperature 0, identically)
    labels / JSON schema / tools (outputs.OutputRules) reject the answer
        -> RetryableError kind invalid_output, asked again at once (no
           backoff: the server is fine), up to max_invalid_output_retries
           re-asks, then TerminalError kind invalid_output. These attempts
           count within retry.max_attempts like any other request: a provider
           never sees more than max_attempts requests for a ticket. A rejected
           answer that was also cut at max_tokens is kind truncated, terminal
           at once, whatever on_truncated says.

The response cache (`cache = true`: the provider's `cached`/`remember`):
before the first attempt the provider's cache is asked; a stored answer is
judged like a fresh one and, if accepted, is the outcome at once with 0
attempts (nothing left the machine; `cache_hit`, cost 0, `cost_saved_usd`).
After the retry loop, an accepted answer is stored; errors and rejected
answers never are.

A 200 that cannot be used (kind invalid_response: no choice, a body litellm
cannot read) follows the same re-ask rule as an invalid answer.

Service tiers: a job with `service_tier = "flex"` whose ticket got
`flex_fallback_after` attempts answered 429 `resource_unavailable` (no flex
capacity; counted and retried like any 429) sends its next attempts at the
standard tier (`ChatRequest.service_tier = "default"`); the outcome says so
(`flex_fallback`) and the line records the tier that answered.

A rejected answer was paid for: the Outcome counts them (`rejected_outputs`)
and their cost (`rejected_cost_usd`, an unusable answer's from the usage its
body carried). The job's RequestOptions and
OutputRules are built once per JobSpec (`rules_for`) and attached to the
request here, so the engine need not know about them.

`hooks` ties the ticket to the run it belongs to without this module knowing
whether it runs in the coordinator's event loop or in a worker process:

    await hooks.before_attempt(request, attempt)   wait for a permit (shared
                                                   429 pause, rate limits) and
                                                   count the attempt
    hooks.attempt_failed(request, attempt, error)  count the error; a 429 with
                                                   Retry-After pauses everyone
    hooks.attempt_answered(request, attempt, completion)
                                                   an answer arrived, accepted or
                                                   not: the provider billed it (budget)
    hooks.attempt_succeeded(request, attempt, completion, latency_ms)
                                                   actual usage, latency
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Awaitable, Callable, Mapping, Protocol

import anyio
from tenacity import RetryCallState

from batchrun.errors import (
    InvalidResponseError,
    RequestError,
    RetryableError,
    TerminalError,
)
from batchrun.execution.retrying import build_retrying
from batchrun.job.answer_checks import OutputError, OutputRules, describe_raw
from batchrun.job.spec import JobSpec
from batchrun.providers.error_mapping import translate_error
from batchrun.providers.seam import ChatRequest, Provider, RequestOptions
from batchrun.records import Completion, Outcome

log = logging.getLogger("batchrun")


#: The shortest timeout an attempt gets when the retry deadline is (nearly) reached.
MIN_ATTEMPT_TIMEOUT_S = 1.0
#: How long after the time left the hard guard fires when the deadline caps an attempt.
DEADLINE_GUARD_SLACK_S = 1.0
#: A failed attempt's message as kept on its outcome line (`failed_attempts`), at most.
MAX_ATTEMPT_MESSAGE = 300


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TicketAbandoned(Exception):
    """The run was halted (SIGINT/SIGTERM) before this ticket's next request.

    Raised by `hooks.before_attempt` or by the backoff sleep once `hooks.halt`
    is set; the ticket ends without an outcome, so nothing is recorded and it
    runs on resume. `attempts`: requests already sent for it (counted by the
    caller when they were not counted one by one)."""

    def __init__(self, attempts: int = 0) -> None:
        super().__init__(f"halted after {attempts} request(s)")
        self.attempts = attempts


class AttemptHooks(Protocol):
    """How a ticket's attempts report to the run they belong to (module docstring)."""

    halt: anyio.Event  # set: no request may start; sleeping tickets end (TicketAbandoned)

    async def before_attempt(self, request: ChatRequest, attempt: int) -> None: ...

    def attempt_answered(self, request: ChatRequest, attempt: int, completion: Completion) -> None: ...

    def attempt_failed(self, request: ChatRequest, attempt: int, error: RequestError) -> None: ...

    def attempt_succeeded(self, request: ChatRequest, attempt: int, completion: Completion,
                          latency_ms: float) -> None: ...


@dataclass(frozen=True, slots=True)
class TicketRules:
    """What a job adds to each request and checks on each answer (built once per job)."""

    options: RequestOptions | None  # stream / schema / tools; None: a plain request
    checks: OutputRules | None  # labels / schema / tools; None: any text is an answer
    on_truncated: str
    on_content_filter: str
    max_invalid_output_retries: int


_RULES: dict[int, tuple[JobSpec, TicketRules]] = {}  # id(job) -> (job, rules); the job is kept so ids stay unique
_FLAGGED_FINISH = frozenset({"length", "content_filter"})


def rules_for(job: JobSpec) -> TicketRules:
    """The TicketRules of `job`, built on first use (schemas compiled once, not per ticket)."""
    hit = _RULES.get(id(job))
    if hit is not None and hit[0] is job:
        return hit[1]
    built = TicketRules(options=RequestOptions.for_job(job), checks=OutputRules.for_job(job),
                   on_truncated=job.on_truncated, on_content_filter=job.on_content_filter,
                   max_invalid_output_retries=job.max_invalid_output_retries)
    if len(_RULES) >= 64:
        _RULES.clear()
    _RULES[id(job)] = (job, built)
    return built


class _InvalidOutput(Exception):
    """The output check rejected an answer that may be asked for again."""


def _judge(completion: Completion, rules: TicketRules) -> Mapping[str, object] | None:
    """What the answer adds to the result line; raises TerminalError or _InvalidOutput."""
    finish = completion.finish_reason
    if finish == "content_filter" and rules.on_content_filter == "fail":
        raise TerminalError(
            "the provider's content filter stopped the answer (finish_reason content_filter; "
            f"on_content_filter = \"fail\"); answer so far: {describe_raw(completion.text)}",
            kind="content_filter", error_type="ContentFiltered")
    if finish == "length" and rules.on_truncated == "fail":
        raise TerminalError(
            "the answer was cut at max_tokens (finish_reason length; on_truncated = \"fail\"): "
            f"{describe_raw(completion.text)}", kind="truncated", error_type="Truncated")
    if rules.checks is None:
        return None
    try:
        return rules.checks.check(completion.text, completion.tool_calls)
    except OutputError as exc:
        if finish == "length":
            raise TerminalError(f"the answer was cut at max_tokens (finish_reason length), so: {exc}",
                                kind="truncated", error_type="Truncated") from None
        raise _InvalidOutput(str(exc)) from None


def judge_answer(completion: Completion, job: JobSpec) -> Mapping[str, object] | None:
    """The online check of one answer, for answers that arrive another way (batch mode):
    what it adds to the result line; raises TerminalError (content filter, truncation,
    an invalid answer cut at max_tokens) or RetryableError kind invalid_output."""
    rules = rules_for(job)
    if rules.checks is None and completion.finish_reason not in _FLAGGED_FINISH:
        return None
    try:
        return _judge(completion, rules)
    except _InvalidOutput as exc:
        raise RetryableError(str(exc), kind="invalid_output", error_type="InvalidOutput") from None


def _reask_or_give_up(error: RequestError, invalid: int, rules: TicketRules) -> RequestError:
    """The invalid-answer rule (invalid_output, invalid_response): asked again at once
    (retry_after=0 skips the backoff) up to max_invalid_output_retries times, then terminal."""
    if invalid > rules.max_invalid_output_retries:
        return TerminalError(f"{error.message} ({invalid} invalid answer(s); max_invalid_output_retries = "
                             f"{rules.max_invalid_output_retries})", kind=error.kind,
                             status_code=error.status_code, error_type=error.error_type)
    return RetryableError(error.message, kind=error.kind, retry_after=0.0, status_code=error.status_code,
                          error_type=error.error_type)


def _sleep_unless_halted(halt: anyio.Event) -> Callable[[float], Awaitable[None]]:
    """tenacity's sleep: the backoff ends at once, with TicketAbandoned, when the run is halted."""

    async def sleep(seconds: float) -> None:
        if not halt.is_set():
            with anyio.move_on_after(seconds):
                await halt.wait()
        if halt.is_set():
            raise TicketAbandoned()

    return sleep


def _log_retry(ticket_id: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        if log.isEnabledFor(logging.INFO):
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.info("%s: attempt %d failed: %s; retrying in %.2f s", ticket_id, state.attempt_number, exc, wait)

    return before_sleep


async def run_ticket(request: ChatRequest, provider: Provider, job: JobSpec, hooks: AttemptHooks,
                     run_number: int) -> Outcome:
    """Attempts until success, a terminal error or the retry limits; see module docstring."""
    started_at = utc_now()
    t0 = time.monotonic()
    attempts = 0
    latency_ms = 0.0
    completion: Completion | None = None
    structured: Mapping[str, object] | None = None
    rejected = 0  # answers the output check (or finish_reason policy) turned down
    invalid = 0  # of those, invalid_output ones (the re-ask budget)
    rejected_cost = 0.0
    failed_attempts: list[dict[str, object]] = []  # what `batchrun show` lists: every attempt that did not answer

    def note_failure(error: RequestError, at: str, started: float, cost: float | None = None) -> None:
        failed_attempts.append({
            "attempt": attempts, "at": at, "kind": error.kind, "status_code": error.status_code,
            "latency_ms": round((time.monotonic() - started) * 1000.0, 3),
            "message": error.message[:MAX_ATTEMPT_MESSAGE], "model_key": request.model_key, "cost_usd": cost})

    unpriced = 0  # of the rejected answers, those whose cost is unknown (not counted as $0)
    flex_refusals = 0  # attempts answered 429 resource_unavailable (flex)
    fell_back = False  # sent at the standard tier after flex_fallback_after of them
    upstream: int | None = None  # upstream requests the endpoint reported (a LiteLLM proxy), summed
    unreported = 0  # attempts whose answer did not say
    hard_timeout = job.timeout_s * 1.5 + 5.0
    deadline = t0 + job.retry.max_elapsed_s
    rules = rules_for(job)
    if rules.options is not None and request.options is None:
        request = replace(request, options=rules.options)
    judge = rules.checks is not None or rules.on_truncated == "fail" or rules.on_content_filter == "fail"
    sleep = _sleep_unless_halted(hooks.halt)
    cache = job.cache
    if cache:
        hit = await provider.cached(request)
        if hit is not None:
            try:  # judged like any answer: the job's labels may have changed since it was stored
                structured = _judge(hit, rules) if judge else None
            except (TerminalError, _InvalidOutput):
                hit = None  # not good enough for this job: ask
            if hit is not None:
                return Outcome(ticket_id=request.ticket_id, attempts=0, started_at=started_at,
                               finished_at=utc_now(), elapsed_ms=(time.monotonic() - t0) * 1000.0, run=run_number,
                               completion=hit, latency_ms=0.0, structured=structured)
    try:
        async for attempt in build_retrying(job.retry, before_sleep=_log_retry(request.ticket_id), sleep=sleep):
            with attempt:
                attempts += 1
                try:
                    await hooks.before_attempt(request, attempts)
                except (TicketAbandoned, RequestError):  # halted, or the budget refused it
                    attempts -= 1  # not sent
                    raise
                a0 = time.monotonic()
                at = utc_now()
                completion = None
                sent, guard = request, hard_timeout
                left = deadline - a0
                if left < job.timeout_s:  # the retry deadline caps this attempt (module docstring)
                    left = max(left, min(MIN_ATTEMPT_TIMEOUT_S, job.timeout_s))
                    sent = replace(request, timeout_s=left)
                    guard = min(hard_timeout, left + DEADLINE_GUARD_SLACK_S)
                try:
                    with anyio.move_on_after(guard):
                        completion = await provider.complete(sent)
                    if completion is None:  # our own guard fired: litellm's timeout did not
                        raise RetryableError(f"no answer within {guard:g} s", kind="timeout",
                                             error_type="Timeout")
                except Exception as exc:
                    unreported += 1  # sent; an error answer does not say what the endpoint did upstream
                    error = translate_error(exc)
                    if isinstance(error, InvalidResponseError):  # billed, unusable: the invalid-answer rule
                        rejected += 1
                        rejected_cost += error.spent_usd or 0.0
                        unpriced += error.spent_usd is None  # billed at a price nobody saw: counted, not 0
                        invalid += 1
                        error = _reask_or_give_up(error, invalid, rules)
                    note_failure(error, at, a0)
                    hooks.attempt_failed(request, attempts, error)
                    if error.kind == "resource_unavailable" and job.service_tier == "flex" and not fell_back:
                        flex_refusals += 1
                        if job.flex_fallback_after and flex_refusals >= job.flex_fallback_after:
                            fell_back = True
                            request = replace(request, service_tier="default")
                            log.info("%s: %d flex attempt(s) answered resource_unavailable: the next go at the "
                                     "standard tier (flex_fallback_after = %d)", request.ticket_id, flex_refusals,
                                     job.flex_fallback_after)
                    raise error from None
                latency_ms = (time.monotonic() - a0) * 1000.0
                hooks.attempt_answered(request, attempts, completion)
                if completion.upstream_attempts is None:
                    unreported += 1
                else:
                    upstream = (upstream or 0) + completion.upstream_attempts
                if judge and (rules.checks is not None or completion.finish_reason in _FLAGGED_FINISH):
                    try:
                        structured = _judge(completion, rules)
                    except (TerminalError, _InvalidOutput) as exc:
                        rejected += 1
                        rejected_cost += completion.cost_usd or 0.0
                        unpriced += completion.cost_usd is None
                        if isinstance(exc, TerminalError):
                            error = exc
                        else:
                            invalid += 1
                            error = _reask_or_give_up(
                                RetryableError(str(exc), kind="invalid_output", error_type="InvalidOutput"),
                                invalid, rules)
                        note_failure(error, at, a0, completion.cost_usd)
                        hooks.attempt_failed(request, attempts, error)
                        raise error from None
                hooks.attempt_succeeded(request, attempts, completion, latency_ms)
        if cache and completion is not None:  # accepted: the only answers ever stored
            await provider.remember(request, completion)
    except TicketAbandoned as halted:
        halted.attempts = attempts
        raise
    except RequestError as error:
        message = error.message
        cap = job.retry.max_retry_after_s
        if isinstance(error, RetryableError) and (error.retry_after or 0) > cap:  # a 429's, a 503's, ...
            message = (f"server asked to retry after {error.retry_after:g} s, over max_retry_after_s "
                       f"({cap:g} s): {message}")
        return Outcome(
            ticket_id=request.ticket_id, attempts=attempts, started_at=started_at, finished_at=utc_now(),
            elapsed_ms=(time.monotonic() - t0) * 1000.0, run=run_number,
            error_kind=error.kind, error_type=error.error_type, error_message=message,
            status_code=error.status_code, rejected_outputs=rejected, rejected_cost_usd=rejected_cost,
            failed_attempts=tuple(failed_attempts),
            rejected_unpriced=unpriced,
            upstream_attempts=upstream, upstream_unreported=unreported,
        )
    return Outcome(
        ticket_id=request.ticket_id, attempts=attempts, started_at=started_at, finished_at=utc_now(),
        elapsed_ms=(time.monotonic() - t0) * 1000.0, run=run_number,
        completion=completion, latency_ms=latency_ms, structured=structured,
        rejected_outputs=rejected, rejected_cost_usd=rejected_cost, failed_attempts=tuple(failed_attempts),
        rejected_unpriced=unpriced,
        flex_fallback=fell_back,
        upstream_attempts=upstream, upstream_unreported=unreported,
    )


async def run_chain(request: ChatRequest, providers: Mapping[str, Provider], chain: list[str], job: JobSpec,
                    hooks: AttemptHooks, run_number: int, route: str | None = None) -> Outcome:
    """A ticket on `chain[0]`, then on each fallback after a terminal failure.

    Each model gets the whole retry policy. The outcome names the model that
    answered (or failed last) as `model_key`, the rule that chose the first
    one as `route`, the requests sent to each model (`attempts_by_model`,
    with fallbacks) and, in `rejected_cost_usd`, what earlier models' rejected
    answers cost, so the line's cost is every model's spend. A single-model
    job calls this with chain [""] and gets exactly `run_ticket`'s outcome.
    """
    if chain == [""]:
        return await run_ticket(request, providers[""], job, hooks, run_number)
    started_at = utc_now()
    t0 = time.monotonic()
    attempts_by_model: dict[str, int] = {}
    spent_before = 0.0
    failed_before: list[Mapping[str, object]] = []  # earlier models' failed attempts
    unpriced_before = 0
    upstream: int | None = None  # summed over the models, as the attempts are
    unreported = 0
    outcome: Outcome | None = None
    for key in chain:
        try:
            outcome = await run_ticket(replace(request, model_key=key), providers[key], job, hooks, run_number)
        except TicketAbandoned as halted:
            halted.attempts += sum(attempts_by_model.values())
            raise
        attempts_by_model[key] = outcome.attempts
        if outcome.upstream_attempts is not None:
            upstream = (upstream or 0) + outcome.upstream_attempts
        unreported += outcome.upstream_unreported
        if outcome.ok:
            break
        spent_before += outcome.spent_usd
        failed_before += outcome.failed_attempts
        unpriced_before += outcome.rejected_unpriced
    assert outcome is not None
    return replace(
        outcome, model_key=chain[len(attempts_by_model) - 1], route=route,
        attempts=sum(attempts_by_model.values()), started_at=started_at,
        elapsed_ms=(time.monotonic() - t0) * 1000.0,
        attempts_by_model=attempts_by_model if len(chain) > 1 else None,
        rejected_cost_usd=outcome.rejected_cost_usd + spent_before,
        failed_attempts=tuple(failed_before) + (outcome.failed_attempts if outcome.ok else ()),
        rejected_unpriced=outcome.rejected_unpriced + unpriced_before,
        upstream_attempts=upstream, upstream_unreported=unreported,
    )
