"""The job file: a TOML document loaded into a validated `JobSpec`.

A job file says what to send (model, prompt templates, request params), where
the tickets come from, where the run directory lives, and how hard to push
(concurrency, per-attempt timeout, retry limits). Relative paths in a job file
are resolved against the job file's own folder, so a job runs the same from
cron, a Makefile or another working directory.

Layout of this module:
    PromptTemplate   a parsed `{field}` template; renders ticket values as data
    PromptSpec, RetrySpec, PricesSpec, SimulatorSpec   the job's sections
    JobSpec          the whole job (pydantic, extra="forbid"), with cross-field
                     checks, `with_overrides` for CLI flags and `fingerprint`
    load_job(path)   read + validate, raising JobSpecError naming the field

Templates: `{subject}` or a dotted path into nested objects (`{customer.tier}`);
`{{` and `}}` are literal braces. Values are inserted verbatim: a ticket whose
text contains `{0.__class__}` or `{{x}}` is sent exactly as written, because
rendering is plain concatenation, never `str.format` on ticket data.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from batchrun.errors import JobSpecError

__all__ = [
    "JobSpec",
    "MissingFieldError",
    "PricesSpec",
    "PromptSpec",
    "PromptTemplate",
    "RetrySpec",
    "SimulatorSpec",
    "load_job",
]

# Request parameters batchrun sets itself; a job may not pass them in `params`.
RESERVED_PARAMS = frozenset(
    {
        "model", "messages", "api_key", "api_base", "base_url", "timeout",
        "num_retries", "max_retries", "stream", "extra_headers", "mock_response",
    }
)
_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class MissingFieldError(KeyError):
    """A template placeholder names a field the ticket does not have."""


class PromptTemplate:
    """A `{field}` template parsed once into literal and field segments."""

    __slots__ = ("source", "_segments", "fields")

    def __init__(self, source: str) -> None:
        self.source = source
        segments: list[tuple[str, tuple[str, ...] | None]] = []
        fields: list[str] = []
        try:
            parsed = list(string.Formatter().parse(source))
        except ValueError as exc:  # unbalanced braces
            raise ValueError(f"{exc} (write {{{{ and }}}} for literal braces)") from None
        for literal, field, spec, conversion in parsed:
            if literal:
                segments.append((literal, None))
            if field is None:
                continue
            if spec or conversion or not _FIELD_PATH.fullmatch(field):
                raise ValueError(
                    f"placeholder {{{field}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}} is not a plain field name; "
                    "use {name} or {parent.child} (no format specs, indexes or conversions)"
                )
            segments.append(("", tuple(field.split("."))))
            fields.append(field)
        self._segments = tuple(segments)
        self.fields = tuple(dict.fromkeys(fields))

    def render(self, values: Mapping[str, Any]) -> str:
        """Fill the placeholders from `values`; raises MissingFieldError."""
        out: list[str] = []
        for literal, path in self._segments:
            if path is None:
                out.append(literal)
                continue
            value: Any = values
            for key in path:
                if not isinstance(value, Mapping) or key not in value:
                    raise MissingFieldError(".".join(path))
                value = value[key]
            out.append(_as_text(value))
        return "".join(out)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


class _Section(BaseModel):
    # allow_inf_nan=False: TOML's `inf` is never a sensible timeout, backoff or price
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PromptSpec(_Section):
    system: str | None = None  # system message template (optional)
    user: str  # user message template

    @field_validator("system", "user")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            PromptTemplate(value)
        return value


class RetrySpec(_Section):
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


class PricesSpec(_Section):
    """USD per million tokens; when set, these win over litellm's price list."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)


class SimulatorSpec(_Section):
    """Run against the embedded simulator unless --live or --api-base is given."""

    latency_ms: float = Field(200.0, ge=0)  # base latency of a request
    per_token_ms: float = Field(0.0, ge=0)  # added per output token
    jitter: float = Field(0.1, ge=0, le=1)  # relative uniform jitter on latency
    seed: int = 0  # answers and jitter are deterministic for a seed


class JobSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=100)
    input: Path  # JSONL tickets
    run_dir: Path | None = None  # default: runs/<name> under the current directory
    model: str = Field(min_length=1)  # a litellm model string, e.g. "openai/gpt-4o-mini"
    api_base: str | None = None  # e.g. a LiteLLM proxy or a vLLM server
    api_key_env: str | None = None  # NAME of the environment variable holding the key
    id_field: str = Field("id", min_length=1)
    prompt: PromptSpec
    params: dict[str, Any] = Field(default_factory=dict)  # passed to acompletion as-is
    concurrency: int = Field(16, ge=1, le=4096)  # requests in flight at most
    timeout_s: float = Field(60.0, gt=0)  # per attempt
    retry: RetrySpec = Field(default_factory=RetrySpec)
    prices: PricesSpec | None = None
    max_cost_usd: float | None = Field(None, gt=0)  # stop dispatching before spending more (all runs)
    fail_fast_after: int = Field(5, ge=1)  # this many 401/403/404 tickets in a row abort the run
    on_bad_input: Literal["fail", "skip"] = "fail"  # skip: bad lines go to rejects.jsonl, the rest runs
    max_line_bytes: int = Field(1_000_000, ge=64)  # a longer input line is bad input
    simulator: SimulatorSpec | None = None

    @field_validator("input", "run_dir")
    @classmethod
    def _resolve(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir")
        if value is not None and base is not None and not value.is_absolute():
            value = Path(os.path.normpath(Path(base) / value))
        return value

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
    def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(RESERVED_PARAMS.intersection(value))
        if taken:
            raise ValueError(f"{', '.join(taken)} cannot be set here: batchrun sets them itself")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> "JobSpec":
        if self.timeout_s > self.retry.max_elapsed_s:
            raise ValueError(
                f"timeout_s ({self.timeout_s:g}) is longer than retry.max_elapsed_s "
                f"({self.retry.max_elapsed_s:g}): a single attempt could outlive the retry budget"
            )
        fields = set(self.user_template.fields) | set(self.system_template.fields if self.system_template else ())
        if not fields:
            raise ValueError("prompt has no {field} placeholder: every ticket would send the same request")
        return self

    # -- derived -----------------------------------------------------------------

    @property
    def user_template(self) -> PromptTemplate:
        return PromptTemplate(self.prompt.user)

    @property
    def system_template(self) -> PromptTemplate | None:
        return PromptTemplate(self.prompt.system) if self.prompt.system is not None else None

    def resolved_run_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else Path("runs") / self.name

    def with_overrides(self, **changes: Any) -> "JobSpec":
        """A copy with CLI overrides applied (None means: keep), re-validated."""
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        try:
            return JobSpec.model_validate(data)
        except ValidationError as exc:
            raise JobSpecError(_describe(exc, "command-line options")) from None

    def fingerprint(self) -> dict[str, Any]:
        """What decides the answers: a resumed run must not mix two of these."""
        return {
            "model": self.model,
            "prompt": self.prompt.model_dump(),
            "params": self.params,
            "id_field": self.id_field,
        }

    def fingerprint_hash(self) -> str:
        blob = orjson.dumps(self.fingerprint(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()


def _describe(exc: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid job:"]
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(job)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see README, 'Job file')"
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
        raise JobSpecError(_describe(exc, str(path))) from None
