"""Issue 26, point 9: batch mode has its own summary (parts, the provider's batch ids, states,
request counts, the completion window), and `batchrun status` shows the same; none of the online
summary's request rates or latencies."""

from __future__ import annotations

import re
import subprocess

import orjson
import pytest

from conftest import batchrun_cmd

pytestmark = pytest.mark.slow

SIM = """
[simulator]
latency_ms = 0
jitter = 0
batch_time_scale = 86400.0
batch_duration_s = 1800
"""


def test_batch_mode_prints_its_parts_with_the_provider_batch_ids_and_status_shows_the_same(make_job, tmp_path,
                                                                                           cli_env):
    job = make_job(30, top='mode = "batch"\nbatch_poll_s = 0.05\nbatch_poll_max_s = 0.2\nbatch_max_requests = 20\n',
                   extra=SIM)
    first = subprocess.run(batchrun_cmd("run", str(job), "--no-wait", "--no-progress"), env=cli_env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    ledger = orjson.loads((tmp_path / "run" / "batches.json").read_bytes())
    ids = [part["batch_id"] for part in ledger["parts"]]
    assert len(ids) == 2 and all(ids)  # 30 tickets, 20 per part
    assert "test_job: run 1 (batch) submitted" in out
    for batch_id in ids:
        assert batch_id in out
    assert "provider status" in out and "done / failed / total" in out and "window" in out
    assert re.search(r"\b24h\b", out) and "ends by" in out
    assert "parts                       2 (2 at the provider)" in out
    assert "requests/s" not in out and "latency p50" not in out  # the online summary's figures: not here
    status = subprocess.run(batchrun_cmd("status", str(tmp_path / "run")), env=cli_env, capture_output=True,
                            text=True, timeout=120)
    for batch_id in ids:
        assert batch_id in status.stdout
    assert "provider status" in status.stdout and re.search(r"\b24h\b", status.stdout)
    assert "requests/s" not in status.stdout
    info = orjson.loads(subprocess.run(batchrun_cmd("status", str(tmp_path / "run"), "--json"), env=cli_env,
                                       capture_output=True, text=True, timeout=120).stdout)
    assert [p["batch_id"] for p in info["batch"]["parts"]] == ids
    assert all(p["completion_window"] == "24h" and p["expires_at"] > p["submitted_at"] for p in info["batch"]["parts"])
    second = subprocess.run(batchrun_cmd("run", str(job), "--no-progress"), env=cli_env, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "test_job: run 2 (batch) done" in second.stdout and "collected" in second.stdout
    assert re.search(r"20 / +0 / +20", second.stdout) and re.search(r"10 / +0 / +10", second.stdout)
