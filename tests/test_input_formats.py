"""CSV, TSV and Parquet inputs: read, checked before any request, run and resumed.

The end-to-end tests run the command line against the session's simulator
and count its requests per ticket id: a resume sends each ticket once."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest

from batchrun.errors import TicketError
from batchrun.job.templates import PromptTemplate
from batchrun.job.tickets import read_tickets, scan_input
from conftest import InvokeResult, invoke_cli, read_jsonl, sample_lines

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def sample_rows(n: int) -> list[dict]:
    return [orjson.loads(line) for line in sample_lines(n)]


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["id", "subject", "body", "tier"])
        for row in rows:
            writer.writerow([row["id"], row["subject"], row["body"], row["customer"]["tier"]])
    return path


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 7) -> Path:
    table = pa.Table.from_pylist([{"id": r["id"], "subject": r["subject"], "body": r["body"],
                                   "customer": r["customer"]} for r in rows])
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


TEMPLATES = [PromptTemplate("{subject} {body}")]


def test_csv_rows_are_read_with_multiline_values_and_string_values(tmp_path):
    rows = sample_rows(12)
    path = write_csv(tmp_path / "t.csv", rows)
    tickets = list(read_tickets(path, "id"))
    assert [t.id for t in tickets] == [r["id"] for r in rows]
    assert tickets[0].fields["body"] == rows[0]["body"]  # newlines inside a quoted field survive
    assert [t.line for t in tickets] == list(range(1, 13))
    scan = scan_input(path, "id", TEMPLATES)
    assert scan.tickets == 12 and not scan.problems and scan.unit == "row"


def test_tsv_by_extension_and_input_format_overrides_it(tmp_path):
    rows = sample_rows(3)
    tsv = write_csv(tmp_path / "t.tsv", rows, delimiter="\t")
    assert [t.id for t in read_tickets(tsv, "id")] == [r["id"] for r in rows]
    odd = tsv.rename(tmp_path / "t.data")
    assert [t.id for t in read_tickets(odd, "id", input_format="tsv")] == [r["id"] for r in rows]


def test_bad_csv_rows_are_named_by_row_and_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"id,subject,body\n"
                     b"A,one,\"two\nlines\"\n"          # row 1, lines 2-3
                     b"B,short\n"                       # row 2: too few fields
                     b"A,dup,again\n"                   # row 3: duplicate id
                     b",noid,x\n"                       # row 4: empty id
                     b"E,bad \xff byte,x\n"             # row 5: invalid UTF-8
                     b"F,fine,x\n")                     # row 6
    scan = scan_input(path, "id", TEMPLATES, max_problems=None)
    reasons = {p.line: p.reason for p in scan.problems}
    assert set(reasons) == {2, 3, 4, 5} and scan.tickets == 2
    assert reasons[2] == "(line 4) 2 field(s), the header has 3"
    assert reasons[3] == "(line 5) duplicate id 'A' (first on row 1)"
    assert "non-empty string" in reasons[4] and "invalid UTF-8" in reasons[5]
    message = scan.describe_problems()
    assert f"{path}: 4 bad row(s)" in message and f"{path}: row 2: (line 4) 2 field(s)" in message
    with pytest.raises(TicketError, match=r"t\.csv: row 2 \(line 4\): 2 field\(s\)"):
        list(read_tickets(path, "id"))
    # skipping the bad rows reads the rest
    assert [t.id for t in read_tickets(path, "id", skip_lines=scan.bad_lines)] == ["A", "F"]


def test_a_csv_without_the_id_column_is_one_clear_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("key,subject,body\n1,a,b\n")
    with pytest.raises(TicketError, match=r"no header field 'id' \(the job's id_field\).*\(its header fields: key, subject, body\)"):
        scan_input(path, "id", TEMPLATES)


def test_parquet_rows_keep_types_and_structs_fill_nested_templates(tmp_path):
    rows = sample_rows(20)
    path = write_parquet(tmp_path / "t.parquet", rows, row_group_size=6)
    template = PromptTemplate("{subject} [{customer.tier}]")
    scan = scan_input(path, "id", [template], keep_ids=True)
    assert scan.tickets == 20 and scan.ids == [r["id"] for r in rows] and scan.unit == "row"
    tickets = list(read_tickets(path, "id"))
    assert template.render(tickets[3].fields) == f"{rows[3]['subject']} [{rows[3]['customer']['tier']}]"
    # integer ids stay valid; only the marked rows are read back, across row groups
    only = bytearray(21)
    only[2] = only[13] = 1
    assert [t.id for t in read_tickets(path, "id", only_lines=only)] == [rows[1]["id"], rows[12]["id"]]


def test_bad_parquet_rows_are_named(tmp_path):
    table = pa.Table.from_pylist([
        {"id": "a", "subject": "s", "customer": {"tier": "pro"}},
        {"id": None, "subject": "s", "customer": {"tier": "pro"}},
        {"id": "a", "subject": "s", "customer": {"tier": "pro"}},
        {"id": "d", "subject": "s", "customer": None},
    ])
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=2)
    scan = scan_input(path, "id", [PromptTemplate("{subject} {customer.tier}")], max_problems=None)
    reasons = {p.line: p.reason for p in scan.problems}
    assert reasons == {2: "id field 'id' must be a non-empty string or an integer, got None",
                       3: "duplicate id 'a' (first on row 1)",
                       4: "ticket 'd' has no field 'customer.tier' used by the prompt"}
    with pytest.raises(TicketError, match=r"t\.parquet: row 2: id field"):
        list(read_tickets(path, "id"))


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(TicketError, match="not a readable Parquet file"):
        scan_input(path, "id", TEMPLATES)


# -- end to end: run, resume, bad rows -----------------------------------------------------------

def _job(tmp_path: Path, input_name: str, top: str = "") -> Path:
    job = tmp_path / "job.toml"
    job.write_text(f"""\
