"""A dead run must not look alive, and re-billing must be reported.

* a full disk (ENOSPC) ends the run as "failed", with its summary and the
  file's last good line named;
* `batchrun status` tells a live run (run.lock held) from a dead one
  ("stopped unexpectedly: pid N is gone");
* the in-flight journal (inflight.jsonl) names the tickets a dead run left
  in flight: the next run reports them and marks their lines
  `maybe_billed_before`; in a kill -9 loop against the simulator, every
  ticket the server answered more than once is among them.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import anyio
import orjson
import pytest

import batchrun.rundir.checkpoint as checkpoint_mod
from batchrun import Completion, ScriptedProvider, Usage, execute_run, load_job, prepare_run
from batchrun.rundir.layout import INFLIGHT
from batchrun.rundir.checkpoint import lock_state
from batchrun.rundir.journal import open_inflight
from batchrun.rundir.manifest import read_manifest
from batchrun.errors import ExitCode
from conftest import batchrun_cmd, cli_popen, cli_run, invoke_cli, read_jsonl


def ok(request) -> Completion:
    return Completion(text="bug", finish_reason="stop", model="fake", usage=Usage(10, 1, 11),
                      cost_usd=0.001, cost_status="litellm")


def run(job, provider, **prepare):
    prep = prepare_run(job, endpoint="fake", **prepare)
    try:
        return prep, anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()


def test_a_full_disk_fails_the_run_with_its_summary_and_the_last_good_line(make_job, tmp_path, monkeypatch):
    job = load_job(make_job(60, concurrency=1))
    real = checkpoint_mod._write_all
    calls = [0]

    async def filling_disk(handle, blob, sent):
        calls[0] += 1
        if calls[0] > 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        await real(handle, blob, sent)

    monkeypatch.setattr(checkpoint_mod, "_write_all", filling_disk)
    _, result = run(job, ScriptedProvider(ok))
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert result.state == "failed" and result.exit_code == ExitCode.ERROR
    assert result.summary["done"] == len(rows) > 0  # the summary is there, and true
    assert "No space left on device" in result.error
    assert f"last good line is line {len(rows)} (ticket {rows[-1]['id']})" in result.error
    manifest = read_manifest(tmp_path / "run")
    assert manifest["state"] == "failed" and "last good line" in manifest["error"]
    # the ticket whose line could not be written was sent: the next run says it may be billed twice
    monkeypatch.setattr(checkpoint_mod, "_write_all", real)
    prep, result = run(job, ScriptedProvider(ok))
    assert result.exit_code == ExitCode.OK
    assert result.summary["maybe_billed_before"] >= 1
    assert any("may be billed twice" in note for note in prep.notes)


def test_the_journal_is_written_before_the_request_and_cleared_by_its_line(make_job, tmp_path):
    job = load_job(make_job(10, concurrency=2))
    journal = tmp_path / "run" / INFLIGHT
    seen_before_send = []

    def check_journal(request):
        entries = [orjson.loads(raw) for raw in journal.read_bytes().splitlines()]
        seen_before_send.append({"id": request.ticket_id, "attempt": 1, "run": 1} in entries)
        return ok(request)

    _, result = run(job, ScriptedProvider(check_journal))
    assert result.exit_code == ExitCode.OK and seen_before_send == [True] * 10
    assert open_inflight(tmp_path / "run") == {}  # every entry cleared by a result line
    prep, _ = run(job, ScriptedProvider(ok))
    assert journal.read_bytes() == b""  # compacted at the next start: nothing open, nothing new sent
    assert prep.notes == []


def test_entries_left_open_are_reported_and_marked_on_the_next_lines(make_job, tmp_path):
    job = load_job(make_job(10, concurrency=2))
    run(job, ScriptedProvider(ok), limit=4)
    run_dir = tmp_path / "run"
    # a run 2 that died with T000005 and T000006 in flight (T000001 finished in run 1: cleared)
    (run_dir / INFLIGHT).write_bytes(b"".join(orjson.dumps({"id": t, "attempt": 1, "run": 2}) + b"\n"
                                              for t in ("T000001", "T000005", "T000006")) + b'{"id": "T0000')
    assert set(open_inflight(run_dir)) == {"T000005", "T000006"}
    prep, result = run(job, ScriptedProvider(ok))
    assert "2 ticket(s) were in flight when the last run died" in prep.notes[0]
    assert "T000005, T000006" in prep.notes[0]
    assert result.summary["maybe_billed_before"] == 2
    marked = {row["id"] for row in read_jsonl(run_dir / "results.jsonl") if row.get("maybe_billed_before")}
    assert marked == {"T000005", "T000006"}
    assert open_inflight(run_dir) == {}


# -- live or dead: status ---------------------------------------------------------------


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"no {what} after {timeout} s")


def status_json(run_dir: Path, env) -> dict:
    from batchrun.rundir.status import run_status  # what `batchrun status --json` prints

    return run_status(run_dir)


BATCHRUN_IN_FLIGHT = 3  # tickets between dispatch and line on disk, per unit of concurrency (see engine.py)


@pytest.mark.slow  # a SIGKILL loop, worker processes
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_loop_reports_every_ticket_answered_twice(make_job, tmp_path, cli_env, workers):
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    concurrency, kills = 8, 3
    job = make_job(120, concurrency=concurrency)
    run_dir = tmp_path / "run"
    results = run_dir / "results.jsonl"
    args = ["run", str(job), "--no-progress", "--workers", str(workers)]
    reported: set[str] = set()
    with start_simulator(SimConfig(latency_ms=150, jitter=0.3)) as sim:
        args += ["--api-base", sim.base_url]
        for kill in range(kills):
            proc = cli_popen(batchrun_cmd(*args), env=cli_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
            lines_before = results.read_bytes().count(b"\n") if results.exists() else 0
            wait_until(lambda: results.exists() and results.read_bytes().count(b"\n") >= lines_before + 10
                       and sim.stats()["in_flight"] > 0, 120, "progress with requests in flight")
            if kill == 0:  # a live run: status says so
                live = status_json(run_dir, cli_env)
                assert live["state"] == "running" and live["live"] is True
                assert lock_state(run_dir) == "held"
            proc.kill()
            proc.wait(timeout=30)
            proc.stderr.close()
            dead = status_json(run_dir, cli_env)
            assert dead["live"] is False and dead["state"] == "stopped unexpectedly"
            assert f"pid {proc.pid} is gone" in dead["state_note"]
            # open entries: tickets dispatched whose line is not on disk -- requests in flight, plus
            # answers received but not yet written (the outcome buffer and the batch being written,
            # each at most one per worker task): they too are paid and will be sent again
            assert 0 < dead["maybe_billed_before"] <= BATCHRUN_IN_FLIGHT * concurrency
            # (an entry may name a request the kill stopped on its way out: written before it is sent)
            reported |= set(dead["maybe_billed_before_ids"])
            if kill == 0:
                text = invoke_cli("status", str(run_dir)).stdout
                assert f"stopped unexpectedly (run 1" in text and f"pid {proc.pid} is gone" in text
                assert "may be billed twice" in text
                # the counts of the dead run come from the files, not from the manifest it started with
                on_disk = results.read_bytes().count(b"\n")
                assert dead["last_summary"] is None and dead["current_run"]["done"] == on_disk
                assert f"run 1 (when it died)  {on_disk:,} done" in text
        final = cli_run(batchrun_cmd(*args), env=cli_env, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr
        answered_twice = {t for t, n in sim.stats()["requests_by_ticket"].items() if n > 1}
    rows = read_jsonl(results)
    assert len({row["id"] for row in rows}) == len(rows) == 120
    assert answered_twice <= reported  # every ticket paid twice was reported ...
    assert len(reported) <= BATCHRUN_IN_FLIGHT * concurrency * kills  # ... and no more than were in flight
    marked = {row["id"] for row in rows if row.get("maybe_billed_before")}
    assert answered_twice <= marked <= reported
    assert status_json(run_dir, cli_env)["maybe_billed_before"] == 0


def test_status_of_a_killed_run_counts_its_files_not_its_starting_manifest(make_job, tmp_path):
    """A run killed -9 leaves the manifest it wrote at its start (state running, a summary of zeros):
    `batchrun status` shows what that run did from its files -- done, failed, spent, requests, and
    the tickets in flight at its death -- without waiting for the next run."""
    from batchrun.commands.status import format_status
    from batchrun.rundir.manifest import write_manifest
    from batchrun.rundir.status import run_status

    job = load_job(make_job(12, concurrency=2))
    run(job, ScriptedProvider(ok))
    run_dir = tmp_path / "run"
    manifest = read_manifest(run_dir)
    dead = subprocess.Popen(["true"])
    dead.wait()
    zeros = {key: 0 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
             for key, value in manifest["summary"].items()}
    write_manifest(run_dir, {**manifest, "state": "running", "finished_at": None, "pid": dead.pid, "summary": zeros})
    (run_dir / INFLIGHT).write_bytes(b'{"id":"T000099","attempt":1,"run":1}\n')
    status = run_status(run_dir)
    assert status["state"] == "stopped unexpectedly" and status["last_summary"] is None
    assert status["current_run"] == {"run": 1, "done": 12, "failed": 0, "cost_usd": 0.012, "requests": 12,
                                     "upstream_requests": None}
    text = format_status(status)
    assert "run 1 (when it died)  12 done, 0 failed, $0.012000 spent, 12 requests, 1 in flight when it died" in text
    assert "done in this run" not in text  # the starting manifest's zeros are not shown


def test_an_unsent_mark_clears_only_the_entry_it_names(tmp_path):
    """A Ray actor's first attempt is journaled at hand-over; if it never left (a halt, a cache hit)
    an "unsent" mark clears it, and only it: a later attempt of the same ticket stays open."""
    from batchrun.rundir.journal import InflightJournal, open_inflight

    journal = InflightJournal(tmp_path, 1)
    journal.open()
    try:
        journal.note("A", 1)
        journal.note("B", 1)
        journal.note_unsent("B", 1)  # B's first attempt never left
        journal.note("C", 1)
        journal.note("C", 2)
        journal.note_unsent("C", 1)  # names an older entry: C's second attempt stays open
    finally:
        journal.close()
    assert open_inflight(tmp_path, set()) == {"A": {"attempt": 1, "run": 1}, "C": {"attempt": 2, "run": 1}}
