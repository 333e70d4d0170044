"""`batchrun status` on a --limit run (what was asked apart from the input not
asked yet) and on a compare directory (one line per model)."""

from __future__ import annotations

import orjson
from click.testing import CliRunner

import batchrun
from batchrun.commands.status import status_command

FAST_SIM = """
[simulator]
latency_ms = 1
"""
MODELS = """
[[models]]
name = "small"
model = "openai/sim-small"
[[models]]
name = "large"
model = "openai/sim-large"
"""


def status(*args: str):
    result = CliRunner().invoke(status_command, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_limited_run_shows_asked_and_not_asked_separately(make_job, tmp_path):
    job = make_job(30, extra=FAST_SIM)
    batchrun.run(job, limit=12)
    out = status(tmp_path / "run")
    assert "30 in the input" in out
    assert "12 (--limit 12 in run 1)" in out
    assert "0 of those asked" in out
    assert "18 of the input" in out
    info = orjson.loads(status(tmp_path / "run", "--json"))
    assert (info["asked"], info["pending_asked"], info["not_asked"], info["pending"]) == (12, 0, 18, 18)
    batchrun.run(job)  # without a limit: one "pending" line again
    out = status(tmp_path / "run")
    head = out.split("last run")[0]
    assert "not asked yet" not in head and "--limit" not in head and "pending          0" in head


def test_a_compare_directory_shows_one_line_per_model(make_job, tmp_path):
    job = make_job(10, top="allow_unpriced = true", extra=FAST_SIM + MODELS)
    batchrun.run(job, limit=4)
    out = status(tmp_path / "run")
    lines = out.splitlines()
    assert "2 models" in lines[0]
    small = next(line for line in lines if line.startswith("small "))
    large = next(line for line in lines if line.startswith("large "))
    for line, name in ((small, "openai/sim-small"), (large, "openai/sim-large")):
        assert name in line and " done " in line
        assert line.split()[3:7] == ["4", "0", "0", "6"]  # done, failed, pending, not asked
    assert "total cost" in out
    assert [m["model"] for m in orjson.loads(status(tmp_path / "run", "--json"))] == ["small", "large"]
