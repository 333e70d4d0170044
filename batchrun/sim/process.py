"""Run the simulator as a child process, for tests, benchmarks and demos.

`start_simulator(config)` is a context manager. On entry it spawns::

    python -m batchrun.sim --host HOST --port 0 --exit-on-stdin-eof <config flags>

in its own process group (so a Ctrl-C at the terminal reaches the run, which
stops dispatching and lets the requests in flight finish, but not the
simulator answering them), with pipes for stdin and stdout (stderr goes to a
temporary file), waits for
the child's single ready line (``batchrun-sim listening on URL``) and yields a
`SimulatorProcess` with the base URL, the pid and two helpers, `stats()` and
`reset()`, that call ``/sim/stats`` and ``/sim/reset`` with urllib (standard
library only, proxies bypassed). If the child exits or does not become ready
in time, a `RuntimeError` carrying the tail of its stderr is raised.

On exit the context manager closes the child's stdin, terminates it, waits,
and kills it if it has not gone after a few seconds. No orphan is left
behind even if the parent dies without running that code: the child was
started with ``--exit-on-stdin-eof``, and the parent's end of the stdin pipe
closes when the parent dies, SIGKILL included.

The flags are built by `SimConfig.to_cli_args`, so the command line and the
config cannot drift apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import site
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from batchrun.sim.command import READY_LINE_PREFIX
from batchrun.sim.config import SimConfig

if TYPE_CHECKING:
    from batchrun.sim.replies import StatsSnapshot

#: Seconds to wait for the child to exit after SIGTERM before killing it.
TERMINATE_GRACE_SECONDS = 5.0

#: How much of the child's stderr to quote in startup errors.
STDERR_TAIL_CHARS = 4000

# The directory that holds the `batchrun` package this module was imported from.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]

# urllib without proxies: the simulator is always reached directly.
_DIRECT_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SimulatorProcess:
    """A running child simulator, as yielded by `start_simulator`."""

    def __init__(self, process: subprocess.Popen[bytes], base_url: str) -> None:
        #: The `subprocess.Popen` of the child.
        self.process = process
        #: The OpenAI-style base URL, e.g. ``http://127.0.0.1:40123/v1``.
        self.base_url = base_url
        #: The server root (base URL without ``/v1``), where ``/sim/...`` lives.
        self.root_url = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url

    @property
    def pid(self) -> int:
        """Process id of the child."""
        return self.process.pid

    def stats(self, timeout: float = 10.0) -> StatsSnapshot:
        """The child's request counters (``GET /sim/stats``)."""
        return self._call("GET", "/sim/stats", timeout)

    def reset(self, timeout: float = 10.0) -> StatsSnapshot:
        """Zero the child's request counters (``POST /sim/reset``); returns them."""
        return self._call("POST", "/sim/reset", timeout)

    def _call(self, method: str, path: str, timeout: float) -> StatsSnapshot:
        data = b"" if method == "POST" else None
        request = urllib.request.Request(self.root_url + path, data=data, method=method)
        with _DIRECT_OPENER.open(request, timeout=timeout) as response:
            return json.loads(response.read())

    def __repr__(self) -> str:
        return f"SimulatorProcess(pid={self.pid}, base_url={self.base_url!r})"


def simulator_command(config: SimConfig, host: str = "127.0.0.1") -> list[str]:
    """The argv that `start_simulator` runs for ``config``."""
    return [
        sys.executable,
        "-m",
        "batchrun.sim",
        "--host",
        host,
        "--port",
        "0",
        "--exit-on-stdin-eof",
        *config.to_cli_args(),
    ]


@contextlib.contextmanager
def start_simulator(
    config: SimConfig,
    *,
    host: str = "127.0.0.1",
    startup_timeout: float = 30.0,
) -> Iterator[SimulatorProcess]:
    """Start a child simulator for the duration of a ``with`` block.

    Raises `RuntimeError` (with the child's stderr tail) if the child exits
    before it is ready or is not ready within ``startup_timeout`` seconds.
    """
    with tempfile.TemporaryFile() as stderr_file:
        process = subprocess.Popen(
            simulator_command(config, host),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            env=_child_environment(),
            process_group=0,  # its own group: the terminal's Ctrl-C goes to the run, not to its simulator
        )
        try:
            base_url = _wait_for_ready_line(process, stderr_file, startup_timeout)
            yield SimulatorProcess(process, base_url)
        finally:
            stop_simulator_process(process)


def stop_simulator_process(process: subprocess.Popen[bytes]) -> None:
    """Close the child's stdin, terminate it, wait; kill it if it lingers."""
    if process.stdin is not None:
        try:
            process.stdin.close()
        except OSError:
            pass
    try:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=TERMINATE_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()
    finally:
        if process.stdout is not None:
            process.stdout.close()


def _wait_for_ready_line(process: subprocess.Popen[bytes], stderr_file: IO[bytes], timeout: float) -> str:
    """Read the child's ready line and return the base URL it announces."""
    lines: list[bytes] = []
    stdout = process.stdout
    assert stdout is not None  # started with stdout=PIPE
    reader = threading.Thread(
        target=lambda: lines.append(stdout.readline()),
        name="batchrun-sim-ready-reader",
        daemon=True,
    )
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        process.kill()  # unblocks the reader: the pipe closes
        process.wait()
        reader.join()
        raise RuntimeError(
            f"simulator (pid {process.pid}) did not report ready within {timeout:g}s"
            f"{_stderr_tail(stderr_file)}"
        )
    line = lines[0].decode("utf-8", "replace").strip() if lines else ""
    if line.startswith(READY_LINE_PREFIX):
        return line[len(READY_LINE_PREFIX) :]
    if not line:
        try:
            returncode = process.wait(timeout=TERMINATE_GRACE_SECONDS)
            what = f"exited with status {returncode}"
        except subprocess.TimeoutExpired:
            what = "closed its stdout"
        raise RuntimeError(f"simulator (pid {process.pid}) {what} before it was ready{_stderr_tail(stderr_file)}")
    raise RuntimeError(f"simulator (pid {process.pid}) printed an unexpected first line: {line!r}{_stderr_tail(stderr_file)}")


def _stderr_tail(stderr_file: IO[bytes]) -> str:
    """The end of the child's stderr, formatted for an error message."""
    try:
        stderr_file.seek(0, os.SEEK_END)
        size = stderr_file.tell()
        stderr_file.seek(max(0, size - STDERR_TAIL_CHARS))
        tail = stderr_file.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return ""
    return f"; stderr:\n{tail}" if tail else "; stderr was empty"


def _child_environment() -> dict[str, str]:
    """The parent's environment, with this `batchrun` package importable in the child."""
    env = dict(os.environ)
    root = str(_PACKAGE_ROOT)
    site_dirs = set(site.getsitepackages())
    user_site = site.getusersitepackages()
    if isinstance(user_site, str):
        site_dirs.add(user_site)
    if root in site_dirs:
        return env  # an installed package: the child finds it the normal way
    entries = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    if root not in entries:
        env["PYTHONPATH"] = os.pathsep.join([root, *entries])
    return env
