"""outputs.py: label normalization, JSON answers against a schema, tool-call parsing (pure functions)."""

from __future__ import annotations

import pytest

from batchrun.job.answer_checks import (
    OutputError,
    OutputRules,
    compile_schema,
    describe_raw,
    normalize_label,
    parse_json_text,
    parse_tool_calls,
    schema_problem,
)
from batchrun.records import ToolCall

LABELS = ["bug", "feature", "billing", "other"]
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["severity", "summary"],
    "properties": {
        "severity": {"type": "string", "enum": ["low", "medium", "high"]},
        "summary": {"type": "string", "maxLength": 40},
    },
}
ROUTE = {
    "type": "function",
    "function": {
        "name": "route_ticket",
        "parameters": {
            "type": "object",
            "required": ["team"],
            "properties": {"team": {"type": "string", "enum": ["eng", "billing"]}},
        },
    },
}


@pytest.mark.parametrize("answer", [
    "bug", "Bug", "BUG", "Bug.", " bug\n", "'bug'", '"Bug"', "**bug**", "`bug`", "- bug", "bug!",
    "\u201cBug\u201d", "(bug)", "Bug.\n\n",
])
def test_label_answers_normalize_to_the_label(answer):
    rules = OutputRules.build(labels=LABELS)
    assert rules.check(answer) == {"label": "bug"}


@pytest.mark.parametrize("answer", ["", "   ", "Label: bug", "bug report", "bug, feature", "bugs", "a bug",
                                    "bug\n\nBecause the app crashes."])
def test_other_answers_are_not_labels(answer):
    rules = OutputRules.build(labels=LABELS)
    with pytest.raises(OutputError, match="not one of the labels"):
        rules.check(answer)


def test_label_keeps_the_job_spelling_and_collapses_inner_whitespace():
    rules = OutputRules.build(labels=["Feature Request", "Bug"])
    assert rules.check("feature   request.") == {"label": "Feature Request"}
    assert normalize_label("  Feature\tRequest!! ") == "feature request"
    assert normalize_label("\uff22\uff35\uff27") == "bug"  # full-width letters (NFKC)


def test_describe_raw_quotes_and_caps_long_text():
    assert describe_raw('say "hi"\n') == '"say \\"hi\\"\\n"'
    long = describe_raw("x" * 5000, limit=100)
    assert long.startswith('"' + "x" * 100 + '"') and "5,000 characters in all" in long
    assert len(long) < 150


def test_json_text_with_or_without_a_fence():
    assert parse_json_text('{"a": 1}') == {"a": 1}
    assert parse_json_text('  ```json\n{"a": 1}\n```  ') == {"a": 1}
    assert parse_json_text('```\n[1, 2]\n```') == [1, 2]
    assert parse_json_text('```{"a": 1}```') == {"a": 1}
    with pytest.raises(OutputError, match="not valid JSON"):
        parse_json_text('{"a": 1')
    with pytest.raises(OutputError, match="empty"):
        parse_json_text("  ")


def test_schema_violations_name_the_path():
    validator = compile_schema(SCHEMA)
    assert schema_problem(validator, {"severity": "low", "summary": "ok"}) is None
    assert schema_problem(validator, {"severity": "urgent", "summary": "ok"}).startswith("$.severity: 'urgent'")
    assert "'summary' is a required property" in schema_problem(validator, {"severity": "low"})
    assert "Additional properties" in schema_problem(validator, {"severity": "low", "summary": "", "x": 1})


def test_invalid_schemas_are_refused():
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        compile_schema({"type": "objekt"})
    with pytest.raises(ValueError, match="must be an object"):
        compile_schema(["type"])  # type: ignore[arg-type]


def test_json_rules_parse_and_validate():
    rules = OutputRules.build(schema=SCHEMA)
    assert rules.check('{"severity": "high", "summary": "crash"}') == {"parsed": {"severity": "high", "summary": "crash"}}
    with pytest.raises(OutputError, match=r"does not match the JSON schema: \$\.summary"):
        rules.check('{"severity": "high", "summary": "' + "x" * 60 + '"}')
    with pytest.raises(OutputError, match="not valid JSON"):
        rules.check('{"severity": "high", "summ')


def test_tool_calls_parse_and_validate():
    validators = {"route_ticket": compile_schema(ROUTE["function"]["parameters"])}
    calls = [ToolCall("route_ticket", '{"team": "eng"}', "c1")]
    assert parse_tool_calls(calls, validators) == [{"name": "route_ticket", "arguments": {"team": "eng"}}]
    with pytest.raises(OutputError, match="arguments are not valid JSON"):
        parse_tool_calls([ToolCall("route_ticket", '{"team": "en')], validators)
    with pytest.raises(OutputError, match="not a JSON object"):
        parse_tool_calls([ToolCall("route_ticket", '["eng"]')], validators)
    with pytest.raises(OutputError, match=r"do not match its parameters: \$\.team"):
        parse_tool_calls([ToolCall("route_ticket", '{"team": "sales"}')], validators)
    with pytest.raises(OutputError, match="does not declare"):
        parse_tool_calls([ToolCall("delete_account", "{}")], validators)
    assert parse_tool_calls([], validators) == []
    with pytest.raises(OutputError, match="required"):
        parse_tool_calls([], validators, required=True)
    with pytest.raises(OutputError, match="asks for a call to 'route_ticket'"):
        parse_tool_calls([], validators, required_name="route_ticket")


def test_empty_arguments_count_as_an_empty_object():
    validators = {"ping": compile_schema({"type": "object", "properties": {}})}
    assert parse_tool_calls([ToolCall("ping", "")], validators) == [{"name": "ping", "arguments": {}}]


def test_tool_rules_follow_tool_choice():
    named = OutputRules.build(tools=[ROUTE], tool_choice={"type": "function", "function": {"name": "route_ticket"}})
    assert named.tool_required_name == "route_ticket"
    with pytest.raises(OutputError):
        named.check("I would route it to eng", ())
    auto = OutputRules.build(tools=[ROUTE], tool_choice="auto")
    assert auto.check("no call needed", ()) == {"tool_calls": []}
    required = OutputRules.build(tools=[ROUTE], tool_choice="required")
    assert required.check("", [ToolCall("route_ticket", '{"team":"billing"}')]) == {
        "tool_calls": [{"name": "route_ticket", "arguments": {"team": "billing"}}]}


def test_nothing_to_check_is_none():
    assert OutputRules.build() is None
    assert OutputRules.build(labels=[], tools=[]) is None
