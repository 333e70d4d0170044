"""Every error a provider call can raise, mapped once onto batchrun's RequestError tree, and the
one reader of what an endpoint says in its headers.

    translate_error(exc)          litellm / OpenAI SDK / Anthropic SDK / transport exceptions -> RequestError
    error_for_status(status, ...)  an HTTP status (and the provider's error code) -> RequestError:
                                  for answers that arrive as data (a batch output line, a files or
                                  batches endpoint), and the fallback of translate_error for
                                  exceptions that carry a status
    provider_headers(headers)     names lower-cased, litellm's `llm_provider-` prefixes taken off
                                  (a proxy adds one, the client another): what every reader below
                                  and execution/limits.parse_rate_limit_headers read
    parse_wait(value)             seconds from a number, a duration ("6m0s", "120ms"), an HTTP date
                                  or an ISO-8601 time
    parse_retry_after(headers)    seconds from retry-after-ms, or retry-after as seconds or an HTTP
                                  date, in any of those spellings
    provider_message(text)        the provider's own message out of litellm's exception text
    upstream_attempts(headers)    the requests a LiteLLM proxy says it sent upstream for one answer
                                  (1 + x-litellm-attempted-retries + x-litellm-attempted-fallbacks),
                                  or None when the endpoint says nothing
    is_budget_answer(message, code)  a budget or quota that is spent (LiteLLM's "crossed budget",
                                  budget_exceeded; OpenAI's insufficient_quota): kind
                                  `budget_exceeded`, never retried (its 429 is not a rate limit)
    unusable_answer(reason, body) a 200 that cannot be used -> InvalidResponseError (kind
                                  invalid_response): the reason and the body's first
                                  BODY_EXCERPT_BYTES bytes (redacted), the usage it carried

Kinds and which are retried: errors.py. A refused or reset connection is kind
`connection` with no status even where litellm calls it a 500; every retryable
error carries the endpoint's Retry-After when it gave one (so retry.max_retry_after_s
holds for a 503 as for a 429); EMFILE or ENFILE under an error (no descriptor left
for the socket) is `local_resource`; the API key is scrubbed from every message.
A 401, 403 or 404 is auth, permission or not_found in whatever class litellm wraps
it (a 401 whose body says invalid_request_error comes as a BadRequestError). A 200
whose body litellm cannot turn into a chat completion (litellm's "Invalid response
object" with a traceback, or "choices that is not a list") is `invalid_response`
with a short message: what is wrong with the body and how it begins, never
litellm's traceback or local paths.
"""

from __future__ import annotations

import email.utils
import math
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from batchrun.errors import (
    InvalidResponseError,
    RateLimitedError,
    RequestError,
    RetryableError,
    TerminalError,
    redact_secrets,
)
from batchrun.providers.litellm_setup import loaded_litellm

#: what litellm puts before a provider's header when it passes it on (a proxy's client sees it twice)
PROVIDER_PREFIX = "llm_provider-"


def provider_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """Header names lower-cased with every `llm_provider-` prefix taken off. Where a name comes
    both as the endpoint's own and as one it passed on from upstream, its own (fewer prefixes) wins."""
    if not headers:
        return {}
    found: dict[str, tuple[int, str]] = {}
    try:
        items = list(headers.items())
    except (AttributeError, TypeError):
        return {}
    for key, value in items:
        name, depth = str(key).lower(), 0
        while name.startswith(PROVIDER_PREFIX):
            name, depth = name[len(PROVIDER_PREFIX):], depth + 1
        if name not in found or depth < found[name][0]:
            found[name] = (depth, str(value))
    return {name: value for name, (_, value) in found.items()}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wait(value: str | None) -> float | None:
    """Seconds to wait from a header value: plain seconds, a duration ("1s", "6m0s", "120ms"),
    an HTTP date or an ISO-8601 time (in the past: 0). None for anything else (NaN included)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return None if math.isnan(seconds) else max(0.0, seconds)
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        return sum(float(n) * _DURATION_SCALE[u] for n, u in parts)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def parse_retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds from retry-after-ms, or retry-after as seconds or an HTTP date, in every spelling
    litellm hands over (`llm_provider-retry-after`, ...; provider_headers)."""
    names = provider_headers(headers)
    if "retry-after-ms" in names:
        try:
            ms = float(names["retry-after-ms"])
        except ValueError:
            ms = math.nan
        if not math.isnan(ms):
            return max(0.0, ms / 1000.0)
    return parse_wait(names.get("retry-after"))


