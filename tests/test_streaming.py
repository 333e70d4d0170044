"""Streaming, structured outputs and tools through litellm to the simulator
over HTTP on 127.0.0.1: streamed and plain runs agree line for line (but for
timing), TTFT and usage are recorded, cut streams are retried and never a
success, a stream without usage is marked estimated, truncation is flagged,
tool-call arguments are assembled from streamed fragments, and the sample
jobs run. Nothing here asserts a duration."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchrun import execute_run, load_job, prepare_run
from batchrun.job.answer_checks import compile_schema, schema_problem
from conftest import JOB_TEMPLATE, ROOT, read_jsonl, write_tickets

TIMING = {"latency_ms", "elapsed_ms", "started_at", "finished_at", "ttft_ms", "output_tokens_per_s"}
LABELS = 'labels = ["bug", "feature", "billing", "other"]'
SCHEMA = """
    [json_schema]
    type = "object"
    additionalProperties = false
    required = ["category", "severity", "summary"]

    [json_schema.properties.category]
    type = "string"
    enum = ["bug", "feature", "billing", "other"]

    [json_schema.properties.severity]
    type = "string"
    enum = ["low", "medium", "high"]

    [json_schema.properties.summary]
    type = "string"
"""
TOOLS = """
    [[tools]]
    type = "function"

    [tools.function]
    name = "route_ticket"
    description = "Route the ticket to a team"

    [tools.function.parameters]
    type = "object"
    additionalProperties = false
    required = ["team", "priority", "reason"]

    [tools.function.parameters.properties.team]
    type = "string"
    enum = ["engineering", "product", "billing", "support"]

    [tools.function.parameters.properties.priority]
    type = "integer"
    minimum = 1
    maximum = 4

    [tools.function.parameters.properties.reason]
    type = "string"
