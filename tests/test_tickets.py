"""Tests of the ticket reader (`batchrun.tickets`): streaming with line
numbers, every per-line check naming file:line, and the one-pass
`scan_input` that reports all bad lines, duplicates and missing fields."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import orjson
import pytest

import batchrun.job.tickets as tickets_mod
from batchrun.errors import TicketError
from batchrun.job.templates import PromptTemplate
from batchrun.job.tickets import read_tickets, scan_input


def write_lines(path: Path, lines: list[bytes | str | dict], *, newline: bytes = b"\n", final: bool = True) -> Path:
    chunks = []
    for line in lines:
        if isinstance(line, dict):
            line = orjson.dumps(line)
        elif isinstance(line, str):
            line = line.encode("utf-8")
        chunks.append(line)
    data = newline.join(chunks) + (newline if final and chunks else b"")
    path.write_bytes(data)
    return path


def first_error(path: Path, id_field: str = "id") -> str:
    with pytest.raises(TicketError) as info:
        list(read_tickets(path, id_field))
    return str(info.value)


# -- read_tickets --------------------------------------------------------------------


def test_reads_tickets_in_order_with_line_numbers(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [{"id": "a", "x": 1}, {"id": "b", "x": 2}, {"id": "c", "x": {"y": 3}}])
    tickets = list(read_tickets(path))
    assert [t.id for t in tickets] == ["a", "b", "c"]
    assert [t.line for t in tickets] == [1, 2, 3]
    assert tickets[2].fields == {"id": "c", "x": {"y": 3}}


def test_integer_ids_become_strings(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [{"id": 7}, {"id": 0}, {"id": -3}])
    assert [t.id for t in read_tickets(path)] == ["7", "0", "-3"]


def test_custom_id_field(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [{"ticket_id": "x1", "id": [1]}])
    (ticket,) = read_tickets(path, "ticket_id")
    assert ticket.id == "x1"


def test_crlf_line_endings(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [{"id": "a", "t": "x"}, {"id": "b", "t": "y"}], newline=b"\r\n")
    tickets = list(read_tickets(path))
    assert [(t.id, t.fields["t"], t.line) for t in tickets] == [("a", "x", 1), ("b", "y", 2)]


def test_last_line_without_newline(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [{"id": "a"}, {"id": "b"}], final=False)
    assert [t.id for t in read_tickets(path)] == ["a", "b"]


def test_bom_on_line_one_is_accepted(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + orjson.dumps({"id": "a"}) + b"\n" + orjson.dumps({"id": "b"}) + b"\n")
    assert [t.id for t in read_tickets(path)] == ["a", "b"]
    assert scan_input(path).problem_count == 0


def test_bom_on_a_later_line_is_an_error(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(orjson.dumps({"id": "a"}) + b"\n\xef\xbb\xbf" + orjson.dumps({"id": "b"}) + b"\n")
    assert f"{path}:2:" in first_error(path)


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "missing.jsonl"
    with pytest.raises(TicketError, match="missing.jsonl"):
        list(read_tickets(path))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b'{"id": "b", "x": ', "invalid JSON"),
        (b"", "blank line"),
        (b"   \t ", "blank line"),
        (b'["b", 1]', "expected a JSON object, got list"),
        (b'"just a string"', "expected a JSON object, got str"),
        (b"42", "expected a JSON object, got int"),
        (b"null", "expected a JSON object, got NoneType"),
        (b'{"name": "b"}', "missing id field 'id'"),
        (b'{"id": ["b"]}', "must be a non-empty string or an integer"),
        (b'{"id": ""}', "must be a non-empty string or an integer"),
        (b'{"id": true}', "must be a non-empty string or an integer"),
        (b'{"id": false}', "must be a non-empty string or an integer"),
        (b'{"id": null}', "must be a non-empty string or an integer"),
        (b'{"id": 1.5}', "must be a non-empty string or an integer"),
        (b'{"id": {"k": 1}}', "must be a non-empty string or an integer"),
        (b'{"id": "b", "t": "caf\xe9"}', "invalid UTF-8"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, bad, reason):
    path = tmp_path / "in.jsonl"
    path.write_bytes(orjson.dumps({"id": "a"}) + b"\n" + bad + b"\n" + orjson.dumps({"id": "c"}) + b"\n")
    message = first_error(path)
    assert message.startswith(f"{path}:2: ")
    assert reason in message


def test_oversized_line(tmp_path, monkeypatch):
    monkeypatch.setattr(tickets_mod, "MAX_LINE_BYTES", 64)
    path = write_lines(tmp_path / "in.jsonl", [{"id": "a"}, {"id": "b", "text": "x" * 200}, {"id": "c"}])
    message = first_error(path)
    assert message.startswith(f"{path}:2: ")
    assert "limit" in message
    scan = scan_input(path)
    assert [p.line for p in scan.problems] == [2]
    assert scan.tickets == 2


def test_oversized_line_message_gives_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(tickets_mod, "MAX_LINE_BYTES", 64)
    line = orjson.dumps({"id": "b", "text": "x" * 1000})
    path = write_lines(tmp_path / "in.jsonl", [{"id": "a"}, line, {"id": "c"}], newline=b"\r\n")
    assert f"line is {len(line):,} bytes, over the 64-byte limit" in first_error(path)


@pytest.mark.parametrize("final", [True, False])
def test_oversized_last_line(tmp_path, monkeypatch, final):
    monkeypatch.setattr(tickets_mod, "MAX_LINE_BYTES", 64)
    path = write_lines(tmp_path / "in.jsonl", [{"id": "a"}, {"id": "b", "text": "x" * 500}], final=final)
    assert first_error(path).startswith(f"{path}:2: ")
    scan = scan_input(path)
    assert (scan.tickets, scan.problem_count) == (1, 1)
    assert scan.size == path.stat().st_size
    assert scan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_line_exactly_at_the_limit_is_fine(tmp_path, monkeypatch):
    line = orjson.dumps({"id": "a", "t": "xyz"})
    monkeypatch.setattr(tickets_mod, "MAX_LINE_BYTES", len(line))
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line + b"\r\n" + line.replace(b'"a"', b'"b"') + b"\r\n")
    assert [t.id for t in read_tickets(path)] == ["a", "b"]
    monkeypatch.setattr(tickets_mod, "MAX_LINE_BYTES", len(line) - 1)
    assert scan_input(path).problem_count == 2


def test_an_oversized_line_is_never_held_in_memory(tmp_path, monkeypatch):
    """The line limit bounds memory: a 16 MB line is rejected without ever
    being read whole (measured with tracemalloc, not with a clock)."""
    import tracemalloc

    monkeypatch.setattr(tickets_mod, "MAX_LINE_BYTES", 1024)
    path = tmp_path / "in.jsonl"
    with path.open("wb") as handle:
        handle.write(b'{"id": "a"}\n{"id": "b", "t": "')
        for _ in range(16):
            handle.write(b"x" * 1_000_000)
        handle.write(b'"}\n{"id": "c"}\n')
    tracemalloc.start()
    try:
        scan = scan_input(path)
        with pytest.raises(TicketError, match=":2: line is 16,000,020 bytes"):
            list(read_tickets(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000
    assert (scan.tickets, scan.problem_count) == (2, 1)
    assert scan.size == path.stat().st_size


def test_read_tickets_is_lazy(tmp_path):
    """Memory boundedness without timing: the reader is a generator that only
    reads as far as asked, so the bad lines after the first are not touched."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(orjson.dumps({"id": "first"}) + b"\n" + b"not json\n" * 1000 + b"\xff\xfe\n")
    stream = read_tickets(path)
    assert inspect.isgenerator(stream)
    first = next(stream)
    assert first.id == "first" and first.line == 1
    with pytest.raises(TicketError, match=":2:"):
        next(stream)


