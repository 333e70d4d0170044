"""Limits on how hard a run pushes: requests in flight, a shared pause, money.

Concurrency is a count of tickets in flight: the engine runs exactly
`concurrency` workers, each holding at most one ticket (and so at most one
request) at a time, so no semaphore is needed for it. What this module adds:

    RequestGate()
        .wait_for_permit()   awaited before every attempt: returns at once
                             unless the shared pause is on
        .pause_all(s)        after a 429 with Retry-After: no attempt starts
                             for `s` seconds, in any worker, instead of each
                             one hammering the server on its own schedule

    CostBudget(max_usd, spent_before)
        .try_reserve(estimate)   admit one more ticket only if spent + reserved
                                 + its estimate stays within max_cost_usd
        .settle(reserved, cost)  swap the reservation for the actual cost
"""

from __future__ import annotations

import anyio

__all__ = ["CostBudget", "RequestGate"]


class RequestGate:
    def __init__(self) -> None:
        self._resume_at = 0.0  # anyio clock time before which no attempt starts

    def pause_all(self, seconds: float) -> None:
        self._resume_at = max(self._resume_at, anyio.current_time() + seconds)

    async def wait_for_permit(self) -> None:
        while (delay := self._resume_at - anyio.current_time()) > 0:
            await anyio.sleep(delay)


class CostBudget:
    """`max_cost_usd`: dispatch a ticket only while the money allows it.

    A ticket is admitted when spent + reserved + its estimated cost stays
    within the budget; its reservation is held while it is in flight and
    replaced by the actual cost when it finishes. `spent` starts with the
    cost already on disk from earlier runs, so a resumed run with the same
    budget sends nothing more, and a larger budget lets it continue.

    The estimate comes from the provider (prompt tokens + max_tokens at the
    model's price) or, when it has none, the mean actual cost so far.
    """

    def __init__(self, max_usd: float, spent_before: float = 0.0) -> None:
        self.max_usd = max_usd
        self.spent = spent_before  # USD already paid, this run and earlier ones
        self.reserved = 0.0  # USD held for tickets in flight
        self._costs = 0.0  # this run: sum and count of actual costs, for the mean
        self._count = 0

    @property
    def mean_cost(self) -> float | None:
        return self._costs / self._count if self._count else None

    def try_reserve(self, estimate: float | None) -> float | None:
        """The amount reserved, or None when the ticket would pass the budget."""
        amount = estimate if estimate is not None else (self.mean_cost or 0.0)
        if self.spent + self.reserved + amount > self.max_usd:
            return None
        self.reserved += amount
        return amount

    def settle(self, reserved: float, actual: float | None) -> None:
        self.reserved = max(self.reserved - reserved, 0.0)
        if actual is not None:
            self.spent += actual
            self._costs += actual
            self._count += 1
