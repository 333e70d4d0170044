"""Many models: job-file rules, routing as data, fallbacks, compare runs, and
a separately started OpenAI-compatible server as the endpoint."""

from __future__ import annotations


import anyio
import pytest

from batchrun import Completion, ScriptedProvider, Usage, execute_run, load_job, prepare_run
from batchrun.errors import JobSpecError, TerminalError
from batchrun.job.spec import JobSpec
from conftest import batchrun_cmd, cli_run, read_jsonl

BASE = {"name": "m", "input": "t.jsonl", "prompt": {"user": "{body}"}}
MODELS = [{"name": "cheap", "model": "openai/a", "fallbacks": ["strong"]}, {"name": "strong", "model": "openai/b"}]


def spec(**extra) -> JobSpec:
    return JobSpec.model_validate({**BASE, "models": MODELS, **extra})


def test_models_give_the_default_model_and_routes_are_data():
    job = spec(routes=[{"model": "strong", "field": "customer.tier", "one_of": ["enterprise", "pro"]},
                       {"model": "strong", "field": "body", "longer_than": 10},
                       {"model": "cheap", "default": True}])
    assert job.model == "openai/a" and not job.compare_mode
    assert job.route({"customer": {"tier": "pro"}, "body": ""}) == ("strong", "customer.tier in ['enterprise', 'pro']")
    assert job.route({"customer": {"tier": "free"}, "body": "x" * 11}) == ("strong", "len(body) > 10")
    assert job.route({"body": "{x!r}"}) == ("cheap", "default")  # field values are compared, never run
    assert job.fallback_chain("cheap") == ["cheap", "strong"]
    assert spec().compare_mode


@pytest.mark.parametrize("extra, message", [
    ({"models": [{"name": "a", "model": "x"}, {"name": "a", "model": "y"}]}, "duplicate name"),
    ({"models": [{"name": "a", "model": "x", "fallbacks": ["a"]}]}, "is not another model's name"),
    ({"models": [{"name": "a", "model": "x", "fallbacks": ["zz"]}]}, "is not another model's name"),
    ({"routes": [{"model": "nope", "default": True}]}, "is not a models[].name"),
    ({"routes": [{"model": "cheap", "default": True}, {"model": "strong", "field": "a", "equals": 1}]},
     "must come last"),
    ({"routes": [{"model": "cheap", "field": "a"}]}, "exactly one of equals"),
    ({"routes": [{"model": "cheap", "field": "a", "equals": 1, "longer_than": 3}]}, "exactly one of equals"),
    ({"routes": [{"model": "cheap", "default": True, "field": "a"}]}, "a default route has no field"),
])
def test_model_and_route_cross_checks(extra, message):
    data = {**BASE, "models": MODELS, **extra}
    with pytest.raises(Exception) as info:
        JobSpec.model_validate(data)
    assert message in str(info.value)


def test_routes_need_models(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('name = "x"\ninput = "t.jsonl"\nmodel = "m"\n[prompt]\nuser = "{b}"\n'
                    '[[routes]]\nmodel = "a"\ndefault = true\n')
    with pytest.raises(JobSpecError, match="routes need"):
        load_job(path)


def answer(model: str):
    def script(request):
        return Completion(text="bug", finish_reason="stop", model=model, usage=Usage(10, 1, 11),
                          cost_usd=0.001, cost_status="litellm")
    return script


def routed_job(make_job, n: int):
    path = make_job(n, extra="""
        [[models]]
        name = "cheap"
        model = "openai/sim-cheap"
        fallbacks = ["strong"]
        [[models]]
        name = "strong"
        model = "openai/sim-strong"
        [[routes]]
        model = "strong"
        field = "customer.tier"
        equals = "enterprise"
        [[routes]]
        model = "cheap"
        default = true
    """)
    return load_job(path)


def test_routing_and_fallback_record_the_model_the_rule_and_the_attempts(make_job, tmp_path):
    job = routed_job(make_job, 30)
    fail_ids = {"T000003", "T000004"}
    cheap = ScriptedProvider(lambda r: TerminalError("cheap model refuses", kind="bad_request", status_code=400)
                             if r.ticket_id in fail_ids else answer("sim-cheap")(r))
    strong = ScriptedProvider(answer("sim-strong"))
    prep = prepare_run(job, endpoint="fake")
    try:
        result = anyio.run(lambda: execute_run(prep, {"cheap": cheap, "strong": strong}))
    finally:
        prep.release()
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "run" / "results.jsonl")}
    tickets = {t["id"]: t for t in read_jsonl(tmp_path / "tickets.jsonl")}
    assert result.summary["done"] == 30 and len(rows) == 30
    for ticket_id, row in rows.items():
        enterprise = tickets[ticket_id]["customer"]["tier"] == "enterprise"
        if enterprise:
            assert row["route"] == "customer.tier == 'enterprise'" and row["model_key"] == "strong"
            assert "attempts_by_model" not in row  # no fallbacks for the strong model
        elif ticket_id in fail_ids:  # the cheap model failed for good: the fallback answered
            assert row["route"] == "default" and row["model_key"] == "strong"
            assert row["attempts_by_model"] == {"cheap": 1, "strong": 1} and row["attempts"] == 2
        else:
            assert row["model_key"] == "cheap" and row["model"] == "sim-cheap"
    assert {c.ticket_id for c in strong.calls} >= fail_ids


