"""Every error a provider call can raise, mapped once onto batchrun's RequestError tree.

    translate_error(exc)          litellm / OpenAI SDK / Anthropic SDK / transport exceptions -> RequestError
    error_for_status(status, ...)  an HTTP status (and the provider's error code) -> RequestError:
                                  for answers that arrive as data (a batch output line), and the
                                  fallback of translate_error for exceptions that carry a status
    parse_retry_after(headers)    seconds from retry-after-ms, retry-after seconds or an HTTP date

Kinds and which are retried: errors.py. A refused or reset connection is kind
`connection` with no status even where litellm calls it a 500; the API key is
scrubbed from every message.
"""

from __future__ import annotations

import email.utils
import sys
import time
from typing import Mapping

from batchrun.errors import (
    RateLimitedError,
    RequestError,
    RetryableError,
    TerminalError,
    redact_secrets,
)
from batchrun.providers.litellm_setup import loaded_litellm


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
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


def error_for_status(status: int | None, message: str, *, code: object = None, error_type: str = "HTTPError",
                     retry_after: float | None = None) -> RequestError:
    """The RequestError of an HTTP error status: 429 rate_limited, 408 timeout, 409 and 5xx server_error
    (all retried); 401/403/404 and other 4xx terminal, a provider `code` naming the kind when it can.
    No status (an error with none): a retried server_error."""
    if status == 429:
        return RateLimitedError(message, kind="rate_limited", status_code=429, retry_after=retry_after,
                                error_type=error_type)
    if status is None or status in (408, 409) or status >= 500:
        return RetryableError(message, kind="timeout" if status == 408 else "server_error", status_code=status,
                              retry_after=retry_after, error_type=error_type)
    kind = CODE_KINDS.get(str(code)) or STATUS_KINDS.get(status, "bad_request")
    return TerminalError(message, kind=kind, status_code=status, error_type=error_type)


def translate_error(exc: BaseException, secrets: tuple[str, ...] | list[str] = ()) -> RequestError:
    """Map any exception from a provider call onto batchrun's RequestError tree."""
    if isinstance(exc, RequestError):
        return exc
    message = redact_secrets(str(exc) or type(exc).__name__, secrets)[:1000]
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
    if lm is not None:
        if isinstance(exc, lm.RateLimitError):
            return RateLimitedError(
                message, kind="rate_limited", status_code=429,
                retry_after=parse_retry_after(headers_of(exc)), error_type=name,
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
    anthropic = sys.modules.get("anthropic")  # its SDK (batch mode's Anthropic Message Batches), if loaded
    if anthropic is not None and isinstance(exc, anthropic.APIConnectionError):  # no answer: no status
        kind = "timeout" if isinstance(exc, anthropic.APITimeoutError) else "connection"
        return RetryableError(message, kind=kind, status_code=None, error_type=name)
    if status is not None and status >= 400:
        return error_for_status(status, message, error_type=name, retry_after=parse_retry_after(headers_of(exc)))
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
