"""Issue 26, point 4: failure kinds are permanent or transient. A re-run retries transient
failures and keeps permanent ones (reported, not sent again, no effect on the exit code of a run
with no new failure) unless --retry-permanent; the summary and status split the two."""

from __future__ import annotations

import subprocess

import orjson
import pytest

from batchrun.errors import PERMANENT_KINDS, is_permanent
from conftest import batchrun_cmd, read_jsonl

pytestmark = pytest.mark.slow  # runs in real processes, re-run after re-run

FAULTS = """
    [simulator]
    latency_ms = 1
    jitter = 0
    [[simulator.faults]]
    kind = "context_length"
    tickets = ["T000003"]
    """
TRANSIENT = """
    [[simulator.faults]]
    kind = "503"
    tickets = ["T000009"]
    attempts = [1, 2, 3]
    """


def run(job, env, *args):
    return subprocess.run(batchrun_cmd("run", str(job), "--no-progress", *args), env=env, capture_output=True,
                          text=True, timeout=180)


def test_kinds_are_classed():
    assert PERMANENT_KINDS == {"context_window", "content_policy", "bad_request", "auth", "permission", "not_found"}
    assert not any(is_permanent(k) for k in ("rate_limited", "timeout", "connection", "server_error",
                                             "stream_cut", "invalid_output", "unknown", None))
    # an endpoint's spent budget (issue 28) says nothing about the tickets: the run after a top-up sends them
    assert not is_permanent("budget_exceeded") and not is_permanent("configuration")


def test_a_rerun_retries_transient_failures_and_keeps_permanent_ones(make_job, tmp_path, cli_env):
    job = make_job(12, extra=FAULTS + TRANSIENT)
    first = run(job, cli_env, "--json")
    assert first.returncode == 3, first.stderr
    summary = orjson.loads(first.stdout)["summary"]
    assert (summary["failed"], summary["failed_permanent"], summary["failed_transient"]) == (2, 1, 1)

    job.write_text(job.read_text().replace('kind = "503"', 'kind = "ok"'))  # the outage is over
    second = run(job, cli_env)
    assert second.returncode == 0, second.stderr  # no new failure: exit 0, the permanent one kept
    assert ("1 permanent failure(s) from earlier runs, not retried (context_window 1): --retry-permanent "
            "to send them again") in second.stderr
    assert "kept (permanent failures)" in second.stdout
    errors = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert [(e["id"], e["run"]) for e in errors if e["id"] == "T000003"] == [("T000003", 1)]  # not sent again
    assert "T000009" in {r["id"] for r in read_jsonl(tmp_path / "run" / "results.jsonl")}

    status = subprocess.run(batchrun_cmd("status", str(tmp_path / "run"), "--json"), env=cli_env,
                            capture_output=True, text=True, timeout=60)
    info = orjson.loads(status.stdout)
    assert (info["failed"], info["failed_permanent"], info["failed_transient"]) == (1, 1, 0)

    third = run(job, cli_env, "--retry-permanent")
    assert third.returncode == 3, third.stderr
    errors = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert [e["run"] for e in errors if e["id"] == "T000003"] == [1, 3]


@pytest.mark.parametrize("flag", ["--skip-failed"])
def test_skip_failed_still_keeps_every_failure(make_job, tmp_path, cli_env, flag):
    job = make_job(6, extra=FAULTS + TRANSIENT)
    assert run(job, cli_env).returncode == 3
    again = run(job, cli_env, flag)
    assert again.returncode == 0 and "Nothing to do" in again.stdout


AUTH_STREAK = """
    [simulator]
    latency_ms = 1
    jitter = 0
    [[simulator.faults]]
    kind = "401"
    rate = 1.0
    """


def test_auth_failures_of_a_run_fail_fast_stopped_are_retried_once_the_key_is_fixed(make_job, tmp_path, cli_env):
    """A fail-fast streak of 401s is the key's fault, not the tickets': the next run sends them again."""
    job = make_job(10, concurrency=1, top="fail_fast_after = 3", extra=AUTH_STREAK)
    first = run(job, cli_env, "--json")
    assert first.returncode == 4, first.stderr
    summary = orjson.loads(first.stdout)["summary"]
    assert summary["failed"] == 3 and summary["failed_permanent"] == 0 and summary["stop_reason"] == "fail_fast"
    job.write_text(job.read_text().replace('kind = "401"', 'kind = "ok"'))  # the key is fixed
    second = run(job, cli_env)
    assert second.returncode == 0, second.stderr
    assert "permanent failure" not in second.stderr
    assert len(read_jsonl(tmp_path / "run" / "results.jsonl")) == 10


def test_a_not_found_below_the_fail_fast_threshold_is_kept(make_job, tmp_path, cli_env):
    job = make_job(10, extra="""
        [simulator]
        latency_ms = 1
        jitter = 0
        [[simulator.faults]]
        kind = "404_model"
        tickets = ["T000004"]
        attempts = [1, 2, 3]
        """)
    assert run(job, cli_env).returncode == 3
    again = run(job, cli_env)
    assert again.returncode == 0 and "1 permanent failure(s) from earlier runs, not retried (not_found 1)" in again.stderr
