"""The Python API (batchrun.run / batchrun.arun): the README's example runs as
written, tickets= are checkpointed and resume, a dict is a job, arun works in
a running event loop and run() refuses one. Real runs against the simulator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import orjson
import pytest

import batchrun
from batchrun.errors import JobSpecError, RunMismatchError
from conftest import ROOT, read_jsonl, sample_lines

JOB = ROOT / "jobs" / "classify_tickets.toml"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # a fresh interpreter that imports litellm
def test_the_readme_example_runs_as_written(tmp_path):
    code = readme_example().replace('"jobs/', f'"{ROOT}/jobs/')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("done 20 0 $") and "'remaining': 1180" in first, result.stdout
    assert len(read_jsonl(tmp_path / "runs" / "notebook" / "results.jsonl")) == 20
    assert (tmp_path / "runs" / "notebook-tickets" / "tickets.jsonl").exists()
    assert re.search(r"^done \['(bug|feature|billing|other)'\] \[\]$", result.stdout, re.M), result.stdout


def test_tickets_are_checkpointed_and_resume(tmp_path):
    tickets = [orjson.loads(line) for line in sample_lines(15)]
    run_dir = tmp_path / "run"
    first = batchrun.run(JOB, tickets=iter(tickets[:10]), run_dir=run_dir, limit=6)
    assert (first.state, first.exit_code, first.done, first.failed) == ("done", 0, 6, 0)
    assert first.totals == {"input_tickets": 10, "asked": 6, "done": 6, "failed": 0, "remaining": 4}
    assert first.cost_usd > 0 and first.paths["results"] == run_dir / "results.jsonl"
    second = batchrun.run(JOB, tickets=(t for t in tickets[:10]), run_dir=run_dir)  # the same: resume
    assert second.done == 4 and second.totals["done"] == 10 and second.run_number == 2
    assert sorted(line["id"] for line in second.iter_results()) == sorted(t["id"] for t in tickets[:10])
    assert batchrun.run(JOB, tickets=tickets[:10], run_dir=run_dir).nothing_to_do
    with pytest.raises(RunMismatchError, match="other tickets"):
        batchrun.run(JOB, tickets=tickets, run_dir=run_dir)
    assert len(read_jsonl(run_dir / "tickets.jsonl")) == 10  # the refused call changed nothing


def test_a_dict_is_a_job_and_errors_are_streamed(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(b"".join(sample_lines(8)))
    job = {
        "name": "dict_job", "input": str(tmp_path / "in.jsonl"), "run_dir": str(tmp_path / "run"),
        "model": "openai/gpt-4o-mini", "prompt": {"user": "{subject}"}, "params": {"max_tokens": 5},
        "retry": {"max_attempts": 2, "initial_backoff_s": 0.01, "max_backoff_s": 0.02},
        "simulator": {"latency_ms": 1, "faults": [{"kind": "context_length", "tickets": ["T000002"],
                                                   "attempts": [1, 2]}]},
    }
    result = batchrun.run(job)
    assert (result.done, result.failed, result.exit_code, result.state) == (7, 1, 3, "done")
    errors = list(result.iter_errors())
    assert [e["id"] for e in errors] == ["T000002"] and errors[0]["error_kind"] == "context_window"
    with pytest.raises(JobSpecError, match="did you mean `concurrency`"):
        batchrun.run({**job, "concurency": 3})


def test_arun_in_a_running_loop_and_run_refuses_one(tmp_path):
    async def main():
        with pytest.raises(RuntimeError, match="await batchrun.arun"):
            batchrun.run(JOB, limit=1, run_dir=tmp_path / "never")
        return await batchrun.arun(JOB, limit=3, run_dir=tmp_path / "run", concurrency=2)

    result = anyio.run(main)
    assert result.done == 3 and result.state == "done"
    assert not (tmp_path / "never").exists()
