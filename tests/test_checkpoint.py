"""Tests of the run directory (`batchrun.rundir`): the pure resume scan,
torn-tail repair, done/failed ids, the run lock (in one process and across
processes), unwritable directories, the atomic manifest and the writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from batchrun.rundir.layout import ERRORS, LOCK, MANIFEST, RESULTS
from batchrun.rundir.checkpoint import CheckpointWriter, open_checkpoint
from batchrun.rundir.lines import load_done_ids, load_failed_ids
from batchrun.rundir.manifest import read_manifest, write_manifest
from batchrun.rundir.lines import scan_jsonl
from batchrun.errors import CheckpointError, RunLockedError
from batchrun.records import Completion, Outcome, Usage

ROOT = Path(__file__).resolve().parent.parent


def line(ticket_id: str, **extra) -> bytes:
    return orjson.dumps({"id": ticket_id, **extra}) + b"\n"


def ok(ticket_id: str, text: str = "bug", run: int = 1) -> Outcome:
    return Outcome(
        ticket_id=ticket_id, attempts=1, started_at="2025-01-01T00:00:00.000Z",
        finished_at="2025-01-01T00:00:01.000Z", elapsed_ms=1000.0, run=run,
        completion=Completion(text=text, finish_reason="stop", model="m", usage=Usage(3, 1, 4),
                              cost_usd=0.25, cost_status="job_prices"),
        latency_ms=900.0,
    )


def failed(ticket_id: str, kind: str = "bad_request", run: int = 1) -> Outcome:
    return Outcome(
        ticket_id=ticket_id, attempts=2, started_at="2025-01-01T00:00:00.000Z",
        finished_at="2025-01-01T00:00:01.000Z", elapsed_ms=1000.0, run=run,
        error_kind=kind, error_type="TerminalError", error_message="nope", status_code=400,
    )


def read_lines(path: Path) -> list[dict]:
    return [orjson.loads(raw) for raw in path.read_bytes().splitlines()]


@pytest.fixture
def checkpoint(tmp_path):
    opened = []

    def _open(run_dir: Path):
        cp = open_checkpoint(run_dir, force=True)  # files without a manifest: test_checkpoint_links.py
        opened.append(cp)
        return cp

    yield _open
    for cp in opened:
        cp.release()


# -- scan_jsonl ----------------------------------------------------------------------


def test_scan_missing_file(tmp_path):
    scan = scan_jsonl(tmp_path / "nope.jsonl")
    assert (scan.ids, scan.valid_bytes, scan.torn_bytes, scan.lines) == (set(), 0, 0, 0)


def test_scan_empty_file(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"")
    scan = scan_jsonl(path)
    assert (scan.ids, scan.valid_bytes, scan.torn_bytes, scan.lines) == (set(), 0, 0, 0)


def test_scan_complete_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    data = line("a") + line("b", output="x") + line("c")
    path.write_bytes(data)
    scan = scan_jsonl(path)
    assert scan.ids == {"a", "b", "c"}
    assert scan.lines == 3
    assert scan.valid_bytes == len(data)
    assert scan.torn_bytes == 0
    assert scan.last_by_id is None


def test_scan_torn_last_line_without_newline(tmp_path):
    path = tmp_path / "r.jsonl"
    good = line("a") + line("b")
    torn = b'{"id": "c", "output": "bu'
    path.write_bytes(good + torn)
    scan = scan_jsonl(path)
    assert scan.ids == {"a", "b"}
    assert scan.lines == 2
    assert scan.valid_bytes == len(good)
    assert scan.torn_bytes == len(torn)
    assert path.read_bytes() == good + torn  # a pure function: nothing changed on disk


def test_scan_complete_json_without_newline_is_torn(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(line("a") + orjson.dumps({"id": "b"}))
    scan = scan_jsonl(path)
    assert scan.ids == {"a"}
    assert scan.torn_bytes == len(orjson.dumps({"id": "b"}))


@pytest.mark.parametrize(
    "bad",
    [b'{"id": "c", "out\n', b"\x00\x00\x00\n", b"[1, 2]\n", b'{"no_id": 1}\n', b'"c"\n', b'{"id": ["c"]}\n',
     b'{"id": {"k": 1}}\n', b'{"id": null}\n'],
)
def test_scan_last_line_with_newline_but_not_a_record_is_torn(tmp_path, bad):
    path = tmp_path / "r.jsonl"
    good = line("a") + line("b")
    path.write_bytes(good + bad)
    scan = scan_jsonl(path)
    assert scan.ids == {"a", "b"}
    assert scan.lines == 2
    assert scan.valid_bytes == len(good)
    assert scan.torn_bytes == len(bad)


def test_scan_counts_the_lines_after_a_bad_one(tmp_path):
    path = tmp_path / "r.jsonl"
    good = line("a")
    rest = b"garbage\n" + line("b") + b'{"id": "c", "tor'
    path.write_bytes(good + rest)
    scan = scan_jsonl(path)
    assert scan.ids == {"a"}  # nothing after the first bad line counts
    assert (scan.lines, scan.valid_bytes, scan.torn_bytes, scan.torn_lines) == (1, len(good), len(rest), 3)


def test_scan_reads_line_by_line(tmp_path):
    """Memory holds the ids, not the file (tracemalloc, not a clock)."""
    import tracemalloc

    path = tmp_path / "r.jsonl"
    with path.open("wb") as handle:
        for i in range(400):
            handle.write(line(f"t{i}", output="x" * 50_000))
    tracemalloc.start()
    try:
        scan = scan_jsonl(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scan.lines == 400 and scan.torn_bytes == 0
    assert peak < 5_000_000  # the file is 20 MB


def test_scan_integer_ids_count_as_strings(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": 5}\n{"id": "b"}\n{"id": true}\n')
    scan = scan_jsonl(path)
    assert scan.ids == {"5", "b"}  # ticket ids are strings (tickets.py makes 5 into "5")
    assert scan.torn_bytes == len(b'{"id": true}\n')


def test_scan_keep_last(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_bytes(line("a", run=1) + line("b", run=1) + line("a", run=2))
    scan = scan_jsonl(path, keep_last=True)
    assert scan.ids == {"a", "b"}
    assert scan.lines == 3
    assert scan.last_by_id == {"a": {"id": "a", "run": 2}, "b": {"id": "b", "run": 1}}


def test_scan_crlf_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "a"}\r\n{"id": "b"}\r\n')
    scan = scan_jsonl(path)
    assert scan.ids == {"a", "b"} and scan.torn_bytes == 0


# -- load_done_ids / load_failed_ids ---------------------------------------------------


def test_load_done_and_failed_ids(tmp_path):
    (tmp_path / RESULTS).write_bytes(line("a") + line("c") + b'{"id": "torn')
    (tmp_path / ERRORS).write_bytes(line("a", run=1) + line("b", run=1) + line("d", run=2))
    assert load_done_ids(tmp_path) == {"a", "c"}
    assert load_failed_ids(tmp_path) == {"b", "d"}  # a failed in run 1, then succeeded
    assert load_failed_ids(tmp_path, done={"a", "b"}) == {"d"}


def test_load_ids_of_an_empty_run_dir(tmp_path):
    assert load_done_ids(tmp_path) == set()
    assert load_failed_ids(tmp_path) == set()


# -- open_checkpoint: repair ------------------------------------------------------------


def test_open_creates_the_run_dir(tmp_path, checkpoint):
    run_dir = tmp_path / "a" / "b" / "run"
    cp = checkpoint(run_dir)
    assert run_dir.is_dir()
    assert (cp.done_ids, cp.failed_ids, cp.repaired) == (set(), set(), [])
    assert cp.run_dir == run_dir
    # the write probe is gone; the space held for the last manifest is there while the run is open
    assert sorted(p.name for p in run_dir.iterdir()) == [".disk-reserve", LOCK]
    cp.release()
    assert [p.name for p in run_dir.iterdir()] == [LOCK]


def test_open_cuts_torn_tails_and_reports_them(tmp_path, checkpoint):
    good_results = line("a") + line("b")
    good_errors = line("c") + line("a")
    (tmp_path / RESULTS).write_bytes(good_results + b'{"id": "x", "outp')
    (tmp_path / ERRORS).write_bytes(good_errors + b"not json")  # a complete bad line is refused instead
    cp = checkpoint(tmp_path)
    assert (tmp_path / RESULTS).read_bytes() == good_results
    assert (tmp_path / ERRORS).read_bytes() == good_errors
    assert cp.done_ids == {"a", "b"}
    assert cp.failed_ids == {"c"}
    assert len(cp.repaired) == 2
    assert str(tmp_path / RESULTS) in cp.repaired[0]
    assert "cut 17 bytes" in cp.repaired[0] and "after line 2" in cp.repaired[0]
    assert str(tmp_path / ERRORS) in cp.repaired[1]
    cp.release()
    again = checkpoint(tmp_path)
    assert again.repaired == []
    assert again.done_ids == {"a", "b"}


def test_open_refuses_to_cut_damage_before_the_last_line(tmp_path, checkpoint):
    """Lines are appended whole, so only the last line can be torn. A bad
    line with good lines after it is not a torn write: cutting from there
    would silently throw away finished (and paid for) results."""
    data = line("a") + b"garbage\n" + line("b") + line("c")
    (tmp_path / RESULTS).write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        checkpoint(tmp_path)
    message = str(info.value)
    assert str(tmp_path / RESULTS) in message
    assert "line 2" in message
    assert (tmp_path / RESULTS).read_bytes() == data  # nothing was cut
    checkpoint(tmp_path / "other")  # ... and the failed open left no lock behind:
    (tmp_path / RESULTS).write_bytes(line("a"))
    assert checkpoint(tmp_path).done_ids == {"a"}


# -- the lock ----------------------------------------------------------------------------


def test_second_open_in_the_same_process_is_refused(tmp_path, checkpoint):
    first = checkpoint(tmp_path)
    assert (tmp_path / LOCK).read_text().strip() == str(os.getpid())
    with pytest.raises(RunLockedError) as info:
        open_checkpoint(tmp_path)
    assert f"pid {os.getpid()}" in str(info.value)
    assert str(tmp_path) in str(info.value)
    assert isinstance(info.value, CheckpointError)
    first.release()
    first.release()  # idempotent
    checkpoint(tmp_path)


HOLDER = """
import sys
from batchrun.rundir.checkpoint import open_checkpoint
cp = open_checkpoint(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
cp.release()
print("released", flush=True)
sys.stdin.readline()
"""


def start_holder(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_holds_across_processes(tmp_path, checkpoint):
    proc = start_holder(tmp_path)
    try:
        with pytest.raises(RunLockedError) as info:
            open_checkpoint(tmp_path)
        assert f"pid {proc.pid}" in str(info.value)
        assert (tmp_path / LOCK).read_text().strip() == str(proc.pid)  # the loser wrote nothing
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
        cp = checkpoint(tmp_path)  # released while the other process still lives
        assert (tmp_path / LOCK).read_text().strip() == str(os.getpid())
        cp.release()
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


def test_lock_of_a_killed_process_is_free(tmp_path, checkpoint):
    proc = start_holder(tmp_path)
    try:
        with pytest.raises(RunLockedError):
            open_checkpoint(tmp_path)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        checkpoint(tmp_path)  # the kernel dropped the flock with the process
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdin.close()
        proc.stdout.close()


# -- unusable run directories --------------------------------------------------------------


def test_unwritable_run_dir(tmp_path):
    run_dir = tmp_path / "ro"
    run_dir.mkdir()
    run_dir.chmod(0o500)
    try:
        if os.access(run_dir, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        with pytest.raises(CheckpointError) as info:
            open_checkpoint(run_dir)
        assert str(run_dir) in str(info.value)
        assert "not writable" in str(info.value)
    finally:
        run_dir.chmod(0o700)


def test_run_dir_under_a_file(tmp_path):
    """Works even as root: a run directory that cannot be created."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run_dir = blocker / "run"
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(run_dir)
    assert str(run_dir) in str(info.value)


# -- manifest ------------------------------------------------------------------------------


def test_write_manifest_is_atomic_and_round_trips(tmp_path):
    manifest = {"job": {"name": "t", "fingerprint_sha256": "ab" * 32}, "state": "running", "counts": {"done": 3},
                "history": [{"run": 1}], "unicode": "naïve ✓", "cost": 0.125, "none": None}
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    write_manifest(tmp_path, {**manifest, "state": "done"})
    assert read_manifest(tmp_path)["state"] == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]  # no temp file left behind


