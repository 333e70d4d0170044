"""LiteLLMProvider: one attempt of a request through litellm.acompletion, under batchrun's rules.

No retry inside litellm or the SDK (tenacity is the one retry layer), an
explicit timeout on every attempt, the API key per call and never in a message,
the cost litellm computed (job [prices] win; pricing.py prices what litellm did
not) or null with a status saying why, usage with every kind of token the
provider said (cached, cache writes, reasoning, audio, image; records.Usage)
and the service tier it says it served, what prompt caching saved, usage the
provider did not send counted and marked "estimated", usage it sent checked
before it is believed (usage_checks.py: negative, fractional or absurd counts
are estimated instead, the line keeps them), a stream that ends
without a finish_reason retried as `stream_cut`, JSON schemas and tools sent
where the model takes them, the service tier asked for (a request's own tier
wins: the flex fallback), prompt caching asked for (`prompt_cache`: Claude
models get cache_control on the system prompt and the job's shared prefix,
others a prompt_cache_key), the response cache read before the first attempt
and written after an accepted answer. The rules and why: docs/internals.md
("litellm: the rules").

    LiteLLMProvider    the Provider (seam.py) on litellm
    ProviderArgs       its arguments as plain data (they cross to worker processes and Ray actors)
    build_providers    one LiteLLMProvider per model key, from ProviderArgs

litellm's responses, stream wrappers and chunks are left untyped: they are litellm's objects, read
with getattr and checked where used.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from typing import Any, Callable, Mapping, Required, Sequence, TypedDict

from batchrun.errors import (
    InvalidResponseError,
    RequestError,
    RetryableError,
    redact_secrets,
)
from batchrun.job.sections import Params, PricesSpec
from batchrun.providers import tuning
from batchrun.providers.cache import ResponseCache
from batchrun.providers.error_mapping import (
    describe_body,
    provider_headers,
    translate_error,
    unusable_answer,
    upstream_attempts,
)
from batchrun.providers.litellm_setup import import_litellm, openai_transport
from batchrun.providers.pricing import Pricing
from batchrun.providers.seam import ChatRequest, CostBound, Provider, RequestOptions
from batchrun.providers.tuning import (
    INLINE_PREP_PROVIDERS,
)
from batchrun.providers.usage_checks import reported_counts, token_limit, usage_problem
from batchrun.records import Completion, ToolCall, Usage, usage_from_provider

TICKET_HEADER = "X-Batchrun-Ticket-Id"
#: max output tokens a budget assumes for a model litellm has no max_output_tokens for (and no max_tokens)
DEFAULT_MAX_OUTPUT_TOKENS = 4096
#: the cache_control Claude models get on what `prompt_cache` marks
EPHEMERAL = {"type": "ephemeral"}


class ProviderArgs(TypedDict, total=False):
    """LiteLLMProvider's arguments for one model key as plain data (launcher.provider_targets
    builds them; a missing one is the provider's default)."""

    model: Required[str]
    api_base: str | None
    api_key: str | None
    params: Params
    prices: dict[str, float | None] | None  # PricesSpec.model_dump()
    max_connections: int | None
    cache: dict[str, str] | None  # the response cache's location (JobSpec.cache_settings)
    service_tier: str | None  # what a request costs (docs/job-file.md, "Service tiers and prompt caching")
    fallback_tier: str | None
    prompt_cache: bool
    cache_prefix: str | None
    prompt_cache_key: str | None
    price_model: str | None  # the model litellm prices (a simulated run: the named model)


def _usage_of(response: Any) -> Usage | None:
    return usage_from_provider(getattr(response, "usage", None))


def served_tier_of(response: Any) -> str | None:
    """The tier the response says it was served at (OpenAI's `service_tier`), or None."""
    tier = getattr(response, "service_tier", None)
    return tier if isinstance(tier, str) and 0 < len(tier) <= 32 else None


def is_claude(model: str) -> bool:
    """A Claude model (Anthropic's, Bedrock's, Vertex's, or one a proxy or the simulator serves)."""
    return "claude" in model.rsplit("/", 1)[-1].lower()


