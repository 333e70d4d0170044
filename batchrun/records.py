"""Small frozen records passed between the layers.

    Ticket      one input line: its id, the parsed JSON object, its line number
    Usage       token counts reported by the provider (or estimated, see
                Completion.usage_source)
    ToolCall    one tool call of an answer: name and raw arguments text
    Completion  what one successful provider call returned
    Outcome     the final fate of one ticket in this run (a success or a
                terminal failure), with timing and attempts, and for jobs with
                labels, a JSON schema or tools what the output check
                extracted; it knows how to turn itself into one checkpoint line

The JSON shape of a checkpoint line is defined here and nowhere else
(`Outcome.to_line`), so results.jsonl and errors.jsonl stay consistent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["Completion", "Outcome", "Ticket", "ToolCall", "Usage"]


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
class ToolCall:
    name: str  # the function the model called
    arguments: str  # its arguments as the model wrote them (JSON text, not yet parsed)
    id: str | None = None  # the provider's call id


@dataclass(frozen=True, slots=True)
class Completion:
    text: str  # the assistant message content ("" when the model sent none)
    finish_reason: str | None  # "stop", "length", "content_filter", "tool_calls", ...
    model: str | None  # the model name the provider reported
    usage: Usage | None  # None when the provider sent no usage (and none was estimated)
    cost_usd: float | None  # None when the price is unknown (see cost_status)
    cost_status: str  # "litellm", "job_prices", "estimated", "unpriced_model" or "no_usage"
    tool_calls: tuple[ToolCall, ...] = ()  # the message's tool calls, in order
    ttft_ms: float | None = None  # streamed: request start to the first content or tool-call delta
    usage_source: str = "provider"  # "provider", or "estimated" (litellm.token_counter: the provider sent none)
    rate_limit_headers: Mapping[str, str] | None = None  # x-ratelimit-* as the provider sent them (not written)


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
    # Output check (jobs with labels, json_schema or tools): on success, what
    # it extracted -- {"label": ...}, {"parsed": ...} or {"tool_calls": [...]}
    # -- merged into the result line after "output"; None for plain jobs.
    structured: Mapping[str, Any] | None = None
    rejected_outputs: int = 0  # answers received but rejected by the output check
    rejected_cost_usd: float = 0.0  # what those rejected answers cost (priced ones)
    model_key: str | None = None  # multi-model jobs: the [[models]] name that answered (or failed last)
    route: str | None = None  # routed jobs: the rule that chose the model
    attempts_by_model: Mapping[str, int] | None = None  # with fallbacks: requests sent to each model

    @property
    def ok(self) -> bool:
        return self.completion is not None

    @property
    def spent_usd(self) -> float:
        """USD this ticket cost in this run: the accepted answer plus rejected ones."""
        cost = self.completion.cost_usd if self.completion is not None else None
        return (cost or 0.0) + self.rejected_cost_usd

    def _add_routing(self, line: dict[str, Any]) -> None:
        if self.model_key is not None:
            line["model_key"] = self.model_key
        if self.route is not None:
            line["route"] = self.route
        if self.attempts_by_model is not None:
            line["attempts_by_model"] = dict(self.attempts_by_model)

    def to_line(self) -> dict[str, Any]:
        """The JSON object written to results.jsonl (ok) or errors.jsonl."""
        if self.completion is not None:
            c = self.completion
            latency = self.latency_ms or 0.0
            line: dict[str, Any] = {
                "id": self.ticket_id,
                "output": c.text,
            }
            if self.structured:
                line.update(self.structured)
            line.update({
                "finish_reason": c.finish_reason,
                "truncated": c.finish_reason == "length",
                "content_filtered": c.finish_reason == "content_filter",
                "model": c.model,
                "usage": c.usage.as_dict() if c.usage else None,
                "usage_source": c.usage_source if c.usage else None,
                "cost_usd": c.cost_usd,
                "cost_status": c.cost_status,
                "latency_ms": round(latency, 3),
                "ttft_ms": None if c.ttft_ms is None else round(c.ttft_ms, 3),
                "output_tokens_per_s": (round(c.usage.completion_tokens * 1000.0 / latency, 1)
                                        if c.usage is not None and latency > 0 else None),
                "elapsed_ms": round(self.elapsed_ms, 3),
                "attempts": self.attempts,
            })
            if self.rejected_outputs:
                line["rejected_outputs"] = self.rejected_outputs
                line["rejected_cost_usd"] = self.rejected_cost_usd
            self._add_routing(line)
            line["started_at"] = self.started_at
            line["finished_at"] = self.finished_at
            line["run"] = self.run
            return line
        line = {
            "id": self.ticket_id,
            "error_kind": self.error_kind,
            "error_type": self.error_type,
            "message": self.error_message,
            "status_code": self.status_code,
            "attempts": self.attempts,
        }
        if self.rejected_outputs:
            line["rejected_outputs"] = self.rejected_outputs
            line["rejected_cost_usd"] = self.rejected_cost_usd
        self._add_routing(line)
        line["started_at"] = self.started_at
        line["time"] = self.finished_at
        line["run"] = self.run
        return line
