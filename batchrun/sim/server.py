"""The simulator's HTTP server: an OpenAI-compatible chat completions API.

The simulator stands in for an LLM provider during tests and benchmarks. It
speaks enough of the OpenAI HTTP API for litellm's ``openai/...`` provider
(and the ``openai`` SDK) to talk to it, answers deterministically, sleeps a
configurable, reproducible amount of time per request, and counts what it
received so tests can check how a batch run behaved (retries per ticket,
concurrency reached).

Endpoints
---------
``POST /v1/chat/completions`` (also ``/chat/completions``)
    A chat completion. The answer text comes from
    `batchrun.sim.answers.compose_answer(messages, seed)`; usage is counted
    with `batchrun.sim.tokens`. ``max_tokens`` / ``max_completion_tokens``
    truncate the answer (``finish_reason == "length"``). With
    ``"stream": true`` the answer is sent as Server-Sent Events of
    ``chat.completion.chunk`` objects: a role chunk, content chunks of 1 to 3
    tokens, a chunk carrying ``finish_reason``, a usage chunk when
    ``stream_options.include_usage`` is true, then ``data: [DONE]``.
    Fields such as ``temperature``, ``n``, ``tools`` or ``response_format``
    are accepted and ignored: there is always exactly one text choice.
``GET /v1/models`` (also ``/models``)
    The configured model, or ``sim-model``.
``GET /sim/stats``
    Counters of chat completion requests: ``total_requests``,
    ``requests_by_ticket`` (keyed by the ``X-Batchrun-Ticket-Id`` request
    header), ``in_flight``, ``peak_in_flight`` and ``responses_by_status``.
``POST /sim/reset``
    Zeroes those counters (requests still in flight stay counted as in
    flight, and the peak restarts from their number).

Anything else gets a 404 in OpenAI's error shape; malformed chat requests
get a 400 ``invalid_request_error``.

Timing
------
A non-streaming request sleeps ``(latency_ms + per_token_ms * tokens) *
factor`` before answering, where ``tokens`` is the completion token count
and ``factor`` is drawn uniformly from ``[1 - jitter, 1 + jitter]`` with a
generator seeded from the config seed and the ticket id and attempt number
(or, without a ticket header, the request body). A streaming request spends
``latency_ms * factor`` before the first chunk and ``per_token_ms * factor``
per token between chunks, so both modes take the same total time.

Layout
------
`SimStats` holds the counters. `ChatSimulator` holds the config and the
counters and has one method per endpoint; its chat handler is split into
parsing (`_parse_chat_request`), the spot where a fault plan or rate limit
would intervene, and answering (`_answer_json`, `_answer_stream`).
`build_app` wires a `ChatSimulator` into an `aiohttp.web.Application`;
`serve` runs that application until cancelled.

Performance: per request the work is one JSON parse, one answer, a regex
token split and one JSON dump (orjson); there is no per-request logging and
aiohttp's access log is turned off. Sleeps of zero are skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from batchrun.sim.config import SimConfig
from batchrun.sim.tokens import count_prompt_tokens, split_tokens

#: Request header carrying the batch runner's ticket id, used for per-ticket stats.
TICKET_HEADER = "X-Batchrun-Ticket-Id"

#: Largest accepted request body, in bytes.
MAX_REQUEST_BYTES = 32 * 1024 * 1024

#: Status recorded for a request whose handler was cancelled (client went away).
CANCELLED_STATUS = 499

_logger = logging.getLogger(__name__)

_SSE_DONE = b"data: [DONE]\n\n"


class SimStats:
    """Counters of chat completion requests, as reported by ``GET /sim/stats``."""

    __slots__ = (
        "total_requests",
        "requests_by_ticket",
        "in_flight",
        "peak_in_flight",
        "responses_by_status",
    )

    def __init__(self) -> None:
        self.total_requests = 0
        self.requests_by_ticket: dict[str, int] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.responses_by_status: dict[str, int] = {}

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

    def request_finished(self, status: int) -> None:
        """Count a finished request and the HTTP status it got."""
        self.in_flight -= 1
        key = str(status)
        self.responses_by_status[key] = self.responses_by_status.get(key, 0) + 1

    def reset(self) -> None:
        """Zero the counters; requests still in flight remain in flight."""
        self.total_requests = 0
        self.requests_by_ticket = {}
        self.peak_in_flight = self.in_flight
        self.responses_by_status = {}

    def snapshot(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict."""
        return {
            "total_requests": self.total_requests,
            "requests_by_ticket": dict(self.requests_by_ticket),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "responses_by_status": dict(self.responses_by_status),
        }


