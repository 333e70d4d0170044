"""Server-side rate limits and the capacity model of the simulator.

Rate limits (``rpm``, ``tpm``)
------------------------------
`RateLimiter` enforces requests per minute and tokens per minute with two
token buckets refilled continuously: a bucket holds at most the limit, starts
full, and refills at ``limit / 60`` per second. A request is admitted when
the requests bucket holds at least 1 and the tokens bucket at least the
request's token estimate; admission takes them out. The estimate is fixed at
admission, as OpenAI does: prompt tokens plus ``max_tokens`` (the answer's
own length when the request gives no ``max_tokens``); nothing is refunded
afterwards. So a burst of up to ``rpm`` requests passes at once, then
requests pass at a steady ``rpm / 60`` per second.

A rejected request learns how long until it would pass (`Verdict.wait_s`);
a request whose estimate exceeds ``tpm`` can never pass (`Verdict.too_large`).
Both buckets report OpenAI's headers (`Verdict.headers`):

* ``x-ratelimit-limit-requests`` / ``-tokens``: the limit;
* ``x-ratelimit-remaining-requests`` / ``-tokens``: whole units left
  (after taking this request's share, when admitted);
* ``x-ratelimit-reset-requests`` / ``-tokens``: time until the bucket is full
  again, formatted like OpenAI (``"120ms"``, ``"1.5s"``, ``"6m0s"``), see
  `format_duration`.

Only the configured limits get headers (``rpm`` alone gives only the
``-requests`` three).

Capacity model (``capacity``, ``overload_ms``)
----------------------------------------------
`overload_delay_ms`: with K = capacity, a request that arrives while N
requests are in flight (itself included) waits
``overload_ms * max(0, N - K)`` milliseconds on top of its normal latency.
With base latency L (ms), N requests in flight complete at about
``N / (L + overload_ms * (N - K))`` per millisecond above K: throughput stops
growing at K and falls beyond it when ``overload_ms * K > L`` (otherwise it
flattens towards ``1 / overload_ms``), while latency keeps climbing.

Standard library only; no I/O. Times are `time.monotonic` seconds and can be
passed in explicitly (``now=``) for tests.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


def overload_delay_ms(in_flight: int, capacity: int | None, overload_ms: float) -> float:
    """Extra latency (ms) of a request arriving with ``in_flight`` requests in flight (itself included)."""
    if capacity is None or in_flight <= capacity:
        return 0.0
    return overload_ms * (in_flight - capacity)


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI's ``x-ratelimit-reset-*`` headers write it.

    Under a second: whole milliseconds (``"120ms"``, ``"0s"`` for zero);
    under a minute: seconds with up to three decimals (``"1s"``, ``"1.5s"``);
    longer: minutes and seconds (``"6m0s"``, ``"1m30.5s"``).
    """
    if seconds <= 0:
        return "0s"
    if seconds < 1.0:
        ms = math.ceil(seconds * 1000.0)
        return "1s" if ms >= 1000 else f"{ms}ms"
    if seconds < 60.0:
        return _seconds_text(seconds) + "s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{_seconds_text(rest)}s"


def _seconds_text(seconds: float) -> str:
    text = f"{math.ceil(seconds * 1000.0) / 1000.0:.3f}".rstrip("0").rstrip(".")
    return text or "0"


class TokenBucket:
    """A bucket of ``capacity`` units refilled continuously at ``capacity / 60`` per second."""

    __slots__ = ("capacity", "rate", "level", "stamp")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = self.capacity / 60.0
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        """Add what accrued since the last call (never above capacity)."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.level = min(self.capacity, self.level + elapsed * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until the bucket holds ``amount`` (0 if it does now; inf if it never can)."""
        if amount > self.capacity:
            return math.inf
        missing = amount - self.level
        return missing / self.rate if missing > 0 else 0.0

    def until_full(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.level) / self.rate

    def headers(self, kind: str) -> dict[str, str]:
        """The three ``x-ratelimit-*-{kind}`` headers for the current level."""
        return {
            f"x-ratelimit-limit-{kind}": str(int(self.capacity)),
            f"x-ratelimit-remaining-{kind}": str(max(0, int(self.level + 1e-9))),
            f"x-ratelimit-reset-{kind}": format_duration(self.until_full()),
        }


@dataclass(slots=True)
class Verdict:
    """The outcome of `RateLimiter.admit`."""

    admitted: bool
    #: The x-ratelimit-* headers to send with the response.
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds until the request would be admitted (0 when admitted; inf when too large).
    wait_s: float = 0.0
    #: Which limit refused it: "requests" or "tokens" (None when admitted).
    limit: str | None = None
    #: The limit's size and how much of it the request asked for (for the error message).
    limit_value: int = 0
    requested: int = 0

    @property
    def too_large(self) -> bool:
        """True if the request's token estimate exceeds the tokens-per-minute limit itself."""
        return math.isinf(self.wait_s)

    def retry_headers(self) -> dict[str, str]:
        """``retry-after`` (whole seconds, rounded up) and ``retry-after-ms`` for a rejection."""
        if self.admitted or self.too_large:
            return {}
        ms = max(1, math.ceil(self.wait_s * 1000.0))
        return {"retry-after": str(max(1, math.ceil(ms / 1000.0))), "retry-after-ms": str(ms)}


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits as two token buckets."""

    __slots__ = ("requests", "tokens", "_clock")

    def __init__(self, rpm: int | None, tpm: int | None, *, now: float | None = None, clock=time.monotonic) -> None:
        self._clock = clock
        start = clock() if now is None else now
        self.requests = TokenBucket(rpm, start) if rpm is not None else None
        self.tokens = TokenBucket(tpm, start) if tpm is not None else None

    def admit(self, token_estimate: int, now: float | None = None) -> Verdict:
        """Admit a request estimated at ``token_estimate`` tokens, or say how long to wait."""
        if now is None:
            now = self._clock()
        requests, tokens = self.requests, self.tokens
        wait = 0.0
        limit = None
        limit_value = requested = 0
        if requests is not None:
            requests.refill(now)
            wait = requests.wait_for(1.0)
            if wait > 0:
                limit, limit_value, requested = "requests", int(requests.capacity), 1
        if tokens is not None:
            tokens.refill(now)
            token_wait = tokens.wait_for(float(token_estimate))
            if token_wait > wait:
                wait = token_wait
                limit, limit_value, requested = "tokens", int(tokens.capacity), int(token_estimate)
        admitted = wait <= 0
        if admitted:
            if requests is not None:
                requests.level -= 1.0
            if tokens is not None:
                tokens.level -= float(token_estimate)
        headers: dict[str, str] = {}
        if requests is not None:
            headers.update(requests.headers("requests"))
        if tokens is not None:
            headers.update(tokens.headers("tokens"))
        return Verdict(admitted, headers, 0.0 if admitted else wait, limit, limit_value, requested)
