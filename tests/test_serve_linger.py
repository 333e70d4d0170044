"""Issue 26, point 10: `batchrun run --serve` keeps serving the finished run's page (its final
state) until Ctrl-C or --serve-linger SECONDS; without a terminal and without --serve-linger it
does not hold a cron job."""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

import orjson
import pytest

from conftest import batchrun_cmd

pytestmark = pytest.mark.slow  # a run's page served past the run's end, waited out


def _page(proc: subprocess.Popen, deadline: float) -> str:
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        match = re.search(r"(http://127\.0\.0\.1:\d+)/runs/tonight\b", proc.stderr.readline())
        if match:
            return match.group(1)
    raise AssertionError("no page URL printed")


@pytest.mark.parametrize("stop", ["ctrl-c", "linger"])
def test_the_finished_run_stays_served_until_ctrl_c_or_the_linger(make_job, tmp_path, cli_env, stop):
    job = make_job(20, concurrency=4, extra="[simulator]\nlatency_ms = 2\njitter = 0\n")
    run_dir = tmp_path / "runs" / "tonight"
    linger = "120" if stop == "ctrl-c" else "3"
    proc = subprocess.Popen(batchrun_cmd("run", str(job), "--run-dir", str(run_dir), "--no-progress",
                                         "--serve-linger", linger, "--serve", "0"),
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        page = _page(proc, deadline)
        assert proc.stderr is not None
        while "the run is over; its page stays served" not in proc.stderr.readline():
            assert time.monotonic() < deadline and proc.poll() is None
        with urllib.request.urlopen(f"{page}/api/runs/tonight", timeout=10) as answer:
            status = orjson.loads(answer.read())
        assert status["state"] == "finished" and status["done"] == 20  # the final state, still served
        if stop == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0  # the run's exit code, not 130: the run was over
        assert "exit=0" in proc.stderr.read().splitlines()[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(OSError):  # the server ended with the wait
        urllib.request.urlopen(f"{page}/api/runs", timeout=5)
