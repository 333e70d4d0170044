"""The engine in-process: a scripted fake provider for the control flow, the
simulator through litellm for usage and cost."""

from __future__ import annotations

from pathlib import Path

import anyio
import orjson
import pytest

import batchrun.execution.dispatcher as engine_module
from batchrun import Completion, ScriptedProvider, Usage, execute_run, load_job, prepare_run
from batchrun.rundir.manifest import read_manifest
from batchrun.errors import ExitCode, RateLimitedError, RetryableError, TerminalError
from conftest import read_jsonl


def ok(request) -> Completion:
    return Completion(text="bug", finish_reason="stop", model="fake", usage=Usage(10, 1, 11),
                      cost_usd=0.001, cost_status="litellm")


def run(job_path: Path, provider, **prepare) -> tuple:
    job = load_job(job_path)
    prep = prepare_run(job, endpoint="fake", **prepare)
    try:
        result = anyio.run(lambda: execute_run(prep, provider)) if prep.to_do else None
    finally:
        prep.release()
    return prep, result


def test_all_succeed_once_and_rerun_does_nothing(make_job, tmp_path):
    job = make_job(30)
    provider = ScriptedProvider(ok)
    prep, result = run(job, provider)
    assert result.state == "done" and result.exit_code == ExitCode.OK
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(c.ticket_id for c in provider.calls)
    assert len(rows) == 30 == len({r["id"] for r in rows})
    assert rows[0]["usage"] == {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11,
                                "cached_tokens": None, "cache_write_tokens": None, "reasoning_tokens": None}
    assert result.summary["done"] == 30 and result.summary["cost_usd"] == pytest.approx(0.03)
    manifest = read_manifest(tmp_path / "run")
    assert manifest["state"] == "done" and manifest["counts"]["done"] == 30

    again = ScriptedProvider(ok)
    prep2, result2 = run(job, again)
    assert prep2.to_do == 0 and prep2.already_done == 30 and result2 is None
    assert again.calls == []


def test_retryable_errors_are_retried_and_counted(make_job, tmp_path):
    job = make_job(6)
    seen: dict[str, int] = {}

    def flaky(request):
        seen[request.ticket_id] = seen.get(request.ticket_id, 0) + 1
        if seen[request.ticket_id] == 1:
            return RateLimitedError("slow down", kind="rate_limited", status_code=429, retry_after=0.01)
        return ok(request)

    _, result = run(job, ScriptedProvider(flaky))
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert {r["attempts"] for r in rows} == {2}
    assert result.summary["requests"] == 12 and result.summary["retries"] == 6
    assert result.summary["rate_limited"] == 6
    assert result.summary["errors_by_kind"] == {"rate_limited": 6}


def test_retries_stop_at_max_attempts(make_job, tmp_path):
    job = make_job(2)  # max_attempts = 3 in the test job
    provider = ScriptedProvider(lambda r: RetryableError("boom", kind="server_error", status_code=503))
    _, result = run(job, provider)
    assert len(provider.calls) == 6
    errors = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert [e["attempts"] for e in errors] == [3, 3]
    assert {e["error_kind"] for e in errors} == {"server_error"}
    assert result.exit_code == ExitCode.TICKETS_FAILED


def test_terminal_errors_are_not_retried_then_kept_unless_retry_permanent(make_job, tmp_path):
    job = make_job(10)
    bad = {"T000003", "T000007"}

    def script(request):
        if request.ticket_id in bad:
            return TerminalError("context too long", kind="context_window", status_code=400)
        return ok(request)

    provider = ScriptedProvider(script)
    _, result = run(job, provider)
    assert len(provider.calls) == 10  # no retry of a 400
    errors = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert {e["id"] for e in errors} == bad
    assert all(e["attempts"] == 1 and e["status_code"] == 400 for e in errors)
    assert result.summary["failed"] == 2 and result.exit_code == ExitCode.TICKETS_FAILED

    skipped, _ = run(job, ScriptedProvider(ok), skip_failed=True)
    assert skipped.to_do == 0 and skipped.skipped_failed == 2

    kept, _ = run(job, ScriptedProvider(ok))  # context_window is permanent: a plain re-run keeps it
    assert kept.to_do == 0 and kept.skipped_permanent == 2

    retry = ScriptedProvider(ok)
    prep, result = run(job, retry, retry_permanent=True)
    assert prep.to_do == 2 and {c.ticket_id for c in retry.calls} == bad
    assert result.exit_code == ExitCode.OK
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(rows) == 10 == len({r["id"] for r in rows})
    assert {r["run"] for r in rows if r["id"] in bad} == {2}  # runs with nothing to do write no manifest


