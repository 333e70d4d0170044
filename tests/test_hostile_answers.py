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


def test_a_billed_answer_whose_usage_cannot_be_read_is_counted_unpriced_not_as_zero(make_job, tmp_path):
    """Never a silent 0: an unusable answer whose usage cannot be read (a string, fractions, a body that is
    a JSON array) was billed at a price nobody saw; the line and the summary say how many such answers."""
    job = load_job(make_job(4, concurrency=2))
    scripts = ("T000001=string_usage;ok", "T000002=array_body;fraction_usage;string_usage", "T000003=no_choices;ok")
    with start(scripts=scripts) as sim:
        result = run_job(job, sim)
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "run" / "results.jsonl")}
    errors = {row["id"]: row for row in read_jsonl(tmp_path / "run" / "errors.jsonl")}
    assert rows["T000001"]["rejected_outputs"] == 1 and rows["T000001"]["rejected_unpriced"] == 1
    assert errors["T000002"]["rejected_outputs"] == 3 and errors["T000002"]["rejected_unpriced"] == 3
    assert rows["T000003"]["rejected_cost_usd"] > 0 and "rejected_unpriced" not in rows["T000003"]  # priced
    assert "rejected_unpriced" not in rows["T000004"]
    assert line_money(errors["T000002"]).rejected_unpriced == 3
    summary = result.summary
    assert summary["rejected_outputs"] == 5 and summary["rejected_unpriced"] == 4
    assert "4 of them unpriced" in format_summary(summary)


# -- 11. the smaller ones ---------------------------------------------------------------------------

def test_a_401_that_litellm_calls_a_bad_request_counts_toward_fail_fast(make_job, tmp_path):
    job = load_job(make_job(30, concurrency=1))  # fail_fast_after = 5 (the default)
    with start(faults=("401_no_key:rate=1",)) as sim:
        result = run_job(job, sim)
        sent = sum(sim.stats()["requests_by_ticket"].values())
    errors = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert result.exit_code == ExitCode.ABORTED and result.state == "failed"
    assert sent == len(errors) == 5, (sent, len(errors))  # five in a row, not fail_fast_same_error_after's 20
    assert {e["error_kind"] for e in errors} == {"auth"} and {e["status_code"] for e in errors} == {401}


@pytest.mark.parametrize("model", ["openai/", "openai/  ", "/gpt-4o-mini", " openai/gpt-4o-mini"])
def test_a_model_string_without_a_name_is_refused_when_the_job_loads(make_job, model):
    from batchrun.errors import JobSpecError
    from conftest import invoke_cli

    job = make_job(3)
    text = job.read_text()
    (job.parent / "bad.toml").write_text(text.replace('model = "openai/gpt-4o-mini"', f'model = "{model}"'))
    with pytest.raises(JobSpecError, match="field `model`"):
        load_job(job.parent / "bad.toml")
    (job.parent / "bad2.toml").write_text(text.replace('model = "openai/gpt-4o-mini"\n', "")
                                          + f'\n[[models]]\nname = "a"\nmodel = "{model}"\n')
    with pytest.raises(JobSpecError, match=r"field `models\.0\.model`"):
        load_job(job.parent / "bad2.toml")
    cli = invoke_cli("run", str(job), "--model", model, "--no-progress")
    assert cli.returncode == 2 and "model" in cli.stderr and "nothing" not in cli.stdout, cli.stderr
    assert not (job.parent / "run" / "results.jsonl").exists()


def test_the_failure_summary_masks_counts_but_not_digits_inside_names():
    from batchrun.analysis.stats import short_message

    assert short_message("The model `gpt-4o-mini` does not exist or you do not have access to it.") == \
        "The model `gpt-4o-mini` does not exist or you do not have access to it."
    assert short_message("This model's maximum context length is 128000 tokens. However, your messages resulted "
                         "in 130,542 tokens") == ("This model's maximum context length is N tokens. However, your "
                                                  "messages resulted in N tokens")
    assert short_message("Rate limit reached for gpt-4-turbo in organization org-ab12 on tokens per min (TPM): "
                         "Limit 200000, Used 199876, Requested 310.") == (
        "Rate limit reached for gpt-4-turbo in organization org-ab12 on tokens per min (TPM): Limit N, Used N, "
        "Requested N.")
    assert short_message("claude-3-5-haiku-20241022 returned 529 after 2.5 s") == \
        "claude-3-5-haiku-20241022 returned N after N s"


def test_a_huge_answer_is_stored_cut_at_max_output_bytes_and_flagged(make_job, tmp_path):
    job = load_job(make_job(4, concurrency=2, top="max_output_bytes = 1000000\n"))
    with start(scripts=("T000002=huge_answer:size_bytes=3000000",)) as sim:
        result = run_job(job, sim)
    assert result.state == "done"
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "run" / "results.jsonl")}
    huge = rows["T000002"]
    assert len(huge["output"].encode()) <= 1_000_000 and huge["output"].startswith("lorem ipsum")
    assert huge["output_cut"] == {"bytes": 3_000_000, "kept_bytes": len(huge["output"].encode())}
    assert all("output_cut" not in row for key, row in rows.items() if key != "T000002")
    assert (tmp_path / "run" / "results.jsonl").stat().st_size < 1_100_000


def test_max_output_bytes_is_checked_and_cuts_on_a_character():
    from batchrun.records import Completion, Outcome

    text = "é" * 10  # 20 bytes
    outcome = Outcome(ticket_id="a", attempts=1, started_at="", finished_at="", elapsed_ms=1.0, run=1,
                      completion=Completion(text=text, finish_reason="stop", model="m", usage=None, cost_usd=None,
                                            cost_status="no_usage"))
    line = outcome.to_line(max_output_bytes=7)
    assert line["output"] == "ééé" and line["output_cut"] == {"bytes": 20, "kept_bytes": 6}
    assert "output_cut" not in outcome.to_line(max_output_bytes=20)
