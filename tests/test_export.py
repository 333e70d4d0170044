"""`batchrun export`: every ticket once, in input order, joined to its input row.

The run directories are made by real runs against the embedded simulator
(with a fault for one ticket and --limit for pending ones) or written by hand
where a case is hard to reach (a failure later retried to success)."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest

from batchrun.errors import NotARunDirError

from batchrun.analysis.export import ExportError, export_run
from conftest import invoke_cli, read_jsonl, write_tickets

JOB = """\
name = "export_job"
input = "tickets.jsonl"
run_dir = "run"
model = "openai/gpt-4o-mini"
concurrency = 8
timeout_s = 10
workers = 1
labels = ["bug", "feature", "billing", "other"]

[prompt]
system = "Classify the ticket as exactly one of: bug, feature, billing, other."
user = "Subject: {{subject}} ({{customer.tier}})"

[params]
temperature = 0
max_tokens = 5

[retry]
max_attempts = 1

[simulator]
latency_ms = 1
jitter = 0

[[simulator.faults]]
kind = "500"
tickets = ["{failing}"]
attempts = [1, 2, 3]
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run of 30 tickets: the first 24 sent (one of them failing), 6 left pending."""
    base = tmp_path_factory.mktemp("export")
    write_tickets(base / "tickets.jsonl", 30)
    rows = read_jsonl(base / "tickets.jsonl")
    (base / "job.toml").write_text(JOB.format(failing=rows[4]["id"]))
    done = invoke_cli("run", str(base / "job.toml"), "--no-progress", "--limit", "24")
    assert done.returncode == 3, done.stderr  # one ticket failed
    return base / "run"


def test_jsonl_export_has_every_ticket_once_in_input_order(run_dir):
    inputs = read_jsonl(run_dir.parent / "tickets.jsonl")
    result = export_run(run_dir, with_input=True)
    assert result.path == run_dir / "export.jsonl" and result.rows == 30
    assert (result.done, result.failed, result.pending) == (23, 1, 6)
    rows = read_jsonl(result.path)
    assert [r["id"] for r in rows] == [r["id"] for r in inputs]  # input order, each once
    by_id = {r["id"]: r for r in read_jsonl(run_dir / "results.jsonl")}
    for row, source in zip(rows, inputs):
        assert row["input"] == source  # the joined input row
        if row["status"] == "done":
            line = by_id[row["id"]]
            assert row["output"] == line["output"] and row["label"] == line["label"]
            assert row["cost_usd"] == line["cost_usd"] and row["total_tokens"] == line["usage"]["total_tokens"]
            assert row["attempts"] == 1 and row["model"] == line["model"] and row["error_kind"] is None
    failed = rows[4]
    assert failed["status"] == "failed" and failed["error_kind"] == "server_error" and failed["output"] is None
    assert failed["error_message"].startswith("The server had an error")  # the provider's message, not litellm's chain
    assert all(r["status"] == "pending" and r["output"] is None for r in rows[24:])


def test_csv_export_round_trips_with_input_columns(run_dir, tmp_path):
    inputs = read_jsonl(run_dir.parent / "tickets.jsonl")
    out = tmp_path / "answers.csv"
    result = export_run(run_dir, out, "csv", with_input=True)
    assert result.path == out
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == [r["id"] for r in inputs]
    assert rows[0]["input.subject"] == inputs[0]["subject"]
    assert orjson.loads(rows[0]["input.customer"]) == inputs[0]["customer"]  # nested values as JSON text
    assert rows[0]["status"] == "done" and rows[0]["label"] in {"bug", "feature", "billing", "other"}
    assert rows[4]["status"] == "failed" and rows[4]["error_kind"] == "server_error"
    assert rows[29]["status"] == "pending" and rows[29]["output"] == ""


def test_parquet_export_round_trips_with_types(run_dir, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    inputs = read_jsonl(run_dir.parent / "tickets.jsonl")
    result = export_run(run_dir, tmp_path / "a.parquet", "parquet", with_input=True)
    table = pq.read_table(result.path)
    assert table.column("id").to_pylist() == [r["id"] for r in inputs]
    assert str(table.schema.field("cost_usd").type) == "double"
    assert str(table.schema.field("attempts").type) == "int64"
    assert table.column("input.subject").to_pylist() == [r["subject"] for r in inputs]
    assert table.column("status").to_pylist().count("done") == 23


def test_the_export_command(run_dir, tmp_path):
    out = tmp_path / "x.jsonl"
    result = invoke_cli("export", str(run_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote 30 ticket(s) to {out}: 23 done, 1 failed, 6 pending" in result.stdout
    assert "input" not in read_jsonl(out)[0]


def _handmade_run(tmp_path: Path, results: list[dict], errors: list[dict], n: int = 4) -> Path:
    write_tickets(tmp_path / "tickets.jsonl", n)
    from batchrun.job.tickets import file_digest

    sha256, size = file_digest(tmp_path / "tickets.jsonl")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_bytes(orjson.dumps({
        "input": {"path": str(tmp_path / "tickets.jsonl"), "sha256": sha256, "size": size, "tickets": n},
        "job": {"name": "x", "fingerprint": {"id_field": "id"}}}))
    (run / "results.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in results))
    (run / "errors.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in errors))
    return run


def test_a_failure_later_retried_to_success_is_exported_once_as_done(tmp_path):
    ids = [r["id"] for r in read_jsonl(write_tickets(tmp_path / "probe.jsonl", 4))]
    run = _handmade_run(
        tmp_path,
        results=[{"id": ids[3], "output": "b", "attempts": 1}, {"id": ids[0], "output": "a", "attempts": 2}],
        errors=[{"id": ids[0], "error_kind": "timeout", "message": "t", "attempts": 3},
                {"id": ids[1], "error_kind": "timeout", "message": "first", "attempts": 3},
                {"id": ids[1], "error_kind": "server_error", "message": "latest", "attempts": 1}])
    rows = read_jsonl(export_run(run).path)
    assert [(r["id"], r["status"]) for r in rows] == [(ids[0], "done"), (ids[1], "failed"), (ids[2], "pending"),
                                                      (ids[3], "done")]
    assert rows[0]["output"] == "a" and rows[1]["error_message"] == "latest"


def test_a_changed_input_is_refused(tmp_path):
    run = _handmade_run(tmp_path, [], [])
    with (tmp_path / "tickets.jsonl").open("ab") as handle:
        handle.write(b'{"id": "new", "subject": "x"}\n')
    with pytest.raises(ExportError, match="changed since the run"):
        export_run(run)
    with pytest.raises(NotARunDirError, match="not a batchrun run"):  # exit 2, as from every command
        export_run(tmp_path)


def test_a_compare_run_gives_one_column_group_per_model(tmp_path, cli_env):
    write_tickets(tmp_path / "tickets.jsonl", 12)
    (tmp_path / "job.toml").write_text("""\