def _tool_calls_of(message: Any) -> tuple[ToolCall, ...]:
    raw = getattr(message, "tool_calls", None) if message is not None else None
    if not raw:
        return ()
    calls = []
    for call in raw:
        function = getattr(call, "function", None)
        calls.append(ToolCall(name=str(getattr(function, "name", None) or ""),
                              arguments=getattr(function, "arguments", None) or "",
                              id=getattr(call, "id", None)))
    return tuple(calls)


def _provider_usage(response: Any) -> Usage | None:
    """The usage the provider sent with a non-streamed answer, or None when it sent none.

    litellm fills a response without ``usage`` (or with ``"usage": null``) with
    zeros; a chat request always has prompt tokens, so zero prompt and zero
    completion tokens mean: the provider sent no usage."""
    usage = _usage_of(response)
    if usage is None or (usage.prompt_tokens == 0 and usage.completion_tokens == 0):
        return None
    return usage


def _believed_cost(cost: object) -> float | None:
    """litellm's response_cost when it is a real, non-negative number, else None."""
    if isinstance(cost, bool) or not isinstance(cost, (int, float, str)):
        return None
    try:
        value = float(cost)
    except (TypeError, ValueError):
        return None
    return value if 0 <= value < float("inf") else None


def _priced(usage: Usage | None, source: str, tier: str | None, response_cost: Any,
            pricing: Pricing | None, headers: Mapping[str, Any] | None = None,
            ) -> tuple[float | None, str, float | None, str | None]:
    """(cost_usd, cost_status, prompt_cache_saved_usd, cost_source) of an answer's usage served at
    `tier`: the job's [prices] when set; else litellm's response_cost (it includes the cached tokens
    and the served tier; cost_source "endpoint" when it is a LiteLLM proxy's x-litellm-response-cost
    in `headers`, else "price_map"); else `pricing` (litellm's map for the named model, at the tier).
    Estimated usage: "estimated". No usage: (None, "no_usage", None, None). Never a silent 0."""
    if usage is None:
        return None, "no_usage", None, None
    cost: float | None
    cost_source: str | None
    litellm_cost = _believed_cost(response_cost)  # a negative or non-numeric one is no price
    if (pricing is None or pricing.prices is None) and source == "provider" and litellm_cost is not None:
        cost, status = litellm_cost, "litellm"
        cost_source = "endpoint" if headers and _endpoint_priced(headers, cost) else "price_map"
    elif pricing is None:
        return None, "unpriced_model", None, None
    else:  # litellm did not price it (or priced the zeros of a missing usage): price what is known
        cost, status = pricing.cost(usage, tier)
        cost_source = None if cost is None else "job_prices" if status.startswith("job_prices") else "price_map"
    if source == "estimated" and cost is not None:
        status = cost_source = "estimated"
    return cost, status, pricing.cache_saving(usage, tier) if pricing is not None else None, cost_source


def _completion_from(response: Any, pricing: Pricing | None,
                     estimate: Callable[[str, tuple[ToolCall, ...]], Usage] | None = None,
                     tier: str | None = None, limit: int | None = None) -> Completion:
    """A non-streamed answer as a Completion. Without usage from the provider, `estimate`
    (text, tool calls) -> Usage counts it (usage_source "estimated", cost_status "estimated");
    without `estimate` the usage and cost are None with cost_status "no_usage". Priced at the
    tier the response names (else `tier`, the one asked for). Never a silent 0. Usage the
    provider sent that cannot be believed (usage_checks.usage_problem, `limit` tokens at most)
    is estimated the same way and kept in `usage_reported`; cost_status names the problem."""
    choice = response.choices[0]
    message = getattr(choice, "message", None)
    text = (getattr(message, "content", None) or "") if message is not None else ""
    tool_calls = _tool_calls_of(message)
    raw_usage = getattr(response, "usage", None)
    problem = usage_problem(raw_usage, limit) if raw_usage is not None else None
    usage = None if problem else _provider_usage(response)
    source = "provider"
    if usage is None and estimate is not None:
        usage, source = estimate(text, tool_calls), "estimated"
    served = served_tier_of(response)
    hidden = getattr(response, "_hidden_params", None) or {}
    headers = hidden.get("additional_headers") or {}
    cost, status, saved, cost_source = _priced(usage, source, served or tier, hidden.get("response_cost"), pricing,
                                               headers)
    if problem is not None:
        status = problem[0]
    return Completion(
        text=text,
        finish_reason=getattr(choice, "finish_reason", None),
        model=getattr(response, "model", None),
        usage=usage,
        cost_usd=cost,
        cost_status=status,
        tool_calls=tool_calls,
        usage_source=source,
        rate_limit_headers=_rate_limit_headers(response),
        service_tier=served,
        prompt_cache_saved_usd=saved,
        cost_source=cost_source,
        upstream_attempts=upstream_attempts(headers),
        usage_reported=reported_counts(raw_usage) if problem is not None else None,
        usage_problem=problem[1] if problem is not None else None,
    )


