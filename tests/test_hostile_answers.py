"""What a provider (or a proxy bug) can answer that must not be believed (issue 24).

Nonsense usage, billed answers without a usable choice, malformed bodies,
huge answers, 401s in any wrapping: each against the simulator's hostile kinds
(batchrun/sim/hostile.py) over real HTTP, through batchrun's real provider."""

from __future__ import annotations

import anyio
import pytest

from batchrun import execute_run, load_job, prepare_run
from batchrun.analysis.stats import format_summary
from batchrun.errors import ExitCode
from batchrun.providers.online import LiteLLMProvider
from batchrun.records import line_money
from conftest import read_jsonl


def start(**config):
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    return start_simulator(SimConfig(latency_ms=1, jitter=0, **config))


def run_job(job, sim, **prepare):
    prep = prepare_run(job, endpoint="sim", **prepare)
    provider = LiteLLMProvider(model=job.model, api_base=sim.base_url, api_key="sim-key", params=job.params,
                               prices=job.prices)
    try:
        return anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()


# -- 2. usage is validated before it is believed ----------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_nonsense_usage_is_not_priced_as_given(make_job, tmp_path, stream):
    job = load_job(make_job(6, concurrency=2, top="stream = true\n" if stream else ""))
    with start(scripts=("T000002=bad_usage", "T000003=huge_usage")) as sim:
        result = run_job(job, sim)
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "run" / "results.jsonl")}
    assert len(rows) == 6 and result.state == "done"
    negative, huge = rows["T000002"], rows["T000003"]
    assert negative["cost_status"] == "usage_negative", negative
    assert negative["usage_reported"] == {"prompt_tokens": -1_000_000, "completion_tokens": -5,
                                          "total_tokens": -1_000_005}
    assert huge["cost_status"] == "usage_absurd", huge
    assert huge["usage_reported"]["prompt_tokens"] == 10**12
    for row in (negative, huge):
        assert row["usage_source"] == "estimated" and "usage_problem" in row
        assert 0 < row["usage"]["prompt_tokens"] < 1000  # counted with litellm.token_counter
        assert 0 < row["cost_usd"] < 0.001  # an estimate, never -$0.15 nor $150,000
    for ticket in ("T000001", "T000004"):
        assert rows[ticket]["cost_status"] == "litellm" and "usage_reported" not in rows[ticket]
    summary = result.summary
    assert summary["usage_invalid"] == 2
    assert 0 < summary["cost_usd"] == pytest.approx(sum(row["cost_usd"] for row in rows.values()))
    assert summary["total_tokens"] < 10_000
    assert "2 result(s) with token counts the provider cannot have meant" in format_summary(summary)


def test_the_budget_is_not_lowered_by_negative_usage(make_job, tmp_path):
    job = load_job(make_job(40, concurrency=1))
    with start(scripts=("rate:1=bad_usage",)) as sim:
        result = run_job(job, sim, max_cost_usd=0.00005)
        received = sum(sim.stats()["requests_by_ticket"].values())
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert result.state == "budget_exhausted" and result.exit_code == ExitCode.BUDGET_EXHAUSTED
    assert 0 < len(rows) == received < 40  # negative costs would have let all 40 through
    assert all(row["cost_usd"] > 0 for row in rows)
    assert 0 < sum(row["cost_usd"] for row in rows) <= 0.00005


def test_a_line_never_lowers_totals():
    """A line written by an older batchrun (or by hand) with negative money or tokens: not believed."""
    money = line_money({"id": "a", "cost_usd": -0.150003, "cost_status": "litellm", "rejected_cost_usd": -1.0,
                        "usage": {"prompt_tokens": -1_000_000, "completion_tokens": -5, "total_tokens": -1_000_005}})
    assert money.cost_usd is None and money.unpriced  # a cost not seen, not a refund
    assert money.spent_usd == 0.0 and money.rejected_cost_usd == 0.0
    assert (money.prompt_tokens, money.completion_tokens, money.total_tokens) == (0, 0, 0)


def test_a_batch_line_with_nonsense_usage_is_not_priced():
    from batchrun.providers.batch_api import LiteLLMBatchAPI
    from batchrun.providers.seam import BatchPrices

    api = LiteLLMBatchAPI(model="openai/gpt-4o-mini", api_key="sk-test")
    prices = BatchPrices(0.075e-6, 0.3e-6, "litellm_batch")
    body = {"model": "gpt-4o-mini", "choices": [{"message": {"content": "bug"}, "finish_reason": "stop"}]}
    for usage, status in (({"prompt_tokens": -5, "completion_tokens": 1, "total_tokens": -4}, "usage_negative"),
                          ({"prompt_tokens": 10.5, "completion_tokens": 1, "total_tokens": 11.5}, "usage_not_integer"),
                          ({"prompt_tokens": "10", "completion_tokens": 1, "total_tokens": 11}, "usage_not_integer"),
                          ({"prompt_tokens": 10**12, "completion_tokens": 1, "total_tokens": 10**12 + 1},
                           "usage_absurd")):
        completion = api.completion_of({**body, "usage": usage}, prices)
        assert (completion.cost_usd, completion.cost_status) == (None, status), usage
        assert completion.usage is None and completion.usage_reported == usage
    good = api.completion_of({**body, "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}},
                             prices)
    assert good.cost_status == "litellm_batch" and good.cost_usd == pytest.approx(1.05e-6)


# -- 3. every billed answer counted ---------------------------------------------------------------

def test_a_billed_answer_without_a_usable_choice_is_counted_and_asked_again(make_job, tmp_path):
    job = load_job(make_job(6, concurrency=2))
    scripts = ("T000002=no_choices;ok", "T000003=no_choices;no_choices;no_choices",
               "T000004=string_usage;ok", "T000005=array_body;fraction_usage;string_usage")
    with start(scripts=scripts) as sim:
        result = run_job(job, sim)
        sent = sim.stats()["requests_by_ticket"]
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "run" / "results.jsonl")}
    errors = {row["id"]: row for row in read_jsonl(tmp_path / "run" / "errors.jsonl")}
    assert set(rows) == {"T000001", "T000002", "T000004", "T000006"} and set(errors) == {"T000003", "T000005"}
    # asked again at once (the invalid-answer rule): 1 + max_invalid_output_retries (2) at most
    assert rows["T000002"]["attempts"] == 2 and sent["T000002"] == 2
    assert errors["T000003"]["attempts"] == 3 == sent["T000003"]
    # each answer without a choice was billed: its usage priced as rejected spend
    assert rows["T000002"]["rejected_outputs"] == 1 and rows["T000002"]["rejected_cost_usd"] > 0
    assert errors["T000003"]["rejected_outputs"] == 3 and errors["T000003"]["rejected_cost_usd"] > 0
    for line in errors.values():
        assert line["error_kind"] == "invalid_response", line
        message = line["message"]
        assert "Traceback" not in message and "site-packages" not in message and ".py" not in message, message
        assert len(message) < 600, message
    assert "no usable choice" in errors["T000003"]["message"]
    assert '"choices":[]' in errors["T000003"]["message"]  # the body's first bytes
    assert "usage" in errors["T000005"]["message"]
    summary = result.summary
    assert summary["errors_by_kind"].get("connection") is None
    assert summary["errors_by_kind"]["invalid_response"] == 1 + 3 + 1 + 3
    assert summary["rejected_outputs"] == 1 + 3 + 1 + 3
    assert summary["cost_usd"] == pytest.approx(sum(r["cost_usd"] + r.get("rejected_cost_usd", 0) for r in rows.values())
                                                + sum(e.get("rejected_cost_usd", 0) for e in errors.values()))
