"""Where logs go: with -v batchrun's own log lines go to
stderr and stdout holds only the summary; litellm's INFO lines appear only at
-vv, and then on stderr too."""

from __future__ import annotations


import pytest

from conftest import batchrun_cmd, cli_run

FAULTY = """
[simulator]
latency_ms = 1
jitter = 0
faults = [{ kind = "500", tickets = ["T000002"], attempts = [1] }]
"""


@pytest.mark.parametrize("flag", ["-v", "-vv"])
def test_stdout_holds_only_the_summary(make_job, tmp_path, cli_env, flag):
    job = make_job(5, concurrency=2, extra=FAULTY)
    result = cli_run(batchrun_cmd("run", str(job), "--no-progress", flag), env=cli_env,
                     capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "test_job: run 1 done" and lines[-1].startswith("run directory:")
    assert "LiteLLM" not in result.stdout and " INFO " not in result.stdout
    assert "T000002: attempt 1 failed" in result.stderr  # batchrun's own log line, on stderr
    if flag == "-v":
        assert "LiteLLM completion()" not in result.stderr  # litellm's INFO only at -vv
    else:
        assert "LiteLLM completion()" in result.stderr
