"""engine = "ray": exactly-once results through actor kills, a driver killed
with SIGKILL and resumed on Ray and then locally, the cluster-wide rpm limit,
and a 429's pause reaching every actor.

One local Ray (2 CPUs) serves the whole pytest session; each test starts its
own simulator when it needs other settings than the session's. The command
lines run in real processes forked from a warm one (tests/forkserver.py): the
driver is the forked child, a fresh Ray client in it. Select these
tests with `-m ray`; they are skipped (with the reason) only when Ray is not
installed, and `make test` installs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import anyio
import pytest

from batchrun import execute_run, load_job, prepare_run
from batchrun.errors import JobSpecError
from batchrun.sim.config import SimConfig
from batchrun.execution.executors.process import WorkerCrashedError
from batchrun.sim.faults import FaultRule
from batchrun.sim.process import start_simulator
from conftest import batchrun_cmd, cli_popen, cli_run, invoke_cli, read_jsonl

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'batchrun[ray]' (make install does)")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One local Ray for the session; yields its address (GCS) for drivers in other processes."""
    # address "local": a new instance even when `ray start` left one on this machine (no address
    # would join that one)
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="batchrun", configure_logging=False,
             log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def kwargs_for(sim: Any, concurrency: int) -> dict[str, Any]:
    return {"model": "openai/gpt-4o-mini", "api_base": sim.base_url, "api_key": "sim-key",
            "params": {"max_tokens": 5, "temperature": 0}, "prices": None, "max_connections": concurrency}


def run_on_ray(job_path: Path, sim: Any, actors: int, *, during: Any = None) -> Any:
    job = load_job(job_path)
    prep = prepare_run(job, endpoint="simulator")
    try:
        async def main() -> Any:
            async with anyio.create_task_group() as tg:
                if during is not None:
                    tg.start_soon(during, prep.run_dir)
                result = await execute_run(prep, None, workers=actors, engine="ray",
                                           provider_kwargs=kwargs_for(sim, job.max_in_flight))
                tg.cancel_scope.cancel()
            return result

        return anyio.run(main)
    finally:
        prep.release()


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def live_actors() -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("batchrun-actor-"))


def assert_each_once(run_dir: Path, n: int) -> None:
    ids = [row["id"] for row in read_jsonl(run_dir / "results.jsonl")]
    assert len(ids) == len(set(ids)) == n


def test_job_file_engine_and_address_are_checked(make_job, tmp_path):
    job = load_job(make_job(5, top='engine = "ray"\nray_address = "auto"'))
    assert job.engine == "ray" and job.ray_address == "auto"
    with pytest.raises(JobSpecError, match="ray_address .* is only used with engine = \"ray\""):
        load_job(make_job(5, top='ray_address = "auto"'))
    with pytest.raises(JobSpecError, match="engine"):
        load_job(make_job(5, top='engine = "spark"'))


def test_exactly_once_through_five_actor_kills(ray_cluster, make_job, tmp_path):
    n, actors = 600, 6
    job_path = make_job(n, concurrency=24)
    killed: list[str] = []

    async def kill_five(run_dir: Path) -> None:
        results = run_dir / "results.jsonl"
        with anyio.fail_after(240):
            while len(killed) < 5:
                await anyio.sleep(0.02)
                if lines(results) < (len(killed) + 1) * n // 8:
                    continue
                alive = [name for name in live_actors() if name not in killed]
                if len(alive) > 1:
                    ray.kill(ray.get_actor(alive[0], namespace="batchrun"))
                    killed.append(alive[0])

    with start_simulator(SimConfig(latency_ms=50.0, jitter=0.0)) as sim:
        result = run_on_ray(job_path, sim, actors, during=kill_five)
        served = sim.stats()["total_requests"]
    assert len(killed) == 5
    assert result.state == "done" and result.exit_code == 0, result.error
    assert_each_once(tmp_path / "run", n)
    cluster = result.summary["cluster"]
    # Every request the simulator saw is counted, also those of actors killed with a request in
    # flight: the driver counts (and journals) an attempt before the actor may send it. The count
    # is higher only by attempts granted to an actor that died before sending them, and each of
    # those tickets is named (and its line marked) as possibly billed twice.
    requests = result.summary["requests"]
    assert served <= requests, (served, requests)
    lost = cluster["in_flight_on_lost_actors"]
    assert requests <= served + lost, (served, requests, lost)
    assert lost >= 1
    run_dir = tmp_path / "run"
    marked = {row["id"] for row in read_jsonl(run_dir / "results.jsonl") + read_jsonl(run_dir / "errors.jsonl")
              if row.get("maybe_billed_before")}
    assert marked == set(cluster["in_flight_on_lost_actors_ids"]) and len(marked) == lost
    assert cluster["actors"] == actors and cluster["actors_lost"] == 5
    assert cluster["tickets_requeued"] >= 1 and served >= n  # what the dead held was sent again
    assert cluster["peak_tickets_per_actor"] <= 24  # the last actor standing holds them all, no more
    from batchrun.analysis.stats import format_summary

    assert "Ray actors" in format_summary(result.summary, title="t")
    assert "6 (5 lost, " in format_summary(result.summary, title="t")
    wait_for_no_actors()  # the run's actors are gone after it


