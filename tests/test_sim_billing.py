"""What the simulator bills (batchrun/sim/billing.py), over HTTP on 127.0.0.1 (aiohttp's test server):

* service tiers: the response names the tier it served; flex requests get 429
  resource_unavailable at the configured rate, never billed;
* prompt caching as each provider reports it: OpenAI-style automatic caching of a
  repeated prefix of at least 1,024 tokens in 128-token steps (per model and
  prompt_cache_key); Anthropic-style (models named claude) only what was marked with
  cache_control: a first sight is a write, then reads;
* reasoning tokens of reasoning models, within max_tokens;
* prompt_token_scale (a provider tokenizer that counts more than the client's);
* the invoice in /sim/stats: billed tokens per model, tier and kind, and per ticket;
  what was not delivered is not billed.
"""

from __future__ import annotations

import math

import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from batchrun.sim.billing import OPENAI_CACHE_MIN_TOKENS, OPENAI_CACHE_STEP, is_reasoning_model
from batchrun.sim.config import SimConfig
from batchrun.sim.server import TICKET_HEADER, build_app
from batchrun.sim.tokens import count_prompt_tokens

LONG = "alpha beta gamma delta " * 400  # about 1,600 tokens


def client_for(**config):
    return TestClient(TestServer(build_app(SimConfig(latency_ms=0, jitter=0, **config))))


@pytest_asyncio.fixture
async def client():
    async with client_for() as c:
        yield c


async def chat(client, model, messages, ticket=None, **body):
    headers = {TICKET_HEADER: ticket} if ticket else {}
    response = await client.post("/v1/chat/completions", json={"model": model, "messages": messages, **body},
                                 headers=headers)
    return response.status, await response.json()


def system_and(text, user):
    return [{"role": "system", "content": text}, {"role": "user", "content": user}]