def _has_usable_choice(response: object) -> bool:
    """A non-streamed answer with a first choice that holds a message."""
    choices = getattr(response, "choices", None)
    return isinstance(choices, Sequence) and bool(choices) and getattr(choices[0], "message", None) is not None


def _plain_body(response: object) -> object:
    """A litellm response as plain JSON data, for an error message."""
    dump = getattr(response, "model_dump", None)
    try:
        body: object = dump() if callable(dump) else response
    except Exception:
        return repr(response)
    if isinstance(body, dict):
        body.pop("system_fingerprint", None)
    return body


def _endpoint_priced(headers: Mapping[str, Any], cost: float) -> bool:
    """Whether litellm's response_cost is the endpoint's own figure: a LiteLLM proxy sends
    x-litellm-response-cost, and litellm takes it over its price map when it is there."""
    reported = provider_headers(headers).get("x-litellm-response-cost")
    try:
        return reported is not None and abs(float(reported) - cost) <= 1e-12 + 1e-9 * abs(cost)
    except ValueError:
        return False


def _rate_limit_headers(response: Any) -> dict[str, str] | None:
    """The provider's x-ratelimit-* / anthropic-ratelimit-* headers, as litellm
    kept them in `_hidden_params["additional_headers"]` (None when absent)."""
    hidden = getattr(response, "_hidden_params", None) or {}
    headers = hidden.get("additional_headers") or {}
    kept = {str(k): str(v) for k, v in headers.items() if "ratelimit" in str(k).lower()}
    return kept or None


_UNKNOWN = object()


def _provider_finished(stream: Any, chunks: Sequence[Any]) -> bool:
    """Did the provider itself send a finish_reason? (litellm adds a "stop" when it did not.)"""
    received = getattr(stream, "received_finish_reason", _UNKNOWN)
    if received is _UNKNOWN:  # not litellm's CustomStreamWrapper: trust the chunks
        return any(c.choices and getattr(c.choices[0], "finish_reason", None) for c in chunks)
    return received is not None or getattr(stream, "intermittent_finish_reason", None) is not None


def _streamed_raw_usage(stream: object, chunks: Sequence[object], built: object) -> object:
    """The usage block a chunk from the provider carried (the last one) as it came, or None."""
    raw = getattr(stream, "chunks", None)
    for chunk in reversed(raw if raw is not None else chunks):
        if getattr(chunk, "usage", None) is not None:
            return getattr(chunk, "usage", None) if raw is not None else getattr(built, "usage", None)
    return None


def _streamed_usage(stream: Any, chunks: Sequence[Any], built: Any) -> Usage | None:
    """The usage a chunk from the provider carried (the last one), or None when none did
    (litellm estimates it then). Read from the wrapper's own copies of the provider's chunks,
    before it adds its totals and fills kinds the provider did not say (reasoning_tokens 0)."""
    raw = getattr(stream, "chunks", None)
    for chunk in reversed(raw if raw is not None else chunks):
        if getattr(chunk, "usage", None) is not None:
            return usage_from_provider(chunk.usage) if raw is not None else _usage_of(built)
    return None


#: What litellm 1.110 raises when a stream ends without a finish_reason (1.106 ends the stream instead).
STREAM_ENDED_EARLY = "Stream ended before a finish_reason was received"