@pytest.mark.slow
def test_a_node_lost_mid_run(make_job, tmp_path, cli_env):
    """A real node loss: two worker nodes (separate raylets on this machine), one killed mid-run.
    Its actor's tickets go to the other node's actor, each recorded once; the limiter lives on the
    driver's node, so the rate limit still holds after the loss."""
    import orjson

    n = 400
    job_path = make_job(n, concurrency=16, top="rpm = 12000")  # the limiter is in use throughout
    with start_simulator(SimConfig(latency_ms=50.0, jitter=0.0)) as sim:
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("two_node_ray_run.py")),
                               str(job_path), sim.base_url], env=cli_env, capture_output=True, timeout=300)
        served = sim.stats()["total_requests"]
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    report = orjson.loads(proc.stdout.splitlines()[-1])
    # the limiter lives on the driver's node, not on a node that can be lost with its actors
    assert report["limiter_node"] == report["driver_node"]
    assert len(set(report["actor_nodes"])) == 2 and report["lost_node"] in report["actor_nodes"]
    assert report["state"] == "done", report["error"]
    assert_each_once(tmp_path / "run", n)
    summary = report["summary"]
    cluster = summary["cluster"]
    assert cluster["actors_lost"] == 1 and cluster["tickets_requeued"] >= 1
    assert served <= summary["requests"] <= served + cluster["in_flight_on_lost_actors"]


