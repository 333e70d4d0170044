"""Structured answers for the simulator: JSON mode, JSON schemas and tool calls.

The server calls into this module only for requests that carry
``response_format`` (other than ``{"type": "text"}``) or ``tools``; plain
requests never touch it.

Request checks
--------------
`parse_response_format` and `parse_tools` validate those fields like OpenAI
does and raise `StructuredRequestError` (turned into a 400
``invalid_request_error`` by the server) for malformed ones: an unknown
``response_format.type``, a ``json_schema`` without an object ``json_schema``,
``tools`` that are not ``{"type": "function", "function": {"name": ...}}``
objects, a ``tool_choice`` that is not ``"none"``/``"auto"``/``"required"``
or names a tool that is not offered, or a ``tool_choice`` without ``tools``.
A ``json_schema`` format without a ``schema`` is answered like
``json_object``; ``strict`` is accepted and ignored (answers always conform).

Which tool is called (`choose_tool`)
------------------------------------
``tool_choice`` ``"none"``: no tool call (a normal or JSON answer). Absent
or ``"auto"``: the first tool, unless the conversation's last message is a
tool result (role ``tool``), which gets a normal answer, so agent loops end.
``"required"``: the first tool. ``{"type": "function", "function": {"name":
N}}``: tool N. One call per answer (``parallel_tool_calls`` is ignored).

Instances of a schema (`instance_for_schema`)
---------------------------------------------
A deterministic value that validates against the schema, derived from the
seed, the current user turn and the position in the schema:

* ``const`` gives its value; ``enum`` picks a value: if the enum holds at
  least two of the labels bug/feature/billing/other (any case) the simulated
  classifier (`batchrun.sim.answers.classify_messages`) chooses among them,
  so a JSON label agrees with the plain-text answer; otherwise a hash picks.
* ``$ref`` to ``#/$defs/...`` or ``#/definitions/...`` (any local JSON
  pointer) is followed; ``allOf`` parts are merged; ``anyOf`` / ``oneOf``
  take the first option (past `MAX_DEPTH`, a ``null`` option if there is one,
  which ends recursive schemas).
* ``object``: every declared property (required or not; past `MAX_DEPTH`
  only the required ones), nothing else; a ``required`` name without a
  declared schema gets a value of ``additionalProperties`` or a string.
* ``array``: ``minItems`` items, or 1 item for enum items (the classifier's
  label first) and 2 otherwise (1 from depth ``MAX_DEPTH // 2`` on, only
  ``minItems`` past `MAX_DEPTH`), capped by ``maxItems``; tuple forms
  (``prefixItems``, or ``items`` as a list) give one item per position.
  ``uniqueItems`` enum arrays take distinct values.
* ``string``: by property name, the summary sentence (summary, reason,
  explanation, description, ...) or a keyword of the user text (items of
  an array take successive keywords); ``format``
  date, date-time, time, email, uri and uuid give values of that form;
  ``minLength`` / ``maxLength`` are honoured (``pattern`` is not).
* ``integer`` / ``number``: within ``minimum`` / ``maximum`` /
  ``exclusiveMinimum`` / ``exclusiveMaximum`` (default range 0..10 for
  integers, 0..1 for numbers, two decimals) and ``multipleOf``.
* ``boolean``: a hash bit; ``null``: null. A list of types takes the first
  non-null one; a schema without ``type`` is inferred from ``properties`` /
  ``items`` and is otherwise a string.

`json_answer` is the text of a JSON-mode answer: the instance of the schema
for ``json_schema``, or for ``json_object`` a small object, ``{"label": ...,
"summary": ...}`` for a classification prompt and ``{"summary": ...,
"keywords": [...]}`` otherwise. `tool_arguments` is the arguments string of
a tool call (an instance of the tool's ``parameters``). Both are compact
JSON (``orjson``), so ``max_tokens`` truncation cuts them like any text.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias, TypeGuard, TypeVar, cast

import orjson

from batchrun.sim.answers import (
    KNOWN_LABELS,
    classify_messages,
    current_turn_text,
    detect_labels,
    summary_sentence,
    top_keywords,
)
from batchrun.sim.jsontypes import Messages

#: A JSON schema as the request gives it: an object, true/false, or anything else (read as "no constraint").
Schema: TypeAlias = object

#: A request's checked ``tool_choice``: None, "none", "auto", "required" or
#: ``{"type": "function", "function": {"name": ...}}``.
ToolChoice: TypeAlias = "str | Mapping[str, object] | None"

T = TypeVar("T")
D = TypeVar("D")

#: Nesting depth after which recursive schemas are cut short (null options, no optional properties, minItems).
MAX_DEPTH = 8

#: Nesting depth at which instance building gives up and answers null.
HARD_DEPTH = 32

_TEXT_PROPERTY_WORDS = (
    "summary",
    "reason",
    "explanation",
    "rationale",
    "description",
    "justification",
    "answer",
    "comment",
    "note",
    "message",
    "text",
    "response",
    "reply",
)


class StructuredRequestError(ValueError):
    """A malformed ``response_format``, ``tools`` or ``tool_choice`` (a 400 for the client)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """A JSON response format: ``json_object`` (schema None) or ``json_schema``."""

    type: str
    schema: Mapping[str, object] | bool | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One offered function tool."""

    name: str
    parameters: Mapping[str, object] | None


# -- request checks --------------------------------------------------------


def parse_response_format(value: object) -> ResponseFormat | None:
    """The JSON response format asked for, or None for text (absent or ``{"type": "text"}``)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StructuredRequestError("Invalid type for 'response_format': expected an object.", "response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise StructuredRequestError(
                "Missing required parameter: 'response_format.json_schema'.", "response_format.json_schema"
            )
        name = spec.get("name")
        if name is not None and not isinstance(name, str):
            raise StructuredRequestError("Invalid type for 'response_format.json_schema.name': expected a string.", "response_format.json_schema.name")
        schema = spec.get("schema")
        if schema is not None and not isinstance(schema, (dict, bool)):
            raise StructuredRequestError("Invalid type for 'response_format.json_schema.schema': expected an object.", "response_format.json_schema.schema")
        if schema is None:
            return ResponseFormat("json_object", None, name)
        return ResponseFormat("json_schema", schema, name)
    raise StructuredRequestError(
        f"Invalid value: {kind!r}. Supported values are: 'json_object', 'json_schema', and 'text'.", "response_format.type"
    )


