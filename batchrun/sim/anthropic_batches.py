"""The simulator's Anthropic Message Batches: `/v1/messages/batches` in Anthropic's format.

Enough of Anthropic's Message Batches API for its official SDK (`client.messages.batches`) to
talk to the simulator:

``POST /v1/messages/batches``              create: ``{"requests": [{"custom_id", "params"}]}``,
                                           checked at once (400 ``invalid_request_error``: not a
                                           list, none or over 100,000 requests, a custom_id that is
                                           not 1-64 of ``[A-Za-z0-9_-]`` or is repeated, params not
                                           an object; 413 ``request_too_large`` over 256 MB); the
                                           requests are written to disk, one line each
``GET /v1/messages/batches``               list, newest first (``limit`` 1-1000, default 20;
                                           ``after_id``, ``before_id``; ``has_more``, ``first_id``,
                                           ``last_id``); Anthropic's batches only
``GET /v1/messages/batches/{id}``          retrieve
``POST /v1/messages/batches/{id}/cancel``  cancel: ``canceling``, then ``ended`` with the requests
                                           not answered yet ``canceled``; a batch that has ended:
                                           400 ``invalid_request_error``
``GET /v1/messages/batches/{id}/results``  the results, JSON Lines, once ended (``results_url``)

A batch runs on `batches.BatchSimulator`'s machinery (`SimBatch` with ``api = "anthropic"``): the
same batch clock (``batch_time_scale``, ``batch_duration_s``), persistence, counters and faults.
Each request's ``params`` are turned into the chat completion request litellm would have sent
(`chat_body`: system prompt, messages, max_tokens, tools and tool_choice, ``output_format`` as a
JSON schema) and answered by `ChatSimulator.answer_batch_line`, the chat simulator's own code;
its answer comes back as an Anthropic message (`message_of`: text or ``tool_use`` blocks,
``stop_reason``, ``usage`` with ``input_tokens``, ``output_tokens`` and zero cache tokens).

Results: ``{"custom_id", "result": {"type": "succeeded", "message": {...}}}``, or ``errored``
(``{"type": "error", "error": {"type", "message"}}``: ``api_error`` for a fault's line,
``invalid_request_error`` for params the chat simulator refuses), ``canceled``, ``expired``.

Faults (batch_faults.py) as for OpenAI's batches: ``fail_lines`` and ``all_failed`` answer lines
``errored``; ``expire`` leaves the rest ``expired`` at the window's end; ``slow`` stays
``in_progress`` until cancelled; ``429``/``500``/``503`` on endpoints ``create``, ``retrieve``,
``list``, ``cancel`` and ``content`` (results), in Anthropic's error shape; ``create_lost`` makes
the batch and answers 500; ``invalid`` refuses the create of that batch number with a 400
(Anthropic checks a batch when it is created: nothing is made).

Timestamps (``created_at``, ``expires_at``, ``ended_at``, ``cancel_initiated_at``, RFC 3339) are
wall-clock times, the batch clock's times converted back, so that a client's own clock compares
with them (a client matches a batch whose create answer it lost by its creation time).
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from batchrun.sim.jsontypes import JSONObject as Obj

if TYPE_CHECKING:
    from batchrun.sim.batches import BatchSimulator, SimBatch
    from batchrun.sim.server import ChatSimulator

MAX_REQUESTS = 100_000
MAX_BODY_BYTES = 256 * 1000 * 1000
MAX_LIST_LIMIT = 1000
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
WINDOW_S = 86400.0
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def error(status: int, message: str, error_type: str | None = None, code: str | None = None,
          headers: dict[str, str] | None = None) -> web.Response:
    """An error in Anthropic's shape (the type follows the status: OpenAI's names are not used)."""
    kind = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    payload = {"type": "error", "error": {"type": kind, "message": message}}
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json",
                        headers=headers)


def _json(payload: object) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


def _obj(value: object) -> Obj:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _text(content: object) -> str:
    """The text of a system prompt or message content: a string, or text blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text") or "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def chat_body(params: Obj) -> Obj:
    """The chat completion request of an Anthropic request's params (ValueError: Anthropic would refuse them)."""
    max_tokens = params.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError("max_tokens: Field required (an integer of at least 1)")
    messages: list[Obj] = []
    if params.get("system"):
        messages.append({"role": "system", "content": _text(params["system"])})
    for message in _list(params.get("messages")):
        if not isinstance(message, dict):
            raise ValueError("messages: each message must be an object")
        content = message.get("content")
        calls = [{"id": b.get("id"), "type": "function", "function": {
                     "name": b.get("name"), "arguments": orjson.dumps(b.get("input") or {}).decode()}}
                 for b in (content if isinstance(content, list) else []) if isinstance(b, dict)
                 and b.get("type") == "tool_use"]
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                                 "content": _text(block.get("content"))})
        text = _text(content)
        if text or calls:
            messages.append({"role": message.get("role"), "content": text or None,
                             **({"tool_calls": calls} if calls else {})})
    if not messages:
        raise ValueError("messages: at least one message is required")
    body: Obj = {"model": params.get("model"), "messages": messages, "max_tokens": max_tokens}
    tools = [{"type": "function", "function": {"name": t.get("name"), "description": t.get("description") or "",
                                               "parameters": t.get("input_schema")}}
             for t in _list(params.get("tools")) if isinstance(t, dict) and "input_schema" in t]
    if tools:
        body["tools"] = tools
    choice = params.get("tool_choice")
    if isinstance(choice, dict):
        kind = str(choice.get("type"))
        body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(
            kind, {"type": "function", "function": {"name": choice.get("name")}})
    output = params.get("output_format") or _obj(params.get("output_config")).get("format")
    if isinstance(output, dict) and output.get("type") == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output",
                                                                          "schema": output.get("schema")}}
    return body


