"""The seam in front of the network: with litellm_tuning.py, the only code that touches litellm.

    ChatRequest        what the engine asks for: ticket id, messages, timeout,
                       and the job's RequestOptions (None for a plain job)
    RequestOptions     stream or not, the JSON schema, tools and tool_choice:
                       one per job (`RequestOptions.for_job`), shared by its requests
    Provider           the protocol the engine calls: `await complete(request)`
    LiteLLMProvider    the real one: litellm.acompletion with batchrun's rules
    ScriptedProvider   a fake for tests: answers from a function, records calls
    ResponseCache      accepted answers kept in litellm's cache layer (below)
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

The response cache (`cache = true`; docs/data.md). `ResponseCache` keeps
accepted answers in litellm's caching layer, `litellm.caching.Cache`: a
`DiskCache` (diskcache, SQLite underneath, safe for several processes) in a
folder, or a `RedisCache` for `cache_url = "redis://..."` (keys under the
namespace "batchrun:"). The key is litellm's `Cache.get_cache_key` of the
request as sent (model, messages, params, response_format, tools,
tool_choice), hashed together with the api_base (the same model name on the
simulator and on a real endpoint are different answers); the ticket header,
the API key and the timeout are not part of it. batchrun reads and writes the
cache itself around its calls (`LiteLLMProvider.cached` before the first
attempt, `LiteLLMProvider.remember` after an answer passed the output
check), so an error or an answer the check turned down is never stored;
litellm's own automatic caching of `acompletion` stays off (`litellm.cache`
is never set, and the "cache" callbacks `Cache()` registers are removed
again, so they cost nothing per call). A stored answer keeps its text, tool
calls, finish_reason, model, usage and what it cost. A Redis URL that does
not answer a PING is a ConfigurationError before anything is sent.

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
import contextlib
import email.utils
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, MutableMapping, Protocol, Sequence

from batchrun import litellm_tuning
from batchrun.errors import (
    ConfigurationError,
    JobSpecError,
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
    "BATCH_PROVIDERS",
    "BatchPrices",
    "ChatRequest",
    "LiteLLMBatchAPI",
    "batch_provider_of",
    "InlinePrepExecutor",
    "LiteLLMProvider",
    "Provider",
    "RequestOptions",
    "ResponseCache",
    "ScriptedProvider",
    "OPENAI_HTTP_HANDLER_ENV",
    "bare_acompletion",
    "check_model",
    "check_models",
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


def check_model(model: str, api_base: str | None = None, where: str = "model") -> None:
    """Refuse a model string litellm cannot route (JobSpecError, exit 2), before anything is sent.

    The same `litellm.get_llm_provider` call every request makes, asked once
    at load (no network): `gpt4o-mini` or `opnai/gpt-4o-mini` is one clear
    error naming the field, with a close match when there is one, instead of
    an error line per ticket."""
    lm = import_litellm()
    try:
        lm.get_llm_provider(model=model, api_base=api_base)
        return
    except Exception as exc:  # litellm.BadRequestError("LLM Provider NOT provided ...") and the like
        reason = str(exc).split("\n", 1)[0].removeprefix("litellm.BadRequestError: ").strip()
    import difflib

    providers = [getattr(p, "value", p) for p in lm.provider_list]
    hint = ""
    prefix, _, name = model.partition("/")
    if name:
        close = difflib.get_close_matches(prefix, providers, n=1, cutoff=0.6)
        if close:
            hint = f" Did you mean {close[0]}/{name}?"
    else:
        close = difflib.get_close_matches(model, [m for m in lm.model_cost if "/" not in m], n=1, cutoff=0.8)
        if close:
            provider = lm.model_cost[close[0]].get("litellm_provider")
            hint = f" Did you mean {(provider + '/') if provider else ''}{close[0]}?"
    raise JobSpecError(
        f"{where} = {model!r}: litellm cannot tell which provider serves it ({reason}).{hint} Write it as "
        "provider/model, e.g. openai/gpt-4o-mini (a LiteLLM proxy or other OpenAI-compatible server: "
        "openai/<its model name> with api_base); nothing was sent")


def check_models(job: Any) -> None:
    """`check_model` for the job's model and every [[models]] entry (compare, route, fallbacks)."""
    check_model(job.model, job.api_base)
    for index, entry in enumerate(job.models):
        check_model(entry.model, entry.api_base or job.api_base, where=f"models[{index}].model ({entry.name})")


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
        call: dict[str, Any] = {"model": self.model, "messages": request.messages, **self.params}
        if request.options is not None:
            self._add_options(call, request.options)
            call.pop("_skip_mcp_handler", None)
        assert self.response_cache is not None
        return self.response_cache.key(call, self.api_base)

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
        if self.response_cache is not None:
            await self.response_cache.aclose()


