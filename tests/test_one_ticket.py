"""Issue 26, points 5 and 6: one ticket at a glance (`batchrun show`, `run --dry-run`, the serve
page's failed tickets with their detail), and run directories that work from any directory."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import orjson
import pytest

from conftest import batchrun_cmd, read_jsonl, write_tickets

pytestmark = pytest.mark.slow  # each test runs a run first (real processes)

JOB = """\
name = "one"
input = "../data/tickets.jsonl"
model = "openai/gpt-4o-mini"
concurrency = 2
timeout_s = 10

[prompt]
system = "Classify the ticket: bug, feature, billing or other."
user = "Subject: {subject}\\n\\n{body}"

[params]
max_tokens = 5

[retry]
max_attempts = 3
max_elapsed_s = 30
initial_backoff_s = 0.01
max_backoff_s = 0.02

[simulator]
latency_ms = 2
jitter = 0
[[simulator.faults]]
kind = "context_length"
tickets = ["T000003"]
attempts = [1, 2, 3]
[[simulator.faults]]
kind = "503"
tickets = ["T000005"]
attempts = [1]
"""


def cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(batchrun_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture
def finished_run(tmp_path: Path, cli_env: dict[str, str]) -> Path:
    """A run started as `make run` starts one: relative paths, from the project's directory."""
    project = tmp_path / "project"
    (project / "jobs").mkdir(parents=True)
    (project / "data").mkdir()
    tickets = write_tickets(project / "data" / "tickets.jsonl", 8)
    lines = tickets.read_bytes().splitlines(keepends=True)
    hostile = orjson.loads(lines[6])
    hostile["body"] = "please \x1b[31mturn red\x1b[0m and \u202eflip"
    lines[6] = orjson.dumps(hostile) + b"\n"
    tickets.write_bytes(b"".join(lines))
    (project / "jobs" / "one.toml").write_text(JOB)
    result = cli(["run", "jobs/one.toml", "--run-dir", "runs/one", "--no-progress"], cli_env, cwd=project)
    assert result.returncode == 3, result.stderr
    return project / "runs" / "one"


def test_show_prints_messages_attempts_answer_and_verdict(finished_run, tmp_path, cli_env):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    retried = cli(["show", str(finished_run), "T000005"], cli_env, cwd=elsewhere)
    assert retried.returncode == 0, retried.stderr
    out = retried.stdout
    assert "[system] Classify the ticket" in out and "[user] Subject: " in out  # the rendered messages
    assert "run 1: done, 2 attempt(s) recorded" in out
    assert "server_error HTTP 503" in out and "The engine is currently overloaded" in out  # the failed attempt
    assert "  ok  " in out and "tokens " in out and "model gpt-4o-mini" in out and "$0.0000" in out  # the answer's
    assert "answer:" in out and "verdict" in out and "accepted" in out

    failed = cli(["show", str(finished_run), "T000003"], cli_env, cwd=elsewhere)
    assert failed.returncode == 0
    assert "failed: context_window (HTTP 400), permanent" in failed.stdout
    assert "This model's maximum context length" in failed.stdout

    hostile = cli(["show", str(finished_run), "T000007"], cli_env, cwd=elsewhere)
    assert "\x1b" not in hostile.stdout and "\u202e" not in hostile.stdout
    assert "\\x1b[31mturn red" in hostile.stdout and "\\u202eflip" in hostile.stdout

    as_json = orjson.loads(cli(["show", str(finished_run), "T000005", "--json"], cli_env, cwd=elsewhere).stdout)
    attempts = as_json["models"][""]["runs"][0]["attempts"]
    assert [a["kind"] for a in attempts] == ["server_error", "ok"] and attempts[0]["at"]

    unknown = cli(["show", str(finished_run), "NO-SUCH-ID"], cli_env, cwd=elsewhere)
    assert unknown.returncode == 2 and "no ticket 'NO-SUCH-ID'" in unknown.stderr


def test_a_retried_ticket_line_records_its_failed_attempts(finished_run):
    line = next(r for r in read_jsonl(finished_run / "results.jsonl") if r["id"] == "T000005")
    [failure] = line["failed_attempts"]
    assert failure["kind"] == "server_error" and failure["status_code"] == 503 and failure["attempt"] == 1
    assert "failed_attempts" not in next(r for r in read_jsonl(finished_run / "results.jsonl") if r["id"] == "T000001")


