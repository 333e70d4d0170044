"""The seam in front of the network, and the only module that imports litellm.

    ChatRequest        what the engine asks for: ticket id, messages, timeout
    Provider           the protocol the engine calls: `await complete(request)`
    LiteLLMProvider    the real one: litellm.acompletion with batchrun's rules
    ScriptedProvider   a fake for tests: answers from a function, records calls
    import_litellm()   the lazy, configured import (see below)
    translate_error()  litellm/SDK/transport exceptions -> errors.RequestError

Rules for every litellm call:
  * `LITELLM_LOCAL_MODEL_COST_MAP=True` is set before litellm is imported
    (otherwise its import fetches a price list over the network), and the
    import happens on first use, so `batchrun --help` never pays for it;
  * litellm's `num_retries=0` and the OpenAI SDK's `max_retries=0`: tenacity
    (retrying.py) is the one retry layer;
  * an explicit `timeout` on every attempt;
  * the cost is read from `response._hidden_params["response_cost"]`, which
    litellm already computed; it is not computed a second time. Prices in the
    job file, when set, win. No price gives `cost_usd=None` plus a
    `cost_status` saying why, never a silent 0;
  * the API key is passed per call and scrubbed from every error message.
"""

from __future__ import annotations

import email.utils
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from batchrun.errors import (
    RateLimitedError,
    RequestError,
    RetryableError,
    TerminalError,
    redact_secrets,
)
from batchrun.records import Completion, Usage
from batchrun.spec import PricesSpec

__all__ = [
    "ChatRequest",
    "LiteLLMProvider",
    "Provider",
    "ScriptedProvider",
    "import_litellm",
    "litellm_version",
    "translate_error",
]

TICKET_HEADER = "X-Batchrun-Ticket-Id"
_litellm: Any = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    ticket_id: str
    messages: list[dict[str, str]]
    timeout_s: float


class Provider(Protocol):
    async def complete(self, request: ChatRequest) -> Completion: ...

    def estimate_cost(self, request: ChatRequest) -> float | None:
        """USD the request may cost at most (prompt + max_tokens), None if unknown."""
        ...

    async def aclose(self) -> None: ...


def import_litellm() -> Any:
    """Import and configure litellm once (slow: about 4 s here)."""
    global _litellm
    if _litellm is None:
        os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        import litellm

        litellm.suppress_debug_info = True
        litellm.num_retries = 0
        litellm.telemetry = False
        _litellm = litellm
    return _litellm


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


def _completion_from(response: Any, prices: PricesSpec | None) -> Completion:
    choice = response.choices[0]
    message = getattr(choice, "message", None)
    text = (getattr(message, "content", None) or "") if message is not None else ""
    raw_usage = getattr(response, "usage", None)
    usage = None
    if raw_usage is not None and getattr(raw_usage, "total_tokens", None) is not None:
        usage = Usage(
            prompt_tokens=int(raw_usage.prompt_tokens or 0),
            completion_tokens=int(raw_usage.completion_tokens or 0),
            total_tokens=int(raw_usage.total_tokens or 0),
        )
    if prices is not None:
        if usage is None:
            cost, status = None, "no_usage"
        else:
            cost = (usage.prompt_tokens * prices.input_per_million
                    + usage.completion_tokens * prices.output_per_million) / 1e6
            status = "job_prices"
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
    )


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
    ) -> None:
        self.model = model
        self.api_base = api_base
        self._api_key = api_key
        self.params = dict(params or {})
        self.prices = prices
        self._secrets = tuple(s for s in (api_key,) if s)
        self._litellm = import_litellm()

    def __repr__(self) -> str:  # never show the key
        return f"LiteLLMProvider(model={self.model!r}, api_base={self.api_base!r})"

    async def complete(self, request: ChatRequest) -> Completion:
        kwargs: dict[str, Any] = dict(self.params)
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        try:
            response = await self._litellm.acompletion(
                model=self.model,
                messages=request.messages,
                timeout=request.timeout_s,
                num_retries=0,
                max_retries=0,
                extra_headers={TICKET_HEADER: request.ticket_id},
                **kwargs,
            )
        except Exception as exc:  # cancellation is a BaseException and passes through
            raise translate_error(exc, self._secrets) from None
        try:
            return _completion_from(response, self.prices)
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise RetryableError(f"malformed response: {exc}", kind="connection",
                                 error_type="MalformedResponse") from None

    def estimate_cost(self, request: ChatRequest) -> float | None:
        """Prompt tokens (litellm.token_counter) + max_tokens at the model's or the job's price."""
        lm = self._litellm
        try:
            prompt = int(lm.token_counter(model=self.model, messages=request.messages))
        except Exception:
            prompt = sum(len(m.get("content") or "") for m in request.messages) // 3
        completion = int(self.params.get("max_tokens") or self.params.get("max_completion_tokens") or 1024)
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
    (raised), and every request is recorded in `calls`."""

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
