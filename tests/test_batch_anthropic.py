"""Batch mode on Anthropic's Message Batches (AnthropicBatchAPI) against the simulator's
/v1/messages/batches, on the contract of tests/test_batch_mode.py: every ticket ends exactly once
in results.jsonl or errors.jsonl, the simulator created exactly one batch per part recorded in
batches.json, a kill -9 at any step then the same command again changes neither, and the answers
cost half what the same tickets cost online at Anthropic's prices.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from conftest import batchrun_cmd, cli_run, crashing_batchrun_cmd, read_jsonl
from test_batch_refusals import assert_one_line
from test_batch_mode import (
    WINDOW_FAST,
    assert_exactly_once,
    assert_one_batch_per_part,
    batch_stats,
    ledger_parts,
    start,
    ticket_ids,
)

pytestmark = pytest.mark.slow

pytest.importorskip("anthropic")

MODEL = "anthropic/claude-haiku-4-5"


def claude_job(make_job: Any, n: int, *, top: str = "", extra: str = "") -> Path:
    return make_job(n, model=MODEL, top='mode = "batch"\nbatch_poll_s = 0.05\nbatch_poll_max_s = 0.2\n' + top,
                    extra=extra)


def claude_api(sim: Any, job: Any = None, **kwargs: Any) -> Any:
    from batchrun.providers.anthropic_batch import AnthropicBatchAPI

    return AnthropicBatchAPI(model=MODEL, api_base=sim.base_url, api_key="sim-key", timeout_s=10,
                             prices=job.prices if job is not None else None, **kwargs)


def run_inprocess(job_path: Path, sim: Any, *, no_wait: bool = False, stop_submitting: bool = False,
                  time_scale: float = 86400.0, **overrides: Any) -> Any:
    from batchrun.batch.run import execute_batch_run
    from batchrun.execution.preparation import prepare_run
    from batchrun.job.spec import load_job

    job = load_job(job_path)
    if overrides:
        job = job.with_overrides(**overrides)
    prep = prepare_run(job, job_path=job_path, endpoint="simulator")
    try:
        api = claude_api(sim, job)
        return anyio.run(lambda: execute_batch_run(prep, {"": api}, no_wait=no_wait,
                                                   stop_submitting=stop_submitting, time_scale=time_scale))
    finally:
        prep.release()


def online_cost_at_anthropic_prices(results: list[dict[str, Any]]) -> float:
    from batchrun.providers.litellm_setup import import_litellm

    lm = import_litellm()
    total = 0.0
    for line in results:
        prompt, completion = lm.cost_per_token(model=MODEL, prompt_tokens=line["usage"]["prompt_tokens"],
                                               completion_tokens=line["usage"]["completion_tokens"])
        total += prompt + completion
    return total


# -- the happy path, cost ---------------------------------------------------------------------


def test_claude_batch_answers_as_online_at_half_the_anthropic_price(make_job, tmp_path):
    from batchrun.execution.engine import execute_run
    from batchrun.execution.preparation import prepare_run
    from batchrun.job.spec import load_job
    from batchrun.providers.online import LiteLLMProvider

    job_path = claude_job(make_job, 60)
    with start() as sim:
        result = run_inprocess(job_path, sim)
        assert (result.state, result.exit_code) == ("done", 0), result.error
        results, errors = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert not errors
        assert_one_batch_per_part(sim, tmp_path / "run")
        assert {r["cost_status"] for r in results} == {"litellm_batch"}
        assert {r["cost_source"] for r in results} == {"price_map"}  # as LiteLLMBatchAPI's lines say
        assert all(r["usage"]["total_tokens"] > 0 and r["attempts"] == 1 for r in results)
        assert all((r["usage"]["cached_tokens"], r["usage"]["cache_write_tokens"]) == (0, 0)
                   for r in results)  # Anthropic's counts as issue 25's fields; batch answers cache nothing here
        assert batch_stats(sim)["calls"].get("files") is None  # nothing uploaded: the requests go inline
        # the same tickets online, on the same simulator (its chat endpoint)
        online = load_job(job_path).with_overrides(mode="online", run_dir=tmp_path / "online")
        prep = prepare_run(online, endpoint="simulator")
        try:
            provider = LiteLLMProvider(model="openai/claude-haiku-4-5", api_base=sim.base_url, api_key="sim-key",
                                       params=online.params)
            anyio.run(lambda: execute_run(prep, provider))
        finally:
            prep.release()
    online_results = read_jsonl(tmp_path / "online" / "results.jsonl")
    assert {r["id"]: r["output"] for r in results} == {r["id"]: r["output"] for r in online_results}
    assert {r["id"]: (r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]) for r in results} == \
        {r["id"]: (r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]) for r in online_results}
    ratio = sum(r["cost_usd"] for r in results) / online_cost_at_anthropic_prices(online_results)
    print(f"batch / online at Anthropic's prices: {ratio:.6f}")
    assert abs(ratio - 0.5) < 1e-9


def test_parts_stay_within_anthropics_limits_and_the_jobs(make_job, tmp_path, monkeypatch):
    from batchrun.providers.anthropic_batch import AnthropicBatchAPI

    job_path = claude_job(make_job, 25, top="batch_max_requests = 10\n")
    with start() as sim:
        assert run_inprocess(job_path, sim).state == "done"
        assert [p["tickets"] for p in ledger_parts(tmp_path / "run")] == [10, 10, 5]
        assert_one_batch_per_part(sim, tmp_path / "run")
    monkeypatch.setattr(AnthropicBatchAPI, "max_requests", 7)  # the provider's limit under the job's
    (tmp_path / "job.toml").write_text(job_path.read_text().replace('run_dir = "run"', 'run_dir = "run2"'))
    with start() as sim:
        assert run_inprocess(job_path, sim).state == "done"
        assert [p["tickets"] for p in ledger_parts(tmp_path / "run2")] == [7, 7, 7, 4]
        assert_exactly_once(tmp_path / "run2", ticket_ids(job_path))


def test_ticket_ids_anthropic_refuses_come_back_under_their_own_ids(make_job, tmp_path):
    job_path = claude_job(make_job, 6)
    lines = [orjson.loads(line) for line in (tmp_path / "tickets.jsonl").read_bytes().splitlines()]
    awkward = ["ticket 1", "t.2", "é3", "x" * 70, "T-5", "ok_6"]
    (tmp_path / "tickets.jsonl").write_bytes(b"".join(orjson.dumps({**line, "id": i}) + b"\n"
                                                      for line, i in zip(lines, awkward)))
    with start() as sim:
        assert run_inprocess(job_path, sim).state == "done"
        results, _ = assert_exactly_once(tmp_path / "run", awkward)
    assert all(r["output"] for r in results)


# -- faults of the batch -------------------------------------------------------------------------


@pytest.mark.parametrize("fault, status", [
    ("fail_lines:batches=1,rate=0.3", "completed"),
    ("expire:batches=1,rate=0.4", "expired"),
    ("all_failed:batches=1", "completed"),
])
def test_errored_and_expired_requests_are_resubmitted_in_a_new_part_once(make_job, tmp_path, fault, status):
    job_path = claude_job(make_job, 40)
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
        if fault.startswith("expire"):  # the answered 40% are kept, only the rest asked again
            assert parts[1]["tickets"] == 24 and len(lines) == 40 and set(lines.values()) == {1}
        if fault.startswith("all_failed"):
            assert parts[0]["counts"]["errored"] == 40


def test_requests_anthropic_refuses_end_in_errors_without_a_retry(make_job, tmp_path):
    # max_tokens = 0 is refused by Anthropic (and by the simulator) per request: invalid_request_error
    job_path = claude_job(make_job, 5, top="unchecked_params = [\"max_tokens\"]\n")
    job_path.write_text(job_path.read_text().replace("max_tokens = 5", "max_tokens = 0"))
    with start() as sim:
        result = run_inprocess(job_path, sim)
        assert (result.state, result.exit_code) == ("done", 3)
        _, errors = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert {(e["error_kind"], e["status_code"], e["attempts"]) for e in errors} == {("bad_request", 400, 1)}
        assert "max_tokens" in errors[0]["message"]
        assert len(ledger_parts(tmp_path / "run")) == 1


def test_a_batch_anthropic_refuses_at_create_stops_the_run_in_one_line(make_job, tmp_path, cli_env):
    job_path = claude_job(make_job, 10)
    with start(batch_faults=("invalid:batches=1",)) as sim:
        refused = cli_run(batchrun_cmd("run", str(job_path), "--api-base", sim.base_url, "--no-progress"),
                          env=cli_env, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2, refused.stderr[-2000:]  # as a 400 from any files/batches endpoint
        assert_one_line(refused, f"POST {sim.root_url}/v1/messages/batches answered HTTP 400", "simulated fault",
                        "re-run the same command")
        manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
        assert manifest["state"] == "failed" and "simulated fault" in manifest["error"]
        assert batch_stats(sim)["batches_created"] == 0
        assert read_jsonl(tmp_path / "run" / "results.jsonl") == []
        assert [p["state"] for p in ledger_parts(tmp_path / "run")] == ["uploaded"]  # created on a re-run


@pytest.mark.parametrize("fault, code, expected", [
    ("401:endpoint=create", 4, ("POST {root}/v1/messages/batches answered HTTP 401", "check the key")),
    ("500:endpoint=retrieve", 1, ("GET {root}/v1/messages/batches/ID answered HTTP 500",
                                  "kept failing after the retries")),
])
def test_a_message_batches_endpoint_that_refuses_ends_in_one_line_with_the_online_exit_code(
        make_job, tmp_path, cli_env, fault, code, expected):
    job_path = claude_job(make_job, 10)
    with start(batch_faults=(fault,)) as sim:
        proc = cli_run(batchrun_cmd("run", str(job_path), "--api-base", sim.base_url, "--no-progress"),
                       env=cli_env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == code, proc.stderr[-2000:]
        assert_one_line(proc, *(text.format(root=sim.root_url) for text in expected))
        assert "sim-key" not in proc.stderr
        assert batch_stats(sim)["batches_created"] == (0 if code == 4 else 1)
        assert len(ledger_parts(tmp_path / "run")) == 1  # the ledger kept: the same command resumes


def test_a_part_in_progress_past_its_window_is_cancelled_and_the_rest_resubmitted(make_job, tmp_path):
    job_path = claude_job(make_job, 40)
    with start(batch_faults=("slow:batches=1,rate=0.5",), batch_time_scale=WINDOW_FAST) as sim:
        result = run_inprocess(job_path, sim, time_scale=WINDOW_FAST)
        assert result.state == "done"
        results, errors = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert not errors
        parts = ledger_parts(tmp_path / "run")
        assert parts[0]["status"] == "cancelled" and "past its window" in parts[0]["note"]
        assert parts[0]["counts"]["canceled"] == 20 and parts[1]["tickets"] == 20
        assert_one_batch_per_part(sim, tmp_path / "run")


# -- faults of the endpoints -----------------------------------------------------------------------


def test_429_and_5xx_on_every_endpoint_are_retried_without_duplicates(make_job, tmp_path):
    faults = ("429:endpoint=retrieve,calls=1,retry_after=0.01", "503:endpoint=content,calls=1",
              "500:endpoint=create,calls=1", "500:endpoint=list,calls=1")
    job_path = claude_job(make_job, 20)
    with start(batch_faults=faults) as sim:
        assert run_inprocess(job_path, sim).state == "done"
        assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        stats = batch_stats(sim)
        assert stats["batches_created"] == 1 and stats["calls"]["create"] == 2
        assert stats["calls"]["list"] == 2  # the failed create was looked for (its listing retried once)
        assert set(stats["lines_by_ticket"].values()) == {1}


def test_a_create_whose_answer_was_lost_is_found_by_time_and_count_not_created_again(make_job, tmp_path,
                                                                                     monkeypatch):
    from batchrun.batch import run as batch_mode

    monkeypatch.setattr(batch_mode, "LIST_PAGE", 1)  # adoption pages through the listing
    job_path = claude_job(make_job, 20, top="batch_max_requests = 10\n")
    with start(batch_faults=("create_lost:calls=2",)) as sim:
        assert run_inprocess(job_path, sim).state == "done"
        assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        stats = batch_stats(sim)
        # part 1's batch has the same size and time: it is recorded for part 1, so not adopted twice
        assert stats["batches_created"] == 2 == len(ledger_parts(tmp_path / "run"))
        assert stats["calls"]["create"] == 2
        assert len({p["batch_id"] for p in ledger_parts(tmp_path / "run")}) == 2
        assert set(stats["lines_by_ticket"].values()) == {1}


def test_cancel_keeps_what_completed_and_the_next_run_collects_the_rest(make_job, tmp_path):
    from batchrun.batch.cancel import cancel_batches

    job_path = claude_job(make_job, 40)
    with start(batch_faults=("slow:batches=1,rate=0.5",), batch_time_scale=3600.0) as sim:
        assert run_inprocess(job_path, sim, no_wait=True).state == "submitted"
        asked = anyio.run(lambda: cancel_batches(tmp_path / "run", {"": claude_api(sim)}))
        assert [p["number"] for p in asked] == [1]
        result = run_inprocess(job_path, sim, time_scale=3600.0)
        assert result.state == "done"
        results, _ = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert sum(1 for r in results if r["attempts"] == 1) == 20  # answered before the cancel: kept
        assert_one_batch_per_part(sim, tmp_path / "run")
        again = anyio.run(lambda: cancel_batches(tmp_path / "run", {"": claude_api(sim)}))
        assert again == []  # nothing running


def test_finish_online_cancels_the_running_part_and_leaves_the_rest_pending(make_job, tmp_path):
    job_path = claude_job(make_job, 40)
    with start(batch_faults=("slow:batches=1,rate=0.5",), batch_time_scale=3600.0) as sim:
        assert run_inprocess(job_path, sim, no_wait=True).state == "submitted"
        result = run_inprocess(job_path, sim, stop_submitting=True, time_scale=3600.0)
        assert result.state == "done"
        assert len(read_jsonl(tmp_path / "run" / "results.jsonl")) == 20
        assert read_jsonl(tmp_path / "run" / "errors.jsonl") == []
        assert batch_stats(sim)["batches_created"] == 1  # nothing resubmitted: the rest goes online


# -- the commands, end to end --------------------------------------------------------------------

SIM = """
[simulator]
latency_ms = 0
jitter = 0
batch_time_scale = {scale}
batch_duration_s = 1800
"""


def test_no_wait_status_cancel_finish_online_with_the_embedded_simulator(make_job, tmp_path, cli_env):
    job = claude_job(make_job, 40, extra=SIM.format(scale=3600.0) + '[[simulator.batch_faults]]\nkind = "slow"\n'
                                                                  'batches = [1]\nrate = 0.5\n')
    first = cli_run(batchrun_cmd("run", str(job), "--no-wait", "--no-progress"), env=cli_env,
                    capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    status = cli_run(batchrun_cmd("status", str(tmp_path / "run")), env=cli_env, capture_output=True,
                     text=True, timeout=120)
    parts = status.stdout.split("batch parts:\n", 1)[1].splitlines()
    assert parts[2].split()[:4] == ["1", "-", "submitted", "in_progress"] and "msgbatch_" in parts[2]
    cancel = cli_run(batchrun_cmd("cancel", str(tmp_path / "run")), env=cli_env, capture_output=True,
                     text=True, timeout=300)
    assert cancel.returncode == 0, cancel.stderr
    assert "part 1" in cancel.stdout and "1 part(s) asked to cancel" in cancel.stdout
    finish = cli_run(batchrun_cmd("run", str(job), "--finish-online", "--no-progress"), env=cli_env,
                     capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    results, _ = assert_exactly_once(tmp_path / "run", ticket_ids(job))
    assert sum(1 for r in results if r["cost_status"] == "litellm_batch") == 20  # answered by the batch
    state = orjson.loads((tmp_path / "run" / "simulator-batches" / "state.json").read_bytes())
    assert len(state["batches"]) == 1 and state["batches"][0]["api"] == "anthropic"
    # batchrun serve shows the part, as for any provider
    from test_serve import serving

    async def served() -> dict[str, Any]:
        async with serving(tmp_path) as client:
            return await (await client.get("/api/runs/run")).json()

    page = anyio.run(served)
    parts = page["units"][0]["batches"]
    assert [(p["state"], p["requests"], p["completed"]) for p in parts] == [("collected", 40, 20)]


# -- kill -9 at every step, then run again ---------------------------------------------------------


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
    job_path = claude_job(make_job, 300, top="batch_max_requests = 200\n")
    with start(batch_faults=(fault,) if fault else (), batch_time_scale=WINDOW_FAST) as sim:
        args = ("run", str(job_path), "--api-base", sim.base_url, "--no-progress")
        killed = cli_run(crashing_batchrun_cmd(point, *args), env=cli_env, capture_output=True, timeout=300)
        assert killed.returncode == -9, killed.stderr.decode()[-2000:]
        again = cli_run(batchrun_cmd(*args), env=cli_env, capture_output=True, timeout=300)
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        _, errors = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert not errors
        assert_one_batch_per_part(sim, tmp_path / "run")
        parts = ledger_parts(tmp_path / "run")
        assert sum(p["tickets"] for p in parts) == 300 + (sum(p["retry"] for p in parts))
        calls = batch_stats(sim)["calls"]
        assert calls["create"] == len(parts)  # no create was sent twice
        if point == "created":  # the batch made before the kill was found by listing, not made again
            assert calls["list"] >= 1


def test_without_the_sdk_the_run_stops_before_sending_anything_naming_the_install(make_job, tmp_path, cli_env):
    shadow = tmp_path / "no_sdk" / "anthropic"  # an `anthropic` that cannot be imported, first on the path
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('simulated: the anthropic SDK is not installed')\n")
    env = {**cli_env, "PYTHONPATH": str(tmp_path / "no_sdk") + ":" + cli_env["PYTHONPATH"]}
    job = claude_job(make_job, 3, extra=SIM.format(scale=86400.0))
    # a real interpreter: PYTHONPATH must shadow the SDK before anything imports it (not the warm process)
    refused = subprocess.run(batchrun_cmd("run", str(job), "--no-progress"), env=env, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "pip install 'batchrun[anthropic]'" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "run" / "batches.json").exists()


def test_prompt_cache_marks_the_batch_requests_as_online_and_the_run_completes(make_job, tmp_path, cli_env):
    job_path = claude_job(make_job, 12, top="prompt_cache = true\n")
    with start() as sim:  # through the command line: the launcher builds the BatchAPI from the job
        done = cli_run(batchrun_cmd("run", str(job_path), "--api-base", sim.base_url, "--no-progress"),
                       env=cli_env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert_one_batch_per_part(sim, tmp_path / "run")
    sent = read_jsonl(tmp_path / "run" / "batch" / "part-0001.jsonl")  # the requests, as posted
    assert len(sent) == 12
    assert all(line["params"]["system"][-1]["cache_control"] == {"type": "ephemeral"} for line in sent)


# -- answers pass the job's checks, as online -----------------------------------------------------

TOOL = """
[[tools]]
type = "function"

