"""Patches to litellm internals, in one place: imported only by provider.py.

batchrun runs on a range of litellm releases (pyproject.toml: 1.106 to 1.110.x).
Each patch checks, when it is installed, that its target still looks as
expected (the function exists, takes the arguments the wrapper passes on, and
is called where the patch assumes); when it does not, the patch is not
applied, litellm keeps its own behaviour, and a line says why at -v. The
report of the installed litellm is `STATUS` (patch -> "installed" or the
reason); tests/test_litellm_range.py checks it against EXPECTED on every
version in range (`make test` on the newest, `make test-litellm-min` on the
oldest). A wrapper is installed once (a marker attribute). The measurements
that justify the patches are in docs/internals.md.

    install(litellm)           the function wrappers below, at import time
                               (providers.litellm_setup.import_litellm calls it);
                               returns STATUS
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
  * the model-mode cache. litellm 1.106 looks the model up twice per chat call
    (the Responses-API bridge check in `litellm.main`) only to read its "mode".
    During batchrun's calls `litellm.main.get_model_info_helper` (whose only
    caller is that check) is answered from a small cache per (model,
    provider, size of `litellm.model_cost`), as a copy; failures are not
    kept, other callers are not affected. litellm 1.110 no longer looks the
    model up there (and caches the lookup itself): not applied, not needed;
  * no hidden resend. `AsyncHTTPHandler.post` (litellm's HTTP handler)
    catches httpx's RemoteProtocolError and ConnectError (1.106; ConnectError
    only from 1.110, whose aiohttp transport calls a reset a ReadError), which
    its aiohttp transport raises for a connection reset before the response
    headers, and sends the request again, once, on a fresh client through
    `single_connection_post_request` (1.106) or `single_connection_request`
    (1.110; its only caller is that except clause). The server may have
    processed the first request, and batchrun never counted the second.
    During batchrun's calls the wrapper re-raises the exception being handled
    there instead, so the failure reaches tenacity as one counted attempt;
    other callers keep litellm's behaviour (tests/test_wire_attempts.py);
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
import inspect
import logging
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
INSTALLED = "installed"
#: Each patch of the litellm imported: INSTALLED, or why it was not applied (install() fills it).
STATUS: dict[str, str] = {}
#: The patches each tested litellm release gets (tests/test_litellm_range.py): all of them, but
#: the model-mode cache, whose target is gone in 1.110 (litellm caches that lookup itself).
EXPECTED: dict[str, frozenset[str]] = {
    "1.106": frozenset({"inline_prep", "http_handler_switch", "quiet_success_logging", "model_mode_cache",
                        "no_hidden_resend"}),
    "1.110": frozenset({"inline_prep", "http_handler_switch", "quiet_success_logging", "no_hidden_resend"}),
}
log = logging.getLogger("batchrun")


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _parameters(fn: Any) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


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
    """Replace `module.name` (a litellm internal, checked by the caller) by `wrap(original)`,
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


def _install_quiet_success_logging(litellm: ModuleType) -> str:
    """Skip litellm's asynchronous success logging of batchrun's plain calls when no
    callback would receive it (module docstring). INSTALLED, or why not."""
    target = getattr(sys.modules.get("litellm.utils"), "_schedule_async_success_logging", None)
    if target is None:
        return "litellm.utils._schedule_async_success_logging is gone"
    if _parameters(getattr(target, "__wrapped__", target))[:1] != ["logging_obj"]:
        return "litellm.utils._schedule_async_success_logging no longer takes logging_obj first"

    def wrap(schedule: Callable[..., object]) -> Callable[..., object]:
        def schedule_unless_quiet(logging_obj: object, *args: object, **kwargs: object) -> object:
            if CALL_KIND.get() == "plain" and not _success_logging_needed(litellm, logging_obj):
                return None
            return schedule(logging_obj, *args, **kwargs)
        return schedule_unless_quiet

    installed = _wrap_litellm_function("litellm.utils", "_schedule_async_success_logging", "batchrun_quiet", wrap)
    return INSTALLED if installed else "litellm.utils._schedule_async_success_logging is gone"


#: At most this many (model, provider) entries in the model-mode cache below.
MODEL_MODE_CACHE_SIZE = 64


