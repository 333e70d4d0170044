"""Limits on how hard a run pushes: in-flight requests and a shared pause.

    RequestGate(concurrency)
        .slot()          async context manager around one provider attempt:
                         at most `concurrency` attempts hold a slot at once,
                         and none starts while the shared pause is on
        .pause_all(s)    after a 429 with Retry-After: no worker starts a new
                         attempt for `s` seconds, instead of each one
                         hammering the server on its own schedule
        .in_flight       attempts holding a slot right now

Rate limits (rpm/tpm token buckets) and adaptive concurrency belong here too
when they come; the engine only ever asks the gate for a slot.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import anyio

__all__ = ["RequestGate"]


class RequestGate:
    def __init__(self, concurrency: int) -> None:
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._resume_at = 0.0  # anyio clock time before which no attempt starts

    @property
    def in_flight(self) -> int:
        return int(self._limiter.borrowed_tokens)

    @property
    def concurrency(self) -> int:
        return int(self._limiter.total_tokens)

    def pause_all(self, seconds: float) -> None:
        self._resume_at = max(self._resume_at, anyio.current_time() + seconds)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._limiter:
            while (delay := self._resume_at - anyio.current_time()) > 0:
                await anyio.sleep(delay)
            yield