[tools.function]
name = "file_ticket"
description = "File the ticket under one label."

[tools.function.parameters]
type = "object"
additionalProperties = false
required = ["label"]

[tools.function.parameters.properties.label]
type = "string"
enum = ["bug", "feature", "billing", "other"]
"""

SCHEMA = """
[json_schema]
type = "object"
additionalProperties = false
required = ["label"]

[json_schema.properties.label]
type = "string"
enum = ["bug", "feature", "billing", "other"]
"""


@pytest.mark.parametrize("kind", ["labels", "tools", "json_schema"])
def test_answers_pass_the_jobs_label_schema_and_tool_checks(make_job, tmp_path, kind):
    top = {"labels": 'labels = ["bug", "feature", "billing", "other"]\n',
           "tools": 'tool_choice = { type = "function", function = { name = "file_ticket" } }\n',
           "json_schema": ""}[kind]
    job_path = claude_job(make_job, 12, top=top, extra={"labels": "", "tools": TOOL, "json_schema": SCHEMA}[kind])
    job_path.write_text(job_path.read_text().replace("max_tokens = 5", "max_tokens = 60"))
    with start() as sim:
        assert run_inprocess(job_path, sim).state == "done"
        results, errors = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        betas = batch_stats(sim)["anthropic_betas"]
    assert not errors
    # the beta litellm sends online with a JSON schema (structured output) goes with the create
    assert betas == (["structured-outputs-2025-11-13"] if kind == "json_schema" else [None])
    labels = {"bug", "feature", "billing", "other"}
    if kind == "labels":
        assert {r["label"] for r in results} <= labels
    elif kind == "tools":
        assert all(r["tool_calls"][0]["name"] == "file_ticket" and r["tool_calls"][0]["arguments"]["label"] in labels
                   for r in results)
    else:
        assert all(r["parsed"]["label"] in labels for r in results)


def test_invalid_answers_are_asked_again_within_max_invalid_output_retries(make_job, tmp_path):
    job_path = claude_job(make_job, 8, top='labels = ["yes", "no"]\nmax_invalid_output_retries = 1\n')
    with start(batch_time_scale=WINDOW_FAST) as sim:
        result = run_inprocess(job_path, sim, time_scale=WINDOW_FAST)
        _, errors = assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert {(e["error_kind"], e["attempts"], e["rejected_outputs"]) for e in errors} == {("invalid_output", 2, 2)}
        assert all(e["rejected_cost_usd"] > 0 for e in errors)
        assert len(ledger_parts(tmp_path / "run")) == 2 and result.exit_code == 3


def test_the_budget_is_never_passed_and_the_next_run_continues(make_job, tmp_path):
    job_path = claude_job(make_job, 40, top="max_cost_usd = 0.002\n")
    with start() as sim:
        first = run_inprocess(job_path, sim)
        assert (first.state, first.exit_code) == ("budget_exhausted", 5)
        spent = sum(r["cost_usd"] for r in read_jsonl(tmp_path / "run" / "results.jsonl"))
        done = len(read_jsonl(tmp_path / "run" / "results.jsonl"))
        print(f"budget $0.002: {done} of 40 tickets done for ${spent:.6f}")
        assert 0 < done < 40 and spent <= 0.002  # parts built while others ran reserved their estimates
        assert sum(p["tickets"] for p in ledger_parts(tmp_path / "run")) == done
        assert all(p["estimate_usd"] > 0 for p in ledger_parts(tmp_path / "run"))
        assert_one_batch_per_part(sim, tmp_path / "run")
        job_path.write_text(job_path.read_text().replace("max_cost_usd = 0.002", "max_cost_usd = 1.0"))
        second = run_inprocess(job_path, sim)
        assert second.state == "done"
        assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
        assert_one_batch_per_part(sim, tmp_path / "run")
