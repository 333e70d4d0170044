"""The provider seam: what the engine asks of whatever answers its requests.

    ChatRequest      one request: ticket id, messages, timeout, the job's RequestOptions
    RequestOptions   stream or not, the JSON schema, tools and tool_choice (one per job)
    Provider         online calls: complete(), estimates for limits and budgets, the
                     response cache; LiteLLMProvider (online.py) and the fake
                     ScriptedProvider (fake.py) implement it
    BatchAPI         a provider's Batch API: files, batches, their output, batch prices;
                     LiteLLMBatchAPI (batch_api.py) implements it
    BatchPrices      USD per token for batch requests, and the cost_status lines carry
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from batchrun.job.spec import JobSpec
from batchrun.records import Completion, Usage


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """How a job's requests ask and receive, beyond the messages (see module docstring)."""

    stream: bool = False
    json_schema: Mapping[str, Any] | None = None  # the schema answers must satisfy
    json_schema_name: str = "answer"
    json_schema_strict: bool = True
    send_json_schema: str = "auto"  # "auto", "always" or "never"
    tools: list[dict[str, Any]] | None = None  # OpenAI function tools, as sent
    tool_choice: str | dict[str, Any] | None = None

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


class Provider(Protocol):
    """Online calls to one model (module docstring)."""

    async def complete(self, request: ChatRequest) -> Completion:
        """One attempt: the answer, or an exception (ticket_runner translates it)."""
        ...

    def estimate_tokens(self, request: ChatRequest) -> tuple[int, int]:
        """(prompt tokens, the most completion tokens it may use): what rate limits reserve."""
        ...

    def estimate_cost(self, request: ChatRequest) -> float | None:
        """USD the request may cost at most (prompt + max_tokens), None if unknown."""
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
    cache_read_per_token: float | None = None  # prompt-cache reads (None: priced as input)
    cache_write_per_token: float | None = None  # prompt-cache writes (None: priced as input)

    def cost(self, usage: Usage) -> float:
        """USD for `usage`: its cache reads and writes (part of prompt_tokens) at their own prices."""
        read = usage.cache_read_input_tokens or 0
        write = usage.cache_creation_input_tokens or 0
        plain = max(usage.prompt_tokens - read - write, 0)
        read_price = self.input_per_token if self.cache_read_per_token is None else self.cache_read_per_token
        write_price = self.input_per_token if self.cache_write_per_token is None else self.cache_write_per_token
        return (plain * self.input_per_token + read * read_price + write * write_price
                + usage.completion_tokens * self.output_per_token)


class BatchAPI(Protocol):
    """A provider's Batch API as batch mode uses it (batch/). Batches and pages are plain dicts in
    OpenAI's shapes (status, request_counts, output_file_id, error_file_id, metadata; data,
    has_more); output files hold OpenAI's batch output lines. Errors raise RequestError."""

    model: str
    provider: str  # litellm's name of the provider

    @property
    def can_list(self) -> bool:
        """Whether its batches can be listed, so that a create whose answer was lost can be found."""
        ...

    def request_line(self, custom_id: str, request: ChatRequest, params: Mapping[str, Any]) -> dict[str, Any]:
        """One line of a part's input file: what an online call of this request would send."""
        ...

    async def create_file(self, path: str | os.PathLike[str]) -> dict[str, Any]: ...

    async def create_batch(self, input_file_id: str, metadata: Mapping[str, str], endpoint: str,
                           window: str) -> dict[str, Any]:
        """Create one batch; never retried blindly (a lost answer is looked for with list_batches)."""
        ...

    async def retrieve_batch(self, batch_id: str) -> dict[str, Any]: ...

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]: ...

    async def list_batches(self, after: str | None = None, limit: int = 100) -> dict[str, Any]: ...

    def is_ours(self, batch: Mapping[str, Any], metadata: Mapping[str, str]) -> bool:
        """Whether a listed batch is the one a part with `metadata` created."""
        ...

    async def download(self, file_id: str, dest: str | os.PathLike[str]) -> int:
        """Stream a file's content into `dest` (replaced atomically); its size."""
        ...

    def batch_prices(self) -> BatchPrices | None: ...

    def completion_of(self, body: Mapping[str, Any], prices: BatchPrices | None) -> Completion:
        """A Completion from an output line's response body, priced at the batch price."""
        ...

    async def aclose(self) -> None: ...
