"""Small frozen records passed between the layers.

    Ticket      one input line: its id, the parsed JSON object, its line number
    Usage       token counts reported by the provider (or estimated, see
                Completion.usage_source), every kind litellm normalizes: cached
                prompt tokens, cache writes, reasoning tokens, audio and image
                tokens (None: the provider did not say); `usage_from_provider`
                reads them from litellm's usage object or an OpenAI-shaped dict
    ToolCall    one tool call of an answer: name and raw arguments text
    Completion  what one successful provider call returned (or a reused
                answer, `cache_hit`)
    Outcome     the final fate of one ticket in this run (a success or a
                terminal failure), with timing and attempts, and for jobs with
                labels, a JSON schema or tools what the output check
                extracted; it knows how to turn itself into one checkpoint line

    KindTotals  token kinds, prompt-cache savings and tiers summed over lines
                (status, serve, report): `add(line_money(line))`, `as_dict()`
    LineMoney   what one checkpoint line says was spent and used (`line_money`):
                the one reader of cost_usd, rejected_cost_usd, unpriced, cache_hit,
                cost_saved_usd, tokens by kind, the service tier and what prompt
                caching saved, and requests (attempts, and the upstream requests a
                LiteLLM proxy reported), for resume, grading, status, serve and export

Where a line's cost came from is `cost_source` (COST_SOURCES): "price_map" (litellm's
local price map), "endpoint" (the endpoint reported it: a LiteLLM proxy's
x-litellm-response-cost, which litellm turns into response_cost), "job_prices",
"estimated" (the provider sent no usage: tokens counted by batchrun) or "cache" (a
reused answer: cost 0); null when the line has no cost. `cost_status` says whether
and why (litellm, job_prices, job_prices_cached_price_assumed, estimated,
unpriced_model, no_usage, cache_hit, batch prices) as before.

The JSON shape of a checkpoint line is defined here and nowhere else
(`Outcome.to_line` writes it, `line_money` reads its money), so results.jsonl
and errors.jsonl stay consistent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

__all__ = ["COST_SOURCES", "Completion", "Fields", "KindTotals", "Line", "LineMoney", "Outcome", "Ticket", "ToolCall",
           "Usage", "line_money", "line_time", "usage_from_provider"]

#: where a line's cost came from (module docstring)
COST_SOURCES = ("price_map", "endpoint", "job_prices", "estimated", "cache")

#: One input line's JSON object (a CSV, TSV or Parquet row as a dict): what prompt templates and
#: routes read. Its values are whatever the input holds (any JSON value).
Fields = Mapping[str, Any]
#: One line of a run directory's JSONL files as a JSON object: a checkpoint line (Outcome.to_line
#: writes it, line_money reads its money), a batch part's request, output or failure line. Lines are
#: read back from disk, where anything may have been written: readers check each value they use.
Line = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ticket:
    id: str  # the value of the job's id field, as a string
    fields: Fields  # the whole parsed JSON object
    line: int  # 1-based line number in the input file


#: Kinds of tokens a line's usage always names (null: the provider did not say) ...
USAGE_KINDS = ("cached_tokens", "cache_write_tokens", "reasoning_tokens")
#: ... and those it names only when the provider said them.
MODALITY_KINDS = ("prompt_audio_tokens", "prompt_image_tokens", "completion_audio_tokens", "completion_image_tokens")


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int  # every prompt token, the cached and written ones included (OpenAI's and litellm's sense)
    completion_tokens: int  # every completion token, reasoning included
    total_tokens: int
    cached_tokens: int | None = None  # prompt tokens read from the provider's prompt cache
    cache_write_tokens: int | None = None  # prompt tokens written to it (Anthropic's cache_creation_input_tokens)
    reasoning_tokens: int | None = None  # completion tokens spent reasoning (billed as output)
    prompt_audio_tokens: int | None = None
    prompt_image_tokens: int | None = None
    completion_audio_tokens: int | None = None
    completion_image_tokens: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }
        for name in MODALITY_KINDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Usage":
        """A Usage from `as_dict`'s shape (a stored answer, a frame); unknown keys are ignored."""
        return cls(**{name: data[name] for name in _USAGE_FIELDS if name in data})

    @property
    def cache_reported(self) -> bool:
        """Whether the provider said anything about its prompt cache for this answer."""
        return self.cached_tokens is not None or self.cache_write_tokens is not None

    @property
    def uncached_prompt_tokens(self) -> int:
        """Prompt tokens billed at the plain input price: neither read from nor written to a cache."""
        return max(self.prompt_tokens - (self.cached_tokens or 0) - (self.cache_write_tokens or 0), 0)


_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens", *USAGE_KINDS, *MODALITY_KINDS)


