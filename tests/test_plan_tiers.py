"""`batchrun plan` forecasts cached tokens and prints the job at the standard, flex and batch tiers
side by side, with the time of each (issue 25, point 6). Nothing is sent by a plan."""

from __future__ import annotations

import batchrun
import pytest
from click.testing import CliRunner

from batchrun.analysis.plan import make_plan
from batchrun.commands.plan import plan_command
from batchrun.job.spec import load_job
from test_cost_kinds import job_file, simulated


def test_a_long_shared_prefix_forecasts_cached_tokens_and_every_tier_is_priced(tmp_path):
    path = job_file(tmp_path, 100, model="openai/gpt-5-mini")
    plan = make_plan(load_job(path))
    [row] = plan["models"]
    cached = row["cached_tokens"]
    assert cached["source"] == "prefix" and cached["prefix_tokens"] >= 1024
    per_ticket = 1024 + (cached["prefix_tokens"] - 1024) // 128 * 128
    assert cached["total"] == per_ticket * (100 - 4)  # concurrency 4: the first wave finds nothing cached
    tiers = row["tiers"]
    standard, flex, batch = tiers["standard"], tiers["flex"], tiers["batch"]
    assert standard["cost_usd"] == pytest.approx(row["cost_usd"], rel=1e-3)
    assert flex["cost_usd"] == pytest.approx(standard["cost_usd"] / 2, rel=1e-3)  # gpt-5-mini: flex = half
    assert batch["cost_usd"] == pytest.approx(standard["cost_usd"] / 2, rel=1e-3)
    assert flex["seconds"] == pytest.approx(2 * standard["seconds"])  # assumed twice as slow
    assert "ASSUMED" in flex["time"]
    assert batch["seconds"] == pytest.approx(1800 / 3600)  # the simulator's batch duration
    # without the cached tokens the standard tier would cost more
    uncached = make_plan(load_job(job_file(tmp_path / "short", 100, model="openai/gpt-5-mini", system="Classify.")))
    assert uncached["models"][0]["cached_tokens"]["total"] == 0


def test_the_plan_text_shows_the_tiers_side_by_side(tmp_path):
    path = job_file(tmp_path, 50, model="openai/gpt-5-mini", top='service_tier = "flex"\n')
    result = CliRunner().invoke(plan_command, [str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "cached input tokens" in out and "by tier" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip().split(" ")[0] in
             ("standard", "flex", "batch")}
    assert set(lines) == {"standard", "flex", "batch"} and all("$" in line and "~" in line for line in lines.values())
    assert "(service_tier flex)" in out
    plan = make_plan(load_job(path))
    assert plan["models"][0]["cost_usd"] == pytest.approx(plan["models"][0]["tiers"]["flex"]["cost_usd"], rel=1e-3)


def test_a_model_without_a_flex_price_says_so(tmp_path):
    plan = make_plan(load_job(job_file(tmp_path, 10, model="openai/gpt-4o-mini")))
    assert "no flex price" in plan["models"][0]["tiers"]["flex"]["unavailable"]


def test_a_pilot_run_gives_the_cached_share_the_provider_reported(tmp_path, monkeypatch):
    path = job_file(tmp_path, 60, model="openai/gpt-4o-mini", top="prompt_cache = true\n")
    with simulated(path, monkeypatch):
        batchrun.run(path, limit=20)
    plan = make_plan(load_job(path))
    [row] = plan["models"]
    rows = [line for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    cached = row["cached_tokens"]
    assert cached["source"] == "finished" and "finished results" in cached["note"]
    import orjson

    lines = [orjson.loads(r) for r in rows]
    share = sum(x["usage"]["cached_tokens"] for x in lines) / sum(x["usage"]["prompt_tokens"] for x in lines)
    assert cached["share"] == pytest.approx(share, abs=0.02)


def test_claude_with_prompt_cache_forecasts_writes_then_reads(tmp_path):
    path = job_file(tmp_path, 40, model="anthropic/claude-haiku-4-5", top="prompt_cache = true\n")
    [row] = make_plan(load_job(path))["models"]
    cached = row["cached_tokens"]
    assert cached["writes"] == cached["prefix_tokens"] * 4 and cached["total"] == cached["prefix_tokens"] * 36
    off = make_plan(load_job(job_file(tmp_path / "off", 40, model="anthropic/claude-haiku-4-5")))
    assert off["models"][0]["cached_tokens"]["total"] == 0
    assert "prompt_cache is off" in off["models"][0]["cached_tokens"]["note"]
