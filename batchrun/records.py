"""Small frozen records passed between the layers.

    Ticket      one input line: its id, the parsed JSON object, its line number
    Usage       token counts reported by the provider
    Completion  what one successful provider call returned
    Outcome     the final fate of one ticket in this run (a success or a
                terminal failure), with timing and attempts; it knows how to
                turn itself into one checkpoint line

The JSON shape of a checkpoint line is defined here and nowhere else
(`Outcome.to_line`), so results.jsonl and errors.jsonl stay consistent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["Completion", "Outcome", "Ticket", "Usage"]


@dataclass(frozen=True, slots=True)
class Ticket:
    id: str  # the value of the job's id field, as a string
    fields: Mapping[str, Any]  # the whole parsed JSON object
    line: int  # 1-based line number in the input file


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class Completion:
    text: str  # the assistant message content ("" when the model sent none)
    finish_reason: str | None  # "stop", "length", "content_filter", ...
    model: str | None  # the model name the provider reported
    usage: Usage | None  # None when the provider sent no usage
    cost_usd: float | None  # None when the price is unknown (see cost_status)
    cost_status: str  # "litellm", "job_prices", "unpriced_model" or "no_usage"


@dataclass(frozen=True, slots=True)
class Outcome:
    ticket_id: str
    attempts: int  # requests sent for this ticket in this run
    started_at: str  # ISO-8601 UTC, first attempt
    finished_at: str  # ISO-8601 UTC, when the outcome was known
    elapsed_ms: float  # first attempt start to outcome, retries and waits included
    run: int  # which invocation of `batchrun run` on this run directory (1, 2, ...)
    completion: Completion | None = None  # set on success
    latency_ms: float | None = None  # duration of the successful attempt
    error_kind: str | None = None  # set on failure (see errors.py)
    error_type: str | None = None
    error_message: str | None = None  # already free of secrets
    status_code: int | None = None

    @property
    def ok(self) -> bool:
        return self.completion is not None

    def to_line(self) -> dict[str, Any]:
        """The JSON object written to results.jsonl (ok) or errors.jsonl."""
        if self.completion is not None:
            c = self.completion
            return {
                "id": self.ticket_id,
                "output": c.text,
                "finish_reason": c.finish_reason,
                "model": c.model,
                "usage": c.usage.as_dict() if c.usage else None,
                "cost_usd": c.cost_usd,
                "cost_status": c.cost_status,
                "latency_ms": round(self.latency_ms or 0.0, 3),
                "elapsed_ms": round(self.elapsed_ms, 3),
                "attempts": self.attempts,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "run": self.run,
            }
        return {
            "id": self.ticket_id,
            "error_kind": self.error_kind,
            "error_type": self.error_type,
            "message": self.error_message,
            "status_code": self.status_code,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "time": self.finished_at,
            "run": self.run,
        }
