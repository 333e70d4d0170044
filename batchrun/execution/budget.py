"""max_cost_usd as a hard cap: every request's reservation, from admission to its answer.

    RunBudget(budget, providers)        the coordinator's side of one run's CostBudget
      await admit(request, chain)       a ticket's first reservation: its upper bound on the first
                                        model of its chain; waits while requests in flight may
                                        free money, None when nothing can (the run stops)
      await cover(request)              before any later attempt: a new reservation when the
                                        ticket's last one was used by an answer (a re-ask after
                                        a rejected answer) or was made for another model (a
                                        fallback); raises BudgetRefused when it cannot be had
      answered(request, completion)     an answer arrived: its reservation becomes its cost, and
                                        the provider's prompt count calibrates the bound
      settle(ticket_id, outcome)        the ticket ended: what is still reserved is released,
                                        what it spent and was not seen per answer is charged

The invariant: spent + reserved <= max_cost_usd whenever a request is sent,
and each request in flight holds a reservation of at least what it may cost
(CostBudget's bound: the calibrated prompt estimate + its most output tokens
at the dearest price it may be billed at). So what the provider bills stays
within the budget, at any concurrency, as long as the provider counts at most
the calibrated factor times the client's estimate (the factor starts at 1.5
and follows the highest ratio seen, plus 10%). A ticket that waits while others are in flight is not
refused: their reservations become their (smaller) costs, so the run uses the
budget nearly to the end, and stops only when nothing in flight can free
enough for the next request. It says once what was spent, reserved and left.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import anyio

from batchrun.errors import TerminalError
from batchrun.execution.limits import CostBudget
from batchrun.providers.seam import ChatRequest, Provider
from batchrun.records import Completion, Outcome

__all__ = ["BudgetRefused", "RunBudget"]


class BudgetRefused(TerminalError):
    """A later attempt of a ticket (a re-ask, a fallback model) would pass max_cost_usd: the ticket
    ends as failed (kind "budget") with what its earlier answers cost, and runs again on a resume
    with a larger budget."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="budget", error_type="BudgetExhausted")


