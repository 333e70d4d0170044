"""Tests of the simulator's per-ticket scripts and the faults they need:
``reset_before_headers`` (no status line), ``usage_null`` and ``ok``.

Layout: `TicketScript` and `FaultPlan` without a server (forms, validation,
which step each attempt gets, per-ticket rates); then over HTTP in process
(aiohttp's test client); then the CLI flag, a child process and a job's
``[[simulator.scripts]]`` tables.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import click
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from batchrun.sim.command import sim_command
from batchrun.sim.config import SimConfig
from batchrun.sim.faults import FaultPlan, FaultRule, TicketScript, parse_step
from batchrun.sim.process import start_simulator
from batchrun.sim.server import TICKET_HEADER, build_app

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}


@contextlib.asynccontextmanager
async def sim_client(config: SimConfig):
    client = TestClient(TestServer(build_app(config)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def post(client: TestClient, ticket: str, body: dict = BODY):
    response = await client.post("/v1/chat/completions", data=orjson.dumps(body), headers={TICKET_HEADER: ticket})
    return response.status, await response.read()


async def stats_of(client: TestClient) -> dict:
    return await (await client.get("/sim/stats")).json()


def quiet(**kwargs) -> SimConfig:
    return SimConfig(latency_ms=0, jitter=0, **kwargs)


# -- scripts without a server ---------------------------------------------------


def test_script_forms_round_trip():
    script = TicketScript(steps=("reset_before_headers", "429:retry_after=6", "no_usage", "ok"), tickets=("T000003",))
    assert [step.kind for step in script.steps] == ["reset_before_headers", "429", "no_usage", "ok"]
    assert script.steps[1].retry_after_s == 6.0
    spec = script.to_spec()
    assert spec == "tickets:T000003=reset_before_headers;429:retry_after=6;no_usage;ok"
    assert TicketScript.parse(spec) == script
    assert TicketScript.parse("T000003=reset_before_headers; 429:retry_after=6 ;no_usage;ok") == script
    assert TicketScript.from_mapping(script.to_mapping()) == script
    by_rate = TicketScript.parse("rate:0.1=reset")
    assert by_rate.rate == 0.1 and by_rate.tickets is None and TicketScript.parse(by_rate.to_spec()) == by_rate
    assert TicketScript.parse("T1+T2=ok").tickets == ("T1", "T2")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"tickets": ["T1"], "steps": []}, "non-empty list of steps"),
        ({"tickets": ["T1"]}, "needs steps"),
        ({"steps": ["ok"]}, "give exactly one"),
        ({"steps": ["ok"], "tickets": ["T1"], "rate": 0.5}, "give exactly one"),
        ({"steps": ["boom"], "tickets": ["T1"]}, "unknown fault kind 'boom'"),
        ({"steps": ["503:retry_after=1"], "tickets": ["T1"]}, "only applies to kind"),
        ({"steps": ["429:rate=1"], "tickets": ["T1"]}, "a step takes"),
        ({"steps": ["ok"], "rate": 1.5}, "between 0 and 1"),
        ({"steps": ["ok"], "tickets": ["T1"], "attempts": [1]}, "unknown script key"),
    ],
)
def test_script_validation(value, message):
    with pytest.raises(ValueError, match=message):
        TicketScript.from_mapping(value)


def test_each_attempt_gets_its_step_then_the_rules_apply():
    plan = FaultPlan([FaultRule("503", rate=1)], scripts=[{"tickets": ["T1"], "steps": ["reset_before_headers", "ok"]}])
    assert plan.rule_for("T1", 1).kind == "reset_before_headers"
    assert plan.rule_for("T1", 2).kind == "ok"  # shields the attempt from the 503 rule
    assert plan.rule_for("T1", 3).kind == "503"  # past the script's end: the rules
    assert plan.rule_for("T2", 1).kind == "503"
    assert plan.rule_for(None, 0, b"x").kind == "503"  # no ticket id: no script


def test_a_rate_script_picks_a_stable_fraction_of_tickets():
    plan = FaultPlan([], seed=3, scripts=[TicketScript(steps=("reset_before_headers",), rate=0.1)])
    tickets = [f"T{i:06d}" for i in range(4000)]
    picked = [t for t in tickets if plan.rule_for(t, 1) is not None]
    assert 300 <= len(picked) <= 500
    assert all(plan.rule_for(t, 2) is None for t in tickets)  # a script of one step: the first attempt only
    again = FaultPlan([], seed=3, scripts=[TicketScript(steps=("reset_before_headers",), rate=0.1)])
    assert picked == [t for t in tickets if again.rule_for(t, 1) is not None]
    other_seed = FaultPlan([], seed=4, scripts=[TicketScript(steps=("reset_before_headers",), rate=0.1)])
    assert picked != [t for t in tickets if other_seed.rule_for(t, 1) is not None]


def test_the_first_script_covering_a_ticket_is_its_script():
    plan = FaultPlan([], scripts=[TicketScript(steps=("500",), tickets=("T1",)), TicketScript(steps=("503",), rate=1)])
    assert plan.rule_for("T1", 1).kind == "500" and plan.rule_for("T2", 1).kind == "503"


def test_a_step_carries_only_its_kinds_options():
    assert parse_step("stall:stall_s=2").stall_seconds == 2.0
    assert parse_step(FaultRule("429", tickets=("x",), retry_after=3)).retry_after_s == 3.0


# -- over HTTP -------------------------------------------------------------------------


async def test_a_script_answers_each_attempt_in_turn_and_counts_every_request():
    config = quiet(scripts=({"tickets": ["T1"], "steps": ["reset_before_headers", "429:retry_after=6", "usage_null", "no_usage", "ok"]},))
    async with sim_client(config) as client:
        with pytest.raises(aiohttp.ClientError):  # no status line at all
            await post(client, "T1")
        status, body = await post(client, "T1")
        assert status == 429
        status, body = await post(client, "T1")
        assert status == 200 and "usage" in orjson.loads(body) and orjson.loads(body)["usage"] is None
        status, body = await post(client, "T1")
        assert status == 200 and "usage" not in orjson.loads(body)
        status, body = await post(client, "T1")
        assert status == 200 and orjson.loads(body)["usage"]["prompt_tokens"] > 0
        await asyncio.sleep(0)
        stats = await stats_of(client)
    assert stats["requests_by_ticket"] == {"T1": 5}
    assert stats["responses_by_status"] == {"reset": 1, "429": 1, "200": 3}
    assert stats["faults_by_kind"] == {"reset_before_headers": 1, "429": 1, "usage_null": 1, "no_usage": 1}


@pytest.mark.parametrize("stream", [False, True])
async def test_reset_before_headers_sends_no_status_line(stream):
    async with sim_client(quiet(faults=(FaultRule("reset_before_headers", rate=1),))) as client:
        url = client.make_url("/v1/chat/completions")
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientOSError) as info:  # the reset, not a ServerDisconnected after headers
                await session.post(url, data=orjson.dumps(STREAM_BODY if stream else BODY), headers={TICKET_HEADER: "r"})
        assert "reset" in str(info.value).lower()


async def test_usage_null_in_a_stream_drops_the_usage_chunk():
    async with sim_client(quiet(faults=(FaultRule("usage_null", rate=1),))) as client:
        status, body = await post(client, "s", STREAM_BODY)
    assert status == 200 and b'"usage"' not in body and body.endswith(b"data: [DONE]\n\n")


# -- the CLI, a child process and a job file ------------------------------------------


def test_script_flags_round_trip_through_the_cli():
    config = SimConfig(latency_ms=1, scripts=("T000003=reset_before_headers;429:retry_after=6;ok", "rate:0.05=reset"),
                       faults=({"kind": "usage_null", "rate": 0.1},))
    args = config.to_cli_args()
    assert args.count("--script") == 2
    assert SimConfig.from_cli_params(sim_command.make_context("sim", args).params) == config
    with pytest.raises(click.BadParameter, match="exactly one|WHO=STEP"):
        sim_command.make_context("sim", ["--script", "reset_before_headers"])


def test_a_child_process_follows_a_script_given_by_flags():
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with start_simulator(quiet(scripts=("T1=reset_before_headers;503;ok",))) as sim:
        outcomes = []
        for _ in range(3):
            request = urllib.request.Request(sim.base_url + "/chat/completions", data=orjson.dumps(BODY),
                                             headers={"Content-Type": "application/json", TICKET_HEADER: "T1"})
            try:
                with opener.open(request, timeout=10) as response:
                    outcomes.append(response.status)
            except urllib.error.HTTPError as exc:
                outcomes.append(exc.code)
            except (urllib.error.URLError, ConnectionError) as exc:
                outcomes.append(type(getattr(exc, "reason", exc)).__name__)
        stats = sim.stats()
    assert outcomes == ["ConnectionResetError", 503, 200]
    assert stats["requests_by_ticket"] == {"T1": 3}


def test_a_jobs_simulator_section_takes_scripts(make_job):
    from batchrun import load_job
    from batchrun.launcher import sim_config
    from batchrun.errors import JobSpecError

    job = load_job(make_job(3, extra="""
        [simulator]
        latency_ms = 1
        [[simulator.scripts]]
        tickets = ["T000002"]
        steps = ["reset_before_headers", "429:retry_after=6", "no_usage", "ok"]
        [[simulator.scripts]]
        rate = 0.1
        steps = ["reset"]
    """))
    config = sim_config(job)
    assert [step.kind for step in config.scripts[0].steps] == ["reset_before_headers", "429", "no_usage", "ok"]
    assert config.scripts[1].rate == 0.1

    bad = load_job(make_job(3, extra="""
        [simulator]
        [[simulator.scripts]]
        tickets = ["T000002"]
        steps = ["reset_before_header"]
    """))
    with pytest.raises(JobSpecError, match=r"simulator\.scripts\[0\].*unknown fault kind 'reset_before_header'"):
        sim_config(bad)
