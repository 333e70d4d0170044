"""What the machine can do to a run (issue 24): too few file descriptors, a connection pool smaller
than the concurrency, a corrupt response cache, a full disk. Real OS conditions: resource limits
set in a child process (resource.setrlimit), a small tmpfs where one can be mounted (skipped, with
the reason, elsewhere)."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from batchrun.rundir.lines import scan_jsonl

from conftest import ROOT, InvokeResult, batchrun_cmd, invoke_cli, read_jsonl, write_tickets

JOB = """\
name = "machine"
input = "tickets.jsonl"
run_dir = "run"
model = "openai/gpt-4o-mini"
api_key_env = "BATCHRUN_TEST_KEY"
concurrency = {concurrency}
timeout_s = {timeout_s}
workers = 1

[prompt]
system = "Classify the ticket as exactly one of: bug, feature, billing, other."
user = "Subject: {{subject}}\\n\\n{{body}}"

[params]
max_tokens = 5

[retry]
max_attempts = 3
initial_backoff_s = 0.01
max_backoff_s = 0.05
{extra}
"""


def write_job(base: Path, tickets: int, *, concurrency: int, timeout_s: float = 30, extra: str = "") -> Path:
    write_tickets(base / "tickets.jsonl", tickets)
    job = base / "job.toml"
    job.write_text(JOB.format(concurrency=concurrency, timeout_s=timeout_s, extra=textwrap.dedent(extra)))
    return job


def nofile(soft: int, hard: int | None = None):
    """preexec_fn: the child's file-descriptor limit (soft, hard)."""
    def set_limit() -> None:
        current_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, current_hard if hard is None else hard))
    return set_limit


def start_sim(**config):
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    return start_simulator(SimConfig(**{"latency_ms": 1, "jitter": 0, **config}))


# -- 5. concurrency as asked -----------------------------------------------------------------------

@pytest.mark.slow  # a fresh interpreter, 1,000 held requests, SIGINT
def test_one_process_holds_1000_requests_in_flight(tmp_path, cli_env):
    """concurrency = 1000, one process (no workers), a soft file limit of 256 (the hard one higher):
    the server sees 1,000 requests in flight at once (every request is held: a `stall`)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1400:
        pytest.skip(f"the hard file-descriptor limit ({hard}) is below what 1,000 connections need")
    job = write_job(tmp_path, 1000, concurrency=1000, timeout_s=300)
    with start_sim(scripts=("rate:1=stall:stall_s=600",)) as sim:
        proc = subprocess.Popen(batchrun_cmd("run", str(job), "--api-base", sim.base_url, "--no-progress",
                                             "--grace", "0"), env=cli_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=nofile(256))
        try:
            deadline = time.monotonic() + 120  # bounds only a failure: 500 would stay 500
            stats = sim.stats()
            while stats["in_flight"] < 1000 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.5)
                stats = sim.stats()
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
    print(f"\npeak in flight at the server: {stats['peak_in_flight']} (concurrency 1000, one process)")
    assert stats["peak_in_flight"] == 1000, (stats["peak_in_flight"], err[-2000:])
    assert proc.returncode == 130, err[-2000:]


@pytest.mark.slow  # a fresh interpreter under a resource limit
def test_a_file_limit_too_low_for_the_concurrency_lowers_it_and_says_so(tmp_path, cli_env):
    job = write_job(tmp_path, 300, concurrency=1000)
    with start_sim(latency_ms=30) as sim:
        run = subprocess.run(batchrun_cmd("run", str(job), "--api-base", sim.base_url, "--no-progress"),
                             env=cli_env, capture_output=True, text=True, timeout=300, preexec_fn=nofile(256, 256))
        peak = sim.stats()["peak_in_flight"]
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "file descriptors" in line]
    assert len(lines) == 1, run.stderr
    assert "ulimit -n" in lines[0] and "256" in lines[0] and "concurrency 1000" in lines[0], lines[0]
    lowered = int(lines[0].split("lowered to ")[1].split()[0].rstrip(":;,"))
    assert 16 <= lowered < 256 and peak <= lowered, (lowered, peak)
    assert len(read_jsonl(tmp_path / "run" / "results.jsonl")) == 300


EMFILE_SCRIPT = """
import os, resource, sys
import anyio
sys.path.insert(0, {root!r})
from batchrun import execute_run, load_job, prepare_run
from batchrun.providers.online import LiteLLMProvider

