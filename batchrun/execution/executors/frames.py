"""TODO: from batchrun.workers."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, Mapping

import orjson

from batchrun.errors import (
    RateLimitedError,
    RequestError,
    RetryableError,
    TerminalError,
)
from batchrun.records import Completion, Outcome, ToolCall, Usage

FRAME_LENGTH = struct.Struct(">I")


def wire_default(value: Any) -> Any:
    """orjson's fallback: any other Mapping (response headers) goes out as a plain object."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot send {type(value).__name__} to a worker process")


def encode(message: dict[str, Any]) -> bytes:
    """One frame. Records (Outcome, Completion, ...) may be passed as they are: orjson writes a
    dataclass as the object `dataclasses.asdict` would give, without asdict's deep copies."""
    body = orjson.dumps(message, default=wire_default)
    return FRAME_LENGTH.pack(len(body)) + body


def decode_frames(buffer: bytearray) -> list[dict[str, Any]]:
    """Take every complete frame off the front of `buffer`; a partial one stays for the next read."""
    messages = []
    pos, end = 0, len(buffer)
    while end - pos >= 4:
        (length,) = FRAME_LENGTH.unpack_from(buffer, pos)
        if end - pos - 4 < length:
            break
        messages.append(orjson.loads(buffer[pos + 4:pos + 4 + length]))
        pos += 4 + length
    del buffer[:pos]
    return messages


def completion_from_wire(data: dict[str, Any]) -> Completion:
    data = dict(data)
    usage = data.pop("usage", None)
    tool_calls = tuple(ToolCall(**call) for call in data.pop("tool_calls", None) or ())
    return Completion(**data, usage=Usage(**usage) if usage else None, tool_calls=tool_calls)


def outcome_to_wire(outcome: Outcome) -> dict[str, Any]:
    """The wire form of an Outcome as a dict (`encode` writes the same for the record itself)."""
    return dataclasses.asdict(outcome)


def outcome_from_wire(data: dict[str, Any]) -> Outcome:
    data = dict(data)
    completion = data.pop("completion", None)
    return Outcome(**data, completion=completion_from_wire(completion) if completion else None)


def error_to_wire(error: RequestError) -> dict[str, Any]:
    return {"kind": error.kind, "message": error.message, "status_code": error.status_code,
            "retry_after": error.retry_after, "error_type": error.error_type, "retryable": error.retryable}


def error_from_wire(data: dict[str, Any]) -> RequestError:
    cls: type[RequestError]
    if data["kind"] == "rate_limited":
        cls = RateLimitedError
    else:
        cls = RetryableError if data.get("retryable") else TerminalError
    return cls(data["message"], kind=data["kind"], status_code=data.get("status_code"),
               retry_after=data.get("retry_after"), error_type=data.get("error_type"))
