"""The ``batchrun sim`` command: run the OpenAI-compatible simulator in the foreground.

`sim_command` is a click command; the batchrun CLI registers it as ``sim``
and ``python -m batchrun.sim`` runs it directly. Every `SimConfig` field has
an option here with the field's default. Once the server is listening the
command prints exactly one line to stdout::

    batchrun-sim listening on http://127.0.0.1:PORT/v1

and nothing else on stdout afterwards, so a parent process can read that line
to learn the port (see `batchrun.sim.process`). The server stops on SIGINT or
SIGTERM, and, with ``--exit-on-stdin-eof``, when its standard input reaches
end of file: a parent keeps the write end of a pipe open, and when the parent
dies (even by SIGKILL) the pipe closes and the simulator exits with it.

This is the one place in batchrun that starts its own event loop
(``asyncio.run``): the simulator is a separate program. Only click, the
standard library, `batchrun.sim.config` and `batchrun.sim.faults` are
imported at module level; the server (and aiohttp) is imported when the
command runs, so ``batchrun --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from batchrun.sim.config import SimConfig
from batchrun.sim.faults import FAULT_KINDS, FaultRule, TicketScript

if TYPE_CHECKING:
    from batchrun.sim.batch_faults import BatchFault

#: Prefix of the single line printed once the server is listening.
READY_LINE_PREFIX = "batchrun-sim listening on "


def _profile(value: str) -> tuple[str, float, float]:
    try:
        name, rest = value.split("=", 1)
        noise, latency = rest.split(":", 1)
        return name, float(noise), float(latency)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected NAME=NOISE:LATENCY_MS, e.g. sim-strong=0.01:600") from None


@click.command(
    name="sim",
    epilog=(
        "Example:\n\n"
        "\b\n"
        "  batchrun sim --port 8765 --latency-ms 300 --per-token-ms 5 --seed 7\n"
        "  # then point litellm at it:\n"
        "  #   litellm.acompletion(model='openai/gpt-4o-mini',\n"
        "  #       api_base='http://127.0.0.1:8765/v1', api_key='sim-key', messages=...)\n"
        "  # scripted faults: T000003 is reset before the headers, then gets a 429, then an answer:\n"
        "  batchrun sim --script 'T000003=reset_before_headers;429:retry_after=6;ok' --fault 'reset:rate=0.05'"
    ),
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port to listen on; 0 picks a free port.")
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=SimConfig.latency_ms,
    show_default=True,
    help="Base latency of every request, in ms (time to first chunk when streaming).",
)
@click.option(
    "--per-token-ms",
    type=click.FloatRange(min=0),
    default=SimConfig.per_token_ms,
    show_default=True,
    help="Extra latency per completion token, in ms.",
)
@click.option(
    "--jitter",
    type=click.FloatRange(0, 1),
    default=SimConfig.jitter,
    show_default=True,
    help="Relative latency jitter: delays are scaled by a factor in [1-J, 1+J].",
)
@click.option("--seed", type=int, default=SimConfig.seed, show_default=True, help="Seed for answers, jitter and stream chunking.")
@click.option("--model", default=None, help="Model name to report in responses (default: echo the request's model).")
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="KIND[:key=value,...]",
    callback=lambda ctx, param, value: _parse_faults(value),
    help=(
        "Inject a fault (repeatable; first matching rule wins). Keys: rate, tickets, attempts, "
        "retry_after, stall_s, trickle_ms; lists joined by '+'. E.g. 429:rate=0.2,retry_after=0.05 "
        "or 503:tickets=T000003+T000004,attempts=1+2. Kinds: " + ", ".join(FAULT_KINDS) + "."
    ),
)
@click.option(
    "--script",
    "scripts",
    multiple=True,
    metavar="WHO=STEP;STEP;...",
    callback=lambda ctx, param, value: _parse_scripts(value),
    help=(
        "A per-ticket sequence of answers, one step per attempt, tried before --fault rules (repeatable). "
        "WHO: ticket ids joined by '+', or rate:FRACTION of all tickets (drawn once per ticket). "
        "STEP: a kind, with options as in --fault (retry_after, stall_s, trickle_ms); 'ok' answers normally. "
        "E.g. 'T000003=reset_before_headers;429:retry_after=6;no_usage;ok' or 'rate:0.1=reset_before_headers'."
    ),
)
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="Requests per minute before 429s (default: unlimited).")
@click.option("--tpm", type=click.IntRange(min=1), default=None, help="Tokens per minute (prompt + max_tokens) before 429s (default: unlimited).")
@click.option(
    "--capacity",
    type=click.IntRange(min=1),
    default=None,
    help="Requests in flight the server handles at full speed; each one beyond adds --overload-ms of latency.",
)
@click.option(
    "--overload-ms",
    type=click.FloatRange(min=0),
    default=SimConfig.overload_ms,
    show_default=True,
    help="Extra latency per request in flight above --capacity, in ms.",
)
@click.option(
    "--model-profile",
    "model_profiles",
    multiple=True,
    callback=lambda ctx, param, values: tuple(_profile(v) for v in values),
    help="NAME=NOISE:LATENCY_MS: how a requested model answers (classifier noise rate, base latency); repeatable.",
)
@click.option("--batch-time-scale", type=click.FloatRange(min=0, min_open=True), default=SimConfig.batch_time_scale,
              show_default=True, help="Batch API: simulated seconds per real second (86400: a 24 h window in 1 s).")
@click.option("--batch-duration-s", type=click.FloatRange(min=0), default=SimConfig.batch_duration_s,
              show_default=True, help="Batch API: simulated seconds a batch takes to answer all its lines.")
@click.option(
    "--batch-fault",
    "batch_faults",
    multiple=True,
    callback=lambda ctx, param, values: _parse_batch_faults(values),
    help="Batch API fault KIND[:key=value,...] (invalid, expire, fail_lines, all_failed, slow, 429, 500, 503, "
         "create_lost); repeatable. Example: expire:batches=1,rate=0.3",
)
@click.option("--batch-state-dir", type=click.Path(file_okay=False), default=None,
              help="Batch API: keep files and batches in this directory across restarts (default: a temporary one).")
@click.option("--prompt-token-scale", type=click.FloatRange(min=0, min_open=True), default=SimConfig.prompt_token_scale,
              show_default=True, help="Prompt tokens counted (and billed) per token of the simulator's own count: "
                                      "1.3 counts 30%% more than a client estimates.")
@click.option("--flex-unavailable-rate", type=click.FloatRange(0, 1), default=SimConfig.flex_unavailable_rate,
              show_default=True, help="Share of service_tier=flex requests answered 429 resource_unavailable.")
@click.option(
    "--exit-on-stdin-eof",
    is_flag=True,
    default=False,
    help="Exit when standard input reaches end of file (for parent processes that own a pipe to it).",
)
def sim_command(
    host: str,
    port: int,
    latency_ms: float,
    per_token_ms: float,
    jitter: float,
    seed: int,
    model: str | None,
    faults: tuple[FaultRule, ...],
    scripts: tuple[TicketScript, ...],
    rpm: int | None,
    tpm: int | None,
    capacity: int | None,
    overload_ms: float,
    model_profiles: tuple[tuple[str, float, float], ...],
    batch_time_scale: float,
    batch_duration_s: float,
    batch_faults: tuple[BatchFault, ...],
    batch_state_dir: str | None,
    prompt_token_scale: float,
    flex_unavailable_rate: float,
    exit_on_stdin_eof: bool,
) -> None:
    """Run an OpenAI-compatible chat completions simulator.

    Serves POST /v1/chat/completions (streaming and not, with structured
    outputs and tool calls), GET /v1/models, GET /sim/stats and POST
    /sim/reset, with deterministic answers, configurable latency, optional
    rate limits, a capacity model and injected faults. Runs until interrupted.
    """
    config = SimConfig(
        latency_ms=latency_ms,
        per_token_ms=per_token_ms,
        jitter=jitter,
        seed=seed,
        model=model,
        faults=faults,
        scripts=scripts,
        rpm=rpm,
        tpm=tpm,
        capacity=capacity,
        overload_ms=overload_ms,
        model_profiles=model_profiles,
        batch_time_scale=batch_time_scale,
        batch_duration_s=batch_duration_s,
        batch_faults=batch_faults,
        batch_state_dir=batch_state_dir,
        prompt_token_scale=prompt_token_scale,
        flex_unavailable_rate=flex_unavailable_rate,
    )
    try:
        asyncio.run(run_simulator(config, host, port, exit_on_stdin_eof=exit_on_stdin_eof))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc


def _parse_batch_faults(values: tuple[str, ...]) -> tuple[BatchFault, ...]:
    """The ``--batch-fault`` option values as rules; a bad spec is a usage error."""
    from batchrun.sim.batch_faults import BatchFault

    rules = []
    for value in values:
        try:
            rules.append(BatchFault.parse(value))
        except ValueError as exc:
            raise click.BadParameter(f"{value!r}: {exc}", param_hint="--batch-fault") from None
    return tuple(rules)


def _parse_faults(values: tuple[str, ...]) -> tuple[FaultRule, ...]:
    """The ``--fault`` option values as rules; a bad spec is a usage error."""
    rules = []
    for value in values:
        try:
            rules.append(FaultRule.parse(value))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--fault'") from None
    return tuple(rules)


def _parse_scripts(values: tuple[str, ...]) -> tuple[TicketScript, ...]:
    """The ``--script`` option values as scripts; a bad spec is a usage error."""
    scripts = []
    for value in values:
        try:
            scripts.append(TicketScript.parse(value))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--script'") from None
    return tuple(scripts)


def announce_ready(base_url: str) -> None:
    """Print the one ready line to stdout and flush it."""
    sys.stdout.write(f"{READY_LINE_PREFIX}{base_url}\n")
    sys.stdout.flush()


async def run_simulator(config: SimConfig, host: str, port: int, *, exit_on_stdin_eof: bool = False) -> None:
    """Serve until SIGINT/SIGTERM (or stdin EOF when asked), then shut down cleanly."""
    from batchrun.sim.server import serve

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not on this platform / not the main thread
            pass
    if exit_on_stdin_eof:
        watch_stdin_until_eof(lambda: loop.call_soon_threadsafe(stop.set))

    server_task = asyncio.create_task(serve(config, host, port, on_ready=announce_ready))
    stop_task = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({server_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    if server_task in done:
        stop_task.cancel()
        server_task.result()  # raises the error that ended the server (e.g. port in use)
        return
    server_task.cancel()
    try:
        await server_task
    except asyncio.CancelledError:
        pass


def watch_stdin_until_eof(on_eof: Callable[[], object]) -> None:
    """Call ``on_eof()`` from a daemon thread once standard input reaches end of file.

    Whatever is read from stdin is discarded. A missing or unreadable stdin
    counts as end of file.
    """

    def watch() -> None:
        try:
            fd = sys.stdin.fileno() if sys.stdin is not None else None
        except (OSError, ValueError):
            fd = None
        if fd is not None:
            try:
                while os.read(fd, 65536):
                    pass
            except OSError:
                pass
        try:
            on_eof()
        except RuntimeError:  # the event loop is already closed
            pass

    threading.Thread(target=watch, name="batchrun-sim-stdin-watch", daemon=True).start()