def test_read_tickets_does_not_open_the_file_until_iterated(tmp_path):
    stream = read_tickets(tmp_path / "created-later.jsonl")
    write_lines(tmp_path / "created-later.jsonl", [{"id": "a"}])
    assert [t.id for t in stream] == ["a"]


# -- scan_input ----------------------------------------------------------------------


def test_scan_reports_every_bad_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"id": "a", "s": "x"}\n'  # 1 ok
        b"not json\n"  # 2
        b"\n"  # 3
        b'{"id": "b", "s": "x"}\n'  # 4 ok
        b"[1, 2]\n"  # 5
        b'{"s": "x"}\n'  # 6
        b'{"id": true, "s": "x"}\n'  # 7
        b'{"id": "c", "s": "x"}\n'  # 8 ok
    )
    scan = scan_input(path)
    assert scan.tickets == 3
    assert scan.problem_count == 5
    assert [p.line for p in scan.problems] == [2, 3, 5, 6, 7]
    assert "invalid JSON" in scan.problems[0].reason
    assert scan.problems[1].reason == "blank line"
    assert "missing id field" in scan.problems[3].reason
    text = scan.describe_problems()
    for line in (2, 3, 5, 6, 7):
        assert f"{path}:{line}: " in text
    assert "5 bad line(s)" in text


