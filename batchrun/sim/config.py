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
seeded from ``seed`` and the request, so a rerun is reproducible.

Adding a knob means: a field here (with a comment), a flag in
`to_cli_args`, and a click option in `command.py`. Fault injection (error
statuses, dropped connections, truncated streams) and server-side rate limits
are expected to arrive as further fields of this dataclass, e.g. a
``fault_plan`` describing which tickets or which fraction of requests fail,
and ``rpm_limit`` / ``tpm_limit`` for 429 responses; none of that exists yet.

This module imports only the standard library so the CLI stays fast to load.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Model name reported by ``GET /v1/models`` when no model is configured.
DEFAULT_MODEL_NAME = "sim-model"


@dataclass(frozen=True)
class SimConfig:
    """How one simulator instance answers: timing, determinism, naming."""

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
    # Room for later: fault injection (a "fault plan") and server-side rate
    # limits will be added as further fields here; the request handler in
    # server.py already has the place where they would be checked.

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms!r}")
        if self.per_token_ms < 0:
            raise ValueError(f"per_token_ms must be >= 0, got {self.per_token_ms!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")

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
        return args
