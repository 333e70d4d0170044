"""AnthropicBatchAPI: the BatchAPI seam (seam.py) on Anthropic's Message Batches, through its SDK.

litellm (1.106 and still 1.110.2) cannot create Anthropic batches, so batch mode talks to
Anthropic's Message Batches API with the official `anthropic` SDK (the optional extra
`batchrun[anthropic]`, imported when an Anthropic batch job runs, with the install command
named when it is missing). Everything else stays litellm's, so that a batch request is the
online request and a batch answer reads as the online answer:

    request_line    {"custom_id", "params"}: the body litellm's acompletion would POST to
                    /v1/messages for the same call: litellm's `get_optional_params` (once per
                    job: temperature, max_tokens, tools and tool_choice, the JSON schema as
                    litellm maps it) and `AnthropicConfig.transform_request` (per ticket: the
                    system prompt apart, messages as content blocks); no network call
    completion_of   a succeeded result's message through `AnthropicConfig.transform_parsed_response`
                    (text, tool calls, a JSON-mode tool turned back into text, finish_reason,
                    usage), priced at the batch price (batch_api.batch_prices_of, cache reads
                    and writes at their own prices)
    parse_line      a results line: succeeded / errored (its error type onto an HTTP status:
                    retried or terminal as online) / canceled / expired

With the job's `prompt_cache`, requests mark the system prompt and the shared prefix with
cache_control as online requests do (online.mark_prompt_cache): batch cache reads cost half too.
The create carries the anthropic-beta header litellm sends online with such a request
(`beta_header`: structured output for a JSON schema, ...), read from the part's first request.
The SDK: `max_retries=0` (tenacity in batch/ is the one retry layer; the SDK would otherwise send
a lost create again and make a duplicate, paid batch), a timeout on every call, the key passed to
the client and scrubbed from every error (error_mapping.translate_error). The create posts the
part file's lines as the body (`{"requests": [...]}`, bytes, never parsed: one copy of a part in
memory); results are streamed to disk in chunks.

Anthropic batches carry no metadata: a create whose answer was lost is found by listing (newest
first) a batch created between the part's first create (less CLOCK_SLACK_S) and its last (plus
the timeout and CLOCK_SLACK_S), with the part's request count, not cancelled (`match_batch`).
Fields filled in a line's usage: prompt_tokens (input + cache reads + cache writes, as litellm
counts them), completion_tokens, total_tokens, cached_tokens (Anthropic's cache_read_input_tokens)
and cache_write_tokens (its cache_creation_input_tokens), null where a result does not say them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import re
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Awaitable, Mapping, TypeVar

import orjson

from batchrun.errors import ConfigurationError, RequestError, redact_url
from batchrun.job.sections import Params, PricesSpec
from batchrun.providers.batch_api import batch_prices_of
from batchrun.providers.error_mapping import error_for_status, translate_error
from batchrun.providers.litellm_setup import import_litellm
from batchrun.providers.online import _tool_calls_of, mark_prompt_cache
from batchrun.providers.seam import BatchClaim, BatchLine, BatchMatch, BatchPrices, ChatRequest, Reply, RequestOptions
from batchrun.records import Completion, Line, Usage

__all__ = ["AnthropicBatchAPI", "INSTALL"]

INSTALL = "pip install 'batchrun[anthropic]'"
MAX_REQUESTS = 100_000  # Anthropic's limits per Message Batch
MAX_BYTES = 256 * 1000 * 1000
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CLOCK_SLACK_S = 300.0  # this machine's clock against Anthropic's, for matching a lost create
#: an errored result's error type -> the HTTP status the same error has online
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529}
ENDED = {"in_progress": "in_progress", "canceling": "cancelling"}
T = TypeVar("T")


def import_sdk() -> ModuleType:
    """The `anthropic` SDK, or a ConfigurationError naming the install command."""
    try:
        import anthropic
    except ImportError:
        raise ConfigurationError(
            f"batch mode for Anthropic models uses Anthropic's SDK, which is not installed: {INSTALL} "
            "(make install includes it); nothing was sent") from None
    return anthropic


def _epoch(value: object) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _count(value: object) -> int | None:
    """A token count as the provider gave it: a non-negative int, else None (not believed)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