#: litellm's callback lists that `litellm.caching.Cache()` adds "cache" to (see ResponseCache).
_CACHE_CALLBACK_LISTS = ("input_callback", "success_callback", "_async_success_callback")
CACHE_NAMESPACE = "batchrun"  # Redis keys are "batchrun:<hash>"


class ResponseCache:
    """Accepted answers in litellm's cache layer (module docstring, "The response cache").

    `location` is {"dir": folder} (litellm's DiskCache) or {"url": "redis://..."}
    (litellm's RedisCache), with an optional "endpoint" that names the server
    in keys instead of the api_base. Reading or writing never raises: a backend error
    is logged and counts as a miss (the request is then sent and paid for)."""

    VERSION = 1  # of the stored payload

    def __init__(self, location: Mapping[str, str]) -> None:
        litellm = import_litellm()
        from litellm.caching.caching import Cache

        self.location = dict(location)
        before = {name: list(getattr(litellm, name, None) or []) for name in _CACHE_CALLBACK_LISTS}
        try:
            if location.get("url"):
                self._cache = Cache(type="redis", url=location["url"], namespace=CACHE_NAMESPACE)
                self._ping()
            else:
                os.makedirs(location["dir"], exist_ok=True)
                self._cache = Cache(type="disk", disk_cache_dir=location["dir"])
        except ModuleNotFoundError as exc:
            extra = "redis" if location.get("url") else "cache"
            raise ConfigurationError(f"the response cache needs {exc.name or 'a module'}: "
                                     f"pip install 'batchrun[{extra}]'") from None
        except OSError as exc:
            raise ConfigurationError(f"cannot open the response cache in {location.get('dir')}: "
                                     f"{exc.strerror}") from None
        finally:  # batchrun reads and writes the cache itself: litellm's per-call "cache" callbacks stay off
            for name, kept in before.items():
                current = getattr(litellm, name, None)
                if isinstance(current, list):
                    current[:] = kept
        self.backend = self._cache.cache

    def _ping(self) -> None:
        from batchrun.errors import redact_url

        try:
            self._cache.cache.redis_client.ping()
        except Exception as exc:
            raise ConfigurationError(f"the response cache at {redact_url(self.location['url'])} does not "
                                     f"answer: {type(exc).__name__}: {redact_secrets(str(exc), ())}") from None

    def key(self, call: Mapping[str, Any], api_base: str | None) -> str:
        """litellm's cache key of the request as sent, hashed with the endpoint (the location's
        "endpoint" when set: "simulator" for the embedded simulator, whose port changes)."""
        import hashlib

        api_base = self.location.get("endpoint") or api_base
        base = self._cache.get_cache_key(**dict(call))
        base = base.split(":", 1)[1] if base.startswith(CACHE_NAMESPACE + ":") else base
        return hashlib.sha256(f"{base}\0{api_base or ''}".encode()).hexdigest()

    async def get(self, key: str) -> Completion | None:
        try:
            raw = await self.backend.async_get_cache(key)
        except Exception as exc:  # a miss: the request is sent
            _log_cache_failure("read", exc)
            return None
        value = raw.get("response") if isinstance(raw, dict) and "response" in raw else raw
        try:
            if isinstance(value, (str, bytes)):
                import orjson

                value = orjson.loads(value)
            return _completion_from_cache(value)
        except Exception:  # not batchrun's payload (another version, damaged): a miss
            return None

    async def put(self, key: str, completion: Completion) -> None:
        import orjson

        payload = {
            "v": self.VERSION, "text": completion.text, "finish_reason": completion.finish_reason,
            "model": completion.model, "usage": completion.usage.as_dict() if completion.usage else None,
            "usage_source": completion.usage_source, "cost_usd": completion.cost_usd,
            "cost_status": completion.cost_status,
            "tool_calls": [[call.name, call.arguments, call.id] for call in completion.tool_calls],
        }
        try:
            await self.backend.async_set_cache(key, {"timestamp": time.time(),
                                                     "response": orjson.dumps(payload).decode()})
        except Exception as exc:
            _log_cache_failure("write", exc)

    def clear(self) -> int:
        """Remove every answer batchrun stored here; returns how many (Redis: only "batchrun:" keys)."""
        if isinstance(self.location.get("url"), str):
            client = self.backend.redis_client
            removed = 0
            for found in client.scan_iter(match=f"{CACHE_NAMESPACE}:*", count=1000):
                removed += int(client.delete(found))
            return removed
        disk = self.backend.disk_cache
        count = len(disk)
        disk.clear()
        return count

    def __len__(self) -> int:
        if isinstance(self.location.get("url"), str):
            return sum(1 for _ in self.backend.redis_client.scan_iter(match=f"{CACHE_NAMESPACE}:*", count=1000))
        return len(self.backend.disk_cache)

    async def aclose(self) -> None:
        try:
            if isinstance(self.location.get("url"), str):
                await self.backend.disconnect()
            else:
                self.backend.disk_cache.close()
        except Exception:  # closing is best effort
            pass


