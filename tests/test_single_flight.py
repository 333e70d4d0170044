"""Single flight (`cache = true`): identical requests in flight in one run are sent once.

The provider here has no response cache, so only the engine's single flight
can save a request; it holds every request until all distinct ones have
arrived and then lets the event loop run every other worker (all tickets are
already buffered) before answering, so the copies are dispatched while their
original is in flight."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import orjson

from batchrun import Completion, Usage, execute_run, load_job, prepare_run
from batchrun.errors import TerminalError
from conftest import read_jsonl


class GatedProvider:
    def __init__(self, distinct: int, fail_subject: str | None = None) -> None:
        self.calls: list[str] = []
        self.distinct = distinct
        self.fail_subject = fail_subject
        self.all_in = anyio.Event()

    async def complete(self, request) -> Completion:
        content = request.messages[-1]["content"]
        self.calls.append(content)
        if len(set(self.calls)) >= self.distinct:
            self.all_in.set()
        with anyio.fail_after(20):
            await self.all_in.wait()
        for _ in range(200):  # let every other worker take its ticket (they are all buffered) and block
            await anyio.lowlevel.checkpoint()
        if self.fail_subject is not None and self.fail_subject in content:
            raise TerminalError("refused", kind="bad_request", status_code=400)
        return Completion(text="bug", finish_reason="stop", model="fake", usage=Usage(10, 1, 11),
                          cost_usd=0.002, cost_status="litellm")

    def cost_bound(self, request, prompt_factor=1.0):
        return None

    def estimate_tokens(self, request) -> tuple[int, int]:
        return 0, 0

    async def cached(self, request) -> Completion | None:
        return None  # no stored answers: single flight is what this test looks at

    async def remember(self, request, completion) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _job_with_copies(make_job, tmp_path, copies: int, distinct: int):
    job = make_job(distinct, concurrency=64, top="cache = true\nworkers = 1")
    rows = read_jsonl(tmp_path / "tickets.jsonl")
    lines = [orjson.dumps({**row, "id": f"{row['id']}-{n}"}) for n in range(copies) for row in rows]
    (tmp_path / "tickets.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return load_job(job), rows


def _run(job, provider):
    prep = prepare_run(job, endpoint="fake")
    try:
        return anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()


def test_copies_in_flight_wait_for_the_original_and_are_recorded_as_hits(make_job, tmp_path):
    job, rows = _job_with_copies(make_job, tmp_path, copies=4, distinct=5)
    provider = GatedProvider(distinct=5)
    result = _run(job, provider)
    assert len(provider.calls) == 5 and len(set(provider.calls)) == 5
    assert result.summary["requests"] == 5 and result.summary["cache_hits"] == 15
    assert result.summary["cost_usd"] == 5 * 0.002
    assert abs(result.summary["cost_saved_usd"] - 15 * 0.002) < 1e-12
    lines = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(lines) == 20 and len({line["id"] for line in lines}) == 20
    hits = [line for line in lines if line.get("cache_hit")]
    assert len(hits) == 15
    assert all(h["attempts"] == 0 and h["cost_usd"] == 0 and h["cost_saved_usd"] == 0.002 for h in hits)


def test_a_failure_is_not_shared_the_copies_ask_for_themselves(make_job, tmp_path):
    job, rows = _job_with_copies(make_job, tmp_path, copies=3, distinct=4)
    failing = rows[1]["subject"]
    provider = GatedProvider(distinct=4, fail_subject=failing)
    result = _run(job, provider)
    sent = [c for c in provider.calls if failing in c]
    assert len(sent) == 3  # the original and both copies were sent
    assert result.summary["failed"] == 3 and result.summary["cache_hits"] == 6
    errors = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert sorted(e["id"] for e in errors) == sorted(f"{rows[1]['id']}-{n}" for n in range(3))
    assert all(e["attempts"] == 1 for e in errors)


def test_without_cache_every_copy_is_sent(make_job, tmp_path):
    job, _ = _job_with_copies(make_job, tmp_path, copies=2, distinct=3)
    job = job.with_overrides(cache=False)
    provider = GatedProvider(distinct=3)
    result = _run(job, provider)
    assert len(provider.calls) == 6 and result.summary["cache_hits"] == 0
