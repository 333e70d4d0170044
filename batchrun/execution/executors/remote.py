"""The coordinator's side of tickets that run in another process: worker processes and Ray actors.

Both executors hand a ticket to the least-loaded live `Link` (a worker
process, a Ray actor) as a "ticket" frame and wait for its "outcome"; the
frames that come back in between are handled here, once, for both:

    want        the other side asks to send an attempt: the coordinator's
                wait_for_attempt (429 pause, rate limits, halt), then the attempt
                is journaled and counted (AttemptAccounting), then "permit"
    failed      a failed attempt: the coordinator counts its error; a 429's
                Retry-After becomes a pause (`on_pause`: worker processes tell
                every child; Ray actors told their limiter themselves)
    succeeded   usage, headers and latency of an answer (rate limits, AIMD)
    answered    an answer's cost and usage, accepted or not (the budget: jobs with one)
    outcome     the ticket's end: its Outcome, for the writer
    abandoned   halted before its next request: no outcome, it runs on resume
    unsent      an attempt counted at hand-over that never left (a cache hit)
    limiter_gone  Ray's cluster limiter is gone: the run stops

When attempts are counted is the executor's choice (`Counting`): at the
outcome (worker processes of a job without rpm/tpm or budget: two frames per
ticket), at each permit (jobs with rpm/tpm or max_cost_usd: the limits and the
budget stay shared and exact; an attempt the budget refuses gets "deny"), or the
first at hand-over and the others at their permit (Ray). Frame formats:
frames.py; the other side: worker_child.py.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Callable, Protocol, Sequence

import anyio
import anyio.abc

from batchrun.errors import RateLimitedError, RequestError
from batchrun.execution.executors.frames import (
    Frame,
    error_from_wire,
    error_to_wire,
    outcome_from_wire,
)
from batchrun.execution.executors.seam import CoordinatorHooks, WorkerCrashedError
from batchrun.execution.ticket_runner import TicketAbandoned
from batchrun.job.spec import JobSpec
from batchrun.providers.seam import ChatRequest
from batchrun.records import Completion, Outcome, Usage

__all__ = ["Counting", "Link", "PendingTicket", "RemoteTickets"]


class Counting(enum.Enum):
    """When the coordinator journals and counts the attempts of a ticket run elsewhere."""

    AT_OUTCOME = "at_outcome"  # journaled at hand-over (covering its retries), counted from the outcome
    EACH_PERMIT = "each_permit"  # every attempt asks ("want") and is counted when permitted
    FIRST_AT_HANDOVER = "first_at_handover"  # the first counted at hand-over, later ones at their permit


class Link(Protocol):
    """One process or actor that runs tickets, as RemoteTickets sees it."""

    index: int
    load: int  # tickets it holds
    peak_load: int
    gone: bool  # it died, or the run closed it
    held: set[str]  # the tickets it holds
    in_flight: set[str]  # held tickets with an attempt counted and no report of it yet

    def post(self, frame: Frame) -> None:
        """Queue a frame to it (never blocks)."""
        ...


class PendingTicket:
    """A ticket handed to a link, until its outcome (or abandon, or the link's death) arrives."""

    __slots__ = ("request", "done", "outcome", "abandoned")

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self.done = anyio.Event()
        self.outcome: Outcome | None = None
        self.abandoned: TicketAbandoned | None = None  # halted over there before its next request


class RemoteTickets:
    """Pending tickets of one run and the frames that come back (module docstring).

    `requeue_when_lost`: a ticket whose link dies goes to another live link
    (Ray); otherwise the link's death fails the run (worker processes).
    `on_pause(seconds)`: what to do with a 429's Retry-After (None: nothing)."""

    def __init__(self, job: JobSpec, hooks: CoordinatorHooks, counting: Counting, *, requeue_when_lost: bool,
                 on_pause: Callable[[float], None] | None) -> None:
        self.job = job
        self.hooks = hooks
        self.accounting = hooks.accounting
        self.counting = counting
        self.requeue_when_lost = requeue_when_lost
        self.on_pause = on_pause
        self.pending: dict[str, PendingTicket] = {}
        self.crashed: WorkerCrashedError | None = None
        self.requeued = 0  # tickets sent again after their link died
        self._tg: anyio.abc.TaskGroup | None = None

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        self._tg = task_group

    def _raise_crashed(self) -> None:
        if self.crashed is not None:
            raise self.crashed.with_traceback(None)  # one task's frames, not every raiser's

    async def run(self, links: Sequence[Link], request: ChatRequest, chain: Sequence[str],
                  route: str | None) -> Outcome:
        """Hand the ticket to the least-loaded live link and wait for its outcome."""
        ticket_id = request.ticket_id
        pending = self.pending[ticket_id] = PendingTicket(request)
        frame: Frame = {"t": "ticket", "id": ticket_id, "messages": request.messages, "timeout": request.timeout_s,
                        "chain": list(chain), "route": route,
                        "counted": self.counting is Counting.FIRST_AT_HANDOVER}
        try:
            while True:
                self._raise_crashed()
                live = [link for link in links if not link.gone]
                if not live:
                    raise WorkerCrashedError("no worker process or actor of the run is left; re-run to resume")
                link = min(live, key=lambda each: each.load)
                link.load += 1
                link.peak_load = max(link.peak_load, link.load)
                link.held.add(ticket_id)
                try:
                    if self.counting is Counting.AT_OUTCOME:  # sent without asking: journaled before it can be
                        self.accounting.journal_ahead(ticket_id)
                    elif self.counting is Counting.FIRST_AT_HANDOVER:  # before the actor can send it
                        self.accounting.count(ticket_id, 1)
                        link.in_flight.add(ticket_id)
                    link.post(frame)
                    await pending.done.wait()
                finally:
                    link.load -= 1
                    link.held.discard(ticket_id)
                if pending.outcome is not None:
                    return pending.outcome
                if pending.abandoned is not None:  # halted (a signal): no outcome, not sent again
                    raise pending.abandoned
                self._raise_crashed()
                if not self.requeue_when_lost:
                    raise WorkerCrashedError("a worker process ended without an outcome")
                pending.done = anyio.Event()  # its link died: the next live one takes it
                self.requeued += 1
        finally:
            self.pending.pop(ticket_id, None)

    def handle(self, link: Link, frame: Frame) -> None:
        """One frame from `link` (module docstring)."""
        kind = frame["t"]
        if kind == "outcome":
            outcome = outcome_from_wire(frame["outcome"])
            link.in_flight.discard(outcome.ticket_id)
            pending = self.pending.get(outcome.ticket_id)
            if pending is not None and pending.outcome is None:
                if self.counting is Counting.AT_OUTCOME:
                    self.accounting.count_reported(outcome.ticket_id, outcome.attempts)
                pending.outcome = outcome
                pending.done.set()
        elif kind == "abandoned":
            link.in_flight.discard(frame["id"])
            pending = self.pending.get(frame["id"])
            if pending is not None:
                attempts = int(frame.get("attempts") or 0)
                if self.counting is Counting.AT_OUTCOME:
                    self.accounting.count_reported(frame["id"], attempts)
                pending.abandoned = TicketAbandoned(attempts)
                pending.done.set()
        elif kind == "want":
            assert self._tg is not None, "start() first"
            self._tg.start_soon(self._grant, link, frame)
        elif kind == "failed":
            link.in_flight.discard(frame["id"])
            pending = self.pending.get(frame["id"])
            if pending is not None:
                error = error_from_wire(frame["error"])
                self.hooks.attempt_failed(pending.request, frame["attempt"], error)
                if (self.on_pause is not None and isinstance(error, RateLimitedError) and error.retry_after
                        and error.retry_after <= self.job.retry.max_retry_after_s):
                    self.on_pause(error.retry_after)
        elif kind == "succeeded":
            pending = self.pending.get(frame["id"])
            if pending is not None:
                usage = frame.get("usage")
                slim = Completion(text="", finish_reason=None, model=None,
                                  usage=Usage.from_dict(usage) if usage else None, cost_usd=None,
                                  cost_status="", rate_limit_headers=frame.get("headers"))
                request = dataclasses.replace(pending.request, model_key=frame.get("model"))
                self.hooks.attempt_succeeded(request, frame["attempt"], slim, frame["latency_ms"])
        elif kind == "answered":
            pending = self.pending.get(frame["id"])
            if pending is not None:
                usage = frame.get("usage")
                slim = Completion(text="", finish_reason=None, model=None,
                                  usage=Usage.from_dict(usage) if usage else None, cost_usd=frame.get("cost"),
                                  cost_status="", usage_source=frame.get("source") or "provider")
                request = dataclasses.replace(pending.request, model_key=frame.get("model"))
                self.hooks.attempt_answered(request, frame["attempt"], slim)
        elif kind == "unsent":  # counted at hand-over, never sent (a cache hit, a halt)
            link.in_flight.discard(frame["id"])
            if frame["id"] in self.pending:
                self.accounting.uncount(frame["id"], 1)
        elif kind == "limiter_gone":
            self.fail_all(WorkerCrashedError(
                f"the run's rate limiter (a Ray actor) is gone ({frame.get('error')}): the cluster-wide "
                "rpm/tpm limit cannot be held, so nothing more is sent; re-run to resume"))

    async def _grant(self, link: Link, frame: Frame) -> None:
        """Wait for the coordinator's permit (pause, limits), then journal and count the attempt, then
        permit it; the other side sends nothing before. A ticket the link no longer holds (it died)
        gets no permit and is counted nowhere."""
        ticket_id = frame["id"]
        pending = self.pending.get(ticket_id)
        if pending is None or link.gone or ticket_id not in link.held:
            return
        request = dataclasses.replace(pending.request, model_key=frame.get("model"))
        try:
            await self.hooks.wait_for_attempt(request, frame["attempt"], tokens=frame.get("tokens"))
            if link.gone or ticket_id not in link.held:
                return  # died meanwhile: nothing was counted, nothing can be sent
            self.accounting.count(ticket_id, frame["attempt"])
        except TicketAbandoned:
            return  # halted (the other side got "halt" and ends the ticket), or the journal failed
        except RequestError as refused:  # the budget: the other side ends the ticket as failed
            if not link.gone:
                link.post({"t": "deny", "id": ticket_id, "error": error_to_wire(refused)})
            return
        # counted: until the link reports on it, a death of the link leaves the attempt's fate unknown
        link.in_flight.add(ticket_id)
        link.post({"t": "permit", "id": ticket_id})

    def link_lost(self, link: Link) -> list[str]:
        """`link` died: the attempts it had in flight may have reached the provider (marked as
        possibly billed; returned), and its tickets go to other links or fail the run."""
        lost = sorted(link.in_flight & link.held)
        self.accounting.lost(lost)
        for ticket_id in list(link.held):
            pending = self.pending.get(ticket_id)
            if pending is not None and pending.outcome is None:
                pending.done.set()
        return lost

    def fail_all(self, error: WorkerCrashedError) -> None:
        """The run cannot go on (every link gone, the limiter gone): every waiting ticket ends."""
        if self.crashed is None:
            self.crashed = error
        for pending in list(self.pending.values()):
            pending.done.set()


def describe_lost(lost: list[str], shown: int = 20) -> str:
    """The log's words for tickets whose attempt was in flight on a link that died."""
    if not lost:
        return ""
    more = " ..." if len(lost) > shown else ""
    return f"; {len(lost)} had a request in flight and may be billed twice: {', '.join(lost[:shown])}{more}"

