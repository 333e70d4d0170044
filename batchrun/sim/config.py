"""Settings of the embedded OpenAI-compatible simulator.

`SimConfig` is the single description of how a simulator instance behaves.
It is built in three places and converted between them here, so that the
set of knobs lives in one file:

* in-process, by tests and by code calling `batchrun.sim.server.build_app`
  or `batchrun.sim.server.serve` directly;
* from the command line, by `batchrun.sim.command.sim_command`, whose option
  defaults are the field defaults below;
* for a child process, by `batchrun.sim.process.start_simulator`, which turns
  a config back into command-line flags with `SimConfig.to_cli_args`.

Timing model (see `server.py`): a request's total delay is
``(latency_ms + per_token_ms * completion_tokens) * factor`` where ``factor``
is drawn uniformly from ``[1 - jitter, 1 + jitter]`` with a random generator
seeded from ``seed`` and the request, so a rerun is reproducible; the
capacity model below adds its overload penalty on top.

Server-side limits (see `server.py` for the exact behaviour):

* ``rpm`` / ``tpm``: requests and tokens per minute, enforced with two token
  buckets refilled continuously (capacity = the limit, refill = limit / 60
  per second). A request's token estimate is its prompt tokens plus its
  ``max_tokens`` (or the answer's length when ``max_tokens`` is absent).
* ``capacity`` / ``overload_ms``: with K = capacity, a request that finds N
  requests in flight when it arrives (itself included) gets
  ``overload_ms * max(0, N - K)`` extra milliseconds of latency.

Fault injection: ``faults`` is a tuple of `batchrun.sim.faults.FaultRule`
(mappings and ``--fault`` spec strings are accepted and converted);
``scripts`` is a tuple of `batchrun.sim.faults.TicketScript`, per-ticket
sequences of answers that win over the rules (mappings and ``--script``
spec strings accepted).

Adding a knob means: a field here (with a comment), a flag in
`to_cli_args`, and a click option in `command.py` (which builds the config
with `from_cli_params`).

This module and `batchrun.sim.faults`, which it imports, use only the
standard library so the CLI stays fast to load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchrun.sim.batch_faults import BatchFault, coerce_batch_faults
from batchrun.sim.faults import FaultRule, TicketScript, coerce_rules, coerce_scripts

#: Model name reported by ``GET /v1/models`` when no model is configured.
DEFAULT_MODEL_NAME = "sim-model"


@dataclass(frozen=True)
class SimConfig:
    """How one simulator instance answers: timing, determinism, naming, faults, limits."""

    # Base latency of every chat completion request, in milliseconds. For a
    # streaming request this is the time to the first chunk.
    latency_ms: float = 200.0
    # Extra latency per output (completion) token, in milliseconds. For a
    # streaming request it is spent between chunks, proportionally to the
    # number of tokens in each chunk.
    per_token_ms: float = 0.0
    # Relative jitter applied to the whole delay: the delay is multiplied by a
    # factor drawn uniformly from [1 - jitter, 1 + jitter] (clamped at 0).
    jitter: float = 0.1
    # Seed for everything random: answer text, jitter, streaming chunk sizes.
    # Same request + same seed gives the same answer, usage and chunking.
    seed: int = 0
    # Model name reported in responses and in /v1/models. None echoes the
    # request's "model" field (and lists DEFAULT_MODEL_NAME in /v1/models).
    model: str | None = None
    # Fault injection rules, tried in order (see batchrun.sim.faults). A list,
    # mappings or "--fault" spec strings are accepted and converted.
    faults: tuple[FaultRule, ...] = ()
    # Per-ticket sequences of answers, one step per attempt, tried before the
    # fault rules (see batchrun.sim.faults.TicketScript). A list, mappings or
    # "--script" spec strings are accepted and converted.
    scripts: tuple[TicketScript, ...] = ()
    # Server-side rate limits: requests per minute and tokens per minute
    # (None: unlimited). Over the limit the server answers 429 with
    # retry-after / retry-after-ms; 200 responses carry x-ratelimit-* headers.
    rpm: int | None = None
    tpm: int | None = None
    # Capacity model: above `capacity` requests in flight, each arriving
    # request gets overload_ms * (in_flight - capacity) extra latency.
    # None: no overload penalty.
    capacity: int | None = None
    overload_ms: float = 20.0
    # Per-model behaviour, so that simulated models differ in quality and
    # speed: (model name as requested, noise rate of the classifier, base
    # latency in ms). A model not listed uses the defaults above.
    model_profiles: tuple[tuple[str, float, float], ...] = ()
    # Batch API (batchrun.sim.batches): simulated seconds per real second, so
    # a 24-hour window passes in 86400 / batch_time_scale real seconds ...
    batch_time_scale: float = 3600.0
    # ... and the simulated seconds a batch takes to answer all its lines.
    batch_duration_s: float = 1800.0
    # Batch API fault rules (batchrun.sim.batch_faults): mappings or spec strings accepted.
    batch_faults: tuple[BatchFault, ...] = ()
    # Batch API: a directory that keeps files and batches across simulator restarts (None: a
    # temporary one, removed at exit). `batchrun run` of a batch-mode job against the embedded
    # simulator uses <run_dir>/simulator-batches, so `--no-wait` and a later collect work.
    batch_state_dir: str | None = None
    # Prompt tokens the simulated provider counts (and bills) per token of its own tokenizer:
    # 1.3 counts 30% more than the simulator's count, so a client's estimate falls short the way
    # a real tokenizer's can (batchrun's budget calibrates itself against it).
    prompt_token_scale: float = 1.0
    # Share of service_tier = "flex" requests answered 429 resource_unavailable (no capacity;
    # never billed), drawn per ticket and attempt from the seed (batchrun.sim.billing).
    flex_unavailable_rate: float = 0.0

    def profile(self, model: str | None) -> tuple[float | None, float]:
        """(noise rate or None for the default, base latency ms) for a requested model name."""
        for name, noise, latency in self.model_profiles:
            if name == model:
                return noise, latency
        return None, self.latency_ms

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms!r}")
        if self.per_token_ms < 0:
            raise ValueError(f"per_token_ms must be >= 0, got {self.per_token_ms!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        object.__setattr__(self, "faults", coerce_rules(self.faults))
        object.__setattr__(self, "scripts", coerce_scripts(self.scripts))
        object.__setattr__(self, "batch_faults", coerce_batch_faults(self.batch_faults))
        if not self.batch_time_scale > 0:
            raise ValueError(f"batch_time_scale must be > 0, got {self.batch_time_scale!r}")
        if self.batch_duration_s < 0:
            raise ValueError(f"batch_duration_s must be >= 0, got {self.batch_duration_s!r}")
        for name in ("rpm", "tpm", "capacity"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if self.overload_ms < 0:
            raise ValueError(f"overload_ms must be >= 0, got {self.overload_ms!r}")
        if not self.prompt_token_scale > 0:
            raise ValueError(f"prompt_token_scale must be > 0, got {self.prompt_token_scale!r}")
        if not 0 <= self.flex_unavailable_rate <= 1:
            raise ValueError(f"flex_unavailable_rate must be between 0 and 1, got {self.flex_unavailable_rate!r}")

    @property
    def listed_model(self) -> str:
        """The model name shown by ``GET /v1/models``."""
        return self.model if self.model is not None else DEFAULT_MODEL_NAME

    def to_cli_args(self) -> list[str]:
        """The `batchrun sim` flags that reproduce this config in a child process.

        Host, port and process-lifetime flags are not part of the config;
        the caller adds them.
        """
        args = [
            "--latency-ms",
            repr(float(self.latency_ms)),
            "--per-token-ms",
            repr(float(self.per_token_ms)),
            "--jitter",
            repr(float(self.jitter)),
            "--seed",
            str(int(self.seed)),
        ]
        if self.model is not None:
            args += ["--model", self.model]
        for rule in self.faults:
            args += ["--fault", rule.to_spec()]
        for script in self.scripts:
            args += ["--script", script.to_spec()]
        for flag, value in (("--rpm", self.rpm), ("--tpm", self.tpm), ("--capacity", self.capacity)):
            if value is not None:
                args += [flag, str(int(value))]
        args += ["--overload-ms", repr(float(self.overload_ms))]
        for name, noise, latency in self.model_profiles:
            args += ["--model-profile", f"{name}={float(noise)!r}:{float(latency)!r}"]
        args += ["--batch-time-scale", repr(float(self.batch_time_scale)),
                 "--batch-duration-s", repr(float(self.batch_duration_s))]
        for batch_fault in self.batch_faults:
            args += ["--batch-fault", batch_fault.to_spec()]
        if self.batch_state_dir is not None:
            args += ["--batch-state-dir", str(self.batch_state_dir)]
        if self.prompt_token_scale != 1.0:
            args += ["--prompt-token-scale", repr(float(self.prompt_token_scale))]
        if self.flex_unavailable_rate:
            args += ["--flex-unavailable-rate", repr(float(self.flex_unavailable_rate))]
        return args

    @classmethod
    def from_cli_params(cls, params: Mapping[str, Any]) -> SimConfig:
        """The config described by the parsed options of `batchrun sim` (extra keys ignored).

        ``params`` is click's ``Context.params``: each value has its option's type."""
        return cls(
            latency_ms=params["latency_ms"],
            per_token_ms=params["per_token_ms"],
            jitter=params["jitter"],
            seed=params["seed"],
            model=params["model"],
            faults=tuple(params.get("faults") or ()),
            scripts=tuple(params.get("scripts") or ()),
            rpm=params.get("rpm"),
            tpm=params.get("tpm"),
            capacity=params.get("capacity"),
            overload_ms=params.get("overload_ms", cls.overload_ms),
            model_profiles=tuple(params.get("model_profiles") or ()),
            batch_time_scale=params.get("batch_time_scale", cls.batch_time_scale),
            batch_duration_s=params.get("batch_duration_s", cls.batch_duration_s),
            batch_faults=tuple(params.get("batch_faults") or ()),
            batch_state_dir=params.get("batch_state_dir"),
            prompt_token_scale=params.get("prompt_token_scale", cls.prompt_token_scale),
            flex_unavailable_rate=params.get("flex_unavailable_rate", cls.flex_unavailable_rate),
        )


def simulated_model(model: str) -> str:
    """The litellm model string that sends `model` to the simulator, which speaks
    OpenAI's API: the provider prefix becomes "openai/" (gpt-4o -> openai/gpt-4o,
    anthropic/claude-x -> openai/claude-x), so cost lookups keep the model's name."""
    name = model.split("/", 1)[1] if "/" in model else model
    return f"openai/{name}"
