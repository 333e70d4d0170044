"""`batchrun plan`: counts with a partly finished run directory, token
estimates (exact and extrapolated), output tokens and latency from finished
results, prices (litellm, job file, unpriced), rate-limit bounds, and the
over-budget flag with its exit code. No request is ever sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

import batchrun.analysis.plan as plan_module
from batchrun.job.templates import render_messages
from batchrun.commands.plan import plan_command
from batchrun.analysis.plan import format_plan, make_plan
from batchrun.providers.litellm_setup import import_litellm
from batchrun.job.spec import load_job
from batchrun.job.tickets import read_tickets

from conftest import read_jsonl  # type: ignore[import-not-found]


def _finish(tmp_path: Path, done: list[str], failed: list[str], *, completion_tokens: int = 3,
            latency_ms: float = 200.0, sub: str = "") -> Path:
    """A run directory in tmp_path/run (the job's run_dir; or run/<sub>) with some results and failures."""
    run = tmp_path / "run" / sub
    run.mkdir(parents=True, exist_ok=True)
    lines = [{"id": i, "output": "bug", "model": "gpt-4o-mini",
              "usage": {"prompt_tokens": 100, "completion_tokens": completion_tokens,
                        "total_tokens": 100 + completion_tokens},
              "cost_usd": 0.001, "cost_status": "litellm", "latency_ms": latency_ms + n, "run": 1}
             for n, i in enumerate(done)]
    (run / "results.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    errors = [{"id": i, "error_kind": "timeout", "attempts": 3, "run": 1} for i in failed]
    (run / "errors.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in errors))
    return run


def _ids(tmp_path: Path) -> list[str]:
    return [str(t["id"]) for t in read_jsonl(tmp_path / "tickets.jsonl")]


def _exact_tokens(job_path: Path, skip: set[str]) -> int:
    job = load_job(job_path)
    lm = import_litellm()
    return sum(int(lm.token_counter(model=job.model, messages=render_messages(job, t)))
               for t in read_tickets(job.input, job.id_field) if t.id not in skip)


def test_counts_respect_resume(make_job: Any, tmp_path: Path) -> None:
    job_path = make_job(30)
    ids = _ids(tmp_path)
    _finish(tmp_path, done=ids[:10], failed=ids[10:12])
    job = load_job(job_path)
    row = make_plan(job)["models"][0]
    t = row["tickets"]
    assert (t["input"], t["already_done"], t["failed_before_retried"], t["to_do"]) == (30, 10, 2, 20)
    t = make_plan(job, skip_failed=True)["models"][0]["tickets"]
    assert (t["failed_before_skipped"], t["failed_before_retried"], t["to_do"]) == (2, 0, 18)
    t = make_plan(job, limit=15)["models"][0]["tickets"]
    assert (t["selected"], t["already_done"], t["to_do"]) == (15, 10, 5)
    # exact tokens: litellm.token_counter over the rendered messages of exactly the 20 tickets to do
    assert row["input_tokens"]["exact"] is True
    assert row["input_tokens"]["total"] == _exact_tokens(job_path, skip=set(ids[:10]))


def test_output_tokens_and_latency_from_finished_results(make_job: Any, tmp_path: Path) -> None:
    job_path = make_job(30)  # concurrency 4, max_tokens 5
    ids = _ids(tmp_path)
    _finish(tmp_path, done=ids[:9], failed=[], completion_tokens=3, latency_ms=200.0)
    row = make_plan(load_job(job_path))["models"][0]
    out = row["output_tokens"]
    assert (out["source"], out["per_ticket"], out["total"], out["finished_results"]) == ("finished", 3.0, 63, 9)
    d = row["duration"]
    assert d["latency_source"] == "finished" and d["latency_ms"] == pytest.approx(204.0)  # median of 200..208
    assert d["bound"] == "concurrency" and d["seconds"] == pytest.approx(21 * 0.204 / 4, abs=1e-3)
    assert row["spent_usd"] == pytest.approx(0.009)


def test_fresh_run_uses_max_tokens_and_assumed_latency(make_job: Any, tmp_path: Path) -> None:
    job_path = make_job(12)
    result = CliRunner().invoke(plan_command, [str(job_path), "--assume-latency-ms", "500"])
    assert result.exit_code == 0, result.output
    assert "UPPER BOUND: max_tokens 5 per ticket" in result.output
    assert "ASSUMED latency 500 ms" in result.output
    assert "source: litellm price list (local copy)" in result.output
    assert not (tmp_path / "run").exists()  # a plan writes nothing
    row = make_plan(load_job(job_path), assume_latency_ms=500)["models"][0]
    assert row["output_tokens"]["total"] == 60
    assert row["duration"]["seconds"] == pytest.approx(12 * 0.5 / 4)
    # gpt-4o-mini in litellm's local price list: $0.15 / $0.60 per million tokens
    assert (row["price"]["input_per_million_usd"], row["price"]["output_per_million_usd"]) == (0.15, 0.6)
    assert row["cost_usd"] == pytest.approx((row["input_tokens"]["total"] * 0.15 + 60 * 0.6) / 1e6, abs=1e-6)


def test_large_input_is_extrapolated_and_says_so(make_job: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    job_path = make_job(40)
    monkeypatch.setattr(plan_module, "DEFAULT_SAMPLE", 7)
    exact = _exact_tokens(job_path, skip=set())
    row = make_plan(load_job(job_path))["models"][0]
    it = row["input_tokens"]
    assert it["exact"] is False and it["sampled"] == 7
    assert it["total"] == round(it["mean_per_ticket"] * 40)
    assert it["standard_error"] > 0
    assert abs(it["total"] - exact) < 0.5 * exact  # a sane estimate of the real count
    result = CliRunner().invoke(plan_command, [str(job_path)])
    assert result.exit_code == 0, result.output
    assert "ESTIMATE: counted exactly on a random sample of 7 of 40 tickets to do" in result.output
    assert "extrapolated by the mean" in result.output
    # --sample overrides; a sample as large as the input is exact again
    result = CliRunner().invoke(plan_command, [str(job_path), "--sample", "40", "--json"])
    assert orjson.loads(result.output)["models"][0]["input_tokens"]["total"] == exact


def test_over_budget_is_flagged_with_exit_5(make_job: Any, tmp_path: Path) -> None:
    job_path = make_job(20)
    result = CliRunner().invoke(plan_command, [str(job_path), "--max-cost-usd", "0.0000001"])
    assert result.exit_code == 5, result.output
    assert "OVER BUDGET" in result.output
    ok = CliRunner().invoke(plan_command, [str(job_path), "--max-cost-usd", "100"])
    assert ok.exit_code == 0, ok.output
    assert "within budget" in ok.output and "OVER BUDGET" not in ok.output


def test_job_budget_counts_what_was_already_spent(make_job: Any, tmp_path: Path) -> None:
    job_path = make_job(20, top="max_cost_usd = 0.01")
    ids = _ids(tmp_path)
    plan = make_plan(load_job(job_path))
    assert plan["budget"]["max_cost_usd"] == 0.01 and plan["budget"]["over"] is False
    _finish(tmp_path, done=ids[:10], failed=[])  # $0.010 already spent: any more goes over
    plan = make_plan(load_job(job_path))
    assert plan["models"][0]["spent_usd"] == pytest.approx(0.01)
    assert plan["budget"]["over"] is True
    result = CliRunner().invoke(plan_command, [str(job_path)])
    assert result.exit_code == 5 and "already spent $0.010000" in result.output


def test_unpriced_model(make_job: Any, tmp_path: Path) -> None:
    job_path = make_job(10, model="openai/no-such-model-in-litellm")
    result = CliRunner().invoke(plan_command, [str(job_path), "--max-cost-usd", "0.0000001"])
    assert result.exit_code == 0, result.output  # cannot be over a budget it cannot price
    assert "unpriced: litellm's price list has no openai/no-such-model-in-litellm" in result.output
    assert "set [prices] input_per_million and output_per_million" in result.output
    assert "cannot be checked" in result.output
    row = make_plan(load_job(job_path))["models"][0]
    assert row["price"]["source"] is None and row["cost_usd"] is None
    assert row["input_tokens"]["total"] > 0  # tokens and time are still planned


def test_job_prices_win(make_job: Any, tmp_path: Path) -> None:
    job_path = make_job(10, extra="[prices]\ninput_per_million = 2.0\noutput_per_million = 10.0\n")
    row = make_plan(load_job(job_path))["models"][0]
    assert row["price"]["label"] == "job file [prices]"
    assert row["cost_usd"] == pytest.approx((row["input_tokens"]["total"] * 2.0 + 50 * 10.0) / 1e6, abs=1e-6)


def test_rate_limits_bound_the_duration(make_job: Any, tmp_path: Path) -> None:
    job_path = make_job(30, top="rpm = 60")
    d = make_plan(load_job(job_path), assume_latency_ms=100)["models"][0]["duration"]
    assert d["bound"] == "rpm" and d["seconds"] == pytest.approx(30.0)  # 30 tickets at 60 a minute
    assert d["bounds_s"]["concurrency"] == pytest.approx(30 * 0.1 / 4, abs=1e-3)
    job_path = make_job(30, top="tpm = 1000")
    plan = make_plan(load_job(job_path), assume_latency_ms=100)
    d, row = plan["models"][0]["duration"], plan["models"][0]
    tokens = row["input_tokens"]["total"] + row["output_tokens"]["total"]
    assert d["bound"] == "tpm" and d["seconds"] == pytest.approx(tokens / 1000 * 60, abs=1e-2)
    assert "set by the tpm bound" in format_plan(plan)


def test_simulator_job_is_priced_as_the_named_model(make_job: Any, tmp_path: Path) -> None:
    job_path = make_job(5, extra="[simulator]\nlatency_ms = 5\n")
    result = CliRunner().invoke(plan_command, [str(job_path)])
    assert result.exit_code == 0, result.output
    assert "[simulator] section" in result.output and "priced as the named model" in result.output
    assert make_plan(load_job(job_path))["models"][0]["price"]["source"] == "litellm"


def test_a_simulated_plan_agrees_with_the_run_within_5_percent(tmp_path: Path) -> None:
    import batchrun
    from conftest import ROOT

    job = load_job(ROOT / "jobs" / "classify_tickets.toml").with_overrides(run_dir=tmp_path / "run")
    plan = make_plan(job, limit=150)
    row = plan["models"][0]
    assert row["output_tokens"]["source"] == "simulator" and row["input_tokens"]["counted_as"] == "simulator"
    result = batchrun.run(job, limit=150)
    assert result.done == 150
    assert row["cost_usd"] == pytest.approx(result.cost_usd, rel=0.05)
    assert row["input_tokens"]["total"] == pytest.approx(result.summary["prompt_tokens"], rel=0.02)
    live = make_plan(job, limit=150, live=True)["models"][0]  # the live plan counts with the tokenizer
    assert live["input_tokens"]["counted_as"] == "tokenizer" and live["output_tokens"]["source"] == "finished"
    finished = format_plan(make_plan(job, limit=150))
    assert "allows at most 0" not in finished and "0 to do" in finished


def test_an_alias_litellm_cannot_price_is_planned_from_what_the_endpoint_charged(make_job: Any,
                                                                                 tmp_path: Path) -> None:
    job_path = make_job(8, model="openai/team-alias", extra="[simulator]\nlatency_ms = 1\n")
    job = load_job(job_path)
    import batchrun
    from batchrun.job.sections import PricesSpec

    priced = job.model_copy(update={"prices": PricesSpec(input_per_million=1.0, output_per_million=2.0)})
    batchrun.run(priced, limit=4)  # as a proxy that prices the alias would: cost_usd on every result
    row = make_plan(job)["models"][0]
    assert row["price"]["source"] == "finished" and row["price"]["priced_results"] == 4
    assert row["cost_usd"] == pytest.approx(row["price"]["per_ticket_usd"] * 4, rel=1e-6)
    text = format_plan(make_plan(job))
    assert "per ticket, the average of 4 finished results as the endpoint priced them" in text


def test_nothing_to_do(make_job: Any, tmp_path: Path) -> None:
    job_path = make_job(6)
    _finish(tmp_path, done=_ids(tmp_path), failed=[])
    row = make_plan(load_job(job_path))["models"][0]
    assert row["tickets"]["to_do"] == 0 and row["cost_usd"] == 0 and row["duration"]["seconds"] == 0


def test_bad_input_fails_like_run(make_job: Any, tmp_path: Path) -> None:
    job_path = make_job(5)
    with (tmp_path / "tickets.jsonl").open("ab") as handle:
        handle.write(b"not json\n")
    result = CliRunner().invoke(plan_command, [str(job_path)])
    assert result.exit_code == 2
    assert "tickets.jsonl:6" in result.output


MODELS = """
[[models]]
name = "mini"
model = "openai/gpt-4o-mini"

[[models]]
name = "custom"
model = "openai/not-in-litellm"
prices = { input_per_million = 100.0, output_per_million = 200.0 }
params = { max_tokens = 9 }
"""


def test_compare_job_plans_each_model_in_its_own_run_directory(make_job: Any, tmp_path: Path) -> None:
    job_path = make_job(10, extra=MODELS)
    ids = _ids(tmp_path)
    _finish(tmp_path, done=ids[:4], failed=[], sub="models/mini")  # mini: 4 done, $0.004 spent
    plan = make_plan(load_job(job_path), assume_latency_ms=100)
    assert plan["mode"] == "compare"
    mini, custom = plan["models"]
    assert (mini["key"], custom["key"]) == ("mini", "custom")
    assert mini["run_dir"].endswith("models/mini") and custom["run_dir"].endswith("models/custom")
    assert (mini["tickets"]["to_do"], custom["tickets"]["to_do"]) == (6, 10)
    assert mini["price"]["label"] == "litellm price list (local copy)" and custom["price"]["label"] == "job file [prices]"
    assert custom["output_tokens"]["max_tokens"] == 9 and custom["output_tokens"]["total"] == 90  # merged params
    assert mini["output_tokens"]["source"] == "finished"
    # the models run one after another
    assert plan["total"]["seconds"] == pytest.approx(mini["duration"]["seconds"] + custom["duration"]["seconds"])
    # the budget is per model directory, as each model's run checks it
    budget = (custom["cost_usd"] + mini["cost_usd"] + 0.004) / 2
    assert custom["cost_usd"] > budget > mini["cost_usd"] + 0.004
    result = CliRunner().invoke(plan_command, [str(job_path), "--max-cost-usd", str(budget)])
    assert result.exit_code == 5, result.output
    assert "OVER BUDGET [custom]" in result.output and "budget [mini]" in result.output
    assert "model custom: openai/not-in-litellm" in result.output


def test_routed_job_splits_the_tickets_by_its_rules(make_job: Any, tmp_path: Path) -> None:
    routes = MODELS + """
[[routes]]
model = "custom"
field = "customer.tier"
equals = "enterprise"

[[routes]]
model = "mini"
default = true
"""
    job_path = make_job(40, extra=routes)
    tickets = read_jsonl(tmp_path / "tickets.jsonl")
    enterprise = [str(t["id"]) for t in tickets if t["customer"]["tier"] == "enterprise"]
    assert 0 < len(enterprise) < 40
    run = _finish(tmp_path, done=[], failed=[])
    line = {"id": "x", "output": "bug", "model_key": "custom", "route": "customer.tier == 'enterprise'",
            "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101},
            "cost_usd": 0.5, "latency_ms": 300.0, "run": 1}
    (run / "results.jsonl").write_bytes(orjson.dumps(line) + b"\n")  # an id not in the input: attributed by model_key
    plan = make_plan(load_job(job_path), assume_latency_ms=100)
    assert plan["mode"] == "route"
    mini, custom = plan["models"]
    assert custom["tickets"]["to_do"] == len(enterprise) and mini["tickets"]["to_do"] == 40 - len(enterprise)
    assert custom["duration"]["latency_source"] == "finished" and custom["duration"]["latency_ms"] == 300.0
    assert custom["output_tokens"]["source"] == "finished" and custom["output_tokens"]["per_ticket"] == 1.0
    assert mini["duration"]["latency_source"] == "assumed"
    # one run: the models share the concurrency slots, and one budget covers the shared directory
    shared = mini["duration"]["bounds_s"]["concurrency"] + custom["duration"]["bounds_s"]["concurrency"]
    assert plan["total"]["seconds"] == pytest.approx(shared, abs=1e-3)
    [scope] = plan["budget"]["scopes"]
    assert scope["spent_usd"] == pytest.approx(0.5)
    assert "routed to this model by the job's [[routes]]" in format_plan(plan)
