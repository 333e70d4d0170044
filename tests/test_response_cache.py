"""The response cache (`cache = true`): answers reused across runs and run
directories, identical requests of one run sent once, errors never stored.

Every test counts what reached the simulator (its own per-ticket request
counts), so "zero requests" means nothing left the machine. The Redis test
starts Debian's redis-server on a free loopback port (skipped where it is not
installed; .ci/run installs it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from batchrun.providers.cache import ResponseCache
from batchrun.records import Completion, Usage
from conftest import InvokeResult, invoke_cli, read_jsonl, write_tickets

pytest.importorskip("diskcache")


def _job(tmp_path: Path, run_dir: str, *, top: str = "", extra: str = "") -> Path:
    job = tmp_path / f"{run_dir}.toml"
    job.write_text(f"""\
name = "cache_job"
input = "tickets.jsonl"
run_dir = "{run_dir}"
model = "openai/gpt-4o-mini"
api_key_env = "BATCHRUN_TEST_KEY"
concurrency = 8
timeout_s = 10
workers = 1
cache = true
cache_dir = "answers"
{top}

[prompt]
user = "Subject: {{subject}}\\n\\n{{body}}"

[params]
temperature = 0
max_tokens = 5

[retry]
max_attempts = 1
{extra}
""")
    return job


def _run(job: Path, env, *args: str) -> InvokeResult:
    return invoke_cli("run", str(job), "--no-progress", *args, key=env["BATCHRUN_TEST_KEY"])


def _cli(*args: str) -> InvokeResult:
    return invoke_cli(*args)


def _manifest(run_dir: Path) -> dict:
    return orjson.loads((run_dir / "manifest.json").read_bytes())


def test_the_same_job_twice_into_two_run_dirs_sends_nothing_the_second_time(tmp_path, sim, cli_env):
    write_tickets(tmp_path / "tickets.jsonl", 25)
    sim.reset()
    first = _run(_job(tmp_path, "run1"), cli_env, "--api-base", sim.base_url)
    assert first.returncode == 0, first.stderr
    assert sim.stats()["total_requests"] == 25
    paid = _manifest(tmp_path / "run1")["summary"]["cost_usd"]
    assert paid > 0
    sim.reset()
    second = _run(_job(tmp_path, "run2"), cli_env, "--api-base", sim.base_url)
    assert second.returncode == 0, second.stderr
    assert sim.stats()["total_requests"] == 0  # nothing left the machine
    results = read_jsonl(tmp_path / "run2" / "results.jsonl")
    assert len(results) == 25 and all(r["cache_hit"] and r["cost_usd"] == 0 and r["attempts"] == 0
                                      for r in results)
    first_by_id = {r["id"]: r for r in read_jsonl(tmp_path / "run1" / "results.jsonl")}
    for r in results:
        assert r["output"] == first_by_id[r["id"]]["output"]
        assert r["cost_saved_usd"] == pytest.approx(first_by_id[r["id"]]["cost_usd"])
        assert r["cost_status"] == "cache_hit"
    summary = _manifest(tmp_path / "run2")["summary"]
    assert summary["requests"] == 0 and summary["cache_hits"] == 25 and summary["cost_usd"] == 0
    assert summary["cost_saved_usd"] == pytest.approx(paid)
    assert f"25, ${paid:,.6f} saved" in second.stdout  # the end-of-run summary
    status = _cli("status", str(tmp_path / "run2"))
    assert "reused answers (all runs)" in status.stdout and f"${paid:,.6f} saved" in status.stdout
    report = _cli("report", str(tmp_path / "run2"))
    assert report.returncode == 0, report.stderr
    assert f"25 (cache), ${paid:,.6f} saved" in report.stdout
    # --no-cache sends them all again
    sim.reset()
    third = _run(_job(tmp_path, "run3"), cli_env, "--api-base", sim.base_url, "--no-cache")
    assert third.returncode == 0 and sim.stats()["total_requests"] == 25
    assert not any("cache_hit" in r for r in read_jsonl(tmp_path / "run3" / "results.jsonl"))
    # and `batchrun cache clear` empties it: the next cached run pays again
    cleared = _cli("cache", "clear", str(_job(tmp_path, "run4")))
    assert cleared.returncode == 0 and "removed 25 stored answer(s)" in cleared.stdout
    sim.reset()
    assert _run(_job(tmp_path, "run4"), cli_env, "--api-base", sim.base_url).returncode == 0
    assert sim.stats()["total_requests"] == 25


def test_duplicates_within_one_input_are_sent_once(tmp_path, sim, cli_env):
    lines: list[bytes] = []
    write_tickets(tmp_path / "base.jsonl", 6)
    base = read_jsonl(tmp_path / "base.jsonl")
    for copy in range(5):  # 30 tickets, 6 distinct requests, copies side by side so they are in flight together
        for row in base:
            lines.append(orjson.dumps({**row, "id": f"{row['id']}-{copy}"}))
    (tmp_path / "tickets.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    sim.reset()
    result = _run(_job(tmp_path, "run"), cli_env, "--api-base", sim.base_url, "--concurrency", "30")
    assert result.returncode == 0, result.stderr
    assert sim.stats()["total_requests"] == 6
    results = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(results) == 30 and len({r["id"] for r in results}) == 30
    hits = [r for r in results if r.get("cache_hit")]
    assert len(hits) == 24 and all(r["attempts"] == 0 and r["cost_usd"] == 0 for r in hits)
    by_subject = {}
    for r in results:  # every copy got the answer of its original
        by_subject.setdefault(r["id"].split("-")[0], set()).add(r["output"])
    assert all(len(outputs) == 1 for outputs in by_subject.values())
    summary = _manifest(tmp_path / "run")["summary"]
    assert summary["requests"] == 6 and summary["cache_hits"] == 24 and summary["done"] == 30


@pytest.fixture(scope="module")
def faulty_sim():
    """A simulator on which one ticket always gets a 500."""
    from batchrun.sim.config import SimConfig
    from batchrun.sim.faults import FaultRule
    from batchrun.sim.process import start_simulator

    rule = FaultRule.from_mapping({"kind": "500", "tickets": [FAILING], "attempts": [1, 2, 3, 4, 5, 6]})
    with start_simulator(SimConfig(latency_ms=1.0, jitter=0.0, faults=(rule,))) as process:
        yield process


FAILING = "T000003"


def test_errors_are_never_stored(tmp_path, faulty_sim, cli_env):
    """A ticket that failed is asked again by the next run; the others are reused."""
    write_tickets(tmp_path / "tickets.jsonl", 8)
    assert read_jsonl(tmp_path / "tickets.jsonl")[2]["id"] == FAILING
    first = _run(_job(tmp_path, "run1"), cli_env, "--api-base", faulty_sim.base_url)
    assert first.returncode == 3, first.stderr
    faulty_sim.reset()
    second = _run(_job(tmp_path, "run2"), cli_env, "--api-base", faulty_sim.base_url)
    assert second.returncode == 3
    assert faulty_sim.stats()["requests_by_ticket"] == {FAILING: 1}  # sent again, and only it
    errors = read_jsonl(tmp_path / "run2" / "errors.jsonl")
    assert [e["id"] for e in errors] == [FAILING] and errors[0]["attempts"] == 1
    results = read_jsonl(tmp_path / "run2" / "results.jsonl")
    assert len(results) == 7 and all(r["cache_hit"] for r in results)


def _completion(text: str, cost: float | None) -> Completion:
    return Completion(text=text, finish_reason="stop", model="m", usage=Usage(3, 1, 4), cost_usd=cost,
                      cost_status="litellm")


async def test_a_stored_answer_comes_back_as_a_hit_with_what_it_cost(tmp_path):
    cache = ResponseCache({"dir": str(tmp_path / "c")})
    call = {"model": "openai/m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    key = cache.key(call, "http://127.0.0.1:1/v1")
    assert key != cache.key(call, "http://other/v1")  # the endpoint is part of the key
    assert key != cache.key({**call, "temperature": 1}, "http://127.0.0.1:1/v1")
    assert await cache.get(key) is None
    await cache.put(key, _completion("bug", 0.0042))
    hit = await cache.get(key)
    assert hit is not None and hit.cache_hit and hit.text == "bug" and hit.cost_usd == 0.0
    assert hit.cost_saved_usd == 0.0042 and hit.usage == Usage(3, 1, 4)
    await cache.put(key + "x", _completion("x", None))  # an unpriced answer: saved unknown, never 0
    assert (await cache.get(key + "x")).cost_saved_usd is None
    assert cache.clear() == 2 and await cache.get(key) is None
    await cache.aclose()


def test_opening_the_cache_does_not_switch_on_litellms_callbacks(tmp_path):
    import litellm

    ResponseCache({"dir": str(tmp_path / "c")})
    assert "cache" not in litellm.success_callback and "cache" not in litellm._async_success_callback
    assert litellm.cache is None


# -- worker processes: one cache shared by several processes ---------------------------------------

@pytest.mark.slow
def test_a_disk_cache_is_shared_by_worker_processes(tmp_path, sim, cli_env):
    """Answers stored by this process are read by two worker processes (diskcache: SQLite)."""
    write_tickets(tmp_path / "tickets.jsonl", 40)
    first = _run(_job(tmp_path, "run1"), cli_env, "--api-base", sim.base_url)
    assert first.returncode == 0, first.stderr
    sim.reset()
    second = _run(_job(tmp_path, "run2"), cli_env, "--api-base", sim.base_url, "--workers", "2")
    assert second.returncode == 0, second.stderr
    assert "2 worker processes" in second.stderr
    assert sim.stats()["total_requests"] == 0
    assert all(r["cache_hit"] for r in read_jsonl(tmp_path / "run2" / "results.jsonl"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    server = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                              else None)
    if server is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    pytest.importorskip("redis")
    port = _free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError("redis-server did not start")
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.service
def test_redis_shares_the_cache_between_worker_processes(tmp_path, sim, cli_env, redis_url):
    write_tickets(tmp_path / "tickets.jsonl", 40)
    top = f'cache_url = "{redis_url}"'
    sim.reset()
    first = _run(_job(tmp_path, "run1", top=top), cli_env, "--api-base", sim.base_url, "--workers", "2")
    assert first.returncode == 0, first.stderr
    assert "2 worker processes" in first.stderr and sim.stats()["total_requests"] == 40
    # the second run is read by two other processes, and stores nothing new
    sim.reset()
    second = _run(_job(tmp_path, "run2", top=top), cli_env, "--api-base", sim.base_url, "--workers", "2")
    assert second.returncode == 0, second.stderr
    assert sim.stats()["total_requests"] == 0
    results = read_jsonl(tmp_path / "run2" / "results.jsonl")
    assert len(results) == 40 and all(r["cache_hit"] for r in results)
    assert not (tmp_path / "answers").exists()  # Redis, not the disk
    cleared = _cli("cache", "clear", "--cache-url", redis_url)
    assert "removed 40 stored answer(s)" in cleared.stdout


def test_an_unreachable_redis_is_named_before_anything_is_sent(tmp_path, sim, cli_env):
    pytest.importorskip("redis")
    write_tickets(tmp_path / "tickets.jsonl", 3)
    url = f"redis://127.0.0.1:{_free_port()}/0"
    sim.reset()
    result = _run(_job(tmp_path, "run", top=f'cache_url = "{url}"'), cli_env, "--api-base", sim.base_url)
    assert result.returncode == 2
    assert f"the response cache at redis://127.0.0.1:" in result.stderr and "does not answer" in result.stderr
    assert sim.stats()["total_requests"] == 0
