"""One ticket from its first attempt to its outcome: the retry loop.

    run_ticket(request, provider, job, hooks, run_number) -> Outcome

The loop is `retrying.build_retrying(job.retry)` around one provider call per
attempt, each call guarded by a hard timeout (1.5 x timeout_s + 5 s; litellm's
own `timeout` normally fires first). Every exception from the provider is
translated once (`provider.translate_error`); the ticket ends as a success or
as a terminal failure, both returned as an `Outcome`, never raised.
Cancellation passes straight through: it is never retried or recorded.

`hooks` ties the ticket to the run it belongs to without this module knowing
whether it runs in the coordinator's event loop or in a worker process:

    await hooks.before_attempt(request, attempt)   wait for a permit (shared
                                                   429 pause, rate limits) and
                                                   count the attempt
    hooks.attempt_failed(request, attempt, error)  count the error; a 429 with
                                                   Retry-After pauses everyone
    hooks.attempt_succeeded(request, attempt, completion, latency_ms)
                                                   actual usage, latency
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Protocol

import anyio

from batchrun.errors import RateLimitedError, RequestError, RetryableError
from batchrun.provider import ChatRequest, Provider, translate_error
from batchrun.records import Completion, Outcome
from batchrun.retrying import build_retrying
from batchrun.spec import JobSpec

__all__ = ["AttemptHooks", "NoHooks", "run_ticket", "utc_now"]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AttemptHooks(Protocol):
    async def before_attempt(self, request: ChatRequest, attempt: int) -> None: ...

    def attempt_failed(self, request: ChatRequest, attempt: int, error: RequestError) -> None: ...

    def attempt_succeeded(self, request: ChatRequest, attempt: int, completion: Completion,
                          latency_ms: float) -> None: ...


class NoHooks:
    """Hooks that do nothing (a ticket run on its own)."""

    async def before_attempt(self, request: ChatRequest, attempt: int) -> None:
        return None

    def attempt_failed(self, request: ChatRequest, attempt: int, error: RequestError) -> None:
        return None

    def attempt_succeeded(self, request: ChatRequest, attempt: int, completion: Completion,
                          latency_ms: float) -> None:
        return None


def _log_retry(ticket_id: str) -> Any:
    import logging

    log = logging.getLogger("batchrun")

    def before_sleep(state: Any) -> None:
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
    hard_timeout = job.timeout_s * 1.5 + 5.0
    try:
        async for attempt in build_retrying(job.retry, before_sleep=_log_retry(request.ticket_id)):
            with attempt:
                attempts += 1
                await hooks.before_attempt(request, attempts)
                a0 = time.monotonic()
                completion = None
                try:
                    with anyio.move_on_after(hard_timeout):
                        completion = await provider.complete(request)
                    if completion is None:  # our own guard fired: litellm's timeout did not
                        raise RetryableError(f"no answer within {hard_timeout:g} s", kind="timeout",
                                             error_type="Timeout")
                except Exception as exc:
                    error = translate_error(exc)
                    hooks.attempt_failed(request, attempts, error)
                    raise error from None
                latency_ms = (time.monotonic() - a0) * 1000.0
                hooks.attempt_succeeded(request, attempts, completion, latency_ms)
    except RequestError as error:
        message = error.message
        cap = job.retry.max_retry_after_s
        if isinstance(error, RateLimitedError) and (error.retry_after or 0) > cap:
            message = (f"server asked to retry after {error.retry_after:g} s, over max_retry_after_s "
                       f"({cap:g} s): {message}")
        return Outcome(
            ticket_id=request.ticket_id, attempts=attempts, started_at=started_at, finished_at=utc_now(),
            elapsed_ms=(time.monotonic() - t0) * 1000.0, run=run_number,
            error_kind=error.kind, error_type=error.error_type, error_message=message,
            status_code=error.status_code,
        )
    return Outcome(
        ticket_id=request.ticket_id, attempts=attempts, started_at=started_at, finished_at=utc_now(),
        elapsed_ms=(time.monotonic() - t0) * 1000.0, run=run_number,
        completion=completion, latency_ms=latency_ms,
    )
