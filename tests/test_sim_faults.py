"""Tests of the simulator's fault injection, rate limits and capacity model.

Layout:

* `FaultRule` / `FaultPlan` without a server: validation, the CLI and
  mapping forms, ``SimConfig.to_cli_args`` round trips, per-ticket schedules
  and rate determinism;
* every fault kind over HTTP in process (aiohttp's test client): statuses,
  headers (the three Retry-After forms), bodies, broken deliveries, stats;
* rpm/tpm limits (429s, x-ratelimit-* headers) and the limiter's buckets
  with an explicit clock; the capacity model through a recording
  ``ChatSimulator.sleep`` (delays observed, never timed);
* litellm round trips: which litellm exception each fault kind becomes
  (plain and streaming), and a child process configured through the CLI.

Nothing here asserts on wall-clock timings; delays are small
(retry_after 0.05 s, trickle 1-5 ms, stalls cut short by 1 s client timeouts).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import time

import aiohttp
import click
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

from batchrun.sim.command import sim_command  # noqa: E402
from batchrun.sim.config import SimConfig  # noqa: E402
from batchrun.sim.faults import FAULT_KINDS, RULE_KEYS, FaultPlan, FaultRule, body_digest  # noqa: E402
from batchrun.sim.limits import RateLimiter, format_duration, overload_delay_ms  # noqa: E402
from batchrun.sim.process import start_simulator  # noqa: E402
from batchrun.sim.server import SIMULATOR_KEY, TICKET_HEADER, build_app  # noqa: E402
from batchrun.sim.tokens import count_prompt_tokens  # noqa: E402

MESSAGES = [{"role": "user", "content": "Explain briefly why the sky looks blue."}]
CLASSIFY = [
    {"role": "system", "content": "Classify the ticket as exactly one of: bug, feature, billing, other."},
    {"role": "user", "content": "The export button crashes every time since the last update."},
]
BODY = {"model": "gpt-4o-mini", "messages": MESSAGES}
STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}


# -- helpers -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sim_client(config: SimConfig):
    """An aiohttp test client of an in-process simulator."""
    client = TestClient(TestServer(build_app(config)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def sim_url(config: SimConfig):
    """The /v1 base URL of an in-process simulator on a real loopback port."""
    server = TestServer(build_app(config))
    await server.start_server()
    try:
        yield str(server.make_url("/v1")), server.app[SIMULATOR_KEY]
    finally:
        await server.close()


def no_latency(**kwargs) -> SimConfig:
    return SimConfig(latency_ms=0, jitter=0, **kwargs)


async def post(client: TestClient, body: dict = BODY, ticket: str | None = None, headers: dict | None = None, **kwargs):
    headers = {**(headers or {}), **({TICKET_HEADER: ticket} if ticket else {})}
    response = await client.post("/v1/chat/completions", data=orjson.dumps(body), headers=headers, **kwargs)
    return response, await response.read()


def sse_events(raw: bytes) -> list:
    events = []
    for block in raw.decode().split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            payload = block[len("data: ") :]
            events.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return events


async def stats_of(client: TestClient) -> dict:
    return await (await client.get("/sim/stats")).json()


# -- rules and plans -----------------------------------------------------------


def test_rule_defaults_and_validation():
    rule = FaultRule("503", tickets=["T000003"])
    assert rule.tickets == ("T000003",)
    assert rule.attempts == (1,)  # default when tickets are given
    assert FaultRule("429", rate=0.5).attempts is None
    assert FaultRule("429", rate=0.5).retry_after_s == 1.0
    assert FaultRule("stall", rate=1).stall_seconds == 3600.0
    assert FaultRule("trickle", rate=1, trickle_ms=20).trickle_seconds == pytest.approx(0.02)

    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultRule("418", rate=1)
    with pytest.raises(ValueError, match="give rate"):
        FaultRule("500")
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultRule("500", rate=1.5)
    with pytest.raises(ValueError, match="attempts are 1-based"):
        FaultRule("500", tickets=("a",), attempts=(0,))
    with pytest.raises(ValueError, match="tickets must be a list"):
        FaultRule("500", tickets="T1")
    with pytest.raises(ValueError, match="retry_after only applies"):
        FaultRule("503", rate=1, retry_after=2)
    with pytest.raises(ValueError, match="stall_s only applies"):
        FaultRule("trickle", rate=1, stall_s=2)


def test_rule_from_mapping_checks_keys():
    rule = FaultRule.from_mapping({"kind": 429, "rate": 0.25, "retry_after": 0.5})
    assert rule == FaultRule("429", rate=0.25, retry_after=0.5)
    assert FaultRule.from_mapping(rule.to_mapping()) == rule
    with pytest.raises(ValueError, match=r"unknown fault rule key\(s\): ratee"):
        FaultRule.from_mapping({"kind": "500", "ratee": 0.1})
    with pytest.raises(ValueError, match="needs a kind"):
        FaultRule.from_mapping({"rate": 0.1})
    with pytest.raises(ValueError, match="must be a table"):
        FaultRule.from_mapping(["500"])
    assert set(RULE_KEYS) == {"kind", "rate", "tickets", "attempts", "retry_after", "stall_s", "trickle_ms",
                              "size_bytes"}


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("429:rate=0.2,retry_after=0.05", FaultRule("429", rate=0.2, retry_after=0.05)),
        ("503:tickets=T000003+T000004,attempts=1+2", FaultRule("503", tickets=("T000003", "T000004"), attempts=(1, 2))),
        ("stall:rate=1,stall_s=2.5", FaultRule("stall", rate=1.0, stall_s=2.5)),
        ("trickle:tickets=a,trickle_ms=5", FaultRule("trickle", tickets=("a",), trickle_ms=5)),
        ("html_error:rate=0.125,attempts=2", FaultRule("html_error", rate=0.125, attempts=(2,))),
    ],
)
def test_rule_cli_spec_round_trip(spec, expected):
    rule = FaultRule.parse(spec)
    assert rule == expected
    assert FaultRule.parse(rule.to_spec()) == rule


def test_rule_spec_refuses_ticket_ids_it_cannot_carry():
    rule = FaultRule("500", tickets=("a,b",))
    with pytest.raises(ValueError, match="cannot be written"):
        rule.to_spec()
    assert FaultRule.parse("500:tickets=ns:T1+T2").tickets == ("ns:T1", "T2")  # ':' is fine after the kind


@pytest.mark.parametrize("spec", ["", "nope:rate=1", "500:rate", "500:speed=1", "500:rate=x", "500:rate=0.1,rate=0.2", "500:kind=429"])
def test_rule_cli_spec_errors(spec):
    with pytest.raises(ValueError):
        FaultRule.parse(spec)


def test_sim_config_round_trips_faults_limits_and_capacity_through_cli():
    config = SimConfig(
        latency_ms=5,
        seed=4,
        faults=(
            FaultRule("429", rate=0.2, retry_after=0.05),
            FaultRule("503", tickets=("T000003", "T000004"), attempts=(1, 2)),
            {"kind": "trickle", "rate": 0.01, "trickle_ms": 3},
        ),
        rpm=600,
        tpm=90000,
        capacity=32,
        overload_ms=7.5,
    )
    assert isinstance(config.faults[2], FaultRule)
    args = config.to_cli_args()
    assert args.count("--fault") == 3
    assert "503:tickets=T000003+T000004,attempts=1+2" in args
    rebuilt = SimConfig.from_cli_params(sim_command.make_context("sim", args).params)
    assert rebuilt == config
    defaults = SimConfig.from_cli_params(sim_command.make_context("sim", []).params)
    assert defaults == SimConfig()
    assert SimConfig.from_cli_params(sim_command.make_context("sim", SimConfig().to_cli_args()).params) == SimConfig()


def test_cli_rejects_bad_fault_spec_and_limits():
    with pytest.raises(click.BadParameter, match="unknown fault kind"):
        sim_command.make_context("sim", ["--fault", "boom:rate=1"])
    with pytest.raises(click.BadParameter):
        sim_command.make_context("sim", ["--rpm", "0"])
    with pytest.raises(ValueError):
        SimConfig(tpm=0)
    with pytest.raises(ValueError):
        SimConfig(overload_ms=-1)


def test_per_ticket_schedule_fails_listed_attempts_only():
    plan = FaultPlan([FaultRule("500", tickets=("T000003",), attempts=(1, 2))], seed=0)
    assert [plan.rule_for("T000003", n) is not None for n in (1, 2, 3, 4)] == [True, True, False, False]
    assert plan.rule_for("T000004", 1) is None
    assert plan.rule_for(None, 0, body_digest(b"{}")) is None
    assert plan.uses_body is False


def test_first_matching_rule_wins():
    plan = FaultPlan([FaultRule("401", tickets=("a",)), FaultRule("503", rate=1)], seed=0)
    assert plan.rule_for("a", 1).kind == "401"
    assert plan.rule_for("a", 2).kind == "503"
    assert plan.rule_for(None, 0, body_digest(b"x")).kind == "503"


def test_rate_rules_are_deterministic_and_near_the_rate():
    tickets = [f"T{i:06d}" for i in range(500)]

    def failing(seed: int, attempt: int = 1) -> set[str]:
        plan = FaultPlan([FaultRule("429", rate=0.2)], seed=seed)
        return {t for t in tickets if plan.rule_for(t, attempt) is not None}

    first = failing(7)
    assert failing(7) == first  # same seed, same failing tickets
    assert 60 <= len(first) <= 140
    assert failing(8) != first  # another seed, another set
    assert failing(7, attempt=2) != first  # each attempt is its own draw
    none = FaultPlan([FaultRule("429", rate=0.0)], seed=1)
    every = FaultPlan([FaultRule("429", rate=1.0)], seed=1)
    assert all(none.rule_for(t, 1) is None for t in tickets[:50])
    assert all(every.rule_for(t, 1) is not None for t in tickets[:50])


def test_rate_rules_key_ticketless_requests_by_body():
    plan = FaultPlan([FaultRule("500", rate=0.5)], seed=3)
    assert plan.uses_body
    outcomes = [plan.rule_for(None, 0, body_digest(b"body %d" % i)) is not None for i in range(200)]
    assert outcomes == [plan.rule_for(None, 0, body_digest(b"body %d" % i)) is not None for i in range(200)]
    assert 60 <= sum(outcomes) <= 140


def test_rate_rule_with_attempts_only_hits_those_attempts():
    plan = FaultPlan([FaultRule("503", rate=1.0, attempts=(2,))], seed=0)
    assert plan.rule_for("a", 1) is None
    assert plan.rule_for("a", 2).kind == "503"
    assert plan.rule_for("a", 3) is None


# -- error faults over HTTP ------------------------------------------------------


async def test_429_retry_after_forms():
    faults = (
        FaultRule("429", tickets=("secs",), retry_after=0.05),
        FaultRule("429_date", tickets=("date",), retry_after=30),
        FaultRule("429_ms", tickets=("ms",), retry_after=0.05),
        FaultRule("429_bare", tickets=("bare",)),
        FaultRule("429", tickets=("default",)),
    )
    async with sim_client(no_latency(faults=faults)) as client:
        bodies = {}
        for ticket in ("secs", "date", "ms", "bare", "default"):
            response, raw = await post(client, ticket=ticket)
            assert response.status == 429
            assert response.content_type == "application/json"
            error = orjson.loads(raw)["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "rate_limit_exceeded"
            assert error["code"] == "rate_limit_exceeded"
            bodies[ticket] = response.headers

        assert bodies["secs"]["retry-after"] == "0.05"
        assert "retry-after-ms" not in bodies["secs"]
        assert bodies["default"]["retry-after"] == "1"
        assert bodies["ms"]["retry-after-ms"] == "50"
        assert "retry-after" not in bodies["ms"]
        assert "retry-after" not in bodies["bare"] and "retry-after-ms" not in bodies["bare"]
        when = email.utils.parsedate_to_datetime(bodies["date"]["retry-after"])
        assert bodies["date"]["retry-after"].endswith("GMT")
        assert 0 < when.timestamp() - time.time() <= 32

        stats = await stats_of(client)
        assert stats["faults_by_kind"] == {"429": 2, "429_date": 1, "429_ms": 1, "429_bare": 1}
        assert stats["responses_by_status"] == {"429": 5}
        assert stats["rate_limited"] == 0  # injected, not from the limiter


async def test_server_error_faults_and_html_error():
    faults = tuple(FaultRule(kind, tickets=(kind,)) for kind in ("500", "502", "503", "html_error"))
    async with sim_client(no_latency(faults=faults)) as client:
        for kind, status in (("500", 500), ("502", 502), ("503", 503)):
            response, raw = await post(client, ticket=kind)
            assert response.status == status
            error = orjson.loads(raw)["error"]
            assert error["type"] == "server_error" and error["message"]
        response, raw = await post(client, ticket="html_error")
        assert response.status == 502
        assert response.content_type == "text/html"
        assert raw.lstrip().startswith(b"<html>") and b"502 Bad Gateway" in raw


async def test_client_error_faults():
    secret = "sk-sim-very-secret-key-123"
    faults = tuple(FaultRule(kind, tickets=(kind,)) for kind in ("context_length", "content_policy", "401", "404_model"))
    async with sim_client(no_latency(faults=faults)) as client:
        response, raw = await post(client, ticket="context_length")
        assert response.status == 400
        error = orjson.loads(raw)["error"]
        assert error["code"] == "context_length_exceeded"
        assert error["message"].startswith("This model's maximum context length is ")

        response, raw = await post(client, ticket="content_policy")
        assert response.status == 400
        error = orjson.loads(raw)["error"]
        assert error["code"] == "content_policy_violation"
        assert "safety system" in error["message"]

        response, raw = await post(client, ticket="401", headers={"Authorization": f"Bearer {secret}"})
        assert response.status == 401
        assert orjson.loads(raw)["error"]["code"] == "invalid_api_key"
        assert secret not in raw.decode() and "sk-sim" not in raw.decode() and "Bearer" not in raw.decode()
        assert all(secret not in value for value in response.headers.values())

        response, raw = await post(client, {**BODY, "model": "gpt-nope"}, ticket="404_model")
        assert response.status == 404
        error = orjson.loads(raw)["error"]
        assert error["code"] == "model_not_found"
        assert "gpt-nope" in error["message"]


async def test_per_ticket_schedule_over_http_fails_twice_then_succeeds():
    config = no_latency(faults=(FaultRule("503", tickets=("T000003",), attempts=(1, 2)),))
    async with sim_client(config) as client:
        statuses = [(await post(client, ticket="T000003"))[0].status for _ in range(3)]
        assert statuses == [503, 503, 200]
        assert (await post(client, ticket="T000004"))[0].status == 200
        stats = await stats_of(client)
        assert stats["attempts_by_ticket"] == {"T000003": 3, "T000004": 1}
        assert stats["requests_by_ticket"] == stats["attempts_by_ticket"]
        assert stats["faults_by_kind"] == {"503": 2}
        assert stats["responses_by_status"] == {"503": 2, "200": 2}

        # A reset restarts attempt numbers: the schedule applies again.
        await client.post("/sim/reset")
        assert (await post(client, ticket="T000003"))[0].status == 503


async def test_rate_fault_over_http_is_reproducible():
    config = no_latency(seed=11, faults=(FaultRule("500", rate=0.3),))
    runs = []
    for _ in range(2):
        async with sim_client(config) as client:
            runs.append([(await post(client, ticket=f"T{i:03d}"))[0].status for i in range(40)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500}


# -- delivery faults over HTTP ---------------------------------------------------


async def test_malformed_json_no_usage_and_drop_usage_non_streaming():
    faults = tuple(FaultRule(kind, tickets=(kind,)) for kind in ("malformed_json", "no_usage", "drop_usage"))
    async with sim_client(no_latency(faults=faults)) as client:
        response, raw = await post(client, ticket="malformed_json")
        assert response.status == 200
        assert response.content_type == "application/json"
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
        for kind in ("no_usage", "drop_usage"):
            response, raw = await post(client, ticket=kind)
            assert response.status == 200
            body = orjson.loads(raw)
            assert "usage" not in body
            assert body["choices"][0]["message"]["content"]
        assert (await stats_of(client))["faults_by_kind"] == {"malformed_json": 1, "no_usage": 1, "drop_usage": 1}


async def test_streaming_usage_faults_drop_the_usage_chunk():
    faults = (FaultRule("drop_usage", tickets=("d",)), FaultRule("no_usage", tickets=("n",)))
    async with sim_client(no_latency(faults=faults)) as client:
        _, normal = await post(client, STREAM_BODY, ticket="ok")
        assert any("usage" in e for e in sse_events(normal) if e != "[DONE]")
        for ticket in ("d", "n"):
            response, raw = await post(client, STREAM_BODY, ticket=ticket)
            events = sse_events(raw)
            assert events[-1] == "[DONE]"
            chunks = events[:-1]
            assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)
            assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_cut_ends_without_finish_reason_or_done():
    async with sim_client(no_latency(faults=(FaultRule("stream_cut", tickets=("cut",)),))) as client:
        _, full = await post(client, STREAM_BODY, ticket="whole")
        full_chunks = [e for e in sse_events(full) if e != "[DONE]"]
        response, raw = await post(client, STREAM_BODY, ticket="cut")
        assert response.status == 200
        events = sse_events(raw)  # a clean end of the HTTP body, cut short
        assert "[DONE]" not in events
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        assert len(events) >= 2
        assert all(event["choices"] and event["choices"][0]["finish_reason"] is None for event in events)
        assert all("usage" not in event for event in events)
        cut_text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
        full_text = "".join(e["choices"][0]["delta"].get("content", "") for e in full_chunks if e["choices"])
        assert full_text.startswith(cut_text) and len(cut_text) < len(full_text)


async def test_malformed_json_in_a_stream():
    async with sim_client(no_latency(faults=(FaultRule("malformed_json", tickets=("m",)),))) as client:
        response, raw = await post(client, STREAM_BODY, ticket="m")
        assert response.status == 200
        blocks = [b for b in raw.decode().split("\n\n") if b]
        assert blocks[-1] == "data: [DONE]"
        broken = 0
        for block in blocks[:-1]:
            try:
                orjson.loads(block[len("data: ") :])
            except orjson.JSONDecodeError:
                broken += 1
        assert broken == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_reset_raises_a_client_connection_error(stream):
    kind_body = STREAM_BODY if stream else BODY
    async with sim_client(no_latency(faults=(FaultRule("reset", rate=1), ))) as client:
        with pytest.raises(aiohttp.ClientError):
            await post(client, kind_body, ticket="r")
        await asyncio.sleep(0)
        stats = await stats_of(client)
        assert stats["faults_by_kind"] == {"reset": 1}


async def test_stream_cut_of_a_non_streaming_request_behaves_like_reset():
    async with sim_client(no_latency(faults=(FaultRule("stream_cut", rate=1),))) as client:
        with pytest.raises(aiohttp.ClientError):
            await post(client, BODY, ticket="x")


@pytest.mark.parametrize("stream", [False, True])
async def test_trickle_delivers_the_whole_answer_in_pieces(stream):
    body = STREAM_BODY if stream else BODY
    async with sim_client(no_latency(faults=(FaultRule("trickle", tickets=("slow",), trickle_ms=1),))) as client:
        pauses = []
        simulator = client.server.app[SIMULATOR_KEY]
        real_sleep = simulator.sleep

        async def recording_sleep(seconds):
            pauses.append(seconds)
            await real_sleep(0)

        simulator.sleep = recording_sleep
        _, normal = await post(client, body, ticket="fast")
        assert pauses == []
        response, raw = await post(client, body, ticket="slow")
        assert response.status == 200
        if stream:
            assert [e for e in sse_events(raw) if e != "[DONE]"][-1]["usage"]
            strip = lambda data: [{k: v for k, v in e.items() if k not in ("id", "created")} for e in sse_events(data) if e != "[DONE]"]  # noqa: E731
            assert strip(raw) == strip(normal)
        else:
            a, b = orjson.loads(raw), orjson.loads(normal)
            assert a["choices"] == b["choices"] and a["usage"] == b["usage"]
        assert len(pauses) >= len(raw) // 8 - 1
        assert set(pauses) == {0.001}


async def test_stall_holds_the_request_until_the_client_gives_up():
    async with sim_client(no_latency(faults=(FaultRule("stall", tickets=("s",), stall_s=30),))) as client:
        with pytest.raises(asyncio.TimeoutError):
            await post(client, ticket="s", timeout=aiohttp.ClientTimeout(total=0.3))
        for _ in range(100):  # the server notices the disconnect and cancels the handler
            stats = await stats_of(client)
            if stats["in_flight"] == 0:
                break
            await asyncio.sleep(0.02)
        assert stats["in_flight"] == 0
        assert stats["responses_by_status"] == {"499": 1}
        assert stats["faults_by_kind"] == {"stall": 1}


async def test_short_stall_then_answers_normally():
    async with sim_client(no_latency(faults=(FaultRule("stall", tickets=("s",), stall_s=0.01),))) as client:
        response, raw = await post(client, ticket="s")
        assert response.status == 200
        assert orjson.loads(raw)["usage"]["completion_tokens"] > 0


# -- rate limits -------------------------------------------------------------------


async def test_rpm_limit_gives_429_with_retry_after_and_ratelimit_headers():
    async with sim_client(no_latency(rpm=3)) as client:
        remaining = []
        for _ in range(3):
            response, _ = await post(client)
            assert response.status == 200
            assert response.headers["x-ratelimit-limit-requests"] == "3"
            assert response.headers["x-ratelimit-reset-requests"].endswith("s")
            assert "x-ratelimit-limit-tokens" not in response.headers
            remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
        assert remaining == [2, 1, 0]

        response, raw = await post(client)
        assert response.status == 429
        assert int(response.headers["retry-after"]) > 0
        assert 0 < int(response.headers["retry-after-ms"]) <= 20000
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        error = orjson.loads(raw)["error"]
        assert error["code"] == "rate_limit_exceeded"
        assert error["type"] == "requests"
        assert "Rate limit reached" in error["message"] and "RPM" in error["message"]

        stats = await stats_of(client)
        assert stats["rate_limited"] == 1
        assert stats["responses_by_status"] == {"200": 3, "429": 1}

        # /sim/reset refills the buckets.
        await client.post("/sim/reset")
        assert (await post(client))[0].status == 200


async def test_streaming_responses_carry_ratelimit_headers_too():
    async with sim_client(no_latency(rpm=100, tpm=100000)) as client:
        response, raw = await post(client, STREAM_BODY)
        assert response.status == 200
        assert sse_events(raw)[-1] == "[DONE]"
        for kind in ("requests", "tokens"):
            for header in ("limit", "remaining", "reset"):
                assert f"x-ratelimit-{header}-{kind}" in response.headers


async def test_tpm_limit_counts_prompt_plus_max_tokens():
    prompt = count_prompt_tokens(MESSAGES)
    async with sim_client(no_latency(tpm=3 * (prompt + 10))) as client:
        response, _ = await post(client, {**BODY, "max_tokens": 10})
        assert response.status == 200
        assert response.headers["x-ratelimit-limit-tokens"] == str(3 * (prompt + 10))
        assert response.headers["x-ratelimit-remaining-tokens"] == str(2 * (prompt + 10))
        assert (await post(client, {**BODY, "max_tokens": 10}))[0].status == 200
        assert (await post(client, {**BODY, "max_tokens": 10}))[0].status == 200
        response, raw = await post(client, {**BODY, "max_tokens": 10})
        assert response.status == 429
        assert orjson.loads(raw)["error"]["type"] == "tokens"
        assert float(response.headers["retry-after-ms"]) > 0

        # More than the whole limit can never pass: "Request too large", no retry headers.
        response, raw = await post(client, {**BODY, "max_tokens": 100000})
        assert response.status == 429
        assert "Request too large" in orjson.loads(raw)["error"]["message"]
        assert "retry-after" not in response.headers and "retry-after-ms" not in response.headers
        assert (await stats_of(client))["rate_limited"] == 2


async def test_error_faults_bypass_the_limiter_and_delivery_faults_count_against_it():
    config = no_latency(rpm=2, faults=(FaultRule("500", tickets=("e",)), FaultRule("no_usage", tickets=("d",), attempts=(1, 2))))
    async with sim_client(config) as client:
        assert (await post(client, ticket="e"))[0].status == 500
        response, raw = await post(client, ticket="d")
        assert response.status == 200 and "usage" not in orjson.loads(raw)
        assert response.headers["x-ratelimit-remaining-requests"] == "1"
        assert (await post(client))[0].status == 200
        assert (await post(client, ticket="d"))[0].status == 429  # refused: the fault was not applied again
        assert (await stats_of(client))["faults_by_kind"] == {"500": 1, "no_usage": 1}


def test_token_buckets_refill_continuously():
    limiter = RateLimiter(rpm=60, tpm=600, now=0.0)
    for _ in range(60):
        assert limiter.admit(1, now=0.0).admitted
    verdict = limiter.admit(1, now=0.0)
    assert not verdict.admitted
    assert verdict.limit == "requests"
    assert verdict.wait_s == pytest.approx(1.0)  # rpm 60: one request per second
    assert verdict.retry_headers() == {"retry-after": "1", "retry-after-ms": "1000"}
    assert verdict.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert not limiter.admit(1, now=0.5).admitted
    half = limiter.admit(1, now=0.5)
    assert half.wait_s == pytest.approx(0.5)
    assert half.retry_headers() == {"retry-after": "1", "retry-after-ms": "500"}
    assert limiter.admit(1, now=1.0).admitted

    tokens = RateLimiter(rpm=None, tpm=600, now=0.0)
    assert tokens.admit(590, now=0.0).admitted
    verdict = tokens.admit(20, now=0.0)
    assert (verdict.limit, verdict.requested, verdict.limit_value) == ("tokens", 20, 600)
    assert verdict.wait_s == pytest.approx(1.0)  # 10 tokens missing at 10 tokens/s
    assert set(verdict.headers) == {"x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"}
    assert tokens.admit(20, now=1.0).admitted
    assert tokens.admit(601, now=1000.0).too_large


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (0.12, "120ms"), (0.0004, "1ms"), (0.9999, "1s"), (1, "1s"), (1.5, "1.5s"), (59.25, "59.25s"), (60, "1m0s"), (90.5, "1m30.5s"), (360, "6m0s")],
)
def test_reset_durations_look_like_openai(seconds, text):
    assert format_duration(seconds) == text


# -- capacity ----------------------------------------------------------------------


def test_overload_formula():
    assert overload_delay_ms(10, None, 20.0) == 0.0
    assert overload_delay_ms(4, 4, 20.0) == 0.0
    assert overload_delay_ms(5, 4, 20.0) == 20.0
    assert overload_delay_ms(14, 4, 20.0) == 200.0
    assert overload_delay_ms(14, 4, 0.0) == 0.0


async def test_capacity_adds_overload_latency_per_request_in_flight():
    # capacity 2, 10 ms per extra request: arrivals 1..4 get +0, +0, +10, +20 ms.
    config = SimConfig(latency_ms=100, jitter=0, capacity=2, overload_ms=10)
    async with sim_client(config) as client:
        simulator = client.server.app[SIMULATOR_KEY]
        delays: list[float] = []
        all_in = asyncio.Event()

        async def held_sleep(seconds):
            delays.append(seconds)
            if len(delays) == 4:
                all_in.set()
            await all_in.wait()

        simulator.sleep = held_sleep
        results = await asyncio.gather(*(post(client, ticket=f"c{i}") for i in range(4)))
        assert [response.status for response, _ in results] == [200] * 4
        assert sorted(delays) == pytest.approx([0.1, 0.1, 0.11, 0.12])
        assert (await stats_of(client))["peak_in_flight"] == 4


# -- litellm ---------------------------------------------------------------------------

# What litellm (1.106, openai provider) raises for each fault kind, with
# num_retries=0 and max_retries=0 (timeout=1 for the stall, 10 otherwise):
# (class name, status_code), or None when the call succeeds.
LITELLM_PLAIN = {
    "429": ("RateLimitError", 429),
    "429_date": ("RateLimitError", 429),
    "429_ms": ("RateLimitError", 429),
    "429_bare": ("RateLimitError", 429),
    "500": ("InternalServerError", 500),
    "502": ("BadGatewayError", 502),
    "503": ("ServiceUnavailableError", 503),
    "html_error": ("BadGatewayError", 502),
    "context_length": ("ContextWindowExceededError", 400),
    "content_policy": ("ContentPolicyViolationError", 400),
    "401": ("AuthenticationError", 401),
    "401_no_key": ("BadRequestError", 401),  # its body says invalid_request_error (batchrun: auth)
    "404_model": ("NotFoundError", 404),
    "400_invalid_model": ("BadRequestError", 400),
    "stall": ("Timeout", 408),
    "trickle": None,  # each read arrives within the timeout: the call succeeds
    "reset": ("InternalServerError", 500),  # "Connection error."
    "stream_cut": ("InternalServerError", 500),  # non-streaming: like reset
    "malformed_json": ("InternalServerError", 500),  # the JSON decode error
    "no_usage": None,  # succeeds; litellm reports usage as zeros
    "drop_usage": None,
    "usage_null": None,  # the same
    "no_choices": None,  # succeeds with no choice at all (batchrun: invalid_response)
    "bad_usage": None,  # negative token counts are believed (and priced) by litellm
    "huge_usage": None,  # so are 10^12 tokens
    "fraction_usage": ("InternalServerError", 500),  # "Invalid response object" and a traceback
    "string_usage": ("InternalServerError", 500),
    "array_body": ("InternalServerError", 500),
    "hostile_text": None,  # text is text
    "huge_answer": None,
    "reset_before_headers": ("InternalServerError", 500),  # "Connection error."
    "ok": None,
}
# Streaming differs for the broken deliveries: errors surface while iterating,
# as MidStreamFallbackError (a ServiceUnavailableError subclass, status 500);
# a cut stream and a missing usage chunk pass silently (litellm adds a "stop"
# finish_reason and estimates usage itself).
LITELLM_STREAM = {
    **LITELLM_PLAIN,
    "reset": ("MidStreamFallbackError", 500),
    "malformed_json": ("MidStreamFallbackError", 500),
    "stream_cut": None,
    **dict.fromkeys(("fraction_usage", "string_usage", "array_body"), None),  # streams are sent normally
}


def _fault_rules_for_litellm() -> tuple[FaultRule, ...]:
    options = {"429": {"retry_after": 0.05}, "429_date": {"retry_after": 1}, "429_ms": {"retry_after": 0.05}, "stall": {"stall_s": 10}, "trickle": {"trickle_ms": 1}}
    return tuple(FaultRule(kind, tickets=(kind, kind + "-stream"), **options.get(kind, {})) for kind in FAULT_KINDS)


async def _litellm_outcome(base_url: str, kind: str, stream: bool):
    import litellm

    kwargs = dict(
        model="openai/gpt-4o-mini",
        api_base=base_url,
        api_key="sim-key",
        messages=CLASSIFY,  # a one-word answer keeps trickles short
        num_retries=0,
        max_retries=0,
        timeout=1 if kind == "stall" else 10,
        extra_headers={TICKET_HEADER: kind + ("-stream" if stream else "")},
    )
    try:
        if stream:
            response = await litellm.acompletion(stream=True, stream_options={"include_usage": True}, **kwargs)
            chunks = [chunk async for chunk in response]
            return None, chunks
        return None, await litellm.acompletion(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the exception is the result
        return exc, None


# litellm's own HTTP handler (batchrun's path for plain openai/ calls, provider.py) differs from the
# OpenAI SDK path: a 200 whose body is not JSON is an APIError carrying status 200, and a stream
# chunk that is not JSON is dropped without a word (so batchrun streams through the SDK).
# A reset before the headers is sent again by litellm's handler on a fresh connection, so the call
# "succeeds" after two requests: the hidden retry that batchrun switches off for its own calls
# (provider.py; tests/test_wire_attempts.py).
LITELLM_PLAIN_HTTP_HANDLER = {**LITELLM_PLAIN, "malformed_json": ("APIError", 200), "reset_before_headers": None,
                              **dict.fromkeys(("fraction_usage", "string_usage", "array_body"),
                                              ("APIConnectionError", 500))}
LITELLM_STREAM_HTTP_HANDLER = {**LITELLM_STREAM, "malformed_json": None, "reset_before_headers": None}
# litellm 1.110 (the newest release in batchrun's range): a stream that ends without a finish_reason
# raises MidStreamFallbackError (1.106 ended it with a synthetic "stop": batchrun calls both stream_cut),
# and its handler no longer sends a request again after a reset before the headers (only after a
# refused connection), so that reset is an InternalServerError like on the SDK path.
LITELLM_110 = {"stream": {"stream_cut": ("MidStreamFallbackError", 500)},
               "both": {"401_no_key": ("AuthenticationError", 401)},
               "plain-litellm-http": {"reset_before_headers": ("InternalServerError", 500)},
               "stream-litellm-http": {"reset_before_headers": ("InternalServerError", 500)}}


#: with the OpenAI SDK 3, litellm no longer names a content-policy refusal (batchrun still does: its
#: code says content_policy_violation; tests/test_provider_unit.py)
OPENAI_SDK_3 = {"content_policy": ("BadRequestError", 400)}


def _openai_sdk_3() -> bool:
    from importlib.metadata import version

    return int(version("openai").split(".")[0]) >= 3


def _litellm_110() -> bool:
    from packaging.version import Version

    from batchrun.providers.litellm_setup import litellm_version

    return Version(litellm_version()) >= Version("1.110")


@pytest.mark.parametrize("transport", ["openai-sdk", "litellm-http"])
async def test_litellm_exception_for_every_fault_kind(transport, monkeypatch):
    import litellm
    from litellm.exceptions import MidStreamFallbackError

    from batchrun.providers.tuning import OPENAI_HTTP_HANDLER_ENV
    from batchrun.providers.litellm_setup import import_litellm
    from batchrun.providers.error_mapping import translate_error

    import_litellm()
    monkeypatch.setenv(OPENAI_HTTP_HANDLER_ENV, "true" if transport == "litellm-http" else "false")
    plain_table = LITELLM_PLAIN_HTTP_HANDLER if transport == "litellm-http" else LITELLM_PLAIN
    stream_table = LITELLM_STREAM_HTTP_HANDLER if transport == "litellm-http" else LITELLM_STREAM
    newer = _litellm_110()
    if newer:
        stream_table = {**stream_table, **LITELLM_110["stream"]}
        # 1.110 calls a 401 whose body says invalid_request_error an AuthenticationError (1.106: BadRequestError);
        # batchrun's kind is auth either way
        plain_table = {**plain_table, **LITELLM_110["both"]}
        stream_table = {**stream_table, **LITELLM_110["both"]}
        if transport == "litellm-http":
            plain_table = {**plain_table, **LITELLM_110["plain-litellm-http"]}
            stream_table = {**stream_table, **LITELLM_110["stream-litellm-http"]}
    if _openai_sdk_3() and transport == "openai-sdk":  # litellm 1.110 with the OpenAI SDK 3 (a fresh install)
        plain_table = {**plain_table, **OPENAI_SDK_3}
        stream_table = {**stream_table, **OPENAI_SDK_3}
    assert set(LITELLM_PLAIN) == set(FAULT_KINDS)
    async with sim_url(no_latency(faults=_fault_rules_for_litellm())) as (base_url, simulator):
        kinds = list(FAULT_KINDS)
        plain = [await _litellm_outcome(base_url, kind, False) for kind in kinds]
        streamed = [await _litellm_outcome(base_url, kind, True) for kind in kinds]
        stats = simulator.stats.snapshot()

    observed = {}
    for mode, table, outcomes in (("plain", plain_table, plain), ("stream", stream_table, streamed)):
        for kind, (exc, result) in zip(kinds, outcomes):
            got = None if exc is None else (type(exc).__name__, getattr(exc, "status_code", None))
            observed[(mode, kind)] = got
            assert got == table[kind], (mode, kind, exc)
    served = stats["faults_by_kind"]
    if transport == "litellm-http" and not newer:  # each hidden retry met no fault: two served, four requests
        assert served.pop("reset_before_headers") == 2
        assert stats["requests_by_ticket"]["reset_before_headers"] == 2
        assert stats["requests_by_ticket"]["reset_before_headers-stream"] == 2
    assert all(count == 2 for count in served.values()), served

    # The families batchrun's provider relies on.
    exc = plain[kinds.index("429")][0]
    assert isinstance(exc, litellm.RateLimitError)
    assert exc.litellm_response_headers["retry-after"] == "0.05"  # where batchrun's provider reads them
    assert isinstance(plain[kinds.index("context_length")][0], litellm.ContextWindowExceededError)
    assert isinstance(plain[kinds.index("401")][0], litellm.AuthenticationError)
    assert isinstance(plain[kinds.index("404_model")][0], litellm.NotFoundError)
    assert isinstance(plain[kinds.index("503")][0], litellm.ServiceUnavailableError)
    assert isinstance(plain[kinds.index("stall")][0], litellm.Timeout)
    assert isinstance(streamed[kinds.index("reset")][0], (MidStreamFallbackError, litellm.ServiceUnavailableError))
    assert "sim-key" not in str(plain[kinds.index("401")][0])
    # Whichever class litellm and the SDK pick, batchrun names a refusal by its code.
    assert translate_error(plain[kinds.index("content_policy")][0]).kind == "content_policy"
    assert translate_error(plain[kinds.index("context_length")][0]).kind == "context_window"
    # Either way batchrun retries the broken body (a server fault), never keeps it.
    malformed = translate_error(plain[kinds.index("malformed_json")][0])
    assert malformed.retryable and malformed.kind == "server_error", malformed

    # Silent ones: what the caller sees instead of an error.
    no_usage = plain[kinds.index("no_usage")][1]
    assert no_usage.usage.total_tokens == 0
    trickled = plain[kinds.index("trickle")][1]
    assert trickled.choices[0].message.content == "bug"
    assert trickled.usage.completion_tokens > 0
    cut_chunks = streamed[kinds.index("stream_cut")][1]
    if newer:  # 1.110 raises (see LITELLM_110): batchrun's provider calls it stream_cut (test_streaming.py)
        assert "Stream ended before a finish_reason" in str(streamed[kinds.index("stream_cut")][0])
    else:  # 1.106 ends the stream with a synthetic "stop"
        assert [c.choices[0].finish_reason for c in cut_chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


async def test_litellm_sees_the_rpm_limit_as_rate_limit_error_with_retry_after():
    import litellm

    async with sim_url(no_latency(rpm=1)) as (base_url, _):
        kwargs = dict(model="openai/gpt-4o-mini", api_base=base_url, api_key="sim-key", messages=MESSAGES, num_retries=0, max_retries=0, timeout=5)
        await litellm.acompletion(**kwargs)
        with pytest.raises(litellm.RateLimitError) as info:
            await litellm.acompletion(**kwargs)
    headers = info.value.litellm_response_headers
    assert int(headers["retry-after"]) > 0
    assert int(headers["retry-after-ms"]) > 0
    assert headers["x-ratelimit-limit-requests"] == "1"


def test_child_process_takes_faults_and_limits_from_cli_flags():
    import urllib.request

    config = SimConfig(latency_ms=0, jitter=0, faults=(FaultRule("503", tickets=("T1",), attempts=(1,)),), rpm=100)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with start_simulator(config) as sim:
        statuses = []
        for _ in range(2):
            request = urllib.request.Request(
                sim.base_url + "/chat/completions",
                data=orjson.dumps(BODY),
                headers={"Content-Type": "application/json", TICKET_HEADER: "T1"},
            )
            try:
                with opener.open(request, timeout=10) as response:
                    statuses.append(response.status)
                    assert response.headers["x-ratelimit-limit-requests"] == "100"
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
        assert statuses == [503, 200]
        stats = sim.stats()
        assert stats["faults_by_kind"] == {"503": 1}
        assert stats["attempts_by_ticket"] == {"T1": 2}
