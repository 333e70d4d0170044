"""What `batchrun run` prints, for a terminal, a cron log and a script: plain
progress lines without a TTY (--progress-every), the summary on stdout and
logs on stderr, --json, failures grouped by kind, --workers auto, the
[params] check and "did you mean" on job keys. Real runs against the
simulator in real processes (stderr is a pipe, not a TTY), forked from a warm
one (tests/forkserver.py) except the first, which checks what a fresh
interpreter prints ("loading litellm..."); the refusals run in this process."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import orjson
import pytest

from batchrun.errors import JobSpecError
from batchrun.records import Outcome
from batchrun.job.spec import load_job
from batchrun.analysis.stats import RunStats, format_progress_line, format_summary
from conftest import batchrun_cmd, cli_run, invoke_cli

FAST_SIM = """
[simulator]
latency_ms = 1
"""
SLOW_SIM = """
[simulator]
latency_ms = 60
jitter = 0
"""


def run_cli(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return cli_run(batchrun_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # a fresh interpreter; a timed run with progress lines
def test_without_a_tty_plain_progress_lines_go_to_stderr_and_the_summary_to_stdout(make_job, cli_env):
    job = make_job(60, concurrency=2, extra=SLOW_SIM)
    # a fresh interpreter, not the warm one: "loading litellm..." is said only where it is imported
    result = subprocess.run(batchrun_cmd("run", str(job), "--progress-every", "0.3"), env=cli_env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if " progress: " in line]
    assert len(lines) >= 2, result.stderr  # 60 tickets x 60 ms / 2 in flight: about 1.8 s
    first = lines[0]
    for part in ("done ", "failed ", "to do ", "req/s", "$", "elapsed ", "ETA "):
        assert part in first, first
    assert "\r" not in result.stderr and "it/s" not in result.stderr  # no tqdm bar in a log
    assert "progress:" not in result.stdout
    assert "done in this run" in result.stdout and "done in this run" not in result.stderr
    assert "loading litellm..." in result.stderr
    assert "simulator listening on 127.0.0.1:" in result.stderr


def test_json_prints_one_object_on_stdout(make_job, cli_env):
    job = make_job(12, extra=FAST_SIM)
    result = run_cli(["run", str(job), "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    body = orjson.loads(result.stdout)  # the whole of stdout is one JSON object
    assert body["job"] == "test_job" and body["state"] == "done" and body["exit_code"] == 0
    assert body["summary"]["done"] == 12
    assert body["totals"] == {"input_tickets": 12, "asked": 12, "done": 12, "failed": 0, "remaining": 0}
    assert Path(body["run_dir"]).name == "run"
    again = orjson.loads(run_cli(["run", str(job), "--json"], cli_env).stdout)  # nothing to do: still JSON
    assert again["summary"]["done"] == 0 and again["summary"]["already_done"] == 12


def test_failures_are_grouped_by_kind_with_their_most_frequent_messages(make_job, cli_env):
    job = make_job(30, extra="""
        [simulator]
        latency_ms = 1
        [[simulator.faults]]
        kind = "context_length"
        tickets = ["T000001", "T000002", "T000003"]
        attempts = [1, 2, 3]
        [[simulator.faults]]
        kind = "404_model"
        tickets = ["T000004"]
        attempts = [1, 2, 3]
        """)
    result = run_cli(["run", str(job)], cli_env)
    assert result.returncode == 3, result.stderr
    out = result.stdout
    assert "failed tickets, most frequent messages" in out
    block = out[out.index("failed tickets, most frequent messages"):]
    assert "context_window       3" in block  # litellm calls the kind context_window
    assert "maximum context length" in block  # the message itself, shortened
    assert "not_found" in block
    body = orjson.loads(run_cli(["run", str(job), "--json", "--retry-permanent"], cli_env).stdout)
    failures = body["summary"]["failures"]
    assert failures["context_window"]["count"] == 3
    text, count = failures["context_window"]["top_messages"][0]
    assert count == 3 and "maximum context length" in text and len(text) <= 120


def failure(ticket_id: str, kind: str, message: str) -> Outcome:
    return Outcome(ticket_id=ticket_id, attempts=1, started_at="", finished_at="", elapsed_ms=1.0, run=1,
                   error_kind=kind, error_message=message)


def test_summary_messages_are_shortened_redacted_and_bounded():
    stats = RunStats(to_do=300)
    for i in range(40):
        stats.record(failure(f"k{i}", "auth", f"Incorrect API key provided: sk-abcdefghijklmnop{i} " + "x" * 300))
    for i in range(100):  # 100 distinct messages (letters, not numbers: numbers group)
        stats.record(failure(f"s{i}", "server_error", f"upstream {chr(97 + i % 26)}{chr(97 + i // 26)} failed"))
    for i in range(7):
        stats.record(failure(f"t{i}", "context_window", f"maximum context length is 8192, you sent {9000 + i}"))
    summary = stats.summary()
    assert list(summary["failures"]) == ["server_error", "auth", "context_window"]  # most tickets first
    auth = summary["failures"]["auth"]
    assert auth["count"] == 40 and len(auth["top_messages"]) == 1
    text, count = auth["top_messages"][0]
    assert count == 40 and "sk-abcdefghijklmnop" not in text and "[REDACTED]" in text and len(text) <= 120
    assert summary["failures"]["context_window"]["top_messages"] == [
        ["maximum context length is N, you sent N", 7]]
    assert len(summary["failures"]["server_error"]["top_messages"]) == 3
    assert len(stats.failure_messages["server_error"]) == 51  # bounded: 50 distinct + "(other messages)"
    assert "failed tickets, most frequent messages" in format_summary(summary)


def test_progress_line_counts_and_eta():
    stats = RunStats(to_do=100, started=1000.0)
    stats.first_dispatch = 1000.0
    stats.done, stats.failed, stats.attempts, stats.cost_usd = 40, 10, 60, 0.5
    line = format_progress_line(stats, now=1010.0)
    assert "done 40, failed 10, to do 50 of 100" in line
    assert "6.0 req/s" in line and "$0.5000" in line and "elapsed 10 s" in line and "ETA 10 s" in line


def test_workers_auto_is_accepted_by_run(make_job, cli_env):
    job = make_job(5, extra=FAST_SIM)
    result = run_cli(["run", str(job), "--workers", "auto"], cli_env)
    assert result.returncode == 0, result.stderr
    bad = invoke_cli("run", str(job), "--workers", "many")
    assert bad.returncode == 2 and "'auto'" in bad.stderr


def test_a_typo_in_params_is_refused_with_the_nearest_key(make_job):
    job = make_job(5, extra=FAST_SIM)
    job.write_text(job.read_text().replace("temperature = 0", "temprature = 0"))
    result = invoke_cli("run", str(job))
    assert result.returncode == 2
    assert "`params.temprature`" in result.stderr and "did you mean `temperature`?" in result.stderr
    assert "unchecked_params" in result.stderr
    assert not (job.parent / "run" / "results.jsonl").exists()  # nothing was sent


def test_unchecked_params_let_a_deliberate_key_through(make_job, cli_env):
    job = make_job(3, top='unchecked_params = ["repetition_penaltyy"]', extra=FAST_SIM)
    job.write_text(job.read_text().replace("max_tokens = 5", "max_tokens = 5\nrepetition_penaltyy = 1.1"))
    result = run_cli(["run", str(job)], cli_env)
    assert result.returncode == 0, result.stderr


def test_provider_specific_keys_pass(make_job):
    from batchrun.providers.litellm_setup import unknown_params

    assert unknown_params("anthropic/claude-3-5-sonnet-20241022", {"top_k": 5, "temperature": 0}) == {}
    assert unknown_params("openai/gpt-4o-mini", {"max_tokns": 5}) == {"max_tokns": "max_tokens"}
    assert unknown_params("nosuchprovider/x", {"anything": 1}) is None  # nothing to check against


@pytest.mark.parametrize("line, where, guess", [
    ("concurency = 4", "`concurency`", "`concurrency`"),
    ("[retry]\nmax_atempts = 3", "`retry.max_atempts`", "`max_attempts`"),
    ("[simulator]\nlatncy_ms = 3", "`simulator.latncy_ms`", "`latency_ms`"),
    ("[[models]]\nname = \"a\"\nmodel = \"m\"\nmodle = \"x\"", "`models.0.modle`", "`model`"),
])
def test_unknown_job_keys_get_did_you_mean(tmp_path, line, where, guess):
    path = tmp_path / "job.toml"
    path.write_text(textwrap.dedent("""\
        name = "t"
        input = "x.jsonl"
        model = "openai/gpt-4o-mini"
        """) + line + '\n[prompt]\nuser = "{a}"\n')
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert where in str(info.value) and f"did you mean {guess}?" in str(info.value)


def test_a_top_level_key_written_inside_a_section_says_so(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('name = "t"\ninput = "x.jsonl"\nmodel = "m"\n[prompt]\nuser = "{a}"\nconcurrency = 4\n')
    with pytest.raises(JobSpecError, match=r"`prompt.concurrency`: unknown field: `concurrency` is a top-level"):
        load_job(path)