@pytest.mark.asyncio
async def test_openai_caches_a_repeated_prefix_of_1024_tokens_in_128_token_steps(client):
    messages = system_and(LONG, "first")
    total = count_prompt_tokens(messages)
    _, first = await chat(client, "gpt-4o-mini", messages, max_tokens=5)
    assert first["usage"]["prompt_tokens"] == total
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}  # said, and 0: nothing seen yet
    _, second = await chat(client, "gpt-4o-mini", system_and(LONG, "second, a different ticket"), max_tokens=5)
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= OPENAI_CACHE_MIN_TOKENS and (cached - OPENAI_CACHE_MIN_TOKENS) % OPENAI_CACHE_STEP == 0
    assert cached <= total - 3  # the differing user message is not cached
    # another model, or another prompt_cache_key, has its own cache
    _, other_model = await chat(client, "gpt-5-mini", system_and(LONG, "second"), max_tokens=40)
    _, other_key = await chat(client, "gpt-4o-mini", system_and(LONG, "third"), max_tokens=5, prompt_cache_key="k2")
    assert other_model["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert other_key["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # a prompt under 1,024 tokens is never cached
    short = system_and("alpha " * 100, "x")
    for _ in range(2):
        _, answer = await chat(client, "gpt-4o-mini", short, max_tokens=5)
        assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


@pytest.mark.asyncio
async def test_anthropic_caches_only_what_was_marked_a_write_then_reads(client):
    marked = [{"role": "system", "content": [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]},
              {"role": "user", "content": "ticket one"}]
    _, write = await chat(client, "claude-haiku-4-5", marked, max_tokens=5)
    usage = write["usage"]
    assert usage["cache_creation_input_tokens"] > OPENAI_CACHE_MIN_TOKENS and usage["cache_read_input_tokens"] == 0
    assert "service_tier" not in write  # Anthropic's answers name no OpenAI tier
    marked[1] = {"role": "user", "content": "ticket two"}
    _, read = await chat(client, "claude-haiku-4-5", marked, max_tokens=5)
    assert read["usage"]["cache_read_input_tokens"] == usage["cache_creation_input_tokens"]
    assert read["usage"]["prompt_tokens_details"]["cached_tokens"] == read["usage"]["cache_read_input_tokens"]
    assert read["usage"]["cache_creation_input_tokens"] == 0
    assert read["usage"]["prompt_tokens"] == count_prompt_tokens(marked)  # reads and writes are within it
    # the same long prompt without a mark: nothing cached, no cache counts said
    for _ in range(2):
        _, plain = await chat(client, "claude-haiku-4-5", system_and(LONG, "ticket three"), max_tokens=5)
        assert "cache_read_input_tokens" not in plain["usage"]


@pytest.mark.asyncio
async def test_tiers_served_and_flex_unavailable_at_the_configured_rate_never_billed():
    async with client_for(flex_unavailable_rate=0.5, seed=3) as client:
        statuses = []
        for n in range(40):
            status, body = await chat(client, "gpt-5-mini", system_and("Classify.", f"ticket {n}"),
                                      ticket=f"T{n}", max_tokens=80, service_tier="flex")
            statuses.append(status)
            if status == 429:
                assert body["error"]["code"] == "resource_unavailable"
            else:
                assert body["service_tier"] == "flex"
        refused = statuses.count(429)
        assert 10 <= refused <= 30
        _, default = await chat(client, "gpt-5-mini", system_and("Classify.", "x"), max_tokens=80)
        _, priority = await chat(client, "gpt-5-mini", system_and("Classify.", "y"), max_tokens=80,
                                 service_tier="priority")
        assert default["service_tier"] == "default" and priority["service_tier"] == "priority"
        stats = await (await client.get("/sim/stats")).json()
    assert stats["flex_unavailable"] == refused
    invoice = stats["invoice"]["models"]["gpt-5-mini"]
    assert invoice["flex"]["requests"] == 40 - refused  # a 429 is not billed
    assert invoice["default"]["requests"] == invoice["priority"]["requests"] == 1
    assert len(stats["invoice"]["tickets"]) == 40 - refused


@pytest.mark.asyncio
async def test_reasoning_models_spend_reasoning_tokens_within_max_tokens(client):
    assert is_reasoning_model("gpt-5-mini") and is_reasoning_model("o4-mini") and not is_reasoning_model("gpt-4o-mini")
    _, plain = await chat(client, "gpt-4o-mini", system_and("Classify.", "the app crashes"), max_tokens=500)
    assert "completion_tokens_details" not in plain["usage"]
    _, reasoned = await chat(client, "o4-mini", system_and("Classify.", "the app crashes"), max_tokens=500)
    reasoning = reasoned["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert reasoning > 0
    visible = reasoned["usage"]["completion_tokens"] - reasoning
    assert visible == plain["usage"]["completion_tokens"]  # the same answer, plus what it thought
    _, cut = await chat(client, "o4-mini", system_and("Classify.", "the app crashes"), max_tokens=reasoning)
    assert cut["usage"]["completion_tokens"] == reasoning and cut["choices"][0]["message"]["content"] == ""
    assert cut["choices"][0]["finish_reason"] == "length"


@pytest.mark.asyncio
async def test_prompt_token_scale_counts_more_than_the_simulators_own_tokenizer():
    messages = system_and("Classify the ticket.", "The export button does nothing at all.")
    async with client_for(prompt_token_scale=1.3) as client:
        _, answer = await chat(client, "gpt-4o-mini", messages, max_tokens=5)
    assert answer["usage"]["prompt_tokens"] == math.ceil(count_prompt_tokens(messages) * 1.3)


@pytest.mark.asyncio
async def test_the_invoice_bills_delivered_answers_per_kind_tier_and_ticket():
    config = {"faults": ("reset:tickets=T2", "500:tickets=T3", "no_usage:tickets=T4")}
    async with client_for(**config) as client:
        for ticket in ("T1", "T2", "T3", "T4"):
            try:
                await chat(client, "o4-mini", system_and(LONG, ticket), ticket=ticket, max_tokens=400)
            except Exception:  # T2: the connection is reset mid-body
                pass
        _, flexed = await chat(client, "o4-mini", system_and(LONG, "T5"), ticket="T5", max_tokens=400,
                               service_tier="flex")
        response = await client.post("/v1/chat/completions", headers={TICKET_HEADER: "T6"}, json={
            "model": "o4-mini", "messages": system_and(LONG, "T6"), "max_tokens": 400, "stream": True,
            "stream_options": {"include_usage": True}, "service_tier": "priority"})
        events = [orjson.loads(line[6:]) for line in (await response.text()).split("\n\n")
                  if line.startswith("data: {")]
        stats = await (await client.get("/sim/stats")).json()
    invoice = stats["invoice"]
    assert set(invoice["tickets"]) == {"T1", "T4", "T5", "T6"}  # reset and 500: not delivered, not billed
    default = invoice["models"]["o4-mini"]["default"]
    assert default["requests"] == 2  # T1, and T4 whose usage was left out on purpose
    flex = invoice["models"]["o4-mini"]["flex"]
    usage = flexed["usage"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0  # T5 repeats the long system prompt
    assert flex == {"requests": 1, "input_tokens": usage["prompt_tokens"] - cached, "cached_tokens": cached,
                    "cache_write_tokens": 0, "output_tokens": usage["completion_tokens"],
                    "reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"]}
    assert invoice["tickets"]["T5"] == {"flex": flex}
    # a stream names its tier in every chunk and is billed once it is delivered whole
    assert {event.get("service_tier") for event in events} == {"priority"}
    streamed = events[-1]["usage"]
    assert invoice["models"]["o4-mini"]["priority"]["output_tokens"] == streamed["completion_tokens"]
