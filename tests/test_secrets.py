"""A sentinel API key goes through auth failures, server errors, 429s, -vv
logging and a key in api_base's query string; then every output is searched
for it: stdout, stderr, the log file, the checkpoints and the manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.errors import ExitCode
from conftest import batchrun_cmd, cli_run

SENTINEL = "sk-SENTINEL0123456789abcdefXYZ"
QUERY_SECRET = "qsSECRET98765zz"


@pytest.fixture(scope="module")
def faulty_sim():
    from batchrun.sim.config import SimConfig
    from batchrun.sim.faults import FaultRule
    from batchrun.sim.process import start_simulator

    faults = (
        FaultRule.from_mapping({"kind": "401", "tickets": ["T000001", "T000002"], "attempts": [1]}),
        FaultRule.from_mapping({"kind": "500", "rate": 0.2}),
        FaultRule.from_mapping({"kind": "429", "rate": 0.1, "retry_after": 0.01}),
        FaultRule.from_mapping({"kind": "context_length", "tickets": ["T000005"], "attempts": [1, 2, 3]}),
    )
    with start_simulator(SimConfig(latency_ms=2, jitter=0, faults=faults)) as sim:
        yield sim


def hits(text: str | bytes) -> int:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text.count(SENTINEL) + text.count(SENTINEL[3:20]) + text.count(QUERY_SECRET)


def test_the_key_appears_nowhere(make_job, tmp_path, faulty_sim, cli_env):
    job = make_job(40)
    env = dict(cli_env, BATCHRUN_TEST_KEY=SENTINEL)
    log_file = tmp_path / "run.log"
    result = cli_run(batchrun_cmd("run", str(job), "--api-base", faulty_sim.base_url, "--no-progress",
                                  "-vv", "--log-file", str(log_file)),
                     env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == ExitCode.TICKETS_FAILED, result.stderr  # 401s and a 400 end in errors.jsonl
    errors = (tmp_path / "run" / "errors.jsonl").read_text()
    assert '"error_kind":"auth"' in errors and '"error_kind":"context_window"' in errors
    assert log_file.stat().st_size > 0 and "attempt" in log_file.read_text()  # the log did record retries

    # a key in api_base's query string (some gateways take one): refused at load, never echoed
    api_base = f"{faulty_sim.base_url}?api_key={QUERY_SECRET}"
    query_run = cli_run(batchrun_cmd("run", str(job), "--api-base", api_base, "--no-progress", "-vv",
                                     "--run-dir", str(tmp_path / "run_query"), "--limit", "5"),
                        env=env, capture_output=True, text=True, timeout=180)
    assert query_run.returncode == ExitCode.BAD_INPUT and "query string" in query_run.stderr
    assert not (tmp_path / "run_query").exists()

    places = {"stdout": result.stdout + query_run.stdout, "stderr": result.stderr + query_run.stderr,
              "log": log_file.read_bytes()}
    for run_dir in (tmp_path / "run",):
        for path in run_dir.iterdir():
            places[f"{run_dir.name}/{path.name}"] = path.read_bytes()
    assert {name: hits(text) for name, text in places.items() if hits(text)} == {}


def test_fail_fast_on_a_bad_key_stops_quickly_naming_the_variable(make_job, tmp_path, cli_env):
    from batchrun.sim.config import SimConfig
    from batchrun.sim.faults import FaultRule
    from batchrun.sim.process import start_simulator

    job = make_job(200, concurrency=2)
    env = dict(cli_env, BATCHRUN_TEST_KEY=SENTINEL)
    with start_simulator(SimConfig(latency_ms=1, jitter=0, faults=(FaultRule.from_mapping({"kind": "401", "rate": 1}),))) as sim:
        result = cli_run(batchrun_cmd("run", str(job), "--api-base", sim.base_url, "--no-progress"),
                         env=env, capture_output=True, text=True, timeout=180)
        requests = sim.stats()["total_requests"]
    assert result.returncode == ExitCode.ABORTED
    assert "tickets in a row failed with auth (HTTP 401)" in result.stderr and "BATCHRUN_TEST_KEY" in result.stderr
    assert requests <= 5 + 2  # the streak plus what was in flight: not 200
    assert hits(result.stdout + result.stderr) == 0
    manifest = Path(tmp_path / "run" / "manifest.json").read_text()
    assert '"state": "failed"' in manifest and hits(manifest) == 0