def upstream_attempts(headers: Mapping[str, Any] | None) -> int | None:
    """The requests a LiteLLM proxy says it made upstream for one answer: 1 (its first try) +
    x-litellm-attempted-retries + x-litellm-attempted-fallbacks; None when it says nothing."""
    names = provider_headers(headers)
    total, reported = 1, False
    for name in ("x-litellm-attempted-retries", "x-litellm-attempted-fallbacks"):
        try:
            count = int(float(names[name]))
        except (KeyError, ValueError, OverflowError):
            continue
        if count >= 0:
            total += count
            reported = True
    return total if reported else None


#: error codes and types that say a budget or quota is spent (not a rate limit: waiting does not help)
BUDGET_CODES = frozenset({"insufficient_quota", "budget_exceeded"})
_BUDGET_TEXT = re.compile(r"crossed budget|budget has been exceeded|budget_exceeded|budget exceeded"
                          r"|exceeded your current quota|insufficient_quota", re.IGNORECASE)


def is_budget_answer(message: str | None, code: object = None) -> bool:
    """Whether an error says a budget or quota is spent: LiteLLM's "crossed budget" (a deployment,
    provider or tag budget) and budget_exceeded (a key, user or team budget), OpenAI's
    insufficient_quota."""
    return (code is not None and str(code).lower() in BUDGET_CODES) or bool(message and _BUDGET_TEXT.search(message))


def headers_of(exc: BaseException) -> Mapping[str, str] | None:
    for name in ("litellm_response_headers", "headers"):
        headers = getattr(exc, name, None)
        if headers:
            return headers
    response = getattr(exc, "response", None)
    return getattr(response, "headers", None)


#: provider error codes that name a kind better than their HTTP status does
CODE_KINDS = {
    "context_length_exceeded": "context_window",
    "content_policy_violation": "content_policy",
    "invalid_api_key": "auth",
    "model_not_found": "not_found",
}
STATUS_KINDS = {401: "auth", 403: "permission", 404: "not_found", 408: "timeout", 429: "rate_limited"}


def rate_limit_kind(message: str, code: object = None) -> str:
    """"resource_unavailable" for OpenAI's flex 429 (no capacity at the flex tier right now: not a
    rate limit, never billed; ticket_runner.py may send the request at the standard tier), else
    "rate_limited"."""
    text = f"{code or ''} {message}".lower()
    return "resource_unavailable" if "resource_unavailable" in text or "resource unavailable" in text \
        else "rate_limited"


def error_for_status(status: int | None, message: str, *, code: object = None, error_type: str = "HTTPError",
                     retry_after: float | None = None) -> RequestError:
    """The RequestError of an HTTP error status: 429 rate_limited, 408 timeout, 409 and 5xx server_error
    (all retried); 401/403/404 and other 4xx terminal, a provider `code` naming the kind when it can.
    No status (an error with none): a retried server_error. A 4xx saying a budget or quota is spent
    (is_budget_answer) is kind budget_exceeded, never retried."""
    if status is not None and 400 <= status < 500 and is_budget_answer(message, code):
        return TerminalError(message, kind="budget_exceeded", status_code=status, error_type=error_type)
    if status == 429:
        return RateLimitedError(message, kind=rate_limit_kind(message, code), status_code=429,
                                retry_after=retry_after, error_type=error_type)
    if status is None or status in (408, 409) or status >= 500:
        return RetryableError(message, kind="timeout" if status == 408 else "server_error", status_code=status,
                              retry_after=retry_after, error_type=error_type)
    kind = CODE_KINDS.get(str(code)) or STATUS_KINDS.get(status, "bad_request")
    return TerminalError(message, kind=kind, status_code=status, error_type=error_type)