name = "cmp"
input = "tickets.jsonl"
run_dir = "run"
concurrency = 8
workers = 1

[[models]]
name = "cheap"
model = "openai/sim-cheap"
prices = { input_per_million = 0.10, output_per_million = 0.40 }

[[models]]
name = "strong"
model = "openai/sim-strong"
prices = { input_per_million = 2.50, output_per_million = 10.00 }

[prompt]
user = "Subject: {subject}"

[params]
max_tokens = 5

[simulator]
latency_ms = 1
""")
    done = invoke_cli("run", str(tmp_path / "job.toml"), "--no-progress")
    assert done.returncode == 0, done.stderr
    result = export_run(tmp_path / "run", fmt="csv")
    assert result.models == ("cheap", "strong") and result.rows == 12
    with result.path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == [r["id"] for r in read_jsonl(tmp_path / "tickets.jsonl")]
    assert {"cheap.output", "strong.output", "cheap.cost_usd", "strong.cost_usd"} <= set(rows[0])
    strong = {r["id"]: r for r in read_jsonl(tmp_path / "run" / "models" / "strong" / "results.jsonl")}
    assert all(r["strong.output"] == strong[r["id"]]["output"] for r in rows)
    nested = read_jsonl(export_run(tmp_path / "run").path)
    assert set(nested[0]["models"]) == {"cheap", "strong"} and nested[0]["models"]["cheap"]["status"] == "done"
