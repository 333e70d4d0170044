"""Tests of the simulator's structured outputs (JSON mode, JSON schemas) and tool calls.

* `batchrun.sim.structured` directly: schema instances validate (checked with
  ``jsonschema``), are deterministic, follow ``$ref`` and stay small for
  recursive schemas; enum labels come from the simulated classifier;
* over HTTP in process: response shapes, truncation, streaming (JSON text
  and tool-call argument fragments), ``tool_choice`` variants, 400s;
* through litellm: tool calls plain and streamed (reassembled with
  ``litellm.stream_chunk_builder``) and a pydantic ``response_format``.

litellm 1.106 imports its MCP gateway (and the optional ``mcp`` package)
whenever ``tools`` are passed; the tests pass litellm's ``_skip_mcp_handler``
flag so they do not depend on that package.
"""

from __future__ import annotations

import contextlib
import os

import jsonschema
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

from batchrun.sim.answers import compose_answer  # noqa: E402
from batchrun.sim.config import SimConfig  # noqa: E402
from batchrun.sim.server import TICKET_HEADER, build_app  # noqa: E402
from batchrun.sim.structured import instance_for_schema  # noqa: E402
from batchrun.sim.tokens import count_prompt_tokens, count_tokens, split_tokens  # noqa: E402

SEED = 3
CLASSIFY = [
    {"role": "system", "content": "Classify the ticket as exactly one of: bug, feature, billing, other."},
    {"role": "user", "content": "I was charged twice this month, please refund the duplicate invoice."},
]
PROSE = [{"role": "user", "content": "Write a short note about the history of tea trading in Asia."}]

LABEL_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["Bug", "Feature", "Billing", "Other"]},
        "summary": {"type": "string", "maxLength": 200},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "summary", "confidence"],
    "additionalProperties": False,
}

RICH_SCHEMA = {
    "type": "object",
    "properties": {
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "severity": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
        "weeks": {"type": "integer", "multipleOf": 7, "minimum": 10, "maximum": 40},
        "ratio": {"type": "number", "exclusiveMinimum": 0.5, "exclusiveMaximum": 0.51},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 5},
        "labels": {"type": "array", "items": {"enum": ["bug", "feature", "billing", "other"]}, "uniqueItems": True, "minItems": 2},
        "contact": {
            "type": "object",
            "properties": {
                "email": {"type": "string", "format": "email"},
                "when": {"type": "string", "format": "date-time"},
                "day": {"type": "string", "format": "date"},
                "id": {"type": "string", "format": "uuid"},
                "site": {"type": "string", "format": "uri"},
            },
            "required": ["email"],
        },
        "maybe": {"anyOf": [{"type": "string", "minLength": 30}, {"type": "null"}]},
        "either": {"oneOf": [{"type": "integer", "minimum": 100}, {"type": "string"}]},
        "nullable": {"type": ["null", "string"], "maxLength": 5},
        "fixed": {"const": "v1"},
        "color": {"enum": ["red", "green", "blue"]},
        "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
        "tree": {"$ref": "#/$defs/Node"},
        "merged": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]},
        "anything": {},
    },
    "required": ["priority", "tags", "labels", "contact", "tree", "merged"],
    "additionalProperties": False,
    "$defs": {
        "Node": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
            "required": ["name", "children"],
            "additionalProperties": False,
        }
    },
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "set_label",
            "description": "Record the ticket's label.",
            "parameters": {
                "type": "object",
                "properties": {
                    "label": {"type": "string", "enum": ["bug", "feature", "billing", "other"]},
                    "reason": {"type": "string"},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["label", "reason", "confidence", "tags"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "escalate",
            "parameters": {"type": "object", "properties": {"team": {"type": "string", "enum": ["finance", "eng"]}, "urgent": {"type": "boolean"}}, "required": ["team", "urgent"]},
        },
    },
]


def validate(instance, schema) -> None:
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(instance)


# -- instances of schemas -------------------------------------------------------


@pytest.mark.parametrize("schema", [LABEL_SCHEMA, RICH_SCHEMA], ids=["labels", "rich"])
@pytest.mark.parametrize("messages", [CLASSIFY, PROSE], ids=["classify", "prose"])
def test_instances_validate_and_are_deterministic(schema, messages):
    value = instance_for_schema(schema, messages, SEED)
    validate(value, schema)
    assert instance_for_schema(schema, messages, SEED) == value


