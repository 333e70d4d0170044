"""Batch mode against the simulator's Batch API, over HTTP, through litellm's batch functions.

Each test starts a simulator process with its own batch faults, runs the
job in batch mode (in this process, or as `batchrun run` subprocesses for
the kill -9 tests), and checks the contract: every ticket ends exactly once
in results.jsonl or errors.jsonl, and the simulator created exactly one
batch per part recorded in batches.json (resubmissions of failed tickets
being new parts).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from conftest import batchrun_cmd, cli_run, crashing_batchrun_cmd, read_jsonl

WINDOW_FAST = 86400.0 * 4  # batch_time_scale: a 24 h window passes in 0.25 s


def batch_stats(sim: Any) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(sim.root_url + "/sim/batch_stats", timeout=10) as response:
        return json.load(response)


def start(**config: Any) -> Any:
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    defaults = dict(latency_ms=0.0, jitter=0.0, batch_time_scale=86400.0, batch_duration_s=1800.0)
    return start_simulator(SimConfig(**{**defaults, **config}))


def batch_job(make_job: Any, n: int, *, top: str = "", extra: str = "") -> Path:
    return make_job(n, top='mode = "batch"\nbatch_poll_s = 0.05\nbatch_poll_max_s = 0.2\n' + top, extra=extra)


def run_inprocess(job_path: Path, sim: Any, *, no_wait: bool = False, stop_submitting: bool = False,
                  time_scale: float = 86400.0, **overrides: Any) -> Any:
    from batchrun.batch.run import execute_batch_run
    from batchrun.execution.preparation import prepare_run
    from batchrun.providers.batch_api import LiteLLMBatchAPI
    from batchrun.job.spec import load_job

    job = load_job(job_path)
    if overrides:
        job = job.with_overrides(**overrides)
    prep = prepare_run(job, job_path=job_path, endpoint="simulator")
    try:
        api = LiteLLMBatchAPI(model=job.model, api_base=sim.base_url, api_key="sim-key", timeout_s=10,
                              prices=job.prices)
        return anyio.run(lambda: execute_batch_run(prep, {"": api}, no_wait=no_wait,
                                                   stop_submitting=stop_submitting, time_scale=time_scale))
    finally:
        prep.release()


def ledger_parts(run_dir: Path) -> list[dict[str, Any]]:
    data = orjson.loads((run_dir / "batches.json").read_bytes())
    return [p for p in data["parts"] if p["state"] != "discarded"]


def assert_exactly_once(run_dir: Path, ids: list[str]) -> tuple[list[dict], list[dict]]:
    results = read_jsonl(run_dir / "results.jsonl")
    errors = read_jsonl(run_dir / "errors.jsonl")
    done = [r["id"] for r in results]
    failed = [e["id"] for e in errors]
    assert len(done) == len(set(done)), "a ticket is twice in results.jsonl"
    assert len(failed) == len(set(failed)), "a ticket is twice in errors.jsonl"
    assert not set(done) & set(failed), "a ticket is in results and errors"
    assert sorted(done + failed) == sorted(ids)
    return results, errors


def ticket_ids(job_path: Path) -> list[str]:
    return [str(t["id"]) for t in read_jsonl(job_path.parent / "tickets.jsonl")]


def assert_one_batch_per_part(sim: Any, run_dir: Path) -> None:
    assert batch_stats(sim)["batches_created"] == len(ledger_parts(run_dir))


# -- the happy path, cost, no-wait --------------------------------------------------------


@pytest.mark.slow  # batch mode through several simulator round trips
def test_batch_run_writes_online_shaped_results_at_half_the_online_price(make_job, tmp_path):
    from batchrun.execution.engine import execute_run
    from batchrun.execution.preparation import prepare_run
    from batchrun.providers.online import LiteLLMProvider
    from batchrun.job.spec import load_job

    job_path = batch_job(make_job, 60)
    with start() as sim:
        result = run_inprocess(job_path, sim)
        assert result.state == "done" and result.exit_code == 0
        results, errors = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert not errors
        assert_one_batch_per_part(sim, tmp_path / "run")
        assert {r["cost_status"] for r in results} == {"litellm_batch"}
        assert all(r["usage"]["total_tokens"] > 0 and r["attempts"] == 1 for r in results)
        # the same tickets online, on the same simulator
        online = load_job(job_path).with_overrides(mode="online", run_dir=tmp_path / "online")
        prep = prepare_run(online, endpoint="simulator")
        try:
            provider = LiteLLMProvider(model=online.model, api_base=sim.base_url, api_key="sim-key",
                                       params=online.params)
            anyio.run(lambda: execute_run(prep, provider))
        finally:
            prep.release()
    online_results = {r["id"]: r for r in read_jsonl(tmp_path / "online" / "results.jsonl")}
    assert {r["id"]: r["output"] for r in results} == {i: r["output"] for i, r in online_results.items()}
    batch_cost = sum(r["cost_usd"] for r in results)
    online_cost = sum(r["cost_usd"] for r in online_results.values())
    assert abs(batch_cost / online_cost - 0.5) <= 0.005


@pytest.mark.slow  # batch mode through several simulator round trips
def test_no_wait_submits_then_the_same_run_collects_without_resubmitting(make_job, tmp_path):
    job_path = batch_job(make_job, 30)
    with start(batch_time_scale=3600.0) as sim:
        first = run_inprocess(job_path, sim, no_wait=True)
        assert (first.state, first.exit_code) == ("submitted", 0)
        assert read_jsonl(tmp_path / "run" / "results.jsonl") == []
        manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
        assert manifest["state"] == "submitted" and manifest["batch"]["live"] == 1
        second = run_inprocess(job_path, sim)
        assert second.state == "done"
        assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        stats = batch_stats(sim)
        assert stats["batches_created"] == 1
        assert set(stats["lines_by_ticket"].values()) == {1}


@pytest.mark.slow  # batch mode through several simulator round trips
def test_parts_respect_request_and_byte_limits(make_job, tmp_path):
    job_path = batch_job(make_job, 25, top="batch_max_requests = 10\n")
    with start() as sim:
        assert run_inprocess(job_path, sim).state == "done"
        parts = ledger_parts(tmp_path / "run")
        assert [p["tickets"] for p in parts] == [10, 10, 5]
        assert_one_batch_per_part(sim, tmp_path / "run")
    job_path = batch_job(make_job, 25, top="batch_max_bytes = 4000\n")
    (tmp_path / "job.toml").write_text(job_path.read_text().replace('run_dir = "run"', 'run_dir = "run2"'))
    with start() as sim:
        assert run_inprocess(job_path, sim).state == "done"
        for part in ledger_parts(tmp_path / "run2"):
            assert part["bytes"] <= 4000
        assert len(ledger_parts(tmp_path / "run2")) > 1
        assert_exactly_once(tmp_path / "run2", ticket_ids(job_path))


# -- faults of the batch -----------------------------------------------------------------


@pytest.mark.slow  # batch mode through several simulator round trips
@pytest.mark.parametrize("fault, status", [
    ("fail_lines:batches=1,rate=0.3", "completed"),
    ("expire:batches=1,rate=0.4", "expired"),
    ("invalid:batches=1", "failed"),
    ("all_failed:batches=1", "completed"),
])
def test_a_faulty_part_is_resubmitted_in_a_new_part_once(make_job, tmp_path, fault, status):
    job_path = batch_job(make_job, 40)
    with start(batch_faults=(fault,), batch_time_scale=WINDOW_FAST) as sim:
        result = run_inprocess(job_path, sim, time_scale=WINDOW_FAST)
        assert result.state == "done", result.error
        results, errors = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert not errors
        parts = ledger_parts(tmp_path / "run")
        assert len(parts) == 2 and parts[0]["status"] == status
        first = {m["id"] for m in read_jsonl(tmp_path / "run" / "batch" / "part-0001.failed.jsonl")}
        assert parts[1]["tickets"] == len(first) > 0  # only the failed tickets went again
        assert {r["id"] for r in results if r["attempts"] == 2} == first
        assert_one_batch_per_part(sim, tmp_path / "run")
        lines = batch_stats(sim)["lines_by_ticket"]
        if fault.startswith("all_failed"):
            part1 = read_jsonl(tmp_path / "run" / "batch" / "part-0001.output.jsonl")
            assert part1 == [] and parts[0]["output_file_id"] is None and parts[0]["error_file_id"]
        if fault.startswith("expire"):  # the answered 40% are kept, only the rest asked again
            assert parts[1]["tickets"] == 24 and len(lines) == 40 and set(lines.values()) == {1}


@pytest.mark.slow  # batch mode through several simulator round trips
def test_tickets_that_keep_failing_end_in_errors_after_max_attempts(make_job, tmp_path):
    job_path = batch_job(make_job, 12)  # retry.max_attempts = 3
    with start(batch_faults=("fail_lines:rate=1",), batch_time_scale=WINDOW_FAST) as sim:
        result = run_inprocess(job_path, sim, time_scale=WINDOW_FAST)
        assert (result.state, result.exit_code) == ("done", 3)
        _, errors = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert {(e["error_kind"], e["attempts"], e["status_code"]) for e in errors} == {("server_error", 3, 500)}
        assert len(ledger_parts(tmp_path / "run")) == 3
        assert_one_batch_per_part(sim, tmp_path / "run")
        assert set(batch_stats(sim)["lines_by_ticket"].values()) == {3}


@pytest.mark.slow  # batch mode through several simulator round trips
def test_invalid_answers_are_asked_again_within_max_invalid_output_retries(make_job, tmp_path):
    job_path = batch_job(make_job, 8, top='labels = ["yes", "no"]\nmax_invalid_output_retries = 1\n')
    with start(batch_time_scale=WINDOW_FAST) as sim:
        result = run_inprocess(job_path, sim, time_scale=WINDOW_FAST)
        _, errors = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert {(e["error_kind"], e["attempts"], e["rejected_outputs"]) for e in errors} == {("invalid_output", 2, 2)}
        assert all(e["rejected_cost_usd"] > 0 for e in errors)
        assert len(ledger_parts(tmp_path / "run")) == 2
        assert result.exit_code == 3


@pytest.mark.slow  # batch mode through several simulator round trips
def test_a_part_in_progress_past_its_window_is_cancelled_and_the_rest_resubmitted(make_job, tmp_path):
    job_path = batch_job(make_job, 40)
    with start(batch_faults=("slow:batches=1,rate=0.5",), batch_time_scale=WINDOW_FAST) as sim:
        result = run_inprocess(job_path, sim, time_scale=WINDOW_FAST)
        assert result.state == "done"
        results, errors = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert not errors
        parts = ledger_parts(tmp_path / "run")
        assert parts[0]["status"] == "cancelled" and "past its window" in parts[0]["note"]
        assert parts[1]["tickets"] == 20
        assert_one_batch_per_part(sim, tmp_path / "run")


# -- faults of the endpoints -------------------------------------------------------------


@pytest.mark.slow  # batch mode through several simulator round trips
def test_429_and_5xx_from_files_and_batches_endpoints_are_retried_without_duplicates(make_job, tmp_path):
    faults = ("429:endpoint=files,calls=1,retry_after=0.01", "500:endpoint=retrieve,calls=1",
              "503:endpoint=content,calls=1", "500:endpoint=create,calls=1")
    job_path = batch_job(make_job, 20)
    with start(batch_faults=faults) as sim:
        assert run_inprocess(job_path, sim).state == "done"
        assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        stats = batch_stats(sim)
        assert stats["batches_created"] == 1
        assert stats["calls"]["files"] == 2 and stats["calls"]["create"] == 2 and stats["calls"]["content"] == 2


@pytest.mark.slow  # batch mode through several simulator round trips
def test_a_create_whose_answer_was_lost_is_adopted_by_listing_not_created_again(make_job, tmp_path, monkeypatch):
    from batchrun.batch import run as batch_mode

    monkeypatch.setattr(batch_mode, "LIST_PAGE", 1)  # adoption must page through the list
    job_path = batch_job(make_job, 20, top="batch_max_requests = 10\n")
    with start(batch_faults=("create_lost:calls=2",)) as sim:
        assert run_inprocess(job_path, sim).state == "done"
        assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        stats = batch_stats(sim)
        assert stats["batches_created"] == 2 == len(ledger_parts(tmp_path / "run"))
        assert stats["calls"]["create"] == 2  # no second create: the listing found it
        assert stats["calls"]["list"] == 1
        assert set(stats["lines_by_ticket"].values()) == {1}


@pytest.mark.slow  # batch mode through several simulator round trips
def test_adoption_pages_through_every_batch_and_filters_on_metadata(make_job, tmp_path, monkeypatch):
    from batchrun.batch import run as batch_mode

    job_path = batch_job(make_job, 30, top="batch_max_requests = 10\n")
    with start(batch_time_scale=3600.0) as sim:
        assert run_inprocess(job_path, sim, no_wait=True).state == "submitted"
        # the state a crash between creating part 1's batch and recording it leaves: uploaded, create tried
        ledger = orjson.loads((tmp_path / "run" / "batches.json").read_bytes())
        ledger["parts"][0].update(state="uploaded", batch_id=None, status=None)
        (tmp_path / "run" / "batches.json").write_bytes(orjson.dumps(ledger))
        monkeypatch.setattr(batch_mode, "LIST_PAGE", 1)
        assert run_inprocess(job_path, sim).state == "done"
        assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        stats = batch_stats(sim)
        assert stats["batches_created"] == 3 and stats["calls"]["list"] == 3  # part 1's batch is the oldest
        assert set(stats["lines_by_ticket"].values()) == {1}


@pytest.mark.slow  # batch mode through several simulator round trips
def test_cancel_keeps_what_completed_and_the_next_run_collects_the_rest(make_job, tmp_path):
    from batchrun.batch.cancel import cancel_batches
    from batchrun.providers.batch_api import LiteLLMBatchAPI

    job_path = batch_job(make_job, 40)
    with start(batch_faults=("slow:batches=1,rate=0.5",), batch_time_scale=3600.0) as sim:
        assert run_inprocess(job_path, sim, no_wait=True).state == "submitted"
        api = LiteLLMBatchAPI(model="openai/gpt-4o-mini", api_base=sim.base_url, api_key="sim-key", timeout_s=10)
        asked = anyio.run(lambda: cancel_batches(tmp_path / "run", {"": api}))
        assert [p["number"] for p in asked] == [1]
        result = run_inprocess(job_path, sim, time_scale=3600.0)
        assert result.state == "done"
        results, _ = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert sum(1 for r in results if r["attempts"] == 1) == 20  # answered before the cancel: kept
        assert_one_batch_per_part(sim, tmp_path / "run")


@pytest.mark.slow  # batch mode through several simulator round trips
def test_finish_online_cancels_the_running_part_and_leaves_the_rest_pending(make_job, tmp_path):
    job_path = batch_job(make_job, 40)
    with start(batch_faults=("slow:batches=1,rate=0.5",), batch_time_scale=3600.0) as sim:
        assert run_inprocess(job_path, sim, no_wait=True).state == "submitted"
        result = run_inprocess(job_path, sim, stop_submitting=True, time_scale=3600.0)
        assert result.state == "done"
        results = read_jsonl(tmp_path / "run" / "results.jsonl")
        assert len(results) == 20 and read_jsonl(tmp_path / "run" / "errors.jsonl") == []
        assert batch_stats(sim)["batches_created"] == 1  # nothing resubmitted: the rest goes online


# -- kill -9 at every step, then run again ------------------------------------------------


@pytest.mark.slow  # SIGKILL at each step of a 300-ticket batch run, then run again
@pytest.mark.parametrize("point, fault", [
    ("building:30", None),
    ("uploaded", None),
    ("created", None),
    ("polled", None),
    ("downloaded", None),
    ("writing", None),
    ("errors", "fail_lines:batches=1,rate=0.3"),
])
def test_kill_9_at_any_step_then_run_again_ends_each_ticket_exactly_once(make_job, tmp_path, cli_env, point, fault):
    job_path = batch_job(make_job, 300, top="batch_max_requests = 200\n")
    with start(batch_faults=(fault,) if fault else (), batch_time_scale=WINDOW_FAST) as sim:
        args = ("run", str(job_path), "--api-base", sim.base_url, "--no-progress")
        cmd = batchrun_cmd(*args)
        killed = cli_run(crashing_batchrun_cmd(point, *args), env=cli_env, capture_output=True, timeout=300)
        assert killed.returncode == -9, killed.stderr.decode()[-2000:]
        again = cli_run(cmd, env=cli_env, capture_output=True, timeout=300)
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        _, errors = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert not errors
        assert_one_batch_per_part(sim, tmp_path / "run")
        parts = ledger_parts(tmp_path / "run")
        assert sum(p["tickets"] for p in parts) == 300 + (sum(p["retry"] for p in parts))
