"""Anthropic Message Batches, the parts that need no simulator: litellm's configuration, the
Anthropic SDK's errors onto batchrun's error tree, request params as litellm renders them for
an online call, results lines onto Completions, batch prices with cache tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a fresh interpreter that imports litellm
def test_litellm_never_fetches_anthropic_beta_headers_from_the_network():
    """litellm fetches its Anthropic beta-headers table from GitHub on the first Anthropic request
    it prepares unless LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS is set; batchrun sets it with the cost map."""
    code = (
        "import httpx\n"
        "calls = []\n"
        "def get(*a, **k):\n"
        "    calls.append(a)\n"
        "    raise OSError('no network in this test')\n"
        "httpx.get = get\n"
        "from batchrun.providers.litellm_setup import import_litellm\n"
        "import_litellm()\n"
        "from litellm import anthropic_beta_headers_manager as m\n"
        "m.reload_beta_headers_config()\n"
        "print(len(calls))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "0"


# -- the Anthropic SDK's errors, onto batchrun's error tree ----------------------------------------


def _anthropic_status_error(status: int, error_type: str, headers: dict[str, str] | None = None) -> Exception:
    import anthropic
    import httpx2

    request = httpx2.Request("POST", "https://api.anthropic.com/v1/messages/batches")
    body = {"type": "error", "error": {"type": error_type, "message": f"{error_type} (key sk-ant-secret123456)"}}
    response = httpx2.Response(status, headers=headers or {}, json=body, request=request)
    return anthropic.APIStatusError(f"Error code: {status} - {body}", response=response, body=body)


def test_anthropic_sdk_errors_map_onto_the_error_tree():
    import anthropic
    import httpx2

    from batchrun.errors import RateLimitedError, RetryableError, TerminalError
    from batchrun.providers.error_mapping import translate_error

    request = httpx2.Request("GET", "https://api.anthropic.com/v1/messages/batches/msgbatch_1")
    timeout = translate_error(anthropic.APITimeoutError(request=request))
    assert isinstance(timeout, RetryableError) and timeout.kind == "timeout"
    cut = translate_error(anthropic.APIConnectionError(request=request))
    assert isinstance(cut, RetryableError) and cut.kind == "connection" and cut.status_code is None
    limited = translate_error(_anthropic_status_error(429, "rate_limit_error", {"retry-after": "7"}))
    assert isinstance(limited, RateLimitedError) and limited.retry_after == 7.0
    overloaded = translate_error(_anthropic_status_error(529, "overloaded_error"))
    assert isinstance(overloaded, RetryableError) and overloaded.kind == "server_error"
    bad = translate_error(_anthropic_status_error(400, "invalid_request_error"), ["sk-ant-secret123456"])
    assert isinstance(bad, TerminalError) and bad.kind == "bad_request" and bad.status_code == 400
    assert "sk-ant-secret123456" not in bad.message
    denied = translate_error(_anthropic_status_error(401, "authentication_error"))
    assert isinstance(denied, TerminalError) and denied.kind == "auth"


# -- batch prices, cache tokens included ----------------------------------------------------------


def test_batch_prices_from_litellms_map_price_cache_reads_and_writes():
    from batchrun.providers.batch_api import batch_prices_of
    from batchrun.providers.litellm_setup import import_litellm
    from batchrun.records import Usage

    info = import_litellm().get_model_info(model="claude-haiku-4-5", custom_llm_provider="anthropic")
    prices = batch_prices_of("anthropic/claude-haiku-4-5", None)
    assert prices is not None and prices.status == "litellm_batch"
    assert prices.input_per_token == info["input_cost_per_token_batches"]
    assert prices.output_per_token == info["output_cost_per_token_batches"]
    assert prices.cached_input_per_token == info["cache_read_input_token_cost_batches"]
    assert prices.cache_write_per_token == info["cache_creation_input_token_cost_batches"]
    # prompt_tokens counts the cache reads and writes (litellm's usage, as online)
    usage = Usage(prompt_tokens=130, completion_tokens=10, total_tokens=140, cached_tokens=20,
                  cache_write_tokens=10)
    expected = (100 * info["input_cost_per_token_batches"] + 20 * info["cache_read_input_token_cost_batches"]
                + 10 * info["cache_creation_input_token_cost_batches"] + 10 * info["output_cost_per_token_batches"])
    assert abs(prices.cost(usage) - expected) < 1e-15
    assert prices.status_for(usage) == "litellm_batch"  # the cache tokens had prices of their own


def test_a_model_without_batch_prices_gets_half_its_online_prices_cache_ones_too():
    from batchrun.providers.batch_api import batch_prices_of
    from batchrun.providers.litellm_setup import import_litellm

    info = import_litellm().get_model_info(model="claude-mythos-preview", custom_llm_provider="anthropic")
    assert info.get("input_cost_per_token_batches") is None  # the premise: no batch price in the map
    prices = batch_prices_of("anthropic/claude-mythos-preview", None)
    assert prices is not None and prices.status == "half_online"
    assert prices.input_per_token == info["input_cost_per_token"] / 2
    assert prices.cached_input_per_token == info["cache_read_input_token_cost"] / 2
    assert batch_prices_of("anthropic/claude-no-such-model", None) is None


# -- AnthropicBatchAPI: requests, results, custom ids, listing --------------------------------------

MESSAGES = [{"role": "system", "content": "Answer with one label: bug or billing."},
            {"role": "user", "content": "Subject: refund\n\nI was charged twice."}]
SCHEMA = {"type": "object", "properties": {"label": {"type": "string", "enum": ["bug", "billing"]}},
          "required": ["label"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "classify", "description": "file the ticket",
                                           "parameters": SCHEMA}}]


def _api(model: str = "anthropic/claude-haiku-4-5", **kwargs):
    from batchrun.providers.anthropic_batch import AnthropicBatchAPI

    return AnthropicBatchAPI(model=model, api_key="sk-ant-test-key-0000", **kwargs)


def _online_request(model: str, params: dict, **extra) -> tuple[dict, dict]:
    """What litellm's acompletion would POST to Anthropic for this call, and its headers (litellm's
    own raw-request capture)."""
    from litellm.types.utils import CallTypes
    from litellm.utils import return_raw_request

    from batchrun.providers.litellm_setup import import_litellm

    import_litellm()
    raw = return_raw_request(CallTypes.completion, {"model": model, "messages": MESSAGES, **params, **extra})
    assert raw.get("raw_request_body"), raw
    return raw["raw_request_body"], raw["raw_request_headers"]


@pytest.mark.parametrize("options", ["plain", "json_schema", "tools", "tools_required"])
def test_request_params_are_what_litellm_sends_online(options):
    from batchrun.providers.seam import ChatRequest, RequestOptions

    params = {"temperature": 0, "max_tokens": 20}
    extra: dict = {}
    request_options = None
    if options == "json_schema":
        request_options = RequestOptions(json_schema=SCHEMA, json_schema_name="answer")
        extra = {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA,
                                                                            "strict": True}}}
    elif options.startswith("tools"):
        choice = "required" if options == "tools_required" else {"type": "function", "function": {"name": "classify"}}
        request_options = RequestOptions(tools=TOOLS, tool_choice=choice)
        extra = {"tools": TOOLS, "tool_choice": choice, "_skip_mcp_handler": True}
    api = _api()
    line = api.request_line("T1", ChatRequest(ticket_id="T1", messages=MESSAGES, timeout_s=10,
                                              options=request_options), params)
    assert set(line) == {"custom_id", "params"} and line["custom_id"] == "T1"
    body, headers = _online_request("anthropic/claude-haiku-4-5", params, **extra)
    assert line["params"] == body
    assert line["params"]["system"] and all(m["role"] != "system" for m in line["params"]["messages"])
    # the betas a request needs (structured output for a JSON schema) go with the batch's create
    assert api.beta_header(line["params"]) == headers.get("anthropic-beta")
    if options == "json_schema":
        assert headers.get("anthropic-beta")


def test_with_prompt_cache_the_requests_mark_what_online_marks():
    """`prompt_cache = true` (issue 25): a Claude request marks the system prompt and the job's
    shared prefix with cache_control online; the batch request is the same body (Anthropic bills
    batch cache reads at half price too)."""
    from batchrun.providers.seam import ChatRequest

    params = {"temperature": 0, "max_tokens": 20}
    api = _api(prompt_cache=True, cache_prefix="Subject: ")
    line = api.request_line("T1", ChatRequest(ticket_id="T1", messages=MESSAGES, timeout_s=10), params)
    ephemeral = {"type": "ephemeral"}
    marked = [{"role": "system", "content": [{"type": "text", "text": MESSAGES[0]["content"],
                                              "cache_control": ephemeral}]},
              {"role": "user", "content": [{"type": "text", "text": "Subject: ", "cache_control": ephemeral},
                                           {"type": "text", "text": MESSAGES[1]["content"][len("Subject: "):]}]}]
    from litellm.types.utils import CallTypes
    from litellm.utils import return_raw_request

    online = return_raw_request(CallTypes.completion, {"model": "anthropic/claude-haiku-4-5", "messages": marked,
                                                       **params})["raw_request_body"]
    assert line["params"] == online
    assert line["params"]["system"][0]["cache_control"] == ephemeral
    plain = _api().request_line("T1", ChatRequest(ticket_id="T1", messages=MESSAGES, timeout_s=10), params)
    assert "cache_control" not in json.dumps(plain["params"])  # without prompt_cache nothing is marked


def _message(content, stop_reason="end_turn", **usage):
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": 100, "output_tokens": 4, **usage}}


def test_a_succeeded_result_becomes_a_completion_at_the_batch_price_with_cache_tokens():
    from batchrun.providers.batch_api import batch_prices_of

    api = _api()
    prices = batch_prices_of(api.model, None)
    completion = api.completion_of(_message([{"type": "text", "text": "billing"}], cache_read_input_tokens=20,
                                            cache_creation_input_tokens=10), prices)
    assert (completion.text, completion.finish_reason, completion.model) == ("billing", "stop", "claude-haiku-4-5")
    usage = completion.usage
    assert usage is not None and usage.as_dict() == {
        "prompt_tokens": 130, "completion_tokens": 4, "total_tokens": 134,
        "cached_tokens": 20, "cache_write_tokens": 10, "reasoning_tokens": None}
    assert completion.cost_status == "litellm_batch" and completion.cost_usd == prices.cost(usage)
    called = api.completion_of(_message([{"type": "tool_use", "id": "toolu_1", "name": "classify",
                                          "input": {"label": "bug"}}], "tool_use"), prices)
    assert called.finish_reason == "tool_calls" and called.tool_calls[0].name == "classify"
    assert json.loads(called.tool_calls[0].arguments) == {"label": "bug"}
    unpriced = api.completion_of(_message([{"type": "text", "text": "x"}]), None)
    assert (unpriced.cost_usd, unpriced.cost_status) == (None, "unpriced_model")
    assert unpriced.usage is not None and (unpriced.usage.cached_tokens, unpriced.usage.cache_write_tokens) == \
        (None, None)  # counts a result does not send are not said, not 0
    bad_usage = _message([{"type": "text", "text": "x"}])
    bad_usage["usage"] = {"input_tokens": -5, "output_tokens": "many"}
    unknown = api.completion_of(bad_usage, prices)  # what a provider says is checked before it is believed
    assert (unknown.usage, unknown.cost_usd, unknown.cost_status) == (None, None, "no_usage")


def test_results_lines_are_read_as_answers_http_errors_or_requests_without_an_answer():
    from batchrun.errors import RetryableError
    from batchrun.providers.error_mapping import error_for_status

    api = _api()
    ok = api.parse_line({"custom_id": "T1", "result": {"type": "succeeded", "message": _message([])}})
    assert ok.custom_id == "T1" and ok.body is not None and ok.body["id"] == "msg_1"

    def errored(kind):
        return api.parse_line({"custom_id": "T2", "result": {"type": "errored", "error": {
            "type": "error", "error": {"type": kind, "message": f"{kind} happened"}}}})

    assert (errored("invalid_request_error").status, errored("invalid_request_error").code) == \
        (400, "invalid_request_error")
    assert errored("overloaded_error").status == 529 and errored("rate_limit_error").status == 429
    assert isinstance(error_for_status(errored("api_error").status, "x"), RetryableError)
    assert api.parse_line({"custom_id": "T3", "result": {"type": "canceled"}}).kind == "cancelled"
    assert api.parse_line({"custom_id": "T4", "result": {"type": "expired"}}).kind == "expired"
    assert api.parse_line({"custom_id": "T5", "result": "?"}).kind == "batch_error"
    assert api.parse_line({"result": {"type": "canceled"}}).custom_id is None


def test_a_ticket_id_anthropic_refuses_as_custom_id_gets_a_stable_key_of_its_own():
    api = _api()
    assert api.custom_id("T-17_b") == "T-17_b"
    for awkward in ("ticket 17", "t.17", "é", "x" * 65):
        key = api.custom_id(awkward)
        assert key != awkward and key == api.custom_id(awkward)
        assert len(key) <= 64 and all(c.isalnum() or c in "_-" for c in key)
    assert api.custom_id("ticket 17") != api.custom_id("ticket 18")


def test_a_listed_batch_is_a_candidate_when_made_around_the_parts_create_with_its_request_count():
    from batchrun.providers.seam import BatchClaim

    api = _api()
    claim = BatchClaim(metadata={}, requests=10, created_after=1_000_000.0, created_before=1_000_010.0)

    def batch(created_at, total=10, cancelled=False):
        return {"id": "b", "created_at": created_at, "request_counts": {"total": total},
                "cancel_initiated": cancelled}

    assert api.match_batch(batch(1_000_001.0), claim) == "candidate"
    assert api.match_batch(batch(1_000_001.0, total=11), claim) == "other"
    assert api.match_batch(batch(1_000_001.0, cancelled=True), claim) == "other"
    assert api.match_batch(batch(1_000_010.0 + 10_000), claim) == "other"  # long after the last create
    assert api.match_batch(batch(1_000_000.0 - 10_000), claim) == "older"  # before: stop paging


def test_without_the_sdk_a_clear_message_names_the_install_command(monkeypatch):
    from batchrun.errors import ConfigurationError

    monkeypatch.setitem(sys.modules, "anthropic", None)  # import anthropic raises ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'batchrun\[anthropic\]'"):
        _api()


def test_the_key_never_shows():
    api = _api()
    assert "sk-ant-test-key-0000" not in repr(api)


def test_a_json_schema_answered_through_litellms_json_tool_reads_as_text_even_after_a_restart():
    """A model without native structured output gets the schema as litellm's forced tool; the answer
    comes back as text, as online, also from an API object that built no request (a resumed run)."""
    from litellm.constants import RESPONSE_FORMAT_TOOL_NAME

    fresh = _api()
    answer = fresh.completion_of(_message([{"type": "tool_use", "id": "toolu_9", "name": RESPONSE_FORMAT_TOOL_NAME,
                                            "input": {"label": "billing"}}], "tool_use"), None)
    assert json.loads(answer.text) == {"label": "billing"} and answer.tool_calls == ()
    assert answer.finish_reason == "stop"


def test_anthropic_results_lines_are_checked_like_any_batch_output(tmp_path):
    """batch/outputs.py reads each line through the BatchAPI: in Anthropic's results file a
    duplicate is kept once (the good answer, the bad one's cost on the ticket), an unknown
    custom_id is an anomaly with its billed cost, an errored line decides nothing over a good one."""
    import orjson

    from batchrun.batch.outputs import PartOutputs
    from batchrun.job.spec import JobSpec
    from batchrun.providers.batch_api import batch_prices_of

    api = _api()
    prices = batch_prices_of(api.model, None)
    (tmp_path / "t.jsonl").write_text('{"id": "a", "text": "t"}\n{"id": "b", "text": "t"}\n')
    job = JobSpec.model_validate({"name": "j", "input": str(tmp_path / "t.jsonl"), "model": api.model,
                                  "labels": ["bug", "billing"], "prompt": {"user": "{text}"}},
                                 context={"base_dir": tmp_path})

    def succeeded(cid: str, text: str) -> bytes:
        return orjson.dumps({"custom_id": cid, "result": {"type": "succeeded", "message": _message(
            [{"type": "text", "text": text}])}}) + b"\n"

    errored = orjson.dumps({"custom_id": "b", "result": {"type": "errored", "error": {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}}}}) + b"\n"
    (tmp_path / "out.jsonl").write_bytes(succeeded("a", "banana") + succeeded("a", "billing") + errored
                                         + succeeded("ghost", "bug"))
    outputs = PartOutputs(job, 1, {"number": 1, "model_key": ""}, api, prices,
                          {"a": {"id": "a", "a": 1}, "b": {"id": "b", "a": 1}}, "2026-01-01T00:00:00.000Z", 1.0)
    items = {(i.ticket_id if hasattr(i, "ticket_id") else i["id"]): i
             for i in outputs.collect([tmp_path / "out.jsonl", tmp_path / "none.jsonl"])}
    one = api.completion_of(_message([{"type": "text", "text": "x"}]), prices).cost_usd
    assert items["a"].completion.text == "billing" and items["a"].rejected_outputs == 1
    assert abs(items["a"].rejected_cost_usd - one) < 1e-12  # the duplicate was billed: on its ticket
    assert (items["b"]["kind"], items["b"]["status"], items["b"]["retry"]) == ("server_error", 529, True)
    kinds = {(a["kind"], a.get("custom_id")): a for a in outputs.anomalies}
    assert set(kinds) == {("duplicate", "a"), ("unknown_id", "ghost")}
    assert kinds[("unknown_id", "ghost")]["billed"] and abs(kinds[("unknown_id", "ghost")]["billed_usd"] - one) < 1e-12