_OPENAI_MESSAGE = re.compile(r"""["']message["']\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""")
_CLASS_PREFIX = re.compile(r"^(?:(?:litellm\.)?[A-Za-z]+(?:Error|Exception)\s*(?:-|:)\s*)+")


def provider_message(text: str) -> str:
    """What the provider said, without litellm's exception chain: the "message" of an
    OpenAI-shaped error body when there is one (`litellm.BadRequestError: OpenAIException -
    {"error": {"message": "This model's maximum context length is ..."}}` -> `This model's
    maximum context length is ...`), else the text without its class prefixes."""
    found = _OPENAI_MESSAGE.search(text)
    if found:
        inner = found.group(1) if found.group(1) is not None else found.group(2)
        inner = inner.replace('\\"', '"').replace("\\'", "'").strip()
        if inner:
            return inner
    stripped = _CLASS_PREFIX.sub("", text.strip())
    stripped = re.sub(r"^Error code: \d{3}\s*-\s*", "", stripped)
    return stripped or text


BODY_EXCERPT_BYTES = 200  # of an unusable answer's body, in its error message
_LITELLM_INVALID = "Invalid response object"  # litellm's conversion failed (a traceback follows)
_LITELLM_NO_LIST = "provider returned 'choices' that is not a list"
_BODY_START, _BODY_END = "received_args={'response_object': ", ", 'model_response_object': "


def describe_body(body: object) -> str:
    """What is wrong with a 200 body that is not a usable chat completion (for the message)."""
    from batchrun.providers.usage_checks import usage_problem

    if not isinstance(body, Mapping):
        return f"the body is a JSON {_json_type(body)}, not a chat completion object"
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return f"no usable choice (choices: {_json_type(choices) if not isinstance(choices, list) else 'empty'})"
    if not all(isinstance(c, Mapping) and isinstance(c.get("message"), Mapping) for c in choices):
        return "no usable choice (a choice without a message)"
    usage = body.get("usage")
    if usage is not None and not isinstance(usage, Mapping):
        return f"usage is a JSON {_json_type(usage)}, not an object"
    problem = usage_problem(usage, None) if usage is not None else None
    if problem is not None:
        return f"usage: {problem[1]}"
    return "litellm cannot read it as a chat completion"


