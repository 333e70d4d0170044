"""Shared fixtures: a simulator process on 127.0.0.1, job files and tickets in tmp_path.

Nothing here leaves the machine: every request goes to the embedded
simulator, started as a child process on a free loopback port.

Three ways to run the command line, cheapest first:
  * `invoke_cli(ARGS)`: in this process (click's runner), for what reads a
    command's output and exit code (refusals, error messages, help, status);
  * `cli_run(batchrun_cmd(ARGS), ...)` / `cli_popen(...)`: a real process
    (its own pid, stdio, exit status, signals) forked from a warm process that
    imported litellm once per pytest process (tests/forkserver.py), for runs,
    signals and kills;
  * `subprocess.run(batchrun_cmd(ARGS), ...)`: a fresh interpreter, where what
    is checked is the start of one (the first import of litellm).
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pytest

from forkserver import STATS as WARM_CLI_STATS
from forkserver import cli_popen, cli_run, stop_server

__all__ = ["cli_popen", "cli_run"]  # re-exported for the test modules

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "tickets.jsonl"

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"


def sample_lines(n: int) -> list[bytes]:
    with SAMPLE.open("rb") as handle:
        return [next(handle) for _ in range(n)]


def write_tickets(path: Path, n: int) -> Path:
    path.write_bytes(b"".join(sample_lines(n)))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


JOB_TEMPLATE = """\
name = "{name}"
input = "tickets.jsonl"
run_dir = "run"
model = "{model}"
api_key_env = "BATCHRUN_TEST_KEY"
concurrency = {concurrency}
timeout_s = 10
{top}

[prompt]
system = "Classify the ticket as exactly one of: bug, feature, billing, other."
user = "Subject: {{subject}}\\n\\n{{body}}"

[params]
temperature = 0
max_tokens = 5

[retry]
max_attempts = 3
max_elapsed_s = 30
initial_backoff_s = 0.01
max_backoff_s = 0.05
{extra}
"""


@pytest.fixture
def make_job(tmp_path: Path) -> Callable[..., Path]:
    """Write tickets.jsonl (the first n sample tickets) and job.toml into tmp_path.

    `top` adds top-level keys, `extra` adds tables at the end."""

    def make(n: int = 40, *, name: str = "test_job", model: str = "openai/gpt-4o-mini",
             concurrency: int = 4, extra: str = "", top: str = "") -> Path:
        write_tickets(tmp_path / "tickets.jsonl", n)
        job = tmp_path / "job.toml"
        job.write_text(JOB_TEMPLATE.format(name=name, model=model, concurrency=concurrency,
                                           extra=textwrap.dedent(extra), top=textwrap.dedent(top)))
        return job

    return make


@pytest.fixture(scope="session")
def sim() -> Iterator[Any]:
    """One simulator process for the session (fast: 5 ms latency)."""
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    with start_simulator(SimConfig(latency_ms=5.0, jitter=0.0)) as process:
        yield process


@pytest.fixture
def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["BATCHRUN_TEST_KEY"] = "sim-key"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("BATCHRUN_MODEL", None)
    env.pop("BATCHRUN_API_BASE", None)
    return env


def batchrun_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "batchrun.cli", *args]


def crashing_batchrun_cmd(point: str, *args: str) -> list[str]:
    """`batchrun ARGS` that SIGKILLs itself at a batch run's step POINT[:N] (tests/crashing_batchrun.py)."""
    return [sys.executable, str(Path(__file__).with_name("crashing_batchrun.py")), point, *args]


class InvokeResult:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def invoke_cli(*args: str, key: str | None = "sim-key") -> InvokeResult:
    """`batchrun ARGS` in this process (click's runner), so litellm is imported once per test
    session rather than once per command; worker processes (--workers 2) are real all the same.
    The job's BATCHRUN_TEST_KEY is set for the call only (key=None: unset for the call)."""
    from click.testing import CliRunner

    from batchrun.cli import main

    saved = os.environ.get("BATCHRUN_TEST_KEY")
    if key is None:
        os.environ.pop("BATCHRUN_TEST_KEY", None)
    else:
        os.environ["BATCHRUN_TEST_KEY"] = key
    try:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    finally:
        if saved is None:
            os.environ.pop("BATCHRUN_TEST_KEY", None)
        else:
            os.environ["BATCHRUN_TEST_KEY"] = saved
    return InvokeResult(result.exit_code, result.stdout, result.stderr)


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    stop_server()  # the warm batchrun server of this pytest process (xdist: of this worker)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if WARM_CLI_STATS:  # without xdist: how the command lines ran (tests/forkserver.py)
        terminalreporter.write_line("command lines: " + ", ".join(f"{n} {how}" for how, n in
                                                                  sorted(WARM_CLI_STATS.items())))
