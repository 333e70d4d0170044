"""Patches to litellm internals, in one place: imported only by provider.py.

Each patch is pinned to litellm 1.106.0 (pyproject pins it exactly) and has a
test that it is installed on that version (tests/test_provider_transport.py).
A litellm without the patched function keeps its own behaviour: a wrapper is
installed only when its target exists, and once (a marker attribute). The
measurements that justify them are in docs/internals.md.

    install(litellm)           the three function wrappers below, at import time
                               (provider.import_litellm calls it)
    remember_user_transport()  read OPENAI_HTTP_HANDLER_ENV before litellm's import
    user_transport()           ... what the user set (None: batchrun chooses)
    install_inline_prep(loop)  InlinePrepExecutor as the loop's default executor
    size_pool(n)               litellm's aiohttp pool raised to n connections after its import
    CALL_KIND, INLINE_PREP     context variables LiteLLMProvider sets around
                               its calls; every patch is a no-op outside them

The patches:
  * inline request preparation. litellm's `acompletion` hands its synchronous
    request preparation (`litellm.main.completion`: parameter mapping, the
    logging object, building the HTTP request; no network I/O for the
    providers in `INLINE_PREP_PROVIDERS`) to the event loop's default thread
    pool. That work holds the GIL, so the thread buys no parallelism, only
    contention. For those providers the preparation runs inline on the loop
    thread: `InlinePrepExecutor`, installed as the running loop's default
    executor on first use, runs a submitted call at once only when it is
    litellm's preparation *and* a LiteLLMProvider of a listed provider made
    the call (INLINE_PREP says so); everything else (aiofiles' writes, DNS
    lookups, other providers, whose preparation may fetch credentials) still
    goes to its threads;
  * litellm's own HTTP handler for plain OpenAI-compatible calls. During the
    inline preparation of such a call the executor sets litellm's switch
    `EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER=true` (read there, on every
    call) and removes it afterwards. Same request body and headers, same
    exception types and `response_cost`; the SDK's request transformation,
    response parsing and cookie handling are skipped. An unparsable 200 body
    is an `APIError` with status 200 instead of a 500, retried the same way
    (provider.translate_error). Streamed calls keep the SDK path (the switch
    is "false"): litellm's handler silently drops an SSE chunk it cannot parse
    and reports the stream as complete, where the SDK raises
    (tests/test_sim_faults.py). A value the user set in the environment wins
    for every call;
  * quiet success logging. After every call litellm queues a task building
    its standard logging payload for its callbacks; batchrun registers none.
    The wrapper of `litellm.utils._schedule_async_success_logging` returns at
    once inside a LiteLLMProvider plain call when no callback is registered
    (litellm's `callbacks`, `success_callback`, `_async_success_callback`,
    the call's own) and no `litellm.max_budget` is set. Registered callbacks
    get every event as before, streamed calls are untouched, and other code
    calling litellm (the bench's bare pattern) keeps litellm's behaviour. The
    response, its `response_cost` and usage are built before that point;
  * the model-mode cache. litellm looks the model up twice per chat call (the
    Responses-API bridge check in `litellm.main`) only to read its "mode".
    During batchrun's calls `litellm.main.get_model_info_helper` (whose only
    caller is that check) is answered from a small cache per (model,
    provider, size of `litellm.model_cost`), as a copy; failures are not
    kept, other callers are not affected;
  * no hidden resend. `AsyncHTTPHandler.post` (litellm's HTTP handler)
    catches httpx's RemoteProtocolError and ConnectError, which its aiohttp
    transport raises for a connection reset before the response headers,
    and sends the request again, once, on a fresh client through
    `AsyncHTTPHandler.single_connection_post_request` (its only caller is
    that except clause). The server may have processed the first request,
    and batchrun never counted the second. During batchrun's calls the
    wrapper re-raises the exception being handled there instead, so the
    failure reaches tenacity as one counted attempt; other callers keep
    litellm's behaviour (tests/test_wire_attempts.py);
  * the pool size after the import. litellm reads its aiohttp limits
    (AIOHTTP_CONNECTOR_LIMIT, 1,000; AIOHTTP_CONNECTOR_LIMIT_PER_HOST, 500)
    from the environment when it is imported, into
    `litellm.llms.custom_httpx.http_handler`'s module globals, which it reads
    again each time it makes a connector (the first request). A process that
    imported litellm before it knew its concurrency (the launcher checks
    model names and [params] first) raises them there with `size_pool`, and in
    the environment for processes it starts; a limit of 0 (no limit) is left
    alone, a larger one is never lowered (tests/test_hostile_machine.py: 1,000
    requests in flight from one process).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import os
import sys
import weakref
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Mapping, ParamSpec, TypeVar

if TYPE_CHECKING:
    import httpx

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: litellm's switch that sends OpenAI chat calls through its own HTTP handler.
OPENAI_HTTP_HANDLER_ENV = "EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER"
#: Providers whose litellm request preparation does no I/O, so it may run on the loop thread.
INLINE_PREP_PROVIDERS = frozenset({
    "openai", "hosted_vllm", "litellm_proxy", "openai_like", "anthropic", "openrouter", "groq", "together_ai",
    "mistral", "deepseek", "fireworks_ai", "xai", "deepinfra", "cerebras",
})
#: Set by LiteLLMProvider around its calls: the openai/ transport its preparation should use, or None.
INLINE_PREP: contextvars.ContextVar[str | None] = contextvars.ContextVar("batchrun_inline_prep", default=None)
_USER_TRANSPORT: str | None = None  # OPENAI_HTTP_HANDLER_ENV as the user set it before litellm's import
_LOOPS_WITH_INLINE_PREP: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()
#: Set by LiteLLMProvider around its calls: "plain" or "stream" (None: not batchrun's call).
CALL_KIND: contextvars.ContextVar[str | None] = contextvars.ContextVar("batchrun_call_kind", default=None)


def _success_logging_needed(litellm: ModuleType, logging_obj: object) -> bool:
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


def _wrap_litellm_function(module: str, name: str, marker: str,
                           wrap: Callable[[Any], Callable[..., object]]) -> bool:  # wrap(litellm's function)
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


def _install_quiet_success_logging(litellm: ModuleType) -> bool:
    """Skip litellm's asynchronous success logging of batchrun's plain calls when no
    callback would receive it (module docstring). True when installed."""

    def wrap(schedule: Callable[..., object]) -> Callable[..., object]:
        def schedule_unless_quiet(logging_obj: object, *args: object, **kwargs: object) -> object:
            if CALL_KIND.get() == "plain" and not _success_logging_needed(litellm, logging_obj):
                return None
            return schedule(logging_obj, *args, **kwargs)
        return schedule_unless_quiet

    return _wrap_litellm_function("litellm.utils", "_schedule_async_success_logging", "batchrun_quiet", wrap)


#: At most this many (model, provider) entries in the model-mode cache below.
MODEL_MODE_CACHE_SIZE = 64


def _install_model_mode_cache(litellm: ModuleType) -> bool:
    """Look a model up in litellm's model list once per (model, provider) during batchrun's
    calls, not twice per call (module docstring). True when installed."""

    def wrap(lookup: Callable[..., Mapping[str, object]]) -> Callable[..., Mapping[str, object]]:
        found: dict[tuple[str, str | None, int], dict[str, object]] = {}

        def cached_lookup(model: str, custom_llm_provider: str | None = None, *args: object,
                          **kwargs: object) -> Mapping[str, object]:
            if CALL_KIND.get() is None or args or kwargs:  # not batchrun's call, or asked with more
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


def _install_no_hidden_resend(litellm: ModuleType) -> bool:
    """Stop litellm's HTTP handler from sending batchrun's request a second time after a
    failed connection (module docstring). True when installed."""
    import httpx  # litellm's dependency

    resent_on = (httpx.RemoteProtocolError, httpx.ConnectError)  # post()'s except clause
    module = sys.modules.get("litellm.llms.custom_httpx.http_handler")
    handler = getattr(module, "AsyncHTTPHandler", None)
    original = getattr(handler, "single_connection_post_request", None)
    if handler is None or original is None:
        return False
    if getattr(original, "batchrun_no_resend", False):
        return True

    @functools.wraps(original)
    async def single_connection_post_request(self: object, *args: object, **kwargs: object) -> httpx.Response:
        if CALL_KIND.get() is not None:
            handled = sys.exception()  # what post()'s except clause caught (3.11+)
            if isinstance(handled, resent_on):
                raise handled
        return await original(self, *args, **kwargs)

    setattr(single_connection_post_request, "batchrun_no_resend", True)  # the marker, as _wrap_litellm_function sets it
    handler.single_connection_post_request = single_connection_post_request
    return True


def _is_litellm_prep(fn: object) -> bool:
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

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> concurrent.futures.Future[_T]:
        transport = INLINE_PREP.get()
        if transport is None or not _is_litellm_prep(fn):
            return super().submit(fn, *args, **kwargs)
        self.inline_calls += 1
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
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


def install_inline_prep(loop: asyncio.AbstractEventLoop) -> None:
    """Make an InlinePrepExecutor the default executor of `loop` (once per loop)."""
    if loop in _LOOPS_WITH_INLINE_PREP:
        return
    previous = getattr(loop, "_default_executor", None)  # CPython's attribute; may hold idle threads
    loop.set_default_executor(InlinePrepExecutor(thread_name_prefix="batchrun-io"))
    if isinstance(previous, concurrent.futures.Executor) and not isinstance(previous, InlinePrepExecutor):
        previous.shutdown(wait=False)  # work already submitted to it still finishes
    _LOOPS_WITH_INLINE_PREP.add(loop)


def remember_user_transport() -> None:
    """Note OPENAI_HTTP_HANDLER_ENV as the user set it, before litellm's import (it then wins)."""
    global _USER_TRANSPORT
    _USER_TRANSPORT = os.environ.get(OPENAI_HTTP_HANDLER_ENV)


def user_transport() -> str | None:
    """OPENAI_HTTP_HANDLER_ENV as the user set it before litellm's import, or None."""
    return _USER_TRANSPORT


POOL_LIMITS = (("AIOHTTP_CONNECTOR_LIMIT_PER_HOST", 500), ("AIOHTTP_CONNECTOR_LIMIT", 1000))


def size_pool(max_connections: int) -> bool:
    """Raise litellm's aiohttp pool limits to at least `max_connections` (module docstring): in the
    environment, and in litellm's HTTP handler when it is imported. True when the handler was found."""
    for name, default in POOL_LIMITS:
        os.environ[name] = str(max(int(os.environ.get(name) or default), max_connections))
    handler = sys.modules.get("litellm.llms.custom_httpx.http_handler")
    if handler is None:
        return False
    for name, _ in POOL_LIMITS:
        current = getattr(handler, name, None)
        if isinstance(current, int) and 0 < current < max_connections:
            setattr(handler, name, max_connections)
    return True


def install(litellm: ModuleType) -> None:
    """Install the wrappers of litellm's internals (each once; a missing target is skipped)."""
    _install_quiet_success_logging(litellm)
    _install_model_mode_cache(litellm)
    _install_no_hidden_resend(litellm)
