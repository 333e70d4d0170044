"""The seam in front of the network: with litellm_tuning.py, the only code that touches litellm.

    ChatRequest        what the engine asks for: ticket id, messages, timeout,
                       and the job's RequestOptions (None for a plain job)
    RequestOptions     stream or not, the JSON schema, tools and tool_choice:
                       one per job (`RequestOptions.for_job`), shared by its requests
    Provider           the protocol the engine calls: `await complete(request)`
    LiteLLMProvider    the real one: litellm.acompletion with batchrun's rules
    ScriptedProvider   a fake for tests: answers from a function, records calls
    import_litellm()   the lazy, configured import (see below); callers
                       outside this module use the functions below instead
    preload()          import and configure litellm now (a slow step a
                       command may overlap with other start-up work)
    estimate_tokens()  prompt tokens of messages for a model (litellm's counter)
    price_for()        USD for (prompt, completion) tokens of a model, or None
    bare_acompletion() litellm.acompletion as a user calls it, none of
                       batchrun's rules: the bench's bare-pattern baseline
    is_rate_limit_error()  whether an exception from it is litellm's 429
    size_connection_pool()  litellm's aiohttp limits raised in an environment
                       (this process's before the import, or a worker's)
    openai_transport() which HTTP path an openai/ call takes (below)
    translate_error()  litellm/SDK/transport exceptions -> errors.RequestError
    unknown_params()   a job's [params] keys neither litellm's list for the model
                       nor PROVIDER_PARAMS knows, each with the nearest known key

Rules for every litellm call:
  * `LITELLM_LOCAL_MODEL_COST_MAP=True` is set before litellm is imported
    (otherwise its import fetches a price list over the network), and the
    import happens on first use, so `batchrun --help` never pays for it;
  * litellm's `num_retries=0` and the OpenAI SDK's `max_retries=0`: tenacity
    (retrying.py) is the one retry layer. litellm's own HTTP handler would
    send a request a second time when its connection failed (a reset before
    the response headers): litellm_tuning.py switches that off for
    batchrun's calls. aiohttp resends only idempotent methods (never a
    POST); tests/test_wire_attempts.py compares the simulator's per-ticket
    request counts with the recorded attempts on all four paths (plain and
    streamed, litellm's handler and the SDK);
  * litellm's request preparation runs inline on the loop thread for the
    providers in `INLINE_PREP_PROVIDERS`, plain OpenAI-compatible calls go
    through litellm's own HTTP handler (streamed ones keep the OpenAI SDK;
    `openai_transport(stream)` says which), success logging that no callback
    would receive is skipped, and the model-mode lookup is cached: these
    patches of litellm internals live in litellm_tuning.py (what each does,
    why, and how it is kept safe), installed by `import_litellm`; the
    measurements behind them are in docs/internals.md;
  * an explicit `timeout` on every attempt;
  * the cost is read from `response._hidden_params["response_cost"]`, which
    litellm already computed; it is not computed a second time. Prices in the
    job file, when set, win. No price gives `cost_usd=None` plus a
    `cost_status` saying why, never a silent 0;
  * a non-streamed 200 without `usage` (or with `"usage": null`) comes out
    of litellm with usage 0/0 and a `response_cost` of 0.0. batchrun counts
    the tokens itself with `litellm.token_counter`, as for a stream without
    a usage chunk (below): `usage_source = "estimated"`, the cost from the
    job's prices or litellm's `cost_per_token` with `cost_status =
    "estimated"`, so the budget and the summary (`usage_estimated`) see it.
    Zero prompt and zero completion tokens are taken as "no usage": a chat
    request always has prompt tokens;
  * a refused or reset connection is kind `connection` with no status:
    litellm calls it a 500, `translate_error` finds the transport error
    under it;
  * the API key is passed per call and scrubbed from every error message.

Structured requests: a JSON schema goes out as `response_format = {"type":
"json_schema", "json_schema": {"name", "schema", "strict"}}` when
`send_json_schema` is "always", or "auto" and `litellm.supports_response_schema`
knows the model supports it (asked once per provider); the answer is checked
against the schema in any case (ticket_runner.py, outputs.py). Tools go out as
`tools` and `tool_choice`, with `_skip_mcp_handler=True`: for any request with
tools litellm 1.106 otherwise imports its MCP gateway, which needs the optional
`mcp` package; batchrun's tools are always plain function tools.

Streaming (`stream = true`): `acompletion(..., stream=True,
stream_options={"include_usage": True})`, consumed with `async for`, reading
`delta.content or ""` (it is None on the role and finish chunks). The time to
the first content or tool-call delta is `ttft_ms`. The final message
(content, tool calls with their argument fragments joined, finish_reason,
usage) is assembled by `litellm.stream_chunk_builder`, never by hand. Two
things litellm smooths over are checked on its stream wrapper:
  * a stream that ends without a finish_reason from the provider (a cut
    connection, a truncated SSE body) gets a synthetic "stop" from litellm;
    batchrun raises RetryableError(kind="stream_cut") instead: retried,
    never a success;
  * a stream without a usage chunk gets usage estimated by litellm; batchrun
    counts it itself with `litellm.token_counter` (prompt with tools, answer
    text and tool-call arguments) and marks it `usage_source = "estimated"`,
    and its cost `cost_status = "estimated"` (job prices still win on the
    amount). With the provider's usage, the cost is litellm's response_cost
    of the assembled response, or, when it has none, litellm's
    `cost_per_token` for the model, computed once: `cost_status = "litellm"`.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, MutableMapping, Protocol, Sequence

from batchrun import litellm_tuning
from batchrun.errors import (
    RateLimitedError,
    RequestError,
    RetryableError,
    TerminalError,
    redact_secrets,
)
from batchrun.records import Completion, ToolCall, Usage
from batchrun.litellm_tuning import INLINE_PREP_PROVIDERS, OPENAI_HTTP_HANDLER_ENV, InlinePrepExecutor
from batchrun.spec import JobSpec, PricesSpec

__all__ = [
    "ChatRequest",
    "InlinePrepExecutor",
    "LiteLLMProvider",
    "Provider",
    "RequestOptions",
    "ScriptedProvider",
    "OPENAI_HTTP_HANDLER_ENV",
    "bare_acompletion",
    "estimate_tokens",
    "import_litellm",
    "is_rate_limit_error",
    "preload",
    "price_for",
    "litellm_version",
    "openai_transport",
    "size_connection_pool",
    "translate_error",
    "unknown_params",
]

TICKET_HEADER = "X-Batchrun-Ticket-Id"
_litellm: Any = None

@dataclass(frozen=True, slots=True)
class RequestOptions:
    """How a job's requests ask and receive, beyond the messages (see module docstring)."""

    stream: bool = False
    json_schema: Mapping[str, Any] | None = None  # the schema answers must satisfy
    json_schema_name: str = "answer"
    json_schema_strict: bool = True
    send_json_schema: str = "auto"  # "auto", "always" or "never"
    tools: list[dict[str, Any]] | None = None  # OpenAI function tools, as sent
    tool_choice: str | dict[str, Any] | None = None

    @classmethod
    def for_job(cls, job: JobSpec) -> "RequestOptions | None":
        """The options of a job, or None when it asks for a plain, non-streamed answer."""
        if not job.stream and job.output_schema is None and not job.tools_payload:
            return None
        return cls(stream=job.stream, json_schema=job.output_schema, json_schema_name=job.schema_name,
                   json_schema_strict=job.json_schema_strict, send_json_schema=job.send_json_schema,
                   tools=job.tools_payload, tool_choice=job.tool_choice)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    ticket_id: str
    messages: list[dict[str, str]]
    timeout_s: float
    options: RequestOptions | None = None  # None: a plain, non-streamed request
    model_key: str | None = None  # multi-model jobs: which [[models]] entry serves it