def test_read_manifest_missing_and_corrupt(tmp_path):
    assert read_manifest(tmp_path) is None
    (tmp_path / MANIFEST).write_bytes(b'{"state": "runn')
    with pytest.raises(CheckpointError, match=MANIFEST):
        read_manifest(tmp_path)


def test_failed_manifest_write_keeps_the_old_one_and_leaves_no_temp_file(tmp_path):
    write_manifest(tmp_path, {"state": "running"})
    run_dir = tmp_path / "bad"
    run_dir.mkdir()
    (run_dir / MANIFEST).mkdir()  # os.replace onto a directory fails
    with pytest.raises(CheckpointError) as info:
        write_manifest(run_dir, {"state": "done"})
    assert MANIFEST in str(info.value)
    assert sorted(p.name for p in run_dir.iterdir()) == [MANIFEST]
    assert read_manifest(tmp_path) == {"state": "running"}


# -- CheckpointWriter ------------------------------------------------------------------------


async def test_writer_writes_one_line_per_outcome(tmp_path):
    done: set[str] = set()
    writer = CheckpointWriter(tmp_path, done)
    await writer.open()
    try:
        written = await writer.write_batch([ok("a"), failed("b"), ok("c", text="feature")])
        assert [o.ticket_id for o in written] == ["a", "b", "c"]
        await writer.sync()
    finally:
        await writer.close()
    results = read_lines(tmp_path / RESULTS)
    errors = read_lines(tmp_path / ERRORS)
    assert [r["id"] for r in results] == ["a", "c"]
    assert results[1]["output"] == "feature"
    assert results[0]["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
                                   "cached_tokens": None, "cache_write_tokens": None, "reasoning_tokens": None}
    assert results[0]["cost_usd"] == 0.25 and results[0]["cost_status"] == "job_prices"
    assert [e["id"] for e in errors] == ["b"]
    assert errors[0]["error_kind"] == "bad_request" and errors[0]["status_code"] == 400
    assert done == {"a", "c"}
    assert load_done_ids(tmp_path) == {"a", "c"}
    assert load_failed_ids(tmp_path) == {"b"}


