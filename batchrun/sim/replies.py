"""What the simulator answers besides a completion: counters, parsed requests, error bodies.

    SimStats             the counters /sim/stats serves
    ParsedChatRequest    a chat request as the simulator reads it
    error_response, fault_error_response, rate_limit_response   error bodies in OpenAI's shape
    chunk_token_counts   how a streamed answer is cut into chunks
"""

from __future__ import annotations

import hashlib
import math
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, NotRequired, TypedDict

import orjson
from aiohttp import web

from batchrun.sim.billing import Invoice
from batchrun.sim.faults import TRICKLE_PIECE_BYTES, FaultRule
from batchrun.sim.jsontypes import Message
from batchrun.sim.limits import Verdict, format_duration

if TYPE_CHECKING:
    from batchrun.sim.structured import ResponseFormat, ToolChoice, ToolSpec

#: Largest accepted request body, in bytes.
MAX_REQUEST_BYTES = 32 * 1024 * 1024

#: Status recorded for a request whose handler was cancelled (client went away).
CANCELLED_STATUS = 499

#: Key in ``responses_by_status`` of a request whose connection was dropped before any status line.
NO_RESPONSE_STATUS = "reset"

#: Context window quoted by the ``context_length`` fault's message.
FAULT_CONTEXT_WINDOW = 128000

HTML_502 = b"""<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>nginx</center>
</body>
</html>
"""


class StatsSnapshot(TypedDict):
    """The body of ``GET /sim/stats`` (and of ``POST /sim/reset``)."""

    total_requests: int
    requests_by_ticket: dict[str, int]
    attempts_by_ticket: dict[str, int]
    in_flight: int
    peak_in_flight: int
    responses_by_status: dict[str, int]
    faults_by_kind: dict[str, int]
    rate_limited: int
    flex_unavailable: int
    invoice: dict[str, dict[str, dict[str, dict[str, int]]]]  # billing.Invoice.snapshot()


class Usage(TypedDict):
    """The ``usage`` object of a completion (billing.py: the prompt cache's and reasoning's counts)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: NotRequired[dict[str, int]]
    completion_tokens_details: NotRequired[dict[str, int]]
    cache_read_input_tokens: NotRequired[int]
    cache_creation_input_tokens: NotRequired[int]


class SimStats:
    """Counters of chat completion requests, as reported by ``GET /sim/stats``."""

    __slots__ = (
        "total_requests",
        "requests_by_ticket",
        "in_flight",
        "peak_in_flight",
        "responses_by_status",
        "faults_by_kind",
        "rate_limited",
        "flex_unavailable",
        "invoice",
    )

    def __init__(self) -> None:
        self.total_requests = 0
        self.requests_by_ticket: dict[str, int] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.responses_by_status: dict[str, int] = {}
        self.faults_by_kind: dict[str, int] = {}
        self.rate_limited = 0
        self.flex_unavailable = 0  # flex requests refused with a 429 resource_unavailable
        self.invoice = Invoice()  # what was billed (billing.py)

    def request_started(self, ticket_id: str | None) -> int:
        """Count an arriving request; return its attempt number for the ticket (1-based, 0 without ticket)."""
        self.total_requests += 1
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        if ticket_id is None:
            return 0
        attempt = self.requests_by_ticket.get(ticket_id, 0) + 1
        self.requests_by_ticket[ticket_id] = attempt
        return attempt

    def request_finished(self, status: int | str) -> None:
        """Count a finished request and the HTTP status it got."""
        self.in_flight -= 1
        key = str(status)
        self.responses_by_status[key] = self.responses_by_status.get(key, 0) + 1

    def fault_served(self, kind: str) -> None:
        """Count an injected fault."""
        self.faults_by_kind[kind] = self.faults_by_kind.get(kind, 0) + 1

    def reset(self) -> None:
        """Zero the counters; requests still in flight remain in flight."""
        self.total_requests = 0
        self.requests_by_ticket = {}
        self.peak_in_flight = self.in_flight
        self.responses_by_status = {}
        self.faults_by_kind = {}
        self.rate_limited = 0
        self.flex_unavailable = 0
        self.invoice = Invoice()

    def snapshot(self) -> StatsSnapshot:
        """The counters as a JSON-ready dict."""
        return {
            "total_requests": self.total_requests,
            "requests_by_ticket": dict(self.requests_by_ticket),
            "attempts_by_ticket": dict(self.requests_by_ticket),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "responses_by_status": dict(self.responses_by_status),
            "faults_by_kind": dict(self.faults_by_kind),
            "rate_limited": self.rate_limited,
            "flex_unavailable": self.flex_unavailable,
            "invoice": self.invoice.snapshot(),
        }


@dataclass(slots=True)
class ParsedChatRequest:
    """The parts of a chat completion request the simulator uses."""

    messages: list[Message]
    model: str
    max_tokens: int | None
    stream: bool
    include_usage: bool
    ticket_id: str | None
    attempt: int
    body: bytes
    # The JSON response format asked for, else None (text).
    response_format: ResponseFormat | None = None
    # The offered tools and the checked tool_choice.
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = None
    # Prompt tokens beyond the messages: the tools and JSON schema definitions ...
    extra_prompt_tokens: int = 0
    # ... and their text (what a prompt cache sees first).
    extra_prompt_text: str = ""
    # The request's "service_tier" and "prompt_cache_key", as sent (None when absent).
    service_tier: object = None
    prompt_cache_key: str | None = None


@dataclass(slots=True)
class Answer:
    """What the simulated model produced for a request."""

    # Tokens of the content, or of the tool call's arguments.
    tokens: list[str]
    finish_reason: str
    usage: Usage
    # For a tool call: the function name and the call id (else None).
    tool_name: str | None = None
    tool_call_id: str | None = None
    # The tier the response names (None: none, as for an Anthropic model).
    service_tier: str | None = None


class InvalidRequest(Exception):
    """A chat request the simulator rejects with a 400, like OpenAI would."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def error_response(
    status: int,
    message: str,
    error_type: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON response in OpenAI's error shape."""
    payload = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers)


