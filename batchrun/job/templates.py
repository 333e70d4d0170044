"""Prompt templates: `{field}` and `{a.b}` placeholders filled with a ticket's values, as data.

    PromptTemplate          a template parsed once into literal and field segments
    render_messages(job, t) the chat messages of one ticket (system, then user)
"""

from __future__ import annotations

import re
import string
from typing import TYPE_CHECKING, Mapping

import orjson

from batchrun.records import Fields, Ticket

if TYPE_CHECKING:
    from batchrun.job.spec import JobSpec

_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*")

class MissingFieldError(KeyError):
    """A template placeholder names a field the ticket does not have."""


class PromptTemplate:
    """A `{field}` template parsed once into literal and field segments."""

    __slots__ = ("source", "_segments", "fields", "paths")

    def __init__(self, source: str) -> None:
        self.source = source
        segments: list[tuple[str, tuple[str, ...] | None]] = []
        fields: list[str] = []
        try:
            parsed = list(string.Formatter().parse(source))
        except ValueError as exc:  # unbalanced braces
            raise ValueError(f"{exc} (write {{{{ and }}}} for literal braces)") from None
        for literal, field, spec, conversion in parsed:
            if literal:
                segments.append((literal, None))
            if field is None:
                continue
            if spec or conversion or not _FIELD_PATH.fullmatch(field):
                raise ValueError(
                    f"placeholder {{{field}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}} is not a plain field name; "
                    "use {name} or {parent.child} (no format specs, indexes or conversions)"
                )
            segments.append(("", tuple(field.split("."))))
            fields.append(field)
        self._segments = tuple(segments)
        self.fields = tuple(dict.fromkeys(fields))
        self.paths = tuple(tuple(field.split(".")) for field in self.fields)

    def missing_field(self, values: Fields) -> str | None:
        """The first placeholder `values` cannot fill, or None (cheaper than render)."""
        for path in self.paths:
            value: object = values
            for key in path:
                if not (isinstance(value, dict) or isinstance(value, Mapping)) or key not in value:
                    return ".".join(path)
                value = value[key]
        return None

    def missing_field_of(self, field: str, values: Fields) -> bool:
        """Does `values` lack the placeholder `field` (one of `fields`)?"""
        value: object = values
        for key in field.split("."):
            if not isinstance(value, Mapping) or key not in value:
                return True
            value = value[key]
        return False

    def render(self, values: Fields) -> str:
        """Fill the placeholders from `values`; raises MissingFieldError."""
        out: list[str] = []
        for literal, path in self._segments:
            if path is None:
                out.append(literal)
                continue
            value: object = values
            for key in path:
                if not (isinstance(value, dict) or isinstance(value, Mapping)) or key not in value:
                    raise MissingFieldError(".".join(path))
                value = value[key]
            out.append(value if isinstance(value, str) else as_text(value))
        return "".join(out)


def as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def render_messages(job: JobSpec, ticket: Ticket) -> list[dict[str, str]]:
    """The chat messages for one ticket (ticket values inserted as data), or what the job's prompt
    callable (the Python API's prompt=) returns for a copy of its fields, checked."""
    if job.prompt_function is not None:
        return _checked_messages(job.prompt_function(dict(ticket.fields)), ticket.id)
    messages = []
    system = job.system_template
    if system is not None:
        messages.append({"role": "system", "content": system.render(ticket.fields)})
    user = job.user_template.render(ticket.fields)
    prefix = job.prompt.shared_prefix
    messages.append({"role": "user", "content": prefix + user if prefix else user})
    return messages


def _checked_messages(messages: object, ticket_id: str) -> list[dict[str, str]]:
    """A prompt callable's answer: a non-empty list of {"role": str, "content": str} dicts."""
    from batchrun.errors import JobSpecError

    if isinstance(messages, list) and messages and all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    raise JobSpecError(f"the prompt callable returned {type(messages).__name__} for ticket {ticket_id!r}: it must "
                       "return a non-empty list of {\"role\": str, \"content\": str} dicts")