async def test_writer_never_writes_the_same_id_twice_to_results(tmp_path):
    (tmp_path / RESULTS).write_bytes(line("old"))
    writer = CheckpointWriter(tmp_path, load_done_ids(tmp_path))
    await writer.open()
    try:
        written = await writer.write_batch([ok("old"), ok("a"), ok("a", text="second")])
        assert [o.ticket_id for o in written] == ["a"]
        written = await writer.write_batch([ok("a", text="third"), ok("b")])
        assert [o.ticket_id for o in written] == ["b"]
    finally:
        await writer.close()
    results = read_lines(tmp_path / RESULTS)
    assert [r["id"] for r in results] == ["old", "a", "b"]
    assert results[1]["output"] == "bug"  # the first answer stays

    writer = CheckpointWriter(tmp_path, load_done_ids(tmp_path))  # a later run
    await writer.open()
    try:
        assert await writer.write_batch([ok("a", run=2)]) == []
    finally:
        await writer.close()
    assert [r["id"] for r in read_lines(tmp_path / RESULTS)] == ["old", "a", "b"]


async def test_writer_appends_failures_every_time(tmp_path):
    writer = CheckpointWriter(tmp_path, set())
    await writer.open()
    try:
        await writer.write_batch([failed("a", kind="auth")])
        await writer.write_batch([failed("a", kind="timeout", run=2), ok("a", run=2)])
    finally:
        await writer.close()
    errors = read_lines(tmp_path / ERRORS)
    assert [(e["id"], e["error_kind"], e["run"]) for e in errors] == [("a", "auth", 1), ("a", "timeout", 2)]
    assert load_failed_ids(tmp_path) == set()  # it succeeded in the end


async def test_writer_lines_are_complete_before_close(tmp_path):
    writer = CheckpointWriter(tmp_path, set())
    await writer.open()
    try:
        await writer.write_batch([ok("a")])
        data = (tmp_path / RESULTS).read_bytes()  # flushed: visible to another reader now
        assert data.endswith(b"\n") and scan_jsonl(tmp_path / RESULTS).ids == {"a"}
    finally:
        await writer.close()


async def test_writer_open_failure_is_a_checkpoint_error(tmp_path):
    writer = CheckpointWriter(tmp_path / "missing", set())
    with pytest.raises(CheckpointError, match="cannot open checkpoint files"):
        await writer.open()