def _log_cache_failure(what: str, exc: Exception) -> None:
    import logging

    logging.getLogger("batchrun").warning("response cache %s failed (treated as a miss): %s: %s", what,
                                          type(exc).__name__, redact_secrets(str(exc), ()))


def _completion_from_cache(value: Mapping[str, Any]) -> Completion:
    """A stored payload as a cache hit: cost 0 now, what it cost then in cost_saved_usd."""
    if value.get("v") != ResponseCache.VERSION:
        raise ValueError("not a batchrun cache payload")
    usage = value.get("usage")
    return Completion(
        text=str(value["text"]), finish_reason=value.get("finish_reason"), model=value.get("model"),
        usage=Usage(**usage) if usage else None, cost_usd=0.0, cost_status="cache_hit",
        tool_calls=tuple(ToolCall(name, arguments, call_id) for name, arguments, call_id in value.get("tool_calls") or ()),
        usage_source=value.get("usage_source") or "provider", cache_hit=True,
        cost_saved_usd=value.get("cost_usd"),
    )


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


# -- the Batch API seam (batch_mode.py) ---------------------------------------------

#: litellm 1.106's providers with a batch *create* (litellm.acreate_batch's custom_llm_provider).
BATCH_PROVIDERS = frozenset({"openai", "azure", "vertex_ai", "bedrock", "hosted_vllm", "litellm_proxy", "mistral",
                             "xai"})
#: ... and those whose batches can be listed (alist_batches), so a lost create can be adopted.
BATCH_LIST_PROVIDERS = frozenset({"openai", "azure", "hosted_vllm", "litellm_proxy", "xai"})


def batch_provider_of(model: str, api_base: str | None = None) -> str | None:
    """litellm's provider name for `model`, as its batch functions want it (None: litellm cannot tell)."""
    lm = import_litellm()
    try:
        return str(lm.get_llm_provider(model=model, api_base=api_base)[1])
    except Exception:
        return None


@dataclass(frozen=True, slots=True)
class BatchPrices:
    """USD per token for batch requests, and the cost_status the lines carry."""

    input_per_token: float
    output_per_token: float
    status: str  # "litellm_batch", "half_online", "job_prices", "job_prices_half" (module docstring)

    def cost(self, usage: Usage) -> float:
        return usage.prompt_tokens * self.input_per_token + usage.completion_tokens * self.output_per_token


