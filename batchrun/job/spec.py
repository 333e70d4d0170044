"""The job file: a TOML document loaded into a validated `JobSpec`.

A job file says what to send (model, prompt templates, request params), where
the tickets come from, where the run directory lives, and how hard to push
(concurrency, per-attempt timeout, retry limits). Relative paths in a job file
are resolved against the job file's own folder, so a job runs the same from
cron, a Makefile or another working directory.

Layout of this module:
    PromptTemplate   a parsed `{field}` template; renders ticket values as data
    PromptSpec, RetrySpec, PricesSpec, SimulatorSpec   the job's sections
    ToolSpec         one `[[tools]]` entry (an OpenAI function tool)
    JobSpec          the whole job (pydantic, extra="forbid"), with cross-field
                     checks, `with_overrides` for CLI flags and `fingerprint`
    load_job(path)   read + validate, raising JobSpecError naming the field

What the answer must be (see outputs.py): at most one of `labels`, a JSON
schema (`json_schema` table or `json_schema_file`, exclusive) and `tools`
(with `tool_choice`). Schemas, tool parameters included, are checked with
jsonschema when the job is loaded, and `json_schema_file` is read then (the
file's content, not its path, is part of the fingerprint).
`stream`, `on_truncated`, `on_content_filter` and `max_invalid_output_retries`
say how answers are received and judged; they are not part of the
fingerprint, so a run may be resumed with streaming switched on or off.
Neither are `service_tier`, `flex_fallback_after` and `prompt_cache`: they
change what a request costs, not its answer (`[prompt] shared_prefix` is part
of the prompt, and so of the fingerprint, when set). `service_tier = "flex"`
makes the default per-attempt timeout FLEX_TIMEOUT_S (OpenAI's flex guide
recommends raising the SDK's 10 minutes to 15) and retry.max_elapsed_s
FLEX_MAX_ELAPSED_S, unless the job sets them.

Templates: `{subject}` or a dotted path into nested objects (`{customer.tier}`);
`{{` and `}}` are literal braces. Values are inserted verbatim: a ticket whose
text contains `{0.__class__}` or `{{x}}` is sent exactly as written, because
rendering is plain concatenation, never `str.format` on ticket data.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Callable, Literal, Mapping

import orjson
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from batchrun.errors import JobSpecError
from batchrun.records import Fields

# Request parameters batchrun sets itself; a job may not pass them in `params`.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOOL_CHOICE_WORDS = ("auto", "none", "required")

RESERVED_PARAMS = frozenset(
    {
        "model", "messages", "api_key", "api_base", "base_url", "timeout",
        "num_retries", "max_retries", "stream", "stream_options", "extra_headers", "mock_response",
        "tools", "tool_choice", "functions", "function_call",
    }
)
from batchrun.job.sections import (
    ModelSpec,
    Params,
    PricesSpec,
    PromptSpec,
    RetrySpec,
    RouteSpec,
    Schema,
    Section,
    SimulatorSpec,
    ToolChoice,
    ToolPayload,
    ToolSpec,
    check_api_base,
    check_model_name,
    closest_name,
    load_schema_file,
)
from batchrun.job.templates import PromptTemplate

# Where the job file says it instead of `params` (for the error message).
_PARAM_HINTS = {
    "stream": "set `stream = true` at the top of the job",
    "tools": "declare them as [[tools]] in the job",
    "tool_choice": "set `tool_choice` at the top of the job",
    "functions": "declare [[tools]] in the job",
    "function_call": "set `tool_choice` at the top of the job",
}
#: flex: the default per-attempt timeout (OpenAI's flex processing guide: raise the SDK's 10-minute
#: default to 15 minutes, because flex answers are slower) ...
FLEX_TIMEOUT_S = 900.0
#: ... and the default time a ticket may spend on its attempts
FLEX_MAX_ELAPSED_S = 3600.0
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_ELAPSED_S = 300.0
# Providers without a Batch API batchrun can reach: a batch-mode job naming one is refused at load.
# (Anthropic's batch creation is missing in litellm too; batch mode reaches it through Anthropic's SDK.)
NO_BATCH_PROVIDERS = frozenset({"groq", "cohere", "gemini", "ollama", "together_ai", "deepseek",
                                "fireworks_ai", "openrouter", "cerebras", "deepinfra"})


class JobSpec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=100)
    input: Path  # tickets: JSON Lines, CSV, TSV or Parquet (by extension, or input_format)
    input_format: Literal["jsonl", "csv", "tsv", "parquet"] | None = None  # default: from the extension
    run_dir: Path | None = None  # default: runs/<name> under the current directory
    model: str = Field(min_length=1)  # a litellm model string, e.g. "openai/gpt-4o-mini"; default: models[0]
    models: list[ModelSpec] = Field(default_factory=list)  # [[models]]: compare (no routes) or route/fall back
    routes: list[RouteSpec] = Field(default_factory=list)  # [[routes]]: pick one model per ticket
    api_base: str | None = None  # e.g. a LiteLLM proxy or a vLLM server
    api_key_env: str | None = None  # NAME of the environment variable holding the key
    id_field: str = Field("id", min_length=1)
    prompt: PromptSpec
    params: Params = Field(default_factory=dict)  # passed to acompletion, keys checked at run time
    # [params] keys sent on purpose although litellm does not list them for the model (not checked)
    unchecked_params: list[str] = Field(default_factory=list)
    concurrency: int | Literal["auto"] = 16  # requests in flight at most; "auto": AIMD within min/max
    min_concurrency: int = Field(1, ge=1, le=4096)  # bounds for concurrency = "auto"
    max_concurrency: int = Field(256, ge=1, le=4096)
    rpm: int | None = Field(None, ge=1)  # requests per minute the provider allows (token bucket)
    tpm: int | None = Field(None, ge=1)  # tokens per minute (prompt estimate + max_tokens, corrected)
    workers: int | Literal["auto"] = "auto"  # worker processes (Ray actors with engine "ray"); auto: see worker_count
    engine: Literal["local", "ray"] = "local"  # "ray": the tickets run on Ray actors (docs/cluster.md)
    ray_address: str | None = Field(None, min_length=1)  # None: a local Ray for the run; "auto", "ray://HOST:10001"
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0)  # per attempt (flex: FLEX_TIMEOUT_S by default)
    # mypy (without pydantic's plugin) does not see Field(5, ...) as a default, so it thinks RetrySpec() needs arguments
    retry: RetrySpec = Field(default_factory=RetrySpec)  # type: ignore[arg-type]
    prices: PricesSpec | None = None
    # run a model litellm's price list does not know, without [prices]: its cost_usd stays null
    allow_unpriced: bool = False
    max_cost_usd: float | None = Field(None, gt=0)  # never spend more (all runs): docs/reliability.md, "Budget"
    # -- what a request costs (docs/job-file.md: "Service tiers and prompt caching"); not in the fingerprint
    service_tier: Literal["flex", "priority", "default"] | None = None  # OpenAI's service_tier, sent with every request
    # flex: after this many flex attempts of a ticket answered 429 resource_unavailable, its next attempts
    # go at the standard tier ("default"); 0: never
    flex_fallback_after: int = Field(2, ge=0, le=100)
    # mark the system prompt and [prompt] shared_prefix for the provider's prompt cache (Claude models:
    # cache_control), or send a prompt_cache_key derived from the job (OpenAI)
    prompt_cache: bool = False
    fail_fast_after: int = Field(5, ge=1)  # this many 401/403/404 tickets in a row abort the run
    # this many tickets in a row ending in the same non-retryable error (class and message) abort the run
    fail_fast_same_error_after: int = Field(20, ge=1)
    on_bad_input: Literal["fail", "skip"] = "fail"  # skip: bad lines go to rejects.jsonl, the rest runs
    max_line_bytes: int = Field(1_000_000, ge=64)  # a longer input line is bad input
    max_output_bytes: int = Field(4_000_000, ge=1024)  # a longer answer is stored cut, its line says so
    # -- how answers are received and judged (docs/job-file.md: "Streaming, labels, schemas and tools")
    stream: bool = False  # stream each answer (SSE); records ttft_ms
    on_truncated: Literal["keep", "fail"] = "keep"  # finish_reason "length": keep (flagged) or fail the ticket
    on_content_filter: Literal["keep", "fail"] = "fail"  # finish_reason "content_filter"
    labels: list[str] | None = Field(None, min_length=1, max_length=1000)  # the answer must be one of these
    json_schema: Schema | None = None  # the answer must be JSON valid against this schema
    json_schema_file: Path | None = None  # ... or against the schema in this JSON file
    json_schema_strict: bool = True  # response_format's "strict" flag
    # send the schema as response_format: "auto" = when litellm says the model supports it
    send_json_schema: Literal["auto", "always", "never"] = "auto"
    tools: list[ToolSpec] | None = Field(None, min_length=1, max_length=128)  # the answer is a tool call
    # "auto", "none", "required" or {type = "function", function = {name = "..."}}
    tool_choice: str | ToolChoice | None = None
    # re-asks after an answer fails the output check; they count within retry.max_attempts
    max_invalid_output_retries: int = Field(2, ge=0, le=20)
    # -- batch mode (docs/batch.md): the provider's Batch API, about half price, answers within 24 h
    mode: Literal["online", "batch"] = "online"
    batch_max_requests: int = Field(50_000, ge=1, le=1_000_000)  # requests per part (OpenAI: 50,000)
    batch_max_bytes: int = Field(200_000_000, ge=1024)  # bytes per part's input file (OpenAI: 200 MB)
    batch_poll_s: float = Field(30.0, gt=0)  # first wait between polls; grows by half up to ...
    batch_poll_max_s: float = Field(600.0, gt=0)  # ... this
    simulator: SimulatorSpec | None = None
    # -- the response cache (docs/data.md): reuse an answer already obtained for the same request
    cache: bool = False  # look answers up before sending; store accepted answers
    cache_url: str | None = Field(None, pattern=r"^rediss?://")  # Redis, shared by machines; default: on disk
    cache_dir: Path | None = None  # the disk cache; default: $BATCHRUN_CACHE_DIR or ~/.cache/batchrun/responses

    _schema: Schema | None = PrivateAttr(default=None)  # json_schema or the file's content
    _tools_payload: list[ToolPayload] | None = PrivateAttr(default=None)
    # the Python API's prompt= (ticket fields -> messages), in place of the templates: with_prompt_function
    _prompt_function: Callable[[dict[str, object]], object] | None = PrivateAttr(default=None)

    @field_validator("input", "run_dir", "json_schema_file", "cache_dir")
    @classmethod
    def _resolve(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir")
        if value is not None and base is not None and not value.is_absolute():
            value = Path(os.path.normpath(Path(base) / value))
        return value

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 4096:
            raise ValueError("must be between 1 and 4096, or \"auto\"")
        return value

    @property
    def adaptive(self) -> bool:
        return self.concurrency == "auto"

    @property
    def has_rate_limits(self) -> bool:
        """rpm or tpm on the job or on any [[models]] entry."""
        return bool(self.rpm or self.tpm or any(m.rpm or m.tpm for m in self.models))

    @property
    def counts_tokens(self) -> bool:
        """tpm on the job or on any [[models]] entry: prompt tokens are estimated per ticket."""
        return bool(self.tpm or any(m.tpm for m in self.models))

    @property
    def max_in_flight(self) -> int:
        """The most requests this job ever has in flight."""
        return self.max_concurrency if self.concurrency == "auto" else int(self.concurrency)

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 64:
            raise ValueError("must be between 1 and 64, or \"auto\"")
        return value

    def worker_count(self, to_do: int, cpus: int | None = None) -> int:
        """Processes to use: `workers`, or for "auto" one per core when the run
        is big and concurrent enough to be CPU-bound in one process (>= 5,000
        tickets to do, so that each process's litellm import of several
        seconds pays off, and concurrency >= 32), else 1."""
        if isinstance(self.workers, int):
            return self.workers
        cpus = cpus or os.cpu_count() or 1
        return cpus if cpus > 1 and to_do >= 5000 and self.max_in_flight >= 32 else 1

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str | None) -> str | None:
        return check_api_base(value)

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        return check_model_name(value)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(
                "must be the NAME of an environment variable (like OPENAI_API_KEY), never the key itself"
            )
        return value

    @field_validator("params")
    @classmethod
    def _no_reserved(cls, value: Params) -> Params:
        taken = sorted(RESERVED_PARAMS.intersection(value))
        if taken:
            hints = "; ".join(f"{name}: {_PARAM_HINTS[name]}" for name in taken if name in _PARAM_HINTS)
            raise ValueError(f"{', '.join(taken)} cannot be set here: batchrun sets them itself"
                             + (f" ({hints})" if hints else ""))
        return value

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        from batchrun.job.answer_checks import normalize_label

        seen: dict[str, str] = {}
        for label in value:
            norm = normalize_label(label)
            if not norm:
                raise ValueError(f"label {label!r} is empty once whitespace and punctuation are stripped")
            if norm in seen:
                raise ValueError(f"labels {seen[norm]!r} and {label!r} are the same once normalized "
                                 f"({norm!r}): answers could not tell them apart")
            seen[norm] = label
        return value

    @field_validator("json_schema")
    @classmethod
    def _valid_json_schema(cls, value: Schema | None) -> Schema | None:
        if value is not None:
            from batchrun.job.answer_checks import compile_schema

            compile_schema(value)
        return value

    @field_validator("json_schema_file", mode="after")
    @classmethod
    def _readable_schema_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            from batchrun.job.answer_checks import compile_schema

            compile_schema(load_schema_file(value))
        return value

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_shape(cls, value: str | ToolChoice | None) -> str | ToolChoice | None:
        if value is None:
            return value
        if isinstance(value, str):
            if value not in _TOOL_CHOICE_WORDS:
                raise ValueError(f"must be one of {', '.join(map(repr, _TOOL_CHOICE_WORDS))} or "
                                 f"{{type = \"function\", function = {{name = \"...\"}}}}, got {value!r}")
            return value
        function = value.get("function")
        if (set(value) != {"type", "function"} or value.get("type") != "function"
                or not isinstance(function, dict) or set(function) != {"name"}
                or not isinstance(function.get("name"), str)):
            raise ValueError("a named tool_choice is {type = \"function\", function = {name = \"...\"}} "
                             "and nothing else")
        return value

    @model_validator(mode="before")
    @classmethod
    def _flex_defaults(cls, data: object) -> object:
        """flex answers are slow: longer default timeouts (module docstring), unless the job sets them."""
        if isinstance(data, dict) and data.get("service_tier") == "flex":
            data = dict(data)
            data.setdefault("timeout_s", FLEX_TIMEOUT_S)
            retry = data.get("retry")
            if retry is None or isinstance(retry, dict):
                data["retry"] = {"max_elapsed_s": FLEX_MAX_ELAPSED_S, **(retry or {})}
        return data

    @model_validator(mode="before")
    @classmethod
    def _model_from_models(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("model") and data.get("models"):
            first = data["models"][0]
            if isinstance(first, Mapping) and first.get("model"):
                data = {**data, "model": first["model"]}
        return data

    @model_validator(mode="after")
    def _model_checks(self) -> "JobSpec":
        names = [entry.name for entry in self.models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"models: duplicate name(s) {', '.join(duplicates)}")
        for entry in self.models:
            for fallback in entry.fallbacks:
                if fallback not in names or fallback == entry.name:
                    raise ValueError(f"models[{entry.name}].fallbacks: {fallback!r} is not another model's name "
                                     f"(names: {', '.join(names)})")
        if self.routes:
            if not self.models:
                raise ValueError("routes need [[models]] to route to")
            for index, route in enumerate(self.routes):
                if route.model not in names:
                    raise ValueError(f"routes[{index}].model: {route.model!r} is not a models[].name "
                                     f"(names: {', '.join(names)})")
            defaults = [i for i, route in enumerate(self.routes) if route.default]
            if defaults != [len(self.routes) - 1]:
                raise ValueError("routes: exactly one `default = true` rule, and it must come last")
        return self

    @model_validator(mode="after")
    def _batch_checks(self) -> "JobSpec":
        if self.mode != "batch":
            return self
        if self.batch_poll_s > self.batch_poll_max_s:
            raise ValueError("batch_poll_s must not exceed batch_poll_max_s")
        for model in [self.model] + [entry.model for entry in self.models]:
            provider = model.split("/", 1)[0] if "/" in model else ("anthropic" if model.startswith("claude") else "")
            if provider in NO_BATCH_PROVIDERS:
                raise ValueError(
                    f"mode = \"batch\": {model} cannot run in batch mode: litellm (the pinned version) has no "
                    f"batch creation for {provider}; use mode = \"online\" for it, or a provider with a Batch "
                    "API (openai, azure, vertex_ai, bedrock, mistral, xai, hosted_vllm, litellm_proxy, anthropic)")
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> "JobSpec":
        if self.ray_address is not None and self.engine != "ray":
            raise ValueError(f"ray_address ({self.ray_address!r}) is only used with engine = \"ray\": "
                             "add engine = \"ray\" (or --engine ray), or drop ray_address")
        if self.min_concurrency > self.max_concurrency:
            raise ValueError(f"min_concurrency ({self.min_concurrency}) exceeds max_concurrency "
                             f"({self.max_concurrency})")
        if self.timeout_s > self.retry.max_elapsed_s:
            raise ValueError(
                f"timeout_s ({self.timeout_s:g}) is longer than retry.max_elapsed_s "
                f"({self.retry.max_elapsed_s:g}): a single attempt could outlive the retry budget"
            )
        fields = set(self.user_template.fields) | set(self.system_template.fields if self.system_template else ())
        if not fields:
            raise ValueError("prompt has no {field} placeholder: every ticket would send the same request")
        if self.json_schema is not None and self.json_schema_file is not None:
            raise ValueError("json_schema and json_schema_file are exclusive: give the schema once")
        has_schema = self.json_schema is not None or self.json_schema_file is not None
        modes = [name for name, on in (("labels", bool(self.labels)), ("a JSON schema", has_schema),
                                       ("tools", bool(self.tools))) if on]
        if len(modes) > 1:
            raise ValueError(f"{' and '.join(modes)} are exclusive: an answer is checked one way "
                             "(labels: plain text; a JSON schema: a JSON object; tools: tool calls)")
        if self.tool_choice is not None and not self.tools:
            raise ValueError("tool_choice needs [[tools]]")
        if self.tools:
            names = [tool.function.name for tool in self.tools]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"tools: function name(s) declared twice: {', '.join(dupes)}")
            if isinstance(self.tool_choice, dict) and self.tool_choice["function"]["name"] not in names:
                raise ValueError(f"tool_choice names {self.tool_choice['function']['name']!r}, "
                                 f"which is not among the tools ({', '.join(names)})")
            self._tools_payload = [tool.payload() for tool in self.tools]
        if has_schema and "response_format" in self.params:
            raise ValueError("params.response_format and a JSON schema both shape the answer: "
                             "drop params.response_format (batchrun sends the schema itself)")
        if self.json_schema_file is not None:
            self._schema = load_schema_file(self.json_schema_file)
        else:
            self._schema = self.json_schema
        return self

    # -- derived -----------------------------------------------------------------

    @property
    def prompt_function(self) -> Callable[[dict[str, object]], object] | None:
        """The Python callable that renders a ticket's messages in place of the templates, or None."""
        return self._prompt_function

    def with_prompt_function(self, function: Callable[[dict[str, object]], object] | None) -> "JobSpec":
        """A copy whose messages come from `function(ticket fields) -> [{"role", "content"}, ...]`
        (the Python API's prompt=); the templates are then neither used nor required of the tickets."""
        if function is not None and not callable(function):
            raise JobSpecError(f"prompt must be a callable (ticket fields -> messages), not {type(function).__name__}")
        copy = self.model_copy()
        copy._prompt_function = function
        return copy

    @property
    def prompt_templates(self) -> list[PromptTemplate]:
        """The templates whose fields every ticket must have: none when a callable renders the prompt."""
        if self._prompt_function is not None:
            return []
        return [t for t in (self.system_template, self.user_template) if t is not None]

    @cached_property
    def user_template(self) -> PromptTemplate:  # parsed once per job, not per ticket
        return PromptTemplate(self.prompt.user)

    @cached_property
    def system_template(self) -> PromptTemplate | None:
        return PromptTemplate(self.prompt.system) if self.prompt.system is not None else None

    @property
    def output_schema(self) -> Schema | None:
        """The JSON schema answers must satisfy (from json_schema or json_schema_file), or None."""
        return self._schema

    @property
    def tools_payload(self) -> list[ToolPayload] | None:
        """The `tools` list as sent to the provider (built once, when the job is validated)."""
        return self._tools_payload

    @property
    def schema_name(self) -> str:
        """response_format's json_schema.name: the job name in OpenAI's alphabet."""
        return re.sub(r"[^A-Za-z0-9_\-]", "_", self.name)[:64]

    def resolved_run_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else Path("runs") / self.name

    def with_overrides(self, **changes: object) -> "JobSpec":
        """A copy with CLI overrides applied (None means: keep), re-validated. A new service_tier
        brings its own default timeouts in place of the old tier's defaults."""
        data = self.model_dump()
        tier = changes.get("service_tier")
        if tier is not None and tier != self.service_tier:
            old_timeout, old_elapsed = ((FLEX_TIMEOUT_S, FLEX_MAX_ELAPSED_S) if self.service_tier == "flex"
                                        else (DEFAULT_TIMEOUT_S, DEFAULT_MAX_ELAPSED_S))
            if data["timeout_s"] == old_timeout and "timeout_s" not in changes:
                data.pop("timeout_s")
            if data["retry"]["max_elapsed_s"] == old_elapsed:
                data["retry"].pop("max_elapsed_s")
        data.update({k: v for k, v in changes.items() if v is not None})
        try:
            return JobSpec.model_validate(data).with_prompt_function(self._prompt_function)
        except ValidationError as exc:
            raise JobSpecError(describe_validation_error(exc, "command-line options")) from None

    def fingerprint(self) -> dict[str, object]:
        """What decides the answers: a resumed run must not mix two of these."""
        fingerprint: dict[str, object] = {
            "model": self.model,
            # shared_prefix only when set, so a job without it keeps the fingerprint it always had
            "prompt": self.prompt.model_dump(exclude={"shared_prefix"} if self.prompt.shared_prefix is None else None)
            if self._prompt_function is None else _callable_identity(self._prompt_function),
            "params": self.params,
            "id_field": self.id_field,
        }
        # Only when set, so a job without them keeps the fingerprint it always had.
        output: dict[str, object] = {}
        if self.labels:
            output["labels"] = self.labels
        if self._schema is not None:
            output["json_schema"] = self._schema
            output["json_schema_strict"] = self.json_schema_strict
            output["send_json_schema"] = self.send_json_schema
        if self._tools_payload:
            output["tools"] = self._tools_payload
            output["tool_choice"] = self.tool_choice
        if output:
            fingerprint["output"] = output
        if self.models:  # only when set, like the output section
            fingerprint["models"] = [entry.model_dump() for entry in self.models]
            fingerprint["routes"] = [route.model_dump() for route in self.routes]
        return fingerprint

    @property
    def compare_mode(self) -> bool:
        """[[models]] without [[routes]]: every ticket runs on every model."""
        return bool(self.models) and not self.routes

    def model_entry(self, name: str) -> ModelSpec:
        return next(entry for entry in self.models if entry.name == name)

    def route(self, fields: Fields) -> tuple[str, str]:
        """(model name, rule label) for a ticket, by the first matching [[routes]] rule."""
        for route in self.routes:
            if route.matches(fields):
                return route.model, route.label
        raise AssertionError("the last route is a default")  # pragma: no cover - validated

    def fallback_chain(self, name: str) -> list[str]:
        """The model `name`, then its fallbacks (each once)."""
        chain = [name]
        for fallback in self.model_entry(name).fallbacks:
            if fallback not in chain:
                chain.append(fallback)
        return chain

    def for_model(self, entry: ModelSpec) -> "JobSpec":
        """The single-model job a compare run runs for `entry`, in run_dir/models/<name>."""
        data = self.model_dump()
        data.update(
            name=f"{self.name}.{entry.name}", model=entry.model, api_base=entry.api_base or self.api_base,
            api_key_env=entry.api_key_env or self.api_key_env, params={**self.params, **entry.params},
            prices=entry.prices.model_dump() if entry.prices else data["prices"], models=[], routes=[],
            rpm=entry.rpm or self.rpm, tpm=entry.tpm or self.tpm,
            run_dir=self.resolved_run_dir() / "models" / entry.name,
        )
        return JobSpec.model_validate(data).with_prompt_function(self._prompt_function)

    def cache_settings(self) -> dict[str, str] | None:
        """Where the response cache lives ({"url": ...} or {"dir": ...}), or None when `cache` is off.
        Not part of the fingerprint: the cache only decides whether an answer is paid for again."""
        return cache_location(self.cache_url, self.cache_dir) if self.cache else None

    def prompt_cache_key(self) -> str:
        """The prompt_cache_key an OpenAI model gets with `prompt_cache = true`: the job's name and
        the hash of what makes its prompts, so every request of the job lands on the same cache
        and another job's never does."""
        blob = orjson.dumps([self.prompt.model_dump(), self.output_schema, self.tools_payload],
                            option=orjson.OPT_SORT_KEYS)
        return f"batchrun-{self.name}-{hashlib.sha256(blob).hexdigest()[:16]}"[:64]

    def fingerprint_hash(self) -> str:
        blob = orjson.dumps(self.fingerprint(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()


def _callable_identity(function: Callable[..., object]) -> dict[str, str | None]:
    """What the fingerprint keeps of a prompt callable: its name and the sha256 of its source (a
    resume with another function, or an edited one, is refused like an edited template)."""
    import inspect

    name = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', type(function).__name__)}"
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        source = None
    return {"callable": name, "source_sha256": hashlib.sha256(source.encode()).hexdigest() if source else None}


def default_cache_dir() -> Path:
    """The disk cache's folder when a job names none: $BATCHRUN_CACHE_DIR, else
    $XDG_CACHE_HOME/batchrun/responses, else ~/.cache/batchrun/responses."""
    if os.environ.get("BATCHRUN_CACHE_DIR"):
        return Path(os.environ["BATCHRUN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "batchrun" / "responses"


def cache_location(cache_url: str | None = None, cache_dir: Path | None = None) -> dict[str, str]:
    """{"url": a Redis URL} or {"dir": the disk cache's folder} (the default folder when neither is given)."""
    if cache_url:
        return {"url": cache_url}
    return {"dir": str(cache_dir or default_cache_dir())}


def _section_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the last key of `loc` (JobSpec, RetrySpec, ModelSpec...)."""
    import types
    import typing

    model: type[BaseModel] | None = JobSpec
    skip_key = False  # the previous field was a dict of sections: this part is its key
    for part in loc[:-1]:
        if isinstance(part, int) or skip_key:
            skip_key = False
            continue
        if model is None or part not in model.model_fields:
            return None
        pending = [model.model_fields[part].annotation]
        model, skip_key = None, False
        while pending:
            kind = pending.pop()
            origin = typing.get_origin(kind)
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                model = kind
            elif origin is dict:
                pending.append(typing.get_args(kind)[1])
                skip_key = True
            elif origin in (list, typing.Union, types.UnionType):
                pending.extend(typing.get_args(kind))
    return model


def describe_validation_error(exc: ValidationError, where: str) -> str:
    """JobSpecError text: one line per problem, naming the field; unknown keys get "did you mean"."""
    lines = [f"{where}: invalid job:"]
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(job)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            section = _section_at(tuple(err["loc"]))
            key = err["loc"][-1]
            guess = closest_name(key, section.model_fields) if section is not None else None
            if len(err["loc"]) > 1 and (key in JobSpec.model_fields or guess is None and closest_name(
                    key, JobSpec.model_fields)):  # TOML: a top-level key written after a [section]
                top = key if key in JobSpec.model_fields else closest_name(key, JobSpec.model_fields)
                msg = (f"unknown field: `{top}` is a top-level setting; move it above the first "
                       "[section] of the job file")
            else:
                msg = "unknown field" + (f": did you mean `{guess}`?" if guess else
                                         " (check the spelling; see docs/job-file.md)")
        lines.append(f"  field `{loc}`: {msg}")
    return "\n".join(lines)


def load_job(path: str | os.PathLike[str]) -> JobSpec:
    """Read and validate a job file; every problem raises JobSpecError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise JobSpecError(f"{path}: cannot read job file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise JobSpecError(f"{path}: job file is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobSpecError(f"{path}: not valid TOML: {exc}") from None
    try:
        return JobSpec.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        raise JobSpecError(describe_validation_error(exc, str(path))) from None
