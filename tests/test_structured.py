"""Labels, JSON schemas, tools and finish_reason policies: the job-file fields
that declare them (validation, fingerprint) and what a run does with answers,
driven by a ScriptedProvider through the engine (errors.jsonl lines, retry
counts, summary counters)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import anyio
import orjson
import pytest

from batchrun import Completion, ScriptedProvider, Usage, execute_run, load_job, prepare_run
from batchrun.errors import ExitCode, JobSpecError
from batchrun.records import ToolCall
from batchrun.analysis.stats import format_summary
from batchrun.execution.ticket_runner import rules_for
from conftest import read_jsonl

LABELS_TOP = 'labels = ["bug", "feature", "billing", "other"]'

SCHEMA_TABLE = """
    [json_schema]
    type = "object"
    additionalProperties = false
    required = ["severity", "summary"]

    [json_schema.properties.severity]
    type = "string"
    enum = ["low", "medium", "high"]

    [json_schema.properties.summary]
    type = "string"
"""

TOOLS_TABLE = """
    [[tools]]
    type = "function"

    [tools.function]
    name = "route_ticket"
    description = "Route the ticket"

    [tools.function.parameters]
    type = "object"
    required = ["team", "priority"]

    [tools.function.parameters.properties.team]
    type = "string"
    enum = ["engineering", "billing", "support"]

    [tools.function.parameters.properties.priority]
    type = "integer"
    minimum = 1
    maximum = 4
