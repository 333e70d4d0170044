"""The simulator's HTTP server: an OpenAI-compatible chat completions API.

The simulator stands in for an LLM provider during tests and benchmarks. It
speaks enough of the OpenAI HTTP API for litellm's ``openai/...`` provider
(and the ``openai`` SDK) to talk to it, answers deterministically, sleeps a
configurable, reproducible amount of time per request, can enforce rate
limits, slow down under load and inject faults, and counts what it received
so tests can check how a batch run behaved (retries per ticket, concurrency
reached, faults served).

Endpoints
---------
``POST /v1/chat/completions`` (also ``/chat/completions``, ``/<any path>/v1/chat/completions``)
    A chat completion. The answer text comes from
    `batchrun.sim.answers.compose_answer(messages, seed)`; usage is counted
    with `batchrun.sim.tokens`. ``max_tokens`` / ``max_completion_tokens``
    truncate the answer (``finish_reason == "length"``; for JSON answers and
    tool-call arguments the truncated text is then invalid JSON, as with a
    real model). With ``"stream": true`` the answer is sent as Server-Sent
    Events of ``chat.completion.chunk`` objects: a role chunk, content chunks
    of 1 to 3 tokens, a chunk carrying ``finish_reason``, a usage chunk when
    ``stream_options.include_usage`` is true, then ``data: [DONE]``.
    Fields such as ``temperature`` or ``n`` are accepted and ignored: there is
    always exactly one choice. Structured outputs and tools are honoured:

    * ``response_format`` ``{"type": "json_schema", "json_schema": {"name":
      ..., "schema": {...}}}``: the content is compact JSON text that
      validates against the schema; ``{"type": "json_object"}``: a small JSON
      object (``{"label": ..., "summary": ...}`` for a classification
      prompt). See `batchrun.sim.structured` for how values are chosen (an
      ``enum`` of the ticket labels is filled by the simulated classifier).
    * ``tools`` (function tools) with ``tool_choice`` absent, ``"auto"``,
      ``"required"``, ``"none"`` or a named function: the answer is
      ``message.tool_calls = [{"id": "call_...", "type": "function",
      "function": {"name": ..., "arguments": "<JSON>"}}]`` with ``content:
      null`` and ``finish_reason: "tool_calls"``. The first tool is called
      (the named one for a named choice); with ``"auto"`` a conversation
      whose last message is a tool result gets a text answer instead; with
      ``"none"`` there is no call. The arguments are an instance of the
      tool's ``parameters`` schema. Streamed, the first chunk carries the
      role, ``content: null`` and the call's index, id, type, name and empty
      ``arguments``; later chunks carry ``{"index": 0, "function":
      {"arguments": "<fragment>"}}`` with 1 to 3 tokens of the arguments
      each, as OpenAI streams them.
    * Prompt tokens count the messages (see `batchrun.sim.tokens`) plus the
      tokens of the ``tools`` JSON and of a ``json_schema`` schema, when
      given. A tool call's completion tokens are its arguments' tokens.
    * Billing (`batchrun.sim.billing`): the response names the ``service_tier``
      it was served at; usage reports prompt-cache reads (and, for models
      named claude, cache writes of what the request marked with
      ``cache_control``) and reasoning tokens of reasoning models (within
      ``max_tokens``); a delivered answer goes on the invoice; a flex request
      may get a 429 ``resource_unavailable`` (``flex_unavailable_rate``).
``GET /v1/models`` (also ``/models``)
    The configured model, or ``sim-model``.
``GET /sim/stats``
    Counters of chat completion requests: ``total_requests``,
    ``requests_by_ticket`` and its alias ``attempts_by_ticket`` (keyed by the
    ``X-Batchrun-Ticket-Id`` request header), ``in_flight``,
    ``peak_in_flight``, ``responses_by_status`` (the status line each
    request got; 499 when the client went away first, even for a stall;
    ``"reset"`` when the connection was dropped before any status line),
    ``faults_by_kind`` (injected faults served, by kind) and
    ``rate_limited`` (429s from the rpm/tpm limits, not from faults),
    ``flex_unavailable`` (flex 429s) and ``invoice`` (billed tokens per model,
    tier and kind, and per ticket: `batchrun.sim.billing.Invoice`).
``POST /sim/reset``
    Zeroes those counters (requests still in flight stay counted as in
    flight, and the peak restarts from their number) and refills the rate
    limit buckets. Attempt numbers restart too, so per-ticket fault
    schedules apply afresh.

Anything else gets a 404 in OpenAI's error shape; malformed chat requests
(including malformed ``response_format``, ``tools`` or ``tool_choice``) get a
400 ``invalid_request_error``.

Configuration
-------------
`batchrun.sim.config.SimConfig` (CLI flags of ``batchrun sim`` in brackets):
``latency_ms``, ``per_token_ms``, ``jitter``, ``seed``, ``model``, ``rpm``, ``tpm``, ``capacity``,
``overload_ms`` [--latency-ms, ... --overload-ms, default 20]; ``faults`` [--fault
KIND[:key=value,...], repeatable]; ``scripts`` [--script WHO=STEP;..., repeatable].

Order of events for a chat request
----------------------------------
1. The request is counted; its attempt number is the count of requests with
   its ticket id so far (1-based).
2. The body is parsed and checked (400 on error).
3. The fault plan (``SimConfig.scripts``, then ``SimConfig.faults``, see
   Faults below) picks a rule for (ticket id, attempt, body). An *error*
   fault is answered now, and a ``reset_before_headers`` drops the
   connection now, before the rate limiter: neither needs nor uses
   rate-limit budget.
4. The answer is composed and, with ``rpm``/``tpm`` configured, the request
   is admitted or refused by `batchrun.sim.limits.RateLimiter`: two token
   buckets (capacity = the limit, refilled continuously at limit/60 per
   second, starting full), the token estimate being prompt tokens plus
   ``max_tokens`` (plus the answer length without ``max_tokens``), taken at
   admission and never refunded. A refused request gets a 429 (``type``
   ``requests`` or ``tokens``, ``code`` ``rate_limit_exceeded``, OpenAI's
   "Rate limit reached for ..." message) with the ``x-ratelimit-*`` headers,
   ``retry-after`` (whole seconds, rounded up) and ``retry-after-ms`` saying
   when it would pass; a request whose estimate exceeds ``tpm`` itself gets a
   429 "Request too large" without retry headers. Every admitted request's
   response (200) carries ``x-ratelimit-limit-requests``,
   ``x-ratelimit-remaining-requests``, ``x-ratelimit-reset-requests`` (time
   until the bucket is full, e.g. ``"120ms"``, ``"1.5s"``, ``"1m0s"``) and
   the same three for ``-tokens`` (only for the configured limits).
5. A *delivery* fault is counted and changes how the answer is sent; a
   delivery fault picked for a request the limiter refused is not applied
   (nor counted).
6. The request sleeps its latency (Timing, below) and the answer is sent.

Faults
------
Rules (`batchrun.sim.faults.FaultRule`: ``kind``, ``rate``, ``tickets``,
``attempts``, ``retry_after``, ``stall_s``, ``trickle_ms``) hit requests by
ticket id and attempt number (a per-ticket schedule: ``tickets=("T3",),
attempts=(1, 2)`` fails T3's first two attempts) or by a ``rate`` decided by
a stable hash of (seed, ticket id or body, attempt, rule index); the first
matching rule wins. Served faults are counted in ``faults_by_kind``.

Error faults (OpenAI's error JSON unless said otherwise):

* ``429`` (``retry-after: N`` seconds, ``retry_after`` default 1),
  ``429_date`` (``retry-after`` as an HTTP date), ``429_ms``
  (``retry-after-ms: N``), ``429_bare`` (no retry header); type and code
  ``rate_limit_exceeded``.
* ``500``, ``502``, ``503`` (type ``server_error``); ``html_error``: a 502
  with an HTML page (``text/html``).
* ``context_length``: 400, code ``context_length_exceeded``, "This model's
  maximum context length is 128000 tokens. However, your messages resulted
  in ... tokens."; ``content_policy``: 400, code
  ``content_policy_violation``, "... rejected as a result of our safety
  system ..."; ``401``: code ``invalid_api_key``, never echoing the key or
  the Authorization header; ``404_model``: 404, code ``model_not_found``.

Delivery faults:

* ``stall``: no headers for ``stall_s`` seconds (default 3600), then the
  normal answer; a client that gives up first is counted as 499.
* ``trickle``: after the usual latency, 200 headers, then the body in pieces
  of 8 bytes with ``trickle_ms`` (default 100) between them (for a stream
  these pauses replace the per-token ones).
* ``reset``: headers and about half of the body (non-streaming; announced
  with the full Content-Length) or the role chunk and about half of the
  content chunks (streaming), then the connection is aborted with a TCP
  reset (``SO_LINGER`` 0, ``transport.abort()``).
* ``stream_cut``: streaming: the role chunk and about half of the content
  chunks, then a clean end of the body with no ``finish_reason`` chunk, no
  usage chunk and no ``data: [DONE]``; non-streaming: like ``reset``.
* ``malformed_json``: non-streaming: a 200 ``application/json`` body cut in
  half (invalid JSON); streaming: the first content chunk's JSON is cut in
  half, the rest of the stream is normal.
* ``no_usage`` / ``drop_usage``: no ``usage`` field, no usage chunk;
  ``usage_null``: ``"usage": null`` (streams as ``no_usage``).
* hostile answers (``no_choices``, ``bad_usage``, ``huge_usage``, ...): hostile.py.

Connection fault, applied with the error faults (before the rate limiter):
``reset_before_headers`` reads the request, then aborts the connection
with a TCP reset without a status line (counted under ``"reset"`` in
``responses_by_status``).

Scripts (`batchrun.sim.faults.TicketScript`, ``SimConfig.scripts``
[--script WHO=STEP;STEP;...]): per-ticket sequences of answers, step n for
attempt n, tried before the rules; a step of kind ``ok`` (also usable as a
rule) answers normally. ``requests_by_ticket`` counts every request a ticket
sent, so a test compares it with the attempts batchrun recorded.

A 200 whose delivery was broken (trickle, reset, stream_cut,
malformed_json) is still counted under ``"200"`` in ``responses_by_status``.

Timing
------
A non-streaming request sleeps ``(latency_ms + per_token_ms * tokens) *
factor + overload`` before answering, where ``tokens`` is the completion token
count and ``factor`` is drawn uniformly from ``[1 - jitter, 1 + jitter]`` with
a generator seeded from the config seed and the ticket id and attempt number
(or, without a ticket header, the request body). A streaming request spends
``latency_ms * factor + overload`` before the first chunk and ``per_token_ms
* factor`` per token between chunks, so both modes take the same total time.

``overload`` is the capacity model (`batchrun.sim.limits.overload_delay_ms`):
with ``capacity`` K configured, a request that arrives while N chat requests
are in flight (itself included) gets ``overload_ms * max(0, N - K)``
milliseconds more, so throughput stops growing near K in flight and latency
climbs beyond it (throughput falls past K when ``overload_ms * K`` exceeds
the base latency, and flattens towards one request per ``overload_ms``
otherwise).

Layout
------
`SimStats` holds the counters. `ChatSimulator` holds the config, the
counters, the fault plan and the rate limiter, and has one method per
endpoint; its chat handler is split into parsing (`_parse_chat_request`),
error faults (`fault_error_response`), composing (`_compose`), rate limiting
(`rate_limit_response`) and sending (`_answer_json`, `_answer_stream`, with
the delivery faults in `replies.send_trickle` and `replies.send_then_cut`). Every simulated
delay is awaited through `ChatSimulator.sleep` (``asyncio.sleep``), which
tests may replace to observe delays without timing anything.
`build_app` wires a `ChatSimulator` into an `aiohttp.web.Application`;
`serve` runs that application until cancelled, with handler cancellation on
(a client that disconnects cancels its request, e.g. a stall, at once).

Performance: per request one JSON parse, one answer, a regex token split and
one JSON dump (orjson); no per-request logging. What is not configured costs
an ``is None`` check; a prompt under 1,024 tokens skips the prompt cache.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from batchrun.sim.billing import (
    PromptCache,
    flex_unavailable,
    is_anthropic_model,
    reasoning_tokens,
    served_tier,
)
from batchrun.sim.config import SimConfig
from batchrun.sim.faults import (
    CONNECTION_KINDS,
    ERROR_KINDS,
    NO_USAGE_KINDS,
    FaultPlan,
    FaultRule,
    body_digest,
)
from batchrun.sim.hostile import ANSWER_KINDS, BODY_KINDS, reshape_answer, reshape_payload
from batchrun.sim.jsontypes import JSONObject
from batchrun.sim.limits import RateLimiter, overload_delay_ms
from batchrun.sim.replies import (
    CANCELLED_STATUS,
    MAX_REQUEST_BYTES,
    NO_RESPONSE_STATUS,
    Answer,
    DroppedResponse,
    InvalidRequest,
    ParsedChatRequest,
    SimStats,
    Usage,
    abort_connection,
    chunk_token_counts,
    error_response,
    fault_error_response,
    flex_unavailable_response,
    rate_limit_response,
    send_then_cut,
    send_trickle,
    stable_seed,
)
from batchrun.sim.tokens import count_prompt_tokens, count_tokens, split_tokens

#: Request header carrying the batch runner's ticket id, used for per-ticket stats.
TICKET_HEADER = "X-Batchrun-Ticket-Id"

_logger = logging.getLogger(__name__)

_SSE_DONE = b"data: [DONE]\n\n"
#: Delivery faults whose answer still arrives whole, so it is billed (billing.py).
BILLED_KINDS = frozenset({"trickle", *NO_USAGE_KINDS})


class ChatSimulator:
    """The request handlers of one simulator instance, sharing config and counters."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()
        self.fault_plan = FaultPlan(config.faults, config.seed, config.scripts) if (config.faults or config.scripts) else None
        self.limiter = RateLimiter(config.rpm, config.tpm) if (config.rpm is not None or config.tpm is not None) else None
        self.prompt_cache = PromptCache()  # what repeated prompts find cached (billing.py)
        #: Every simulated delay goes through this coroutine function (tests may replace it).
        self.sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
        # Response ids are unique per instance: a random prefix and a counter.
        self._id_prefix = "chatcmpl-sim" + os.urandom(4).hex()
        self._next_id = 0

    # -- endpoints ---------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``: count the request, answer it, count its status."""
        ticket_id = request.headers.get(TICKET_HEADER)
        stats = self.stats
        attempt = stats.request_started(ticket_id)
        in_flight = stats.in_flight
        status: int | str = 500
        try:
            response = await self._chat_completion(request, ticket_id, attempt, in_flight)
            status = NO_RESPONSE_STATUS if isinstance(response, DroppedResponse) else response.status
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
        """``POST /sim/reset``: zero the counters, refill the rate limits, return the counters."""
        self.stats.reset()
        if self.limiter is not None:
            self.limiter = RateLimiter(self.config.rpm, self.config.tpm)
        return web.Response(body=orjson.dumps(self.stats.snapshot()), content_type="application/json")

    async def not_found(self, request: web.Request) -> web.Response:
        """Any other path: a 404 in OpenAI's error shape."""
        return error_response(404, f"Unknown request URL: {request.method} {request.path}", "invalid_request_error", code="unknown_url")

    # -- chat completions --------------------------------------------------

    async def _chat_completion(
        self, request: web.Request, ticket_id: str | None, attempt: int, in_flight: int = 1
    ) -> web.StreamResponse:
        body = await request.read()
        try:
            chat = self._parse_chat_request(body, ticket_id, attempt)
        except InvalidRequest as exc:
            return error_response(400, exc.message, "invalid_request_error", exc.param, exc.code)

        config = self.config
        rule = None
        plan = self.fault_plan
        if plan is not None:
            rule = plan.rule_for(ticket_id, attempt, body_digest(body) if ticket_id is None and plan.uses_body else b"")
            if rule is not None:
                if rule.kind == "ok":
                    rule = None
                elif rule.kind in ERROR_KINDS:
                    self.stats.fault_served(rule.kind)
                    return fault_error_response(rule, chat, count_prompt_tokens(chat.messages) + chat.extra_prompt_tokens)
                elif rule.kind in CONNECTION_KINDS:  # reset_before_headers
                    self.stats.fault_served(rule.kind)
                    abort_connection(request)
                    return DroppedResponse()

        if chat.service_tier == "flex" and flex_unavailable(config.flex_unavailable_rate, config.seed, ticket_id,
                                                            attempt, body):
            self.stats.flex_unavailable += 1
            return flex_unavailable_response(chat.model)

        answer = self._compose(chat)

        headers = None
        limiter = self.limiter
        if limiter is not None:
            usage = answer.usage
            estimate = usage["prompt_tokens"] + (chat.max_tokens if chat.max_tokens is not None else usage["completion_tokens"])
            verdict = limiter.admit(estimate)
            if not verdict.admitted:
                self.stats.rate_limited += 1
                return rate_limit_response(verdict, chat.model)
            headers = verdict.headers

        extra_ms = 0.0
        if config.capacity is not None:
            extra_ms = overload_delay_ms(in_flight, config.capacity, config.overload_ms)

        if rule is not None:
            self.stats.fault_served(rule.kind)
            if rule.kind == "stall":
                await self.sleep(rule.stall_seconds)
                rule = None
            elif rule.kind in ANSWER_KINDS:
                answer = reshape_answer(rule.kind, answer, rule.size_bytes)

        factor = self._latency_factor(chat)
        if chat.stream:
            return await self._answer_stream(request, chat, answer, factor, extra_ms, headers, rule)
        return await self._answer_json(request, chat, answer, factor, extra_ms, headers, rule)

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
        cache_key = payload.get("prompt_cache_key")
        chat = ParsedChatRequest(
            messages=messages,
            model=model,
            max_tokens=max_tokens,
            stream=stream,
            include_usage=include_usage,
            ticket_id=ticket_id,
            attempt=attempt,
            body=body,
            service_tier=payload.get("service_tier"),
            prompt_cache_key=cache_key if isinstance(cache_key, str) else None,
        )
        response_format = payload.get("response_format")
        tools = payload.get("tools")
        tool_choice = payload.get("tool_choice")
        if response_format is not None or tools is not None or tool_choice is not None:
            self._parse_structured(chat, response_format, tools, tool_choice)
        return chat

    @staticmethod
    def _parse_structured(chat: ParsedChatRequest, response_format: object, tools: object, tool_choice: object) -> None:
        """Fill the structured-output and tool fields of ``chat`` (400 on malformed ones)."""
        from batchrun.sim import structured

        try:
            chat.response_format = structured.parse_response_format(response_format)
            chat.tools, chat.tool_choice = structured.parse_tools(tools, tool_choice)
        except structured.StructuredRequestError as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None
        texts = []
        if chat.tools:
            texts.append(orjson.dumps(tools).decode())
        if chat.response_format is not None and chat.response_format.schema is not None:
            texts.append(orjson.dumps(chat.response_format.schema).decode())
        chat.extra_prompt_tokens = sum(count_tokens(text) for text in texts)
        chat.extra_prompt_text = "".join(texts)

    def _compose(self, chat: ParsedChatRequest, cache: bool = True) -> Answer:
        """The simulated model's answer: a tool call, JSON text or plain text, truncated to max_tokens
        (reasoning tokens included), with its usage (billing.py: reasoning, prompt caching)."""
        seed = self.config.seed
        tool = None
        if chat.tools or chat.response_format is not None:
            from batchrun.sim import structured

            if chat.tools:
                tool = structured.choose_tool(chat.tools, chat.tool_choice, chat.messages)
            if tool is not None:
                text = structured.tool_arguments(tool, chat.messages, seed)
            elif chat.response_format is not None:
                text = structured.json_answer(chat.messages, chat.response_format, seed)
            else:
                text = None
        else:
            text = None
        if text is None:
            from batchrun.sim.answers import compose_answer

            text = compose_answer(chat.messages, seed, self.config.profile(chat.model)[0])
            if not isinstance(text, str):
                text = str(text)
        tokens = split_tokens(text)
        finish_reason = "stop" if tool is None else "tool_calls"
        reasoning = reasoning_tokens(chat.model, chat.messages, seed)
        if chat.max_tokens is not None and len(tokens) + reasoning > chat.max_tokens:
            reasoning = min(reasoning, chat.max_tokens)
            tokens = tokens[: chat.max_tokens - reasoning]
            finish_reason = "length"
        usage = self._usage(chat, len(tokens) + reasoning, reasoning, cache)
        answer = Answer(tokens, finish_reason, usage, service_tier=served_tier(chat.service_tier, chat.model))
        if tool is not None:
            answer.tool_name = tool.name
            answer.tool_call_id = structured.tool_call_id(tool, text, chat.messages, seed)
        return answer

    def _usage(self, chat: ParsedChatRequest, completion: int, reasoning: int, cache: bool) -> Usage:
        """OpenAI's usage object: prompt tokens (scaled by prompt_token_scale) with what the prompt
        cache read (prompt_tokens_details.cached_tokens; an Anthropic model also says
        cache_read_input_tokens and cache_creation_input_tokens), reasoning tokens when any."""
        raw = count_prompt_tokens(chat.messages) + chat.extra_prompt_tokens
        scale = self.config.prompt_token_scale
        prompt = raw if scale == 1.0 else math.ceil(raw * scale)
        usage: Usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        read = written = 0
        if cache:
            read, written = self.prompt_cache.lookup(chat.model, chat.messages, chat.extra_prompt_text, raw,
                                                     chat.prompt_cache_key)
            if scale != 1.0:
                read, written = min(int(read * scale), prompt), min(int(written * scale), prompt)
        if not is_anthropic_model(chat.model):  # OpenAI says it on every answer, 0 included
            usage["prompt_tokens_details"] = {"cached_tokens": read}
        elif read or written:  # as a LiteLLM proxy passes on Anthropic's counts
            usage["prompt_tokens_details"] = {"cached_tokens": read}
            usage["cache_read_input_tokens"] = read
            usage["cache_creation_input_tokens"] = written
        if reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return usage

    def _latency_factor(self, chat: ParsedChatRequest) -> float:
        """The jitter multiplier for this request: reproducible for the seed and request."""
        config = self.config
        jitter = config.jitter
        if jitter <= 0 or (config.profile(chat.model)[1] <= 0 and config.per_token_ms <= 0):
            return 1.0
        seed_bytes = str(config.seed).encode()
        if chat.ticket_id is not None:
            seed = stable_seed(seed_bytes, chat.ticket_id.encode(), str(chat.attempt).encode())
        else:
            seed = stable_seed(seed_bytes, chat.body)
        return max(0.0, 1.0 + jitter * (2.0 * random.Random(seed).random() - 1.0))

    def _new_id(self) -> str:
        self._next_id += 1
        return f"{self._id_prefix}{self._next_id:08x}"

    async def _answer_json(
        self,
        request: web.Request,
        chat: ParsedChatRequest,
        answer: Answer,
        factor: float,
        extra_ms: float,
        headers: dict[str, str] | None,
        fault: FaultRule | None,
    ) -> web.StreamResponse:
        config = self.config
        delay_ms = (config.profile(chat.model)[1] + config.per_token_ms * len(answer.tokens)) * factor + extra_ms
        if delay_ms > 0:
            await self.sleep(delay_ms / 1000.0)
        payload = self.completion_payload(chat, answer)
        if fault is None or fault.kind in BILLED_KINDS:
            self.bill(chat, answer)
        if fault is None:
            return web.Response(body=orjson.dumps(payload), content_type="application/json", headers=headers)
        kind = fault.kind
        body = orjson.dumps(reshape_payload(kind, payload))  # the usage and shape faults (hostile.py)
        if kind in BODY_KINDS or kind in ANSWER_KINDS or kind in NO_USAGE_KINDS:
            return web.Response(body=body, content_type="application/json", headers=headers)
        if kind == "malformed_json":
            return web.Response(body=body[: len(body) // 2], content_type="application/json", headers=headers)
        if kind == "trickle":
            return await send_trickle(self.sleep, request, body, "application/json", headers, fault.trickle_seconds, sized=True)
        # reset, and stream_cut of a non-streaming request
        return await send_then_cut(request, [body[: len(body) // 2]], "application/json", headers, abort=True, total=len(body))

    def bill(self, chat: ParsedChatRequest, answer: Answer) -> None:
        """Put a delivered answer on the invoice (billing.py)."""
        self.stats.invoice.bill(chat.model, answer.service_tier, chat.ticket_id, answer.usage)

    def completion_payload(self, chat: ParsedChatRequest, answer: Answer) -> JSONObject:
        """The ``chat.completion`` object of an answer (also the body of a batch output line)."""
        text = "".join(answer.tokens)
        if answer.tool_name is None:
            message: JSONObject = {"role": "assistant", "content": text}
        else:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": answer.tool_call_id, "type": "function", "function": {"name": answer.tool_name, "arguments": text}}
                ],
            }
        return {
            "id": self._new_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish_reason}],
            "usage": answer.usage,
            **({"service_tier": answer.service_tier} if answer.service_tier is not None else {}),
        }

    def answer_batch_line(self, body: bytes, custom_id: str) -> tuple[int, JSONObject]:
        """(status, body) for one line of a batch: the answer its chat request gets, without delay or faults."""
        try:
            chat = self._parse_chat_request(body, custom_id, 1)
        except InvalidRequest as exc:
            return 400, {"error": {"message": exc.message, "type": "invalid_request_error", "param": exc.param,
                                   "code": exc.code}}
        return 200, self.completion_payload(chat, self._compose(chat, cache=False))

    def _stream_events(
        self, chat: ParsedChatRequest, answer: Answer, per_token_s: float, include_usage: bool
    ) -> tuple[list[tuple[float, bytes]], int]:
        """The SSE events of a streamed answer as (seconds to wait before, bytes), and the number of content events.

        Event 0 is the role chunk; events 1..n carry content (or tool-call
        argument) fragments; then the finish chunk, the usage chunk (when
        asked for) and ``[DONE]``.
        """
        completion_id = self._new_id()
        created = int(time.time())
        model = chat.model
        tokens = answer.tokens
        tier = {"service_tier": answer.service_tier} if answer.service_tier is not None else {}

        def event(delta: JSONObject, finish: str | None) -> bytes:
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                **tier,
            }
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        tool_name = answer.tool_name
        if tool_name is None:
            events = [(0.0, event({"role": "assistant", "content": ""}, None))]
        else:
            first_call = {"index": 0, "id": answer.tool_call_id, "type": "function", "function": {"name": tool_name, "arguments": ""}}
            events = [(0.0, event({"role": "assistant", "content": None, "tool_calls": [first_call]}, None))]
        # Chunk sizes depend only on the seed and the answer, so the same
        # request is always cut the same way.
        rng = random.Random(stable_seed(str(self.config.seed).encode(), "".join(tokens).encode()))
        position = 0
        for size in chunk_token_counts(len(tokens), rng):
            piece = "".join(tokens[position : position + size])
            position += size
            delta: JSONObject
            if tool_name is None:
                delta = {"content": piece}
            else:
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            events.append((per_token_s * size, event(delta, None)))
        content_events = len(events) - 1
        events.append((0.0, event({}, answer.finish_reason)))
        if include_usage:
            usage_chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": answer.usage,
                **tier,
            }
            events.append((0.0, b"data: " + orjson.dumps(usage_chunk) + b"\n\n"))
        events.append((0.0, _SSE_DONE))
        return events, content_events

    async def _answer_stream(
        self,
        request: web.Request,
        chat: ParsedChatRequest,
        answer: Answer,
        factor: float,
        extra_ms: float,
        headers: dict[str, str] | None,
        fault: FaultRule | None,
    ) -> web.StreamResponse:
        config = self.config
        first_delay_ms = config.profile(chat.model)[1] * factor + extra_ms
        per_token_s = config.per_token_ms * factor / 1000.0
        if first_delay_ms > 0:
            await self.sleep(first_delay_ms / 1000.0)

        kind = fault.kind if fault is not None else None
        include_usage = chat.include_usage and kind not in NO_USAGE_KINDS
        events, content_events = self._stream_events(chat, answer, per_token_s, include_usage)
        if kind == "trickle" and fault is not None:
            self.bill(chat, answer)
            body = b"".join(data for _, data in events)
            return await send_trickle(self.sleep, request, body, "text/event-stream", headers, fault.trickle_seconds, sized=False)
        if kind in ("reset", "stream_cut"):
            kept = events[: 1 + max(1, content_events // 2) if content_events else 1]
            pieces = [data for _, data in kept]
            return await send_then_cut(request, pieces, "text/event-stream", headers, abort=kind == "reset")
        if kind == "malformed_json":
            index = 1 if content_events else 0
            delay, data = events[index]
            json_part = data[len(b"data: ") : -2]
            events[index] = (delay, b"data: " + json_part[: len(json_part) // 2] + b"\n\n")

        response_headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        if headers:
            response_headers.update(headers)
        response = web.StreamResponse(status=200, headers=response_headers)
        await response.prepare(request)
        try:
            pending: list[bytes] = []
            for delay, data in events:
                if delay > 0:
                    # Send what is ready, then "generate" this chunk's tokens.
                    if pending:
                        await response.write(b"".join(pending))
                        pending.clear()
                    await self.sleep(delay)
                pending.append(data)
            await response.write(b"".join(pending))
            await response.write_eof()
            if kind is None or kind in NO_USAGE_KINDS:
                self.bill(chat, answer)
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
    for prefix in ("/v1", "", "/{gateway:.+}/v1"):  # the last: a gateway that takes the key in the path
        router.add_post(prefix + "/chat/completions", simulator.chat_completions)
        router.add_get(prefix + "/models", simulator.list_models)
    from batchrun.sim.batches import BatchSimulator

    BatchSimulator(simulator, config).install(app)
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
    of them to a different free port when ``port`` is 0. A client that
    disconnects cancels its request's handler (it is counted as 499).
    """
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0, handler_cancellation=True)
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
