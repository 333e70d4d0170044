"""One limiter for a whole Ray cluster: rpm/tpm budgets and the shared 429 pause.

With `engine = "ray"` the attempts of a run start in many actors, on many
machines; a provider's limits (requests and tokens per minute, and a 429's
Retry-After) hold for all of them together. This module keeps those limits
in one place, a named Ray actor, and gives each worker actor a small client
that leases permits from it.

    ClusterLimiter      the actor (async; one per run, named
                        "batchrun-limiter-<run id>" in the "batchrun"
                        namespace). It holds, per model key ("" for the job,
                        a [[models]] name for an entry with its own rpm/tpm),
                        two token buckets (limits.TokenBucket, 0.98 headroom,
                        as limits.RateLimiter) and the pause deadline.
        lease(key, tokens, spare) -> (granted, spare_granted, resume_at)
                        waits (first come, first served) until the first
                        request of `tokens` (one estimated token count per
                        waiting attempt) fits, then grants as many of them
                        as fit now, plus up to `spare` request permits to
                        keep in hand (jobs without tpm only)
        give_back(key, requests, tokens)   permits not used (spares that
                        expired, attempts cancelled after their grant)
        correct(key, delta)   actual minus estimated tokens of a finished
                        attempt (tpm)
        pause(until, source)  a 429 with Retry-After seen by one actor: the
                        deadline (wall clock, `time.time()`) is kept and sent
                        at once to every other registered worker actor
        register(index, handle), counters()

    PermitClient        inside a worker actor: `await acquire(key, tokens)`
                        before each attempt. Attempts that wait at the same
                        time share one lease call (a block of up to
                        `max_block`), and spare permits (sized by the
                        limiter's rate: about 20 ms of it per worker, none at
                        low rates) let the next attempts go without a round
                        trip; spares unused after `spare_ttl_s` go back.

Concurrency is not leased: the driver already holds it exactly (it sends an
actor a ticket only into one of the run's `concurrency` slots), so a permit
for it would only add a round trip.

`require_ray()` imports Ray or explains how to install it (`batchrun[ray]`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from types import ModuleType
from typing import Any

from batchrun.errors import ConfigurationError
from batchrun.execution.limits import TokenBucket

NAMESPACE = "batchrun"


def require_ray() -> ModuleType:
    """`import ray`, or a ConfigurationError that says how to get it."""
    try:
        import ray
    except ImportError:
        raise ConfigurationError(
            "engine \"ray\" needs Ray, which is not installed: pip install 'batchrun[ray]' "
            "(or run without --engine ray)") from None
    return ray


def limiter_name(run_id: str) -> str:
    return f"batchrun-limiter-{run_id}"


class _Budget:
    """The two buckets of one model key (either may be None).

    Unlike the one-process RateLimiter, a bucket here starts empty and holds
    at most a tenth of a second's worth: permits reach the server somewhat
    after their grant (an actor's first call sets up its connections), and
    the 2% headroom (1.2 s of a minute) must cover that delay plus any burst,
    so that no minute sees more than the limit."""

    def __init__(self, rpm: float | None, tpm: float | None, headroom: float, now: float,
                 burst_s: float = 0.1) -> None:
        self.requests = self.tokens = None
        if rpm:
            self.requests = TokenBucket(rpm * headroom, capacity=max(1.0, rpm * headroom / 60.0 * burst_s), now=now)
            self.requests.tokens = 1.0
        if tpm:
            self.tokens = TokenBucket(tpm * headroom, capacity=max(1.0, tpm * headroom / 60.0 * burst_s), now=now)
            self.tokens.tokens = min(self.tokens.capacity, tpm * headroom / 60.0 * burst_s)

    def wait_s(self, tokens: float, now: float) -> float:
        wait = 0.0
        if self.requests is not None:
            wait = self.requests.wait_s(1, now)
        if self.tokens is not None and tokens:
            wait = max(wait, self.tokens.wait_s(tokens, now))
        return wait


class ClusterLimiter:
    """The limiter actor; see the module docstring. `limits`: {key: [rpm, tpm]}."""

    def __init__(self, limits: dict[str, list[float | None]], workers: int = 1, headroom: float = 0.98,
                 spare_s: float = 0.02) -> None:
        now = time.monotonic()
        self.budgets = {key: _Budget(rpm, tpm, headroom, now) for key, (rpm, tpm) in limits.items()
                        if rpm or tpm}
        self.workers_expected = max(1, workers)
        self.spare_s = spare_s
        self.resume_at = 0.0  # wall clock (time.time()) before which no attempt starts anywhere
        self.locks: dict[str, asyncio.Lock] = {}
        self.handles: dict[int, Any] = {}  # TicketActor handles (Ray types an actor's methods as Never)
        self.lease_calls = 0
        self.granted = 0
        self.given_back = 0
        self.pauses = 0
        self.started = now

    def register(self, index: int, handle: Any) -> None:
        self.handles[index] = handle

    def spare_hint(self, key: str) -> int:
        """Request permits a worker may keep in hand: about `spare_s` of the rate, shared by the workers."""
        budget = self.budgets.get(key)
        if budget is None or budget.requests is None or budget.tokens is not None:
            return 0
        return int(budget.requests.rate * self.spare_s / self.workers_expected)

    async def lease(self, key: str, tokens: list[float], spare: int = 0) -> tuple[int, int, float]:
        self.lease_calls += 1
        budget = self.budgets.get(key)
        if budget is None:
            self.granted += len(tokens)
            return len(tokens), 0, self.resume_at
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            while True:
                pause = self.resume_at - time.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                    continue
                wait = budget.wait_s(tokens[0] if tokens else 0.0, time.monotonic())
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            now = time.monotonic()
            granted = 0
            for index, each in enumerate(tokens):
                if index and budget.wait_s(each, now) > 0:
                    break
                if budget.requests is not None:
                    budget.requests.take(1, now)
                if budget.tokens is not None and each:
                    budget.tokens.take(each, now)
                granted += 1
            extra = 0
            if spare and budget.requests is not None and budget.tokens is None:
                extra = max(0, min(spare, math.floor(budget.requests.tokens)))
                budget.requests.take(extra, now)
        self.granted += granted + extra
        return granted, extra, self.resume_at

    def give_back(self, key: str, requests: int, tokens: float = 0.0) -> None:
        budget = self.budgets.get(key)
        self.given_back += requests
        if budget is None:
            return
        now = time.monotonic()
        if budget.requests is not None and requests:
            budget.requests.give(requests, now)
        if budget.tokens is not None and tokens:
            budget.tokens.give(tokens, now)

    def correct(self, key: str, delta: float) -> None:
        budget = self.budgets.get(key)
        if budget is None or budget.tokens is None or not delta:
            return
        now = time.monotonic()
        if delta > 0:
            budget.tokens.take(delta, now)
        else:
            budget.tokens.give(-delta, now)

    def pause(self, until: float, source: int | None = None) -> None:
        if until <= self.resume_at:
            return
        self.resume_at = until
        self.pauses += 1
        for index, handle in self.handles.items():
            if index != source:
                handle.pause.remote(until)

    def node(self) -> str:
        """The id of the Ray node this limiter runs on (the driver's, when it could be placed there)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def counters(self) -> dict[str, float]:
        return {"lease_calls": self.lease_calls, "granted": self.granted, "given_back": self.given_back,
                "pauses": self.pauses, "resume_at": self.resume_at,
                "uptime_s": time.monotonic() - self.started}


class LimiterGoneError(RuntimeError):
    """The limiter actor died (its node lost, killed): no permit can be had any more."""


class PermitClient:
    """A worker actor's side of the limiter: leases in blocks, keeps a few spares. If the limiter
    dies, every waiting and later `acquire` raises LimiterGoneError (nothing waits forever)."""

    def __init__(self, limiter: Any, keys: set[str], *, max_block: int = 32, spare_ttl_s: float = 0.5) -> None:
        self.limiter = limiter  # the ClusterLimiter's actor handle (Ray types an actor's methods as Never)
        self.keys = keys  # model keys the limiter holds a budget for
        self.max_block = max_block
        self.spare_ttl_s = spare_ttl_s
        self.spare: dict[str, list[float]] = {}  # key -> monotonic expiry of each spare request permit
        self.spare_hint: dict[str, int] = {}
        self.waiting: dict[str, deque[tuple[float, asyncio.Future[None]]]] = {}
        self.leasing: dict[str, asyncio.Task[None]] = {}
        self.resume_at = 0.0  # the limiter's pause deadline, as its last answer said
        self.gone: LimiterGoneError | None = None  # set when a lease call failed: the limiter is dead

    def limited(self, key: str) -> bool:
        return key in self.keys

    async def start(self) -> None:
        for key in self.keys:
            self.spare_hint[key] = await self.limiter.spare_hint.remote(key)

    async def acquire(self, key: str, tokens: float = 0.0) -> None:
        """One permit for one attempt of model `key` with `tokens` estimated tokens."""
        if key not in self.keys:
            return
        if self.gone is not None:
            raise self.gone
        spares = self.spare.get(key)
        now = time.monotonic()
        while spares and spares[0] < now:  # expired: back to the limiter
            spares.pop(0)
            self.limiter.give_back.remote(key, 1)
        if spares and not tokens:
            spares.pop(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self.waiting.setdefault(key, deque())
        queue.append((tokens, future))
        if key not in self.leasing:
            self.leasing[key] = asyncio.get_running_loop().create_task(self._lease_loop(key))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted, then given up: give it back
                self.limiter.give_back.remote(key, 1, tokens)
            raise

    async def _lease_loop(self, key: str) -> None:
        queue = self.waiting[key]
        try:
            while queue:
                live = [item for item in queue if not item[1].done()]
                queue.clear()
                queue.extend(live)
                if not queue:
                    break
                block = list(queue)[:self.max_block]
                try:
                    granted, extra, self.resume_at = await self.limiter.lease.remote(
                        key, [t for t, _ in block], self.spare_hint.get(key, 0))
                except Exception as exc:  # RayActorError and kin: the limiter died
                    first = (str(exc).splitlines() or [""])[0][:200]
                    self.gone = LimiterGoneError(f"{type(exc).__name__}: {first}")
                    for _, future in queue:
                        if not future.done():
                            future.set_exception(self.gone)
                    queue.clear()
                    return
                for _ in range(granted):
                    tokens, future = queue.popleft()
                    if future.done():  # cancelled while the lease was under way
                        self.limiter.give_back.remote(key, 1, tokens)
                    else:
                        future.set_result(None)
                if extra:
                    expiry = time.monotonic() + self.spare_ttl_s
                    self.spare.setdefault(key, []).extend([expiry] * extra)
        finally:
            self.leasing.pop(key, None)

    def correct(self, key: str, estimated: float, actual: float) -> None:
        if key in self.keys and actual != estimated:
            self.limiter.correct.remote(key, actual - estimated)

    def release(self) -> None:
        """Give every spare back (end of the run)."""
        for key, spares in self.spare.items():
            if spares:
                self.limiter.give_back.remote(key, len(spares))
            spares.clear()