class AnthropicBatchAPI:
    """Anthropic's Message Batches under batchrun's rules (module docstring)."""

    provider = "anthropic"
    inline_requests = True
    max_requests: int | None = MAX_REQUESTS
    max_bytes: int | None = MAX_BYTES

    def __init__(self, *, model: str, api_base: str | None = None, api_key: str | None = None,
                 timeout_s: float = 600.0, prices: PricesSpec | None = None, prompt_cache: bool = False,
                 cache_prefix: str | None = None) -> None:
        sdk = import_sdk()
        self.model = model
        #: `prompt_cache`: the system prompt and the job's shared prefix marked with cache_control,
        #: as online (online.mark_prompt_cache)
        self.prompt_cache = prompt_cache
        self.cache_prefix = cache_prefix if prompt_cache else None
        self.api_base = api_base
        self.timeout_s = timeout_s
        self.prices = prices
        self._secrets = tuple(s for s in (api_key,) if s)
        self._litellm = import_litellm()
        self.name, provider, _, _ = self._litellm.get_llm_provider(model=model)
        if provider != "anthropic":
            raise ConfigurationError(f"{model}: not an Anthropic model (litellm routes it to {provider})")
        from litellm.llms.anthropic.chat.transformation import AnthropicConfig

        self._config = AnthropicConfig()
        self._optional: dict[str, Params] = {}
        self._sdk = sdk
        self._client = sdk.AsyncAnthropic(api_key=api_key, base_url=_sdk_base_url(api_base), max_retries=0,
                                          timeout=timeout_s)

    def __repr__(self) -> str:  # never show the key
        return f"AnthropicBatchAPI(model={self.model!r}, api_base={self.api_base!r})"

    @property
    def can_list(self) -> bool:
        return True

    # -- requests -------------------------------------------------------------------------------

    def custom_id(self, ticket_id: str) -> str:
        """The ticket id where Anthropic takes it (1-64 of [A-Za-z0-9_-]), else "h-" and a digest of it."""
        if CUSTOM_ID.match(ticket_id):
            return ticket_id
        return "h-" + hashlib.blake2b(ticket_id.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()

    def _sends_schema(self, options: RequestOptions) -> bool:
        """As LiteLLMProvider decides it online (send_json_schema, else what litellm knows of the model)."""
        if options.send_json_schema != "auto":
            return options.send_json_schema == "always"
        try:
            return bool(self._litellm.supports_response_schema(model=self.model))
        except Exception:
            return False

    def _optional_params(self, options: RequestOptions | None, params: Mapping[str, object]) -> Params:
        """litellm's optional params for this job's calls, once."""
        kwargs: Params = dict(params)
        if options is not None:
            if options.json_schema is not None and self._sends_schema(options):
                kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": options.json_schema_name, "schema": options.json_schema,
                    "strict": options.json_schema_strict}}
            if options.tools:
                kwargs["tools"] = options.tools
                if options.tool_choice is not None:
                    kwargs["tool_choice"] = options.tool_choice
        key = orjson.dumps(kwargs, option=orjson.OPT_SORT_KEYS).decode()
        if key not in self._optional:
            from litellm.utils import get_optional_params

            optional = get_optional_params(model=self.name, custom_llm_provider="anthropic", **kwargs)
            for internal in ("json_mode", "stream", "is_vertex_request"):  # what litellm's handler pops
                optional.pop(internal, None)
            self._optional[key] = optional
        return self._optional[key]

    def beta_header(self, params: Mapping[str, object]) -> str | None:
        """The anthropic-beta header litellm sends online with a request of these params (the betas it
        picks for the body, e.g. structured output for a JSON schema, filtered as it filters them), or
        None. A Message Batch takes it on its create, for all its requests."""
        from litellm.anthropic_beta_headers_manager import update_headers_with_filtered_beta

        messages = params.get("messages")
        headers = self._config.update_headers_with_optional_anthropic_beta(
            {}, dict(params), messages if isinstance(messages, list) else ())
        value = update_headers_with_filtered_beta(headers=headers, provider="anthropic").get("anthropic-beta")
        return str(value) if value else None

    def request_line(self, custom_id: str, request: ChatRequest, params: Mapping[str, object]) -> Line:
        """One request of a Message Batch: the body litellm would POST online for this call."""
        optional = self._optional_params(request.options, params)
        messages: list = copy.deepcopy(request.messages)  # litellm changes what it is given
        if self.prompt_cache:
            messages = mark_prompt_cache(messages, self.cache_prefix)
        body = self._config.transform_request(model=self.name, messages=messages,
                                              optional_params=copy.deepcopy(optional), litellm_params={}, headers={})
        return {"custom_id": custom_id, "params": body}

    # -- answers --------------------------------------------------------------------------------

    def parse_line(self, line: Line) -> BatchLine:
        """A results line: {"custom_id", "result": {"type": succeeded|errored|canceled|expired, ...}}."""
        cid = line.get("custom_id")
        cid = cid if isinstance(cid, str) else None
        result = line.get("result")
        kind = result.get("type") if isinstance(result, Mapping) else None
        if kind == "succeeded" and isinstance(result, Mapping) and isinstance(result.get("message"), Mapping):
            return BatchLine(cid, body=result["message"])
        if kind == "errored" and isinstance(result, Mapping):
            outer = result.get("error")
            inner = outer.get("error") if isinstance(outer, Mapping) else None
            inner = inner if isinstance(inner, Mapping) else (outer if isinstance(outer, Mapping) else {})
            error_type = str(inner.get("type") or "api_error")
            return BatchLine(cid, status=ERROR_STATUS.get(error_type), code=error_type,
                             message=str(inner.get("message") or error_type))
        if kind == "canceled":
            return BatchLine(cid, code="canceled", kind="cancelled",
                             message="the batch was cancelled before this request ran")
        if kind == "expired":
            return BatchLine(cid, code="expired", kind="expired",
                             message="the batch's 24 h window ended before this request ran")
        return BatchLine(cid, code="MalformedResult", kind="batch_error",
                         message=f"a results line whose result is not one Anthropic sends ({str(kind)[:50]})")

    def completion_of(self, body: Reply, prices: BatchPrices | None) -> Completion:
        """A succeeded result's message as litellm reads it online, priced at the batch price."""
        import httpx

        message = dict(copy.deepcopy(body))
        given = message.get("usage")
        raw_usage: Mapping[str, object] = given if isinstance(given, Mapping) else {}
        tokens = {k: _count(raw_usage.get(k)) for k in ("input_tokens", "output_tokens")}
        caches = {k: _count(raw_usage[k]) for k in ("cache_read_input_tokens", "cache_creation_input_tokens")
                  if raw_usage.get(k) is not None}  # a count not sent (or null) is not said: None
        believed = None not in tokens.values() and None not in caches.values()
        message["usage"] = raw_usage if believed else {"input_tokens": 0, "output_tokens": 0}
        from litellm.constants import RESPONSE_FORMAT_TOOL_NAME

        # JSON mode: litellm asked for the JSON schema through its own forced tool (a model without
        # native structured output) and turns that call back into text, as online. Job tool names
        # are ones Anthropic takes as they are (job/sections.py), so litellm renames none.
        content = message.get("content")
        json_mode = isinstance(content, list) and any(
            isinstance(b, Mapping) and b.get("type") == "tool_use" and b.get("name") == RESPONSE_FORMAT_TOOL_NAME
            for b in content)
        response = self._config.transform_parsed_response(
            completion_response=message, raw_response=httpx.Response(200), model_response=self._litellm.ModelResponse(),
            json_mode=json_mode)
        choice = response.choices[0]
        reply = getattr(choice, "message", None)
        usage = None
        if believed:
            got = response.usage
            usage = Usage(prompt_tokens=int(got.prompt_tokens), completion_tokens=int(got.completion_tokens),
                          total_tokens=int(got.total_tokens),
                          cached_tokens=caches.get("cache_read_input_tokens"),
                          cache_write_tokens=caches.get("cache_creation_input_tokens"))
        source = None
        if usage is None:
            cost, status = None, "no_usage"
        elif prices is None:
            cost, status = None, "unpriced_model"
        else:
            cost, status = prices.cost(usage), prices.status_for(usage)
            source = "job_prices" if status.startswith("job_prices") else "price_map"
        return Completion(text=(getattr(reply, "content", None) or "") if reply is not None else "",
                          finish_reason=getattr(choice, "finish_reason", None), model=getattr(response, "model", None),
                          usage=usage, cost_usd=cost, cost_status=status, tool_calls=_tool_calls_of(reply),
                          cost_source=source)

    def batch_prices(self) -> BatchPrices | None:
        return batch_prices_of(self.model, self.prices)

    # -- batches --------------------------------------------------------------------------------

    def _batch(self, batch: object) -> Reply:
        """An Anthropic MessageBatch in the shape batch/ reads (OpenAI's: status, request_counts with
        total/completed/failed, output_file_id = the batch id once its results can be read)."""
        dump = getattr(batch, "model_dump", None)  # the SDK's MessageBatch (a pydantic model), or a dict
        data: Reply = dump(mode="json") if dump is not None else dict(batch) if isinstance(batch, Mapping) else {}
        counts = {k: int((data.get("request_counts") or {}).get(k) or 0)
                  for k in ("processing", "succeeded", "errored", "canceled", "expired")}
        cancelled = data.get("cancel_initiated_at") is not None
        status = ENDED.get(str(data.get("processing_status")), "in_progress")
        if data.get("processing_status") == "ended":
            status = "cancelled" if cancelled else "expired" if counts["expired"] else "completed"
        return {"id": data.get("id"), "status": status, "processing_status": data.get("processing_status"),
                "request_counts": {"total": sum(counts.values()), "completed": counts["succeeded"],
                                   "failed": counts["errored"] + counts["canceled"] + counts["expired"], **counts},
                "output_file_id": data.get("id") if data.get("results_url") else None, "error_file_id": None,
                "errors": None, "created_at": _epoch(data.get("created_at")), "cancel_initiated": cancelled}

    def _endpoint(self, method: str, path: str) -> str:
        """The call an error names: "POST https://api.anthropic.com/v1/messages/batches" (the SDK's
        base URL, credentials in it redacted; a batch's id as ID, as LiteLLMBatchAPI names it)."""
        return f"{method} {redact_url(str(self._client.base_url)).rstrip('/')}/v1/messages/batches{path}"

    def _refused(self, exc: Exception, method: str, path: str) -> RequestError:
        error = translate_error(exc, self._secrets)
        error.endpoint = error.endpoint or self._endpoint(method, path)
        return error

    async def _call(self, call: Awaitable[T], method: str, path: str = "") -> T:
        try:
            return await call
        except Exception as exc:  # cancellation passes through
            raise self._refused(exc, method, path) from None

    async def create_file(self, path: str | os.PathLike[str]) -> Reply:
        raise NotImplementedError("Anthropic takes a batch's requests inline (inline_requests): nothing is uploaded")

    async def create_batch(self, part_file: str | os.PathLike[str], input_file_id: str | None,
                           metadata: Mapping[str, str]) -> Reply:
        """Create a Message Batch of the part's requests (its file's lines, sent as they are), with
        the beta header litellm would send with them online (the same for every request of a job)."""
        lines = Path(part_file).read_bytes().strip(b"\n")
        headers = {"Content-Type": "application/json"}
        first = orjson.loads(lines.split(b"\n", 1)[0])
        beta = self.beta_header(first.get("params") or {}) if isinstance(first, dict) else None
        if beta:
            headers["anthropic-beta"] = beta
        body = b'{"requests":[' + lines.replace(b"\n", b",") + b"]}"
        del lines
        batch = await self._call(self._client.post(
            "/v1/messages/batches", cast_to=self._sdk.types.messages.MessageBatch, content=body,
            options={"headers": headers, "timeout": self.timeout_s}), "POST")
        return self._batch(batch)

    async def retrieve_batch(self, batch_id: str) -> Reply:
        return self._batch(await self._call(self._client.messages.batches.retrieve(batch_id), "GET", "/ID"))

    async def cancel_batch(self, batch_id: str) -> Reply:
        """Ask for a cancel; a batch that has ended already is a 409 (as OpenAI answers), whatever
        Anthropic answered."""
        try:
            return self._batch(await self._call(self._client.messages.batches.cancel(batch_id), "POST", "/ID/cancel"))
        except RequestError as exc:
            if exc.status_code is None or not 400 <= exc.status_code < 500:
                raise
            batch = await self.retrieve_batch(batch_id)
            if batch["processing_status"] != "ended":
                raise
            raise error_for_status(409, f"batch {batch_id} has ended: nothing to cancel",
                                   error_type="BatchEnded") from None

    async def list_batches(self, after: str | None = None, limit: int = 100) -> Reply:
        """One page of Message Batches, newest first."""
        kwargs: dict[str, int | str] = {"limit": limit}
        if after:
            kwargs["after_id"] = after
        page = await self._call(self._client.messages.batches.list(**kwargs), "GET")
        return {"data": [self._batch(b) for b in page.data], "has_more": bool(page.has_more),
                "last_id": getattr(page, "last_id", None)}

    def match_batch(self, batch: Reply, claim: BatchClaim) -> BatchMatch:
        """A candidate: created between the part's first create (less the clock slack) and its last
        (plus the timeout and the slack), with the part's request count, not cancelled."""
        created = batch.get("created_at")
        if not isinstance(created, (int, float)):
            return "other"
        if created < claim.created_after - CLOCK_SLACK_S:
            return "older"
        if created > claim.created_before + self.timeout_s + CLOCK_SLACK_S:
            return "other"
        counts = batch.get("request_counts") or {}
        if counts.get("total") != claim.requests or batch.get("cancel_initiated"):
            return "other"
        return "candidate"

    async def download(self, file_id: str, dest: str | os.PathLike[str]) -> int:
        """Stream a batch's results (file_id: the batch id) into `dest`, replaced atomically; its size."""
        import anyio

        tmp = f"{os.fspath(dest)}.part"
        size = 0
        try:
            async with self._client.messages.batches.with_streaming_response.results(file_id) as response:
                async with await anyio.open_file(tmp, "wb") as handle:
                    async for chunk in response.iter_bytes():
                        await handle.write(chunk)
                        size += len(chunk)
                    await handle.flush()
                    await anyio.to_thread.run_sync(os.fsync, handle.wrapped.fileno())
        except Exception as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._refused(exc, "GET", "/ID/results") from None
        os.replace(tmp, dest)
        return size

    async def aclose(self) -> None:
        await self._client.close()


def _sdk_base_url(api_base: str | None) -> str | None:
    """The SDK's base URL (it adds /v1/...): an api_base given as litellm takes it, without /v1 or
    /v1/messages; None: the SDK's own (ANTHROPIC_BASE_URL, else api.anthropic.com)."""
    if not api_base:
        return None
    base = api_base.rstrip("/")
    for suffix in ("/v1/messages", "/v1"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base
