"""Worker processes: exactly-once results through several event loops, the
wire format, and a crashed child failing the run cleanly (resumable)."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import anyio
from batchrun import execute_run, load_job, prepare_run
from batchrun.errors import BatchrunError
from batchrun.records import Completion, Outcome, ToolCall, Usage
import orjson
import pytest
from types import MappingProxyType

from batchrun.execution.executors.frames import (
    decode_frames,
    encode,
    outcome_from_wire,
)
from conftest import read_jsonl


def provider_kwargs(sim) -> dict:
    return {"model": "openai/gpt-4o-mini", "api_base": sim.base_url, "api_key": "sim-key",
            "params": {"max_tokens": 5, "temperature": 0}, "prices": None}


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"batchrun.execution.executors.worker_child" in cmdline:
            found.append(int(entry.name))
    return found


def test_outcome_wire_round_trip_keeps_every_field():
    outcome = Outcome(ticket_id="T1", attempts=2, started_at="a", finished_at="b", elapsed_ms=12.5, run=3,
                      completion=Completion(text="x", finish_reason="tool_calls", model="m", usage=Usage(1, 2, 3),
                                            cost_usd=0.5, cost_status="litellm",
                                            tool_calls=(ToolCall(name="route", arguments={"team": "a"}),),
                                            ttft_ms=4.0, usage_source="estimated"),
                      latency_ms=9.0, structured={"label": "bug"})
    assert outcome_from_wire(dataclasses.asdict(outcome)) == outcome


def test_a_record_sent_as_it_is_reads_back_equal_and_matches_asdict():
    # the children put the Outcome itself in the frame (orjson writes dataclasses): the wire must be
    # what dataclasses.asdict gives, headers of any Mapping type included
    outcome = Outcome(ticket_id="T1", attempts=1, started_at="a", finished_at="b", elapsed_ms=1.0, run=1,
                      completion=Completion(text="ok", finish_reason="stop", model="m", usage=Usage(1, 2, 3),
                                            cost_usd=None, cost_status="unpriced_model",
                                            tool_calls=(ToolCall(name="f", arguments="{}", id="c1"),),
                                            rate_limit_headers=MappingProxyType({"x-ratelimit-remaining-requests": "9"})),
                      structured={"parsed": {"a": [1, 2]}}, attempts_by_model={"cheap": 1})
    frame = encode({"t": "outcome", "outcome": outcome})
    (message,) = decode_frames(bytearray(frame))
    plain = dataclasses.replace(outcome, completion=dataclasses.replace(
        outcome.completion, rate_limit_headers={"x-ratelimit-remaining-requests": "9"}))
    assert message["outcome"] == orjson.loads(orjson.dumps(dataclasses.asdict(plain)))
    back = outcome_from_wire(message["outcome"])
    assert back.completion.rate_limit_headers == {"x-ratelimit-remaining-requests": "9"}
    assert back == outcome
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode({"t": "x", "value": object()})


def test_frames_split_anywhere_come_out_whole_and_in_order():
    frames = [encode({"t": "want", "id": f"T{i}", "text": "é" * i}) for i in range(5)]
    stream = b"".join(frames)
    for cut in range(len(stream) + 1):
        buffer = bytearray()
        buffer += stream[:cut]
        got = decode_frames(buffer)
        buffer += stream[cut:]
        got += decode_frames(buffer)
        assert [m["id"] for m in got] == [f"T{i}" for i in range(5)] and buffer == b""


@pytest.mark.slow  # worker processes, each importing litellm
def test_two_worker_processes_give_exactly_once_results(make_job, tmp_path, sim):
    sim.reset()
    job = load_job(make_job(60, concurrency=8))
    prep = prepare_run(job, endpoint="sim")
    try:
        result = anyio.run(lambda: execute_run(prep, None, workers=2, provider_kwargs=provider_kwargs(sim)))
    finally:
        prep.release()
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert result.state == "done" and result.summary["done"] == 60 and result.summary["requests"] == 60
    # each child reports the CPU its start-up took (litellm's import: well over 0.1 s)
    assert result.summary["worker_startup_cpu_s"] > 0.1
    assert 0 < result.summary["startup_s"] < result.summary["wall_s"]
    assert len(rows) == 60 == len({r["id"] for r in rows})
    assert all(r["cost_status"] == "litellm" and r["usage"]["total_tokens"] > 0 for r in rows)
    counts = sim.stats()["requests_by_ticket"]
    assert len(counts) == 60 and set(counts.values()) == {1}
    assert children_of(os.getpid()) == []  # every child was reaped


@pytest.mark.slow  # worker processes, each importing litellm
def test_a_crashed_worker_fails_the_run_and_the_run_resumes(make_job, tmp_path, sim):
    job = load_job(make_job(80, concurrency=4))
    prep = prepare_run(job, endpoint="sim")
    killed: list[int] = []

    async def main():
        async with anyio.create_task_group() as tg:
            async def kill_a_child():
                results = tmp_path / "run" / "results.jsonl"
                while not (results.exists() and results.read_bytes().count(b"\n") >= 10):
                    await anyio.sleep(0.01)
                pid = children_of(os.getpid())[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

            tg.start_soon(kill_a_child)
            try:
                await execute_run(prep, None, workers=2, provider_kwargs=provider_kwargs(sim))
            except BatchrunError as exc:
                return exc
            finally:
                tg.cancel_scope.cancel()

    try:
        error = anyio.run(main)
    finally:
        prep.release()
    assert killed and "exited unexpectedly" in str(error) and "re-run to resume" in str(error)
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert '"state": "failed"' in manifest
    done_before = {r["id"] for r in read_jsonl(tmp_path / "run" / "results.jsonl")}
    assert 10 <= len(done_before) < 80

    prep = prepare_run(job, endpoint="sim")
    try:
        result = anyio.run(lambda: execute_run(prep, None, workers=2, provider_kwargs=provider_kwargs(sim)))
    finally:
        prep.release()
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert result.state == "done" and len(rows) == 80 == len({r["id"] for r in rows})


@pytest.mark.slow  # worker processes, each importing litellm
def test_two_worker_processes_with_a_rate_limit_and_429s_count_every_attempt(make_job, tmp_path):
    # rpm jobs ask the coordinator for a permit before every attempt (want/permit frames); a 429
    # with Retry-After comes back as a failed frame and is broadcast as a pause to both children
    from batchrun.sim.config import SimConfig
    from batchrun.sim.faults import FaultRule
    from batchrun.sim.process import start_simulator

    rules = (FaultRule.from_mapping({"kind": "429", "tickets": ["T000003", "T000007"], "attempts": [1],
                                     "retry_after": 0.05}),
             FaultRule.from_mapping({"kind": "503", "tickets": ["T000011"], "attempts": [1, 2]}))
    job = load_job(make_job(30, concurrency=6, top="rpm = 6000\n"))
    with start_simulator(SimConfig(latency_ms=2, jitter=0, faults=rules)) as sim:
        prep = prepare_run(job, endpoint="sim")
        try:
            result = anyio.run(lambda: execute_run(prep, None, workers=2, provider_kwargs=provider_kwargs(sim)))
        finally:
            prep.release()
        counts = sim.stats()["requests_by_ticket"]
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "run" / "results.jsonl")}
    assert result.state == "done" and len(rows) == 30
    assert counts["T000003"] == counts["T000007"] == 2 and counts["T000011"] == 3
    assert rows["T000003"]["attempts"] == 2 and rows["T000011"]["attempts"] == 3
    summary = result.summary
    assert summary["requests"] == sum(counts.values()) == 34
    assert summary["rate_limited"] == 2


@pytest.mark.slow  # worker processes, each importing litellm
def test_a_worker_pool_serves_run_after_run_with_the_same_processes(make_job, tmp_path, sim):
    # batchrun bench: the children import litellm once and every setting reuses them
    from batchrun.execution.executors.process import open_worker_pool

    job = load_job(make_job(40, concurrency=6))
    seen: list[set[int]] = []

    async def main():
        results = []
        async with open_worker_pool(max_connections=64) as pool:
            await pool.warm(2)
            for index in range(3):
                if index == 2:  # a child that died between runs is replaced, not reused
                    victim = next(child for child in pool.idle if child.process.pid == sorted(seen[-1])[0])
                    os.kill(victim.process.pid, signal.SIGKILL)
                    with anyio.fail_after(30):  # the pool has seen it die
                        while not victim.gone:
                            await anyio.sleep(0.01)
                prep = prepare_run(job.with_overrides(run_dir=tmp_path / f"run{index}"), endpoint="sim")
                try:
                    results.append(await execute_run(prep, None, workers=2, provider_kwargs=provider_kwargs(sim),
                                                     worker_pool=pool))
                finally:
                    prep.release()
                seen.append(set(children_of(os.getpid())))
        return results

    sim.reset()
    first, second, third = anyio.run(main)
    for index, result in enumerate((first, second, third)):
        rows = read_jsonl(tmp_path / f"run{index}" / "results.jsonl")
        assert result.state == "done" and len(rows) == 40 == len({r["id"] for r in rows})
        # the children report the CPU they spent on the run (the OS counts only children that ended)
        assert result.summary["worker_cpu_s"] > result.summary["worker_startup_cpu_s"] >= 0
    assert set(sim.stats()["requests_by_ticket"].values()) == {3}  # each ticket once per run
    assert len(seen[0]) == 2 and seen[1] == seen[0]  # the second run reused both processes
    assert len(seen[2] - seen[1]) == 1 and len(seen[2]) == 2  # the killed one was replaced
    # what each run's children spent starting (the replacement's litellm import) is a figure of
    # benchmarks/worker_startup.py, not a threshold here
    assert children_of(os.getpid()) == []  # the pool stopped its children


def test_a_worker_process_keeps_the_garbage_collector_out_of_the_request_path():
    # relax_gc changes the whole process's collector: check it in a process of its own
    import subprocess
    import sys

    code = ("import gc; from batchrun.execution.executors.worker_child import relax_gc, GC_GEN0_THRESHOLD; before = gc.get_threshold(); "
            "relax_gc(); after = gc.get_threshold(); "
            "assert after == (GC_GEN0_THRESHOLD,) + before[1:] and GC_GEN0_THRESHOLD > before[0], (before, after); "
            "assert gc.get_freeze_count() > 1000, gc.get_freeze_count(); print('ok')")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