@dataclass(slots=True)
class ParsedChatRequest:
    """The parts of a chat completion request the simulator uses."""

    messages: list[dict]
    model: str
    max_tokens: int | None
    stream: bool
    include_usage: bool
    ticket_id: str | None
    attempt: int
    body: bytes


class InvalidRequest(Exception):
    """A chat request the simulator rejects with a 400, like OpenAI would."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def error_response(status: int, message: str, error_type: str, param: str | None = None, code: str | None = None) -> web.Response:
    """A JSON response in OpenAI's error shape."""
    payload = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def _stable_seed(*parts: bytes) -> int:
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


class ChatSimulator:
    """The request handlers of one simulator instance, sharing config and counters."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()
        # Response ids are unique per instance: a random prefix and a counter.
        self._id_prefix = "chatcmpl-sim" + os.urandom(4).hex()
        self._next_id = 0

    # -- endpoints ---------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``: count the request, answer it, count its status."""
        ticket_id = request.headers.get(TICKET_HEADER)
        stats = self.stats
        attempt = stats.request_started(ticket_id)
        status = 500
        try:
            response = await self._chat_completion(request, ticket_id, attempt)
            status = response.status
            return response
        except web.HTTPException as exc:  # e.g. 413 from aiohttp for an oversized body
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CANCELLED_STATUS
            raise
        except Exception as exc:  # a bug (or a broken answers module): report it as OpenAI would
            _logger.exception("simulator failed to answer a chat completion request")
            return error_response(500, f"simulator error: {exc!r}", "server_error")
        finally:
            stats.request_finished(status)

    async def list_models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: the one model this simulator serves."""
        payload = {
            "object": "list",
            "data": [{"id": self.config.listed_model, "object": "model", "created": 0, "owned_by": "batchrun-sim"}],
        }
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    async def get_stats(self, request: web.Request) -> web.Response:
        """``GET /sim/stats``: the request counters."""
        return web.Response(body=orjson.dumps(self.stats.snapshot()), content_type="application/json")

    async def reset_stats(self, request: web.Request) -> web.Response:
        """``POST /sim/reset``: zero the counters and return them."""
        self.stats.reset()
        return web.Response(body=orjson.dumps(self.stats.snapshot()), content_type="application/json")

    async def not_found(self, request: web.Request) -> web.Response:
        """Any other path: a 404 in OpenAI's error shape."""
        return error_response(404, f"Unknown request URL: {request.method} {request.path}", "invalid_request_error", code="unknown_url")

    # -- chat completions --------------------------------------------------

    async def _chat_completion(self, request: web.Request, ticket_id: str | None, attempt: int) -> web.StreamResponse:
        body = await request.read()
        try:
            chat = self._parse_chat_request(body, ticket_id, attempt)
        except InvalidRequest as exc:
            return error_response(400, exc.message, "invalid_request_error", exc.param, exc.code)

        # Fault injection and server-side rate limits go here: a fault plan
        # (keyed by ticket id, attempt number or request count) would decide
        # now whether to answer normally, return an error status (429, 500,
        # 503, ...), stall, or break the stream part way. Nothing is injected
        # yet; every valid request is answered.

        from batchrun.sim.answers import compose_answer

        answer = compose_answer(chat.messages, self.config.seed)
        if not isinstance(answer, str):
            answer = str(answer)
        tokens = split_tokens(answer)
        finish_reason = "stop"
        if chat.max_tokens is not None and len(tokens) > chat.max_tokens:
            tokens = tokens[: chat.max_tokens]
            finish_reason = "length"
        prompt_tokens = count_prompt_tokens(chat.messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        factor = self._latency_factor(chat)
        if chat.stream:
            return await self._answer_stream(request, chat, tokens, finish_reason, usage, factor)
        return await self._answer_json(chat, tokens, finish_reason, usage, factor)

    def _parse_chat_request(self, body: bytes, ticket_id: str | None, attempt: int) -> ParsedChatRequest:
        """Validate the request body; raise `InvalidRequest` for what OpenAI would reject."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}") from None
        if not isinstance(payload, dict):
            raise InvalidRequest("The request body must be a JSON object.")

        messages = payload.get("messages")
        if messages is None:
            raise InvalidRequest("Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise InvalidRequest(f"Invalid type for 'messages[{index}]': expected an object.", param=f"messages[{index}]")

        max_tokens = payload.get("max_completion_tokens")
        param = "max_completion_tokens"
        if max_tokens is None:
            max_tokens = payload.get("max_tokens")
            param = "max_tokens"
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
            raise InvalidRequest(f"Invalid '{param}': expected an integer of at least 1.", param=param)

        requested_model = payload.get("model")
        if self.config.model is not None:
            model = self.config.model
        elif isinstance(requested_model, str) and requested_model:
            model = requested_model
        else:
            model = self.config.listed_model

        stream = payload.get("stream") is True
        stream_options = payload.get("stream_options")
        include_usage = stream and isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        return ParsedChatRequest(
            messages=messages,
            model=model,
            max_tokens=max_tokens,
            stream=stream,
            include_usage=include_usage,
            ticket_id=ticket_id,
            attempt=attempt,
            body=body,
        )

    def _latency_factor(self, chat: ParsedChatRequest) -> float:
        """The jitter multiplier for this request: reproducible for the seed and request."""
        config = self.config
        jitter = config.jitter
        if jitter <= 0 or (config.latency_ms <= 0 and config.per_token_ms <= 0):
            return 1.0
        seed_bytes = str(config.seed).encode()
        if chat.ticket_id is not None:
            seed = _stable_seed(seed_bytes, chat.ticket_id.encode(), str(chat.attempt).encode())
        else:
            seed = _stable_seed(seed_bytes, chat.body)
        return max(0.0, 1.0 + jitter * (2.0 * random.Random(seed).random() - 1.0))

    def _new_id(self) -> str:
        self._next_id += 1
        return f"{self._id_prefix}{self._next_id:08x}"

    async def _answer_json(
        self, chat: ParsedChatRequest, tokens: list[str], finish_reason: str, usage: dict, factor: float
    ) -> web.Response:
        config = self.config
        delay_ms = (config.latency_ms + config.per_token_ms * len(tokens)) * factor
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000.0)
        payload = {
            "id": self._new_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(tokens)},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    async def _answer_stream(
        self,
        request: web.Request,
        chat: ParsedChatRequest,
        tokens: list[str],
        finish_reason: str,
        usage: dict,
        factor: float,
    ) -> web.StreamResponse:
        config = self.config
        first_delay_ms = config.latency_ms * factor
        per_token_s = config.per_token_ms * factor / 1000.0
        if first_delay_ms > 0:
            await asyncio.sleep(first_delay_ms / 1000.0)

        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        await response.prepare(request)

        completion_id = self._new_id()
        created = int(time.time())
        model = chat.model

        def event(delta: dict, finish: str | None) -> bytes:
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        # Chunk sizes depend only on the seed and the answer, so the same
        # request is always cut the same way.
        rng = random.Random(_stable_seed(str(config.seed).encode(), "".join(tokens).encode()))
        pending = [event({"role": "assistant", "content": ""}, None)]
        try:
            position = 0
            for size in chunk_token_counts(len(tokens), rng):
                piece = "".join(tokens[position : position + size])
                position += size
                if per_token_s > 0:
                    # Send what is ready, then "generate" this chunk's tokens.
                    await response.write(b"".join(pending))
                    pending.clear()
                    await asyncio.sleep(per_token_s * size)
                pending.append(event({"content": piece}, None))
            pending.append(event({}, finish_reason))
            if chat.include_usage:
                usage_chunk = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                pending.append(b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
            pending.append(_SSE_DONE)
            await response.write(b"".join(pending))
            await response.write_eof()
        except ConnectionResetError:
            # The client went away mid-stream; nothing left to do.
            pass
        return response


#: Where `build_app` stores the `ChatSimulator` in the application.
SIMULATOR_KEY = web.AppKey("batchrun_simulator", ChatSimulator)


def build_app(config: SimConfig) -> web.Application:
    """An aiohttp application serving the simulator API for ``config``."""
    simulator = ChatSimulator(config)
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[SIMULATOR_KEY] = simulator
    router = app.router
    for prefix in ("/v1", ""):
        router.add_post(prefix + "/chat/completions", simulator.chat_completions)
        router.add_get(prefix + "/models", simulator.list_models)
    router.add_get("/sim/stats", simulator.get_stats)
    router.add_post("/sim/reset", simulator.reset_stats)
    router.add_route("*", "/{tail:.*}", simulator.not_found)
    return app


def base_url_for(host: str, port: int) -> str:
    """The OpenAI-style base URL (ending in ``/v1``) of a simulator bound to ``host:port``."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


async def serve(
    config: SimConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the simulator on ``host:port`` until cancelled.

    ``port=0`` picks a free port. Once listening, ``on_ready`` is called with
    the base URL (``http://HOST:PORT/v1``) carrying the real port. Use a
    numeric host: a name that resolves to several addresses would bind each
    of them to a different free port when ``port`` is 0.
    """
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound_port = runner.addresses[0][1]
        if on_ready is not None:
            on_ready(base_url_for(host, bound_port))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
