"""Fault handling in the engine, with a scripted provider: fail-fast, budget,
bad-input policy, Retry-After over the cap, checkpoint write errors, resume
safety (changed job or input), and the shared 429 pause."""

from __future__ import annotations

import anyio
import orjson
import pytest

from batchrun import Completion, ScriptedProvider, Usage, execute_run, load_job, prepare_run
from batchrun.rundir.checkpoint import CheckpointWriter
from batchrun.rundir.manifest import read_manifest
from batchrun.errors import CheckpointError, ExitCode, RateLimitedError, RunMismatchError, TerminalError, TicketError
from batchrun.execution.limits import CostBudget, RequestGate
from conftest import read_jsonl


def ok(request, cost: float = 0.001) -> Completion:
    return Completion(text="bug", finish_reason="stop", model="fake", usage=Usage(10, 1, 11),
                      cost_usd=cost, cost_status="litellm")


def run(job, provider, **prepare):
    prep = prepare_run(job, endpoint="fake", **prepare)
    try:
        return prep, (anyio.run(lambda: execute_run(prep, provider)) if prep.to_do else None)
    finally:
        prep.release()


def test_fail_fast_stops_a_run_of_auth_errors_and_the_run_resumes(make_job, tmp_path):
    job = load_job(make_job(200, concurrency=2))
    bad_key = ScriptedProvider(lambda r: TerminalError("Incorrect API key provided", kind="auth", status_code=401))
    _, result = run(job, bad_key)
    assert result.exit_code == ExitCode.ABORTED and result.state == "failed"
    assert "5 tickets in a row failed with auth (HTTP 401)" in result.error
    assert "BATCHRUN_TEST_KEY" in result.error
    assert 5 <= len(bad_key.calls) <= 5 + 2  # the streak, plus what was already in flight
    assert read_manifest(tmp_path / "run")["state"] == "failed"

    fixed = ScriptedProvider(ok)
    prep, result = run(job, fixed)
    assert result.exit_code == ExitCode.OK and len(fixed.calls) == 200
    assert len(read_jsonl(tmp_path / "run" / "results.jsonl")) == 200


def test_fail_fast_streak_is_broken_by_a_success(make_job):
    job = load_job(make_job(30, concurrency=1))
    n = [0]

    def alternate(request):
        n[0] += 1
        return ok(request) if n[0] % 4 == 0 else TerminalError("no such model", kind="not_found", status_code=404)

    _, result = run(job, ScriptedProvider(alternate))
    assert result.exit_code == ExitCode.TICKETS_FAILED  # 3 in a row at most: never aborted
    assert result.summary["failed"] == 23 and result.summary["done"] == 7


def test_budget_stops_dispatch_then_resumes_with_a_larger_budget(make_job, tmp_path):
    job = load_job(make_job(40, concurrency=3))
    provider = ScriptedProvider(ok, cost_estimate=0.001)
    _, result = run(job, provider, max_cost_usd=0.0105)
    assert result.state == "budget_exhausted" and result.exit_code == ExitCode.BUDGET_EXHAUSTED
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(rows) == len(provider.calls) == 10
    assert sum(r["cost_usd"] for r in rows) <= 0.0105
    assert "max_cost_usd" in result.error

    same = ScriptedProvider(ok, cost_estimate=0.001)
    _, result = run(job, same, max_cost_usd=0.0105)
    assert same.calls == [] and result.state == "budget_exhausted"

    larger = ScriptedProvider(ok, cost_estimate=0.001)
    _, result = run(job, larger, max_cost_usd=1.0)
    assert result.state == "done" and len(larger.calls) == 30


def test_budget_from_the_job_file(make_job, tmp_path):
    job = load_job(make_job(20, top="max_cost_usd = 0.0035\n"))
    provider = ScriptedProvider(ok, cost_estimate=0.001)
    _, result = run(job, provider)
    assert result.state == "budget_exhausted" and len(provider.calls) == 3


def bad_input(tmp_path):
    tickets = tmp_path / "tickets.jsonl"
    lines = tickets.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"id": "broken", \n'
    lines[5] = b"\n"
    lines[7] = b'["not", "an", "object"]\n'
    lines[8] = lines[0]  # duplicate id
    tickets.write_bytes(b"".join(lines))
    return tickets


def test_bad_input_fails_before_any_request_listing_every_line(make_job, tmp_path):
    job = load_job(make_job(12))
    tickets = bad_input(tmp_path)
    provider = ScriptedProvider(ok)
    with pytest.raises(TicketError) as info:
        run(job, provider)
    message = str(info.value)
    for line in (3, 6, 8, 9):
        assert f"{tickets}:{line}:" in message
    assert "duplicate id 'T000001' (first on line 1)" in message
    assert provider.calls == []