class Provider(Protocol):
    async def complete(self, request: ChatRequest) -> Completion: ...

    def estimate_cost(self, request: ChatRequest) -> float | None:
        """USD the request may cost at most (prompt + max_tokens), None if unknown."""
        ...

    async def aclose(self) -> None: ...


def size_connection_pool(env: MutableMapping[str, str], max_connections: int | None) -> None:
    """Raise litellm's aiohttp limits in `env` (500 per host, 1,000 in all by default) to at least
    `max_connections`; litellm reads them when it is imported."""
    if max_connections:
        for name, default in (("AIOHTTP_CONNECTOR_LIMIT_PER_HOST", 500), ("AIOHTTP_CONNECTOR_LIMIT", 1000)):
            env[name] = str(max(int(env.get(name) or default), max_connections))


def import_litellm(max_connections: int | None = None) -> Any:
    """Import and configure litellm once (slow: seconds; docs/internals.md).

    `max_connections`: litellm's aiohttp pool allows 500 connections per host
    (1,000 in all), read from the environment when litellm is imported; a run
    with more requests in flight raises both so the pool never caps it.
    """
    global _litellm
    if _litellm is None:
        os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        litellm_tuning.remember_user_transport()  # a user's own setting wins (litellm_tuning.py)
        size_connection_pool(os.environ, max_connections)
        import litellm

        litellm.suppress_debug_info = True
        litellm.num_retries = 0
        litellm.telemetry = False
        litellm_tuning.install(litellm)
        _litellm = litellm
    return _litellm


