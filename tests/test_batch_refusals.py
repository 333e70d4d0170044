"""Batch mode when the files or batches endpoint refuses: one line naming the endpoint, the status
and the provider's message, the exit code the online path would use (auth 4, configuration 2,
still failing after the retries 1), the ledger kept so the same command resumes; never a traceback
or an ExceptionGroup. Against the simulator's Batch API with call faults (and a real LiteLLM Proxy
without files_settings in tests/test_real_proxy.py)."""

from __future__ import annotations

import re
import socket
import subprocess
from typing import Any

import orjson
import pytest

from conftest import batchrun_cmd, read_jsonl

UNDATED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2} ")

pytestmark = pytest.mark.slow


def batch_job(make_job: Any) -> Any:
    return make_job(12, top='mode = "batch"\nbatch_poll_s = 0.05\nbatch_poll_max_s = 0.2\n',
                    extra="")


def run(job: Any, api_base: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(batchrun_cmd("run", str(job), "--api-base", api_base, "--no-progress"), env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line(proc: subprocess.CompletedProcess, *expected: str) -> str:
    assert "Traceback" not in proc.stderr and "ExceptionGroup" not in proc.stderr, proc.stderr
    # every stderr line starts with its date-time (run_logging.py): the message after it
    errors = [line for line in (UNDATED.sub("", each) for each in proc.stderr.splitlines())
              if line.startswith("batchrun: error:")]
    assert len(errors) == 1, proc.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def sim_with(*faults: str) -> Any:
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    return start_simulator(SimConfig(latency_ms=0.0, jitter=0.0, batch_time_scale=86400.0, batch_faults=faults))


def test_a_refused_key_ends_in_one_line_and_exit_4(make_job, tmp_path, cli_env):
    job = batch_job(make_job)
    with sim_with("401:endpoint=files") as sim:
        proc = run(job, sim.base_url, cli_env)
    assert proc.returncode == 4
    assert_one_line(proc, f"POST {sim.base_url}/files answered HTTP 401", "Incorrect API key", "check the key")


def test_no_files_endpoint_ends_in_one_line_and_exit_2(make_job, tmp_path, cli_env):
    job = batch_job(make_job)
    with sim_with() as sim:
        base = sim.root_url + "/not-a-batch-api/v1"
        proc = run(job, base, cli_env)
    assert proc.returncode == 2
    assert_one_line(proc, f"POST {base}/files answered HTTP 404")


def test_an_unreachable_endpoint_ends_in_one_line_and_exit_1(make_job, tmp_path, cli_env):
    job = batch_job(make_job)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run(job, f"http://127.0.0.1:{port}/v1", cli_env)
    assert proc.returncode == 1
    assert_one_line(proc, f"POST http://127.0.0.1:{port}/v1/files failed (connection)", "re-run the same command")


def test_a_failing_endpoint_keeps_the_ledger_and_the_same_command_resumes(make_job, tmp_path, cli_env):
    job = batch_job(make_job)  # retry.max_attempts = 3: the three uploads of the first run fail
    with sim_with("500:endpoint=files,calls=1+2+3") as sim:
        first = run(job, sim.base_url, cli_env)
        assert first.returncode == 1
        assert_one_line(first, f"POST {sim.base_url}/files answered HTTP 500", "kept failing after the retries")
        ledger = orjson.loads((tmp_path / "run" / "batches.json").read_bytes())
        assert [(p["state"], p["tickets"]) for p in ledger["parts"]] == [("built", 12)]
        manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
        assert manifest["state"] == "failed" and "HTTP 500" in manifest["error"]
        second = run(job, sim.base_url, cli_env)
        assert second.returncode == 0, second.stderr
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(rows) == 12 == len({r["id"] for r in rows})
    ledger = orjson.loads((tmp_path / "run" / "batches.json").read_bytes())
    assert [p["state"] for p in ledger["parts"]] == ["collected"]  # the same part, uploaded on resume
