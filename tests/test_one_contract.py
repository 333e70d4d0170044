"""One contract for every way a run runs: the CLI, the Python API and batch mode go through the
one launcher and end through the one finish (state -> exit code -> manifest).

Each test here failed before the launcher and the finish were shared: the API ran a batch job
online at full price and could not choose the engine, the mode or the cache; a batch run whose
files could not be closed ended "failed" with exit code 0; an environment variable could make
the process kill itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import orjson
import pytest

import batchrun
from batchrun.errors import ExitCode
from conftest import ROOT, batchrun_cmd, cli_run, read_jsonl

BATCH_JOB = ROOT / "jobs" / "classify_batch.toml"
PACKAGE = ROOT / "batchrun"


def per_ticket_cost(run_dir: Path) -> float:
    lines = read_jsonl(run_dir / "results.jsonl")
    assert lines and all(line["cost_usd"] is not None for line in lines)
    return sum(line["cost_usd"] for line in lines) / len(lines)


@pytest.mark.slow
def test_the_api_runs_a_batch_job_in_batch_mode_at_half_the_online_price(tmp_path):
    batch = batchrun.run(BATCH_JOB, limit=20, run_dir=tmp_path / "batch")
    assert (batch.state, batch.exit_code, batch.done) == ("done", 0, 20)
    manifest = orjson.loads((tmp_path / "batch" / "manifest.json").read_bytes())
    assert manifest["mode"] == "batch" and manifest["batch"]["parts"] == 1
    assert {line["cost_status"] for line in read_jsonl(tmp_path / "batch" / "results.jsonl")} == {"litellm_batch"}
    online = batchrun.run(BATCH_JOB, limit=20, run_dir=tmp_path / "online", mode="online")
    assert (online.state, online.done) == ("done", 20)
    ratio = per_ticket_cost(tmp_path / "batch") / per_ticket_cost(tmp_path / "online")
    assert 0.45 <= ratio <= 0.55, ratio


def test_the_api_takes_the_command_line_overrides_that_make_sense_in_python():
    import inspect

    params = inspect.signature(batchrun.arun).parameters
    for name in ("engine", "mode", "cache", "workers", "ray_address", "no_wait", "finish_online", "progress_every",
                 "max_cost_usd", "concurrency", "model", "api_base", "live", "skip_failed", "force", "limit"):
        assert name in params, name
    assert inspect.signature(batchrun.run).parameters.keys() >= {"job", "overrides"}


def test_cache_and_engine_overrides_reach_the_job(tmp_path, monkeypatch):
    seen = {}

    async def fake_launch(job, job_path, options, **kwargs):
        seen["job"] = job
        raise SystemExit(0)

    monkeypatch.setattr("batchrun.launcher.launch", fake_launch)
    with pytest.raises(SystemExit):
        batchrun.run(ROOT / "jobs" / "classify_tickets.toml", cache=True, engine="local", mode="online",
                     run_dir=tmp_path / "run")
    assert seen["job"].cache is True and seen["job"].engine == "local" and seen["job"].mode == "online"


@pytest.mark.slow
def test_a_batch_run_whose_checkpoint_cannot_be_closed_ends_failed_with_exit_1(tmp_path, monkeypatch):
    from batchrun.rundir.checkpoint import CheckpointWriter

    async def broken_close(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CheckpointWriter, "close", broken_close)
    result = batchrun.run(BATCH_JOB, limit=5, run_dir=tmp_path / "run")
    assert result.state == "failed"
    assert result.exit_code == ExitCode.ERROR
    assert "cannot flush checkpoint" in (result.error or "")
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert manifest["state"] == "failed"


def test_the_exit_code_of_each_final_state_is_decided_in_one_place():
    from batchrun.execution.finish import exit_code

    assert exit_code("done", failed_tickets=0) == 0
    assert exit_code("done", failed_tickets=2) == ExitCode.TICKETS_FAILED
    assert exit_code("failed", failed_tickets=0) == ExitCode.ERROR
    assert exit_code("failed", failed_tickets=0, stop_reason="fail_fast") == ExitCode.ABORTED
    assert exit_code("budget_exhausted", failed_tickets=1) == ExitCode.BUDGET_EXHAUSTED
    assert exit_code("submitted", failed_tickets=3) == 0
    assert exit_code("interrupted", failed_tickets=0, signal_number=15) == 143
    assert exit_code("interrupted", failed_tickets=0) == 130


def environment_reads(source: str) -> list[str]:
    """The names of environment variables a module reads (os.environ[...], .get(...), os.getenv(...))."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            text = ast.unparse(func)
            if text in ("os.environ.get", "os.getenv", "environ.get", "env.get"):
                names.append(str(node.args[0].value))
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ"):
            if isinstance(node.slice, ast.Constant):
                names.append(str(node.slice.value))
    return names


#: The environment batchrun reads, and why: settings a user chooses, never test hooks.
ALLOWED_ENVIRONMENT = {
    "BATCHRUN_CACHE_DIR",  # where the response cache lives
    "XDG_CACHE_HOME",  # ... by default
    "BATCHRUN_SERVE_TOKEN",  # the serve page's token
    "LITELLM_LOCAL_MODEL_COST_MAP", "LITELLM_LOG",  # litellm's own, set before its import
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS",  # litellm's own: its Anthropic beta-headers table, not fetched
    "EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER",  # litellm's transport switch, when the user set it
    "AIOHTTP_CONNECTOR_LIMIT_PER_HOST", "AIOHTTP_CONNECTOR_LIMIT",  # litellm's pool sizes
    "PYTHONPATH",  # a worker process's import path starts with batchrun's own folder
}


def test_product_code_reads_no_environment_variable_but_user_settings():
    reads = {}
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "sim":
            continue  # the simulator is a test server: its settings are its own
        for name in environment_reads(path.read_text(encoding="utf-8")):
            reads.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert set(reads) - ALLOWED_ENVIRONMENT == set(), reads


def test_the_environment_check_sees_a_read():
    source = 'import os\nx = os.environ.get("BATCHRUN_CRASH_AT")\ny = os.environ["A"]\nz = os.getenv("B")\n'
    assert environment_reads(source) == ["BATCHRUN_CRASH_AT", "A", "B"]


@pytest.mark.slow
def test_a_crash_variable_in_the_environment_does_nothing(tmp_path, cli_env):
    env = {**cli_env, "BATCHRUN_CRASH_AT": "created"}
    result = cli_run(batchrun_cmd("run", str(BATCH_JOB), "--limit", "3", "--run-dir", str(tmp_path / "run")),
                     env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(read_jsonl(tmp_path / "run" / "results.jsonl")) == 3
