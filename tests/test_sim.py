"""Tests of the embedded OpenAI-compatible simulator (`batchrun.sim`).

Layout:

* token splitting and config/CLI round trip (no server);
* the HTTP API in-process, through aiohttp's test client: response shapes,
  usage, ``max_tokens`` truncation, streaming, errors, stats, determinism;
* a real child process through `start_simulator`: litellm round trips
  (plain and streaming), stats through the child, ``--exit-on-stdin-eof``
  and the no-orphan guarantee when the parent is SIGKILLed, startup errors.

In-process tests use the real `batchrun.sim.answers.compose_answer` when it
exists and a small deterministic stand-in otherwise; tests that need answers
from a child process require the real module.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

from batchrun.sim.command import sim_command  # noqa: E402
from batchrun.sim.config import SimConfig  # noqa: E402
from batchrun.sim.process import start_simulator  # noqa: E402
from batchrun.sim.server import SIMULATOR_KEY, TICKET_HEADER, build_app
from batchrun.sim.replies import ParsedChatRequest  # noqa: E402
from batchrun.sim.tokens import count_prompt_tokens, count_tokens, split_tokens  # noqa: E402

HAVE_REAL_ANSWERS = importlib.util.find_spec("batchrun.sim.answers") is not None
requires_real_answers = pytest.mark.skipif(
    not HAVE_REAL_ANSWERS, reason="batchrun/sim/answers.py is not written yet (a child process cannot use a stand-in)"
)

PROSE_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a detailed paragraph about the history of tea trading in Asia."},
]


def stand_in_compose_answer(messages: list[dict], seed: int) -> str:
    """A deterministic answer, used only while the real answers module is missing."""
    last = str(messages[-1].get("content", ""))
    return (
        f"Considering the question ({len(last)} characters, seed {seed}), the short answer is that "
        "it depends on context, history and a good deal of careful reading."
    )


@pytest.fixture
def compose_answer(monkeypatch):
    """The answer function the in-process server will use."""
    if HAVE_REAL_ANSWERS:
        from batchrun.sim.answers import compose_answer as real

        return real
    module = types.ModuleType("batchrun.sim.answers")
    module.compose_answer = stand_in_compose_answer
    monkeypatch.setitem(sys.modules, "batchrun.sim.answers", module)
    return stand_in_compose_answer


async def _client_for(config: SimConfig) -> TestClient:
    client = TestClient(TestServer(build_app(config)))
    await client.start_server()
    return client


@pytest_asyncio.fixture
async def client(compose_answer):
    """An in-process simulator with no latency, seed 3."""
    test_client = await _client_for(SimConfig(latency_ms=0, jitter=0, seed=3))
    try:
        yield test_client
    finally:
        await test_client.close()


async def post_chat(client: TestClient, body: dict, headers: dict | None = None):
    response = await client.post("/v1/chat/completions", data=orjson.dumps(body), headers=headers or {})
    return response.status, await response.read(), response


def parse_sse(raw: bytes) -> list:
    """The events of an SSE body: parsed JSON objects, and the string "[DONE]"."""
    text = raw.decode()
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return events


# -- tokens and config --------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "Hello, world!", "  leading and trailing  \n", "classification_label_42 :: x", "naïve café — 東京 ok", "a\n\nb\tc"],
)
def test_split_tokens_reassembles_text(text):
    tokens = split_tokens(text)
    assert "".join(tokens) == text
    assert count_tokens(text) == len(tokens)
    assert all(tokens)


def test_token_counts_are_roughly_four_to_five_chars_each():
    text = "The quick brown fox jumps over the lazy dog while the farmer watches from a distance. " * 20
    chars_per_token = len(text) / count_tokens(text)
    assert 3.0 <= chars_per_token <= 6.0


def test_prompt_tokens_count_every_message_and_content_parts():
    one = [{"role": "user", "content": "hello there"}]
    two = one + [{"role": "assistant", "content": None}, {"role": "user", "content": [{"type": "text", "text": "more words"}]}]
    assert count_prompt_tokens(two) == count_prompt_tokens(one) + 3 + 3 + count_tokens("more words")


def test_config_round_trips_through_cli_flags():
    config = SimConfig(latency_ms=12.5, per_token_ms=0.25, jitter=0.3, seed=99, model="m-1")
    context = sim_command.make_context("sim", config.to_cli_args())
    params = context.params
    rebuilt = SimConfig(
        latency_ms=params["latency_ms"],
        per_token_ms=params["per_token_ms"],
        jitter=params["jitter"],
        seed=params["seed"],
        model=params["model"],
    )
    assert rebuilt == config
    defaults = sim_command.make_context("sim", []).params
    assert SimConfig(**{k: defaults[k] for k in ("latency_ms", "per_token_ms", "jitter", "seed", "model")}) == SimConfig()


def test_config_rejects_negative_latency():
    with pytest.raises(ValueError):
        SimConfig(latency_ms=-1)


# -- HTTP API in process --------------------------------------------------------


@pytest.mark.asyncio
async def test_non_streaming_response_shape_and_usage(client, compose_answer):
    status, raw, response = await post_chat(client, {"model": "gpt-4o-mini", "messages": PROSE_MESSAGES})
    assert status == 200
    assert response.content_type == "application/json"
    body = orjson.loads(raw)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-4o-mini"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert content == compose_answer(PROSE_MESSAGES, 3)
    usage = body["usage"]
    assert usage["prompt_tokens"] == count_prompt_tokens(PROSE_MESSAGES)
    assert usage["completion_tokens"] == count_tokens(content)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.asyncio
async def test_chat_completions_without_v1_prefix_and_configured_model(compose_answer):
    test_client = await _client_for(SimConfig(latency_ms=0, model="fixed-model"))
    try:
        response = await test_client.post("/chat/completions", json={"model": "asked", "messages": PROSE_MESSAGES})
        assert response.status == 200
        assert (await response.json())["model"] == "fixed-model"
        models = await (await test_client.get("/v1/models")).json()
        assert [entry["id"] for entry in models["data"]] == ["fixed-model"]
    finally:
        await test_client.close()


@pytest.mark.asyncio
async def test_models_endpoint_lists_default_model(client):
    for path in ("/v1/models", "/models"):
        response = await client.get(path)
        assert response.status == 200
        body = await response.json()
        assert body["object"] == "list"
        assert [entry["id"] for entry in body["data"]] == ["sim-model"]


@pytest.mark.asyncio
@pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_truncates_with_finish_reason_length(client, limit_field):
    _, raw, _ = await post_chat(client, {"model": "m", "messages": PROSE_MESSAGES})
    full = orjson.loads(raw)
    full_content = full["choices"][0]["message"]["content"]
    full_tokens = full["usage"]["completion_tokens"]
    assert full_tokens >= 2, "the prose prompt should give an answer of several tokens"

    limit = full_tokens - 1
    status, raw, _ = await post_chat(client, {"model": "m", "messages": PROSE_MESSAGES, limit_field: limit})
    assert status == 200
    body = orjson.loads(raw)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == limit
    assert choice["message"]["content"] == "".join(split_tokens(full_content)[:limit])
    assert full_content.startswith(choice["message"]["content"])

    # A limit at or above the answer length changes nothing.
    _, raw, _ = await post_chat(client, {"model": "m", "messages": PROSE_MESSAGES, limit_field: full_tokens})
    assert orjson.loads(raw)["choices"][0] == full["choices"][0]


@pytest.mark.asyncio
async def test_streaming_chunks_match_non_streaming_answer(client):
    _, raw, _ = await post_chat(client, {"model": "m", "messages": PROSE_MESSAGES})
    plain = orjson.loads(raw)

    status, raw, response = await post_chat(
        client, {"model": "m", "messages": PROSE_MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = parse_sse(raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1

    first, *content_chunks, finish_chunk, usage_chunk = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["finish_reason"] is None
    assert content_chunks, "expected at least one content chunk"
    for chunk in content_chunks:
        [choice] = chunk["choices"]
        assert choice["finish_reason"] is None
        assert set(choice["delta"]) == {"content"}
        assert 1 <= count_tokens(choice["delta"]["content"]) <= 3
    assert finish_chunk["choices"][0]["delta"] == {}
    assert finish_chunk["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == plain["usage"]
    assert all("usage" not in chunk for chunk in chunks[:-1])

    streamed = "".join(chunk["choices"][0]["delta"]["content"] for chunk in content_chunks)
    assert streamed == plain["choices"][0]["message"]["content"]


@pytest.mark.asyncio
async def test_streaming_without_include_usage_has_no_usage_chunk_and_honours_max_tokens(client):
    status, raw, _ = await post_chat(client, {"model": "m", "messages": PROSE_MESSAGES, "stream": True, "max_tokens": 2})
    assert status == 200
    events = parse_sse(raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    streamed = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert count_tokens(streamed) == 2


@pytest.mark.asyncio
async def test_bad_requests_get_openai_shaped_400(client):
    response = await client.post("/v1/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}

    status, raw, _ = await post_chat(client, {"model": "m"})
    assert status == 400
    assert orjson.loads(raw)["error"]["param"] == "messages"

    for bad in ({"model": "m", "messages": []}, {"model": "m", "messages": "hi"}, {"model": "m", "messages": PROSE_MESSAGES, "max_tokens": 0}):
        status, raw, _ = await post_chat(client, bad)
        assert status == 400, bad
        assert orjson.loads(raw)["error"]["type"] == "invalid_request_error"

    response = await client.get("/v1/nothing-here")
    assert response.status == 404
    assert "error" in await response.json()


@pytest.mark.asyncio
async def test_stats_count_requests_per_ticket_and_status(client):
    requests = [("ticket-a", PROSE_MESSAGES), ("ticket-a", PROSE_MESSAGES), ("ticket-b", PROSE_MESSAGES), (None, PROSE_MESSAGES)]
    for ticket, messages in requests:
        headers = {TICKET_HEADER: ticket} if ticket else {}
        status, _, _ = await post_chat(client, {"model": "m", "messages": messages}, headers)
        assert status == 200
    await post_chat(client, {"model": "m"}, {TICKET_HEADER: "ticket-b"})  # a 400
    await client.get("/v1/models")  # not a chat request: not counted

    stats = await (await client.get("/sim/stats")).json()
    assert stats["total_requests"] == 5
    assert stats["requests_by_ticket"] == {"ticket-a": 2, "ticket-b": 2}
    assert stats["attempts_by_ticket"] == stats["requests_by_ticket"]
    assert stats["faults_by_kind"] == {}
    assert stats["rate_limited"] == 0
    assert stats["responses_by_status"] == {"200": 4, "400": 1}
    assert stats["in_flight"] == 0
    assert stats["peak_in_flight"] == 1

    reset = await (await client.post("/sim/reset")).json()
    assert reset == {
        "total_requests": 0,
        "requests_by_ticket": {},
        "attempts_by_ticket": {},
        "in_flight": 0,
        "peak_in_flight": 0,
        "responses_by_status": {},
        "faults_by_kind": {},
        "rate_limited": 0,
        "flex_unavailable": 0,
        "invoice": {"models": {}, "tickets": {}},
    }
    assert await (await client.get("/sim/stats")).json() == reset


@pytest.mark.asyncio
async def test_stats_peak_in_flight_counts_concurrent_requests(compose_answer):
    # Each request waits a second, so the five concurrent ones overlap.
    test_client = await _client_for(SimConfig(latency_ms=1000, jitter=0))
    try:
        results = await asyncio.gather(
            *(post_chat(test_client, {"model": "m", "messages": PROSE_MESSAGES}, {TICKET_HEADER: f"t{i}"}) for i in range(5))
        )
        assert [status for status, _, _ in results] == [200] * 5
        stats = await (await test_client.get("/sim/stats")).json()
        assert stats["peak_in_flight"] == 5
        assert stats["in_flight"] == 0
        assert stats["requests_by_ticket"] == {f"t{i}": 1 for i in range(5)}
    finally:
        await test_client.close()


@pytest.mark.asyncio
async def test_same_seed_gives_same_answers_usage_and_chunking(compose_answer):
    body = {"model": "m", "messages": PROSE_MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    runs = []
    for _ in range(2):
        test_client = await _client_for(SimConfig(latency_ms=0, seed=11))
        try:
            _, plain, _ = await post_chat(test_client, {"model": "m", "messages": PROSE_MESSAGES})
            _, streamed, _ = await post_chat(test_client, body)
        finally:
            await test_client.close()
        plain_body = orjson.loads(plain)
        chunks = [event for event in parse_sse(streamed) if event != "[DONE]"]
        runs.append(
            (
                plain_body["choices"],
                plain_body["usage"],
                [chunk["choices"] for chunk in chunks],
                chunks[-1]["usage"],
            )
        )
    assert runs[0] == runs[1]


def test_latency_jitter_is_deterministic_per_seed_and_ticket():
    def factor(seed: int, ticket: str | None, attempt: int, body: bytes = b"{}") -> float:
        app = build_app(SimConfig(latency_ms=100, jitter=0.5, seed=seed))
        request = ParsedChatRequest(
            messages=[], model="m", max_tokens=None, stream=False, include_usage=False, ticket_id=ticket, attempt=attempt, body=body
        )
        return app[SIMULATOR_KEY]._latency_factor(request)

    assert factor(1, "t", 1) == factor(1, "t", 1)
    assert factor(1, None, 0, b"abc") == factor(1, None, 0, b"abc")
    samples = {factor(1, f"t{i}", 1) for i in range(20)}
    assert len(samples) > 10
    assert all(0.5 <= value <= 1.5 for value in samples)
    assert factor(1, "t", 1) != factor(2, "t", 1)
    assert factor(1, "t", 1) != factor(1, "t", 2)


# -- child process -------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_process():
    with start_simulator(SimConfig(latency_ms=0, jitter=0, seed=5)) as sim:
        yield sim


def _process_is_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def test_start_simulator_reports_base_url_and_serves_stats(sim_process):
    assert sim_process.base_url.startswith("http://127.0.0.1:")
    assert sim_process.base_url.endswith("/v1")
    assert not sim_process.base_url.endswith(":0/v1")
    assert _process_is_running(sim_process.pid)
    stats = sim_process.reset()
    assert stats["total_requests"] == 0
    assert sim_process.stats()["requests_by_ticket"] == {}


@requires_real_answers
@pytest.mark.asyncio
async def test_litellm_round_trip_through_child_process(sim_process):
    import litellm
    from batchrun.sim.answers import compose_answer

    sim_process.reset()
    messages = [{"role": "user", "content": "Explain briefly why the sky looks blue."}]
    expected = compose_answer(messages, 5)

    response = await litellm.acompletion(
        model="openai/gpt-4o-mini",
        api_base=sim_process.base_url,
        api_key="sim-key",
        messages=messages,
        max_retries=0,
        timeout=10,
        extra_headers={TICKET_HEADER: "lt-1"},
    )
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.prompt_tokens == count_prompt_tokens(messages)
    assert response.usage.completion_tokens == count_tokens(expected)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens

    stream = await litellm.acompletion(
        model="openai/gpt-4o-mini",
        api_base=sim_process.base_url,
        api_key="sim-key",
        messages=messages,
        max_retries=0,
        timeout=10,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={TICKET_HEADER: "lt-2"},
    )
    pieces = []
    usage = None
    finish_reasons = []
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            if chunk.choices[0].finish_reason:
                finish_reasons.append(chunk.choices[0].finish_reason)
        if getattr(chunk, "usage", None) is not None:
            usage = chunk.usage
    assert "".join(pieces) == expected
    assert finish_reasons == ["stop"]
    assert usage is not None
    assert usage.prompt_tokens == count_prompt_tokens(messages)
    assert usage.completion_tokens == count_tokens(expected)

    stats = sim_process.stats()
    assert stats["requests_by_ticket"] == {"lt-1": 1, "lt-2": 1}
    assert stats["responses_by_status"] == {"200": 2}


@requires_real_answers
@pytest.mark.asyncio
async def test_litellm_sees_truncation_as_length(sim_process):
    import litellm

    response = await litellm.acompletion(
        model="openai/gpt-4o-mini",
        api_base=sim_process.base_url,
        api_key="sim-key",
        messages=PROSE_MESSAGES,
        max_tokens=1,
        max_retries=0,
        timeout=10,
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 1


def test_child_exits_when_stdin_closes():
    with start_simulator(SimConfig(latency_ms=0)) as sim:
        assert sim.process.poll() is None
        sim.process.stdin.close()
        assert sim.process.wait(timeout=20) == 0


@pytest.mark.slow  # SIGKILLs a process and waits for its child to go
def test_child_does_not_outlive_a_sigkilled_parent(tmp_path):
    parent_script = tmp_path / "parent.py"
    parent_script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from batchrun.sim.config import SimConfig
            from batchrun.sim.process import start_simulator

            with start_simulator(SimConfig(latency_ms=0)) as sim:
                print(sim.pid, flush=True)
                time.sleep(300)
            """
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env.get("PYTHONPATH")]))
    parent = subprocess.Popen([sys.executable, str(parent_script)], stdout=subprocess.PIPE, env=env)
    child_pid = None
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), line
        child_pid = int(line)
        assert _process_is_running(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 20
        while _process_is_running(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _process_is_running(child_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        if child_pid is not None and _process_is_running(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def test_start_simulator_failure_reports_child_stderr():
    # 203.0.113.0/24 is TEST-NET-3: not a local address, so binding fails.
    with pytest.raises(RuntimeError, match="cannot listen on 203.0.113.7"):
        with start_simulator(SimConfig(latency_ms=0), host="203.0.113.7", startup_timeout=30):
            pass


def test_command_module_does_not_import_aiohttp():
    code = "import sys, batchrun.sim.command; print('aiohttp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