def parse_tools(tools: object, tool_choice: object) -> tuple[tuple[ToolSpec, ...], ToolChoice]:
    """The offered tools and the checked ``tool_choice``; raises `StructuredRequestError`."""
    if tools is None or tools == []:
        if tool_choice is not None:
            raise StructuredRequestError(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.", "tool_choice"
            )
        return (), None
    if not isinstance(tools, list):
        raise StructuredRequestError("Invalid type for 'tools': expected an array of objects.", "tools")
    specs = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise StructuredRequestError(f"Invalid value for 'tools[{index}].type': expected 'function'.", f"tools[{index}].type")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise StructuredRequestError(f"Missing required parameter: 'tools[{index}].function.name'.", f"tools[{index}].function.name")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise StructuredRequestError(f"Invalid type for 'tools[{index}].function.parameters': expected an object.", f"tools[{index}].function.parameters")
        specs.append(ToolSpec(function["name"], parameters))
    if tool_choice is None or tool_choice in ("none", "auto", "required"):
        return tuple(specs), tool_choice
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise StructuredRequestError("Invalid value for 'tool_choice': expected {'type': 'function', 'function': {'name': ...}}.", "tool_choice")
        if name not in {spec.name for spec in specs}:
            raise StructuredRequestError(f"Invalid value for 'tool_choice': no function named '{name}' was specified in the 'tools' parameter.", "tool_choice")
        return tuple(specs), tool_choice
    raise StructuredRequestError(
        f"Invalid value for 'tool_choice': {tool_choice!r}. Supported values are: 'none', 'auto', 'required' or a function.", "tool_choice"
    )


def choose_tool(tools: tuple[ToolSpec, ...], tool_choice: ToolChoice, messages: Messages) -> ToolSpec | None:
    """The tool to call for this request, or None for an ordinary answer (see the module docstring)."""
    if not tools or tool_choice == "none":
        return None
    if isinstance(tool_choice, Mapping):
        function = tool_choice["function"]
        assert isinstance(function, Mapping)  # parse_tools checked it
        name = function["name"]
        return next(spec for spec in tools if spec.name == name)
    if tool_choice != "required" and messages and isinstance(messages[-1], dict) and messages[-1].get("role") in ("tool", "function"):
        return None
    return tools[0]


# -- answers ----------------------------------------------------------------