def mark_prompt_cache(messages: list[dict[str, Any]], prefix: str | None) -> list[dict[str, Any]]:
    """The messages with cache_control on the system prompt and on the job's shared prefix of
    the user message (Claude models with `prompt_cache`): content blocks, as litellm passes
    them on to Anthropic (and a LiteLLM proxy or the simulator receives them). Online requests
    and Anthropic batch requests (anthropic_batch.py) are marked by this one function."""
    marked: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content")
        if message.get("role") == "system" and isinstance(content, str) and content:
            message = {**message, "content": [{"type": "text", "text": content, "cache_control": EPHEMERAL}]}
        elif (message.get("role") == "user" and prefix and isinstance(content, str)
              and content.startswith(prefix) and len(content) > len(prefix)):
            message = {**message, "content": [
                {"type": "text", "text": prefix, "cache_control": EPHEMERAL},
                {"type": "text", "text": content[len(prefix):]}]}
            prefix = None  # the first user message only
        marked.append(message)
    return marked


class LiteLLMProvider:
    """Calls litellm.acompletion under batchrun's rules (module docstring)."""

    def __init__(
        self,
        *,
        model: str,
        api_base: str | None = None,
        api_key: str | None = None,
        params: Mapping[str, Any] | None = None,  # the job's [params]: as litellm takes them
        prices: PricesSpec | None = None,
        max_connections: int | None = None,
        cache: Mapping[str, str] | None = None,
        service_tier: str | None = None,
        fallback_tier: str | None = None,
        prompt_cache: bool = False,
        cache_prefix: str | None = None,
        prompt_cache_key: str | None = None,
        price_model: str | None = None,
    ) -> None:
        self.model = model
        self.api_base = api_base
        self._api_key = api_key
        self.params = dict(params or {})
        self.prices = prices
        self._secrets = tuple(s for s in (api_key,) if s)
        self._litellm = import_litellm(max_connections)
        #: the tier every request asks for (None: the provider's default) ...
        self.service_tier = service_tier
        #: ... and the one a request may fall back to (flex_fallback_after): the budget prices both
        self.fallback_tier = fallback_tier
        #: prompt caching: Claude models mark the system prompt and `cache_prefix` with cache_control,
        #: others send `prompt_cache_key` (module docstring)
        self.marks_cache = prompt_cache and is_claude(model)
        self.cache_prefix = cache_prefix if self.marks_cache else None
        self.prompt_cache_key = prompt_cache_key if prompt_cache and not self.marks_cache else None
        #: litellm's prices for the model (a simulated run: the named model's, `price_model`)
        self.pricing = Pricing(model, prices, price_model)
        self._schema_support: bool | None = None  # supports_response_schema(model), asked once
        #: litellm's request preparation runs on the loop thread (module docstring)
        self.inline_prep = self._provider_name() in INLINE_PREP_PROVIDERS
        #: the response cache (`cache = true`), opened now so a bad location fails before any request
        self.response_cache = ResponseCache(cache) if cache else None

    def _provider_name(self) -> str | None:
        try:
            return self._litellm.get_llm_provider(model=self.model, api_base=self.api_base)[1]
        except Exception:  # litellm cannot tell: keep its default (a thread)
            return None

    async def _acompletion(self, request: ChatRequest, kwargs: Params) -> Any:  # litellm's response or stream
        """litellm.acompletion under batchrun's rules (module docstring): no retries, the
        request's timeout and ticket header, the preparation inline when `inline_prep`."""
        call = dict(model=self.model, messages=request.messages, timeout=request.timeout_s, num_retries=0,
                    max_retries=0, extra_headers={TICKET_HEADER: request.ticket_id}, **kwargs)
        stream = bool(kwargs.get("stream"))
        kind = tuning.CALL_KIND.set("stream" if stream else "plain")
        try:
            if not self.inline_prep:
                return await self._litellm.acompletion(**call)
            tuning.install_inline_prep(asyncio.get_running_loop())
            token = tuning.INLINE_PREP.set(openai_transport(stream))
            try:
                return await self._litellm.acompletion(**call)
            finally:
                tuning.INLINE_PREP.reset(token)
        finally:
            tuning.CALL_KIND.reset(kind)

    def __repr__(self) -> str:  # never show the key
        return f"LiteLLMProvider(model={self.model!r}, api_base={self.api_base!r})"

    async def cached(self, request: ChatRequest) -> Completion | None:
        """The answer the response cache holds for this request (as a cache hit: cost 0,
        `cost_saved_usd` what it cost then), or None: no cache, a miss, or the cache failed."""
        if self.response_cache is None:
            return None
        return await self.response_cache.get(self._cache_key(request))

    async def remember(self, request: ChatRequest, completion: Completion) -> None:
        """Store an accepted answer (never a cache hit again, never an error)."""
        if self.response_cache is not None and not completion.cache_hit:
            await self.response_cache.put(self._cache_key(request), completion)

    def _cache_key(self, request: ChatRequest) -> str:
        call: Params = {"model": self.model, "messages": request.messages, **self.params}
        if request.options is not None:
            self._add_options(call, request.options)
            call.pop("_skip_mcp_handler", None)
        assert self.response_cache is not None
        return self.response_cache.key(call, self.api_base)

    def tier_of(self, request: ChatRequest) -> str | None:
        """The tier `request` asks for: its own (a flex fallback), else the job's."""
        return request.service_tier or self.service_tier

    async def complete(self, request: ChatRequest) -> Completion:
        kwargs: Params = dict(self.params)
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        tier = self.tier_of(request)
        if tier is not None:
            kwargs["service_tier"] = tier
        if self.prompt_cache_key is not None:
            kwargs["prompt_cache_key"] = self.prompt_cache_key
        if self.marks_cache:
            request = replace(request, messages=mark_prompt_cache(request.messages, self.cache_prefix))
        options = request.options
        if options is not None:
            self._add_options(kwargs, options)
            if options.stream:
                return await self._complete_stream(request, kwargs)
        try:
            response = await self._acompletion(request, kwargs)
        except Exception as exc:  # cancellation is a BaseException and passes through
            raise self._with_spend(translate_error(exc, self._secrets), tier) from None
        if not _has_usable_choice(response):  # billed (usage and all), nothing to use
            body = _plain_body(response)
            raise self._with_spend(unusable_answer(describe_body(body), body, self._secrets), tier) from None
        try:
            return _completion_from(response, self.pricing,
                                    lambda text, calls: self._estimate_usage(request, text, calls), tier,
                                    token_limit(self._litellm, self.model))
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise self._with_spend(unusable_answer(f"{type(exc).__name__}: {exc}", _plain_body(response),
                                                   self._secrets), tier) from None

    def _with_spend(self, error: RequestError, tier: str | None) -> RequestError:
        """An unusable answer's reported usage priced (job prices, else litellm's map, at `tier`): its
        `spent_usd`, rejected spend the ticket's line counts. Usage that cannot be believed is not
        priced (spent_usd stays None: the ticket's line counts it in rejected_unpriced)."""
        if isinstance(error, InvalidResponseError) and isinstance(error.reported_usage, Mapping):
            raw = error.reported_usage
            if usage_problem(raw, token_limit(self._litellm, self.model)) is None:
                usage = usage_from_provider(raw)
                if usage is not None and (usage.total_tokens or usage.prompt_tokens or usage.completion_tokens):
                    error.spent_usd = self.pricing.cost(usage, tier)[0]
        return error

    def _sends_schema(self, options: RequestOptions) -> bool:
        if options.send_json_schema != "auto":
            return options.send_json_schema == "always"
        if self._schema_support is None:
            try:
                self._schema_support = bool(self._litellm.supports_response_schema(model=self.model))
            except Exception:
                self._schema_support = False
        return self._schema_support

    def _add_options(self, kwargs: Params, options: RequestOptions) -> None:
        if options.json_schema is not None and self._sends_schema(options):
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": options.json_schema_name, "schema": options.json_schema,
                                "strict": options.json_schema_strict},
            }
        if options.tools:
            kwargs["tools"] = options.tools
            if options.tool_choice is not None:
                kwargs["tool_choice"] = options.tool_choice
            kwargs["_skip_mcp_handler"] = True  # see the module docstring

    async def _complete_stream(self, request: ChatRequest, kwargs: Params) -> Completion:
        t0 = time.monotonic()
        try:
            stream = await self._acompletion(
                request, {**kwargs, "stream": True, "stream_options": {"include_usage": True}})
        except Exception as exc:
            raise translate_error(exc, self._secrets) from None
        chunks: list[Any] = []
        ttft_ms: float | None = None
        finished = False
        try:
            async for chunk in stream:
                chunks.append(chunk)
                if ttft_ms is None and chunk.choices:
                    delta = getattr(chunk.choices[0], "delta", None)
                    if delta is not None and ((delta.content or "") or getattr(delta, "tool_calls", None)):
                        ttft_ms = (time.monotonic() - t0) * 1000.0
            finished = True
        except Exception as exc:
            if STREAM_ENDED_EARLY in str(exc):  # litellm 1.110 raises where 1.106 ended the stream: the same cut
                raise RetryableError(f"the stream ended without a finish_reason after {len(chunks)} chunk(s): the "
                                     "connection was cut", kind="stream_cut", error_type="StreamCut") from None
            raise translate_error(exc, self._secrets) from None
        finally:
            if not finished:  # an error or a cancellation mid-stream: free the connection
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()  # litellm shields its own cleanup from cancellation
                    except Exception:
                        pass
        if not _provider_finished(stream, chunks):
            text = "".join((c.choices[0].delta.content or "") for c in chunks
                           if c.choices and getattr(c.choices[0], "delta", None) is not None)
            raise RetryableError(
                f"the stream ended without a finish_reason after {len(chunks)} chunk(s) and "
                f"{len(text)} character(s) of content: the connection was cut",
                kind="stream_cut", error_type="StreamCut")
        try:
            return self._completion_from_stream(request, stream, chunks, ttft_ms)
        except RequestError:
            raise
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise InvalidResponseError(f"the provider's stream cannot be assembled into an answer: "
                                       f"{type(exc).__name__}: {redact_secrets(str(exc), self._secrets)[:200]}"
                                       ) from None

    def _completion_from_stream(self, request: ChatRequest, stream: Any, chunks: list[Any],
                                ttft_ms: float | None) -> Completion:
        lm = self._litellm
        built = lm.stream_chunk_builder(chunks, messages=request.messages) if chunks else None
        if built is None or not getattr(built, "choices", None):
            raise RetryableError("the stream carried no answer", kind="stream_cut", error_type="StreamCut")
        choice = built.choices[0]
        message = getattr(choice, "message", None)
        text = (getattr(message, "content", None) or "") if message is not None else ""
        tool_calls = _tool_calls_of(message)
        raw_usage = _streamed_raw_usage(stream, chunks, built)
        problem = usage_problem(raw_usage, token_limit(self._litellm, self.model)) if raw_usage is not None else None
        usage = None if problem is not None else _streamed_usage(stream, chunks, built)
        source = "provider"
        if usage is None or problem is not None:
            usage, source = self._estimate_usage(request, text, tool_calls), "estimated"
        hidden = getattr(built, "_hidden_params", None) or {}
        served = served_tier_of(built) or next((served_tier_of(c) for c in reversed(chunks) if served_tier_of(c)),
                                               None)
        # a stream's cost is litellm's (its price map): a proxy cannot send a stream's cost in the
        # headers it sends before the stream, and litellm writes its own figure under that header name
        cost, status, saved, cost_source = _priced(usage, source, served or self.tier_of(request),
                                                   hidden.get("response_cost"), self.pricing)
        if problem is not None:
            status = problem[0]
        stream_headers = (getattr(stream, "_hidden_params", None) or {}).get("additional_headers") or {}
        return Completion(
            text=text,
            finish_reason=getattr(choice, "finish_reason", None),
            model=getattr(built, "model", None),
            usage=usage,
            cost_usd=cost,
            cost_status=status,
            tool_calls=tool_calls,
            ttft_ms=ttft_ms,
            usage_source=source,
            rate_limit_headers=_rate_limit_headers(stream),  # the wrapper keeps the response headers
            service_tier=served,
            prompt_cache_saved_usd=saved,
            cost_source=cost_source,
            upstream_attempts=upstream_attempts(stream_headers),
            usage_reported=reported_counts(raw_usage) if problem is not None else None,
            usage_problem=problem[1] if problem is not None else None,
        )

    def _estimate_usage(self, request: ChatRequest, text: str, tool_calls: tuple[ToolCall, ...]) -> Usage:
        """Token counts with litellm.token_counter, for an answer that came without usage."""
        lm = self._litellm
        tools = request.options.tools if request.options is not None else None
        try:
            prompt = int(lm.token_counter(model=self.model, messages=request.messages, tools=tools))
        except Exception:
            prompt = sum(len(m.get("content") or "") for m in request.messages) // 4
        answer = text + "".join(call.name + call.arguments for call in tool_calls)
        try:
            completion = (int(lm.token_counter(model=self.model, text=answer, count_response_tokens=True))
                          if answer else 0)
        except Exception:
            completion = len(answer) // 4
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def estimate_tokens(self, request: ChatRequest) -> tuple[int, int]:
        """(prompt tokens by litellm.token_counter, max_tokens or 1024): what a
        request may use at most; rate limits reserve it, budgets price it."""
        lm = self._litellm
        tools = request.options.tools if request.options is not None else None
        try:
            prompt = int(lm.token_counter(model=self.model, messages=request.messages, tools=tools))
        except Exception:
            prompt = sum(len(m.get("content") or "") for m in request.messages) // 3
        completion = int(self.params.get("max_tokens") or self.params.get("max_completion_tokens") or 1024)
        return prompt, completion

    def max_output_tokens(self) -> tuple[int, str]:
        """(the most completion tokens a request may use, where that comes from): max_tokens
        ("max_tokens"), else the model's max_output_tokens in litellm's map ("model"), else
        DEFAULT_MAX_OUTPUT_TOKENS ("assumed")."""
        value = self.params.get("max_tokens") or self.params.get("max_completion_tokens")
        if isinstance(value, int) and value > 0:
            return value, "max_tokens"
        model_max = self.pricing.max_output_tokens()
        if model_max is not None:
            return model_max, "model"
        return DEFAULT_MAX_OUTPUT_TOKENS, "assumed"

    def cost_bound(self, request: ChatRequest, prompt_factor: float = 1.0) -> CostBound | None:
        """The most `request` may cost: its prompt estimate (litellm.token_counter) x
        `prompt_factor` (the budget's calibration against what the provider counts) plus
        max_output_tokens(), at the dearest tier it may be served at and the dearest input price
        (a cache write, when it marks its prompt); None for an unpriced model."""
        prompt = self.estimate_tokens(request)[0]
        output = self.max_output_tokens()[0]
        tiers = tuple(dict.fromkeys((self.tier_of(request), self.fallback_tier if self.fallback_tier else
                                     self.tier_of(request))))
        usd = self.pricing.bound(math.ceil(prompt * prompt_factor), output, tiers, cache_writes=self.marks_cache)
        return None if usd is None else CostBound(usd=usd, prompt_tokens=prompt, output_tokens=output)

    async def aclose(self) -> None:
        if self.response_cache is not None:
            await self.response_cache.aclose()


def build_provider(args: ProviderArgs) -> LiteLLMProvider:
    """A LiteLLMProvider from its arguments as plain data (prices as a dict or None)."""
    prices = args.get("prices")
    return LiteLLMProvider(model=args["model"], api_base=args.get("api_base"), api_key=args.get("api_key"),
                           params=args.get("params"), prices=PricesSpec.model_validate(prices) if prices else None,
                           max_connections=args.get("max_connections"), cache=args.get("cache"),
                           service_tier=args.get("service_tier"), fallback_tier=args.get("fallback_tier"),
                           prompt_cache=bool(args.get("prompt_cache")), cache_prefix=args.get("cache_prefix"),
                           prompt_cache_key=args.get("prompt_cache_key"), price_model=args.get("price_model"))


def build_providers(provider_kwargs: Mapping[str, ProviderArgs]) -> dict[str, Provider]:
    """One LiteLLMProvider per model key from `provider_kwargs` (prices as a dict or None)."""
    return {key: build_provider(kwargs) for key, kwargs in provider_kwargs.items()}