def test_limit_takes_the_first_n_tickets(make_job, tmp_path):
    job = make_job(20)
    provider = ScriptedProvider(ok)
    run(job, provider, limit=5)
    assert sorted(c.ticket_id for c in provider.calls) == [f"T00000{i}" for i in range(1, 6)]


class GatedProvider:
    """Blocks every call until released; records the peak number in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.calls = 0
        self.release = anyio.Event()
        self.read_at_first_call: int | None = None

    async def complete(self, request):
        self.calls += 1
        if self.read_at_first_call is None:
            self.read_at_first_call = READ_COUNT[0]
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight >= 3:
            self.release.set()
        await self.release.wait()
        await anyio.sleep(0)
        self.in_flight -= 1
        return ok(request)

    async def aclose(self) -> None:
        return None


READ_COUNT = [0]


def test_in_flight_and_read_ahead_are_bounded_by_concurrency(make_job, tmp_path, monkeypatch):
    job = make_job(200, concurrency=3)
    real_read = engine_module.read_tickets

    def counting_read(path, id_field="id", **kwargs):
        for ticket in real_read(path, id_field, **kwargs):
            READ_COUNT[0] += 1
            yield ticket

    monkeypatch.setattr(engine_module, "read_tickets", counting_read)
    provider = GatedProvider()
    prep = prepare_run(load_job(job), endpoint="fake")
    READ_COUNT[0] = 0  # count only what the run's producer reads
    try:
        result = anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()
    assert result.summary["done"] == 200 and provider.calls == 200
    assert provider.peak == 3
    # the producer may run ahead by the ticket buffer (= concurrency) plus the
    # tickets the workers hold: never the whole file
    assert provider.read_at_first_call is not None and provider.read_at_first_call <= 2 * 3 + 1


def test_ticket_text_is_sent_literally(make_job, tmp_path):
    job = make_job(1)
    tickets = tmp_path / "tickets.jsonl"
    tickets.write_bytes(orjson.dumps({"id": "x1", "subject": "{0.__class__} {{x}}", "body": "${HOME} {body}"}) + b"\n")
    provider = ScriptedProvider(ok)
    run(job, provider)
    user = provider.calls[0].messages[-1]["content"]
    assert user == "Subject: {0.__class__} {{x}}\n\n${HOME} {body}"


# -- through litellm to the simulator ------------------------------------------------


def run_live(job_path: Path, sim, model: str | None = None, prices=None) -> tuple:
    from batchrun.providers.online import LiteLLMProvider

    job = load_job(job_path)
    prep = prepare_run(job, endpoint="sim")
    provider = LiteLLMProvider(model=model or job.model, api_base=sim.base_url, api_key="sim-key",
                               params=job.params, prices=prices or job.prices)
    try:
        result = anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()
    return prep, result


def test_end_to_end_through_litellm_records_usage_and_cost(make_job, tmp_path, sim):
    job = make_job(25, concurrency=5)
    _, result = run_live(job, sim)
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(rows) == 25
    assert {r["output"] for r in rows} <= {"bug", "feature", "billing", "other"}
    for row in rows:
        assert row["usage"]["total_tokens"] == row["usage"]["prompt_tokens"] + row["usage"]["completion_tokens"]
        assert row["usage"]["prompt_tokens"] > 0
        assert row["cost_status"] == "litellm" and row["cost_usd"] > 0
        assert row["finish_reason"] == "stop" and row["attempts"] == 1
    assert result.summary["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows), rel=1e-6)
    assert result.summary["latency_ms"]["p50"] is not None


def test_unpriced_model_gives_null_cost_with_a_reason(make_job, tmp_path, sim):
    job = make_job(5, model="openai/acme-internal-classifier-v3")
    _, result = run_live(job, sim)
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(rows) == 5
    assert all(r["cost_usd"] is None and r["cost_status"] == "unpriced_model" for r in rows)
    assert result.summary["unpriced_results"] == 5 and result.summary["cost_usd"] == 0


def test_job_prices_win_over_litellm(make_job, tmp_path, sim):
    job = make_job(5, model="openai/acme-internal-classifier-v3", extra="""
        [prices]
        input_per_million = 1.0
        output_per_million = 2.0
    """)
    run_live(job, sim)
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    for row in rows:
        usage = row["usage"]
        expected = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
        assert row["cost_status"] == "job_prices" and row["cost_usd"] == pytest.approx(expected)


def test_sim_sees_exactly_one_request_per_ticket(make_job, tmp_path, sim):
    sim.reset()
    job = make_job(15)
    run_live(job, sim)
    counts = sim.stats()["requests_by_ticket"]
    ids = {r["id"] for r in read_jsonl(tmp_path / "run" / "results.jsonl")}
    assert set(counts) == ids and set(counts.values()) == {1}
