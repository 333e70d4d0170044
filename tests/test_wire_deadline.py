"""The retry deadline (`retry.max_elapsed_s`) caps each attempt's timeout.

Without the cap an attempt started just before the deadline could run a whole
`timeout_s` past it. With a scripted provider, the timeout each attempt was
given is checked against the time that was left; over real HTTP, a simulator
that stalls every request shows the ticket ending at its deadline (kind
timeout, each attempt counted by the server), not up to one `timeout_s`
later. (The job check already refuses `timeout_s` > `max_elapsed_s`; the
overshoot came from a later attempt.)
"""

from __future__ import annotations

import time
from datetime import datetime

import anyio
import pytest

from batchrun import ScriptedProvider, execute_run, load_job, prepare_run
from batchrun.errors import RetryableError
from batchrun.providers.online import LiteLLMProvider
from conftest import read_jsonl


def job_with(make_job, n: int, *, timeout_s: float, max_elapsed_s: float, max_attempts: int = 5, top: str = ""):
    path = make_job(n, concurrency=2, top=top)
    text = path.read_text().replace("timeout_s = 10", f"timeout_s = {timeout_s}")
    text = text.replace("max_elapsed_s = 30", f"max_elapsed_s = {max_elapsed_s}")
    text = text.replace("max_attempts = 3", f"max_attempts = {max_attempts}")
    path.write_text(text)
    return load_job(path)


def run(job, provider):
    prep = prepare_run(job, endpoint="sim")
    try:
        return anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()


def test_each_attempt_gets_at_most_the_time_left(make_job):
    job = job_with(make_job, 2, timeout_s=2.0, max_elapsed_s=2.5, max_attempts=50)
    given: list[tuple[float, float]] = []  # (timeout given, seconds left at that moment)
    started = {}

    def failing(request):
        t0 = started.setdefault(request.ticket_id, time.monotonic())
        given.append((request.timeout_s, job.retry.max_elapsed_s - (time.monotonic() - t0)))
        return RetryableError("busy", kind="server_error", status_code=503, retry_after=0.3)

    result = run(job, ScriptedProvider(failing))
    assert result.summary["failed"] == 2
    assert any(left < job.timeout_s for _, left in given)  # attempts began with less than timeout_s left
    for timeout, left in given:
        assert timeout <= job.timeout_s
        assert timeout <= max(left, 1.0) + 0.2, (timeout, left)  # the time left (1 s at least)


@pytest.mark.slow  # waits out the deadline: about 5 s
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_stalling_server_ends_the_ticket_at_its_deadline_not_a_timeout_later(make_job, tmp_path, stream):
    from batchrun.providers.seam import ChatRequest, RequestOptions
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    job = job_with(make_job, 2, timeout_s=4, max_elapsed_s=5, top="stream = true\n" if stream else "")
    stalls = {"kind": "stall", "tickets": ["T000001", "T000002"], "attempts": list(range(1, 6)), "stall_s": 600}
    with start_simulator(SimConfig(latency_ms=1, jitter=0, faults=(stalls,))) as sim:
        provider = LiteLLMProvider(model=job.model, api_base=sim.base_url, api_key="sim-key", params=job.params)
        # litellm's first call in a process is slow (lazy set-up): make it outside the measured run
        warm = ChatRequest("warm-up", [{"role": "user", "content": "hi"}], 10.0,
                           RequestOptions(stream=True) if stream else None)
        anyio.run(provider.complete, warm)
        result = run(job, provider)
        received = sim.stats()["requests_by_ticket"]
    errors = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert [line["error_kind"] for line in errors] == ["timeout", "timeout"]
    for line in errors:
        assert received[line["id"]] == line["attempts"] >= 2, (line, received)
        # without the cap the second attempt also gets timeout_s: 8 s or more; with it, about 5 s
        elapsed = (datetime.fromisoformat(line["time"]) - datetime.fromisoformat(line["started_at"])).total_seconds()
        print(f"\n{line['id']}: {line['attempts']} attempts, ended {elapsed:.2f} s after its start "
              f"(max_elapsed_s {job.retry.max_elapsed_s:g}, timeout_s {job.timeout_s:g})")
        assert elapsed < job.retry.max_elapsed_s + 1.5, line
    assert result.summary["failed_by_kind"] == {"timeout": 2}
