"""Batch output files are checked before they are believed (issue 24, point 7).

The simulator's `anomalies` batch fault writes an output file that begins with
a second, billed line for the first ticket answering "banana" (not a label),
and ends with a second, billed line for the second ticket with another label, a
line for a custom_id never submitted (billed), a line whose custom_id is null
and a line that is not JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import invoke_cli, read_jsonl
from test_batch_mode import assert_exactly_once, batch_job, run_inprocess, start, ticket_ids

LABELS = 'labels = ["bug", "feature", "billing", "other"]\n'


def _anomalies(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / "batch_anomalies.jsonl")


@pytest.mark.slow  # batch mode through the simulator
def test_unknown_duplicate_null_and_broken_lines_are_counted_reported_and_charged(make_job, tmp_path):
    from batchrun.analysis.stats import format_summary
    from batchrun.sim.batch_faults import BatchFault

    job_path = batch_job(make_job, 6, top=LABELS)
    run_dir = tmp_path / "run"
    with start(batch_faults=(BatchFault("anomalies"),)) as sim:
        result = run_inprocess(job_path, sim)
    assert result.state == "done", result.error
    results, errors = assert_exactly_once(run_dir, ticket_ids(job_path))
    by_id = {row["id"]: row for row in results}
    assert not errors and len(by_id) == 6
    first, second = by_id["T000001"], by_id["T000002"]
    # the "banana" line came first, but the answer kept is the one that passes the checks
    assert first["output"] != "banana" and first["label"] in ("bug", "feature", "billing", "other")
    # the second line for T000002 came after its first good one: the first good line is kept
    # each duplicate was billed: its cost is on the ticket's line, as a rejected answer
    for row in (first, second):
        assert row["rejected_outputs"] == 1 and row["rejected_cost_usd"] > 0, row
    anomalies = _anomalies(run_dir)
    kinds = sorted(a["kind"] for a in anomalies)
    assert kinds == ["duplicate", "duplicate", "non_json", "null_id", "unknown_id"], anomalies
    by_kind = {a["kind"]: a for a in anomalies}
    assert by_kind["unknown_id"]["custom_id"] == "ghost-1" and by_kind["unknown_id"]["billed_usd"] > 0
    assert by_kind["unknown_id"]["counted"] == "anomaly" and by_kind["null_id"]["custom_id"] is None
    assert "502 Bad Gateway" in by_kind["non_json"]["excerpt"]
    duplicates = {a["custom_id"]: a for a in anomalies if a["kind"] == "duplicate"}
    assert set(duplicates) == {"T000001", "T000002"} and duplicates["T000001"]["line"] == 1
    assert all(a["counted"] == "ticket" and a["billed_usd"] > 0 for a in duplicates.values())
    summary = result.summary
    assert summary["batch_anomalies"] == {"duplicate": 2, "non_json": 1, "null_id": 1, "unknown_id": 1}
    outside = by_kind["unknown_id"]["billed_usd"] + (by_kind["null_id"]["billed_usd"] or 0)
    assert summary["batch_anomalies_cost_usd"] == pytest.approx(outside)
    spent = sum(r["cost_usd"] + r.get("rejected_cost_usd", 0) for r in results)
    assert summary["cost_usd"] == pytest.approx(spent + outside)
    text = format_summary(summary)
    assert "2 duplicate line(s)" in text and "1 unknown custom_id(s)" in text and "batch_anomalies.jsonl" in text
    status = invoke_cli("status", str(run_dir))
    assert status.returncode == 0 and "batch output not believed" in status.stdout and "1 line(s) not JSON" in status.stdout
    as_json = invoke_cli("status", str(run_dir), "--json")
    import orjson

    info = orjson.loads(as_json.stdout)
    assert info["batch_anomalies"] == summary["batch_anomalies"]
    assert info["cost_usd"] == pytest.approx(spent + outside, abs=1e-6)
    ledger = orjson.loads((run_dir / "batches.json").read_bytes())
    assert ledger["parts"][0]["anomalies"] == summary["batch_anomalies"]


def test_a_kept_answer_does_not_depend_on_line_order(tmp_path):
    """The same lines in two orders keep the same answer: the first that passes the checks."""
    import orjson

    from batchrun.batch.outputs import PartOutputs
    from batchrun.job.spec import JobSpec
    from batchrun.providers.seam import BatchPrices

    from batchrun.providers.batch_api import LiteLLMBatchAPI

    api = LiteLLMBatchAPI(model="openai/gpt-4o-mini", api_key="sk-test")
    (tmp_path / "t.jsonl").write_text('{"id": "a", "text": "t"}\n')
    job = JobSpec.model_validate({"name": "j", "input": str(tmp_path / "t.jsonl"), "model": "openai/gpt-4o-mini",
                                  "labels": ["bug", "other"], "prompt": {"user": "{text}"}},
                                 context={"base_dir": tmp_path})

    def line(content: str) -> bytes:
        body = {"model": "m", "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}
        return orjson.dumps({"custom_id": "a", "response": {"status_code": 200, "body": body}}) + b"\n"

    kept = []
    for order in ([line("banana"), line("bug")], [line("bug"), line("banana")]):
        (tmp_path / "out.jsonl").write_bytes(b"".join(order))
        outputs = PartOutputs(job, 1, {"number": 1, "model_key": ""}, api, BatchPrices(1e-6, 1e-6, "job_prices"),
                              {"a": {"id": "a", "a": 1}}, "2026-01-01T00:00:00.000Z", 1.0)
        items = list(outputs.collect([tmp_path / "out.jsonl", tmp_path / "none.jsonl"]))
        assert len(items) == 1 and [a["kind"] for a in outputs.anomalies] == ["duplicate"]
        kept.append((items[0].completion.text, items[0].rejected_outputs, round(items[0].rejected_cost_usd, 9)))
    assert kept[0] == kept[1] == ("bug", 1, 1.1e-05)


@pytest.mark.slow  # kills a run
def test_a_kill_after_the_anomalies_are_written_does_not_write_them_twice(make_job, tmp_path, cli_env):
    import subprocess

    from batchrun.sim.batch_faults import BatchFault
    from conftest import batchrun_cmd, crashing_batchrun_cmd

    job_path = batch_job(make_job, 6, top=LABELS)
    with start(batch_faults=(BatchFault("anomalies"),)) as sim:
        args = ("run", str(job_path), "--api-base", sim.base_url, "--no-progress")
        killed = subprocess.run(crashing_batchrun_cmd("anomalies", *args), env=cli_env, capture_output=True,
                                timeout=300)
        assert killed.returncode == -9, killed.stderr.decode()[-2000:]
        assert len(_anomalies(tmp_path / "run")) == 5
        again = subprocess.run(batchrun_cmd(*args), env=cli_env, capture_output=True, timeout=300)
        assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert_exactly_once(tmp_path / "run", ticket_ids(job_path))
    assert sorted(a["kind"] for a in _anomalies(tmp_path / "run")) == [
        "duplicate", "duplicate", "non_json", "null_id", "unknown_id"]


def test_billed_batch_answers_whose_cost_is_unknown_are_counted_unpriced(tmp_path):
    """A duplicate or an unusable answer whose usage cannot be read was billed at a price nobody saw:
    the ticket's line counts it in rejected_unpriced, never as $0 alone."""
    import orjson

    from batchrun.batch.outputs import PartOutputs
    from batchrun.job.spec import JobSpec
    from batchrun.providers.batch_api import LiteLLMBatchAPI
    from batchrun.providers.seam import BatchPrices

    api = LiteLLMBatchAPI(model="openai/gpt-4o-mini", api_key="sk-test")
    (tmp_path / "t.jsonl").write_text('{"id": "a", "text": "t"}\n{"id": "b", "text": "t"}\n')
    job = JobSpec.model_validate({"name": "j", "input": str(tmp_path / "t.jsonl"), "model": "openai/gpt-4o-mini",
                                  "labels": ["bug", "other"], "prompt": {"user": "{text}"}},
                                 context={"base_dir": tmp_path})

    def line(cid: str, content: str | None, usage: object) -> bytes:
        body: dict[str, object] = {"model": "m", "usage": usage,
                                   "choices": [{"message": {"content": content}, "finish_reason": "stop"}]
                                   if content is not None else []}
        return orjson.dumps({"custom_id": cid, "response": {"status_code": 200, "body": body}}) + b"\n"

    good = {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
    (tmp_path / "out.jsonl").write_bytes(
        line("a", "banana", "lots") + line("a", "bug", good)  # a: a duplicate whose usage is a string
        + line("b", None, {"prompt_tokens": 1.5, "completion_tokens": 1, "total_tokens": 2.5}))  # b: no choice
    outputs = PartOutputs(job, 1, {"number": 1, "model_key": ""}, api, BatchPrices(1e-6, 1e-6, "job_prices"),
                          {"a": {"id": "a", "a": 1}, "b": {"id": "b", "a": 1}}, "2026-01-01T00:00:00.000Z", 1.0)
    items = {(i.ticket_id if hasattr(i, "ticket_id") else i["id"]): i
             for i in outputs.collect([tmp_path / "out.jsonl", tmp_path / "none.jsonl"])}
    kept = items["a"]
    assert kept.completion.text == "bug" and kept.rejected_outputs == 1 and kept.rejected_unpriced == 1
    assert kept.to_line()["rejected_unpriced"] == 1
    failure = items["b"]
    assert failure["kind"] == "invalid_response" and failure["r"] == 1 and failure.get("u") == 1
