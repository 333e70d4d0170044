"""SIGINT/SIGTERM against real processes (forked from a warm one: tests/forkserver.py).

3.  After the first signal no request starts: tickets sleeping in backoff
    (a 429 with Retry-After) or waiting for the shared pause end at once,
    are not recorded as failures, and run on resume; the process exits as
    soon as the requests really in flight are done.
7e. The embedded simulator runs in its own process group: a Ctrl-C sent to
    the terminal's process group does not kill it, so the requests in flight
    during the grace period complete.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import batchrun_cmd, cli_popen, cli_run, read_jsonl

pytestmark = pytest.mark.slow  # signals against running processes, Retry-After and stall timers

RETRY_AFTER_S = 20  # longer than the deadline below: a sleeping ticket must not wait it out


def wait_until(condition, timeout: float, what: str, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"no {what} after {timeout} s")


@pytest.mark.parametrize("workers", [1, 2])
def test_sigint_ends_tickets_waiting_to_retry_and_sends_nothing_more(make_job, tmp_path, cli_env, workers):
    from batchrun.sim.config import SimConfig
    from batchrun.sim.faults import FaultRule

    from batchrun.sim.process import start_simulator

    # a retry budget far beyond the Retry-After: on a busy machine the worker processes' start counts
    # in a ticket's elapsed time, and a ticket that gave up would be a failure, not a sleeper
    job = make_job(20, concurrency=4, extra=f"max_retry_after_s = {RETRY_AFTER_S + 10}\n")
    job.write_text(job.read_text().replace("max_elapsed_s = 30", "max_elapsed_s = 600"))
    faults = (
        # three tickets are told to come back in 20 s (and everyone pauses for it) ...
        FaultRule("429", tickets=("T000001", "T000002", "T000003"), attempts=(1,), retry_after=RETRY_AFTER_S),
        # ... while one request is really in flight for 3 s
        FaultRule("stall", tickets=("T000004",), attempts=(1,), stall_s=3),
    )
    run_dir = tmp_path / "run"
    args = ["run", str(job), "--no-progress", "--workers", str(workers)]
    with start_simulator(SimConfig(latency_ms=1, jitter=0, faults=faults)) as sim:
        proc = cli_popen(batchrun_cmd(*args, "--api-base", sim.base_url), env=cli_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def stalled() -> bool:  # the first four sent (three told to wait), a request in flight
                stats = sim.stats()
                return len(stats["requests_by_ticket"]) >= 4 and "T000004" in stats["requests_by_ticket"] \
                    and stats["in_flight"] >= 1

            wait_until(stalled, 120, "four requests, one in flight", proc)
            sent_at_signal = sim.stats()["total_requests"]
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=15)  # generous; the Retry-After is 20 s
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        stats = sim.stats()
        assert proc.returncode == 130, err
        assert stats["total_requests"] == sent_at_signal, "a request started after the signal"
        assert stats["in_flight"] == 0
        results = {row["id"] for row in read_jsonl(run_dir / "results.jsonl")}
        assert "T000004" in results  # the request in flight finished and was kept
        assert read_jsonl(run_dir / "errors.jsonl") == []  # the sleeping tickets are not failures
        manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
        assert manifest["state"] == "interrupted"

        resumed = cli_run(batchrun_cmd(*args, "--api-base", sim.base_url), env=cli_env,
                          capture_output=True, text=True, timeout=180)
        assert resumed.returncode == 0, resumed.stderr
        done = {row["id"] for row in read_jsonl(run_dir / "results.jsonl")}
        assert {"T000001", "T000002", "T000003"} <= done and len(done) == 20


def _listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on (its socket inodes matched in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def _embedded_simulator(pid: int) -> int | None:
    """The pid of the simulator a batchrun process started, if any."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"batchrun.sim" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return None


def _sim_stats(port: int) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/sim/stats", timeout=5) as response:
        return orjson.loads(response.read())


def test_ctrl_c_to_the_process_group_leaves_the_embedded_simulator_serving_the_grace_period(
        make_job, tmp_path, cli_env):
    job = make_job(8, concurrency=4, extra="[simulator]\nlatency_ms = 5000\njitter = 0\n")  # 5 s: longer than the simulator's own shutdown wait
    run_dir = tmp_path / "run"
    # its own session: the test's process group is not signalled, the run's whole group is
    proc = cli_popen(batchrun_cmd("run", str(job), "--no-progress"), env=cli_env, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        sim_pid: list[int] = []
        ports: list[int] = []

        def simulator_found() -> bool:
            sim_pid[:] = sim_pid or [pid for pid in [_embedded_simulator(proc.pid)] if pid]
            return bool(sim_pid)

        def simulator_listening() -> bool:
            ports[:] = sorted(_listening_ports(sim_pid[0]))
            return bool(ports)

        wait_until(simulator_found, 120, "an embedded simulator", proc)
        wait_until(simulator_listening, 60, "a listening port", proc)
        wait_until(lambda: _sim_stats(ports[0])["in_flight"] == 4, 120, "four requests in flight", proc)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert read_jsonl(run_dir / "errors.jsonl") == []  # nothing failed against a dead port
    assert len(read_jsonl(run_dir / "results.jsonl")) >= 4  # the four in flight completed
    assert not Path(f"/proc/{sim_pid[0]}").exists() or b"batchrun.sim" not in \
        Path(f"/proc/{sim_pid[0]}/cmdline").read_bytes()  # and the simulator was stopped after the run