def _seconds_text(seconds: float) -> str:
    """Seconds as short text: ``1`` for 1.0, ``0.05`` for 0.05."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def fault_error_response(rule: FaultRule, chat: ParsedChatRequest, prompt_tokens: int) -> web.Response:
    """The response of an error fault (a kind in `batchrun.sim.faults.ERROR_KINDS`)."""
    kind = rule.kind
    if kind.startswith("429"):
        retry_after = rule.retry_after_s
        headers: dict[str, str] = {}
        if kind == "429":
            headers["retry-after"] = _seconds_text(retry_after)
        elif kind == "429_date":
            headers["retry-after"] = formatdate(math.ceil(time.time() + retry_after), usegmt=True)
        elif kind == "429_ms":
            headers["retry-after-ms"] = _seconds_text(retry_after * 1000.0)
        message = (
            f"Rate limit reached for {chat.model} in organization org-sim on requests per min (RPM). "
            "Please try again later. (simulated fault)"
        )
        return error_response(429, message, "rate_limit_exceeded", None, "rate_limit_exceeded", headers)
    if kind == "500":
        return error_response(500, "The server had an error while processing your request. Sorry about that!", "server_error")
    if kind == "502":
        return error_response(502, "Bad gateway.", "server_error", code="bad_gateway")
    if kind == "503":
        return error_response(503, "The engine is currently overloaded, please try again later.", "server_error", code="service_unavailable")
    if kind == "html_error":
        return web.Response(status=502, body=HTML_502, content_type="text/html")
    if kind == "context_length":
        requested = FAULT_CONTEXT_WINDOW + prompt_tokens + (chat.max_tokens or 0)
        message = (
            f"This model's maximum context length is {FAULT_CONTEXT_WINDOW} tokens. However, your messages resulted in "
            f"{requested} tokens. Please reduce the length of the messages."
        )
        return error_response(400, message, "invalid_request_error", "messages", "context_length_exceeded")
    if kind == "content_policy":
        message = (
            "Your request was rejected as a result of our safety system. Your prompt may contain text "
            "that is not allowed by our safety system."
        )
        return error_response(400, message, "invalid_request_error", "prompt", "content_policy_violation")
    if kind == "401":
        message = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
        return error_response(401, message, "invalid_request_error", None, "invalid_api_key")
    if kind == "401_no_key":  # OpenAI's answer to a missing or malformed key: litellm calls it a bad request
        message = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
                   "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        return error_response(401, message, "invalid_request_error", None, None)
    if kind == "404_model":
        message = f"The model `{chat.model}` does not exist or you do not have access to it."
        return error_response(404, message, "invalid_request_error", None, "model_not_found")
    if kind == "400_invalid_model":
        message = (f"Invalid model name passed in model={chat.model}. Call `/v1/models` to view available "
                   "models for your key.")
        return error_response(400, message, "invalid_request_error", "model", "400")
    raise ValueError(f"not an error fault kind: {kind!r}")


def flex_unavailable_response(model: str) -> web.Response:
    """The 429 of a flex request the simulated provider has no capacity for (never billed)."""
    message = (f"Resource unavailable: there is not enough capacity to serve {model} at the flex service tier "
               "right now. Please retry later, or send the request at the default tier. (simulated)")
    return error_response(429, message, "resource_unavailable", None, "resource_unavailable")


def rate_limit_response(verdict: Verdict, model: str) -> web.Response:
    """The 429 for a request the rate limiter refused."""
    headers = dict(verdict.headers)
    if verdict.limit == "tokens":
        what = "tokens per min (TPM)"
    else:
        what = "requests per min (RPM)"
    if verdict.too_large:
        message = (
            f"Request too large for {model} in organization org-sim on {what}: Limit {verdict.limit_value}, "
            f"Requested {verdict.requested}. The input or output tokens must be reduced in order to run successfully. "
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )
    else:
        remaining = int(headers.get(f"x-ratelimit-remaining-{verdict.limit}", "0"))
        message = (
            f"Rate limit reached for {model} in organization org-sim on {what}: Limit {verdict.limit_value}, "
            f"Used {verdict.limit_value - remaining}, Requested {verdict.requested}. Please try again in "
            f"{format_duration(verdict.wait_s)}. Visit https://platform.openai.com/account/rate-limits to learn more."
        )
        headers.update(verdict.retry_headers())
    return error_response(429, message, verdict.limit or "requests", None, "rate_limit_exceeded", headers)


def stable_seed(*parts: bytes) -> int:
    """A 64-bit integer derived from ``parts``, the same in every process."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return int.from_bytes(digest.digest(), "little")


