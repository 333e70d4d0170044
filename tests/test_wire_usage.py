"""A 200 without usage is never recorded as a free request, over real HTTP.

The simulator answers some tickets without ``usage`` or with ``"usage":
null`` (a per-ticket script); batchrun's real provider (litellm) runs the
job. Such a result carries usage counted with ``litellm.token_counter``,
``usage_source: "estimated"`` and ``cost_status: "estimated"`` with a cost
above zero; the summary counts them; and the budget check adds their cost.
"""

from __future__ import annotations

import anyio
import pytest

from batchrun import execute_run, load_job, prepare_run
from batchrun.errors import ExitCode
from batchrun.providers.online import LiteLLMProvider
from batchrun.analysis.stats import format_summary
from conftest import read_jsonl


@pytest.fixture(scope="module")
def usage_sim():
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    scripts = ("T000002=no_usage", "T000003=usage_null", "T000004=429:retry_after=0.05;no_usage",
               "T000005+T000006=drop_usage")
    with start_simulator(SimConfig(latency_ms=1, jitter=0, scripts=scripts)) as sim:
        yield sim


def run_job(job, sim, **prepare):
    prep = prepare_run(job, endpoint="sim", **prepare)
    provider = LiteLLMProvider(model=job.model, api_base=sim.base_url, api_key="sim-key", params=job.params)
    try:
        return anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_an_answer_without_usage_is_estimated_priced_and_counted(make_job, tmp_path, usage_sim, stream):
    usage_sim.reset()
    job = load_job(make_job(8, concurrency=2, top="stream = true\n" if stream else ""))
    result = run_job(job, usage_sim)
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "run" / "results.jsonl")}
    assert len(rows) == 8
    missing = {"T000002", "T000003", "T000004", "T000005", "T000006"}
    for ticket, row in rows.items():
        usage = row["usage"]
        if ticket in missing:
            assert row["usage_source"] == "estimated", row
            assert row["cost_status"] == "estimated", row
            assert usage["prompt_tokens"] > 10 and usage["completion_tokens"] >= 1, row
            assert row["cost_usd"] > 0, row
        else:
            assert (row["usage_source"], row["cost_status"]) == ("provider", "litellm"), row
    assert rows["T000004"]["attempts"] == 2
    summary = result.summary
    assert summary["usage_estimated"] == len(missing)
    assert summary["cost_usd"] == pytest.approx(sum(row["cost_usd"] for row in rows.values()))
    assert "5 result(s) without usage from the provider" in format_summary(summary)


def test_the_budget_counts_answers_without_usage(make_job, tmp_path):
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    job = load_job(make_job(40, concurrency=1))
    with start_simulator(SimConfig(latency_ms=1, jitter=0, scripts=("rate:1=usage_null",))) as sim:
        result = run_job(job, sim, max_cost_usd=0.00005)
        received = sum(sim.stats()["requests_by_ticket"].values())
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    print(f"\nbudget $0.00005, every answer without usage: {result.state}, {len(rows)} of 40 tickets sent, "
          f"${sum(row['cost_usd'] or 0 for row in rows):.7f} recorded")
    assert result.state == "budget_exhausted" and result.exit_code == ExitCode.BUDGET_EXHAUSTED
    assert 0 < len(rows) == received < 40
    spent = sum(row["cost_usd"] for row in rows)
    assert 0 < spent <= 0.00005
    assert all(row["usage_source"] == "estimated" for row in rows)