def _json_type(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def unusable_answer(reason: str, body: object, secrets: Sequence[str] = (), *,
                    status_code: int | None = 200) -> InvalidResponseError:
    """The InvalidResponseError of a 200 that cannot be used: `reason`, then the first
    BODY_EXCERPT_BYTES bytes of `body` (JSON text, redacted); the usage it carried (when it is
    an object) as `reported_usage`, for the provider to price as rejected spend."""
    import orjson

    text = body if isinstance(body, str) else orjson.dumps(body, default=str).decode()
    raw = text.encode()
    excerpt = raw[:BODY_EXCERPT_BYTES].decode(errors="ignore") + ("..." if len(raw) > BODY_EXCERPT_BYTES else "")
    usage = body.get("usage") if isinstance(body, Mapping) else None
    return InvalidResponseError(
        redact_secrets(f"the provider answered {status_code or 200} but the answer cannot be used: {reason}; "
                       f"the body begins: {excerpt}", secrets),
        reported_usage=usage if isinstance(usage, Mapping) else None, status_code=status_code)


def _litellm_body(text: str) -> object:
    """The response body litellm put in its "Invalid response object" message (a Python repr),
    read back as data (ast.literal_eval: literals only, nothing evaluated), or None."""
    import ast

    start = text.find(_BODY_START)
    if start < 0:
        return None
    start += len(_BODY_START)
    end = text.find(_BODY_END, start)
    if end < 0 or end - start > 1_000_000:
        return None
    try:
        return ast.literal_eval(text[start:end])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _unusable_from_litellm(exc: BaseException, secrets: Sequence[str]) -> InvalidResponseError | None:
    """litellm's failure to read a 200 body, as an unusable answer (module docstring), or None."""
    text = str(exc)
    if _LITELLM_INVALID in text:
        body = _litellm_body(text)
        if body is None:
            return unusable_answer("litellm cannot read it as a chat completion", "(not shown)", secrets)
        return unusable_answer(describe_body(body), body, secrets)
    if _LITELLM_NO_LIST in text:
        shown = text[text.find(_LITELLM_NO_LIST) + len("provider returned "):]
        return unusable_answer(f"no usable choice ({shown.split('. Raw keys')[0]})",
                               "(keys " + shown.split("Raw keys: ", 1)[-1][:150] + ")", secrets)
    return None


def translate_error(exc: BaseException, secrets: Sequence[str] = ()) -> RequestError:
    """Map any exception from a provider call onto batchrun's RequestError tree; the message is the
    provider's (`provider_message`), keys scrubbed."""
    if isinstance(exc, RequestError):
        return exc
    unusable = _unusable_from_litellm(exc, secrets)
    if unusable is not None:
        return unusable
    local = _out_of_descriptors(exc)
    if local is not None:
        return local
    message = redact_secrets(provider_message(str(exc)) if str(exc) else type(exc).__name__, secrets)[:1000]
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    name = type(exc).__name__
    lm = loaded_litellm()
    if isinstance(exc, TimeoutError) or (lm is not None and isinstance(exc, lm.Timeout)):
        return RetryableError(message, kind="timeout", status_code=status, error_type=name)
    cause = _transport_cause(exc)
    if cause is not None:  # litellm's "500" for a connection that failed: no status was received
        kind = "timeout" if _is_timeout(cause) else "connection"
        detail = redact_secrets(f"{type(cause).__name__}: {cause}", secrets)
        if detail not in message:
            message = f"{message} ({detail})"
        return RetryableError(message[:1000], kind=kind, status_code=None, error_type=name)
    retry_after = parse_retry_after(headers_of(exc))
    if (status is None or 400 <= status < 500) and is_budget_answer(message, _code_of(exc)):
        if status is not None or (lm is not None and isinstance(exc, lm.RateLimitError)):
            return TerminalError(message, kind="budget_exceeded", status_code=status or 429, error_type=name)
    if lm is not None:
        if isinstance(exc, lm.RateLimitError):
            return RateLimitedError(message, kind=rate_limit_kind(message, _code_of(exc)), status_code=429,
                                    retry_after=retry_after, error_type=name)
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
                if kind == "bad_request" and status in (401, 403, 404):  # litellm's "bad request" for a 401
                    kind = STATUS_KINDS[status]  # whose body says invalid_request_error: the status wins
                elif kind == "bad_request":  # (litellm 1.110 with the OpenAI SDK 3: a content-policy refusal)
                    kind = _named_kind(exc) or kind
                return TerminalError(message, kind=kind, status_code=status, error_type=name)
        if isinstance(exc, (lm.ServiceUnavailableError, lm.BadGatewayError, lm.InternalServerError)):
            return RetryableError(message, kind="server_error", status_code=status, retry_after=retry_after,
                                  error_type=name)
        if isinstance(exc, lm.APIConnectionError):
            return RetryableError(message, kind="connection", status_code=None, error_type=name)
        if isinstance(exc, lm.APIError) and status is not None and status < 400:
            # litellm's HTTP handler: a 2xx body it could not parse (the SDK path calls it a 500)
            return RetryableError(message, kind="server_error", status_code=status, error_type=name)
    anthropic = sys.modules.get("anthropic")  # its SDK (batch mode's Anthropic Message Batches), if loaded
    if anthropic is not None and isinstance(exc, anthropic.APIConnectionError):  # no answer: no status
        kind = "timeout" if isinstance(exc, anthropic.APITimeoutError) else "connection"
        return RetryableError(message, kind=kind, status_code=None, error_type=name)
    if status is not None and status >= 400:
        return error_for_status(status, message, code=_code_of(exc), error_type=name, retry_after=retry_after)
    if isinstance(exc, (ConnectionError, OSError)) or _is_transport_error(exc):
        return RetryableError(message, kind="connection", error_type=name)
    return TerminalError(message, kind="unknown", status_code=status, error_type=name)


def _causes(exc: BaseException, *, os_errors: bool = True) -> list[BaseException]:
    """`exc` and every exception under it, outermost first: __cause__, __context__, litellm's
    original_exception, and (`os_errors`) the OSError aiohttp keeps in `os_error`."""
    found: list[BaseException] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        todo += [current.__cause__, current.__context__, getattr(current, "original_exception", None)]
        if os_errors:
            todo.append(getattr(current, "os_error", None))
    return found


def _out_of_descriptors(exc: BaseException) -> TerminalError | None:
    """EMFILE / ENFILE anywhere under `exc`: this machine, not the server, ran out (kind
    local_resource, not retried: the next attempt would find none either; the run stops admitting)."""
    import errno
    import resource

    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.errno in (errno.EMFILE, errno.ENFILE):
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            limit = f"{soft:,}" if soft != resource.RLIM_INFINITY else "unlimited"
            which = (f"this process's limit, ulimit -n {limit}" if cause.errno == errno.EMFILE
                     else "the whole system's table, ENFILE; see also ulimit -n")
            return TerminalError(f"this machine ran out of file descriptors ({which}) before the request could be "
                                 "sent: raise the limit or lower the concurrency, then re-run to send it",
                                 kind="local_resource", error_type="OutOfFileDescriptors")
    return None


def _named_kind(exc: BaseException) -> str | None:
    """The kind a provider's error code names (CODE_KINDS), from `exc` or any exception under it: the
    `code` attribute the SDKs set, or the error body's "code"."""
    for cause in _causes(exc):
        body = getattr(cause, "body", None)
        error = body.get("error", body) if isinstance(body, Mapping) else None
        for code in (getattr(cause, "code", None), error.get("code") if isinstance(error, Mapping) else None):
            if isinstance(code, str) and code in CODE_KINDS:
                return CODE_KINDS[code]
    return None


def _code_of(exc: BaseException) -> object:
    """The provider's error code or type on an exception (the OpenAI SDK's `code`/`type`, or its body's)."""
    for name in ("code", "type"):
        value = getattr(exc, name, None)
        if isinstance(value, str) and value.lower() in BUDGET_CODES:
            return value
    body = getattr(exc, "body", None)
    error = body.get("error", body) if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        for name in ("code", "type"):
            value = error.get(name)
            if isinstance(value, str) and value.lower() in BUDGET_CODES:
                return value
    return None


def _transport_cause(exc: BaseException) -> BaseException | None:
    """The transport failure under a litellm exception (a refused or reset connection, a body
    cut short), or None when the server answered. litellm calls these a 500
    (`InternalServerError`, `MidStreamFallbackError`); the cause chain (`__cause__`,
    `__context__`, litellm's `original_exception`) still holds the httpx, aiohttp, OpenAI SDK
    or socket error. The innermost such error is returned."""
    transport = [cause for cause in _causes(exc, os_errors=False)[1:] if not _carries_status(cause) and (
        _is_transport_error(cause) or _is_sdk_connection_error(cause) or isinstance(cause, ConnectionError))]
    return transport[-1] if transport else None


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