def test_bad_input_skip_policy_writes_rejects_and_runs_the_rest(make_job, tmp_path):
    job = load_job(make_job(12, top='on_bad_input = "skip"\n'))
    tickets = bad_input(tmp_path)
    provider = ScriptedProvider(ok)
    prep, result = run(job, provider)
    rejects = read_jsonl(tmp_path / "run" / "rejects.jsonl")
    assert [r["line"] for r in rejects] == [3, 6, 8, 9]
    assert all(r["file"] == str(tickets) and r["reason"] for r in rejects)
    assert result.summary["rejected_lines"] == 4 and result.summary["done"] == 8
    assert len(provider.calls) == 8 and result.exit_code == ExitCode.OK
    assert any("rejects.jsonl" in note for note in prep.notes)


def test_retry_after_over_the_cap_ends_the_ticket_as_rate_limited(make_job, tmp_path):
    job = load_job(make_job(1))
    provider = ScriptedProvider(lambda r: RateLimitedError("quota", kind="rate_limited", status_code=429,
                                                           retry_after=86400))
    _, result = run(job, provider)
    [error] = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert error["error_kind"] == "rate_limited" and error["attempts"] == 1
    assert "86400" in error["message"] and "max_retry_after_s" in error["message"]
    assert len(provider.calls) == 1


def test_a_checkpoint_write_error_fails_the_run_and_counts_only_lines_on_disk(make_job, tmp_path, monkeypatch):
    job = load_job(make_job(50, concurrency=2))
    real = CheckpointWriter.write_batch
    writes = [0]

    async def flaky_write(self, outcomes):
        writes[0] += 1
        if writes[0] > 5:
            raise CheckpointError(f"{self.run_dir}: cannot append to checkpoint: No space left on device")
        return await real(self, outcomes)

    monkeypatch.setattr(CheckpointWriter, "write_batch", flaky_write)
    prep = prepare_run(job, endpoint="fake")
    try:
        result = anyio.run(lambda: execute_run(prep, ScriptedProvider(ok)))
    finally:
        prep.release()
    assert result.state == "failed" and result.exit_code == ExitCode.ERROR and "No space left" in result.error
    manifest = read_manifest(tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert manifest["state"] == "failed" and "No space left" in manifest["error"]
    assert manifest["summary"]["done"] == len(rows) == manifest["counts"]["done"]


def test_resume_refuses_a_changed_job_or_input_unless_forced(make_job, tmp_path):
    path = make_job(5)
    run(load_job(path), ScriptedProvider(ok), limit=2)
    path.write_text(path.read_text().replace("Subject: {subject}", "Title: {subject}"))
    with pytest.raises(RunMismatchError, match="job prompt changed"):
        run(load_job(path), ScriptedProvider(ok))
    tickets = tmp_path / "tickets.jsonl"
    tickets.write_bytes(tickets.read_bytes() + orjson.dumps({"id": "new", "subject": "s", "body": "b"}) + b"\n")
    with pytest.raises(RunMismatchError) as info:
        run(load_job(path), ScriptedProvider(ok))
    assert "input changed" in str(info.value) and "--force" in str(info.value)
    forced = ScriptedProvider(ok)
    prep, result = run(load_job(path), forced, force=True)
    assert prep.already_done == 2 and len(forced.calls) == 4


def test_resume_refuses_another_endpoint(make_job):
    job = load_job(make_job(3))
    prep = prepare_run(job, endpoint="simulator", limit=1)
    try:
        anyio.run(lambda: execute_run(prep, ScriptedProvider(ok)))
    finally:
        prep.release()
    with pytest.raises(RunMismatchError, match="endpoint changed"):
        prepare_run(job, endpoint="https://api.openai.com/v1")


def test_cost_budget_arithmetic():
    budget = CostBudget(1.0, spent_before=0.5)
    assert budget.try_reserve(0.3) == 0.3
    assert budget.try_reserve(0.3) is None  # 0.5 + 0.3 + 0.3 > 1.0
    budget.settle(0.3, 0.1)
    assert budget.spent == pytest.approx(0.6) and budget.reserved == 0
    assert budget.try_reserve(None) == pytest.approx(0.1)  # the mean actual cost so far


async def test_a_429_pause_holds_every_worker():
    gate = RequestGate()
    gate.pause_all(0.05)
    started = anyio.current_time()
    await gate.wait_for_permit()
    waited = anyio.current_time() - started
    assert waited >= 0.04  # the pause is a floor on when the next attempt starts, not a timing measure
