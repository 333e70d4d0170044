"""`batchrun init NAME`: the job file it writes runs at once against the simulator."""

from __future__ import annotations

import tomllib

import orjson
import pytest

from batchrun.errors import ConfigurationError
from batchrun.job.spec import load_job
from batchrun.job.starter import write_starter
from conftest import batchrun_cmd, cli_run, read_jsonl, sample_lines


def test_init_then_run(tmp_path, cli_env):
    made = cli_run(batchrun_cmd("init", "triage"), cwd=tmp_path, env=cli_env, capture_output=True,
                   text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert "next: batchrun run triage.toml" in made.stdout
    assert len(read_jsonl(tmp_path / "triage.jsonl")) == 3
    ran = cli_run(batchrun_cmd("run", "triage.toml"), cwd=tmp_path, env=cli_env, capture_output=True,
                  text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    results = read_jsonl(tmp_path / "runs" / "triage" / "results.jsonl")
    assert len(results) == 3 and all(r["label"] in {"bug", "feature", "billing", "other"} for r in results)
    again = cli_run(batchrun_cmd("init", "triage"), cwd=tmp_path, env=cli_env, capture_output=True,
                    text=True, timeout=60)
    assert again.returncode == 2 and "not overwritten" in again.stderr


def test_init_with_an_input_uses_its_fields_and_model(tmp_path):
    (tmp_path / "data").mkdir()
    tickets = tmp_path / "data" / "mine.jsonl"
    tickets.write_bytes(b"".join(sample_lines(2)))
    files = write_starter("nightly", tmp_path, model="anthropic/claude-3-5-haiku-20241022", input_path=tickets)
    assert files.sample_input is None
    job = load_job(files.job)
    assert job.input == tickets and job.model == "anthropic/claude-3-5-haiku-20241022"
    assert job.api_key_env == "ANTHROPIC_API_KEY"
    assert "{subject}" in job.prompt.user and "{body}" in job.prompt.user  # the first line's text fields
    assert tomllib.loads(files.job.read_text())["simulator"]["latency_ms"] == 150


def test_init_refuses_a_bad_name_and_an_input_without_text(tmp_path):
    with pytest.raises(ConfigurationError, match="job name"):
        write_starter("../x", tmp_path)
    numbers = tmp_path / "n.jsonl"
    numbers.write_bytes(orjson.dumps({"id": 1, "n": 2}) + b"\n")
    with pytest.raises(Exception, match="no text field"):
        write_starter("n", tmp_path, input_path=numbers)