from batchrun.providers.seam import ChatRequest

job = load_job({job!r})
provider = LiteLLMProvider(model=job.model, api_base={base!r}, api_key="sim-key", params=job.params)
# one request first, so that every module a run needs is imported while files can still be opened
anyio.run(lambda: provider.complete(ChatRequest("warm-up", [dict(role="user", content="hi")], 10)))
prep = prepare_run(job, endpoint="sim")
resource.setrlimit(resource.RLIMIT_NOFILE, (400, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:  # every descriptor but {free}: the run opens its files, then its connections find none
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
for fd in held[-{free}:]:
    os.close(fd)
result = anyio.run(lambda: execute_run(prep, provider))
prep.release()
print(result.state, result.exit_code, result.error)
"""


@pytest.mark.slow  # a fresh interpreter that imports litellm
def test_running_out_of_file_descriptors_mid_run_stops_admitting_and_says_why(tmp_path):
    job = write_job(tmp_path, 100, concurrency=40)
    with start_sim(latency_ms=50) as sim:
        script = EMFILE_SCRIPT.format(root=str(ROOT), job=str(job), base=sim.base_url, free=12)
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        sent = sum(sim.stats()["requests_by_ticket"].values())
    assert run.returncode == 0, run.stderr[-3000:]
    state, code, error = run.stdout.strip().splitlines()[-1].split(" ", 2)
    errors = read_jsonl(tmp_path / "run" / "errors.jsonl")
    kinds = {line["error_kind"] for line in errors}
    print(f"\nEMFILE: {len(errors)} ticket(s) failed, kinds {kinds}; {sent} request(s) reached the server")
    assert errors and kinds == {"local_resource"}, kinds
    assert all(line["attempts"] == 1 for line in errors)  # not retried as a connection error
    assert len(errors) <= 40  # no new ticket was admitted once the machine said EMFILE
    assert state == "failed" and code == "1", run.stdout
    assert "file descriptors" in error and "ulimit -n" in error
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert manifest["state"] == "failed" and "file descriptors" in manifest["error"]


# -- 6. cache corruption -----------------------------------------------------------------------------

CACHE_JOB_EXTRA = """
[simulator]
latency_ms = 1
jitter = 0
"""


def _cache_run(base: Path, cache_dir: Path, run_dir: str, cli_env) -> InvokeResult:
    text = (base / "job.toml").read_text()
    if "cache_dir" not in text:
        (base / "job.toml").write_text(f'cache_dir = "{cache_dir}"\n' + text)
    return invoke_cli("run", str(base / "job.toml"), "--no-progress", "--cache", "--run-dir", str(base / run_dir))


@pytest.mark.parametrize("damage", ["not_a_database", "malformed_pages"])
def test_an_unreadable_cache_is_one_line_and_the_run_goes_on_without_it(tmp_path, cli_env, damage):
    pytest.importorskip("diskcache")
    write_job(tmp_path, 12, concurrency=4, extra=CACHE_JOB_EXTRA)
    cache_dir = tmp_path / "cache"
    first = _cache_run(tmp_path, cache_dir, "run1", cli_env)
    assert first.returncode == 0, first.stderr
    store = cache_dir / "cache.db"
    data = bytearray(store.read_bytes())
    if damage == "not_a_database":
        data[:] = os.urandom(len(data))
    else:  # the header stays, the pages behind it are garbage: opening works, reading does not
        data[100:] = b"\xa5" * (len(data) - 100)
    store.write_bytes(bytes(data))
    damaged = bytes(data)
    second = _cache_run(tmp_path, cache_dir, "run2", cli_env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Traceback" not in second.stderr and "DatabaseError" not in second.stdout
    lines = [line for line in second.stderr.splitlines() if "response cache" in line]
    assert len(lines) == 1, second.stderr
    assert str(cache_dir) in lines[0] and "without" in lines[0], lines[0]
    manifest = orjson.loads((tmp_path / "run2" / "manifest.json").read_bytes())
    assert manifest["state"] == "done" and manifest["counts"]["done"] == 12
    rows = read_jsonl(tmp_path / "run2" / "results.jsonl")
    assert len(rows) == 12 and not any(row.get("cache_hit") for row in rows)  # asked, paid, not reused
    assert store.read_bytes() == damaged  # the user's file is left as it was


async def test_a_cache_that_turns_unreadable_mid_run_says_so_once(tmp_path, caplog):
    pytest.importorskip("diskcache")
    from batchrun.providers.cache import ResponseCache
    from batchrun.records import Completion

    cache = ResponseCache({"dir": str(tmp_path / "cache")})
    answer = Completion(text="bug", finish_reason="stop", model="m", usage=None, cost_usd=0.001,
                        cost_status="litellm")
    for n in range(50):
        await cache.put(f"key{n}", answer)
    assert (await cache.get("key1")).text == "bug"
    for store in (tmp_path / "cache").glob("cache.db*"):  # the database, its write-ahead log and index
        data = bytearray(store.read_bytes())
        data[16:] = b"\xa5" * (len(data) - 16)
        store.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="batchrun"):
        results = [await cache.get(f"key{n}") for n in range(5)]
        await cache.put("key99", answer)
    assert results == [None] * 5 and cache.broken
    lines = [r.getMessage() for r in caplog.records if "response cache" in r.getMessage()]
    assert len(lines) == 1 and "goes on without it" in lines[0], lines
    await cache.aclose()


# -- 8. disk full ------------------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs of the size asked (mount needs root or CAP_SYS_ADMIN: skipped, with the reason, without)."""
    mounted: list[Path] = []

    def mount(size_kb: int) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip() or done.returncode}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(path: Path) -> None:
    """Fill the filesystem of `path` to the last byte."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                continue
    finally:
        os.close(fd)


def test_a_full_disk_at_start_is_one_line_and_exit_2(tmp_path, small_tmpfs):
    disk = small_tmpfs(256)
    _fill(disk)
    job = write_job(tmp_path, 5, concurrency=2, extra=CACHE_JOB_EXTRA)
    result = invoke_cli("run", str(job), "--no-progress", "--run-dir", str(disk / "run"))
    assert result.returncode == 2, result.stderr
    # each stderr line after its date-time (issue 26); the last says how the run ended
    lines = [re.sub(r"^\S+ ", "", line) for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == "batchrun: state=not_started done=0 failed=0 cost=$0.000000 exit=2", result.stderr
    lines = lines[:-1]
    assert len(lines) == 1 and lines[0].startswith("batchrun: error:"), result.stderr
    assert str(disk / "run") in lines[0] and "free" in lines[0] and "full" in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    # the same from the Python API's side: the lock, then the space held for the last manifest
    from batchrun.errors import DiskFullError
    from batchrun.rundir.checkpoint import open_checkpoint

    with pytest.raises(DiskFullError, match="0 bytes free"):
        open_checkpoint(disk / "run")
    assert DiskFullError.exit_code == 2


def test_a_disk_that_fills_mid_run_ends_failed_with_the_summary(tmp_path, small_tmpfs):
    disk = small_tmpfs(1536)
    extra = CACHE_JOB_EXTRA + '\n[[simulator.scripts]]\nrate = 1\nsteps = ["huge_answer:size_bytes=120000"]\n'
    job = write_job(tmp_path, 40, concurrency=2, extra=extra)
    result = invoke_cli("run", str(job), "--no-progress", "--run-dir", str(disk / "run"))
    assert result.returncode == 1, result.stderr[-3000:]
    manifest = orjson.loads((disk / "run" / "manifest.json").read_bytes())
    done = len(scan_jsonl(disk / "run" / "results.jsonl").ids)  # complete lines (the last one may be torn)
    print(f"\ndisk full after {done} of 40 tickets: manifest {manifest['state']!r}, error {manifest['error']!r}")
    assert 0 < done < 40
    assert manifest["state"] == "failed" and "No space left on device" in manifest["error"], manifest["error"]
    assert manifest["summary"]["done"] == done == manifest["counts"]["done"]
    assert "failed" in result.stdout and "done in this run" in result.stdout  # the summary, printed
    assert "last good line" in result.stderr and "Traceback" not in result.stderr
    assert not (disk / "run" / ".disk-reserve").exists()
