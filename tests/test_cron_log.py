"""Issue 26, point 3: a log for cron. Every line batchrun writes to stderr and to --log-file starts
with one ISO 8601 date-time format; litellm's INFO lines only at -vv; the log file gets the header,
progress lines, each failure kind once with its count and a final `state=... exit=N` line; error
messages are the provider's (errors.jsonl too); each message once; --json answers an early stop on
stdout; the headline says `done with N failed`."""

from __future__ import annotations

import re
import subprocess

import orjson
import pytest

from conftest import batchrun_cmd, read_jsonl

pytestmark = pytest.mark.slow  # real runs with a log file, each in its own process

DATED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2} ")
FAILING = """
    [simulator]
    latency_ms = 20
    jitter = 0
    [[simulator.faults]]
    kind = "context_length"
    tickets = ["T000003", "T000007"]
    attempts = [1, 2, 3]
    [[simulator.faults]]
    kind = "503"
    tickets = ["T000005"]
    attempts = [1]
    """


def run(args, env, timeout=180):
    return subprocess.run(batchrun_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_the_cron_log_is_dated_and_tells_the_story(make_job, tmp_path, cli_env, verbose):
    job = make_job(40, concurrency=2, extra=FAILING)
    log = tmp_path / "night.log"
    result = run(["run", str(job), "--log-file", str(log), "--progress-every", "0.2", *verbose], cli_env)
    assert result.returncode == 3, result.stderr
    written = log.read_text().splitlines()
    for line in written + result.stderr.splitlines():
        assert DATED.match(line), line  # one format, every line, multi-line messages too
    text = "\n".join(written)
    assert "LiteLLM" not in text and "LiteLLM" not in result.stderr  # not its INFO lines (that needs -vv)
    assert "test_job: 40 to do, 0 already done, model openai/gpt-4o-mini via simulator" in text  # the header
    assert text.count(" to do, 0 already done") == 1  # once
    assert " batchrun: progress: done " in text
    assert text.count("failed: context_window 2 (permanent") == 1  # each kind once, with its count
    assert re.search(r" batchrun: state=done done=38 failed=2 cost=\$\d+\.\d{6} exit=3$", written[-1])
    assert written == [line for line in result.stderr.splitlines()]  # stderr and the log file agree
    if verbose:  # the detail of each failure at -v only
        assert "T000003: failed after" in text and " INFO batchrun: " in text
    else:
        assert "T000003: failed after" not in text
    assert result.stdout.splitlines()[0] == "test_job: run 1 done with 2 failed"  # the headline
    for line in read_jsonl(tmp_path / "run" / "errors.jsonl"):  # the provider's message, not litellm's chain
        assert line["message"].startswith("This model's maximum context length is"), line["message"]


def test_litellm_info_lines_only_at_vv_and_dated(make_job, tmp_path, cli_env):
    job = make_job(3, concurrency=1, extra=FAILING)
    log = tmp_path / "debug.log"
    result = run(["run", str(job), "--no-progress", "-vv", "--log-file", str(log)], cli_env)
    assert "LiteLLM completion()" in log.read_text()
    assert all(DATED.match(line) for line in log.read_text().splitlines()), log.read_text()[:2000]
    assert "LiteLLM" not in result.stdout


def test_a_stop_is_said_once(make_job, tmp_path, cli_env):
    job = make_job(40, concurrency=2, extra="[simulator]\nlatency_ms = 5\njitter = 0\n")
    log = tmp_path / "budget.log"
    result = run(["run", str(job), "--max-cost-usd", "0.00003", "--log-file", str(log)], cli_env)
    assert result.returncode == 5, result.stderr
    assert result.stderr.count("budget reached") == 1 and log.read_text().count("budget reached") == 1
    assert "state=budget_exhausted" in log.read_text().splitlines()[-1]


def test_json_answers_an_early_stop_on_stdout(make_job, tmp_path, cli_env):
    job = make_job(3)
    env = {k: v for k, v in cli_env.items() if k != "BATCHRUN_TEST_KEY"}
    result = run(["run", str(job), "--json", "--live"], env)
    assert result.returncode == 2
    body = orjson.loads(result.stdout)
    assert body["exit_code"] == 2 and "BATCHRUN_TEST_KEY is not set" in body["error"]
    assert DATED.match(result.stderr.splitlines()[0]) and "exit=2" in result.stderr.splitlines()[-1]