def _install_model_mode_cache(litellm: ModuleType) -> str:
    """Look a model up in litellm's model list once per (model, provider) during batchrun's
    calls, not twice per call (module docstring). INSTALLED, or why not."""
    main = sys.modules.get("litellm.main")
    target = getattr(main, "get_model_info_helper", None)
    if target is None:
        return "litellm.main no longer looks models up (litellm caches that lookup itself): not needed"
    if not {"model", "custom_llm_provider"} <= set(_parameters(getattr(target, "__wrapped__", target))):
        return "litellm.main.get_model_info_helper no longer takes model and custom_llm_provider"

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

    installed = _wrap_litellm_function("litellm.main", "get_model_info_helper", "batchrun_cached", wrap)
    return INSTALLED if installed else "litellm.main.get_model_info_helper is gone"


#: The resend after a failed connection: (the function post() calls in its except clause, that clause)
RESEND_TARGETS = (
    ("single_connection_post_request", "except (httpx.RemoteProtocolError, httpx.ConnectError):"),  # 1.106
    ("single_connection_request", "except httpx.ConnectError:"),  # 1.110
)


def _install_no_hidden_resend(litellm: ModuleType) -> str:
    """Stop litellm's HTTP handler from sending batchrun's request a second time after a
    failed connection (module docstring). INSTALLED, or why not."""
    import httpx  # litellm's dependency

    resent_on = (httpx.RemoteProtocolError, httpx.ConnectError)  # what post()'s except clauses catch
    module = sys.modules.get("litellm.llms.custom_httpx.http_handler")
    handler = getattr(module, "AsyncHTTPHandler", None)
    post = _source(getattr(handler, "post", None))
    found = [(name, clause) for name, clause in RESEND_TARGETS
             if getattr(handler, name, None) is not None and clause in post and f"self.{name}(" in post]
    if not found:
        return ("AsyncHTTPHandler.post no longer resends through single_connection_post_request or "
                "single_connection_request after a failed connection")
    name = found[0][0]
    original = getattr(handler, name)
    if getattr(original, "batchrun_no_resend", False):
        return INSTALLED

    @functools.wraps(original)
    async def no_resend(self: object, *args: object, **kwargs: object) -> httpx.Response:
        if CALL_KIND.get() is not None:
            handled = sys.exception()  # what post()'s except clause caught (3.11+)
            if isinstance(handled, resent_on):
                raise handled
        return await original(self, *args, **kwargs)

    setattr(no_resend, "batchrun_no_resend", True)  # the marker, as _wrap_litellm_function sets it
    setattr(handler, name, no_resend)
    return INSTALLED


def _check_inline_prep(litellm: ModuleType) -> str:
    """The inline preparation relies on acompletion handing `partial(Context.run, partial(completion,
    ...))` to loop.run_in_executor: INSTALLED when it still does (the executor is set per loop)."""
    main = sys.modules.get("litellm.main")
    source = _source(getattr(main, "acompletion", None))
    if getattr(main, "completion", None) is None or "run_in_executor" not in source \
            or "partial(ctx.run" not in source.replace(" ", ""):
        return "litellm.main.acompletion no longer hands completion() to run_in_executor"
    return INSTALLED


def _check_http_handler_switch(litellm: ModuleType) -> str:
    """litellm's own HTTP handler for openai/ calls is chosen by OPENAI_HTTP_HANDLER_ENV, read on
    every call: INSTALLED when litellm still reads it."""
    if OPENAI_HTTP_HANDLER_ENV not in _source(sys.modules.get("litellm.main")):
        return f"litellm.main no longer reads {OPENAI_HTTP_HANDLER_ENV}"
    return INSTALLED


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


def install(litellm: ModuleType) -> dict[str, str]:
    """Install the wrappers of litellm's internals (each once), each after checking its target
    (module docstring); a patch that does not apply is named at -v. Returns STATUS."""
    STATUS.update({
        "inline_prep": _check_inline_prep(litellm),
        "http_handler_switch": _check_http_handler_switch(litellm),
        "quiet_success_logging": _install_quiet_success_logging(litellm),
        "model_mode_cache": _install_model_mode_cache(litellm),
        "no_hidden_resend": _install_no_hidden_resend(litellm),
    })
    version = getattr(litellm, "version", None) or _litellm_version()
    for name, status in STATUS.items():
        if status != INSTALLED:
            log.info("litellm %s: batchrun's %s patch is not applied: %s; litellm keeps its own behaviour",
                     version, name, status)
    return dict(STATUS)


def _litellm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("litellm")
    except PackageNotFoundError:
        return "unknown"
