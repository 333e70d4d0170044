"""The warm process (tests/forkserver.py) gives the tests what a real `python -m batchrun.cli` gives:
the same exit codes, stdout and stderr, the environment and working directory asked for, signals
delivered to the child, a SIGKILL reported as -9, its own session when asked, several commands at
once; and a real subprocess where litellm's import could show (another command, another environment).

Each check compares with a real subprocess where the command imports no litellm (cheap both ways)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import batchrun_cmd, cli_popen, cli_run
from forkserver import STATS, WarmProcess


def both(*args: str, env: dict[str, str], cwd: Path | None = None) -> tuple[Any, Any]:
    warm = cli_run(batchrun_cmd(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    real = subprocess.run(batchrun_cmd(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    return warm, real


@pytest.mark.parametrize("args", [("status", "/nonexistent/run"), ("run", "--no-such-flag"), ("--version",),
                                  ("status", "--help")])
def test_exit_code_stdout_and_stderr_are_those_of_a_real_process(cli_env, args):
    before = STATS["warm"]
    warm, real = both(*args, env=cli_env)
    assert STATS["warm"] == before + 1  # the first one ran in the warm process
    assert (warm.returncode, warm.stdout, warm.stderr) == (real.returncode, real.stdout, real.stderr)
    assert warm.stdout + warm.stderr  # something was said


def test_the_working_directory_and_the_environment_are_the_ones_given(tmp_path, cli_env, make_job, sim):
    made = cli_run(batchrun_cmd("init", "triage"), cwd=tmp_path, env=cli_env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "triage.toml").exists() and (tmp_path / "triage.jsonl").exists()
    job = make_job(3)
    args = batchrun_cmd("run", str(job), "--api-base", sim.base_url, "--no-progress")
    without = {k: v for k, v in cli_env.items() if k != "BATCHRUN_TEST_KEY"}
    refused = cli_run(args, env=without, capture_output=True, text=True)
    assert refused.returncode == 2 and "BATCHRUN_TEST_KEY is not set" in refused.stderr
    ran = cli_run(args, env=cli_env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr


def serving(env: dict[str, str], runs: Path, **kwargs: Any) -> tuple[Any, str]:
    """`batchrun serve RUNS` started, once it says where it listens."""
    proc = cli_popen(batchrun_cmd("serve", str(runs), "--port", "0"), env=env, stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE, text=True, **kwargs)
    line = proc.stderr.readline()
    assert re.search(r"on http://127\.0\.0\.1:\d+", line), (line, proc.communicate(timeout=30))
    return proc, line


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_signal_reaches_the_child_and_its_end_is_reported(tmp_path, cli_env, signum):
    codes = []
    for start in (cli_popen, subprocess.Popen):
        if start is cli_popen:
            proc, _ = serving(cli_env, tmp_path)
            assert isinstance(proc, WarmProcess)
        else:  # the same command in a fresh interpreter, to compare with
            proc = subprocess.Popen(batchrun_cmd("serve", str(tmp_path), "--port", "0"), env=cli_env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            assert "on http://127.0.0.1:" in proc.stderr.readline()
        assert proc.poll() is None
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        codes.append((proc.returncode, "Traceback" in err))
    assert codes[0] == codes[1], codes
    if signum == signal.SIGKILL:
        assert codes[0][0] == -9


def test_a_child_in_its_own_session_is_its_process_group(tmp_path, cli_env):
    proc, _ = serving(cli_env, tmp_path, start_new_session=True)
    try:
        assert os.getpgid(proc.pid) == proc.pid and os.getsid(proc.pid) == proc.pid
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -9
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_wait_and_communicate_time_out_like_popen(tmp_path, cli_env):
    proc, _ = serving(cli_env, tmp_path)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.communicate(timeout=0.2)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == -9


def test_several_commands_at_once(cli_env):
    results: list[Any] = []

    def one() -> None:
        results.append(cli_run(batchrun_cmd("status", "/nonexistent/run"), env=cli_env, capture_output=True,
                               text=True, timeout=120))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert len(results) == 6
    # exit 2: not a run directory, for every command (issue 26)
    assert {(r.returncode, r.stderr.count("no manifest.json")) for r in results} == {(2, 1)}


def test_what_the_warm_process_cannot_stand_for_runs_in_a_real_subprocess(cli_env, tmp_path):
    proc = cli_popen(batchrun_cmd("status", "/nonexistent/run"), env={**cli_env, "LITELLM_LOG": "DEBUG"},
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert isinstance(proc, subprocess.Popen)  # litellm reads LITELLM_LOG when it is imported
    assert proc.wait(timeout=120) == 2  # not a run directory (issue 26: exit 2 for every command)
    proc.communicate()
    proc = cli_popen(batchrun_cmd("plan", "--help"), env=cli_env, stdout=subprocess.PIPE)
    assert isinstance(proc, subprocess.Popen)  # plan imports litellm with its own logging settings
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Usage:" in out


def test_the_child_is_reaped_before_its_end_is_reported(tmp_path, cli_env):
    proc, _ = serving(cli_env, tmp_path)
    pid = proc.pid
    assert b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()  # the server's command line, forked
    proc.terminate()
    proc.communicate(timeout=60)
    assert proc.returncode is not None
    try:  # no zombie left behind (or the pid already belongs to another process)
        assert b"forkserver" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        pass
