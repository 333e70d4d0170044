"""Checking an answer against what the job asked for: a label, JSON, tool calls.

Pure functions over the text and tool calls of one answer: no I/O, no
litellm, no clock. The ticket runner calls them once per answer, and only for
jobs that declare `labels`, a JSON schema (`json_schema` or
`json_schema_file`) or `tools`: a plain job never reaches this module.

    normalize_label(text) -> str          the comparable form of a label or an answer
    parse_json_text(text) -> object       JSON text (optionally in one ``` fence) -> value
    compile_schema(schema) -> validator   a jsonschema validator, after checking the schema
    schema_problem(validator, value)      None, or one readable line on why value fails
    parse_tool_calls(calls, ...)          raw tool calls -> [{"name", "arguments"}]
    describe_raw(text)                    a quoted, length-capped copy for error messages
    OutputRules.for_job(job)              the compiled checks of one job (None: plain job)
    OutputRules.check(text, tool_calls)   -> {"label": ...} | {"parsed": ...} | {"tool_calls": [...]}
                                             or raises OutputError

Labels
------
A job's `labels = ["bug", "feature", "billing", "other"]` are compared after
normalization: Unicode NFKC, surrounding whitespace, quotes, brackets,
Markdown emphasis and punctuation stripped (`"Bug."`, `**bug**`, `'bug'\\n`,
`- bug` all become `bug`), inner whitespace collapsed to one space, then
case-folded. Nothing else is forgiven: `Label: bug`, `bug report` or two
labels are not a label. The result carries the label as the job spells it.
Two labels that normalize alike are refused when the job file is loaded.

JSON answers
------------
The answer text, stripped, is parsed with orjson; a single surrounding
Markdown code fence (```` ```json ... ``` ````) is removed first, since a
model without native structured outputs often adds one. The value is then
validated with `jsonschema` (the validator class the schema's `$schema`
names, Draft 2020-12 by default). `format` is an annotation, not checked, as
the JSON Schema specification says. The first, most relevant violation is
reported with its JSON path: `$.severity: 'urgent' is not one of [...]`.

Tool calls
----------
Each call must name a tool the job declared, and its arguments (JSON text,
assembled from the streamed fragments by litellm before they get here) must
parse to a JSON object valid against that tool's `parameters` schema; an
empty arguments string counts as `{}`. With `tool_choice = "required"` at
least one call is needed, with a named tool_choice at least one call to that
tool; with "auto" (or no tool_choice) an answer without calls is accepted and
records `tool_calls: []`.

Failures raise `OutputError(message)`. The message names what was wrong and
quotes the raw answer (capped at `RAW_LIMIT` characters), so errors.jsonl says
what the model actually said.

jsonschema (a litellm dependency) is imported on first use, so jobs without a
schema or tools never pay for it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Protocol, Sequence, TypedDict

import orjson

from batchrun.records import ToolCall

if TYPE_CHECKING:
    from batchrun.job.sections import ToolChoice, ToolPayload
    from batchrun.job.spec import JobSpec

RAW_LIMIT = 500  # characters of a raw answer quoted in an error message

# Stripped from both ends of a label answer: whitespace, quotes, brackets,
# Markdown emphasis and list markers, sentence punctuation.
_LABEL_EDGES = " \t\r\n\u00a0\"'`\u2018\u2019\u201c\u201d\u00ab\u00bb.,;:!?*_~()[]{}<>#-\u2013\u2014"


class OutputError(ValueError):
    """An answer that arrived but does not satisfy the job's output check."""


class SchemaValidator(Protocol):
    """What the checks use of a jsonschema validator (jsonschema ships no type information)."""

    def iter_errors(self, instance: object) -> Iterator[Exception]: ...


class ParsedCall(TypedDict):
    """One tool call of an accepted answer, as the result line's "tool_calls" holds it."""

    name: str
    arguments: dict[str, object]  # the parsed JSON object, valid against the tool's parameters


def normalize_label(text: str) -> str:
    """The comparable form of a label or of a label answer (module docstring)."""
    text = unicodedata.normalize("NFKC", text).strip(_LABEL_EDGES)
    return " ".join(text.split()).casefold()


def describe_raw(text: str, limit: int = RAW_LIMIT) -> str:
    """`text` as a JSON string literal, cut to `limit` characters with a note."""
    if len(text) <= limit:
        return orjson.dumps(text).decode()
    return orjson.dumps(text[:limit]).decode() + f"... ({len(text):,} characters in all)"