def json_answer(messages: Messages, response_format: ResponseFormat, seed: int) -> str:
    """The JSON text answering ``messages`` in ``response_format``."""
    if response_format.type == "json_schema":
        value = instance_for_schema(response_format.schema, messages, seed, salt=response_format.name or "")
    else:
        labels = detect_labels(messages)
        if labels is not None:
            value = {"label": classify_messages(messages, labels, seed), "summary": summary_sentence(messages, seed)}
        else:
            value = {"summary": summary_sentence(messages, seed), "keywords": top_keywords(messages, 3)}
    return orjson.dumps(value).decode()


def tool_arguments(tool: ToolSpec, messages: Messages, seed: int) -> str:
    """The JSON arguments string of a call of ``tool``."""
    parameters: Schema = tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
    return orjson.dumps(instance_for_schema(parameters, messages, seed, salt="tool:" + tool.name)).decode()


def tool_call_id(tool: ToolSpec, arguments: str, messages: Messages, seed: int) -> str:
    """A deterministic OpenAI-style tool call id (``call_`` and 24 characters)."""
    h = hashlib.blake2b(digest_size=12, person=b"batchrun-call")
    for part in (str(seed), tool.name, arguments, current_turn_text(messages)):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return "call_" + h.hexdigest()


# -- schema instances -----------------------------------------------------