def wait_for_no_actors(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while live_actors():
        assert time.monotonic() < deadline, live_actors()
        time.sleep(0.1)


def test_driver_killed_then_resumed_on_ray_and_then_locally(ray_cluster, make_job, tmp_path, cli_env):
    n = 400
    job_path = make_job(n, concurrency=8, top="[simulator]\nlatency_ms = 40\njitter = 0.0")
    run_dir = tmp_path / "run"
    ray_args = ["--engine", "ray", "--ray-address", ray_cluster, "--workers", "2", "--no-progress"]
    driver = cli_popen(batchrun_cmd("run", str(job_path), *ray_args), env=cli_env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while lines(run_dir / "results.jsonl") < 40:
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the Ray run wrote nothing"
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    first = lines(run_dir / "results.jsonl")
    assert first < n
    wait_for_no_actors()  # Ray ends the actors of a driver that died

    # --ray-address alone implies --engine ray
    second = cli_run(batchrun_cmd("run", str(job_path), "--ray-address", ray_cluster, "--workers", "2",
                                  "--no-progress", "--limit", "300"), env=cli_env,
                     capture_output=True, timeout=300)
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    # the tickets in flight at the kill are named: the journal was written before each request left
    assert b"may be billed twice" in second.stdout, second.stdout.decode()[-3000:]
    assert f"batchrun: Ray at {ray_cluster}, 2 actor(s)".encode() in second.stderr
    rows = read_jsonl(run_dir / "results.jsonl")
    assert len({r["id"] for r in rows}) == len(rows) == 300
    assert {r["run"] for r in rows} == {1, 2}

    third = cli_run(batchrun_cmd("run", str(job_path), "--engine", "local", "--no-progress"), env=cli_env,
                    capture_output=True, timeout=300)
    assert third.returncode == 0, third.stderr.decode()[-3000:]
    assert_each_once(run_dir, n)
    assert {r["run"] for r in read_jsonl(run_dir / "results.jsonl")} == {1, 2, 3}
    status = invoke_cli("status", str(run_dir), "--json")
    assert '"state": "done"' in status.stdout


class _Sampler:
    """The simulator's request count, read every 20 ms in a thread: (time, total, faults) samples."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.samples: list[tuple[float, int, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            before = time.monotonic()
            stats = self.sim.stats()
            self.samples.append(((before + time.monotonic()) / 2, stats["total_requests"],
                                 sum(stats["faults_by_kind"].values())))
            time.sleep(0.02)

    def __enter__(self) -> "_Sampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(5)


def test_rpm_limit_holds_across_four_actors(ray_cluster, make_job, tmp_path):
    rpm, n = 1200, 300  # 20 requests a second: the run takes about 15 s
    job_path = make_job(n, concurrency=32, top=f"rpm = {rpm}")
    with start_simulator(SimConfig(latency_ms=20.0, jitter=0.0)) as sim, _Sampler(sim) as sampler:
        result = run_on_ray(job_path, sim, 4)
    assert result.state == "done", result.error
    assert result.summary["cluster"]["limiter"]["granted"] >= n
    samples = [(t, total) for t, total, _ in sampler.samples]
    first = next(t for t, total in samples if total > 0)
    last = next(t for t, total in samples if total >= n)
    # At most R in any minute, checked in every window of up to 10 s: at most 0.98 R/60 a second (the
    # pace) times the window, plus 0.02 R for bursts and permits sent late (what a minute's headroom
    # holds: with W = 60 s the bound is R), plus 0.1 s of the pace for the sampling's own error.
    per_s = rpm / 60.0
    for i, (t0, c0) in enumerate(samples):
        for t1, c1 in samples[i:]:
            if t1 - t0 > 10.0:
                break
            assert c1 - c0 <= 0.98 * per_s * (t1 - t0 + 0.1) + 0.02 * rpm, (t0 - first, t1 - t0, c1 - c0)
    # at least 95% of R over the run
    rate = (n - 1) / (last - first)
    assert rate >= 0.95 * per_s, rate


def test_a_lost_limiter_stops_the_run_clearly_and_it_resumes(ray_cluster, make_job, tmp_path):
    """The limiter actor killed mid-run: no actor waits forever for a permit; the run fails with a
    message naming the limiter, nothing done is lost, and the same job resumes to the end."""
    n = 300
    job_path = make_job(n, concurrency=16, top="rpm = 6000")

    async def kill_limiter(run_dir: Path) -> None:
        with anyio.fail_after(120):
            while lines(run_dir / "results.jsonl") < 60:
                await anyio.sleep(0.02)
        name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["name"].startswith("batchrun-limiter-"))
        ray.kill(ray.get_actor(name, namespace="batchrun"))

    with start_simulator(SimConfig(latency_ms=20.0, jitter=0.0)) as sim:
        with pytest.raises(BaseException) as caught:
            run_on_ray(job_path, sim, 2, during=kill_limiter)
        error = caught.value
        while isinstance(error, BaseExceptionGroup):  # run_on_ray's own task group wraps it
            error = error.exceptions[0]
        assert isinstance(error, WorkerCrashedError) and "rate limiter (a Ray actor) is gone" in str(error), error
        done = lines(tmp_path / "run" / "results.jsonl")
        assert 60 <= done < n
        second = run_on_ray(job_path, sim, 2)
    assert second.state == "done", second.error
    assert_each_once(tmp_path / "run", n)


def test_a_429_pause_reaches_every_actor(ray_cluster, make_job, tmp_path):
    pause_s, n = 2.0, 300
    job_path = make_job(n, concurrency=16)
    fault = FaultRule(kind="429", tickets=("T000200",), attempts=(1,), retry_after=pause_s)
    with start_simulator(SimConfig(latency_ms=50.0, jitter=0.0, faults=(fault,))) as sim, _Sampler(sim) as sampler:
        result = run_on_ray(job_path, sim, 4)
    assert result.state == "done", result.error
    assert result.summary["rate_limited"] == 1 and result.summary["cluster"]["limiter"]["pauses"] == 1
    assert result.summary["cluster"]["peak_tickets_per_actor"] <= 16 // 4  # tickets per actor are bounded
    seen = next(t for t, _, faults in sampler.samples if faults)
    # (late in the run, so that no actor is still making its first, slow call: a request already
    # past its permit when the 429 came may still leave, as in one process)
    quiet = [total for t, total, _ in sampler.samples if seen + 0.3 <= t <= seen + pause_s - 0.3]
    assert quiet and quiet[-1] == quiet[0], quiet  # no actor sent anything during the pause
    assert sampler.samples[-1][1] == n + 1


def test_sigint_on_ray_sends_nothing_more_and_resumes(ray_cluster, make_job, tmp_path, cli_env):
    """The first Ctrl-C reaches the actors: no request starts after it, tickets waiting out a 429's
    Retry-After end at once (not as failures), the request in flight completes, and the run resumes."""
    retry_after = 20  # longer than the wait below: a sleeping ticket must not wait it out
    job = make_job(20, concurrency=4, extra=f"max_retry_after_s = {retry_after + 10}\n")
    # the first four tickets (the concurrency) are all sent before any answer (200 ms) can pause an
    # actor: three are told to come back in 20 s, one stalls for 3 s
    faults = (FaultRule("429", tickets=("T000001", "T000002", "T000003"), attempts=(1,), retry_after=retry_after),
              FaultRule("stall", tickets=("T000004",), attempts=(1,), stall_s=3))
    run_dir = tmp_path / "run"
    args = ["run", str(job), "--no-progress", "--engine", "ray", "--ray-address", ray_cluster, "--workers", "2"]
    with start_simulator(SimConfig(latency_ms=200, jitter=0, faults=faults)) as sim:
        proc = cli_popen(batchrun_cmd(*args, "--api-base", sim.base_url), env=cli_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 180
            while not (len(sim.stats()["requests_by_ticket"]) >= 4 and sim.stats()["in_flight"] == 1):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no four requests with one in flight"
                time.sleep(0.02)
            at_signal = sim.stats()
            sent_at_signal, by_ticket_at_signal = at_signal["total_requests"], at_signal["requests_by_ticket"]
            proc.send_signal(signal.SIGINT)
            signalled = time.monotonic()
            while proc.poll() is None and time.monotonic() - signalled < 15:  # the Retry-After is 20 s
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
            out, err = proc.communicate()
        stats = sim.stats()
        assert proc.returncode == 130, err[-3000:]
        assert stats["total_requests"] == sent_at_signal, ("a request started after the signal",
                                                           by_ticket_at_signal, stats["requests_by_ticket"], err[-2000:])
        assert "T000004" in {row["id"] for row in read_jsonl(run_dir / "results.jsonl")}
        assert read_jsonl(run_dir / "errors.jsonl") == []  # the sleeping tickets are not failures
        resumed = cli_run(batchrun_cmd(*args, "--api-base", sim.base_url), env=cli_env,
                          capture_output=True, text=True, timeout=180)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_each_once(run_dir, 20)


def test_an_unreachable_cluster_is_a_clear_error_at_once(make_job, tmp_path, cli_env):
    """ray.init retries an address with nothing there for many minutes; the run says so at once."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    job_path = make_job(5, concurrency=2, top="[simulator]\nlatency_ms = 1")
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        proc = cli_run(batchrun_cmd("run", str(job_path), "--ray-address", address, "--no-progress"),
                       env=cli_env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert f"batchrun: error: cannot reach the Ray cluster at {address}: Connection refused" in proc.stderr
        assert "Traceback" not in proc.stderr and "ExceptionGroup" not in proc.stderr
    assert not (tmp_path / "run" / "results.jsonl").exists() or lines(tmp_path / "run" / "results.jsonl") == 0


def test_cache_hits_on_ray_are_neither_sent_nor_counted(ray_cluster, make_job, tmp_path, sim):
    """A ticket's first attempt is counted when it is handed to an actor; an answer from the response
    cache sends nothing, and the count (and the journal) take that attempt back."""
    from batchrun.rundir.journal import open_inflight

    n = 30
    job_path = make_job(n, concurrency=8, top=f'cache = true\ncache_dir = "{tmp_path / "cache"}"')
    sim.reset()  # the session's simulator
    kwargs = {**kwargs_for(sim, 8), "cache": {"dir": str(tmp_path / "cache"), "endpoint": "simulator"}}

    def run_once() -> Any:
        job = load_job(job_path)
        prep = prepare_run(job, endpoint="simulator")
        try:
            return anyio.run(lambda: execute_run(prep, None, workers=2, engine="ray", provider_kwargs=kwargs))
        finally:
            prep.release()

    first = run_once()
    assert first.state == "done" and first.summary["requests"] == sim.stats()["total_requests"] == n
    (tmp_path / "run").rename(tmp_path / "run1")  # a new run directory, the same cache
    second = run_once()
    assert sim.stats()["total_requests"] == n  # nothing sent
    assert second.state == "done" and second.summary["cache_hits"] == n
    assert second.summary["requests"] == 0, second.summary["requests"]
    assert open_inflight(tmp_path / "run", set()) == {}  # no ticket named as possibly billed
