"""The command line end to end, in real processes (forked from a warm one that
imported litellm once: tests/forkserver.py): real litellm, real HTTP to the
simulator, real signals. Resume is checked against the simulator's own count
of requests per ticket id. The refusals, which only read a message and an exit
code, run in this process (invoke_cli)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from batchrun.rundir.lines import scan_jsonl
from conftest import batchrun_cmd, cli_popen, cli_run, invoke_cli, read_jsonl

N_TICKETS = 240


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[Any]:
    """A simulator slow enough (40 ms) that a run can be stopped part-way."""
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    with start_simulator(SimConfig(latency_ms=40.0, jitter=0.2)) as process:
        yield process


def wait_for_lines(path: Path, n: int, proc: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {n} lines: {proc.communicate()}")
        time.sleep(0.01)
    raise AssertionError(f"no {n} lines in {path} after {timeout} s")


def run_cli(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return cli_run(batchrun_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def assert_exactly_once(results: Path, expected_ids: set[str]) -> list[dict]:
    raw = results.read_bytes()
    assert raw.endswith(b"\n"), "torn last line left behind"
    rows = [orjson.loads(line) for line in raw.splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id appears twice in results.jsonl"
    assert set(ids) == expected_ids
    return rows


def input_ids(job: Path) -> set[str]:
    return {r["id"] for r in read_jsonl(job.parent / "tickets.jsonl")}


@pytest.mark.slow  # 240 tickets, a signal, then resumed twice
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly_and_rerun_resumes_without_repeats(make_job, tmp_path, slow_sim, cli_env,
                                                                 signum, code):
    job = make_job(N_TICKETS, concurrency=6)
    slow_sim.reset()
    args = ["run", str(job), "--api-base", slow_sim.base_url, "--no-progress"]
    proc = cli_popen(batchrun_cmd(*args), env=cli_env, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    results = tmp_path / "run" / "results.jsonl"
    wait_for_lines(results, 30, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert manifest["state"] == "interrupted"
    assert "re-run the same command to resume" in err
    first = scan_jsonl(results)
    assert first.torn_bytes == 0 and 30 <= len(first.ids) < N_TICKETS

    second = run_cli(args, cli_env)
    assert second.returncode == 0, second.stderr
    assert_exactly_once(results, input_ids(job))
    counts = slow_sim.stats()["requests_by_ticket"]
    # in-flight requests were given time to finish and be written: nothing was paid twice
    assert set(counts.values()) == {1} and len(counts) == N_TICKETS

    third = run_cli(args, cli_env)
    assert third.returncode == 0 and "Nothing to do" in third.stdout
    assert slow_sim.stats()["total_requests"] == N_TICKETS


@pytest.mark.slow  # a SIGKILL loop over 240 tickets
def test_sigkill_at_many_points_then_resume_is_exactly_once(make_job, tmp_path, slow_sim, cli_env):
    concurrency = 6
    job = make_job(N_TICKETS, concurrency=concurrency)
    slow_sim.reset()
    args = ["run", str(job), "--api-base", slow_sim.base_url, "--no-progress"]
    results = tmp_path / "run" / "results.jsonl"
    snapshots: list[tuple[set[str], dict[str, int]]] = []
    for kill_at in (3, 40, 95, 160):
        proc = cli_popen(batchrun_cmd(*args), env=cli_env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        wait_for_lines(results, kill_at, proc)
        proc.kill()
        proc.wait(timeout=30)
        on_disk = scan_jsonl(results).ids
        snapshots.append((on_disk, dict(slow_sim.stats()["requests_by_ticket"])))

    final = run_cli(args, cli_env)
    assert final.returncode == 0, final.stderr
    assert_exactly_once(results, input_ids(job))
    counts = slow_sim.stats()["requests_by_ticket"]
    for on_disk, counts_then in snapshots:
        for ticket_id in on_disk:  # never requested again once its line was on disk
            assert counts[ticket_id] == counts_then[ticket_id], ticket_id
    resent = sum(counts.values()) - N_TICKETS
    # What a SIGKILL can lose: tickets answered but not yet on disk. That is the requests in
    # flight (concurrency), the outcomes waiting for the writer (engine.py: a buffer of one per
    # worker, concurrency) and the batch the writer is appending (at most that buffer's worth):
    # 3 x concurrency per kill, never a ticket whose line was on disk (checked above).
    assert 0 <= resent <= len(snapshots) * 3 * concurrency


def test_torn_last_line_is_cut_and_its_ticket_rerun(make_job, tmp_path, sim, cli_env):
    job = make_job(12)
    args = ["run", str(job), "--api-base", sim.base_url, "--no-progress"]
    assert run_cli([*args, "--limit", "8"], cli_env).returncode == 0
    results = tmp_path / "run" / "results.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    torn_id = orjson.loads(lines[-1])["id"]
    results.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # crash mid-write

    sim.reset()
    rerun = run_cli(args, cli_env)
    assert rerun.returncode == 0, rerun.stderr
    assert "torn last line" in rerun.stderr
    assert_exactly_once(results, input_ids(job))
    assert torn_id in sim.stats()["requests_by_ticket"]
    assert len(sim.stats()["requests_by_ticket"]) == 5  # 4 never done + the torn one


def test_embedded_simulator_run_then_rerun_does_nothing(make_job, tmp_path, cli_env):
    job = make_job(20, extra="""
        [simulator]
        latency_ms = 5
        jitter = 0
    """)
    first = run_cli(["run", str(job), "--no-progress"], cli_env)
    assert first.returncode == 0, first.stderr
    assert "run 1 done" in first.stdout and "latency p50/p95/p99" in first.stdout
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert manifest["endpoint"] == "simulator" and manifest["state"] == "done"
    assert manifest["counts"]["done"] == 20 and manifest["summary"]["cost_usd"] > 0
    assert_exactly_once(tmp_path / "run" / "results.jsonl", input_ids(job))

    second = run_cli(["run", str(job), "--no-progress"], cli_env)
    assert second.returncode == 0
    assert "Nothing to do: 20 of 20 tickets already done" in second.stdout

    status = run_cli(["status", str(tmp_path / "run")], cli_env)
    assert status.returncode == 0 and "done" in status.stdout and "20" in status.stdout


def test_bad_job_file_fails_before_any_request_naming_the_field(make_job, tmp_path):
    job = make_job(5)
    job.write_text(job.read_text().replace("concurrency = 4", "concurrency = 0"))
    result = invoke_cli("run", str(job), "--no-progress")
    assert result.returncode == 2
    assert "concurrency" in result.stderr and str(job) in result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_input_line_fails_before_any_request_naming_file_and_line(make_job, tmp_path, sim):
    job = make_job(5)
    tickets = tmp_path / "tickets.jsonl"
    lines = tickets.read_bytes().splitlines(keepends=True)
    lines.insert(3, b'{"id": "broken", "subject": \n')
    tickets.write_bytes(b"".join(lines))
    sim.reset()
    result = invoke_cli("run", str(job), "--api-base", sim.base_url, "--no-progress")
    assert result.returncode == 2
    assert f"{tickets}:4: invalid JSON" in result.stderr
    assert sim.stats()["total_requests"] == 0


def test_missing_key_variable_is_named_and_nothing_is_sent(make_job, tmp_path, sim):
    job = make_job(5)
    result = invoke_cli("run", str(job), "--api-base", sim.base_url, "--no-progress", key=None)
    assert result.returncode == 2 and "BATCHRUN_TEST_KEY is not set" in result.stderr


def _worker_children(pid: int) -> list[int]:
    from test_workers import children_of

    return children_of(pid)


@pytest.mark.slow  # worker processes, SIGINT, SIGKILL
def test_worker_processes_stop_on_sigint_and_die_with_a_killed_coordinator(make_job, tmp_path, slow_sim, cli_env):
    job = make_job(N_TICKETS, concurrency=8)
    slow_sim.reset()
    args = ["run", str(job), "--api-base", slow_sim.base_url, "--no-progress", "--workers", "2"]
    results = tmp_path / "run" / "results.jsonl"

    proc = cli_popen(batchrun_cmd(*args), env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True)
    wait_for_lines(results, 20, proc)
    assert len(_worker_children(proc.pid)) == 2
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert set(slow_sim.stats()["requests_by_ticket"].values()) == {1}  # in flight finished, none repeated

    proc = cli_popen(batchrun_cmd(*args), env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_lines(results, len(scan_jsonl(results).ids) + 20, proc)
    children = _worker_children(proc.pid)
    assert len(children) == 2
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and b"batchrun.execution.executors.worker_child" in Path(f"/proc/{pid}/cmdline").read_bytes()
              for pid in children if Path(f"/proc/{pid}/cmdline").exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [pid for pid in children
             if Path(f"/proc/{pid}/cmdline").exists() and b"batchrun.execution.executors.worker_child" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert alive == [], "worker processes outlived a SIGKILLed coordinator"

    final = run_cli(args, cli_env)
    assert final.returncode == 0, final.stderr
    assert_exactly_once(results, input_ids(job))


@pytest.mark.slow  # signals against 5 s requests
def test_a_second_signal_stops_at_once_leaving_parseable_files(make_job, tmp_path, cli_env):
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    job = make_job(60, concurrency=6)
    # 5 s per request: the grace period would wait for them, the second signal does not
    with start_simulator(SimConfig(latency_ms=5000, jitter=0)) as sim:
        proc = cli_popen(batchrun_cmd("run", str(job), "--api-base", sim.base_url, "--no-progress",
                                      "--grace", "600"),
                         env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while sim.stats()["in_flight"] < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)  # not 600 s of grace
    assert proc.returncode == 130, err
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert manifest["state"] == "interrupted"
    results = tmp_path / "run" / "results.jsonl"
    assert scan_jsonl(results).torn_bytes == 0 if results.exists() else True
