"""LiteLLMProvider: one attempt of a request through litellm.acompletion, under batchrun's rules.

No retry inside litellm or the SDK (tenacity is the one retry layer), an
explicit timeout on every attempt, the API key per call and never in a message,
the cost litellm computed (job [prices] win) or null with a status saying why,
usage the provider did not send counted and marked "estimated", a stream that
ends without a finish_reason retried as `stream_cut`, JSON schemas and tools
sent where the model takes them, the response cache read before the first
attempt and written after an accepted answer. The rules and why: docs/internals.md
("litellm: the rules").

    LiteLLMProvider    the Provider (seam.py) on litellm
    ProviderArgs       its arguments as plain data (they cross to worker processes and Ray actors)
    build_providers    one LiteLLMProvider per model key, from ProviderArgs

litellm's responses, stream wrappers and chunks are left untyped: they are litellm's objects, read
with getattr and checked where used.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Mapping, Required, Sequence, TypedDict

from batchrun.errors import (
    RequestError,
    RetryableError,
)
from batchrun.job.sections import Params, PricesSpec
from batchrun.providers import tuning
from batchrun.providers.cache import ResponseCache
from batchrun.providers.error_mapping import provider_headers, translate_error, upstream_attempts
from batchrun.providers.litellm_setup import import_litellm, openai_transport
from batchrun.providers.seam import ChatRequest, Provider, RequestOptions
from batchrun.providers.tuning import (
    INLINE_PREP_PROVIDERS,
)
from batchrun.records import Completion, ToolCall, Usage

TICKET_HEADER = "X-Batchrun-Ticket-Id"


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


def _usage_of(response: Any) -> Usage | None:
    raw_usage = getattr(response, "usage", None)
    if raw_usage is None or getattr(raw_usage, "total_tokens", None) is None:
        return None
    return Usage(
        prompt_tokens=int(raw_usage.prompt_tokens or 0),
        completion_tokens=int(raw_usage.completion_tokens or 0),
        total_tokens=int(raw_usage.total_tokens or 0),
    )


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


def _job_price(usage: Usage, prices: PricesSpec) -> float:
    return (usage.prompt_tokens * prices.input_per_million
            + usage.completion_tokens * prices.output_per_million) / 1e6


def _provider_usage(response: Any) -> Usage | None:
    """The usage the provider sent with a non-streamed answer, or None when it sent none.

    litellm fills a response without ``usage`` (or with ``"usage": null``) with
    zeros; a chat request always has prompt tokens, so zero prompt and zero
    completion tokens mean: the provider sent no usage."""
    usage = _usage_of(response)
    if usage is None or (usage.prompt_tokens == 0 and usage.completion_tokens == 0):
        return None
    return usage


def _completion_from(response: Any, prices: PricesSpec | None,
                     estimate: Callable[[str, tuple[ToolCall, ...]], Usage] | None = None,
                     cost_per_token: Callable[[Usage], float | None] | None = None) -> Completion:
    """A non-streamed answer as a Completion. Without usage from the provider, `estimate`
    (text, tool calls) -> Usage counts it (usage_source "estimated", cost_status "estimated",
    priced by the job's prices or `cost_per_token`); without `estimate` the usage and cost are
    None with cost_status "no_usage". Never a silent 0."""
    choice = response.choices[0]
    message = getattr(choice, "message", None)
    text = (getattr(message, "content", None) or "") if message is not None else ""
    tool_calls = _tool_calls_of(message)
    usage = _provider_usage(response)
    source = "provider"
    if usage is None and estimate is not None:
        usage, source = estimate(text, tool_calls), "estimated"
    hidden = getattr(response, "_hidden_params", None) or {}
    headers = hidden.get("additional_headers") or {}
    cost_source: str | None = None
    if usage is None:
        cost, status = None, "no_usage"
    elif prices is not None:
        cost, status, cost_source = _job_price(usage, prices), "job_prices", "job_prices"
    elif source == "provider":
        cost = hidden.get("response_cost")
        if cost is not None:
            cost, status = float(cost), "litellm"
            cost_source = "endpoint" if _endpoint_priced(headers, cost) else "price_map"
        else:
            status = "unpriced_model"
    else:  # litellm's response_cost priced the zeros: price the estimate instead
        cost = cost_per_token(usage) if cost_per_token is not None else None
        status = "unpriced_model"
    if source == "estimated" and cost is not None:
        status = cost_source = "estimated"
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
        cost_source=cost_source,
        upstream_attempts=upstream_attempts(headers),
    )


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


def _provider_sent_usage(stream: Any, chunks: Sequence[Any]) -> bool:
    """Did a chunk from the provider carry usage? (litellm estimates it when none did.)"""
    raw = getattr(stream, "chunks", None)  # the wrapper's own copies, before it adds its totals
    return any(getattr(c, "usage", None) is not None for c in (raw if raw is not None else chunks))


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
    ) -> None:
        self.model = model
        self.api_base = api_base
        self._api_key = api_key
        self.params = dict(params or {})
        self.prices = prices
        self._secrets = tuple(s for s in (api_key,) if s)
        self._litellm = import_litellm(max_connections)
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

    async def complete(self, request: ChatRequest) -> Completion:
        kwargs: Params = dict(self.params)
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        options = request.options
        if options is not None:
            self._add_options(kwargs, options)
            if options.stream:
                return await self._complete_stream(request, kwargs)
        try:
            response = await self._acompletion(request, kwargs)
        except Exception as exc:  # cancellation is a BaseException and passes through
            raise translate_error(exc, self._secrets) from None
        try:
            return _completion_from(response, self.prices,
                                    lambda text, calls: self._estimate_usage(request, text, calls),
                                    self._cost_per_token)
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise RetryableError(f"malformed response: {exc}", kind="connection",
                                 error_type="MalformedResponse") from None

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
            raise RetryableError(f"malformed stream: {exc}", kind="connection",
                                 error_type="MalformedResponse") from None

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
        usage = _usage_of(built) if _provider_sent_usage(stream, chunks) else None
        source = "provider"
        if usage is None:
            usage, source = self._estimate_usage(request, text, tool_calls), "estimated"
        hidden = getattr(built, "_hidden_params", None) or {}
        # a stream's cost is litellm's (its price map): a proxy cannot send a stream's cost in the
        # headers it sends before the stream, and litellm writes its own figure under that header name
        cost_source: str | None = None
        cost: float | None
        if self.prices is not None:
            cost, status, cost_source = _job_price(usage, self.prices), "job_prices", "job_prices"
        elif source == "provider" and hidden.get("response_cost") is not None:
            cost, status, cost_source = float(hidden["response_cost"]), "litellm", "price_map"
        else:
            cost = self._cost_per_token(usage)
            status = "litellm" if cost is not None else "unpriced_model"
            cost_source = "price_map" if cost is not None else None
        if source == "estimated" and cost is not None:
            status = cost_source = "estimated"
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
            cost_source=cost_source,
            upstream_attempts=upstream_attempts(stream_headers),
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

    def _cost_per_token(self, usage: Usage) -> float | None:
        """litellm's price for these tokens on this model, or None for an unpriced model."""
        try:
            prompt_cost, completion_cost = self._litellm.cost_per_token(
                model=self.model, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
        except Exception:
            return None
        return float(prompt_cost + completion_cost)

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

    def estimate_cost(self, request: ChatRequest) -> float | None:
        """Prompt tokens (litellm.token_counter) + max_tokens at the model's or the job's price."""
        lm = self._litellm
        prompt, completion = self.estimate_tokens(request)
        if self.prices is not None:
            return (prompt * self.prices.input_per_million + completion * self.prices.output_per_million) / 1e6
        try:
            prompt_cost, completion_cost = lm.cost_per_token(
                model=self.model, prompt_tokens=prompt, completion_tokens=completion)
        except Exception:  # an unpriced model
            return None
        return float(prompt_cost + completion_cost)

    async def aclose(self) -> None:
        if self.response_cache is not None:
            await self.response_cache.aclose()


def build_provider(args: ProviderArgs) -> LiteLLMProvider:
    """A LiteLLMProvider from its arguments as plain data (prices as a dict or None)."""
    prices = args.get("prices")
    return LiteLLMProvider(model=args["model"], api_base=args.get("api_base"), api_key=args.get("api_key"),
                           params=args.get("params"), prices=PricesSpec.model_validate(prices) if prices else None,
                           max_connections=args.get("max_connections"), cache=args.get("cache"))


def build_providers(provider_kwargs: Mapping[str, ProviderArgs]) -> dict[str, Provider]:
    """One LiteLLMProvider per model key from `provider_kwargs` (prices as a dict or None)."""
    return {key: build_provider(kwargs) for key, kwargs in provider_kwargs.items()}