class LiteLLMBatchAPI:
    """litellm's file and batch functions under batchrun's rules.

    Every call passes `max_retries=0` (the OpenAI SDK would otherwise send a
    lost create two more times and make duplicate, paid batches; tenacity in
    batch_mode.py retries only where a retry cannot duplicate) and
    `litellm_metadata={"batch_ignore_default_logging": True}` (else
    litellm's logging downloads a finished batch's output and error files
    to price them, on every retrieve). Results are plain dicts; exceptions
    are translated by `translate_error` with the key scrubbed. File content
    is streamed to disk in chunks (`download`), never held in memory.
    """

    def __init__(self, *, model: str, api_base: str | None = None, api_key: str | None = None,
                 timeout_s: float = 600.0, prices: PricesSpec | None = None) -> None:
        self.model = model
        self.api_base = api_base
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.prices = prices
        self._secrets = tuple(s for s in (api_key,) if s)
        self._litellm = import_litellm()
        self.provider = batch_provider_of(model, api_base) or "openai"

    def __repr__(self) -> str:  # never show the key
        return f"LiteLLMBatchAPI(model={self.model!r}, api_base={self.api_base!r})"

    @property
    def can_list(self) -> bool:
        return self.provider in BATCH_LIST_PROVIDERS

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(custom_llm_provider=self.provider, max_retries=0, timeout=self.timeout_s,
                                      litellm_metadata={"batch_ignore_default_logging": True})
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        return kwargs

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await getattr(self._litellm, name)(*args, **{**self._kwargs(), **kwargs})
        except Exception as exc:  # cancellation passes through
            error = translate_error(exc, self._secrets)
            # litellm's file and batch functions wrap some HTTP errors in BadRequestError: go by the status
            if isinstance(error, TerminalError) and error.status_code == 429:
                error = RateLimitedError(error.message, kind="rate_limited", status_code=429,
                                         retry_after=_parse_retry_after(_headers_of(exc)),
                                         error_type=error.error_type)
            elif isinstance(error, TerminalError) and error.status_code is not None and (
                    error.status_code >= 500 or error.status_code == 408):
                error = RetryableError(error.message, kind="server_error", status_code=error.status_code,
                                       error_type=error.error_type)
            raise error from None

    @staticmethod
    def _plain(obj: Any) -> dict[str, Any]:
        if isinstance(obj, dict):
            return obj
        dump = getattr(obj, "model_dump", None)
        return dump() if dump is not None else dict(obj)

    async def create_file(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Upload a batch input file (the SDK streams it from the open handle)."""
        with open(path, "rb") as handle:
            return self._plain(await self._call("acreate_file", file=(os.path.basename(path), handle),
                                                purpose="batch"))

    async def create_batch(self, input_file_id: str, metadata: Mapping[str, str],
                           endpoint: str = "/v1/chat/completions", window: str = "24h") -> dict[str, Any]:
        return self._plain(await self._call("acreate_batch", completion_window=window, endpoint=endpoint,
                                            input_file_id=input_file_id, metadata=dict(metadata)))

    async def retrieve_batch(self, batch_id: str) -> dict[str, Any]:
        return self._plain(await self._call("aretrieve_batch", batch_id=batch_id))

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self._plain(await self._call("acancel_batch", batch_id=batch_id))

    async def list_batches(self, after: str | None = None, limit: int = 100) -> dict[str, Any]:
        """One page: {"data": [batch dicts], "has_more": bool, "last_id": ...}; metadata is NOT filtered
        by the provider (litellm accepts it and drops it): filter on the client."""
        page = await self._call("alist_batches", after=after, limit=limit)
        plain = self._plain(page)
        plain["data"] = [self._plain(item) for item in plain.get("data") or []]
        return plain

    async def download(self, file_id: str, dest: str | os.PathLike[str], chunk_size: int = 1 << 20) -> int:
        """Stream a file's content into `dest` (replaced atomically); returns its size."""
        import anyio

        tmp = f"{os.fspath(dest)}.part"
        size = 0
        result = await self._call("afile_content", file_id=file_id, stream=True, chunk_size=chunk_size)
        iterator = getattr(result, "stream_iterator", None)
        try:
            async with await anyio.open_file(tmp, "wb") as handle:
                if iterator is None:  # a provider without streaming: litellm holds the body
                    blob = getattr(result, "content", None) or b""
                    await handle.write(blob)
                    size = len(blob)
                else:
                    async for chunk in iterator:
                        await handle.write(chunk)
                        size += len(chunk)
                await handle.flush()
                await anyio.to_thread.run_sync(os.fsync, handle.wrapped.fileno())
        except Exception as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise translate_error(exc, self._secrets) from None
        os.replace(tmp, dest)
        return size

    def batch_prices(self) -> BatchPrices | None:
        """The batch price of this model: job prices (batch ones, else half), litellm's batch
        prices, else half litellm's online prices; None for an unpriced model."""
        prices = self.prices
        if prices is not None:
            if prices.batch_input_per_million is not None and prices.batch_output_per_million is not None:
                return BatchPrices(prices.batch_input_per_million / 1e6, prices.batch_output_per_million / 1e6,
                                   "job_prices")
            return BatchPrices(prices.input_per_million / 2e6, prices.output_per_million / 2e6, "job_prices_half")
        try:
            info = self._litellm.get_model_info(model=self.model)
        except Exception:
            return None
        batch_in, batch_out = info.get("input_cost_per_token_batches"), info.get("output_cost_per_token_batches")
        if batch_in is not None and batch_out is not None:
            return BatchPrices(float(batch_in), float(batch_out), "litellm_batch")
        online_in, online_out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
        if online_in is None or online_out is None:
            return None
        return BatchPrices(float(online_in) / 2, float(online_out) / 2, "half_online")

    def completion_of(self, body: Mapping[str, Any], prices: BatchPrices | None) -> Completion:
        """A Completion from a batch output line's response body (a chat.completion object),
        priced at the batch price."""
        choice = (body.get("choices") or [None])[0]
        if not isinstance(choice, Mapping):
            raise ValueError("the response body has no choices")
        message = choice.get("message") or {}
        raw_usage = body.get("usage")
        usage = None
        if isinstance(raw_usage, Mapping) and raw_usage.get("total_tokens") is not None:
            usage = Usage(prompt_tokens=int(raw_usage.get("prompt_tokens") or 0),
                          completion_tokens=int(raw_usage.get("completion_tokens") or 0),
                          total_tokens=int(raw_usage.get("total_tokens") or 0))
        if usage is None:
            cost, status = None, "no_usage"
        elif prices is None:
            cost, status = None, "unpriced_model"
        else:
            cost, status = prices.cost(usage), prices.status
        calls = tuple(ToolCall(name=str((c.get("function") or {}).get("name") or ""),
                               arguments=(c.get("function") or {}).get("arguments") or "", id=c.get("id"))
                      for c in (message.get("tool_calls") or []) if isinstance(c, Mapping))
        return Completion(text=message.get("content") or "", finish_reason=choice.get("finish_reason"),
                          model=body.get("model"), usage=usage, cost_usd=cost, cost_status=status,
                          tool_calls=calls)

    def request_body(self, request: ChatRequest, params: Mapping[str, Any]) -> dict[str, Any]:
        """The body of one batch input line: what an online call of this request would send."""
        body: dict[str, Any] = {"model": self.model.split("/", 1)[1] if "/" in self.model else self.model,
                                "messages": request.messages, **params}
        options = request.options
        if options is not None:
            if options.json_schema is not None and options.send_json_schema != "never":
                supported = options.send_json_schema == "always"
                if not supported:
                    try:
                        supported = bool(self._litellm.supports_response_schema(model=self.model))
                    except Exception:
                        supported = False
                if supported:
                    body["response_format"] = {"type": "json_schema", "json_schema": {
                        "name": options.json_schema_name, "schema": options.json_schema,
                        "strict": options.json_schema_strict}}
            if options.tools:
                body["tools"] = options.tools
                if options.tool_choice is not None:
                    body["tool_choice"] = options.tool_choice
        return body

    async def aclose(self) -> None:
        return None

