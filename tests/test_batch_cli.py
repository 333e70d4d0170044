"""The batch-mode commands end to end: run --no-wait, run again to collect, status, cancel, plan.

Against the embedded simulator (the job's [simulator] section), whose batches
live in the run directory (simulator-batches/) so that a later command finds
them, as a provider would. Runs are real processes (forked from a warm one:
tests/forkserver.py); status, cancel, plan and the refusals, which only read a
command's output, run in this process (invoke_cli).
"""

from __future__ import annotations

import orjson
import pytest

from conftest import batchrun_cmd, cli_run, invoke_cli, read_jsonl

SIM = """
[simulator]
latency_ms = 0
jitter = 0
batch_time_scale = {scale}
batch_duration_s = 1800
"""


def job_file(make_job, n: int, scale: float = 86400.0) -> object:
    return make_job(n, top='mode = "batch"\nbatch_poll_s = 0.05\nbatch_poll_max_s = 0.2\n',
                    extra=SIM.format(scale=scale))


@pytest.mark.slow  # batch mode through several simulator round trips
def test_no_wait_at_night_then_the_same_command_collects(make_job, tmp_path, cli_env):
    job = job_file(make_job, 30)
    first = cli_run(batchrun_cmd("run", str(job), "--no-wait", "--no-progress"), env=cli_env,
                    capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "submitted: run the same command later" in first.stderr
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert (manifest["state"], manifest["mode"]) == ("submitted", "batch")
    status = invoke_cli("status", str(tmp_path / "run"))
    assert "batch parts:" in status.stdout and "submitted" in status.stdout
    second = cli_run(batchrun_cmd("run", str(job), "--no-progress"), env=cli_env, capture_output=True,
                     text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    results = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(results) == 30 == len({r["id"] for r in results})
    ledger = orjson.loads((tmp_path / "run" / "batches.json").read_bytes())
    assert [p["state"] for p in ledger["parts"]] == ["collected"]
    state = orjson.loads((tmp_path / "run" / "simulator-batches" / "state.json").read_bytes())
    assert len(state["batches"]) == 1  # the second run created nothing


@pytest.mark.slow  # batch mode through several simulator round trips
def test_cancel_then_run_keeps_what_was_answered(make_job, tmp_path, cli_env):
    job = make_job(40, top='mode = "batch"\nbatch_poll_s = 0.05\nbatch_poll_max_s = 0.2\n',
                   extra=SIM.format(scale=3600.0) + '[[simulator.batch_faults]]\nkind = "slow"\nbatches = [1]\n'
                                                     'rate = 0.5\n')
    assert cli_run(batchrun_cmd("run", str(job), "--no-wait", "--no-progress"), env=cli_env,
                   capture_output=True, timeout=300).returncode == 0
    cancel = invoke_cli("cancel", str(tmp_path / "run"))
    assert cancel.returncode == 0, cancel.stderr
    assert "part 1" in cancel.stdout and "1 part(s) asked to cancel" in cancel.stdout
    again = cli_run(batchrun_cmd("run", str(job), "--no-progress"), env=cli_env, capture_output=True,
                    text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    results = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(results) == 40 == len({r["id"] for r in results})
    assert sum(1 for r in results if r["attempts"] == 1) == 20  # answered before the cancel


def test_plan_in_batch_mode_shows_the_batch_price_next_to_the_online_one(make_job, tmp_path):
    job = job_file(make_job, 20)
    plan = invoke_cli("plan", str(job), "--json")
    assert plan.returncode == 0, plan.stderr
    row = orjson.loads(plan.stdout)["models"][0]
    assert row["batch"]["price_source"] == "litellm_batch" and row["batch"]["window"] == "24h"
    assert abs(row["cost_usd"] / row["batch"]["online_cost_usd"] - 0.5) < 0.01
    text = invoke_cli("plan", str(job))
    assert "batch mode" in text.stdout and "24h window" in text.stdout


def test_mode_batch_flag_and_refusals(make_job):
    job = make_job(3)
    refused = invoke_cli("run", str(job), "--no-wait")
    assert refused.returncode == 2 and "batch mode" in refused.stderr
    groq = make_job(3, model="groq/llama-3.1-8b-instant")
    refused = invoke_cli("run", str(groq), "--mode", "batch")
    assert refused.returncode == 2 and "no batch creation for groq" in refused.stderr
