"""Fail-fast on the same non-retryable error: behind a
LiteLLM proxy a bad model answers 400 "Invalid model name", never 401/403/404;
N tickets in a row ending with the same error class and message stop the run."""

from __future__ import annotations


import anyio

from batchrun import Completion, ScriptedProvider, Usage, execute_run, load_job, prepare_run
from batchrun.errors import ExitCode, TerminalError
from conftest import batchrun_cmd, cli_run, read_jsonl


def test_a_proxy_400_invalid_model_stops_the_run_over_http(make_job, tmp_path, cli_env):
    from batchrun.sim.config import SimConfig
    from batchrun.sim.faults import FaultRule
    from batchrun.sim.process import start_simulator

    job = make_job(200, concurrency=4, top="fail_fast_same_error_after = 10")
    rule = FaultRule.from_mapping({"kind": "400_invalid_model", "rate": 1})
    with start_simulator(SimConfig(latency_ms=1, jitter=0, faults=(rule,))) as sim:
        result = cli_run(batchrun_cmd("run", str(job), "--api-base", sim.base_url, "--no-progress"),
                         env=cli_env, capture_output=True, text=True, timeout=180)
        requests = sim.stats()["total_requests"]
    assert result.returncode == ExitCode.ABORTED, result.stderr
    assert "10 tickets in a row failed with the same error" in result.stderr
    assert "Invalid model name" in result.stderr
    assert requests <= 10 + 4  # the streak plus what was in flight: not 200
    assert len(read_jsonl(tmp_path / "run" / "errors.jsonl")) == requests


def ok(request) -> Completion:
    return Completion(text="bug", finish_reason="stop", model="fake", usage=Usage(10, 1, 11),
                      cost_usd=0.001, cost_status="litellm")


def run(job, provider):
    prep = prepare_run(job, endpoint="fake")
    try:
        return anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()


def test_different_messages_or_a_success_break_the_streak(make_job):
    job = load_job(make_job(60, concurrency=1, top="fail_fast_same_error_after = 3"))
    n = [0]

    def varied(request):
        n[0] += 1
        if n[0] % 3 == 0:
            return ok(request)
        # a per-ticket 400 (e.g. context window) names the ticket's numbers: never the same message
        return TerminalError(f"context is {1000 + n[0]} tokens", kind="context_window", status_code=400)

    result = run(job, ScriptedProvider(varied))
    assert result.exit_code == ExitCode.TICKETS_FAILED and result.summary["failed"] == 40


def test_the_same_message_in_a_row_stops_a_scripted_run(make_job):
    job = load_job(make_job(60, concurrency=1, top="fail_fast_same_error_after = 3"))
    bad = ScriptedProvider(lambda r: TerminalError("No connected db.", kind="bad_request", status_code=400))
    result = run(job, bad)
    assert result.exit_code == ExitCode.ABORTED and result.state == "failed"
    assert "3 tickets in a row failed with the same error" in result.error and "No connected db." in result.error
    assert len(bad.calls) == 3