def openai_transport(stream: bool = False) -> str:
    """The path a LiteLLMProvider's `openai/...` chat call takes: "litellm-http" or "openai-sdk".

    batchrun's choice (module docstring): litellm's HTTP handler for plain
    calls, the OpenAI SDK for streamed ones, unless the environment set
    litellm's switch before litellm was imported (then as litellm reads it).
    """
    user = litellm_tuning.user_transport() if _litellm is not None else os.environ.get(OPENAI_HTTP_HANDLER_ENV)
    if user is not None:
        return "litellm-http" if user.strip().lower() == "true" else "openai-sdk"  # litellm's str_to_bool
    return "openai-sdk" if stream else "litellm-http"


# [params] keys litellm takes besides the model's OpenAI parameters (get_supported_openai_params):
# its own options, and provider-specific keys it forwards as they are.
LITELLM_OPTIONS = frozenset({"drop_params", "additional_drop_params", "extra_body", "metadata", "user",
                             "reasoning_effort", "thinking"})
PROVIDER_PARAMS: dict[str, frozenset[str]] = {
    "anthropic": frozenset({"top_k", "thinking", "metadata", "cache_control"}),
    "gemini": frozenset({"top_k", "safety_settings", "thinking", "candidate_count"}),
    "vertex_ai": frozenset({"top_k", "safety_settings", "thinking", "candidate_count"}),
    "bedrock": frozenset({"top_k", "thinking", "guardrailConfig", "performanceConfig"}),
    "ollama": frozenset({"top_k", "num_ctx", "num_predict", "repeat_penalty", "mirostat", "keep_alive"}),
    "ollama_chat": frozenset({"top_k", "num_ctx", "num_predict", "repeat_penalty", "mirostat", "keep_alive"}),
    "hosted_vllm": frozenset({"top_k", "min_p", "repetition_penalty", "best_of", "use_beam_search",
                              "guided_json", "guided_choice", "chat_template_kwargs"}),
    "openai": frozenset({"top_k", "min_p", "repetition_penalty"}),  # often vLLM or a proxy behind openai/
    "together_ai": frozenset({"top_k", "repetition_penalty", "min_p"}),
    "groq": frozenset({"top_k"}),
    "mistral": frozenset({"safe_prompt", "random_seed"}),
}


def unknown_params(model: str, params: Mapping[str, Any]) -> dict[str, str | None] | None:
    """The keys of `params` litellm does not list for `model` (get_supported_openai_params)
    and that are neither litellm options nor PROVIDER_PARAMS of the model's provider, each
    mapped to the nearest known key (or None). None when litellm does not know the model's
    provider (nothing to check against). Imports litellm."""
    import difflib

    litellm = import_litellm()
    try:
        name, provider, _, _ = litellm.get_llm_provider(model=model)
        supported = litellm.get_supported_openai_params(model=name, custom_llm_provider=provider)
    except Exception:  # an unknown provider: litellm cannot say what it takes
        return None
    if not supported:
        return None
    known = set(supported) | LITELLM_OPTIONS | PROVIDER_PARAMS.get(provider, frozenset())
    unknown: dict[str, str | None] = {}
    for key in params:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            unknown[key] = close[0] if close else None
    return unknown


def litellm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("litellm")
    except PackageNotFoundError:
        return "unknown"


def preload(max_connections: int | None = None) -> None:
    """Import and configure litellm now (see import_litellm), returning nothing: for a command
    that overlaps the slow import with other start-up work (bench: the simulator's)."""
    import_litellm(max_connections)


def estimate_tokens(model: str, messages: Sequence[Mapping[str, Any]], tools: Any = None) -> int:
    """Prompt tokens of `messages` (and `tools`) for `model` by litellm's token counter; about
    four characters a token when litellm cannot load the model's tokenizer."""
    try:
        return int(import_litellm().token_counter(model=model, messages=list(messages), tools=tools))
    except Exception:
        return sum(len(m.get("content") or "") for m in messages) // 4


