"""The provider seam: what the engine asks of whatever answers its requests.

    ChatRequest      one request: ticket id, messages, timeout, the job's RequestOptions,
                     the service tier when it is not the job's (the flex fallback)
    CostBound        the most one request may cost (the budget's reservation)
    RequestOptions   stream or not, the JSON schema, tools and tool_choice (one per job)
    Provider         online calls: complete(), estimates for limits and budgets, the
                     response cache; LiteLLMProvider (online.py) and the fake
                     ScriptedProvider (fake.py) implement it
    BatchAPI         a provider's Batch API: files, batches, their output, batch prices;
                     LiteLLMBatchAPI (batch_api.py, litellm's batch functions) and
                     AnthropicBatchAPI (anthropic_batch.py, Anthropic's Message Batches) implement it
    BatchPrices      USD per token for batch requests, and the cost_status lines carry
    BatchClaim       what a part knows of a batch its lost create may have made (to find it)
    BatchLine        one line of a batch's output, as the BatchAPI that knows its shape reads it
    Reply            a Batch API's answer as a plain dict in OpenAI's shape
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol

from batchrun.job.sections import Schema, ToolChoice, ToolPayload
from batchrun.job.spec import JobSpec
from batchrun.records import Completion, Line, Usage

#: What a provider's Batch API answers, as a plain dict in OpenAI's shape: a file object, a batch
#: (id, status, request_counts, output_file_id, error_file_id, metadata, errors), a page of batches
#: (data, has_more, last_id), or the response body of an output line (a chat.completion). JSON from
#: the provider: readers check the values they use.
Reply = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """How a job's requests ask and receive, beyond the messages (see module docstring)."""

    stream: bool = False
    json_schema: Schema | None = None  # the schema answers must satisfy
    json_schema_name: str = "answer"
    json_schema_strict: bool = True
    send_json_schema: str = "auto"  # "auto", "always" or "never"
    tools: list[ToolPayload] | None = None  # OpenAI function tools, as sent
    tool_choice: str | ToolChoice | None = None

    @classmethod
    def for_job(cls, job: JobSpec) -> "RequestOptions | None":
        """The options of a job, or None when it asks for a plain, non-streamed answer."""
        if not job.stream and job.output_schema is None and not job.tools_payload:
            return None
        return cls(stream=job.stream, json_schema=job.output_schema, json_schema_name=job.schema_name,
                   json_schema_strict=job.json_schema_strict, send_json_schema=job.send_json_schema,
                   tools=job.tools_payload, tool_choice=job.tool_choice)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    ticket_id: str
    messages: list[dict[str, str]]
    timeout_s: float
    options: RequestOptions | None = None  # None: a plain, non-streamed request
    model_key: str | None = None  # multi-model jobs: which [[models]] entry serves it
    service_tier: str | None = None  # None: the job's tier; "default" after flex_fallback_after flex 429s


@dataclass(frozen=True, slots=True)
class CostBound:
    """The most one request may cost, and the estimates it was made of."""

    usd: float
    prompt_tokens: int = 0  # the client's estimate of its prompt tokens (before calibration)
    output_tokens: int = 0  # the most completion tokens it may use (max_tokens or the model's maximum)


