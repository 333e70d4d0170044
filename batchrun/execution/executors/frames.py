"""The frames between the coordinator and its worker processes or Ray actors.

A frame is a 4-byte big-endian length and an orjson object. Worker processes
carry them over the child's stdin (coordinator -> child) and a private copy of
its stdout (child -> coordinator; fd 1 itself is pointed at stderr so a stray
print cannot corrupt the stream); Ray actors inside batched push/pull calls.
Frames written in one turn of either side's event loop leave in one write;
records (Outcome, Usage) go on the wire as orjson writes dataclasses.

    coordinator -> child                    child -> coordinator
                                            {"t": "loaded", cpu_s}   (worker process: litellm imported)
    {"t": "init", job, provider, run,       {"t": "ready", cpu_s}    (provider: kwargs per model key)
     counting, reports_results,
     reports_answers}
    {"t": "ticket", id, messages, timeout,  {"t": "want", id, attempt, tokens, model}
     chain, route, counted}                  (Counting EACH_PERMIT, and retries under FIRST_AT_HANDOVER)
    {"t": "permit", id}                     {"t": "failed", id, attempt, error}
    {"t": "deny", id, error}                {"t": "answered", id, attempt, cost, usage, source, model}
     (the budget refused the attempt)        (when reports_answers: the coordinator holds a budget)
    {"t": "pause", seconds}                 {"t": "succeeded", id, attempt, latency_ms, usage, headers, model}
    {"t": "halt"}                            (when reports_results: the coordinator holds limits or AIMD)
     (a signal: no request starts; tickets  {"t": "unsent", id}      (counted at hand-over, never sent)
     waiting to retry end)                  {"t": "abandoned", id, attempts}  (halted: no outcome)
                                            {"t": "limiter_gone", error}      (Ray)
                                            {"t": "outcome", outcome}
    {"t": "end"}                            {"t": "ended", cpu_s}    (the run is over)

`cpu_s` is the child's CPU so far: the coordinator turns it into the start-up
CPU of a run and the run's CPU. What each frame does: remote.py (coordinator)
and worker_child.py (the other side).
"""

from __future__ import annotations

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

#: A frame's content: a JSON object (frames.py encodes records in it as orjson writes dataclasses).
Frame = dict[str, Any]


def wire_default(value: object) -> dict[object, object]:
    """orjson's fallback: any other Mapping (response headers) goes out as a plain object."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot send {type(value).__name__} to a worker process")


def encode(message: Frame) -> bytes:
    """One frame. Records (Outcome, Completion, ...) may be passed as they are: orjson writes a
    dataclass as the object `dataclasses.asdict` would give, without asdict's deep copies."""
    body = orjson.dumps(message, default=wire_default)
    return FRAME_LENGTH.pack(len(body)) + body


def decode_frames(buffer: bytearray) -> list[Frame]:
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


def completion_from_wire(data: Frame) -> Completion:
    data = dict(data)
    usage = data.pop("usage", None)
    tool_calls = tuple(ToolCall(**call) for call in data.pop("tool_calls", None) or ())
    return Completion(**data, usage=Usage.from_dict(usage) if usage else None, tool_calls=tool_calls)


def outcome_from_wire(data: Frame) -> Outcome:
    data = dict(data)
    completion = data.pop("completion", None)
    data["failed_attempts"] = tuple(data.get("failed_attempts") or ())
    return Outcome(**data, completion=completion_from_wire(completion) if completion else None)


def error_to_wire(error: RequestError) -> Frame:
    return {"kind": error.kind, "message": error.message, "status_code": error.status_code,
            "retry_after": error.retry_after, "error_type": error.error_type, "retryable": error.retryable}


def error_from_wire(data: Frame) -> RequestError:
    cls: type[RequestError]
    if data["kind"] in ("rate_limited", "resource_unavailable"):
        cls = RateLimitedError
    else:
        cls = RetryableError if data.get("retryable") else TerminalError
    return cls(data["message"], kind=data["kind"], status_code=data.get("status_code"),
               retry_after=data.get("retry_after"), error_type=data.get("error_type"))