@pytest.mark.slow  # two compare runs over two models in real processes
def test_a_compare_run_runs_every_ticket_on_every_model_and_resumes_per_model(make_job, tmp_path, cli_env):
    path = make_job(12, top="allow_unpriced = true", extra="""
        [[models]]
        name = "cheap"
        model = "openai/sim-cheap"
        [[models]]
        name = "strong"
        model = "openai/sim-strong"
        [simulator]
        latency_ms = 2
        jitter = 0
        [simulator.model_profiles]
        "sim-cheap" = { noise = 0.5 }
        "sim-strong" = { noise = 0.0 }
    """)
    first = cli_run(batchrun_cmd("run", str(path), "--no-progress", "--limit", "8"), env=cli_env,
                    capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr
    assert "2 models on the same tickets" in first.stdout
    for name in ("cheap", "strong"):
        rows = read_jsonl(tmp_path / "run" / "models" / name / "results.jsonl")
        assert len(rows) == 8 and {r["model"] for r in rows} == {f"sim-{name}"}
    # only the strong model's directory loses a line: resume is per (ticket, model)
    strong = tmp_path / "run" / "models" / "strong" / "results.jsonl"
    strong.write_bytes(b"".join(strong.read_bytes().splitlines(keepends=True)[:-1]))
    second = cli_run(batchrun_cmd("run", str(path), "--no-progress"), env=cli_env,
                     capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr
    cheap_rows = read_jsonl(tmp_path / "run" / "models" / "cheap" / "results.jsonl")
    strong_rows = read_jsonl(strong)
    assert len(cheap_rows) == len(strong_rows) == 12
    assert {r["run"] for r in cheap_rows if r["id"] in {f"T0000{i:02d}" for i in range(9, 13)}} == {2}
    labels = {"bug", "feature", "billing", "other"}
    assert {r["output"] for r in cheap_rows} <= labels and {r["output"] for r in strong_rows} <= labels


def test_any_openai_compatible_endpoint_started_separately(make_job, tmp_path, sim, cli_env):
    """A LiteLLM proxy or vLLM server stands where this simulator process (the session's) stands."""
    path = make_job(6, model="openai/my-deployed-model")
    sim.reset()
    result = cli_run(batchrun_cmd("run", str(path), "--api-base", sim.base_url, "--no-progress"),
                     env=cli_env, capture_output=True, text=True, timeout=180)
    counts = sim.stats()["requests_by_ticket"]
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(rows) == 6 and set(counts.values()) == {1}
    assert {r["model"] for r in rows} == {"my-deployed-model"}
    assert all(r["cost_usd"] is None and r["cost_status"] == "unpriced_model" for r in rows)


def test_a_model_gets_its_own_rate_limit_or_the_jobs(make_job):
    job = load_job(make_job(4, top="rpm = 600\n", extra="""
        [[models]]
        name = "cheap"
        model = "openai/sim-cheap"
        rpm = 60
        [[models]]
        name = "strong"
        model = "openai/sim-strong"
    """))
    assert job.for_model(job.model_entry("cheap")).rpm == 60
    assert job.for_model(job.model_entry("strong")).rpm == 600
