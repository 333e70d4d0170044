"""batchrun against a Ray cluster of `ray start --head` (docs/cluster.md, "Run"): `--ray-address auto`
on the head node, `ray://HOST:PORT` (Ray Client), and `ray job submit` when the dashboard's packages
(`ray[default]`, not in batchrun's extras) are installed.

One head node (2 CPUs) serves the module. It is private: its own temp dir (RAY_TMPDIR, short: Ray's
unix socket paths have a length limit), free ports for everything that has a fixed default (GCS,
Ray Client, dashboard, dashboard agent), and its own auth token (Ray 2.60 turns token auth on by
default; the token is given in the environment, so ~/.ray/auth_token is neither read nor written).
The drivers get RAY_TMPDIR too: "auto" then means this head, as it means the head of the machine
on a real head node (RAY_TMPDIR/ray/ray_current_cluster, written by `ray start`), and not another
Ray that runs on this machine. `ray stop` would stop every Ray of the user on the machine, so the
head is stopped by killing the processes of its own session: `ray start` runs in a new session
and every process it starts (GCS, raylet, workers, agents, Ray Client server) stays in it.

Each run is checked on the head's side too: the GCS logs the names of the actors it cleaned up,
so a run that went to another Ray (or a Ray of its own) leaves no new names there.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import batchrun_cmd, cli_popen, invoke_cli, read_jsonl

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'batchrun[ray]' (make install does)")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]
SIM = "[simulator]\nlatency_ms = 20\njitter = 0.0"
ACTOR_NAME = re.compile(rb"Actor name (batchrun-actor-[0-9a-f]+-\d+) is cleaned up")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_processes(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def kill_session(sid: int) -> None:
    """SIGTERM, then SIGKILL after 3 s, to every process of the head's session; waits for them."""
    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
        for pid in session_processes(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while session_processes(sid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not session_processes(sid):
            return
    raise AssertionError(f"processes of the Ray head left running: {session_processes(sid)}")


@dataclass
class Head:
    base: Path  # RAY_TMPDIR; Ray's temp dir is base/ray
    logs: Path  # the head's session's logs (session_latest moves if a driver starts a Ray of its own)
    env: dict[str, str] = field(repr=False)  # what the head was started with: RAY_TMPDIR, the auth token
    gcs_address: str
    client_port: int
    dashboard_port: int
    dashboard: bool  # started with the full dashboard (ray[default] installed)

    def driver_env(self, cli_env: dict[str, str]) -> dict[str, str]:
        env = dict(cli_env)
        env.pop("RAY_ADDRESS", None)
        env.update({k: v for k, v in self.env.items() if k.startswith("RAY_")})
        return env

    def actors_seen(self) -> set[str]:
        """Names of the batchrun actors this head's GCS has cleaned up (a run's actors, once it ended)."""
        try:
            return {m.decode() for m in ACTOR_NAME.findall((self.logs / "gcs_server.out").read_bytes())}
        except FileNotFoundError:
            return set()

    def new_actors(self, before: set[str], expected: int, timeout: float = 15.0) -> set[str]:
        """The actors that appeared in the GCS log since `before`: waits for `expected` of them."""
        deadline = time.monotonic() + timeout
        while True:
            new = self.actors_seen() - before
            if len(new) >= expected or time.monotonic() > deadline:
                return new
            time.sleep(0.2)


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    base = Path(tempfile.mkdtemp(prefix="brc-", dir="/tmp"))
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update({"RAY_TMPDIR": str(base), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                "RAY_USAGE_STATS_ENABLED": "0"})
    dashboard = ray._private.utils.get_dashboard_dependency_error() is None
    gcs_port, client_port, dashboard_port, agent_port = (free_port() for _ in range(4))
    # --ray-client-server-port: `ray start` refuses it without grpcio (ray[client], in batchrun[ray])
    start = subprocess.Popen(
        [*RAY_CLI, "start", "--head", "--num-cpus", "2", "--temp-dir", str(base / "ray"),
         "--port", str(gcs_port), "--ray-client-server-port", str(client_port),
         "--dashboard-port", str(dashboard_port), "--dashboard-agent-listen-port", str(agent_port),
         "--include-dashboard", "true" if dashboard else "false", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    sid = start.pid  # the session's leader: every process of the head is in its session
    try:
        output = start.communicate(timeout=90)[0].decode(errors="replace")
        assert start.returncode == 0, output[-3000:]
        gcs_address = (base / "ray" / "ray_current_cluster").read_text().strip()
        logs = (base / "ray" / "session_latest").resolve() / "logs"
        yield Head(base, logs, env, gcs_address, client_port, dashboard_port, dashboard)
    finally:
        if start.poll() is None:
            start.kill()
            start.wait()
        try:
            kill_session(sid)
        finally:
            shutil.rmtree(base, ignore_errors=True)


def run_driver(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, int, str, str]:
    """`batchrun ARGS` in a real process (forked from the warm one, tests/forkserver.py): (pid, exit code,
    stdout, stderr)."""
    proc = cli_popen(batchrun_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.pid, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def assert_done_each_once(run_dir: Path, n: int) -> None:
    ids = [row["id"] for row in read_jsonl(run_dir / "results.jsonl")]
    assert len(ids) == len(set(ids)) == n
    status = invoke_cli("status", str(run_dir), "--json")
    assert '"state": "done"' in status.stdout, status.stdout[-2000:]
    assert '"pending": 0,' in status.stdout, status.stdout[-2000:]


def test_auto_on_the_head_node(head, make_job, tmp_path, cli_env):
    n = 40
    job_path = make_job(n, concurrency=8, top=SIM)
    env = head.driver_env(cli_env)
    before = head.actors_seen()
    pid, code, out, err = run_driver(["run", str(job_path), "--engine", "ray", "--ray-address", "auto",
                                      "--no-progress"], env)
    assert code == 0, err[-3000:]
    assert "batchrun: Ray at auto, one per cluster CPU actor(s)" in err
    assert_done_each_once(tmp_path / "run", n)
    # the driver joined this head: its core-worker log is in the head's session, with the driver's pid
    assert list(head.logs.glob(f"python-core-driver-*_{pid}.log")), sorted(p.name for p in head.logs.iterdir())
    new = head.new_actors(before, 2)
    assert len(new) == 2 and len({name.rsplit("-", 1)[0] for name in new}) == 1, new  # one per CPU, one run


def test_ray_client(head, make_job, tmp_path, cli_env):
    n = 40
    job_path = make_job(n, concurrency=8, top=SIM)
    env = head.driver_env(cli_env)
    address = f"ray://127.0.0.1:{head.client_port}"
    before = head.actors_seen()
    # --ray-address alone implies --engine ray
    _, code, out, err = run_driver(["run", str(job_path), "--ray-address", address, "--no-progress"], env)
    assert code == 0, err[-3000:]
    assert f"batchrun: Ray at {address}, one per cluster CPU actor(s)" in err
    assert_done_each_once(tmp_path / "run", n)
    new = head.new_actors(before, 2)
    assert len(new) == 2 and len({name.rsplit("-", 1)[0] for name in new}) == 1, new


def test_ray_job_submit(head, make_job, tmp_path, cli_env):
    if not head.dashboard:
        pytest.skip("`ray job submit` needs the dashboard: pip install 'ray[default]==2.60.0' "
                    "(not in batchrun's extras)")
    n = 40
    make_job(n, concurrency=8, top=SIM)
    env = head.driver_env(cli_env)
    run_dir = tmp_path / "out" / "run"  # absolute: relative run_dir lands in Ray's copy of --working-dir
    before = head.actors_seen()
    # the entrypoint runs on the head in the environment of `ray start` (its PATH, its Python), in a
    # copy of --working-dir: the job file's relative paths (input) resolve in that copy
    submit = subprocess.run(
        [*RAY_CLI, "job", "submit", "--address", f"http://127.0.0.1:{head.dashboard_port}",
         "--working-dir", str(tmp_path), "--runtime-env-json", '{"env_vars": {"BATCHRUN_TEST_KEY": "sim-key"}}',
         "--", *batchrun_cmd("run", "job.toml", "--engine", "ray", "--ray-address", "auto",
                             "--run-dir", str(run_dir), "--no-progress")],
        env=env, capture_output=True, timeout=180)
    output = submit.stdout.decode(errors="replace") + submit.stderr.decode(errors="replace")
    assert submit.returncode == 0, output[-3000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", output), output[-3000:]
    assert "batchrun: Ray at auto, one per cluster CPU actor(s)" in output  # the job's log, tailed
    assert_done_each_once(run_dir, n)
    new = head.new_actors(before, 2)
    assert len(new) == 2 and len({name.rsplit("-", 1)[0] for name in new}) == 1, new


class JoinedTheHead(Exception):
    """A run without an address went to the head of `ray start`."""


def test_no_address_starts_its_own_ray_while_a_head_is_up(head, make_job, tmp_path, cli_env):
    n = 20
    job_path = make_job(n, concurrency=8, top=SIM)
    env = head.driver_env(cli_env)  # RAY_TMPDIR: as if the head were the machine's (/tmp/ray)
    before = head.actors_seen()
    pid, code, out, err = run_driver(["run", str(job_path), "--engine", "ray", "--no-progress"], env)
    assert code == 0, err[-3000:]
    assert "batchrun: Ray at a local instance started for the run" in err
    assert_done_each_once(tmp_path / "run", n)
    joined = list(head.logs.glob(f"python-core-driver-*_{pid}.log"))
    new = head.new_actors(before, 1, timeout=3.0)
    if joined or new:
        raise JoinedTheHead(f"driver log {joined}, actors {new} on the head")