class Provider(Protocol):
    """Online calls to one model (module docstring)."""

    async def complete(self, request: ChatRequest) -> Completion:
        """One attempt: the answer, or an exception (ticket_runner translates it)."""
        ...

    def estimate_tokens(self, request: ChatRequest) -> tuple[int, int]:
        """(prompt tokens, the most completion tokens it may use): what rate limits reserve."""
        ...

    def cost_bound(self, request: ChatRequest, prompt_factor: float = 1.0) -> CostBound | None:
        """The most the request may cost: its prompt estimate x `prompt_factor` (the budget's
        calibration) + its most completion tokens, at the dearest price it may be billed at;
        None if unknown (an unpriced model)."""
        ...

    async def cached(self, request: ChatRequest) -> Completion | None:
        """The answer the response cache holds for this request (a cache hit), or None."""
        ...

    async def remember(self, request: ChatRequest, completion: Completion) -> None:
        """Keep an accepted answer in the response cache (no cache: nothing)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BatchPrices:
    """USD per token for batch requests, and the cost_status the lines carry."""

    input_per_token: float
    output_per_token: float
    status: str  # "litellm_batch", "half_online", "job_prices", "job_prices_half" (batch_api.py)
    cached_input_per_token: float | None = None  # None: cached prompt tokens at input_per_token
    cache_write_per_token: float | None = None  # None: written prompt tokens at input_per_token

    def cost(self, usage: Usage) -> float:
        cached, written = usage.cached_tokens or 0, usage.cache_write_tokens or 0
        return (usage.uncached_prompt_tokens * self.input_per_token
                + cached * (self.input_per_token if self.cached_input_per_token is None
                            else self.cached_input_per_token)
                + written * (self.input_per_token if self.cache_write_per_token is None
                             else self.cache_write_per_token)
                + usage.completion_tokens * self.output_per_token)

    def status_for(self, usage: Usage) -> str:
        """`status`, plus "_cached_price_assumed" when cached or written tokens were priced at the
        input price for want of a cached price."""
        if ((usage.cached_tokens and self.cached_input_per_token is None)
                or (usage.cache_write_tokens and self.cache_write_per_token is None)):
            return self.status + "_cached_price_assumed"
        return self.status


@dataclass(frozen=True, slots=True)
class BatchClaim:
    """What a part knows of the batch its create may have made: enough to recognise it in a listing."""

    metadata: Mapping[str, str]  # batchrun_run, batchrun_job, batchrun_part (where batches keep metadata)
    requests: int  # the part's request count
    created_after: float  # epoch seconds (local clock): when the part's first create was sent ...
    created_before: float  # ... and its last one (a batch made by it appears up to its timeout later)


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One line of a batch's output (or error) file, read by the BatchAPI that knows its shape."""

    custom_id: str | None
    body: Reply | None = None  # an answer: what completion_of reads
    status: int | None = None  # a request answered with an HTTP error: its status, ...
    code: str | None = None  # ... the provider's error code or type, ...
    message: str | None = None  # ... and its message
    kind: str | None = None  # a request without an answer: "expired", "cancelled" or "batch_error"


#: what a listed batch is to a part (BatchAPI.match_batch): its batch for sure (metadata), one that
#: may be (Anthropic: created after the part's first create, with its request count), not it, or
#: older than any the part could have made (the listing is newest first: stop paging)
BatchMatch = Literal["ours", "candidate", "other", "older"]


class BatchAPI(Protocol):
    """A provider's Batch API as batch mode uses it (batch/). Batches and pages are plain dicts in
    OpenAI's shapes (status, request_counts, output_file_id, error_file_id, metadata, created_at;
    data, has_more): an implementation whose provider speaks otherwise translates. Output files are
    read line by line through parse_line. Errors raise RequestError."""

    model: str
    provider: str  # litellm's name of the provider
    inline_requests: bool  # True: requests go in the create call (no input file is uploaded)
    max_requests: int | None  # the provider's limits per batch (None: none known); the job's apply too
    max_bytes: int | None

    @property
    def can_list(self) -> bool:
        """Whether its batches can be listed, so that a create whose answer was lost can be found."""
        ...

    def custom_id(self, ticket_id: str) -> str:
        """The custom_id a ticket's request carries (the ticket id where the provider accepts it)."""
        ...

    def request_line(self, custom_id: str, request: ChatRequest, params: Mapping[str, object]) -> Line:
        """One line of a part's input file: what an online call of this request would send."""
        ...

    async def create_file(self, path: str | os.PathLike[str]) -> Reply:
        """Upload a part's input file (only where not inline_requests)."""
        ...

    async def create_batch(self, part_file: str | os.PathLike[str], input_file_id: str | None,
                           metadata: Mapping[str, str]) -> Reply:
        """Create one batch of a part (its uploaded file, or its requests read from part_file);
        never retried blindly (a lost answer is looked for with list_batches)."""
        ...

    async def retrieve_batch(self, batch_id: str) -> Reply: ...

    async def cancel_batch(self, batch_id: str) -> Reply: ...

    async def list_batches(self, after: str | None = None, limit: int = 100) -> Reply:
        """One page of batches, newest first: {"data": [...], "has_more": bool}."""
        ...

    def match_batch(self, batch: Reply, claim: BatchClaim) -> BatchMatch:
        """What a listed batch is to the part that made `claim` (BatchMatch)."""
        ...

    async def download(self, file_id: str, dest: str | os.PathLike[str]) -> int:
        """Stream a file's content into `dest` (replaced atomically); its size."""
        ...

    def parse_line(self, line: Line) -> BatchLine:
        """One line of a downloaded output or error file."""
        ...

    def batch_prices(self) -> BatchPrices | None: ...

    def completion_of(self, body: Reply, prices: BatchPrices | None) -> Completion:
        """A Completion from an answer's body (BatchLine.body), priced at the batch price."""
        ...

    async def aclose(self) -> None: ...