"""
MODES = {  # top-level keys, tables, params
    "plain": ("", "", None),
    "labels": (LABELS, "", None),
    "json_schema": ("", SCHEMA, {"temperature": 0, "max_tokens": 400}),
    "tools": ('tool_choice = "required"', TOOLS, {"temperature": 0, "max_tokens": 400}),
}
PROSE = {"system": "Summarize the ticket for the on-call engineer.", "user": "{subject}\n\n{body}"}


def write_job(folder: Path, n: int, *, top: str = "", extra: str = "", model: str = "openai/gpt-4o-mini") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_tickets(folder / "tickets.jsonl", n)
    path = folder / "job.toml"
    path.write_text(JOB_TEMPLATE.format(name="stream_test", model=model, concurrency=4,
                                        extra=textwrap.dedent(extra), top=textwrap.dedent(top)))
    return path


def run_live(job_path: Path, sim: Any, **overrides: Any) -> tuple[Any, list[dict], list[dict]]:
    """Run a job through LiteLLMProvider against `sim`, as `batchrun run` does."""
    from batchrun.providers.online import LiteLLMProvider

    job = load_job(job_path).with_overrides(**overrides)
    prep = prepare_run(job, endpoint="sim")
    provider = LiteLLMProvider(model=job.model, api_base=sim.base_url, api_key="sim-key",
                               params=job.params, prices=job.prices)
    try:
        result = anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()
    run_dir = job.resolved_run_dir()
    return result, read_jsonl(run_dir / "results.jsonl"), read_jsonl(run_dir / "errors.jsonl")


def without_timing(rows: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in row.items() if k not in TIMING} for row in rows), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def fault_sim():
    """A simulator that cuts or drops the usage of some streams, by ticket id and attempt."""
    from batchrun.sim.config import SimConfig
    from batchrun.sim.faults import FaultRule
    from batchrun.sim.process import start_simulator

    faults = (
        FaultRule(kind="stream_cut", tickets=("T000002", "T000004"), attempts=(1,)),
        FaultRule(kind="stream_cut", tickets=("T000006",), attempts=(1, 2, 3)),
        FaultRule(kind="drop_usage", tickets=("T000003",)),
    )
    with start_simulator(SimConfig(latency_ms=5.0, jitter=0.0, faults=faults)) as process:
        yield process


@pytest.mark.parametrize("mode", list(MODES))
def test_streamed_and_plain_runs_give_the_same_lines(tmp_path, sim, mode):
    top, extra, params = MODES[mode]
    plain_job = write_job(tmp_path / "plain", 12, top=top, extra=extra)
    stream_job = write_job(tmp_path / "stream", 12, top=top, extra=extra)
    plain, plain_rows, plain_errors = run_live(plain_job, sim, params=params)
    streamed, stream_rows, stream_errors = run_live(stream_job, sim, params=params, stream=True)
    assert plain_errors == [] and stream_errors == [] and len(plain_rows) == 12
    assert without_timing(plain_rows) == without_timing(stream_rows)
    for row in stream_rows:
        assert row["usage_source"] == "provider" and row["usage"]["completion_tokens"] > 0
        assert row["cost_status"] == "litellm" and row["cost_usd"] > 0
        assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["latency_ms"]
        assert row["output_tokens_per_s"] > 0
    assert all(row["ttft_ms"] is None for row in plain_rows)
    assert plain.summary["ttft_ms"] is None
    assert streamed.summary["ttft_ms"]["p50"] is not None and streamed.summary["ttft_ms"]["p99"] is not None
    assert streamed.summary["cost_usd"] == pytest.approx(plain.summary["cost_usd"])
    if mode == "labels":
        assert {row["label"] for row in stream_rows} <= {"bug", "feature", "billing", "other"}
    if mode == "json_schema":
        validator = compile_schema(load_job(stream_job).output_schema)
        assert all(schema_problem(validator, row["parsed"]) is None for row in stream_rows)
    if mode == "tools":
        for row in stream_rows:
            (call,) = row["tool_calls"]
            assert call["name"] == "route_ticket" and set(call["arguments"]) == {"team", "priority", "reason"}
            assert row["finish_reason"] == "tool_calls" and row["output"] == ""


def test_tool_call_arguments_are_assembled_from_streamed_fragments(tmp_path, sim, monkeypatch):
    from batchrun.providers.litellm_setup import import_litellm

    litellm = import_litellm()
    original = litellm.stream_chunk_builder
    fragments: list[int] = []

    def spy(chunks, messages=None, **kwargs):
        if "logging_obj" not in kwargs:  # batchrun's call, not litellm's own for its logging
            fragments.append(sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls))
        return original(chunks, messages=messages, **kwargs)

    monkeypatch.setattr(litellm, "stream_chunk_builder", spy)
    job = write_job(tmp_path, 4, top='tool_choice = "required"', extra=TOOLS)
    _, rows, errors = run_live(job, sim, params=MODES["tools"][2], stream=True)
    assert errors == [] and len(rows) == 4
    assert len(fragments) == 4 and min(fragments) > 3  # many argument fragments per call ...
    for row in rows:  # ... joined by litellm into one JSON object each
        assert row["tool_calls"][0]["arguments"]["team"] in {"engineering", "product", "billing", "support"}


def test_cut_stream_is_retried_and_never_a_success(tmp_path, fault_sim):
    fault_sim.reset()
    job = write_job(tmp_path, 8, top=LABELS)
    result, rows, errors = run_live(job, fault_sim, stream=True)
    by_id = {row["id"]: row for row in rows}
    assert by_id["T000002"]["attempts"] == 2 and by_id["T000004"]["attempts"] == 2
    assert by_id["T000002"]["label"] in {"bug", "feature", "billing", "other"}
    assert by_id["T000001"]["attempts"] == 1
    assert "T000006" not in by_id  # cut on every attempt: never recorded as a success
    (error,) = errors
    assert error["id"] == "T000006" and error["error_kind"] == "stream_cut" and error["attempts"] == 3
    assert "without a finish_reason" in error["message"]
    assert result.summary["errors_by_kind"] == {"stream_cut": 5}
    assert fault_sim.stats()["requests_by_ticket"]["T000006"] == 3


def test_stream_without_usage_is_estimated(tmp_path, fault_sim):
    fault_sim.reset()
    job = write_job(tmp_path, 3)
    _, rows, errors = run_live(job, fault_sim, stream=True)
    assert errors == []
    by_id = {row["id"]: row for row in rows}
    estimated = by_id["T000003"]
    assert estimated["usage_source"] == "estimated" and estimated["cost_status"] == "estimated"
    assert estimated["usage"]["prompt_tokens"] > 0 and estimated["usage"]["completion_tokens"] >= 1
    assert estimated["cost_usd"] > 0
    assert by_id["T000001"]["usage_source"] == "provider" and by_id["T000001"]["cost_status"] == "litellm"


def test_estimated_usage_with_job_prices(tmp_path, fault_sim):
    fault_sim.reset()
    job = write_job(tmp_path, 3, extra="""
        [prices]
        input_per_million = 1.0
        output_per_million = 2.0
    """)
    _, rows, _ = run_live(job, fault_sim, stream=True)
    row = next(r for r in rows if r["id"] == "T000003")
    usage = row["usage"]
    assert row["usage_source"] == "estimated" and row["cost_status"] == "estimated"
    assert row["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6)


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_truncation_is_flagged_and_counted(tmp_path, sim, stream):
    job = write_job(tmp_path, 5)
    result, rows, errors = run_live(job, sim, prompt=PROSE, params={"max_tokens": 4}, stream=stream)
    assert errors == [] and len(rows) == 5
    assert all(row["finish_reason"] == "length" and row["truncated"] is True for row in rows)
    assert all(row["usage"]["completion_tokens"] == 4 for row in rows)
    assert result.summary["truncated"] == 5


def test_on_truncated_fail_streamed(tmp_path, sim):
    sim.reset()
    job = write_job(tmp_path, 3, top='on_truncated = "fail"')
    result, rows, errors = run_live(job, sim, prompt=PROSE, params={"max_tokens": 4}, stream=True)
    assert rows == [] and len(errors) == 3
    assert all(e["error_kind"] == "truncated" and e["attempts"] == 1 for e in errors)
    assert set(sim.stats()["requests_by_ticket"].values()) == {1}  # not retried
    assert result.summary["failed_by_kind"] == {"truncated": 3}


def test_truncated_json_is_a_truncated_failure(tmp_path, sim):
    job = write_job(tmp_path, 2, extra=SCHEMA)
    _, rows, errors = run_live(job, sim, params={"max_tokens": 6}, stream=True)
    assert rows == [] and {e["error_kind"] for e in errors} == {"truncated"}
    assert all("not valid JSON" in e["message"] for e in errors)


def test_schema_is_validated_even_when_not_sent(tmp_path, sim):
    # litellm knows no response-schema support for this model: response_format is not sent,
    # the simulator answers in prose, and the check on our side catches it.
    job = write_job(tmp_path, 2, top="max_invalid_output_retries = 1", extra=SCHEMA,
                    model="openai/acme-internal-classifier-v3")
    result, rows, errors = run_live(job, sim, params=MODES["json_schema"][2])
    assert rows == [] and len(errors) == 2
    assert all(e["error_kind"] == "invalid_output" and e["attempts"] == 2 for e in errors)
    assert all("not valid JSON" in e["message"] for e in errors)
    # ... and "always" sends it anyway: the simulator answers with schema-valid JSON
    again = write_job(tmp_path / "always", 2, top='send_json_schema = "always"', extra=SCHEMA,
                      model="openai/acme-internal-classifier-v3")
    _, rows, errors = run_live(again, sim, params=MODES["json_schema"][2])
    assert errors == [] and all(set(r["parsed"]) == {"category", "severity", "summary"} for r in rows)


def test_response_format_is_sent_where_the_model_supports_it():
    from batchrun.providers.online import LiteLLMProvider
    from batchrun.providers.seam import RequestOptions

    schema = {"type": "object", "properties": {}}
    opts = RequestOptions(json_schema=schema, json_schema_name="extract_fields")
    kwargs: dict[str, Any] = {}
    LiteLLMProvider(model="openai/gpt-4o-mini")._add_options(kwargs, opts)
    assert kwargs["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "extract_fields", "schema": schema, "strict": True}}
    kwargs = {}
    LiteLLMProvider(model="openai/acme-internal-classifier-v3")._add_options(kwargs, opts)
    assert "response_format" not in kwargs
    kwargs = {}
    never = RequestOptions(json_schema=schema, send_json_schema="never")
    LiteLLMProvider(model="openai/gpt-4o-mini")._add_options(kwargs, never)
    assert kwargs == {}


@pytest.mark.parametrize("name, key", [("extract_fields", "parsed"), ("route_with_tools", "tool_calls")])
def test_sample_jobs_run_against_the_simulator(tmp_path, sim, name, key):
    from batchrun.providers.online import LiteLLMProvider

    job = load_job(ROOT / "jobs" / f"{name}.toml").with_overrides(run_dir=tmp_path / "run")
    assert job.simulator is not None  # runs with no key
    prep = prepare_run(job, endpoint="sim", limit=30)
    provider = LiteLLMProvider(model=job.model, api_base=sim.base_url, api_key="sim-key",
                               params=job.params, prices=job.prices)
    try:
        result = anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert result.summary["done"] == 30 and result.summary["failed"] == 0 and len(rows) == 30
    if key == "parsed":
        validator = compile_schema(job.output_schema)
        assert all(schema_problem(validator, row["parsed"]) is None for row in rows)
    else:
        parameters = compile_schema(job.tools[0].function.parameters)
        for row in rows:
            (call,) = row["tool_calls"]
            assert call["name"] == "route_ticket" and schema_problem(parameters, call["arguments"]) is None
        assert job.stream and result.summary["ttft_ms"]["p95"] is not None


def test_streamed_answers_keep_the_rate_limit_headers():
    """The engine's adaptive limits read x-ratelimit-* headers: streaming must not lose them."""
    from batchrun.providers.seam import ChatRequest, RequestOptions
    from batchrun.providers.online import LiteLLMProvider
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    messages = [{"role": "user", "content": "Classify as bug, feature, billing or other: the app crashes"}]
    with start_simulator(SimConfig(latency_ms=1.0, jitter=0.0, rpm=1000)) as sim:
        provider = LiteLLMProvider(model="openai/gpt-4o-mini", api_base=sim.base_url, api_key="sim-key")

        async def ask(stream: bool):
            return await provider.complete(ChatRequest("T1", messages, 10.0, RequestOptions(stream=stream)))

        plain, streamed = anyio.run(ask, False), anyio.run(ask, True)
    assert plain.rate_limit_headers["x-ratelimit-limit-requests"] == "1000"
    assert streamed.rate_limit_headers["x-ratelimit-limit-requests"] == "1000"
    assert streamed.ttft_ms is not None and plain.ttft_ms is None