def test_enum_of_labels_uses_the_classifier():
    value = instance_for_schema(LABEL_SCHEMA, CLASSIFY, SEED)
    assert compose_answer(CLASSIFY, SEED) == "billing"
    assert value["label"] == "Billing"  # the enum's own spelling
    rich = instance_for_schema(RICH_SCHEMA, CLASSIFY, SEED)
    assert rich["labels"][0] == "billing" and len(set(rich["labels"])) == len(rich["labels"]) >= 2


def test_recursive_schema_stays_small():
    value = instance_for_schema(RICH_SCHEMA, CLASSIFY, SEED)
    assert len(orjson.dumps(value)) < 5000

    def depth(node) -> int:
        return 1 + max((depth(child) for child in node["children"]), default=0)

    assert 1 <= depth(value["tree"]) <= 8
    linked = {"$defs": {"L": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/L"}, {"type": "null"}]}}, "required": ["next"]}}, "$ref": "#/$defs/L"}
    chain = instance_for_schema(linked, PROSE, 0)
    validate(chain, linked)


def test_other_seeds_and_texts_change_hash_based_choices():
    schema = {"type": "object", "properties": {f"n{i}": {"type": "integer", "minimum": 0, "maximum": 1000} for i in range(8)}}
    a = instance_for_schema(schema, PROSE, 1)
    assert instance_for_schema(schema, PROSE, 2) != a
    assert instance_for_schema(schema, CLASSIFY, 1) != a


def test_pydantic_generated_schema():
    from typing import Literal, Optional

    from pydantic import BaseModel, Field

    class Step(BaseModel):
        title: str
        minutes: int = Field(ge=1, le=90)

    class Plan(BaseModel):
        label: Literal["bug", "feature", "billing", "other"]
        steps: list[Step] = Field(min_length=1)
        owner: Optional[str] = None
        score: float = Field(gt=0, lt=1)

    schema = Plan.model_json_schema()
    value = instance_for_schema(schema, CLASSIFY, SEED)
    validate(value, schema)
    parsed = Plan.model_validate(value)
    assert parsed.label == "billing"


# -- over HTTP ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sim_client(config: SimConfig | None = None):
    client = TestClient(TestServer(build_app(config or SimConfig(latency_ms=0, jitter=0, seed=SEED))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def chat(client: TestClient, body: dict):
    response = await client.post("/v1/chat/completions", data=orjson.dumps({"model": "gpt-4o-mini", **body}))
    return response.status, await response.read()


def sse_chunks(raw: bytes) -> list[dict]:
    blocks = [b for b in raw.decode().split("\n\n") if b]
    assert blocks[-1] == "data: [DONE]"
    return [orjson.loads(b[len("data: ") :]) for b in blocks[:-1]]


def json_schema_format(schema: dict, name: str = "answer") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


async def test_json_schema_answer_over_http():
    async with sim_client() as client:
        status, raw = await chat(client, {"messages": CLASSIFY, "response_format": json_schema_format(LABEL_SCHEMA)})
        assert status == 200
        body = orjson.loads(raw)
        choice = body["choices"][0]
        assert choice["finish_reason"] == "stop"
        content = choice["message"]["content"]
        value = orjson.loads(content)
        validate(value, LABEL_SCHEMA)
        assert value["label"] == "Billing"
        assert body["usage"]["completion_tokens"] == count_tokens(content)
        assert body["usage"]["prompt_tokens"] == count_prompt_tokens(CLASSIFY) + count_tokens(orjson.dumps(LABEL_SCHEMA).decode())

        status, raw = await chat(client, {"messages": PROSE, "response_format": json_schema_format(RICH_SCHEMA)})
        validate(orjson.loads(orjson.loads(raw)["choices"][0]["message"]["content"]), RICH_SCHEMA)


async def test_json_object_answers():
    async with sim_client() as client:
        _, raw = await chat(client, {"messages": CLASSIFY, "response_format": {"type": "json_object"}})
        value = orjson.loads(orjson.loads(raw)["choices"][0]["message"]["content"])
        assert set(value) == {"label", "summary"}
        assert value["label"] == compose_answer(CLASSIFY, SEED)
        _, raw = await chat(client, {"messages": PROSE, "response_format": {"type": "json_object"}})
        value = orjson.loads(orjson.loads(raw)["choices"][0]["message"]["content"])
        assert set(value) == {"summary", "keywords"} and value["summary"]
        _, raw = await chat(client, {"messages": PROSE, "response_format": {"type": "text"}})
        assert orjson.loads(raw)["choices"][0]["message"]["content"] == compose_answer(PROSE, SEED)


async def test_truncated_json_has_finish_reason_length_and_is_invalid():
    async with sim_client() as client:
        _, raw = await chat(client, {"messages": CLASSIFY, "response_format": json_schema_format(LABEL_SCHEMA)})
        full = orjson.loads(raw)["choices"][0]["message"]["content"]
        _, raw = await chat(client, {"messages": CLASSIFY, "response_format": json_schema_format(LABEL_SCHEMA), "max_tokens": 5})
        body = orjson.loads(raw)
        assert body["choices"][0]["finish_reason"] == "length"
        content = body["choices"][0]["message"]["content"]
        assert content == "".join(split_tokens(full)[:5])
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(content)


async def test_streamed_json_matches_the_plain_answer():
    async with sim_client() as client:
        request = {"messages": CLASSIFY, "response_format": json_schema_format(LABEL_SCHEMA)}
        _, plain = await chat(client, request)
        _, raw = await chat(client, {**request, "stream": True})
        chunks = sse_chunks(raw)
        streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert streamed == orjson.loads(plain)["choices"][0]["message"]["content"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_tool_call_shape_and_usage():
    async with sim_client() as client:
        status, raw = await chat(client, {"messages": CLASSIFY, "tools": TOOLS})
        assert status == 200
        body = orjson.loads(raw)
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        message = choice["message"]
        assert message["role"] == "assistant" and message["content"] is None
        [call] = message["tool_calls"]
        assert call["type"] == "function"
        assert call["id"].startswith("call_") and len(call["id"]) == 29
        assert call["function"]["name"] == "set_label"  # "auto": the first tool
        arguments = orjson.loads(call["function"]["arguments"])
        validate(arguments, TOOLS[0]["function"]["parameters"])
        assert arguments["label"] == "billing"
        assert body["usage"]["completion_tokens"] == count_tokens(call["function"]["arguments"])
        assert body["usage"]["prompt_tokens"] == count_prompt_tokens(CLASSIFY) + count_tokens(orjson.dumps(TOOLS).decode())

        # Deterministic: the same request gets the same call.
        _, again = await chat(client, {"messages": CLASSIFY, "tools": TOOLS})
        assert orjson.loads(again)["choices"][0]["message"]["tool_calls"] == message["tool_calls"]


async def test_tool_choice_variants():
    async with sim_client() as client:
        async def outcome(extra: dict, messages=CLASSIFY):
            status, raw = await chat(client, {"messages": messages, "tools": TOOLS, **extra})
            assert status == 200, raw
            choice = orjson.loads(raw)["choices"][0]
            calls = choice["message"].get("tool_calls")
            return choice["finish_reason"], calls[0]["function"]["name"] if calls else choice["message"]["content"]

        assert await outcome({"tool_choice": "auto"}) == ("tool_calls", "set_label")
        assert await outcome({"tool_choice": "required"}) == ("tool_calls", "set_label")
        assert await outcome({"tool_choice": {"type": "function", "function": {"name": "escalate"}}}) == ("tool_calls", "escalate")
        assert await outcome({"tool_choice": "none"}) == ("stop", compose_answer(CLASSIFY, SEED))

        after_tool = CLASSIFY + [
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "set_label", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "saved"},
        ]
        finish, text = await outcome({}, after_tool)
        assert finish == "stop" and isinstance(text, str) and text
        assert (await outcome({"tool_choice": "required"}, after_tool))[0] == "tool_calls"

        _, raw = await chat(client, {"messages": CLASSIFY, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "escalate"}}})
        arguments = orjson.loads(orjson.loads(raw)["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
        validate(arguments, TOOLS[1]["function"]["parameters"])


async def test_tool_call_truncated_by_max_tokens():
    async with sim_client() as client:
        _, raw = await chat(client, {"messages": CLASSIFY, "tools": TOOLS, "max_tokens": 4})
        choice = orjson.loads(raw)["choices"][0]
        assert choice["finish_reason"] == "length"
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(choice["message"]["tool_calls"][0]["function"]["arguments"])


async def test_streamed_tool_call_fragments():
    async with sim_client(SimConfig(latency_ms=0, jitter=0, seed=SEED)) as client:
        _, plain = await chat(client, {"messages": CLASSIFY, "tools": TOOLS})
        plain_call = orjson.loads(plain)["choices"][0]["message"]["tool_calls"][0]
        _, raw = await chat(client, {"messages": CLASSIFY, "tools": TOOLS, "stream": True, "stream_options": {"include_usage": True}})
        chunks = sse_chunks(raw)
        first, *middle, finish, usage = chunks
        delta = first["choices"][0]["delta"]
        assert delta["role"] == "assistant" and delta["content"] is None
        [head] = delta["tool_calls"]
        assert head == {"index": 0, "id": plain_call["id"], "type": "function", "function": {"name": "set_label", "arguments": ""}}
        assert len(middle) >= 3
        fragments = []
        for chunk in middle:
            [call] = chunk["choices"][0]["delta"]["tool_calls"]
            assert set(call) == {"index", "function"} and call["index"] == 0
            assert set(call["function"]) == {"arguments"}
            fragments.append(call["function"]["arguments"])
        assert "".join(fragments) == plain_call["function"]["arguments"]
        assert finish["choices"][0]["finish_reason"] == "tool_calls" and finish["choices"][0]["delta"] == {}
        assert usage["usage"]["completion_tokens"] == count_tokens(plain_call["function"]["arguments"])


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": "json"}, "response_format"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
        ({"tool_choice": "auto"}, "tool_choice"),
    ],
)
async def test_malformed_structured_requests_get_400(extra, param):
    async with sim_client() as client:
        status, raw = await chat(client, {"messages": CLASSIFY, **extra})
        assert status == 400
        error = orjson.loads(raw)["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param


# -- through litellm ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sim_url():
    server = TestServer(build_app(SimConfig(latency_ms=0, jitter=0, seed=SEED)))
    await server.start_server()
    try:
        yield str(server.make_url("/v1"))
    finally:
        await server.close()


async def test_litellm_tool_calls_plain_and_streamed():
    import litellm

    async with sim_url() as base_url:
        kwargs = dict(
            model="openai/gpt-4o-mini",
            api_base=base_url,
            api_key="sim-key",
            messages=CLASSIFY,
            tools=TOOLS,
            max_retries=0,
            num_retries=0,
            timeout=10,
            _skip_mcp_handler=True,  # see the module docstring
        )
        response = await litellm.acompletion(**kwargs, extra_headers={TICKET_HEADER: "tool-1"})
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls
        assert call.function.name == "set_label"
        arguments = orjson.loads(call.function.arguments)
        validate(arguments, TOOLS[0]["function"]["parameters"])

        stream = await litellm.acompletion(**kwargs, stream=True, stream_options={"include_usage": True}, extra_headers={TICKET_HEADER: "tool-2"})
        chunks = [chunk async for chunk in stream]
        rebuilt = litellm.stream_chunk_builder(chunks)
        [streamed_call] = rebuilt.choices[0].message.tool_calls
        assert rebuilt.choices[0].finish_reason == "tool_calls"
        assert streamed_call.id == call.id
        assert streamed_call.function.name == "set_label"
        assert orjson.loads(streamed_call.function.arguments) == arguments
        assert rebuilt.usage.completion_tokens == response.usage.completion_tokens


async def test_litellm_pydantic_response_format():
    import litellm
    from typing import Literal

    from pydantic import BaseModel

    class Verdict(BaseModel):
        label: Literal["bug", "feature", "billing", "other"]
        summary: str

    async with sim_url() as base_url:
        response = await litellm.acompletion(
            model="openai/gpt-4o-mini",
            api_base=base_url,
            api_key="sim-key",
            messages=CLASSIFY,
            response_format=Verdict,
            max_retries=0,
            timeout=10,
        )
    verdict = Verdict.model_validate_json(response.choices[0].message.content)
    assert verdict.label == compose_answer(CLASSIFY, SEED)
