"""Never write through a link, never cut a complete line.

A results.jsonl that is a symbolic link to a file outside the run directory
was followed: its last line cut as "torn" and new lines appended into it."""

from __future__ import annotations

import os

import anyio
import orjson
import pytest

from batchrun import Completion, ScriptedProvider, Usage, execute_run, load_job, prepare_run
from batchrun.rundir.layout import ERRORS, LOCK, MANIFEST, RESULTS
from batchrun.rundir.checkpoint import CheckpointWriter, open_checkpoint
from batchrun.rundir.manifest import write_manifest
from batchrun.errors import CheckpointError, ExitCode
from conftest import invoke_cli, read_jsonl


def line(ticket_id: str) -> bytes:
    return orjson.dumps({"id": ticket_id, "output": "bug"}) + b"\n"


def ok(request) -> Completion:
    return Completion(text="bug", finish_reason="stop", model="fake", usage=Usage(10, 1, 11),
                      cost_usd=0.001, cost_status="litellm")


@pytest.mark.parametrize("name", [RESULTS, ERRORS])
def test_a_checkpoint_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path, name):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_manifest(run_dir, {"state": "done"})
    outside = tmp_path / "precious.jsonl"
    precious = line("a") + b"the last line of someone else's file\n"
    outside.write_bytes(precious)
    (run_dir / name).symlink_to(outside)
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(run_dir)
    assert str(run_dir / name) in str(info.value) and "symbolic link" in str(info.value)
    assert outside.read_bytes() == precious
    open_checkpoint(run_dir / "elsewhere").release()  # the refused open left no lock behind


def test_the_writer_never_appends_through_a_link(tmp_path):
    outside = tmp_path / "precious.jsonl"
    outside.write_bytes(b"keep\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RESULTS).symlink_to(outside)

    async def main():
        writer = CheckpointWriter(run_dir, set())
        with pytest.raises(CheckpointError) as info:
            await writer.open()
        return str(info.value)

    message = anyio.run(main)
    assert "symbolic link" in message and RESULTS in message
    assert outside.read_bytes() == b"keep\n"


def test_a_hard_linked_results_file_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_manifest(run_dir, {"state": "done"})
    outside = tmp_path / "precious.jsonl"
    outside.write_bytes(line("a") + b'{"id": "b", "tor')
    os.link(outside, run_dir / RESULTS)
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(run_dir)
    assert "hard links" in str(info.value)
    assert outside.read_bytes().endswith(b'"tor')  # nothing cut


@pytest.mark.parametrize("name", [MANIFEST, LOCK])
def test_a_linked_manifest_or_lock_is_never_written_through(tmp_path, name):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"keep\n")
    (run_dir / name).symlink_to(outside)
    if name == MANIFEST:
        write_manifest(run_dir, {"state": "done"})  # os.replace swaps the link itself
        assert not (run_dir / MANIFEST).is_symlink()
    else:
        with pytest.raises(CheckpointError):
            open_checkpoint(run_dir)
    assert outside.read_bytes() == b"keep\n"


def test_a_complete_bad_last_line_stops_the_resume_and_nothing_is_cut(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_manifest(run_dir, {"state": "interrupted"})
    data = line("a") + line("b") + b"not json at all\n"
    (run_dir / ERRORS).write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(run_dir)
    assert f"{run_dir / ERRORS}: line 3" in str(info.value)
    assert (run_dir / ERRORS).read_bytes() == data


def test_only_a_last_line_without_newline_is_cut(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_manifest(run_dir, {"state": "interrupted"})
    (run_dir / RESULTS).write_bytes(line("a") + b'{"id": "b", "outp')
    cp = open_checkpoint(run_dir)
    cp.release()
    assert cp.done_ids == {"a"} and (run_dir / RESULTS).read_bytes() == line("a")
    assert len(cp.repaired) == 1


def test_checkpoint_files_without_a_manifest_need_force(make_job, tmp_path):
    job = load_job(make_job(10, concurrency=2))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RESULTS).write_bytes(line("T000001"))
    with pytest.raises(CheckpointError) as info:
        prepare_run(job, endpoint="fake")
    assert "no manifest.json" in str(info.value) and "--force" in str(info.value)
    assert (run_dir / RESULTS).read_bytes() == line("T000001")
    prep = prepare_run(job, endpoint="fake", force=True)
    try:
        assert prep.already_done == 1
        result = anyio.run(lambda: execute_run(prep, ScriptedProvider(ok)))
    finally:
        prep.release()
    assert result.exit_code == ExitCode.OK
    assert len(read_jsonl(run_dir / RESULTS)) == 10


def test_the_run_command_refuses_a_manifestless_run_dir_until_force(make_job, tmp_path):
    job = make_job(5, concurrency=2, extra="[simulator]\nlatency_ms = 1\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ERRORS).write_bytes(line("T000001"))
    refused = invoke_cli("run", str(job), "--no-progress")
    assert refused.returncode == ExitCode.BAD_INPUT and "no manifest.json" in refused.stderr
    forced = invoke_cli("run", str(job), "--no-progress", "--force")
    assert forced.returncode == ExitCode.OK, forced.stderr