def price_for(model: str, prompt_tokens: int, completion_tokens: int) -> tuple[float, float] | None:
    """(USD for the prompt tokens, USD for the completion tokens) of `model` from litellm's
    local price list, or None when litellm does not price the model."""
    try:
        prompt_cost, completion_cost = import_litellm().cost_per_token(
            model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    except Exception:
        return None
    return float(prompt_cost), float(completion_cost)


async def bare_acompletion(**kwargs: Any) -> Any:
    """litellm.acompletion(**kwargs) exactly as a user calls it, under none of batchrun's rules
    (no ticket header, litellm's own transport and thread for the preparation): the bare
    pattern `batchrun bench --baseline` measures batchrun against."""
    return await import_litellm().acompletion(**kwargs)


def is_rate_limit_error(exc: BaseException) -> bool:
    """Is `exc` litellm's RateLimitError (a 429), as raised by bare_acompletion?"""
    return isinstance(exc, import_litellm().RateLimitError)


def _parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from retry-after-ms, or retry-after as seconds or an HTTP date."""
    if not headers:
        return None
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    if "retry-after-ms" in lower:
        try:
            return max(0.0, float(lower["retry-after-ms"]) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _headers_of(exc: BaseException) -> Mapping[str, str] | None:
    for name in ("litellm_response_headers", "headers"):
        headers = getattr(exc, name, None)
        if headers:
            return headers
    response = getattr(exc, "response", None)
    return getattr(response, "headers", None)


def translate_error(exc: BaseException, secrets: Sequence[str] = ()) -> RequestError:
    """Map any exception from a provider call onto batchrun's RequestError tree."""
    if isinstance(exc, RequestError):
        return exc
    message = redact_secrets(str(exc) or type(exc).__name__, secrets)[:1000]
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    name = type(exc).__name__
    lm = _litellm
    if isinstance(exc, TimeoutError) or (lm is not None and isinstance(exc, lm.Timeout)):
        return RetryableError(message, kind="timeout", status_code=status, error_type=name)
    cause = _transport_cause(exc)
    if cause is not None:  # litellm's "500" for a connection that failed: no status was received
        kind = "timeout" if _is_timeout(cause) else "connection"
        detail = redact_secrets(f"{type(cause).__name__}: {cause}", secrets)
        if detail not in message:
            message = f"{message} ({detail})"
        return RetryableError(message[:1000], kind=kind, status_code=None, error_type=name)
    if lm is not None:
        if isinstance(exc, lm.RateLimitError):
            return RateLimitedError(
                message, kind="rate_limited", status_code=429,
                retry_after=_parse_retry_after(_headers_of(exc)), error_type=name,
            )
        terminal_kinds = (
            (lm.ContextWindowExceededError, "context_window"),
            (lm.ContentPolicyViolationError, "content_policy"),
            (lm.AuthenticationError, "auth"),
            (lm.PermissionDeniedError, "permission"),
            (lm.NotFoundError, "not_found"),
            (lm.BadRequestError, "bad_request"),
            (lm.UnprocessableEntityError, "bad_request"),
        )
        for cls, kind in terminal_kinds:
            if isinstance(exc, cls):
                return TerminalError(message, kind=kind, status_code=status, error_type=name)
        if isinstance(exc, (lm.ServiceUnavailableError, lm.BadGatewayError, lm.InternalServerError)):
            return RetryableError(message, kind="server_error", status_code=status, error_type=name)
        if isinstance(exc, lm.APIConnectionError):
            return RetryableError(message, kind="connection", status_code=None, error_type=name)
        if isinstance(exc, lm.APIError) and status is not None and status < 400:
            # litellm's HTTP handler: a 2xx body it could not parse (the SDK path calls it a 500)
            return RetryableError(message, kind="server_error", status_code=status, error_type=name)
    if status is not None:
        if status in (408, 409) or status >= 500:
            kind = "timeout" if status == 408 else "server_error"
            return RetryableError(message, kind=kind, status_code=status, error_type=name)
        if 400 <= status < 500:
            return TerminalError(message, kind="bad_request", status_code=status, error_type=name)
    if isinstance(exc, (ConnectionError, OSError)) or _is_transport_error(exc):
        return RetryableError(message, kind="connection", error_type=name)
    return TerminalError(message, kind="unknown", status_code=status, error_type=name)


def _transport_cause(exc: BaseException) -> BaseException | None:
    """The transport failure under a litellm exception (a refused or reset connection, a body
    cut short), or None when the server answered. litellm calls these a 500
    (`InternalServerError`, `MidStreamFallbackError`); the cause chain (`__cause__`,
    `__context__`, litellm's `original_exception`) still holds the httpx, aiohttp, OpenAI SDK
    or socket error. The innermost such error is returned."""
    found = None
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if current is not exc and not _carries_status(current) and (
                _is_transport_error(current) or _is_sdk_connection_error(current)
                or isinstance(current, ConnectionError)):
            found = current
        todo += [current.__cause__, current.__context__, getattr(current, "original_exception", None)]
    return found


def _carries_status(exc: BaseException) -> bool:
    """An error that came with an HTTP status (aiohttp's ClientResponseError): the server answered."""
    import aiohttp

    return isinstance(exc, aiohttp.ClientResponseError)


def _is_sdk_connection_error(exc: BaseException) -> bool:
    try:
        import openai
    except ImportError:  # pragma: no cover - comes with litellm
        return False
    return isinstance(exc, openai.APIConnectionError)


def _is_timeout(exc: BaseException) -> bool:
    import httpx

    try:
        import openai
        sdk_timeout: tuple[type[BaseException], ...] = (openai.APITimeoutError,)
    except ImportError:  # pragma: no cover
        sdk_timeout = ()
    return isinstance(exc, (TimeoutError, httpx.TimeoutException, *sdk_timeout))


def _is_transport_error(exc: BaseException) -> bool:
    try:
        import aiohttp
        import httpx
    except ImportError:  # pragma: no cover - both come with litellm
        return False
    return isinstance(exc, (httpx.TransportError, aiohttp.ClientError))


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
    if usage is None:
        cost, status = None, "no_usage"
    elif prices is not None:
        cost, status = _job_price(usage, prices), "job_prices"
    elif source == "provider":
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = hidden.get("response_cost")
        if cost is not None:
            cost, status = float(cost), "litellm"
        else:
            status = "unpriced_model"
    else:  # litellm's response_cost priced the zeros: price the estimate instead
        cost = cost_per_token(usage) if cost_per_token is not None else None
        status = "unpriced_model"
    if source == "estimated" and cost is not None:
        status = "estimated"
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
    )


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
        params: Mapping[str, Any] | None = None,
        prices: PricesSpec | None = None,
        max_connections: int | None = None,
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

    def _provider_name(self) -> str | None:
        try:
            return self._litellm.get_llm_provider(model=self.model, api_base=self.api_base)[1]
        except Exception:  # litellm cannot tell: keep its default (a thread)
            return None

    async def _acompletion(self, request: ChatRequest, kwargs: dict[str, Any]) -> Any:
        """litellm.acompletion under batchrun's rules (module docstring): no retries, the
        request's timeout and ticket header, the preparation inline when `inline_prep`."""
        call = dict(model=self.model, messages=request.messages, timeout=request.timeout_s, num_retries=0,
                    max_retries=0, extra_headers={TICKET_HEADER: request.ticket_id}, **kwargs)
        stream = bool(kwargs.get("stream"))
        kind = litellm_tuning.CALL_KIND.set("stream" if stream else "plain")
        try:
            if not self.inline_prep:
                return await self._litellm.acompletion(**call)
            litellm_tuning.install_inline_prep(asyncio.get_running_loop())
            token = litellm_tuning.INLINE_PREP.set(openai_transport(stream))
            try:
                return await self._litellm.acompletion(**call)
            finally:
                litellm_tuning.INLINE_PREP.reset(token)
        finally:
            litellm_tuning.CALL_KIND.reset(kind)

    def __repr__(self) -> str:  # never show the key
        return f"LiteLLMProvider(model={self.model!r}, api_base={self.api_base!r})"

    async def complete(self, request: ChatRequest) -> Completion:
        kwargs: dict[str, Any] = dict(self.params)
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

    def _add_options(self, kwargs: dict[str, Any], options: RequestOptions) -> None:
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

    async def _complete_stream(self, request: ChatRequest, kwargs: dict[str, Any]) -> Completion:
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
        if self.prices is not None:
            cost, status = _job_price(usage, self.prices), "job_prices"
        elif source == "provider" and hidden.get("response_cost") is not None:
            cost, status = float(hidden["response_cost"]), "litellm"
        else:
            cost = self._cost_per_token(usage)
            status = "litellm" if cost is not None else "unpriced_model"
        if source == "estimated" and cost is not None:
            status = "estimated"
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
        return None


@dataclass
class ScriptedProvider:
    """A fake Provider: `script(request)` returns a Completion or an exception
    (raised), and every request is recorded in `calls`.

    `request.options` carries the job's RequestOptions (stream, schema, tools)
    as the real provider gets them; a script may answer with any Completion
    field (tool_calls, finish_reason "length" or "content_filter", ttft_ms,
    usage_source) to drive the output checks without a server."""

    script: Callable[[ChatRequest], Completion | BaseException]
    calls: list[ChatRequest] = field(default_factory=list)
    cost_estimate: float | None = None  # what estimate_cost answers

    async def complete(self, request: ChatRequest) -> Completion:
        self.calls.append(request)
        answer = self.script(request)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def estimate_cost(self, request: ChatRequest) -> float | None:
        return self.cost_estimate

    async def aclose(self) -> None:
        return None