def test_scan_duplicate_ids_name_the_first_line(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [{"id": "a"}, {"id": "b"}, {"id": "a"}, {"id": 5}, {"id": "5"}])
    scan = scan_input(path)
    assert scan.tickets == 3
    assert [(p.line, p.reason) for p in scan.problems] == [
        (3, "duplicate id 'a' (first on line 1)"),
        (5, "duplicate id '5' (first on line 4)"),
    ]


def test_scan_missing_template_field(tmp_path):
    path = write_lines(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "subject": "s", "customer": {"tier": "gold"}},
            {"id": "b", "subject": "s"},
            {"id": "c", "customer": {"tier": "gold"}},
            {"id": "d", "subject": "s", "customer": {"tier": None}},
        ],
    )
    templates = [PromptTemplate("System for {customer.tier}"), PromptTemplate("{subject}")]
    scan = scan_input(path, "id", templates)
    assert scan.tickets == 2  # a and d (a null value is present, it renders as "")
    assert [p.line for p in scan.problems] == [2, 3]
    assert "'customer.tier'" in scan.problems[0].reason and "'b'" in scan.problems[0].reason
    assert "'subject'" in scan.problems[1].reason


def test_scan_caps_kept_problems_but_counts_all(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"bad\n" * 30 + b'{"id": "ok"}\n')
    scan = scan_input(path, max_problems=5)
    assert scan.problem_count == 30
    assert len(scan.problems) == 5
    assert [p.line for p in scan.problems] == [1, 2, 3, 4, 5]
    assert scan.tickets == 1
    assert "... and 25 more" in scan.describe_problems()


def test_scan_size_and_sha256(tmp_path):
    path = tmp_path / "in.jsonl"
    data = b"\xef\xbb\xbf" + b'{"id": "a"}\r\n' + b"garbage\n" + b'{"id": "b"}'  # no final newline
    path.write_bytes(data)
    scan = scan_input(path)
    assert scan.size == len(data) == path.stat().st_size
    assert scan.sha256 == hashlib.sha256(data).hexdigest()
    assert scan.tickets == 2
    assert scan.problem_count == 1
    assert scan.path == path


def test_scan_empty_file(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"")
    scan = scan_input(path)
    assert (scan.size, scan.tickets, scan.problem_count) == (0, 0, 0)
    assert scan.sha256 == hashlib.sha256(b"").hexdigest()


def test_scan_missing_file(tmp_path):
    with pytest.raises(TicketError, match="cannot read input"):
        scan_input(tmp_path / "nope.jsonl")


def test_sample_data_scans_clean():
    root = Path(__file__).resolve().parent.parent
    path = root / "sample_data" / "tickets.jsonl"
    templates = [PromptTemplate("{subject} {customer.tier} {body}")]
    scan = scan_input(path, "id", templates)
    assert scan.problem_count == 0
    assert scan.tickets == sum(1 for _ in read_tickets(path))