def parse_json_text(text: str) -> object:
    """Parse an answer as JSON (one surrounding ``` fence allowed); OutputError if it is not."""
    body = text.strip()
    if body.startswith("```") and body.endswith("```") and len(body) >= 6:
        body = body[3:-3]
        first_line, _, rest = body.partition("\n")
        if first_line.strip().isalnum() or not first_line.strip():  # ```json
            body = rest
        body = body.strip()
    if not body:
        raise OutputError("the answer is empty, not JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OutputError(f"the answer is not valid JSON ({exc}): {describe_raw(text)}") from None


def compile_schema(schema: Mapping[str, object]) -> SchemaValidator:
    """A jsonschema validator for `schema`; raises ValueError if the schema itself is invalid."""
    from jsonschema import exceptions, validators  # type: ignore[import-untyped]  # no type information

    if not isinstance(schema, Mapping):
        raise ValueError(f"a JSON schema must be an object, got {type(schema).__name__}")
    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise ValueError(f"not a valid JSON schema at {where}: {exc.message}") from None
    return cls(schema)


def schema_problem(validator: SchemaValidator, value: object) -> str | None:
    """None if `value` is valid, else `"<json path>: <message>"` of the most relevant error."""
    from jsonschema.exceptions import best_match  # type: ignore[import-untyped]  # no type information

    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    message = error.message
    if len(message) > RAW_LIMIT:
        message = message[:RAW_LIMIT] + "..."
    return f"{error.json_path}: {message}"


def parse_tool_calls(
    calls: Iterable[ToolCall],
    validators: Mapping[str, SchemaValidator],
    *,
    required: bool = False,
    required_name: str | None = None,
) -> list[ParsedCall]:
    """[{"name", "arguments": object}] from raw calls (objects with `.name` and `.arguments`).

    `validators` maps each declared tool name to its parameters' validator.
    `required`: at least one call; `required_name`: at least one call to it.
    """
    parsed: list[ParsedCall] = []
    for index, call in enumerate(calls):
        name, raw = call.name, call.arguments or ""
        if name not in validators:
            declared = ", ".join(sorted(validators)) or "none"
            raise OutputError(f"tool call {index} names {name!r}, which the job does not declare ({declared})")
        if not raw.strip():
            arguments: object = {}
        else:
            try:
                arguments = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise OutputError(
                    f"tool call {index} ({name}): arguments are not valid JSON ({exc}): {describe_raw(raw)}"
                ) from None
        if not isinstance(arguments, dict):
            raise OutputError(f"tool call {index} ({name}): arguments are not a JSON object: {describe_raw(raw)}")
        problem = schema_problem(validators[name], arguments)
        if problem is not None:
            raise OutputError(
                f"tool call {index} ({name}): arguments do not match its parameters: {problem}; "
                f"arguments: {describe_raw(raw)}"
            )
        parsed.append({"name": name, "arguments": arguments})
    if required_name is not None and not any(c["name"] == required_name for c in parsed):
        raise OutputError(f"tool_choice asks for a call to {required_name!r}, the answer has "
                          f"{_calls_summary(parsed)}")
    if required and not parsed:
        raise OutputError("tool_choice is \"required\", the answer has no tool call")
    return parsed


def _calls_summary(parsed: Sequence[ParsedCall]) -> str:
    if not parsed:
        return "no tool call"
    return "calls to " + ", ".join(repr(c["name"]) for c in parsed)


@dataclass(frozen=True, slots=True)
class OutputRules:
    """The compiled output check of one job: exactly one of the three modes."""

    mode: str  # "labels", "json_schema" or "tools"
    labels: Mapping[str, str] | None = None  # normalized -> as the job spells it
    validator: SchemaValidator | None = None  # json_schema mode
    tool_validators: Mapping[str, SchemaValidator] | None = None  # tools mode: name -> parameters validator
    tool_required: bool = False  # tool_choice "required"
    tool_required_name: str | None = None  # tool_choice names a function

    @classmethod
    def build(
        cls,
        *,
        labels: Sequence[str] | None = None,
        schema: Mapping[str, object] | None = None,
        tools: Sequence[ToolPayload] | None = None,
        tool_choice: str | ToolChoice | None = None,
    ) -> "OutputRules | None":
        """The rules for these settings (OpenAI-shaped tools), or None when there is nothing to check."""
        if labels:
            return cls(mode="labels", labels={normalize_label(label): label for label in labels})
        if schema is not None:
            return cls(mode="json_schema", validator=compile_schema(schema))
        if tools:
            validators = {
                tool["function"]["name"]: compile_schema(tool["function"].get("parameters") or {})
                for tool in tools
            }
            name = None
            if isinstance(tool_choice, Mapping):
                name = (tool_choice.get("function") or {}).get("name")
            return cls(mode="tools", tool_validators=validators, tool_required=tool_choice == "required",
                       tool_required_name=name)
        return None

    @classmethod
    def for_job(cls, job: JobSpec) -> "OutputRules | None":
        """The rules of a `JobSpec` (its labels, output_schema, tools_payload and tool_choice)."""
        return cls.build(labels=job.labels, schema=job.output_schema, tools=job.tools_payload,
                         tool_choice=job.tool_choice)

    def check(self, text: str, tool_calls: Sequence[ToolCall] = ()) -> dict[str, object]:
        """What the answer yields for the result line; raises OutputError."""
        if self.mode == "labels":
            assert self.labels is not None
            label = self.labels.get(normalize_label(text))
            if label is None:
                allowed = ", ".join(self.labels.values())
                raise OutputError(f"the answer is not one of the labels ({allowed}): {describe_raw(text)}")
            return {"label": label}
        if self.mode == "json_schema":
            assert self.validator is not None
            value = parse_json_text(text)
            problem = schema_problem(self.validator, value)
            if problem is not None:
                raise OutputError(f"the answer does not match the JSON schema: {problem}; "
                                  f"answer: {describe_raw(text)}")
            return {"parsed": value}
        assert self.tool_validators is not None
        return {"tool_calls": parse_tool_calls(tool_calls, self.tool_validators, required=self.tool_required,
                                               required_name=self.tool_required_name)}