"""


def answer(text: str = "bug", finish: str | None = "stop", tool_calls=(), cost: float | None = 0.001) -> Completion:
    return Completion(text=text, finish_reason=finish, model="fake", usage=Usage(10, 1, 11), cost_usd=cost,
                      cost_status="litellm" if cost is not None else "unpriced_model", tool_calls=tuple(tool_calls))


def run(job_path: Path, provider) -> tuple:
    job = load_job(job_path)
    prep = prepare_run(job, endpoint="fake")
    try:
        result = anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()
    return job, result


def per_ticket(script_by_attempt):
    """A script answering attempt k of every ticket with script_by_attempt(k) (1-based)."""
    seen: dict[str, int] = {}

    def script(request):
        seen[request.ticket_id] = seen.get(request.ticket_id, 0) + 1
        return script_by_attempt(seen[request.ticket_id])

    return script


# -- the job file -----------------------------------------------------------------------


def job_error(make_job, **kwargs) -> str:
    with pytest.raises(JobSpecError) as info:
        load_job(make_job(1, **kwargs))
    return str(info.value)


def test_defaults_ask_for_nothing_new(make_job):
    job = load_job(make_job(1))
    assert (job.stream, job.on_truncated, job.on_content_filter, job.max_invalid_output_retries) == (
        False, "keep", "fail", 2)
    assert job.labels is None and job.output_schema is None and job.tools_payload is None
    rules = rules_for(job)
    assert rules.options is None and rules.checks is None  # a plain job: no extra work per request
    assert "output" not in job.fingerprint()


def test_new_fields_load(make_job, tmp_path):
    job = load_job(make_job(1, top=f'{LABELS_TOP}\nstream = true\non_truncated = "fail"\n'
                                  'on_content_filter = "keep"\nmax_invalid_output_retries = 0'))
    assert job.labels == ["bug", "feature", "billing", "other"] and job.stream
    assert (job.on_truncated, job.on_content_filter, job.max_invalid_output_retries) == ("fail", "keep", 0)
    assert rules_for(job).options.stream and rules_for(job).checks.mode == "labels"


def test_json_schema_table_and_file(make_job, tmp_path):
    job = load_job(make_job(1, extra=SCHEMA_TABLE))
    assert job.output_schema["required"] == ["severity", "summary"]
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "s.json").write_bytes(orjson.dumps(job.output_schema))
    from_file = load_job(make_job(1, top='json_schema_file = "schemas/s.json"'))
    assert from_file.json_schema_file == tmp_path / "schemas" / "s.json"  # relative to the job file
    assert from_file.output_schema == job.output_schema
    assert from_file.fingerprint()["output"] == job.fingerprint()["output"]
    again = from_file.with_overrides(concurrency=2)  # re-validated: the file is read again, not doubled
    assert again.output_schema == job.output_schema and again.json_schema is None


def test_schema_sources_are_exclusive(make_job, tmp_path):
    (tmp_path / "s.json").write_text('{"type": "object"}')
    message = job_error(make_job, top='json_schema_file = "s.json"', extra=SCHEMA_TABLE)
    assert "json_schema and json_schema_file are exclusive" in message


@pytest.mark.parametrize("content, expected", [
    (None, "cannot read"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"type": 12}', "not a valid JSON schema"),
])
def test_bad_schema_files(make_job, tmp_path, content, expected):
    if content is not None:
        (tmp_path / "s.json").write_text(content)
    message = job_error(make_job, top='json_schema_file = "s.json"')
    assert "field `json_schema_file`" in message and expected in message


def test_invalid_json_schema_table(make_job):
    message = job_error(make_job, extra="""
        [json_schema]
        type = "object"
        required = "severity"
    """)
    assert "field `json_schema`" in message and "not a valid JSON schema" in message


def test_one_output_mode_per_job(make_job):
    assert "labels and tools are exclusive" in job_error(make_job, top=LABELS_TOP, extra=TOOLS_TABLE)
    assert "labels and a JSON schema are exclusive" in job_error(make_job, top=LABELS_TOP, extra=SCHEMA_TABLE)
    assert "a JSON schema and tools are exclusive" in job_error(make_job, extra=SCHEMA_TABLE + TOOLS_TABLE)


def test_labels_must_be_distinguishable(make_job):
    assert "'Bug' and 'bug.' are the same once normalized" in job_error(make_job, top='labels = ["Bug", "bug."]')
    assert "empty once whitespace and punctuation" in job_error(make_job, top='labels = ["bug", "..."]')
    assert "field `labels`" in job_error(make_job, top="labels = []")


def test_tool_choice_checks(make_job):
    assert "tool_choice needs [[tools]]" in job_error(make_job, top='tool_choice = "required"')
    message = job_error(make_job, top='tool_choice = { type = "function", function = { name = "nope" } }',
                        extra=TOOLS_TABLE)
    assert "tool_choice names 'nope'" in message
    assert "must be one of" in job_error(make_job, top='tool_choice = "route_ticket"', extra=TOOLS_TABLE)
    assert "and nothing else" in job_error(make_job, top='tool_choice = { function = { name = "route_ticket" } }',
                                           extra=TOOLS_TABLE)
    job = load_job(make_job(1, top='tool_choice = { type = "function", function = { name = "route_ticket" } }',
                            extra=TOOLS_TABLE))
    assert job.tools_payload == [{"type": "function", "function": {
        "name": "route_ticket", "description": "Route the ticket",
        "parameters": job.tools[0].function.parameters}}]


def test_tool_definitions_are_validated(make_job):
    bad_name = TOOLS_TABLE.replace('name = "route_ticket"', 'name = "route ticket!"')
    assert "field `tools.0.function.name`" in job_error(make_job, extra=bad_name)
    unknown = TOOLS_TABLE.replace('description = "Route the ticket"', 'descripton = "typo"')
    assert "field `tools.0.function.descripton`: unknown field" in job_error(make_job, extra=unknown)
    bad_params = TOOLS_TABLE.replace('type = "integer"', 'type = "int"')
    assert "not a valid JSON schema" in job_error(make_job, extra=bad_params)
    twice = TOOLS_TABLE + TOOLS_TABLE.replace("[[tools]]\n    type", "[[tools]]\n    type")
    assert "declared twice: route_ticket" in job_error(make_job, extra=twice)


@pytest.mark.parametrize("param, hint", [
    ("tools = []", "declare them as [[tools]]"),
    ('tool_choice = "auto"', "set `tool_choice`"),
    ("stream = true", "set `stream = true` at the top"),
    ('stream_options = { include_usage = true }', "batchrun sets them itself"),
])
def test_reserved_params(tmp_path, param, hint):
    text = textwrap.dedent(f"""\
        name = "t"
        input = "tickets.jsonl"
        model = "openai/gpt-4o-mini"

        [prompt]
        user = "Classify: {{subject}}"

        [params]
        {param}
    """)
    path = tmp_path / "job.toml"
    path.write_text(text)
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert "field `params`" in str(info.value) and hint in str(info.value)


def test_response_format_param_conflicts_with_a_schema(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(textwrap.dedent("""\
        name = "t"
        input = "tickets.jsonl"
        model = "openai/gpt-4o-mini"

        [prompt]
        user = "Classify: {subject}"

        [params]
        response_format = { type = "json_object" }

        [json_schema]
        type = "object"
    """))
    with pytest.raises(JobSpecError, match="drop params.response_format"):
        load_job(path)


def test_fingerprint_covers_what_shapes_the_answer_only(make_job, tmp_path):
    base = load_job(make_job(1, top=LABELS_TOP))
    streamed = base.with_overrides(stream=True, on_truncated="fail", max_invalid_output_retries=5)
    assert streamed.fingerprint_hash() == base.fingerprint_hash()  # may resume with streaming on
    other = load_job(make_job(1, top='labels = ["bug", "feature"]'))
    assert other.fingerprint_hash() != base.fingerprint_hash()
    plain = load_job(make_job(1))
    assert set(plain.fingerprint()) == {"model", "prompt", "params", "id_field"}  # unchanged for old runs


def test_changing_the_labels_refuses_to_resume(make_job, tmp_path):
    job_path = make_job(2, top=LABELS_TOP)
    run(job_path, ScriptedProvider(lambda r: answer("bug")))
    text = job_path.read_text().replace(LABELS_TOP, 'labels = ["bug", "other"]')
    job_path.write_text(text)
    from batchrun.errors import RunMismatchError

    with pytest.raises(RunMismatchError, match="job output changed"):
        prepare_run(load_job(job_path), endpoint="fake")


# -- labels ---------------------------------------------------------------------------------


def test_label_answers_are_normalized_on_the_result_line(make_job, tmp_path):
    answers = iter(["Bug.", " FEATURE\n", "'billing'", "**Other**", "bug"])
    _, result = run(make_job(5, top=LABELS_TOP), ScriptedProvider(lambda r: answer(next(answers))))
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert result.exit_code == ExitCode.OK
    assert sorted(r["label"] for r in rows) == ["billing", "bug", "bug", "feature", "other"]
    for row in rows:
        assert list(row)[:3] == ["id", "output", "label"]  # label next to the raw output
        assert row["attempts"] == 1 and "rejected_outputs" not in row


def test_invalid_label_is_asked_again_then_accepted(make_job, tmp_path):
    provider = ScriptedProvider(per_ticket(lambda k: answer("It is a bug report") if k == 1 else answer("bug")))
    _, result = run(make_job(3, top=LABELS_TOP), provider)
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(provider.calls) == 6 and result.exit_code == ExitCode.OK
    for row in rows:
        assert row["label"] == "bug" and row["attempts"] == 2
        assert row["rejected_outputs"] == 1 and row["rejected_cost_usd"] == pytest.approx(0.001)
    summary = result.summary
    assert summary["errors_by_kind"] == {"invalid_output": 3} and summary["retries"] == 3
    assert summary["rejected_outputs"] == 3
    assert summary["cost_usd"] == pytest.approx(6 * 0.001)  # the rejected answers were paid for too


def test_invalid_labels_end_in_errors_jsonl_after_the_configured_retries(make_job, tmp_path):
    raw = "I think this is probably a bug, but it could be billing.\n" + "x" * 3000
    provider = ScriptedProvider(lambda r: answer(raw))
    job_path = make_job(2, top=f"{LABELS_TOP}\nmax_invalid_output_retries = 1")
    _, result = run(job_path, provider)
    assert len(provider.calls) == 4  # 1 + 1 re-ask per ticket
    assert read_jsonl(tmp_path / "run" / "results.jsonl") == []
    errors = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert len(errors) == 2 and result.exit_code == ExitCode.TICKETS_FAILED
    for line in errors:
        assert line["error_kind"] == "invalid_output" and line["error_type"] == "InvalidOutput"
        assert line["attempts"] == 2 and line["rejected_outputs"] == 2
        assert "not one of the labels (bug, feature, billing, other)" in line["message"]
        assert "I think this is probably a bug" in line["message"]  # the raw text ...
        assert "3,057 characters in all" in line["message"] and len(line["message"]) < 800  # ... capped
        assert "max_invalid_output_retries = 1" in line["message"]
    assert result.summary["failed_by_kind"] == {"invalid_output": 2}
    assert re.search(r"failed tickets by kind +invalid_output 2", format_summary(result.summary))


def test_invalid_output_retries_stay_within_max_attempts(make_job, tmp_path):
    provider = ScriptedProvider(lambda r: answer("no idea"))
    run(make_job(1, top=f"{LABELS_TOP}\nmax_invalid_output_retries = 10"), provider)  # retry.max_attempts = 3
    assert len(provider.calls) == 3
    (line,) = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert line["error_kind"] == "invalid_output" and line["attempts"] == 3


def test_zero_invalid_output_retries_fails_at_once(make_job, tmp_path):
    provider = ScriptedProvider(lambda r: answer("no idea"))
    run(make_job(1, top=f"{LABELS_TOP}\nmax_invalid_output_retries = 0"), provider)
    assert len(provider.calls) == 1
    assert read_jsonl(tmp_path / "run" / "errors.jsonl")[0]["error_kind"] == "invalid_output"


def test_transport_errors_and_invalid_outputs_share_max_attempts(make_job, tmp_path):
    from batchrun.errors import RetryableError

    def script(k):
        if k == 1:
            return RetryableError("boom", kind="server_error", status_code=503)
        return answer("maybe") if k == 2 else answer("bug")

    provider = ScriptedProvider(per_ticket(script))
    _, result = run(make_job(1, top=LABELS_TOP), provider)
    (row,) = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert row["attempts"] == 3 and row["label"] == "bug" and row["rejected_outputs"] == 1
    assert result.summary["errors_by_kind"] == {"invalid_output": 1, "server_error": 1}


# -- JSON schema ------------------------------------------------------------------------------


def test_schema_answers_are_parsed_onto_the_line(make_job, tmp_path):
    provider = ScriptedProvider(lambda r: answer('```json\n{"severity": "high", "summary": "crash on upload"}\n```'))
    run(make_job(2, extra=SCHEMA_TABLE), provider)
    for row in read_jsonl(tmp_path / "run" / "results.jsonl"):
        assert row["parsed"] == {"severity": "high", "summary": "crash on upload"}
        assert list(row)[:3] == ["id", "output", "parsed"]


@pytest.mark.parametrize("text, fragment", [
    ('{"severity": "high"}', "$: 'summary' is a required property"),
    ('{"severity": "urgent", "summary": "s"}', "$.severity: 'urgent' is not one of"),
    ('{"severity": "high", "summary": "s", "extra": 1}', "Additional properties are not allowed"),
    ('{"severity": "high", "summ', "not valid JSON"),
    ("Sure! Here is the JSON you asked for.", "not valid JSON"),
])
def test_schema_failures_are_invalid_output(make_job, tmp_path, text, fragment):
    provider = ScriptedProvider(lambda r: answer(text))
    run(make_job(1, top="max_invalid_output_retries = 1", extra=SCHEMA_TABLE), provider)
    assert len(provider.calls) == 2
    (line,) = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert line["error_kind"] == "invalid_output" and fragment in line["message"]


# -- tools --------------------------------------------------------------------------------------


def route(arguments: str, name: str = "route_ticket") -> Completion:
    return answer("", finish="tool_calls", tool_calls=[ToolCall(name, arguments, "call_1")])


def test_tool_call_arguments_are_parsed(make_job, tmp_path):
    provider = ScriptedProvider(lambda r: route('{"team": "billing", "priority": 2}'))
    run(make_job(2, top='tool_choice = "required"', extra=TOOLS_TABLE), provider)
    for row in read_jsonl(tmp_path / "run" / "results.jsonl"):
        assert row["tool_calls"] == [{"name": "route_ticket", "arguments": {"team": "billing", "priority": 2}}]
        assert row["output"] == "" and row["finish_reason"] == "tool_calls"
    assert provider.calls[0].options.tools[0]["function"]["name"] == "route_ticket"
    assert provider.calls[0].options.tool_choice == "required"


@pytest.mark.parametrize("completion, fragment", [
    (route('{"team": "billing", "priority": '), "arguments are not valid JSON"),
    (route('{"team": "sales", "priority": 2}'), "$.team: 'sales' is not one of"),
    (route('{"team": "billing", "priority": 2}', name="close_ticket"), "names 'close_ticket'"),
    (answer("I would send this to billing."), "the answer has no tool call"),
])
def test_bad_tool_calls_are_invalid_output(make_job, tmp_path, completion, fragment):
    provider = ScriptedProvider(lambda r: completion)
    run(make_job(1, top='tool_choice = "required"\nmax_invalid_output_retries = 0', extra=TOOLS_TABLE), provider)
    (line,) = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert line["error_kind"] == "invalid_output" and fragment in line["message"]


# -- finish_reason: length and content_filter -----------------------------------------------------


def test_truncated_answers_are_kept_flagged_and_counted(make_job, tmp_path):
    answers = iter([answer("The customer rep", finish="length"), answer("bug")])
    _, result = run(make_job(2), ScriptedProvider(lambda r: next(answers)))
    rows = {r["output"]: r for r in read_jsonl(tmp_path / "run" / "results.jsonl")}
    assert rows["The customer rep"]["truncated"] is True and rows["The customer rep"]["finish_reason"] == "length"
    assert rows["bug"]["truncated"] is False
    assert result.summary["truncated"] == 1 and result.exit_code == ExitCode.OK
    assert "1 truncated and 0 content-filtered kept" in format_summary(result.summary)


def test_on_truncated_fail_is_not_retried(make_job, tmp_path):
    provider = ScriptedProvider(lambda r: answer("The customer rep", finish="length"))
    _, result = run(make_job(1, top='on_truncated = "fail"'), provider)
    assert len(provider.calls) == 1  # the same request would be cut again
    (line,) = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert line["error_kind"] == "truncated" and line["attempts"] == 1
    assert '"The customer rep"' in line["message"] and "max_tokens" in line["message"]
    assert result.summary["failed_by_kind"] == {"truncated": 1}


def test_truncated_invalid_answer_is_truncated_not_retried(make_job, tmp_path):
    provider = ScriptedProvider(lambda r: answer('{"severity": "hi', finish="length"))
    run(make_job(1, extra=SCHEMA_TABLE), provider)  # on_truncated = "keep", but the JSON is cut
    assert len(provider.calls) == 1
    (line,) = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert line["error_kind"] == "truncated" and "not valid JSON" in line["message"]


def test_truncated_but_valid_label_is_kept(make_job, tmp_path):
    run(make_job(1, top=LABELS_TOP), ScriptedProvider(lambda r: answer("billing", finish="length")))
    (row,) = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert row["label"] == "billing" and row["truncated"] is True


def test_content_filter_fails_by_default(make_job, tmp_path):
    provider = ScriptedProvider(lambda r: answer("", finish="content_filter"))
    _, result = run(make_job(2), provider)
    assert len(provider.calls) == 2  # not retried
    errors = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert {e["error_kind"] for e in errors} == {"content_filter"} and all(e["attempts"] == 1 for e in errors)
    assert result.summary["failed_by_kind"] == {"content_filter": 2}
    assert result.summary["rejected_outputs"] == 2


def test_content_filter_keep(make_job, tmp_path):
    _, result = run(make_job(2, top='on_content_filter = "keep"'),
                    ScriptedProvider(lambda r: answer("", finish="content_filter")))
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(rows) == 2 and all(r["content_filtered"] and not r["truncated"] for r in rows)
    assert result.summary["content_filtered"] == 2


def test_plain_result_line_shape(make_job, tmp_path):
    run(make_job(1), ScriptedProvider(lambda r: answer("bug")))
    (row,) = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert list(row) == ["id", "output", "finish_reason", "truncated", "content_filtered", "model", "usage",
                         "usage_source", "cost_usd", "cost_status", "service_tier", "cost_source", "latency_ms", "ttft_ms",
                         "output_tokens_per_s", "elapsed_ms", "attempts", "started_at", "finished_at", "run"]
    assert row["ttft_ms"] is None and row["usage_source"] == "provider"


# -- the summary ------------------------------------------------------------------------------------


def test_summary_reports_ttft_and_flags_and_reads_old_summaries():
    from batchrun.records import Outcome
    from batchrun.analysis.stats import RunStats

    stats = RunStats(tickets_total=3, to_do=3)
    for ms, finish in ((100.0, "stop"), (200.0, "length"), (300.0, "stop")):
        completion = Completion(text="x", finish_reason=finish, model="m", usage=Usage(5, 1, 6), cost_usd=0.001,
                                cost_status="litellm", ttft_ms=ms)
        stats.record(Outcome(ticket_id=str(ms), attempts=1, started_at="", finished_at="", elapsed_ms=ms * 2,
                             run=1, completion=completion, latency_ms=ms * 2))
    summary = stats.summary()
    assert summary["ttft_ms"]["p50"] == pytest.approx(200, rel=0.02)
    assert summary["ttft_ms"]["p99"] == pytest.approx(300, rel=0.02)
    assert summary["truncated"] == 1
    table = format_summary(summary)
    assert re.search(r"TTFT p50/p95/p99 +(199|200|201) ms / (29[89]|30[0-2]) ms / (29[89]|30[0-2]) ms", table)
    assert "1 truncated and 0 content-filtered kept; 0 rejected" in table
    old = {k: v for k, v in summary.items()
           if k not in {"ttft_ms", "truncated", "content_filtered", "rejected_outputs", "rejected_cost_usd",
                        "failed_by_kind"}}
    assert "TTFT" not in format_summary(old)  # a manifest written before these keys existed
    plain = RunStats(tickets_total=1, to_do=1).summary()
    assert plain["ttft_ms"] is None and "TTFT" not in format_summary(plain)