class _Builder:
    """Builds one instance; holds what every node needs (root, text, seed)."""

    def __init__(self, root: Schema, messages: Messages, seed: int, salt: str) -> None:
        self.root = root
        self.messages = messages
        self.seed = seed
        self.salt = salt
        self.text = current_turn_text(messages)
        self._summary: str | None = None
        self._keywords: list[str] | None = None

    # deterministic choices
    def unit(self, path: str) -> float:
        h = hashlib.blake2b(digest_size=8, person=b"batchrun-schema")
        h.update(f"{self.seed}\0{self.salt}\0{path}\0".encode("utf-8", "surrogatepass"))
        h.update(self.text.encode("utf-8", "surrogatepass"))
        return int.from_bytes(h.digest(), "little") / 2.0**64

    def pick(self, options: Sequence[T], path: str) -> T:
        """One of ``options``; items of an array (paths ending in /<index>) rotate through them."""
        start = int(self.unit(path.rpartition("/")[0] if _is_item_path(path) else path) * len(options))
        return options[(start + _item_index(path)) % len(options)]

    def digest16(self, path: str) -> bytes:
        h = hashlib.blake2b(digest_size=16, person=b"batchrun-schema")
        h.update(f"{self.seed}\0{self.salt}\0{path}\0".encode("utf-8", "surrogatepass"))
        h.update(self.text.encode("utf-8", "surrogatepass"))
        return h.digest()

    @property
    def summary(self) -> str:
        if self._summary is None:
            self._summary = summary_sentence(self.messages, self.seed)
        return self._summary

    @property
    def keywords(self) -> list[str]:
        if self._keywords is None:
            self._keywords = top_keywords(self.messages, 6) or ["request"]
        return self._keywords

    # schema plumbing
    def resolve(self, schema: Schema, depth: int) -> Schema:
        seen = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            target = _resolve_pointer(self.root, schema["$ref"])
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings} if isinstance(target, dict) and siblings else target
            seen += 1
            if seen > HARD_DEPTH:
                return {}
        if isinstance(schema, dict) and isinstance(schema.get("allOf"), list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self.resolve(part, depth)
                if isinstance(part, dict):
                    merged = _merge(merged, part)
            schema = merged
        return schema

    def build(self, schema: Schema, path: str, name: str, depth: int) -> object:
        if depth > HARD_DEPTH:
            return None
        schema = self.resolve(schema, depth)
        if schema is True or schema is None:
            schema = {}
        if schema is False:
            return None
        if not isinstance(schema, dict):
            return None
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.enum_value(schema["enum"], path)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                option = options[0]
                if depth >= MAX_DEPTH:
                    option = next((o for o in options if _is_null_schema(self.resolve(o, depth))), option)
                base = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
                resolved = self.resolve(option, depth)
                if isinstance(resolved, dict) and base:
                    resolved = _merge(base, resolved)
                return self.build(resolved, path, name, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"]
            if depth >= MAX_DEPTH and "null" in kind:
                return None
            kind = non_null[0] if non_null else "null"
        if kind is None:
            if "properties" in schema or "required" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                kind = "string"
        if kind == "object":
            return self.object_value(schema, path, depth)
        if kind == "array":
            return self.array_value(schema, path, name, depth)
        if kind == "string":
            return self.string_value(schema, path, name)
        if kind == "integer":
            return self.integer_value(schema, path)
        if kind == "number":
            return self.number_value(schema, path)
        if kind == "boolean":
            return self.unit(path) < 0.5
        return None

    # values
    def enum_value(self, values: list[object], path: str, exclude: tuple[object, ...] = ()) -> object:
        candidates = [v for v in values if v not in exclude] or list(values)
        label_values: dict[str, str] = {}
        for value in candidates:
            if isinstance(value, str) and value.strip().lower() in KNOWN_LABELS:
                label_values.setdefault(value.strip().lower(), value)
        if len(label_values) >= 2:
            label = classify_messages(self.messages, list(label_values), self.seed)
            return label_values.get(label, candidates[0])
        return self.pick(candidates, path)

    def object_value(self, schema: Mapping[str, object], path: str, depth: int) -> dict[str, object]:
        given_properties, given_required = schema.get("properties"), schema.get("required")
        properties = given_properties if isinstance(given_properties, dict) else {}
        required = [r for r in given_required if isinstance(r, str)] if isinstance(given_required, list) else []
        names = list(properties)
        if depth >= MAX_DEPTH:
            names = [n for n in names if n in required]
        out: dict[str, object] = {}
        for prop in names:
            out[prop] = self.build(properties[prop], f"{path}/{prop}", prop, depth + 1)
        extra = schema.get("additionalProperties")
        for prop in required:
            if prop not in out:
                sub = extra if isinstance(extra, dict) else {"type": "string"}
                out[prop] = self.build(sub, f"{path}/{prop}", prop, depth + 1)
        return out

    def array_value(self, schema: Mapping[str, object], path: str, name: str, depth: int) -> list[object]:
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, schema.get("additionalItems")
        min_items = _int_or(schema.get("minItems"), 0)
        max_items = _int_or(schema.get("maxItems"), None)
        if isinstance(prefix, list) and prefix:
            out = [self.build(sub, f"{path}/{i}", name, depth + 1) for i, sub in enumerate(prefix)]
            if max_items is not None:
                out = out[:max_items]
            i = len(out)
            while len(out) < min_items and isinstance(items, dict):
                out.append(self.build(items, f"{path}/{i}", name, depth + 1))
                i += 1
            return out
        resolved = self.resolve(items, depth) if items is not None else {}
        enum = resolved.get("enum") if isinstance(resolved, dict) else None
        if depth >= MAX_DEPTH:
            count = min_items
        else:  # fewer items deeper down, so recursive schemas stay small
            count = max(min_items, 1 if enum or depth >= MAX_DEPTH // 2 else 2)
        if max_items is not None:
            count = min(count, max_items)
        if isinstance(enum, list) and enum and schema.get("uniqueItems"):
            chosen: list[object] = []
            for i in range(min(count, len(enum))):
                chosen.append(self.enum_value(enum, f"{path}/{i}", exclude=tuple(chosen)))
            return chosen
        singular = name[:-1] if name.endswith("s") else name
        return [self.build(resolved, f"{path}/{i}", singular or name, depth + 1) for i in range(count)]

    def string_value(self, schema: Mapping[str, object], path: str, name: str) -> str:
        fmt = schema.get("format")
        u = self.unit(path)
        if fmt == "date":
            value = f"2024-{1 + int(u * 12):02d}-{1 + int(u * 977) % 28:02d}"
        elif fmt == "date-time":
            value = f"2024-{1 + int(u * 12):02d}-{1 + int(u * 977) % 28:02d}T{int(u * 9973) % 24:02d}:{int(u * 7919) % 60:02d}:00Z"
        elif fmt == "time":
            value = f"{int(u * 9973) % 24:02d}:{int(u * 7919) % 60:02d}:00Z"
        elif fmt == "email":
            value = f"{self.pick(self.keywords, path)}@example.com"
        elif fmt in ("uri", "url", "iri"):
            value = f"https://example.com/{self.pick(self.keywords, path)}"
        elif fmt == "uuid":
            value = str(uuid.UUID(bytes=self.digest16(path), version=4))
        elif any(word in name.lower() for word in _TEXT_PROPERTY_WORDS):
            value = self.summary
        else:
            value = self.pick(self.keywords, path)
        min_length = _int_or(schema.get("minLength"), 0)
        max_length = _int_or(schema.get("maxLength"), None)
        if len(value) < min_length:
            filler = " ".join([value, *self.keywords])
            while len(filler) < min_length:
                filler += " " + filler
            value = filler[:min_length]
        if max_length is not None and len(value) > max_length:
            value = value[:max_length]
        return value

    def integer_value(self, schema: Mapping[str, object], path: str) -> int:
        lo, hi, _, _ = _bounds(schema, integer=True)
        if lo is None:
            lo, hi = (0, 10) if hi is None else (min(0, hi), hi)
        elif hi is None:
            hi = lo + 10
        if lo > hi:  # an unsatisfiable schema: answer something close
            return int(lo)
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool) and step > 0:
            first = -(-lo // step)
            last = hi // step
            if last < first:
                return int(first * step)
            return int(step * (first + int(self.unit(path) * (last - first + 1))))
        return int(lo + int(self.unit(path) * (hi - lo + 1)))

    def number_value(self, schema: Mapping[str, object], path: str) -> float | int:
        lo, hi, lo_open, hi_open = _bounds(schema, integer=False)
        if lo is None:
            lo, hi = (0.0, 1.0) if hi is None else (0.0 if hi > 0 else hi - 1.0, hi)
        elif hi is None:
            hi = lo + 10.0
        step = schema.get("multipleOf")
        if _is_number(step) and step > 0:
            first = math.ceil(lo / step)
            last = math.floor(hi / step)
            if lo_open and first * step <= lo:
                first += 1
            if hi_open and last * step >= hi:
                last -= 1
            k = first + int(self.unit(path) * (last - first + 1)) if last >= first else first
            return k * step
        value = round(lo + self.unit(path) * (hi - lo), 2)
        if value < lo or value > hi or (lo_open and value <= lo) or (hi_open and value >= hi):
            value = (lo + hi) / 2.0
        return value


def instance_for_schema(schema: Schema, messages: Messages, seed: int, salt: str = "") -> object:
    """A deterministic value that validates against ``schema`` (see the module docstring)."""
    builder = _Builder(schema, list(messages or []), seed, salt)
    return builder.build(schema, "#", "", 0)


# -- helpers -----------------------------------------------------------------


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_item_path(path: str) -> bool:
    return path.rpartition("/")[2].isdigit()


def _item_index(path: str) -> int:
    last = path.rpartition("/")[2]
    return int(last) if last.isdigit() else 0


def _int_or(value: object, default: D) -> int | D:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _is_null_schema(schema: Schema) -> bool:
    return isinstance(schema, dict) and (schema.get("type") == "null" or schema.get("const", 0) is None)


def _bounds(schema: Mapping[str, object], integer: bool) -> tuple[float | None, float | None, bool, bool]:
    """(lo, hi, lo_open, hi_open) from minimum/maximum/exclusive*; None where unbounded.

    For integers the bounds are made inclusive (and the open flags False).
    """
    minimum, maximum = schema.get("minimum"), schema.get("maximum")
    lo = minimum if _is_number(minimum) else None
    hi = maximum if _is_number(maximum) else None
    lo_open = hi_open = False
    ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_lo is True:  # draft 4: a flag on minimum
        lo_open = lo is not None
    elif _is_number(ex_lo) and (lo is None or ex_lo >= lo):
        lo, lo_open = ex_lo, True
    if ex_hi is True:
        hi_open = hi is not None
    elif _is_number(ex_hi) and (hi is None or ex_hi <= hi):
        hi, hi_open = ex_hi, True
    if integer:
        if lo is not None:
            lo = math.floor(lo) + 1 if lo_open else math.ceil(lo)
        if hi is not None:
            hi = math.ceil(hi) - 1 if hi_open else math.floor(hi)
        return lo, hi, False, False
    return lo, hi, lo_open, hi_open


def _merge(base: Mapping[str, object], extra: Mapping[str, object]) -> dict[str, object]:
    """Merge two object schemas (properties and required united; other keys: ``extra`` wins)."""
    out = {**base, **extra}
    # The request's JSON as it is: a truthy "properties" that is not an object (or "required" that is
    # not iterable) raises TypeError, answered with a 500 like any simulator error.
    if isinstance(base.get("properties"), dict) or isinstance(extra.get("properties"), dict):
        out["properties"] = {**cast(Mapping[str, object], base.get("properties") or {}),
                             **cast(Mapping[str, object], extra.get("properties") or {})}
    if isinstance(base.get("required"), list) or isinstance(extra.get("required"), list):
        out["required"] = list(dict.fromkeys([*cast(Iterable[object], base.get("required") or []),
                                              *cast(Iterable[object], extra.get("required") or [])]))
    return out


def _resolve_pointer(root: Schema, ref: str) -> Schema:
    """The schema a local ``$ref`` ("#/...") points to; ``{}`` if it cannot be resolved."""
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref[1:].split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return {}
    return node
