"""`batchrun serve`: following checkpoint files, the JSON API, the event stream,
the token rule and path safety. Runs are real `batchrun run` processes (forked
from a warm one: tests/forkserver.py) against the simulator over HTTP on
127.0.0.1; the server is the real aiohttp app on a loopback socket (aiohttp's
TestServer). The browser test is in test_serve_browser.py."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from batchrun.serve import follow
from batchrun.serve.app import HUB_KEY, build_app
from batchrun.serve.server import serve_token
from batchrun.serve.follow import SERIES_POINTS, JsonlFollower, UnitNumbers
from batchrun.serve.runs import RunsRoot, UnsafeName, live_state, lock_held
from conftest import batchrun_cmd, cli_popen, cli_run, invoke_cli

FAILING = ("T000002", "T000005")  # the fault simulator answers these with a context-window error


@pytest.fixture(scope="module")
def fault_sim() -> Iterator[Any]:
    """A simulator that fails FAILING for good and answers the rest in 5 ms."""
    from batchrun.sim.config import SimConfig
    from batchrun.sim.faults import FaultRule
    from batchrun.sim.process import start_simulator

    rule = FaultRule(kind="context_length", tickets=FAILING, attempts=(1, 2, 3))
    with start_simulator(SimConfig(latency_ms=5.0, jitter=0.0, faults=(rule,))) as process:
        yield process


@pytest.fixture(scope="module")
def slow_serve_sim() -> Iterator[Any]:
    """Slow enough (40 ms) that a run is watched while it writes."""
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    with start_simulator(SimConfig(latency_ms=40.0, jitter=0.1)) as process:
        yield process


def run_job(job: Path, sim: Any, run_dir: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    args = ["run", str(job), "--api-base", sim.base_url, "--run-dir", str(run_dir), "--no-progress", *extra]
    return cli_run(batchrun_cmd(*args), env=env, capture_output=True, text=True, timeout=180)


def start_job(job: Path, sim: Any, run_dir: Path, env: dict[str, str], *extra: str) -> Any:
    args = ["run", str(job), "--api-base", sim.base_url, "--run-dir", str(run_dir), "--no-progress", *extra]
    return cli_popen(batchrun_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextlib.asynccontextmanager
async def serving(root: Path, **kwargs: Any) -> AsyncIterator[TestClient]:
    kwargs.setdefault("interval", 0.1)
    async with TestClient(TestServer(build_app(root, **kwargs))) as client:
        yield client


async def until(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout} s")
        await asyncio.sleep(0.05)


async def sse_events(response: Any) -> AsyncIterator[dict[str, Any]]:
    """The decoded `snapshot` events of an open event stream."""
    event = None
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "snapshot":
            yield orjson.loads(line[6:])
        elif not line:
            event = None


# --------------------------------------------------------------------------------------------
# Following a file
# --------------------------------------------------------------------------------------------


def _line(i: int, **fields: Any) -> bytes:
    return orjson.dumps({"id": f"T{i:06d}", **fields}) + b"\n"


def _collect(follower: JsonlFollower, **kwargs: Any) -> tuple[list[dict[str, Any]], bool]:
    lines: list[dict[str, Any]] = []
    restarted: list[bool] = []
    follower.poll(lines.append, lambda: (restarted.append(True), lines.clear()), **kwargs)
    return lines, bool(restarted)


def test_follower_reads_each_byte_once_and_waits_for_a_line_to_be_complete(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    read = []
    real_pread = os.pread
    monkeypatch.setattr(follow.os, "pread", lambda fd, n, off: read.append((off, n)) or real_pread(fd, n, off))
    follower = JsonlFollower(path)
    assert _collect(follower) == ([], False)  # no file yet: nothing, no error
    whole = _line(1) + _line(2)
    third = _line(3, output="x" * 50)
    path.write_bytes(whole + third[:20])  # a line being written: no newline yet
    lines, restarted = _collect(follower)
    assert [line["id"] for line in lines] == ["T000001", "T000002"] and not restarted
    with path.open("ab") as handle:
        handle.write(third[20:] + _line(4)[:5])
    lines, _ = _collect(follower)
    assert [line["id"] for line in lines] == ["T000003"]  # completed from the kept part
    assert lines[0]["output"] == "x" * 50
    assert _collect(follower) == ([], False)  # nothing new
    # the file was read once: data reads tile it from 0; the only other reads re-check
    # the few bytes of a kept partial line (is it still there?), never the file
    offset = 0
    for off, n in read:
        if off == offset:
            offset += n
        else:
            assert off < offset and n <= 20, (off, n)
    assert offset == path.stat().st_size


def test_follower_forgets_a_torn_tail_that_is_cut_and_restarts_when_the_file_is_replaced(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(_line(1) + _line(2) + b'{"id":"T000003","outp')  # a crash mid-write
    follower = JsonlFollower(path)
    assert len(_collect(follower)[0]) == 2
    os.truncate(path, len(_line(1) + _line(2)))  # the next run cuts the torn tail (open_checkpoint)
    with path.open("ab") as handle:
        handle.write(_line(3))
    lines, restarted = _collect(follower)
    assert [line["id"] for line in lines] == ["T000003"] and not restarted
    # cut below what was read: start over
    os.truncate(path, len(_line(1)))
    lines, restarted = _collect(follower)
    assert restarted and [line["id"] for line in lines] == ["T000001"]
    # replaced by another file (a new inode): start over
    replacement = tmp_path / "new.jsonl"
    replacement.write_bytes(_line(7) + _line(8))
    os.replace(replacement, path)
    lines, restarted = _collect(follower)
    assert restarted and [line["id"] for line in lines] == ["T000007", "T000008"]


def test_follower_reads_a_big_file_in_bounded_polls(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"".join(_line(i, output="y" * 100) for i in range(3000)))
    follower = JsonlFollower(path)
    seen: list[dict[str, Any]] = []
    polls = 0
    while follower.poll(seen.append, lambda: None, max_bytes=64 * 1024):
        polls += 1
    assert polls > 3 and len(seen) == 3000 and len({line["id"] for line in seen}) == 3000


def test_numbers_stay_bounded_however_many_lines_arrive():
    numbers = UnitNumbers()
    for i in range(60_000):
        second, fraction = divmod(i, 10)
        stamp = f"2026-12-01T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}.{fraction}00Z"
        numbers.add_result({"id": f"T{i}", "output": "bug", "usage": {"prompt_tokens": 10, "completion_tokens": 2,
                            "total_tokens": 12}, "cost_usd": 0.001, "latency_ms": 100 + i % 400, "attempts": 1,
                            "elapsed_ms": 120.0, "finished_at": stamp, "run": 1})
        if i % 1000 == 0:
            numbers.add_error({"id": f"E{i}", "error_kind": "timeout", "message": f"m{i}", "attempts": 3,
                               "time": stamp, "run": 1})
    assert numbers.done == 60_000 and numbers.requests == 60_000 + 60 * 3
    assert len(numbers.series.buckets) <= SERIES_POINTS  # 6,000 s of results in at most 120 buckets
    assert len(numbers.latency.counts) < 200  # log buckets, not samples
    assert len(numbers.failed) == 60 and len(numbers.messages["timeout"]) == 3
    points = numbers.series.points()
    assert points["width_s"] >= 50 and sum(points["results"]) == 60_000
    assert points["results_per_s"][0] == pytest.approx(10.0)  # ten results a second


# --------------------------------------------------------------------------------------------
# Liveness and states
# --------------------------------------------------------------------------------------------


def _fake_run(path: Path, state: str = "done", **manifest: Any) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_bytes(orjson.dumps({
        "job": {"name": manifest.pop("job", "nightly"), "fingerprint": {"model": "openai/gpt-4o-mini"}},
        "input": {"path": "tickets.jsonl", "tickets": 10}, "state": state, "run": 1,
        "started_at": manifest.pop("started_at", "2026-12-01T01:00:00.000Z"), "finished_at": None, **manifest}))
    return path


def test_a_run_is_running_only_while_its_lock_is_held(tmp_path):
    run = _fake_run(tmp_path / "r", state="running")
    assert not lock_held(run)
    assert live_state("running", False) == "stopped unexpectedly"
    with open(run / "run.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert lock_held(run)
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    assert not lock_held(run)
    # a probe must never hold the lock itself: a run starting now can still take it
    with open(run / "run.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert [live_state(s, False) for s in ("done", "failed", "interrupted", "budget_exhausted", "submitted")] == [
        "finished", "failed", "interrupted", "budget exhausted", "submitted"]
    assert live_state("done", True) == "running"


# --------------------------------------------------------------------------------------------
# The JSON API
# --------------------------------------------------------------------------------------------


async def test_api_lists_runs_and_gives_the_numbers_of_batchrun_status(make_job, tmp_path, fault_sim, cli_env):
    from batchrun.rundir.status import run_status

    job = make_job(40)
    runs = tmp_path / "runs"
    first = run_job(job, fault_sim, runs / "night1", cli_env, "--limit", "20")
    assert first.returncode == 3, first.stderr  # the two FAILING tickets
    second = run_job(job, fault_sim, runs / "night2", cli_env)
    assert second.returncode == 3, second.stderr
    (runs / "not-a-run").mkdir()
    async with serving(runs) as client:
        response = await client.get("/api/runs")
        assert response.status == 200
        listing = await response.json()
        assert [r["name"] for r in listing["runs"]] == ["night2", "night1"]  # newest first
        assert listing["jobs"] == [{"job": "test_job", "runs": ["night2", "night1"]}]
        night2 = listing["runs"][0]
        assert (night2["state"], night2["done"], night2["failed"], night2["tickets"]) == ("finished", 38, 2, 40)

        response = await client.get("/api/runs/night2")
        assert response.status == 200
        run = await response.json()
        expected = orjson.loads(orjson.dumps(run_status(runs / "night2")))
        assert run["status"] == {**expected, "run_dir": str((runs / "night2").resolve())}
        unit = run["units"][0]
        assert unit["failures"][0]["kind"] == "context_window" and unit["failures"][0]["tickets"] == 2
        assert {m["id"] for m in unit["failures"][0]["latest"]} == set(FAILING)
        assert unit["latency_ms"]["n"] == 38 and unit["latency_ms"]["p50"] > 0
        assert sum(unit["series"]["results"]) == 38
        assert unit["requests"] == 40

        # graded once stopped, compared with night1 (diffing's numbers); then also in the listing
        async def graded() -> Any:
            body = await (await client.get("/api/runs/night2")).json()
            return body["grading"]
        grading = await until(graded, what="grading of night2")
        assert grading["previous"] == "night1"
        model = grading["models"][0]
        assert 0 < model["accuracy"] <= 1 and model["graded"] == 38
        assert sum(map(sum, model["confusion"]["matrix"])) == 38
        pair = grading["diff"][0]
        assert pair["answered"] == {"a": 18, "b": 38, "both": 18, "only_a": 0, "only_b": 20}
        assert pair["changed"]["examples"] == []  # answers stay off the page without --show-text
        listing = await (await client.get("/api/runs")).json()
        assert listing["runs"][0]["accuracy"] == model["accuracy"]


async def test_api_refuses_names_outside_the_runs_directory(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs / "ok")
    secret = _fake_run(tmp_path / "outside", job="secret_job")
    (runs / "link").symlink_to(secret)  # a symlink to a run elsewhere is not served
    _fake_run(runs / "sneaky").joinpath("manifest.json").unlink()
    (runs / "sneaky" / "manifest.json").symlink_to(secret / "manifest.json")
    root = RunsRoot(runs)
    assert root.names() == ["ok"]
    for bad in ("..", ".", "../outside", "/etc", "ok/..", "a/b", "", "link", "x\x00y", "..%2Foutside"):
        with pytest.raises(UnsafeName):
            root.resolve(bad)
    async with serving(runs) as client:
        for path in ("/api/runs/..", "/api/runs/%2e%2e", "/api/runs/..%2Foutside", "/api/runs/%2Fetc",
                     "/api/runs/link", "/api/runs/link/events", "/runs/link", "/runs/%2e%2e%2Foutside",
                     "/api/runs/sneaky", "/static/..%2F..%2Fapp.py", "/static/../app.py"):
            response = await client.get(path)
            body = await response.text()
            assert response.status in (400, 403, 404), (path, response.status)
            assert "secret_job" not in body and "aiohttp" not in body.split("\n")[0]
        listing = await (await client.get("/api/runs")).json()
        assert [r["name"] for r in listing["runs"]] == ["ok"]


async def test_no_key_and_no_answer_text_on_pages_unless_show_text(tmp_path):
    runs = tmp_path / "runs"
    run = _fake_run(runs / "r")
    key = "sk-live1234567890abcdefSECRET"
    (run / "errors.jsonl").write_bytes(
        _line(1, error_kind="auth", message=f"Incorrect API key provided: {key}", attempts=1, run=1)
        + _line(2, error_kind="invalid_output", message="answer 'PRIVATE ANSWER TEXT' is not a label", attempts=3,
                run=1))
    (run / "results.jsonl").write_bytes(_line(3, output="another private answer", attempts=1, run=1))
    async with serving(runs) as client:
        text = await (await client.get("/api/runs/r")).text()
        assert key not in text and "PRIVATE ANSWER" not in text and "another private answer" not in text
        assert "auth" in text and "invalid_output" in text
    async with serving(runs, show_text=True) as client:
        text = await (await client.get("/api/runs/r")).text()
        assert key not in text  # never, even with --show-text
        assert "PRIVATE ANSWER TEXT" in text and "another private answer" in text


async def test_compare_directories_and_batch_parts(tmp_path):
    runs = tmp_path / "runs"
    for key, state in (("cheap", "done"), ("strong", "interrupted")):
        unit = _fake_run(runs / "cmp" / "models" / key, state=state, job="compare_models")
        (unit / "results.jsonl").write_bytes(_line(1, output="bug", cost_usd=0.5, attempts=1, run=1))
    (runs / "cmp" / "models" / "cheap" / "batches.json").write_bytes(orjson.dumps(
        {"parts": [{"part": 1, "status": "completed", "request_counts": {"total": 5, "completed": 5, "failed": 0}},
                   {"part": 2, "status": "in_progress", "request_counts": {"total": 5, "completed": 1, "failed": 0}}]}))
    async with serving(runs) as client:
        run = await (await client.get("/api/runs/cmp")).json()
        assert run["kind"] == "compare" and run["models"] == ["cheap", "strong"]
        assert run["state"] == "interrupted" and run["done"] == 2 and run["cost_usd"] == 1.0
        cheap, strong = run["units"]
        assert [p["state"] for p in cheap["batches"]] == ["completed", "in_progress"]
        assert cheap["batches"][1]["completed"] == 1 and strong["batches"] is None


# --------------------------------------------------------------------------------------------
# The event stream
# --------------------------------------------------------------------------------------------


@pytest.mark.slow  # watches a 160-ticket run at 40 ms
async def test_events_arrive_while_a_run_writes(make_job, tmp_path, slow_serve_sim, cli_env):
    job = make_job(160, concurrency=2)
    runs = tmp_path / "runs"
    proc = start_job(job, slow_serve_sim, runs / "live", cli_env)
    try:
        await until(lambda: (runs / "live" / "results.jsonl").exists(), what="the run's first result")
        async with serving(runs) as client:
            response = await client.get("/api/runs/live/events")
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
            seen: list[tuple[str, int]] = []
            async with asyncio.timeout(120):
                async for event in sse_events(response):
                    seen.append((event["state"], event["done"]))
                    if event["state"] != "running" and event["done"] == 160:
                        break
            response.close()
    finally:
        proc.wait(timeout=120)
    running = [done for state, done in seen if state == "running"]
    assert len(set(running)) >= 3, seen  # the count rose while the run was writing
    assert running == sorted(running) and running[0] < 160  # (the last may be 160: written before the lock is let go)
    assert seen[-1] == ("finished", 160)


async def test_a_closed_stream_is_cleaned_up(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs / "r")
    async with serving(runs) as client:
        hub = client.server.app[HUB_KEY]
        streams = []
        for _ in range(3):
            response = await client.get("/api/runs/r/events")
            first = await anext(sse_events(response))
            assert first["name"] == "r"
            streams.append(response)
        assert len(hub.subscribers["r"]) == 3 and len(hub.followers) == 1  # one follower for every page
        streams[0].close()
        await until(lambda: len(hub.subscribers.get("r", ())) == 2, 10, "first stream dropped")
        assert not hub.followers["r"].done()
        for response in streams[1:]:
            response.close()
        await until(lambda: not hub.subscribers and not hub.followers, 10, "every stream cleaned up")


# --------------------------------------------------------------------------------------------
# The token rule
# --------------------------------------------------------------------------------------------


def test_token_is_required_off_loopback_and_generated_when_not_given():
    assert serve_token("127.0.0.1", None) == (None, False)
    assert serve_token("localhost", None) == (None, False)
    assert serve_token("127.0.0.1", "mine") == ("mine", False)
    token, generated = serve_token("0.0.0.0", None)
    assert generated and len(token) >= 24 and token != serve_token("0.0.0.0", None)[0]
    assert serve_token("192.168.1.5", "mine") == ("mine", False)


async def test_every_request_needs_the_token_when_one_is_set(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs / "r")
    async with serving(runs, token="s3cret-token") as client:
        for path in ("/", "/runs/r", "/api/runs", "/api/runs/r", "/api/runs/r/events", "/static/app.js"):
            assert (await client.get(path)).status == 401, path
            assert (await client.get(path, params={"token": "wrong"})).status == 401, path
            assert (await client.get(path, headers={"Authorization": "Bearer s3cret-tokenX"})).status == 401
        assert (await client.get("/api/runs", params={"token": "s3cret-token"})).status == 200
        assert (await client.get("/api/runs/r", headers={"Authorization": "Bearer s3cret-token"})).status == 200
        assert (await client.get("/", headers={"X-Batchrun-Token": "s3cret-token"})).status == 200
        response = await client.get("/api/runs/r/events", params={"token": "s3cret-token"})
        assert response.status == 200 and (await anext(sse_events(response)))["name"] == "r"
        response.close()


def test_serve_command_off_loopback_prints_a_token_and_enforces_it(tmp_path, cli_env):
    import urllib.error
    import urllib.request

    runs = tmp_path / "runs"
    _fake_run(runs / "r")
    # 127.0.0.2 is loopback to the kernel but not one of the names the command trusts:
    # it takes the "any other host" path without listening beyond this machine
    proc = cli_popen(batchrun_cmd("serve", str(runs), "--host", "127.0.0.2", "--port", "0"), env=cli_env,
                     stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            match = re.search(r"(http://127\.0\.0\.2:\d+)/\?token=(\S+)", line)
            if match:
                url, token = match.groups()
            assert proc.poll() is None, proc.stderr.read()
        assert url, "no URL printed"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/api/runs", timeout=10)
        assert refused.value.code == 401
        with urllib.request.urlopen(f"{url}/api/runs?token={token}", timeout=10) as answer:
            assert orjson.loads(answer.read())["runs"][0]["name"] == "r"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_help_has_an_example():
    out = invoke_cli("serve", "--help").stdout
    assert "batchrun serve runs --port 9000" in out and "--host" in out and "--token" in out


@pytest.mark.slow  # watches a 120-ticket run at 40 ms
def test_run_with_serve_shows_the_page_of_its_run_while_it_runs(make_job, tmp_path, slow_serve_sim, cli_env):
    import urllib.error
    import urllib.request

    job = make_job(120, concurrency=2)
    run_dir = tmp_path / "runs" / "tonight"
    args = ["run", str(job), "--api-base", slow_serve_sim.base_url, "--run-dir", str(run_dir), "--no-progress",
            "--serve", "0"]
    proc = cli_popen(batchrun_cmd(*args), env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                     text=True)
    try:
        page = None
        deadline = time.monotonic() + 60
        while page is None and time.monotonic() < deadline:
            match = re.search(r"(http://127\.0\.0\.1:\d+)/runs/tonight\b", proc.stderr.readline())
            if match:
                page = match.group(1)
        assert page, "no page URL printed"
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{page}/api/runs/tonight", timeout=10) as answer:
                    status = orjson.loads(answer.read())
                if status["state"] == "running":
                    break
            except urllib.error.HTTPError:  # 404 until the run has written its manifest
                pass
            time.sleep(0.1)
        assert status is not None and status["state"] == "running" and status["tickets"] == 120
    finally:
        proc.stderr.read()
        assert proc.wait(timeout=180) == 0
    with pytest.raises(OSError):  # the server ended with the run
        urllib.request.urlopen(f"{page}/api/runs", timeout=5)