name = "fmt_job"
input = "{input_name}"
run_dir = "run"
model = "openai/gpt-4o-mini"
api_key_env = "BATCHRUN_TEST_KEY"
concurrency = 4
timeout_s = 10
workers = 1
{top}

[prompt]
system = "Classify the ticket as exactly one of: bug, feature, billing, other."
user = "Subject: {{subject}} ({{customer.tier}})"

[params]
temperature = 0
max_tokens = 5

[retry]
max_attempts = 3
initial_backoff_s = 0.01
max_backoff_s = 0.05
""")
    return job


def _run(job: Path, sim, env, *extra: str) -> InvokeResult:
    return invoke_cli("run", str(job), "--api-base", sim.base_url, "--no-progress", *extra,
                      key=env["BATCHRUN_TEST_KEY"])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_and_parquet_inputs_run_and_resume_each_ticket_once(fmt, tmp_path, sim, cli_env):
    rows = sample_rows(30)
    if fmt == "csv":
        # CSV has no structs: the template's {customer.tier} is a nested field only in Parquet
        rows_for_csv = [{**r, "customer": {"tier": r["customer"]["tier"]}} for r in rows]
        path = write_csv(tmp_path / "tickets.csv", rows_for_csv)
        job = _job(tmp_path, path.name)
        job.write_text(job.read_text().replace("({customer.tier})", "({tier})"))
    else:
        path = write_parquet(tmp_path / "tickets.parquet", rows)
        job = _job(tmp_path, path.name)
    sim.reset()
    first = _run(job, sim, cli_env, "--limit", "12")
    assert first.returncode == 0, first.stderr
    second = _run(job, sim, cli_env)
    assert second.returncode == 0, second.stderr
    results = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert sorted(r["id"] for r in results) == sorted(r["id"] for r in rows)
    counts = sim.stats()["requests_by_ticket"]
    assert set(counts.values()) == {1} and len(counts) == 30
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert manifest["input"]["format"] == fmt and manifest["input"]["tickets"] == 30
    third = _run(job, sim, cli_env)  # nothing left: planned from the saved index
    assert third.returncode == 0 and "Nothing to do: 30 of 30" in third.stdout


def test_bad_parquet_rows_fail_before_any_request_or_go_to_rejects(tmp_path, sim, cli_env):
    rows = sample_rows(10)
    rows[4] = {**rows[4], "customer": None}
    path = write_parquet(tmp_path / "tickets.parquet", rows)
    job = _job(tmp_path, path.name)
    sim.reset()
    failed = _run(job, sim, cli_env)
    assert failed.returncode == 2
    assert f"{path}: row 5: ticket '{rows[4]['id']}' has no field 'customer.tier'" in failed.stderr
    assert sim.stats()["total_requests"] == 0
    job.write_text(job.read_text().replace("workers = 1", 'workers = 1\non_bad_input = "skip"'))
    skipped = _run(job, sim, cli_env)
    assert skipped.returncode == 0, skipped.stderr
    assert len(read_jsonl(tmp_path / "run" / "results.jsonl")) == 9
    assert read_jsonl(tmp_path / "run" / "rejects.jsonl") == [
        {"file": str(path), "line": 5, "reason": f"ticket '{rows[4]['id']}' has no field 'customer.tier' "
                                                 "used by the prompt"}]


def test_bad_csv_row_fails_before_any_request_naming_row_and_line(tmp_path, sim, cli_env):
    path = tmp_path / "tickets.csv"
    path.write_text('id,subject,tier\nA,one,pro\nB,"two\nlines",free\nC,three\n', encoding="utf-8")
    job = _job(tmp_path, path.name)
    job.write_text(job.read_text().replace("({customer.tier})", "({tier})"))
    sim.reset()
    result = _run(job, sim, cli_env)
    assert result.returncode == 2
    assert f"{path}: row 3: (line 5) 2 field(s), the header has 3" in result.stderr
    assert sim.stats()["total_requests"] == 0