def chunk_token_counts(total_tokens: int, rng: random.Random) -> list[int]:
    """Sizes (1 to 3 tokens each) of the content chunks of a streamed answer."""
    sizes = []
    remaining = total_tokens
    while remaining > 0:
        size = min(remaining, 1 + int(rng.random() * 3))
        sizes.append(size)
        remaining -= size
    return sizes


def abort_connection(request: web.Request) -> None:
    """Drop the client's connection at once, with a TCP reset where possible."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:  # SO_LINGER with a zero timeout turns the close into an RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


class DroppedResponse(web.Response):
    """What a handler returns after aborting the connection: aiohttp's attempt
    to send it fails quietly (the transport is gone); counted as `NO_RESPONSE_STATUS`."""


async def send_trickle(
    sleep: Callable[[float], Awaitable[object]],
    request: web.Request,
    body: bytes,
    content_type: str,
    headers: dict[str, str] | None,
    pause_s: float,
    *,
    sized: bool,
) -> web.StreamResponse:
    """Send a 200 with ``body`` a few bytes at a time, ``pause_s`` apart (the ``trickle`` fault)."""
    response_headers = {"Content-Type": content_type}
    if sized:
        response_headers["Content-Length"] = str(len(body))
    if headers:
        response_headers.update(headers)
    response = web.StreamResponse(status=200, headers=response_headers)
    await response.prepare(request)
    try:
        for start in range(0, len(body), TRICKLE_PIECE_BYTES):
            if start and pause_s > 0:
                await sleep(pause_s)
            await response.write(body[start : start + TRICKLE_PIECE_BYTES])
        await response.write_eof()
    except ConnectionResetError:
        pass
    return response

async def send_then_cut(
    request: web.Request,
    pieces: list[bytes],
    content_type: str,
    headers: dict[str, str] | None,
    *,
    abort: bool,
    total: int | None = None,
) -> web.StreamResponse:
    """Send a 200 with ``pieces``, then abort the connection (``reset``) or end the body early (``stream_cut``).

    ``total``, when given, is announced as the Content-Length (more than
    is sent, so the client knows the body is short).
    """
    response_headers = {"Content-Type": content_type}
    if total is not None:
        response_headers["Content-Length"] = str(total)
    if headers:
        response_headers.update(headers)
    response = web.StreamResponse(status=200, headers=response_headers)
    await response.prepare(request)
    try:
        await response.write(b"".join(pieces))
        if abort:
            abort_connection(request)
        else:
            await response.write_eof()
    except ConnectionResetError:
        pass
    return response
