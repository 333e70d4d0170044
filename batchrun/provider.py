"""The seam in front of the network, and the only module that imports litellm.

    ChatRequest        what the engine asks for: ticket id, messages, timeout,
                       and the job's RequestOptions (None for a plain job)
    RequestOptions     stream or not, the JSON schema, tools and tool_choice:
                       one per job (`RequestOptions.for_job`), shared by its requests
    Provider           the protocol the engine calls: `await complete(request)`
    LiteLLMProvider    the real one: litellm.acompletion with batchrun's rules
    ScriptedProvider   a fake for tests: answers from a function, records calls
    InlinePrepExecutor the event loop's default executor that LiteLLMProvider
                       installs: litellm's request preparation inline (below)
    import_litellm()   the lazy, configured import (see below)
    size_connection_pool()  litellm's aiohttp limits raised in an environment
                       (this process's before the import, or a worker's)
    openai_transport() which HTTP path an openai/ call takes (below)
    translate_error()  litellm/SDK/transport exceptions -> errors.RequestError

Rules for every litellm call:
  * `LITELLM_LOCAL_MODEL_COST_MAP=True` is set before litellm is imported
    (otherwise its import fetches a price list over the network), and the
    import happens on first use, so `batchrun --help` never pays for it;
  * litellm's `num_retries=0` and the OpenAI SDK's `max_retries=0`: tenacity
    (retrying.py) is the one retry layer (litellm's own HTTP handler, below,
    does not retry at all);
  * litellm's `acompletion` hands its synchronous request preparation
    (`litellm.main.completion`: parameter mapping, the logging object,
    building the HTTP request; no network I/O for the providers in
    `INLINE_PREP_PROVIDERS`) to the event loop's default thread pool. That
    work holds the GIL, so the thread buys no parallelism, only contention:
    each hop costs wake-ups, and socket calls on the loop thread then wait
    for the GIL. For those providers batchrun runs the preparation inline on
    the loop thread: `LiteLLMProvider` installs an `InlinePrepExecutor` as
    the running loop's default executor on first use, which runs a submitted
    call at once only when it is litellm's preparation *and* the call was
    made by a `LiteLLMProvider` whose provider is on the list (a context
    variable says so); everything else (aiofiles' file writes, DNS lookups,
    other providers, whose preparation may fetch credentials) still goes to
    its threads;
  * plain (non-streamed) OpenAI-compatible calls (`openai/...` models:
    OpenAI, a LiteLLM proxy, vLLM, the simulator) go through litellm's own
    HTTP handler rather than the OpenAI SDK: during the inline preparation of
    such a call the executor sets litellm's switch
    `EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER=true` (it is read there, on
    every call) and removes it afterwards. Same request body and headers,
    same exception types and `response_cost`, and the SDK's request
    transformation, response parsing and cookie handling are skipped. The
    one difference batchrun sees: an unparsable 200 body is an `APIError`
    with status 200 instead of a 500, retried the same way
    (`translate_error`). Streamed calls keep the SDK path (the switch is set
    to `false`): litellm's handler silently drops an SSE chunk it cannot
    parse and reports the stream as complete, where the SDK raises
    (tests/test_sim_faults.py). A value the user sets in the environment
    wins for every call; `openai_transport(stream)` says which path is used.
    Measured together with the inline preparation, CPU per plain request
    fell from 7.4 to 4-5 ms here (benchmarks/README.md);
  * an explicit `timeout` on every attempt;
  * litellm's asynchronous success logging is skipped for batchrun's plain
    calls when no callback would receive it. After every call litellm
    queues a task that builds its standard logging payload (model info,
    cost breakdown, message copies) for its callbacks; batchrun registers
    none, so with none registered (litellm's `callbacks`,
    `success_callback` and `_async_success_callback` lists, and the call's
    own) and no `litellm.max_budget`, that work reaches nobody. It was 8%
    of a worker process's CPU profile, and under load the queue holds
    thousands of these payloads.
    `import_litellm` wraps litellm's scheduling function
    (`litellm.utils._schedule_async_success_logging`, pinned litellm
    1.106.0; a litellm without it keeps its behaviour) so that it returns
    at once inside a `LiteLLMProvider` plain call (a context variable says
    so) when nothing is registered; any registered callback gets every
    event as before, streamed calls are untouched, and other code in the
    process calling litellm (the bench's bare pattern) keeps litellm's
    behaviour. The response, its `response_cost` and usage are built
    before that point and are the same. Measured: two workers, 128 in
    flight, four alternating pairs: 281.8 -> 308.6 requests/s on average
    (benchmarks/README.md);
  * litellm looks the model up in its model list twice per chat call (the
    Responses-API bridge check in `litellm.main`, about 67 us each here),
    only to read its "mode". During batchrun's calls that lookup
    (`litellm.main.get_model_info_helper`, whose only caller is that check)
    is answered from a small cache per (model, provider, size of
    `litellm.model_cost`), as a copy; failures are not kept, and other
    callers in the process are not affected;
  * the cost is read from `response._hidden_params["response_cost"]`, which
    litellm already computed; it is not computed a second time. Prices in the
    job file, when set, win. No price gives `cost_usd=None` plus a
    `cost_status` saying why, never a silent 0;
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
import concurrent.futures
import contextvars
import email.utils
import functools
import os
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, MutableMapping, Protocol, Sequence

from batchrun.errors import (
    JobSpecError,
    RateLimitedError,
    RequestError,
    RetryableError,
    TerminalError,
    redact_secrets,
)
from batchrun.records import Completion, ToolCall, Usage
from batchrun.spec import JobSpec, PricesSpec

__all__ = [
    "ChatRequest",
    "InlinePrepExecutor",
    "LiteLLMProvider",
    "Provider",
    "RequestOptions",
    "ScriptedProvider",
    "check_model",
    "check_models",
    "import_litellm",
    "litellm_version",
    "openai_transport",
    "size_connection_pool",
    "translate_error",
]

TICKET_HEADER = "X-Batchrun-Ticket-Id"
#: litellm's switch that sends OpenAI chat calls through its own HTTP handler (module docstring).
OPENAI_HTTP_HANDLER_ENV = "EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER"
_litellm: Any = None

#: Providers whose litellm request preparation does no I/O, so it may run on the loop thread.
INLINE_PREP_PROVIDERS = frozenset({
    "openai", "hosted_vllm", "litellm_proxy", "openai_like", "anthropic", "openrouter", "groq", "together_ai",
    "mistral", "deepseek", "fireworks_ai", "xai", "deepinfra", "cerebras",
})
#: Set by LiteLLMProvider around its calls: the openai/ transport its preparation should use, or None.
_INLINE_PREP: contextvars.ContextVar[str | None] = contextvars.ContextVar("batchrun_inline_prep", default=None)
_USER_TRANSPORT: str | None = None  # OPENAI_HTTP_HANDLER_ENV as the user set it before litellm's import
_LOOPS_WITH_INLINE_PREP: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()
#: Set by LiteLLMProvider around its calls: "plain" or "stream" (None: not batchrun's call).
_CALL_KIND: contextvars.ContextVar[str | None] = contextvars.ContextVar("batchrun_call_kind", default=None)


def _success_logging_needed(litellm: Any, logging_obj: Any) -> bool:
    """Would litellm's success logging of this call reach anything: a callback registered
    globally (any of litellm's lists) or on the call's logging object, or litellm's own
    budget (`litellm.max_budget`, whose accounting lives in that logging)?"""
    if getattr(litellm, "max_budget", None):
        return True
    for name in ("callbacks", "success_callback", "_async_success_callback"):
        if getattr(litellm, name, None):
            return True
    return any(getattr(logging_obj, name, None)
               for name in ("dynamic_success_callbacks", "dynamic_async_success_callbacks"))


def _wrap_litellm_function(module: str, name: str, marker: str, wrap: Callable[[Any], Any]) -> bool:
    """Replace `module.name` (a litellm internal, pinned litellm 1.106.0) by `wrap(original)`,
    marked with `marker` so it is wrapped once. False when litellm has no such function:
    then litellm keeps its own behaviour."""
    owner = sys.modules.get(module)
    original = getattr(owner, name, None)
    if original is None:
        return False
    if not getattr(original, marker, False):
        wrapper = functools.wraps(original)(wrap(original))
        setattr(wrapper, marker, True)
        setattr(owner, name, wrapper)
    return True


def _install_quiet_success_logging(litellm: Any) -> bool:
    """Skip litellm's asynchronous success logging of batchrun's plain calls when no
    callback would receive it (module docstring). True when installed."""

    def wrap(schedule: Any) -> Any:
        def schedule_unless_quiet(logging_obj: Any, *args: Any, **kwargs: Any) -> None:
            if _CALL_KIND.get() == "plain" and not _success_logging_needed(litellm, logging_obj):
                return None
            return schedule(logging_obj, *args, **kwargs)
        return schedule_unless_quiet

    return _wrap_litellm_function("litellm.utils", "_schedule_async_success_logging", "batchrun_quiet", wrap)


#: At most this many (model, provider) entries in the model-mode cache below.
MODEL_MODE_CACHE_SIZE = 64


def _install_model_mode_cache(litellm: Any) -> bool:
    """Look a model up in litellm's model list once per (model, provider) during batchrun's
    calls, not twice per call (module docstring). True when installed."""

    def wrap(lookup: Any) -> Any:
        found: dict[tuple[str, str | None, int], dict[str, Any]] = {}

        def cached_lookup(model: str, custom_llm_provider: str | None = None, *args: Any, **kwargs: Any) -> Any:
            if _CALL_KIND.get() is None or args or kwargs:  # not batchrun's call, or asked with more
                return lookup(model, custom_llm_provider, *args, **kwargs)
            key = (model, custom_llm_provider, len(litellm.model_cost))  # a registered model starts afresh
            info = found.get(key)
            if info is None:
                info = dict(lookup(model=model, custom_llm_provider=custom_llm_provider))  # a failure is not kept
                if len(found) >= MODEL_MODE_CACHE_SIZE:
                    found.clear()
                found[key] = info
            return dict(info)  # the caller may set "mode" on its copy
        return cached_lookup

    return _wrap_litellm_function("litellm.main", "get_model_info_helper", "batchrun_cached", wrap)


def _is_litellm_prep(fn: Any) -> bool:
    """Is `fn` what litellm's acompletion submits: partial(Context.run, partial(litellm.main.completion, ...))?"""
    if not isinstance(fn, functools.partial) or not fn.args:
        return False
    inner = fn.args[0]
    main = sys.modules.get("litellm.main")
    return isinstance(inner, functools.partial) and main is not None and inner.func is getattr(main, "completion", None)


class InlinePrepExecutor(concurrent.futures.ThreadPoolExecutor):
    """A default executor that runs litellm's request preparation inline (module docstring).

    Everything else submitted to it runs on its threads, as with any
    ThreadPoolExecutor. asyncio accepts only ThreadPoolExecutor subclasses as
    a loop's default executor, hence the base class.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inline_calls = 0  # litellm preparations run inline so far

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        transport = _INLINE_PREP.get()
        if transport is None or not _is_litellm_prep(fn):
            return super().submit(fn, *args, **kwargs)
        self.inline_calls += 1
        future: concurrent.futures.Future = concurrent.futures.Future()
        # litellm reads its transport switch while preparing; on the loop thread nothing else runs meanwhile
        switch = _USER_TRANSPORT is None
        if switch:
            os.environ[OPENAI_HTTP_HANDLER_ENV] = "true" if transport == "litellm-http" else "false"
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # raised where litellm awaits the future, as from a thread
            future.set_exception(exc)
        finally:
            if switch:
                os.environ.pop(OPENAI_HTTP_HANDLER_ENV, None)
        return future


def _install_inline_prep(loop: asyncio.AbstractEventLoop) -> None:
    """Make an InlinePrepExecutor the default executor of `loop` (once per loop)."""
    if loop in _LOOPS_WITH_INLINE_PREP:
        return
    previous = getattr(loop, "_default_executor", None)  # CPython's attribute; may hold idle threads
    loop.set_default_executor(InlinePrepExecutor(thread_name_prefix="batchrun-io"))
    if isinstance(previous, concurrent.futures.Executor) and not isinstance(previous, InlinePrepExecutor):
        previous.shutdown(wait=False)  # work already submitted to it still finishes
    _LOOPS_WITH_INLINE_PREP.add(loop)


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
    """Import and configure litellm once (slow: about 4 s here).

    `max_connections`: litellm's aiohttp pool allows 500 connections per host
    (1,000 in all), read from the environment when litellm is imported; a run
    with more requests in flight raises both so the pool never caps it.
    """
    global _litellm
    if _litellm is None:
        os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        global _USER_TRANSPORT
        _USER_TRANSPORT = os.environ.get(OPENAI_HTTP_HANDLER_ENV)  # a user's own setting wins (docstring)
        size_connection_pool(os.environ, max_connections)
        import litellm

        litellm.suppress_debug_info = True
        litellm.num_retries = 0
        litellm.telemetry = False
        _install_quiet_success_logging(litellm)
        _install_model_mode_cache(litellm)
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
    user = _USER_TRANSPORT if _litellm is not None else os.environ.get(OPENAI_HTTP_HANDLER_ENV)
    if user is not None:
        return "litellm-http" if user.strip().lower() == "true" else "openai-sdk"  # litellm's str_to_bool
    return "openai-sdk" if stream else "litellm-http"


def litellm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("litellm")
    except PackageNotFoundError:
        return "unknown"


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


def _completion_from(response: Any, prices: PricesSpec | None) -> Completion:
    choice = response.choices[0]
    message = getattr(choice, "message", None)
    text = (getattr(message, "content", None) or "") if message is not None else ""
    usage = _usage_of(response)
    if prices is not None:
        if usage is None:
            cost, status = None, "no_usage"
        else:
            cost, status = _job_price(usage, prices), "job_prices"
    else:
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = hidden.get("response_cost")
        if cost is not None:
            cost, status = float(cost), "litellm"
        elif usage is None:
            status = "no_usage"
        else:
            status = "unpriced_model"
    return Completion(
        text=text,
        finish_reason=getattr(choice, "finish_reason", None),
        model=getattr(response, "model", None),
        usage=usage,
        cost_usd=cost,
        cost_status=status,
        tool_calls=_tool_calls_of(message),
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
        kind = _CALL_KIND.set("stream" if stream else "plain")
        try:
            if not self.inline_prep:
                return await self._litellm.acompletion(**call)
            _install_inline_prep(asyncio.get_running_loop())
            token = _INLINE_PREP.set(openai_transport(stream))
            try:
                return await self._litellm.acompletion(**call)
            finally:
                _INLINE_PREP.reset(token)
        finally:
            _CALL_KIND.reset(kind)

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
            return _completion_from(response, self.prices)
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
        """Token counts with litellm.token_counter, for a stream that sent no usage."""
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
