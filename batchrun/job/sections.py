"""The tables of a job file, each a pydantic model with extra="forbid": [prompt], [retry],
[prices], [simulator], [[tools]], [[models]], [[routes]]; JobSpec (spec.py) holds them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from batchrun.job.templates import PromptTemplate
from batchrun.records import Fields

#: A JSON schema as the job gives it (a table, or json_schema_file's content): checked by jsonschema
#: when the job is loaded, then sent and used as it is.
Schema = dict[str, Any]
#: A job's [params]: keyword arguments passed to litellm.acompletion as they are (temperature,
#: max_tokens, a provider's own keys): whatever litellm takes.
Params = dict[str, Any]
#: An OpenAI tool object as sent with each request: {"type": "function", "function": {"name", ...}}.
ToolPayload = dict[str, Any]
#: A named tool_choice, {"type": "function", "function": {"name": ...}} (JobSpec checks that shape).
ToolChoice = dict[str, Any]
#: A [[simulator.faults]], [[simulator.scripts]] or [[simulator.batch_faults]] table: checked by the
#: simulator's own parser (launcher.sim_config) when the run starts it.
SimRule = dict[str, Any]


class Section(BaseModel):
    # allow_inf_nan=False: TOML's `inf` is never a sensible timeout, backoff or price
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PromptSpec(Section):
    system: str | None = None  # system message template (optional)
    user: str  # user message template
    # static text every user message starts with (instructions, examples): sent as written, before
    # the rendered `user`; with prompt_cache = true a Claude model gets it marked for caching
    shared_prefix: str | None = Field(None, min_length=1)

    @field_validator("system", "user")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            PromptTemplate(value)
        return value


class RetrySpec(Section):
    max_attempts: int = Field(5, ge=1, le=100)  # requests per ticket, first included
    max_elapsed_s: float = Field(300.0, gt=0)  # stop retrying a ticket after this long
    initial_backoff_s: float = Field(0.5, gt=0)  # scale of the jittered exponential wait
    max_backoff_s: float = Field(30.0, gt=0)  # longest single exponential wait
    max_retry_after_s: float = Field(60.0, ge=0)  # a longer Retry-After ends the ticket as rate_limited

    @model_validator(mode="after")
    def _backoff_order(self) -> "RetrySpec":
        if self.initial_backoff_s > self.max_backoff_s:
            raise ValueError("initial_backoff_s must not exceed max_backoff_s")
        return self


class PricesSpec(Section):
    """USD per million tokens; when set, these win over litellm's price list (at every service tier).
    Reasoning tokens are output tokens (they are within completion_tokens)."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    # prompt tokens read from the provider's prompt cache; unset: the input price (cost_status says so)
    cached_input_per_million: float | None = Field(None, ge=0)
    # prompt tokens written to it (Anthropic: 1.25x or 2x the input price); unset: the input price
    cache_write_per_million: float | None = Field(None, ge=0)
    # batch mode (mode = "batch"): the Batch API's price; when unset, half the prices above
    batch_input_per_million: float | None = Field(None, ge=0)
    batch_output_per_million: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _batch_pair(self) -> "PricesSpec":
        if (self.batch_input_per_million is None) != (self.batch_output_per_million is None):
            raise ValueError("batch_input_per_million and batch_output_per_million go together")
        return self


class SimModelProfile(Section):
    """How the simulator answers one model name: quality and speed."""

    noise: float = Field(0.05, ge=0, le=1)  # share of classification answers that are wrong on purpose
    latency_ms: float | None = Field(None, ge=0)  # base latency; default: the section's latency_ms


class SimulatorSpec(Section):
    """Run against the embedded simulator unless --live or --api-base is given."""

    latency_ms: float = Field(200.0, ge=0)  # base latency of a request
    per_token_ms: float = Field(0.0, ge=0)  # added per output token
    jitter: float = Field(0.1, ge=0, le=1)  # relative uniform jitter on latency
    seed: int = 0  # answers and jitter are deterministic for a seed
    rpm: int | None = Field(None, ge=1)  # server-side limits: 429s with rate-limit headers past them
    tpm: int | None = Field(None, ge=1)
    capacity: int | None = Field(None, ge=1)  # above this many in flight, latency grows ...
    overload_ms: float = Field(20.0, ge=0)  # ... by this much per extra request
    # [[simulator.faults]] tables (kind, rate, tickets, attempts, retry_after, ...): checked by
    # the simulator's FaultRule when the run starts it (this module does not import the simulator)
    faults: list[SimRule] = Field(default_factory=list)
    # [[simulator.scripts]] tables (tickets or rate, steps = ["reset_before_headers", "429:retry_after=6",
    # "ok"]): a per-ticket sequence of answers, one step per attempt, checked like faults
    scripts: list[SimRule] = Field(default_factory=list)
    # [simulator.model_profiles] "sim-strong" = { noise = 0.02, latency_ms = 600 }: simulated models
    # that differ in accuracy and speed (keyed by the model name as sent, without "openai/")
    model_profiles: dict[str, SimModelProfile] = Field(default_factory=dict)
    # Batch API (mode = "batch"): simulated seconds per real second (86400: a 24 h window in 1 s),
    # the simulated seconds a batch takes, and [[simulator.batch_faults]] (kind, batches, rate,
    # endpoint, calls: see batchrun/sim/batch_faults.py; checked when the run starts the simulator)
    batch_time_scale: float = Field(3600.0, gt=0)
    batch_duration_s: float = Field(1800.0, ge=0)
    batch_faults: list[SimRule] = Field(default_factory=list)
    # prompt tokens the simulator counts (and bills) per token of its own count: 1.3 = 30% more
    prompt_token_scale: float = Field(1.0, gt=0, le=10)
    # share of service_tier = "flex" requests answered 429 resource_unavailable
    flex_unavailable_rate: float = Field(0.0, ge=0, le=1)