def message_of(payload: Obj, model: object) -> Obj:
    """An Anthropic message from the chat simulator's chat.completion answer."""
    choice = _obj((_list(payload.get("choices")) or [None])[0])
    reply = _obj(choice.get("message"))
    content: list[Obj] = []
    if reply.get("content"):
        content.append({"type": "text", "text": reply["content"]})
    for call in map(_obj, _list(reply.get("tool_calls"))):
        function = _obj(call.get("function"))
        try:
            arguments = orjson.loads(str(function.get("arguments") or "{}"))
        except orjson.JSONDecodeError:  # cut by max_tokens
            arguments = {}
        content.append({"type": "tool_use", "id": "toolu_" + str(call.get("id")).removeprefix("call_"),
                        "name": function.get("name"), "input": _obj(arguments)})
    usage = _obj(payload.get("usage"))
    return {"id": "msg_" + str(payload["id"]).removeprefix("chatcmpl-"), "type": "message", "role": "assistant",
            "model": model or payload.get("model"), "content": content,
            "stop_reason": STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"), "stop_sequence": None,
            "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


def _errored(error_type: str, message: str) -> Obj:
    return {"type": "errored", "error": {"type": "error", "error": {"type": error_type, "message": message}}}


def answer_line(chat: "ChatSimulator", line: Obj, failed: bool) -> tuple[bool, bytes]:
    """(succeeded?, the result line) of one request of a batch."""
    params = _obj(line.get("params"))
    custom_id = str(line.get("custom_id"))
    if failed:
        result = _errored("api_error", "Internal server error (simulated fault)")
    else:
        try:
            status, payload = chat.answer_batch_line(orjson.dumps(chat_body(params)), custom_id)
        except ValueError as exc:
            status, payload = 400, {"error": {"message": str(exc)}}
        if status == 200:
            result = {"type": "succeeded", "message": message_of(payload, params.get("model"))}
        else:
            error = payload.get("error")
            result = _errored("invalid_request_error", str(error.get("message") if isinstance(error, dict) else error))
    return result["type"] == "succeeded", orjson.dumps({"custom_id": custom_id, "result": result}) + b"\n"


def unanswered_line(custom_id: str, why: str) -> bytes:
    """The result of a request a cancel ("canceled") or the window's end ("expired") left unanswered."""
    return orjson.dumps({"custom_id": custom_id, "result": {"type": why}}) + b"\n"


class AnthropicBatches:
    """The `/v1/messages/batches` handlers, on a BatchSimulator's files, batches and clock."""

    def __init__(self, sim: "BatchSimulator") -> None:
        self.sim = sim

    def install(self, app: web.Application) -> None:
        router = app.router
        router.add_post("/v1/messages/batches", self.create)
        router.add_get("/v1/messages/batches", self.list)
        router.add_get("/v1/messages/batches/{batch_id}", self.retrieve)
        router.add_post("/v1/messages/batches/{batch_id}/cancel", self.cancel)
        router.add_get("/v1/messages/batches/{batch_id}/results", self.results)

    # -- shapes ------------------------------------------------------------------------------

    def _time(self, simulated: int | None) -> str | None:
        if simulated is None:
            return None
        wall = self.sim.wall_time(simulated)
        return datetime.fromtimestamp(wall, tz=timezone.utc).isoformat().replace("+00:00", "Z")

    def to_dict(self, batch: "SimBatch", request: web.Request) -> Obj:
        ended = batch.status in ENDED
        answered = batch.completed + batch.failed + batch.canceled + batch.expired
        ended_at = next((batch.times[k] for k in ("completed_at", "expired_at", "cancelled_at", "failed_at")
                         if k in batch.times), None) if ended else None
        return {
            "id": batch.id, "type": "message_batch",
            "processing_status": "ended" if ended else "canceling" if batch.status == "cancelling" else "in_progress",
            "request_counts": {"processing": 0 if ended else max(batch.total - answered, 0),
                               "succeeded": batch.completed, "errored": batch.failed,
                               "canceled": batch.canceled, "expired": batch.expired},
            "created_at": self._time(batch.created_at), "expires_at": self._time(batch.expires_at),
            "ended_at": self._time(ended_at), "archived_at": None,
            "cancel_initiated_at": self._time(batch.times.get("cancelling_at")),
            "results_url": (f"{request.url.origin()}/v1/messages/batches/{batch.id}/results" if ended else None),
        }

    def _batch(self, request: web.Request) -> "SimBatch | web.Response":
        batch = self.sim.batches.get(request.match_info["batch_id"])
        if batch is None or batch.api != "anthropic":
            return error(404, f"message_batch not found: {request.match_info['batch_id']}")
        return batch

    # -- endpoints -----------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        fault = self.sim._call_fault("create", error)
        if isinstance(fault, web.Response):
            return fault
        raw = bytearray()
        async for chunk in request.content.iter_chunked(1 << 20):
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                return error(413, f"Request exceeds the maximum allowed size of {MAX_BODY_BYTES} bytes")
        try:
            body = orjson.loads(bytes(raw))
        except orjson.JSONDecodeError:
            return error(400, "The request body is not valid JSON.")
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not 1 <= len(requests) <= MAX_REQUESTS:
            return error(400, f"requests: a list of 1 to {MAX_REQUESTS} requests is required")
        seen: set[str] = set()
        for index, item in enumerate(requests):
            cid = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(cid, str) or not CUSTOM_ID.match(cid):
                return error(400, f"requests.{index}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if cid in seen:
                return error(400, f"requests.{index}.custom_id: custom_id {cid!r} is used more than once")
            if not isinstance(item.get("params"), dict):
                return error(400, f"requests.{index}.params: Input should be a valid dictionary")
            seen.add(cid)
        number = len(self.sim.order) + 1
        if any(rule.kind == "invalid" and rule.hits_batch(number) for rule in self.sim.faults):
            return error(400, "requests.0.params: the request is not valid (simulated fault)")
        sim_file = self.sim.new_file(f"batch-{number}-requests.jsonl", "batch")
        with open(sim_file.path, "wb") as handle:
            for item in requests:
                handle.write(orjson.dumps({"custom_id": item["custom_id"], "params": item["params"]}) + b"\n")
        sim_file.bytes = sim_file.path.stat().st_size
        from batchrun.sim.batches import SimBatch

        self.sim.anthropic_betas.append(request.headers.get("anthropic-beta"))
        created = self.sim.now()
        batch = SimBatch(id=self.sim._new_id("msgbatch_sim"), number=number, input_file_id=sim_file.id,
                         endpoint="/v1/messages", completion_window="24h", metadata=None,
                         created_at=int(created), expires_at=int(created + WINDOW_S), api="anthropic",
                         total=len(requests))
        self.sim.batches[batch.id] = batch
        self.sim.order.append(batch.id)
        batch.task = asyncio.get_running_loop().create_task(self.sim._process(batch))
        self.sim.save()
        if fault is not None:  # create_lost: made, but the client never hears of it
            return error(500, "Internal server error (simulated fault)")
        return _json(self.to_dict(batch, request))

    async def retrieve(self, request: web.Request) -> web.Response:
        fault = self.sim._call_fault("retrieve", error)
        if isinstance(fault, web.Response):
            return fault
        batch = self._batch(request)
        return batch if isinstance(batch, web.Response) else _json(self.to_dict(batch, request))

    async def cancel(self, request: web.Request) -> web.Response:
        fault = self.sim._call_fault("cancel", error)
        if isinstance(fault, web.Response):
            return fault
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        if batch.status in ("validating", "in_progress", "finalizing"):
            batch.cancel_requested = True
            batch.status = "cancelling"
            batch.times["cancelling_at"] = int(self.sim.now())
            self.sim.save()
        elif batch.status != "cancelling":
            return error(400, f"Batch {batch.id} cannot be canceled: it has ended.")
        return _json(self.to_dict(batch, request))

    async def list(self, request: web.Request) -> web.Response:
        fault = self.sim._call_fault("list", error)
        if isinstance(fault, web.Response):
            return fault
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return error(400, "limit: Input should be a valid integer")
        limit = max(1, min(MAX_LIST_LIMIT, limit))
        ids = [i for i in self.sim.order[::-1] if self.sim.batches[i].api == "anthropic"]  # newest first
        after, before = request.query.get("after_id"), request.query.get("before_id")
        for cursor in (after, before):
            if cursor and cursor not in ids:
                return error(400, f"no message_batch {cursor}")
        if after:
            ids = ids[ids.index(after) + 1:]
        elif before:
            ids = ids[:ids.index(before)][-limit:]
        page = [self.to_dict(self.sim.batches[i], request) for i in ids[:limit]]
        return _json({"data": page, "has_more": len(ids) > limit, "first_id": page[0]["id"] if page else None,
                      "last_id": page[-1]["id"] if page else None})

    async def results(self, request: web.Request) -> web.StreamResponse:
        fault = self.sim._call_fault("content", error)
        if isinstance(fault, web.Response):
            return fault
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        if batch.status not in ENDED:
            return error(400, f"Batch {batch.id} has not ended: its results are not available yet.")
        if batch.output_file_id is None:
            return web.Response(body=b"", content_type="application/binary")
        return web.FileResponse(self.sim.files[batch.output_file_id].path,
                                headers={"Content-Type": "application/binary"})