def test_run_directories_work_from_any_directory_and_after_a_move(finished_run, tmp_path, cli_env):
    manifest = orjson.loads((finished_run / "manifest.json").read_bytes())
    assert Path(manifest["input"]["path"]).is_absolute()
    assert manifest["input"]["path_from_run_dir"] == "../../data/tickets.jsonl"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (["export", str(finished_run)], ["report", str(finished_run)], ["status", str(finished_run)],
                 ["show", str(finished_run), "T000001"]):
        result = cli(args, cli_env, cwd=elsewhere)
        assert result.returncode == 0, (args, result.stderr)
    assert len(read_jsonl(finished_run / "export.jsonl")) == 8
    # the run directory and its input moved together: found relative to the run directory
    moved = tmp_path / "moved"
    shutil.copytree(finished_run.parent.parent, moved)
    shutil.rmtree(finished_run.parent.parent)
    result = cli(["export", str(moved / "runs" / "one"), "--format", "csv"], cli_env, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    # --input overrides the manifest
    (moved / "data" / "tickets.jsonl").rename(moved / "tickets-copy.jsonl")
    lost = cli(["export", str(moved / "runs" / "one")], cli_env, cwd=elsewhere)
    assert lost.returncode == 2 and "--input PATH" in lost.stderr
    found = cli(["export", str(moved / "runs" / "one"), "--input", str(moved / "tickets-copy.jsonl")], cli_env,
                cwd=elsewhere)
    assert found.returncode == 0, found.stderr


@pytest.mark.parametrize("command", [["status"], ["show", "X"], ["export"], ["report"]])
def test_not_a_run_directory_is_exit_2_for_every_command(tmp_path, cli_env, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [command[0], str(empty), *command[1:]]
    result = cli(args, cli_env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "not a batchrun run" in result.stderr


def test_dry_run_renders_tickets_and_the_plan_and_sends_nothing(tmp_path, cli_env):
    project = tmp_path / "project"
    (project / "jobs").mkdir(parents=True)
    (project / "data").mkdir()
    write_tickets(project / "data" / "tickets.jsonl", 8)
    (project / "jobs" / "one.toml").write_text(JOB)
    result = cli(["run", "jobs/one.toml", "--run-dir", "runs/dry", "--dry-run", "2"], cli_env, cwd=project)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("-- ticket ") == 2 and "-- ticket T000001 (input line 1) --" in out
    assert "[system] Classify the ticket" in out and "[user] Subject: " in out
    assert "batchrun plan: one" in out and "expected cost" in out  # the plan's forecast
    assert "simulator listening" not in result.stderr  # nothing started, nothing sent
    assert not (project / "runs" / "dry").exists()  # nothing written


# -- the serve page: failed tickets and their detail -------------------------------------------


async def test_serve_lists_failed_tickets_and_gives_their_detail(finished_run):
    from aiohttp.test_utils import TestClient, TestServer

    from batchrun.serve.app import build_app

    root = finished_run.parent
    async with TestClient(TestServer(build_app(root, interval=0.1))) as client:
        run = await (await client.get("/api/runs/one")).json()
        [unit] = run["units"]
        assert [(t["id"], t["kind"], t["permanent"]) for t in unit["failed_tickets"]] == [
            ("T000003", "context_window", True)]
        assert "maximum context length" in unit["failed_tickets"][0]["message"]
        detail = await (await client.get("/api/runs/one/tickets/T000005")).json()
        part = detail["models"][""]
        assert [a["kind"] for a in part["runs"][0]["attempts"]] == ["server_error", "ok"]
        assert part["messages"] is None and part["answer"] is None  # text only with --show-text
        missing = await client.get("/api/runs/one/tickets/NOPE")
        assert missing.status == 404
    async with TestClient(TestServer(build_app(root, interval=0.1, show_text=True))) as client:
        part = (await (await client.get("/api/runs/one/tickets/T000005")).json())["models"][""]
        assert part["messages"][0]["role"] == "system" and part["answer"]["output"]
