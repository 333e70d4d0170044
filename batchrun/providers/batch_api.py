"""LiteLLMBatchAPI: the BatchAPI seam (seam.py) on litellm's file and batch functions; the choice
of a model's BatchAPI and the batch price every one uses.

    BATCH_PROVIDERS        litellm's providers with a batch create
    BATCH_LIST_PROVIDERS   ... whose batches can be listed (a lost create can be adopted)
    build_batch_api()      the BatchAPI of a job's model: AnthropicBatchAPI (anthropic_batch.py) for
                           Anthropic's models (litellm cannot create their batches), else
                           LiteLLMBatchAPI; against the embedded simulator too
    batch_prices_of()      the batch price of a model and the cost_status saying where it came from
    LiteLLMBatchAPI        files, batches, output downloads, batch prices, request lines
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Mapping

from batchrun.errors import ConfigurationError, TerminalError, redact_url
from batchrun.job.sections import Params, PricesSpec
from batchrun.providers.error_mapping import (
    error_for_status,
    headers_of,
    parse_retry_after,
    translate_error,
)
from batchrun.providers.litellm_setup import import_litellm
from batchrun.providers.seam import BatchAPI, BatchClaim, BatchLine, BatchMatch, BatchPrices, ChatRequest, Reply
from batchrun.providers.usage_checks import reported_counts, token_limit, usage_problem
from batchrun.records import Completion, Line, ToolCall, usage_from_provider

#: litellm 1.106's providers with a batch *create* (litellm.acreate_batch's custom_llm_provider).
BATCH_PROVIDERS = frozenset({"openai", "azure", "vertex_ai", "bedrock", "hosted_vllm", "litellm_proxy", "mistral",
                             "xai"})
#: ... and those whose batches can be listed (alist_batches), so a lost create can be adopted.
BATCH_LIST_PROVIDERS = frozenset({"openai", "azure", "hosted_vllm", "litellm_proxy", "xai"})


def build_batch_api(model: str, *, api_base: str | None, api_key: str | None, timeout_s: float = 600.0,
                    prices: PricesSpec | None = None, simulator: bool = False, prompt_cache: bool = False,
                    cache_prefix: str | None = None) -> BatchAPI:
    """The BatchAPI for the job's `model` (as the job names it). An Anthropic model gets
    AnthropicBatchAPI (ConfigurationError naming the install command without its SDK); any other
    LiteLLMBatchAPI, refused (ConfigurationError) where litellm has no batch creation. With
    `simulator`, `api_base` is the embedded simulator's: it speaks Anthropic's batches to an
    Anthropic model and OpenAI's to the others (sent as openai/<name>, as online). `prompt_cache`
    and `cache_prefix` (the job's): Anthropic's requests marked with cache_control, as online."""
    if batch_provider_of(model) == "anthropic":
        from batchrun.providers.anthropic_batch import AnthropicBatchAPI

        return AnthropicBatchAPI(model=model, api_base=api_base, api_key=api_key, timeout_s=timeout_s,
                                 prices=prices, prompt_cache=prompt_cache, cache_prefix=cache_prefix)
    if simulator:
        from batchrun.sim.config import simulated_model

        model = simulated_model(model)
    api = LiteLLMBatchAPI(model=model, api_base=api_base, api_key=api_key, timeout_s=timeout_s, prices=prices)
    if api.provider not in BATCH_PROVIDERS:
        raise ConfigurationError(
            f"{model}: litellm has no batch creation for provider {api.provider!r}; batch mode needs one of "
            f"{', '.join(sorted(BATCH_PROVIDERS | {'anthropic'}))} (use --mode online)")
    return api


def batch_provider_of(model: str, api_base: str | None = None) -> str | None:
    """litellm's provider name for `model`, as its batch functions want it (None: litellm cannot tell)."""
    lm = import_litellm()
    try:
        return str(lm.get_llm_provider(model=model, api_base=api_base)[1])
    except Exception:
        return None


#: the endpoint batch lines and batches name, and the window batches ask for
CHAT_ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"


def _per_token(info: Mapping[str, object], key: str, factor: float = 1.0) -> float | None:
    value = info.get(key)
    return float(value) * factor if isinstance(value, (int, float)) else None


def batch_prices_of(model: str, prices: PricesSpec | None) -> BatchPrices | None:
    """The batch price of `model` (any provider): the job's [prices] (batch ones, else half the
    online ones; its cached and cache-write prices as given, halved with the online ones), else
    litellm's batch prices (input_cost_per_token_batches, output_cost_per_token_batches, and the
    cache read/write *_batches prices), else half litellm's online prices (cache ones too); None
    for a model litellm does not price. The status says which, and BatchPrices.status_for adds
    "_cached_price_assumed" where cached or written tokens had no price of their own (docs/batch.md,
    "Cost")."""
    if prices is not None:
        cached = None if prices.cached_input_per_million is None else prices.cached_input_per_million / 1e6
        write = None if prices.cache_write_per_million is None else prices.cache_write_per_million / 1e6
        if prices.batch_input_per_million is not None and prices.batch_output_per_million is not None:
            return BatchPrices(prices.batch_input_per_million / 1e6, prices.batch_output_per_million / 1e6,
                               "job_prices", cached, write)
        return BatchPrices(prices.input_per_million / 2e6, prices.output_per_million / 2e6, "job_prices_half",
                           None if cached is None else cached / 2, None if write is None else write / 2)
    try:
        info = import_litellm().get_model_info(model=model)
    except Exception:
        return None
    batch_in, batch_out = info.get("input_cost_per_token_batches"), info.get("output_cost_per_token_batches")
    if batch_in is not None and batch_out is not None:
        return BatchPrices(float(batch_in), float(batch_out), "litellm_batch",
                           _per_token(info, "cache_read_input_token_cost_batches"),
                           _per_token(info, "cache_creation_input_token_cost_batches"))
    online_in, online_out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if online_in is None or online_out is None:
        return None
    return BatchPrices(float(online_in) / 2, float(online_out) / 2, "half_online",
                       _per_token(info, "cache_read_input_token_cost", 0.5),
                       _per_token(info, "cache_creation_input_token_cost", 0.5))


#: the files and batches endpoint each litellm function calls, for error messages
ENDPOINTS = {"acreate_file": "POST /files", "acreate_batch": "POST /batches", "aretrieve_batch": "GET /batches/ID",
             "acancel_batch": "POST /batches/ID/cancel", "alist_batches": "GET /batches",
             "afile_content": "GET /files/ID/content"}
#: a server error that names missing configuration (a LiteLLM proxy without files_settings): not retried
_CONFIG_TEXT = re.compile(r"files_settings|is not set|not configured", re.IGNORECASE)


class LiteLLMBatchAPI:
    """litellm's file and batch functions under batchrun's rules.

    Every call passes `max_retries=0` (the OpenAI SDK would otherwise send a
    lost create two more times and make duplicate, paid batches; tenacity in
    batch_mode.py retries only where a retry cannot duplicate) and
    `litellm_metadata={"batch_ignore_default_logging": True}` (else
    litellm's logging downloads a finished batch's output and error files
    to price them, on every retrieve). Results are plain dicts; exceptions
    are translated by `translate_error` with the key scrubbed. File content
    is streamed to disk in chunks (`download`), never held in memory.
    """

    inline_requests = False
    max_requests: int | None = None  # OpenAI's 50,000 requests / 200 MB are the job's defaults
    max_bytes: int | None = None

    def __init__(self, *, model: str, api_base: str | None = None, api_key: str | None = None,
                 timeout_s: float = 600.0, prices: PricesSpec | None = None) -> None:
        self.model = model
        self.api_base = api_base
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.prices = prices
        self._secrets = tuple(s for s in (api_key,) if s)
        self._litellm = import_litellm()
        self.provider = batch_provider_of(model, api_base) or "openai"

    def __repr__(self) -> str:  # never show the key
        return f"LiteLLMBatchAPI(model={self.model!r}, api_base={self.api_base!r})"

    @property
    def can_list(self) -> bool:
        return self.provider in BATCH_LIST_PROVIDERS

    def _kwargs(self) -> Params:
        kwargs: Params = dict(custom_llm_provider=self.provider, max_retries=0, timeout=self.timeout_s,
                                      litellm_metadata={"batch_ignore_default_logging": True})
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        return kwargs

    async def _call(self, name: str, *args: object, **kwargs: object) -> Any:  # litellm's answer
        try:
            return await getattr(self._litellm, name)(*args, **{**self._kwargs(), **kwargs})
        except Exception as exc:  # cancellation passes through
            error = translate_error(exc, self._secrets)
            # litellm's file and batch functions wrap some HTTP errors in BadRequestError: go by the status
            status = error.status_code
            if isinstance(error, TerminalError) and status is not None and (status in (408, 429) or status >= 500):
                error = error_for_status(status, error.message, error_type=error.error_type or "HTTPError",
                                         retry_after=parse_retry_after(headers_of(exc)))
            if error.retryable and status is not None and status >= 500 and _CONFIG_TEXT.search(error.message):
                error = TerminalError(error.message, kind="configuration", status_code=status,
                                      error_type=error.error_type)
            error.endpoint = self._endpoint(name)
            raise error from None

    def _endpoint(self, name: str) -> str:
        method, _, path = ENDPOINTS.get(name, f"{name} ").partition(" ")
        if not self.api_base:
            return f"{method} {path} ({self.provider})"
        return f"{method} {redact_url(self.api_base).rstrip('/')}{path}"

    @staticmethod
    def _plain(obj: Any) -> Reply:  # obj: litellm's answer (a pydantic model, or already a dict)
        if isinstance(obj, dict):
            return obj
        dump = getattr(obj, "model_dump", None)
        return dump() if dump is not None else dict(obj)

    async def create_file(self, path: str | os.PathLike[str]) -> Reply:
        """Upload a batch input file (the SDK streams it from the open handle)."""
        with open(path, "rb") as handle:
            return self._plain(await self._call("acreate_file", file=(os.path.basename(path), handle),
                                                purpose="batch"))

    async def create_batch(self, part_file: str | os.PathLike[str], input_file_id: str | None,
                           metadata: Mapping[str, str]) -> Reply:
        """Create the batch of an uploaded input file, with batchrun's metadata (the part file itself
        was uploaded by create_file)."""
        return self._plain(await self._call("acreate_batch", completion_window=WINDOW, endpoint=CHAT_ENDPOINT,
                                            input_file_id=input_file_id, metadata=dict(metadata)))

    async def retrieve_batch(self, batch_id: str) -> Reply:
        return self._plain(await self._call("aretrieve_batch", batch_id=batch_id))

    async def cancel_batch(self, batch_id: str) -> Reply:
        return self._plain(await self._call("acancel_batch", batch_id=batch_id))

    async def list_batches(self, after: str | None = None, limit: int = 100) -> Reply:
        """One page: {"data": [batch dicts], "has_more": bool, "last_id": ...}; metadata is NOT filtered
        by the provider (litellm accepts it and drops it): filter on the client."""
        page = await self._call("alist_batches", after=after, limit=limit)
        plain = self._plain(page)
        plain["data"] = [self._plain(item) for item in plain.get("data") or []]
        return plain

    async def download(self, file_id: str, dest: str | os.PathLike[str], chunk_size: int = 1 << 20) -> int:
        """Stream a file's content into `dest` (replaced atomically); returns its size."""
        import anyio

        tmp = f"{os.fspath(dest)}.part"
        size = 0
        result = await self._call("afile_content", file_id=file_id, stream=True, chunk_size=chunk_size)
        iterator = getattr(result, "stream_iterator", None)
        try:
            async with await anyio.open_file(tmp, "wb") as handle:
                if iterator is None:  # a provider without streaming: litellm holds the body
                    blob = getattr(result, "content", None) or b""
                    await handle.write(blob)
                    size = len(blob)
                else:
                    async for chunk in iterator:
                        await handle.write(chunk)
                        size += len(chunk)
                await handle.flush()
                await anyio.to_thread.run_sync(os.fsync, handle.wrapped.fileno())
        except Exception as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            error = translate_error(exc, self._secrets)
            error.endpoint = error.endpoint or self._endpoint("afile_content")
            raise error from None
        os.replace(tmp, dest)
        return size

    def batch_prices(self) -> BatchPrices | None:
        """The batch price of this model (`batch_prices_of`)."""
        return batch_prices_of(self.model, self.prices)

    def completion_of(self, body: Reply, prices: BatchPrices | None) -> Completion:
        """A Completion from a batch output line's response body (a chat.completion object),
        priced at the batch price."""
        choice = (body.get("choices") or [None])[0]
        if not isinstance(choice, Mapping):
            raise ValueError("the response body has no choices")
        message = choice.get("message") or {}
        raw_usage = body.get("usage")
        usage = None
        problem = None
        if isinstance(raw_usage, Mapping) and raw_usage.get("total_tokens") is not None:
            problem = usage_problem(raw_usage, token_limit(self._litellm, self.model))
            if problem is None:
                usage = usage_from_provider(raw_usage)
        source = None
        if problem is not None:  # not believed: no usage, no cost (usage_checks.py)
            cost, status = None, problem[0]
        elif usage is None:
            cost, status = None, "no_usage"
        elif prices is None:
            cost, status = None, "unpriced_model"
        else:
            cost, status = prices.cost(usage), prices.status_for(usage)
            source = "job_prices" if status.startswith("job_prices") else "price_map"
        calls = tuple(ToolCall(name=str((c.get("function") or {}).get("name") or ""),
                               arguments=(c.get("function") or {}).get("arguments") or "", id=c.get("id"))
                      for c in (message.get("tool_calls") or []) if isinstance(c, Mapping))
        tier = body.get("service_tier")
        return Completion(text=message.get("content") or "", finish_reason=choice.get("finish_reason"),
                          model=body.get("model"), usage=usage, cost_usd=cost, cost_status=status,
                          tool_calls=calls, service_tier=tier if isinstance(tier, str) and len(tier) <= 32 else None,
                          cost_source=source,
                          usage_reported=reported_counts(raw_usage) if problem else None,
                          usage_problem=problem[1] if problem else None)

    def match_batch(self, batch: Reply, claim: BatchClaim) -> BatchMatch:
        """A listed batch is a part's when its metadata names the part (providers that list do not
        filter on metadata: litellm accepts the filter and drops it). A cancelled one is not adopted."""
        found = batch.get("metadata") or {}
        mine = all(found.get(k) == v for k, v in claim.metadata.items()) and batch.get("status") != "cancelled"
        return "ours" if mine else "other"

    def custom_id(self, ticket_id: str) -> str:
        """The ticket id itself (OpenAI's custom_id takes any string)."""
        return ticket_id

    def parse_line(self, line: Line) -> BatchLine:
        """An OpenAI batch output or error line: {"custom_id", "response": {"status_code", "body"},
        "error"}; a line without a response (an expired request) has only "error"."""
        cid = line.get("custom_id")
        cid = cid if isinstance(cid, str) else None
        response = line.get("response")
        if not isinstance(response, Mapping):
            error = line.get("error")
            code = error.get("code") if isinstance(error, Mapping) else None
            message = error.get("message") if isinstance(error, Mapping) else None
            return BatchLine(cid, code=str(code or "BatchError"), message=str(message or code),
                             kind="expired" if code == "batch_expired" else "batch_error")
        status = response.get("status_code")
        body = response.get("body")
        if status == 200:
            return BatchLine(cid, body=body if isinstance(body, dict) else {})
        error = body.get("error") if isinstance(body, Mapping) else None
        error = error if isinstance(error, Mapping) else {}
        status = status if isinstance(status, int) and not isinstance(status, bool) else None
        code = error.get("code")
        return BatchLine(cid, status=status, code=None if code is None else str(code),
                         message=str(error.get("message") or f"HTTP {status}"))

    def request_line(self, custom_id: str, request: ChatRequest, params: Mapping[str, object]) -> Line:
        """One batch input line (custom_id, method, url, body) for `request`."""
        return {"custom_id": custom_id, "method": "POST", "url": CHAT_ENDPOINT, "body": self.request_body(request, params)}

    def request_body(self, request: ChatRequest, params: Mapping[str, object]) -> dict[str, object]:
        """The body of one batch input line: what an online call of this request would send."""
        body: dict[str, object] = {"model": self.model.split("/", 1)[1] if "/" in self.model else self.model,
                                "messages": request.messages, **params}
        options = request.options
        if options is not None:
            if options.json_schema is not None and options.send_json_schema != "never":
                supported = options.send_json_schema == "always"
                if not supported:
                    try:
                        supported = bool(self._litellm.supports_response_schema(model=self.model))
                    except Exception:
                        supported = False
                if supported:
                    body["response_format"] = {"type": "json_schema", "json_schema": {
                        "name": options.json_schema_name, "schema": options.json_schema,
                        "strict": options.json_schema_strict}}
            if options.tools:
                body["tools"] = options.tools
                if options.tool_choice is not None:
                    body["tool_choice"] = options.tool_choice
        return body

    async def aclose(self) -> None:
        return None
