"""The ledger under kills (issue 25, point 7): in a kill -9 loop against the simulator, the recorded
costs per service tier equal the simulator's invoice per tier within 1%, apart from the tickets
flagged as maybe billed twice (maybe_billed_before: a request in flight when a run died).

The job uses flex with a 30% flex 429 rate and the fallback to the standard tier, a long shared
system prompt with prompt_cache (cached tokens) and a reasoning model (reasoning tokens): every
kind and both tiers are on the invoice. Each run is the real command line (`batchrun run
--api-base`), killed with SIGKILL while requests are in flight, then resumed to the end.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from batchrun.sim.config import SimConfig
from batchrun.sim.process import start_simulator
from conftest import batchrun_cmd, cli_popen, cli_run, read_jsonl
from test_cost_kinds import job_file, litellm_price


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"no {what} after {timeout} s")


@pytest.mark.slow  # kills runs, and starts worker processes
@pytest.mark.parametrize("workers", [1, 2])
def test_recorded_costs_equal_the_invoice_per_tier_under_kill_9(tmp_path, cli_env, workers):
    path = job_file(tmp_path, 120, model="openai/gpt-5-mini",
                    top='service_tier = "flex"\nflex_fallback_after = 2\nprompt_cache = true\n'
                        'api_key_env = "BATCHRUN_TEST_KEY"\n')
    path.write_text(path.read_text().replace("concurrency = 4", "concurrency = 8"))
    results = tmp_path / "run" / "results.jsonl"
    config = SimConfig(latency_ms=150, jitter=0.3, flex_unavailable_rate=0.3, seed=1)
    with start_simulator(config) as sim:
        args = ["run", str(path), "--no-progress", "--workers", str(workers), "--api-base", sim.base_url]
        for _ in range(3):
            proc = cli_popen(batchrun_cmd(*args), env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            before = results.read_bytes().count(b"\n") if results.exists() else 0
            wait_until(lambda: results.exists() and results.read_bytes().count(b"\n") >= before + 10
                       and sim.stats()["in_flight"] > 0, 180, "progress with requests in flight")
            proc.kill()
            proc.wait(timeout=30)
        final = cli_run(batchrun_cmd(*args), env=cli_env, capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, final.stderr
        stats = sim.stats()
    rows = read_jsonl(results)
    assert len({row["id"] for row in rows}) == len(rows) == 120
    flagged = {row["id"] for row in rows if row.get("maybe_billed_before")}
    answered_twice = {t for t, kinds in stats["invoice"]["tickets"].items()
                      if sum(k["requests"] for k in kinds.values()) > 1}
    assert answered_twice <= flagged  # every ticket billed twice is flagged
    kept = [row for row in rows if row["id"] not in flagged]
    assert len(kept) >= 60
    invoice = stats["invoice"]["tickets"]
    tiers_seen = set()
    for tier in ("flex", "default"):
        billed = sum(litellm_price("openai/gpt-5-mini", tier, invoice[row["id"]][tier])
                     for row in kept if tier in invoice[row["id"]])
        recorded = sum(row["cost_usd"] for row in kept if row["service_tier"] == tier)
        if billed:
            tiers_seen.add(tier)
        assert recorded == pytest.approx(billed, rel=0.01), (tier, recorded, billed)
    assert tiers_seen == {"flex", "default"}  # flex answers, and fallbacks to the standard tier
    cached = sum(row["usage"]["cached_tokens"] for row in kept)
    assert cached == sum(k["cached_tokens"] for row in kept for k in invoice[row["id"]].values()) > 0
    reasoning = sum(row["usage"]["reasoning_tokens"] for row in kept)
    assert reasoning == sum(k["reasoning_tokens"] for row in kept for k in invoice[row["id"]].values()) > 0
