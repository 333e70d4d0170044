"""The cluster limiter's logic without Ray: ClusterLimiter is a plain class
(Ray makes it an actor), PermitClient talks to anything with `.remote` methods."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from batchrun import load_job
from batchrun.execution.executors.ray_actors import limits_for
from batchrun.execution.executors.ray_limiter import ClusterLimiter, PermitClient, require_ray


class _Remote:
    """`handle.method.remote(...)` for a local object: an awaitable, as a Ray ObjectRef is."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.target, name)
        outer = self

        class _Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                outer.calls.append((name, args))
                result = method(*args)
                if asyncio.iscoroutine(result):
                    return asyncio.ensure_future(result)
                future = asyncio.get_running_loop().create_future()
                future.set_result(result)
                return future

        return _Method


class _Worker:
    def __init__(self) -> None:
        self.paused_until: list[float] = []

    async def pause(self, until: float) -> None:
        self.paused_until.append(until)


def test_a_bucket_starts_empty_and_grants_what_it_holds():
    async def main() -> None:
        limiter = ClusterLimiter({"": [600, None]}, workers=1)  # 9.8 a second after headroom
        granted, spare, _ = await limiter.lease("", [0.0] * 5, 0)
        assert (granted, spare) == (1, 0)  # no burst at the start
        t0 = time.monotonic()
        granted, _, _ = await limiter.lease("", [0.0], 0)
        assert granted == 1 and time.monotonic() - t0 >= 0.08  # waited for the next permit (~0.1 s)
        limiter.give_back("", 1)
        assert limiter.counters()["given_back"] == 1

    asyncio.run(main())


def test_an_unlimited_key_grants_everything_at_once():
    async def main() -> None:
        limiter = ClusterLimiter({"cheap": [60, None]}, workers=1)
        assert (await limiter.lease("", [0.0] * 7, 3))[:2] == (7, 0)

    asyncio.run(main())


def test_spares_scale_with_the_rate_and_are_off_with_tpm():
    assert ClusterLimiter({"": [60_000, None]}, workers=2).spare_hint("") == int(60_000 * 0.98 / 60 * 0.02 / 2)
    assert ClusterLimiter({"": [1200, None]}, workers=4).spare_hint("") == 0
    assert ClusterLimiter({"": [60_000, 10**9]}, workers=2).spare_hint("") == 0


def test_a_pause_reaches_every_other_worker_and_holds_leases():
    async def main() -> None:
        limiter = ClusterLimiter({"": [60_000, None]}, workers=3)
        workers = [_Worker() for _ in range(3)]
        for index, worker in enumerate(workers):
            limiter.register(index, _Remote(worker))
        until = time.time() + 0.3
        limiter.pause(until, source=1)
        limiter.pause(until - 0.1, source=2)  # an earlier deadline changes nothing
        await asyncio.sleep(0)
        assert [w.paused_until for w in workers] == [[until], [], [until]]
        t0 = time.time()
        await limiter.lease("", [0.0], 0)
        assert time.time() >= until - 0.01 and time.time() - t0 >= 0.2
        assert limiter.counters()["pauses"] == 1

    asyncio.run(main())


def test_waiting_attempts_share_lease_calls():
    async def main() -> None:
        limiter = ClusterLimiter({"": [6_000_000, None]}, workers=1)
        remote = _Remote(limiter)
        client = PermitClient(remote, {""})
        await asyncio.gather(*(client.acquire("", 0) for _ in range(40)))
        leases = [c for c in remote.calls if c[0] == "lease"]
        assert 2 <= len(leases) <= 5  # 40 attempts in blocks of up to 32, not 40 round trips
        assert limiter.granted >= 40
        await client.acquire("other", 0)  # a key the limiter does not hold: no call
        assert len([c for c in remote.calls if c[0] == "lease"]) == len(leases)
        client.release()

    asyncio.run(main())


def test_limits_per_model_key(make_job):
    job = load_job(make_job(3, top="rpm = 100"))
    assert limits_for(job) == {"": [100, None]}
    assert limits_for(load_job(make_job(3))) == {}


def test_require_ray_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(Exception, match=r"pip install 'batchrun\[ray\]'"):
        require_ray()