class RunBudget:
    """The reservations of one run's requests against its CostBudget (module docstring)."""

    def __init__(self, budget: CostBudget, providers: Mapping[str, Provider],
                 on_stop: Callable[[str], None], stopping: Callable[[], bool] = lambda: False) -> None:
        self.budget = budget
        self.providers = dict(providers)
        self.fallback = next(iter(self.providers.values()), None)
        self.on_stop = on_stop  # the coordinator's stop("budget", message)
        self.stopping = stopping  # the run stops (any reason): no new reservation
        self._bounds: dict[str, tuple[str, float, float, float | None]] = {}  # ticket -> (key, factor, amount, usd)
        self.held: dict[str, tuple[float, str]] = {}  # ticket -> (reserved now, for which model key)
        self.charged: dict[str, float] = {}  # ticket -> what its answers cost, as they arrived
        self.estimates: dict[str, tuple[str, int]] = {}  # ticket -> (model key, client's prompt estimate)
        self._changed = anyio.Event()  # set when money was released: waiting tickets look again
        self.stopped = False

    def _provider(self, key: str) -> Provider | None:
        return self.providers.get(key, self.fallback)

    def _bound(self, request: ChatRequest, key: str) -> tuple[float, float | None]:
        """(what to reserve, the bound in USD or None for an unpriced model), computed once per
        ticket, model and calibration factor (a ticket waiting for money asks again and again)."""
        factor = self.budget.prompt_factor
        cached = self._bounds.get(request.ticket_id)
        if cached is not None and cached[0] == key and cached[1] == factor and cached[3] is not None:
            return cached[2], cached[3]
        provider = self._provider(key)
        bound = provider.cost_bound(request, factor) if provider is not None else None
        if bound is not None:
            self.estimates[request.ticket_id] = (key, bound.prompt_tokens)
        usd = None if bound is None else bound.usd
        amount = self.budget.bound_or_mean(usd)
        self._bounds[request.ticket_id] = (key, factor, amount, usd)
        return amount, usd

    def wake(self) -> None:
        """Money was released, or the run stops: tickets waiting for a reservation look again."""
        self._changed.set()
        self._changed = anyio.Event()

    _notify = wake

    async def _reserve(self, request: ChatRequest, key: str, new_ticket: bool) -> float | None:
        """Reserve the request's bound, waiting while requests in flight may free enough; None when
        nothing in flight can (the run stops, saying so once), or for a new ticket once the run
        stops for any reason."""
        while True:
            if self.stopped or (new_ticket and self.stopping()):
                return None
            amount, usd = self._bound(request, key)
            held = self.held.get(request.ticket_id, (0.0, key))[0]
            need = max(amount - held, 0.0)
            if self.budget.fits(need):
                self.budget.reserve(need)
                self.held[request.ticket_id] = (held + need, key)
                return held + need
            if self.budget.reserved - held <= 1e-15:
                self._stop(amount, usd)
                return None
            await self._changed.wait()

    def _stop(self, amount: float, usd: float | None) -> None:
        if self.stopped:
            return
        self.stopped = True
        b = self.budget
        what = f"up to ${amount:.6f}" if usd is not None else f"about ${amount:.6f} (the mean so far: unpriced model)"
        self.on_stop(
            f"budget reached: ${b.spent:.6f} spent (all runs), ${b.reserved:.6f} reserved for requests in flight, "
            f"${max(b.left, 0.0):.6f} left of max_cost_usd = ${b.max_usd:g}; the next request may cost {what} "
            f"(prompt estimates x {b.prompt_factor:.2f}, calibrated on {b.observations:,} answer(s)), so "
            "nothing more is sent; re-run with a larger budget to continue")

    async def admit(self, request: ChatRequest, chain: Sequence[str]) -> float | None:
        return await self._reserve(request, chain[0] if chain else "", new_ticket=True)

    async def cover(self, request: ChatRequest) -> None:
        """Before an attempt: a reservation for it (module docstring), or BudgetRefused."""
        key = request.model_key or ""
        held, for_key = self.held.get(request.ticket_id, (0.0, key))
        if held > 0 and for_key == key:
            return
        if await self._reserve(request, key, new_ticket=False) is None:
            raise BudgetRefused("max_cost_usd reached before this ticket's next request (a re-ask or a fallback "
                                "model): not sent; re-run with a larger budget to retry it")

    def answered(self, request: ChatRequest, completion: Completion) -> None:
        """An answer arrived (accepted or not): the provider billed it."""
        ticket = request.ticket_id
        usage = completion.usage
        estimate = self.estimates.get(ticket)
        if (usage is not None and completion.usage_source == "provider" and estimate is not None
                and estimate[0] == (request.model_key or "")):
            self.budget.observe(estimate[1], usage.prompt_tokens)
        if completion.cost_usd is None:  # unknown: the reservation stays until the ticket ends
            return
        held = self.held.pop(ticket, (0.0, ""))[0]
        self.budget.release(held)
        self.budget.charge(completion.cost_usd)
        self.charged[ticket] = self.charged.get(ticket, 0.0) + completion.cost_usd
        self._notify()

    def settle(self, ticket_id: str, outcome: Outcome | None) -> None:
        """The ticket ended (None: unrecorded): release what it holds, charge what was not seen."""
        held = self.held.pop(ticket_id, (0.0, ""))[0]
        self.budget.release(held)
        self.estimates.pop(ticket_id, None)
        self._bounds.pop(ticket_id, None)
        charged = self.charged.pop(ticket_id, 0.0)
        spent = outcome.spent_usd if outcome is not None else 0.0
        if spent - charged > 1e-15:
            self.budget.charge(spent - charged)
        self._notify()
