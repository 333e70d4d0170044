"""The simulator's Anthropic Message Batches (`/v1/messages/batches`), through Anthropic's own SDK.

Create, retrieve, list, cancel and results in Anthropic's shapes, each line answered by the chat
simulator's own code (the same answer and usage the chat completion of that request gets), and
the batch faults (expire, errored lines, all errored, slow, 429/5xx on an endpoint, a lost
create, a create refused as invalid).
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

pytestmark = pytest.mark.slow

anthropic = pytest.importorskip("anthropic")

SYSTEM = "Classify the ticket as exactly one of: bug, feature, billing, other."


def start(**config: Any) -> Any:
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    defaults = dict(latency_ms=0.0, jitter=0.0, batch_time_scale=86400.0, batch_duration_s=1800.0)
    return start_simulator(SimConfig(**{**defaults, **config}))


def client(sim: Any) -> Any:
    return anthropic.Anthropic(api_key="sim-key", base_url=sim.root_url, max_retries=0, timeout=10)


def requests(n: int, **params: Any) -> list[dict[str, Any]]:
    return [{"custom_id": f"T{i}", "params": {
        "model": "claude-haiku-4-5", "max_tokens": 5, "system": [{"type": "text", "text": SYSTEM}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": f"Subject: invoice {i}\n\ncharged twice"}]}],
        **params}} for i in range(n)]


def wait_ended(api: Any, batch_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = api.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)


def results(api: Any, batch_id: str) -> dict[str, Any]:
    return {r.custom_id: r.result for r in api.messages.batches.results(batch_id)}


def batch_stats(sim: Any) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(sim.root_url + "/sim/batch_stats", timeout=10) as response:
        return json.load(response)


def chat_answer(sim: Any, body: dict[str, Any]) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(sim.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with opener.open(request, timeout=10) as response:
        return json.load(response)


def test_a_batch_is_answered_in_anthropics_shapes_by_the_chat_simulators_own_answers():
    with start() as sim:
        api = client(sim)
        created = api.messages.batches.create(requests=requests(3))
        assert created.type == "message_batch" and created.processing_status == "in_progress"
        assert created.request_counts.processing == 3 and created.results_url is None
        assert abs(created.created_at.timestamp() - time.time()) < 60  # wall-clock time
        ended = wait_ended(api, created.id)
        assert ended.request_counts.succeeded == 3 and ended.request_counts.processing == 0
        assert ended.results_url.endswith(f"/v1/messages/batches/{created.id}/results")
        out = results(api, created.id)
        assert sorted(out) == ["T0", "T1", "T2"]
        message = out["T1"].message
        assert out["T1"].type == "succeeded" and message.type == "message" and message.role == "assistant"
        online = chat_answer(sim, {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": "Subject: invoice 1\n\ncharged twice"}]})
        assert message.content[0].text == online["choices"][0]["message"]["content"]
        assert message.usage.input_tokens == online["usage"]["prompt_tokens"]
        assert message.usage.output_tokens == online["usage"]["completion_tokens"]
        assert message.stop_reason in ("end_turn", "max_tokens")
        listed = api.messages.batches.list(limit=10)
        assert [b.id for b in listed.data] == [created.id]


def test_tools_and_json_schema_come_back_as_tool_use_and_json_text():
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["bug", "billing"]}},
              "required": ["label"], "additionalProperties": False}
    with start() as sim:
        api = client(sim)
        tool = api.messages.batches.create(requests=requests(
            1, max_tokens=50, tools=[{"name": "classify", "description": "d", "input_schema": schema}],
            tool_choice={"type": "tool", "name": "classify"}))
        structured = api.messages.batches.create(requests=requests(
            1, max_tokens=50, output_format={"type": "json_schema", "schema": schema}))
        wait_ended(api, tool.id)
        wait_ended(api, structured.id)
        call = results(api, tool.id)["T0"].message
        assert call.stop_reason == "tool_use" and call.content[0].type == "tool_use"
        assert call.content[0].name == "classify" and call.content[0].input["label"] in ("bug", "billing")
        text = results(api, structured.id)["T0"].message.content[0].text
        assert json.loads(text)["label"] in ("bug", "billing")


def test_list_pages_newest_first():
    with start() as sim:
        api = client(sim)
        ids = [api.messages.batches.create(requests=requests(1)).id for _ in range(3)]
        first = api.messages.batches.list(limit=2)
        assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
        second = api.messages.batches.list(limit=2, after_id=first.last_id)
        assert [b.id for b in second.data] == [ids[0]] and not second.has_more


@pytest.mark.parametrize("fault, counts", [
    ("fail_lines:batches=1,rate=0.5", None),
    ("all_failed:batches=1", {"errored": 10}),
    ("expire:batches=1,rate=0.3", {"succeeded": 3, "expired": 7}),
])
def test_batch_faults_end_in_errored_and_expired_results(fault, counts):
    with start(batch_faults=(fault,), batch_time_scale=86400.0 * 4) as sim:
        api = client(sim)
        batch = api.messages.batches.create(requests=requests(10))
        ended = wait_ended(api, batch.id)
        out = results(api, batch.id)
        assert len(out) == 10
        kinds = [r.type for r in out.values()]
        got = {k: getattr(ended.request_counts, k) for k in ("succeeded", "errored", "expired", "canceled")}
        assert got == {k: kinds.count(k) for k in got}
        if counts:
            assert {k: v for k, v in got.items() if v} == counts
        else:
            assert 0 < got["errored"] < 10 and got["succeeded"] == 10 - got["errored"]
        errored = [r for r in out.values() if r.type == "errored"]
        assert all(r.error.error.type == "api_error" for r in errored)


def test_cancel_keeps_what_was_answered_and_cancels_the_rest():
    with start(batch_faults=("slow:batches=1,rate=0.4",), batch_time_scale=3600.0) as sim:
        api = client(sim)
        batch = api.messages.batches.create(requests=requests(10))
        deadline = time.monotonic() + 10
        while api.messages.batches.retrieve(batch.id).request_counts.succeeded < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cancelling = api.messages.batches.cancel(batch.id)
        assert cancelling.processing_status == "canceling" and cancelling.cancel_initiated_at is not None
        ended = wait_ended(api, batch.id)
        assert (ended.request_counts.succeeded, ended.request_counts.canceled) == (4, 6)
        assert sorted(r.type for r in results(api, batch.id).values()) == ["canceled"] * 6 + ["succeeded"] * 4
        with pytest.raises(anthropic.BadRequestError):
            api.messages.batches.cancel(batch.id)  # it has ended


def test_endpoint_faults_lost_creates_and_invalid_batches():
    faults = ("429:endpoint=retrieve,calls=1,retry_after=3", "create_lost:calls=1", "invalid:batches=2")
    with start(batch_faults=faults) as sim:
        api = client(sim)
        with pytest.raises(anthropic.InternalServerError):
            api.messages.batches.create(requests=requests(2))  # made all the same
        listed = api.messages.batches.list()
        assert len(listed.data) == 1 and listed.data[0].request_counts.processing + \
            listed.data[0].request_counts.succeeded == 2
        with pytest.raises(anthropic.RateLimitError) as limited:
            api.messages.batches.retrieve(listed.data[0].id)
        assert limited.value.response.headers["retry-after"] == "3"
        with pytest.raises(anthropic.BadRequestError) as refused:
            api.messages.batches.create(requests=requests(2))
        assert refused.value.type == "invalid_request_error"
        with pytest.raises(anthropic.BadRequestError):  # a custom_id Anthropic refuses
            api.messages.batches.create(requests=[{**requests(1)[0], "custom_id": "a b"}])
        assert batch_stats(sim)["batches_created"] == 1