class ToolFunctionSpec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")  # OpenAI's rule for function names
    description: str | None = None
    parameters: Schema = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None  # OpenAI strict function calling; sent only when set

    @field_validator("parameters")
    @classmethod
    def _valid_schema(cls, value: Schema) -> Schema:
        from batchrun.job.answer_checks import compile_schema

        compile_schema(value)  # ValueError names the problem
        return value


class ToolSpec(Section):
    """One `[[tools]]` entry: `type = "function"` and a `[tools.function]` table."""

    type: Literal["function"] = "function"
    function: ToolFunctionSpec

    def payload(self) -> ToolPayload:
        """The OpenAI tool object sent with each request (unset options left out)."""
        fn = self.function
        body: dict[str, object] = {"name": fn.name}
        if fn.description is not None:
            body["description"] = fn.description
        body["parameters"] = fn.parameters
        if fn.strict is not None:
            body["strict"] = fn.strict
        return {"type": "function", "function": body}


def load_schema_file(path: Path) -> Schema:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        schema = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"{path} must hold a JSON object (a JSON schema), not {type(schema).__name__}")
    return schema


def check_model_name(value: str) -> str:
    """A litellm model string that names a model: "openai/" (a provider and no name) would be sent
    with an empty model name; "/gpt-4o-mini" names no provider; surrounding spaces are a typo."""
    provider, slash, name = value.partition("/")
    if value != value.strip() or not value:
        raise ValueError(f"{value!r} has spaces around it: write the model string without them")
    if slash and not name.strip():
        raise ValueError(f"{value!r} names a provider but no model (e.g. {provider}/gpt-4o-mini): "
                         "an empty model name would be sent")
    if slash and not provider.strip():
        raise ValueError(f"{value!r} names no provider before the '/' (e.g. openai{value})")
    return value


def check_api_base(value: str | None) -> str | None:
    """An api_base must not carry a query string: litellm appends its path
    (/chat/completions) after it, so every request would go to a wrong URL;
    nor credentials (user:password@): aiohttp refuses them next to the key's
    Authorization header, so every request would fail. The message never
    repeats the query or the credentials (they usually hold a key), and shows
    the path with its key-shaped segments masked."""
    if value is None:
        return value
    from urllib.parse import urlsplit

    from batchrun.errors import redact_url

    parts = urlsplit(value)
    if "@" in parts.netloc:
        raise ValueError(
            f"{redact_url(value)} has credentials before its host (user:password@, not repeated here); "
            "they cannot be sent with the API key's Authorization header, so every request would fail. "
            "Give api_base without them, and pass the key through api_key_env (the NAME of an environment "
            "variable holding it)")
    if parts.query or parts.fragment:
        shown = redact_url(value) if parts.scheme else "the URL"
        raise ValueError(
            f"{shown}?... has a query string (not repeated here: it may hold a key); litellm adds "
            "/chat/completions after it, so every request would fail. Give api_base without it, and pass "
            "a key through api_key_env (the NAME of an environment variable holding it; litellm sends it "
            "as a header), e.g. api_key_env = \"PROXY_API_KEY\"")
    return value


class ModelSpec(Section):
    """One entry of `[[models]]`: a model to compare, route to, or fall back on."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=64)  # the job's key for it
    model: str = Field(min_length=1)  # a litellm model string
    api_base: str | None = None  # e.g. a LiteLLM proxy or a self-hosted server
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # the variable's NAME
    params: Params = Field(default_factory=dict)  # merged over the job's params
    prices: PricesSpec | None = None
    rpm: int | None = Field(None, ge=1)  # this model's own limits (default: the job's)
    tpm: int | None = Field(None, ge=1)
    fallbacks: list[str] = Field(default_factory=list)  # names to try, in order, after a terminal failure

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str | None) -> str | None:
        return check_api_base(value)

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        return check_model_name(value)


class RouteSpec(Section):
    """One `[[routes]]` rule: data, never code. The first rule that matches picks the model."""

    model: str  # a models[].name
    field: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")
    equals: str | int | float | bool | None = None  # field == value
    one_of: list[str | int | float | bool] | None = None  # field in values
    longer_than: int | None = Field(None, ge=0)  # len(str(field)) > n
    default: bool = False  # matches every ticket (the last rule)

    @model_validator(mode="after")
    def _one_condition(self) -> "RouteSpec":
        conditions = [self.equals is not None, self.one_of is not None, self.longer_than is not None]
        if self.default:
            if any(conditions) or self.field is not None:
                raise ValueError("a default route has no field or condition")
        elif self.field is None or sum(conditions) != 1:
            raise ValueError("a route needs `field` and exactly one of equals, one_of, longer_than (or default = true)")
        return self

    @property
    def label(self) -> str:
        """How the result line names this rule (`route`)."""
        if self.default:
            return "default"
        if self.equals is not None:
            return f"{self.field} == {self.equals!r}"
        if self.one_of is not None:
            return f"{self.field} in {self.one_of!r}"
        return f"len({self.field}) > {self.longer_than}"

    def matches(self, fields: Fields) -> bool:
        if self.default:
            return True
        value: object = fields
        for key in (self.field or "").split("."):
            if not isinstance(value, Mapping) or key not in value:
                return False
            value = value[key]
        if self.equals is not None:
            return value == self.equals
        if self.one_of is not None:
            return value in self.one_of
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        return len(text) > (self.longer_than or 0)


def closest_name(name: str | int, known: Iterable[str]) -> str | None:
    """The known name nearest to a misspelt one (difflib), or None."""
    import difflib

    matches = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
    return matches[0] if matches else None