def _field(source: Any, name: str) -> Any:
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def _count(value: Any) -> int | None:
    """A token count as the provider sent it: a whole number >= 0, else None (not said)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        return None
    return int(value) if float(value).is_integer() else None


def usage_from_provider(raw: Any) -> Usage | None:
    """The Usage in a provider's usage block (litellm's Usage object or an OpenAI-shaped dict,
    with Anthropic's cache_read_input_tokens / cache_creation_input_tokens as a LiteLLM proxy
    passes them), or None when it has no total_tokens. A kind the provider did not say is None."""
    if raw is None or _field(raw, "total_tokens") is None:
        return None
    prompt_details = _field(raw, "prompt_tokens_details")
    completion_details = _field(raw, "completion_tokens_details")
    cached = _count(_field(prompt_details, "cached_tokens"))
    if cached is None:
        cached = _count(_field(raw, "cache_read_input_tokens"))
    written = _count(_field(prompt_details, "cache_write_tokens"))
    if written is None:
        written = _count(_field(prompt_details, "cache_creation_tokens"))
    if written is None:
        written = _count(_field(raw, "cache_creation_input_tokens"))
    return Usage(
        prompt_tokens=_count(_field(raw, "prompt_tokens")) or 0,
        completion_tokens=_count(_field(raw, "completion_tokens")) or 0,
        total_tokens=_count(_field(raw, "total_tokens")) or 0,
        cached_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=_count(_field(completion_details, "reasoning_tokens")),
        prompt_audio_tokens=_count(_field(prompt_details, "audio_tokens")),
        prompt_image_tokens=_count(_field(prompt_details, "image_tokens")),
        completion_audio_tokens=_count(_field(completion_details, "audio_tokens")),
        completion_image_tokens=_count(_field(completion_details, "image_tokens")),
    )


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
    # "litellm", "job_prices", "job_prices_cached_price_assumed" (cached or written tokens at the
    # input price: [prices] has no cached price), "estimated", "unpriced_model" or "no_usage"
    cost_status: str
    tool_calls: tuple[ToolCall, ...] = ()  # the message's tool calls, in order
    ttft_ms: float | None = None  # streamed: request start to the first content or tool-call delta
    usage_source: str = "provider"  # "provider", or "estimated" (litellm.token_counter: the provider sent none)
    rate_limit_headers: Mapping[str, str] | None = None  # x-ratelimit-* as the provider sent them (not written)
    # A reused answer (the response cache, or an identical request of this run in flight): no request
    # left the machine for it, so cost_usd is 0 and cost_saved_usd what it cost when it was obtained
    # (None: that cost was unknown).
    cache_hit: bool = False
    cost_saved_usd: float | None = None
    service_tier: str | None = None  # the tier the provider says it served ("default", "flex", ...); None: not said
    # what prompt caching saved on this answer: its cached and written tokens at the plain input
    # price minus what they cost (litellm's prices, or [prices]); None: unknown or nothing cached
    prompt_cache_saved_usd: float | None = None
    cost_source: str | None = None  # one of COST_SOURCES, None when cost_usd is None
    # The requests the endpoint says it sent upstream for this answer (a LiteLLM proxy: 1 +
    # x-litellm-attempted-retries + x-litellm-attempted-fallbacks); None: it did not say.
    upstream_attempts: int | None = None
    # Usage the provider reported but that cannot be believed (providers/usage_checks.py): its
    # counts as they came, and what is wrong with them; `usage` is then an estimate (or None).
    usage_reported: Mapping[str, object] | None = None
    usage_problem: str | None = None


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
    structured: Mapping[str, object] | None = None
    rejected_outputs: int = 0  # answers received but rejected by the output check
    rejected_cost_usd: float = 0.0  # what those rejected answers cost (priced ones)
    rejected_unpriced: int = 0  # of the rejected answers, those whose cost is unknown (not in rejected_cost_usd)
    model_key: str | None = None  # multi-model jobs: the [[models]] name that answered (or failed last)
    route: str | None = None  # routed jobs: the rule that chose the model
    attempts_by_model: Mapping[str, int] | None = None  # with fallbacks: requests sent to each model
    # every attempt of this run that did not give the answer kept, in order: {"attempt", "at",
    # "kind", "status_code", "latency_ms", "message", "model_key", "cost_usd"}; written as the line's
    # "failed_attempts" when there was one (`batchrun show` lists them)
    failed_attempts: tuple[Mapping[str, Any], ...] = ()
    flex_fallback: bool = False  # answered at the standard tier after flex 429s (flex_fallback_after)
    # Upstream requests the endpoint reported for this ticket's attempts, summed (None: no answer said);
    # upstream_unreported: attempts whose answer did not say (an error answer of a LiteLLM proxy).
    upstream_attempts: int | None = None
    upstream_unreported: int = 0

    @property
    def ok(self) -> bool:
        return self.completion is not None

    @property
    def spent_usd(self) -> float:
        """USD this ticket cost in this run: the accepted answer plus rejected ones."""
        cost = self.completion.cost_usd if self.completion is not None else None
        return (cost or 0.0) + self.rejected_cost_usd

    def _add_upstream(self, line: Line) -> None:
        if self.upstream_attempts is not None:
            line["upstream_attempts"] = self.upstream_attempts
            if self.upstream_unreported:
                line["upstream_unreported"] = self.upstream_unreported

    def _add_rejected(self, line: Line) -> None:
        if self.rejected_outputs:
            line["rejected_outputs"] = self.rejected_outputs
            line["rejected_cost_usd"] = self.rejected_cost_usd
            if self.rejected_unpriced:
                line["rejected_unpriced"] = self.rejected_unpriced

    def _add_routing(self, line: Line) -> None:
        if self.model_key is not None:
            line["model_key"] = self.model_key
        if self.route is not None:
            line["route"] = self.route
        if self.attempts_by_model is not None:
            line["attempts_by_model"] = dict(self.attempts_by_model)
        if self.failed_attempts:
            line["failed_attempts"] = [dict(attempt) for attempt in self.failed_attempts]

    def to_line(self, max_output_bytes: int | None = None) -> Line:
        """The JSON object written to results.jsonl (ok) or errors.jsonl. An answer longer than
        `max_output_bytes` (UTF-8) is stored cut there, on a character, and the line says so:
        "output_cut": {"bytes": its size, "kept_bytes": what the line keeps}."""
        if self.completion is not None:
            c = self.completion
            latency = self.latency_ms or 0.0
            line: Line = {
                "id": self.ticket_id,
                "output": c.text,
            }
            cut = None
            if max_output_bytes is not None and len(c.text) * 4 > max_output_bytes:
                raw = c.text.encode("utf-8", "surrogatepass")
                if len(raw) > max_output_bytes:
                    kept = raw[:max_output_bytes].decode("utf-8", "ignore")
                    line["output"] = kept
                    cut = {"bytes": len(raw), "kept_bytes": len(kept.encode("utf-8", "surrogatepass"))}
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
                "service_tier": None if c.cache_hit else c.service_tier,  # a reused answer was served by nobody now
                "cost_source": c.cost_source if c.cost_usd is not None else None,
            })
            if cut is not None:
                line["output_cut"] = cut
            if c.usage_problem is not None:
                line["usage_reported"] = dict(c.usage_reported or {})
                line["usage_problem"] = c.usage_problem
            if c.usage is not None and not c.cache_hit and (c.usage.cached_tokens or c.usage.cache_write_tokens):
                line["prompt_cache_saved_usd"] = c.prompt_cache_saved_usd
            if self.flex_fallback:
                line["flex_fallback"] = True
            if c.cache_hit:
                line["cache_hit"] = True
                line["cost_saved_usd"] = c.cost_saved_usd
            line.update({
                "latency_ms": round(latency, 3),
                "ttft_ms": None if c.ttft_ms is None else round(c.ttft_ms, 3),
                "output_tokens_per_s": (round(c.usage.completion_tokens * 1000.0 / latency, 1)
                                        if c.usage is not None and latency > 0 else None),
                "elapsed_ms": round(self.elapsed_ms, 3),
                "attempts": self.attempts,
            })
            self._add_upstream(line)
            self._add_rejected(line)
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
        self._add_upstream(line)
        self._add_rejected(line)
        self._add_routing(line)
        line["started_at"] = self.started_at
        line["time"] = self.finished_at
        line["run"] = self.run
        return line


def line_time(value: object) -> float | None:
    """A line's timestamp (started_at, finished_at, time: ISO-8601) as seconds since the epoch, or None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _amount(value: object) -> float | None:
    """A line's number of dollars or tokens: a real int or float, not negative (never a bool, NaN,
    infinity or a negative number: budgets and totals never go down)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if 0 <= number < float("inf") else None


@dataclass(frozen=True, slots=True)
class LineMoney:
    """What one checkpoint line (results.jsonl or errors.jsonl) says was spent and used.

    `spent_usd` is what the line's answers cost: the accepted answer's cost_usd
    (a result; errors lines carry none) plus rejected_cost_usd (answers paid for
    and turned down). A cost the line does not show as a number (or shows as a
    negative one: an older batchrun believed negative usage) is not spent money
    seen: `unpriced` says a result's cost is unknown. Negative token counts count
    as none. A reused answer
    (`cache_hit`) used no tokens; what it saved is `cost_saved_usd`."""

    cost_usd: float | None = None  # the accepted answer's cost, when the line shows one
    unpriced: bool = False  # a result whose cost_usd is null (or not a number): not seen
    rejected_cost_usd: float = 0.0
    rejected_unpriced: int = 0  # rejected answers whose cost is unknown: not in rejected_cost_usd
    cache_hit: bool = False
    cost_saved_usd: float = 0.0
    prompt_tokens: int = 0  # tokens the provider counted for the accepted answer (0 for a cache hit)
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it
    reasoning_tokens: int = 0  # of completion_tokens
    cache_reported: bool = False  # the provider said how many prompt tokens it read from its cache (0 included)
    prompt_cache_saved_usd: float = 0.0  # what prompt caching saved on the accepted answer
    service_tier: str | None = None  # the tier the provider says it served
    requests: int = 0  # requests batchrun sent for the line (its attempts)
    upstream_requests: int | None = None  # what the endpoint reported it sent upstream for them (None: nothing)
    upstream_unreported: int = 0  # of the line's attempts, those whose answer did not say

    @property
    def spent_usd(self) -> float:
        return (self.cost_usd or 0.0) + self.rejected_cost_usd


def line_money(line: Mapping[str, object]) -> LineMoney:
    """The money and tokens of a checkpoint line (LineMoney); anything not a number counts as absent."""
    cost = _amount(line.get("cost_usd"))
    hit = line.get("cache_hit") is True
    usage = line.get("usage")
    tokens = [0] * 6
    reported = False
    if isinstance(usage, Mapping) and not hit:
        tokens = [int(_amount(usage.get(key)) or 0)
                  for key in ("prompt_tokens", "completion_tokens", "total_tokens", *USAGE_KINDS)]
        reported = _amount(usage.get("cached_tokens")) is not None
    tier = line.get("service_tier")
    upstream = _amount(line.get("upstream_attempts"))
    return LineMoney(cost_usd=cost, unpriced=cost is None and "cost_usd" in line,
                     rejected_cost_usd=_amount(line.get("rejected_cost_usd")) or 0.0,
                     rejected_unpriced=int(_amount(line.get("rejected_unpriced")) or 0), cache_hit=hit,
                     cost_saved_usd=(_amount(line.get("cost_saved_usd")) or 0.0) if hit else 0.0,
                     prompt_tokens=tokens[0], completion_tokens=tokens[1], total_tokens=tokens[2],
                     cached_tokens=tokens[3], cache_write_tokens=tokens[4], reasoning_tokens=tokens[5],
                     cache_reported=reported,
                     prompt_cache_saved_usd=(_amount(line.get("prompt_cache_saved_usd")) or 0.0) if not hit else 0.0,
                     service_tier=tier if isinstance(tier, str) and not hit else None,
                     requests=max(int(_amount(line.get("attempts")) or 0), 0),
                     upstream_requests=None if upstream is None else max(int(upstream), 0),
                     upstream_unreported=max(int(_amount(line.get("upstream_unreported")) or 0), 0))


@dataclass(slots=True)
class KindTotals:
    """Token kinds, what prompt caching saved and the tiers that answered, over many lines (status,
    serve, report): the cached share of input tokens is over the results whose provider said how
    many prompt tokens it read from its cache."""

    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_reported_prompt_tokens: int = 0  # prompt tokens of the results whose provider said what it cached
    prompt_cache_saved_usd: float = 0.0
    tiers: dict[str, int] | None = None  # results by the tier that answered them

    def add(self, money: LineMoney) -> None:
        self.cached_tokens += money.cached_tokens
        self.cache_write_tokens += money.cache_write_tokens
        self.reasoning_tokens += money.reasoning_tokens
        if money.cache_reported:
            self.cache_reported_prompt_tokens += money.prompt_tokens
        self.prompt_cache_saved_usd += money.prompt_cache_saved_usd
        if money.service_tier is not None:
            tiers = self.tiers if self.tiers is not None else {}
            tiers[money.service_tier] = tiers.get(money.service_tier, 0) + 1
            self.tiers = tiers

    @property
    def cached_share(self) -> float | None:
        """cached / prompt tokens of the results whose provider said (None: none said)."""
        if not self.cache_reported_prompt_tokens:
            return None
        return round(self.cached_tokens / self.cache_reported_prompt_tokens, 4)

    def as_dict(self) -> dict[str, Any]:
        return {"cached_tokens": self.cached_tokens, "cache_write_tokens": self.cache_write_tokens,
                "reasoning_tokens": self.reasoning_tokens, "cached_share": self.cached_share,
                "prompt_cache_saved_usd": round(self.prompt_cache_saved_usd, 6),
                "service_tiers": dict(sorted((self.tiers or {}).items()))}
