"""Issue 26, point 7: the Python API for a notebook. A progress bar by default when interactive,
RunResult.results() in input order, RunResult.to_pandas() (pandas optional, a clear message when
missing), batchrun.export public, str paths accepted everywhere a path is."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest

import batchrun
from conftest import ROOT, write_tickets

JOB = """\
name = "nb"
input = "tickets.jsonl"
model = "openai/gpt-4o-mini"
concurrency = 4
[prompt]
user = "Subject: {subject}"
[params]
max_tokens = 5
[retry]
max_attempts = 2
initial_backoff_s = 0.01
max_backoff_s = 0.02
[simulator]
latency_ms = 1
jitter = 0.9
[[simulator.faults]]
kind = "context_length"
tickets = ["T000004"]
"""


@pytest.fixture
def job(tmp_path: Path) -> Path:
    write_tickets(tmp_path / "tickets.jsonl", 12)
    path = tmp_path / "nb.toml"
    path.write_text(JOB)
    return path


def test_results_come_in_input_order_and_to_pandas_gives_a_frame(job, tmp_path):
    result = batchrun.run(str(job), run_dir=str(tmp_path / "run"), progress=False)
    assert result.exit_code == 3
    rows = list(result.results())
    assert [r["id"] for r in rows] == [f"T{n:06d}" for n in range(1, 13)]  # input order, not completion order
    assert rows[3]["status"] == "failed" and rows[3]["error_kind"] == "context_window"
    assert all(r["status"] == "done" and r["output"] for i, r in enumerate(rows) if i != 3)
    frame = result.to_pandas(with_input=True)
    assert list(frame["id"]) == [r["id"] for r in rows] and "input.subject" in frame.columns
    assert frame.loc[3, "status"] == "failed"
    exported = batchrun.export(str(tmp_path / "run"), str(tmp_path / "out.csv"), "csv")
    assert exported.rows == 12 and (tmp_path / "out.csv").exists()


@pytest.mark.slow  # a fresh interpreter without pandas
def test_to_pandas_without_pandas_says_what_to_install(job, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["pandas"] = None  # as if it were not installed
        import batchrun
        result = batchrun.run({str(job)!r}, run_dir={str(tmp_path / 'run2')!r}, progress=False)
        try:
            result.to_pandas()
        except ImportError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "RunResult.to_pandas() needs pandas" in out.stdout and "pip install pandas" in out.stdout, out.stderr


def test_str_paths_are_accepted_everywhere(job, tmp_path):
    tickets = str(tmp_path / "tickets.jsonl")
    assert len(list(batchrun.read_tickets(tickets, "id"))) == 12
    assert batchrun.scan_input(tickets, "id").tickets == 12
    assert batchrun.load_job(str(job)).name == "nb"
    assert batchrun.load_done_ids(str(tmp_path / "nowhere")) == set()
    assert len(batchrun.scan_jsonl(str(tmp_path / "nowhere.jsonl")).ids) == 0


def _run_on_a_terminal(code: str) -> str:
    """Run `code` with stderr on a pseudo-terminal; what it wrote there."""
    controller, worker = pty.openpty()
    fcntl.ioctl(worker, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal 120 columns wide
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=worker, cwd=ROOT, env={**os.environ, "COLUMNS": "120"})
    os.close(worker)
    chunks = []
    while True:
        try:
            data = os.read(controller, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(controller)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow  # runs under a pseudo-terminal in a real process
def test_a_progress_bar_by_default_when_interactive_and_none_otherwise(job, tmp_path):
    code = f"import batchrun; batchrun.run({str(job)!r}, run_dir={str(tmp_path / 'tty')!r})"
    on_terminal = _run_on_a_terminal(code)
    assert "100%|" in on_terminal and "12/12" in on_terminal, on_terminal
    piped = subprocess.run([sys.executable, "-c", code.replace("'tty'", "'pipe'").replace("/tty", "/pipe")],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "%|" not in piped.stderr


def classify_prompt(ticket: dict) -> list[dict]:
    return [{"role": "system", "content": "Answer bug, feature, billing or other."},
            {"role": "user", "content": f"[{ticket['channel']}] {ticket['subject']}"}]


def test_a_python_callable_can_render_the_prompt(tmp_path):
    from batchrun.launcher import LaunchOptions, dry_run, resolve_job

    write_tickets(tmp_path / "tickets.jsonl", 6)
    job = {"name": "callable", "input": str(tmp_path / "tickets.jsonl"), "model": "openai/gpt-4o-mini",
           "run_dir": str(tmp_path / "run"), "params": {"max_tokens": 5}, "simulator": {"latency_ms": 1}}
    options = LaunchOptions(prompt=classify_prompt)
    spec, path = resolve_job(job, options)  # no [prompt]: the callable renders the messages
    shown = dry_run(spec, path, options, 2)
    assert shown["tickets"][0]["messages"][1]["content"].startswith("[") and len(shown["tickets"]) == 2
    result = batchrun.run(job, prompt=classify_prompt, progress=False)
    assert result.state == "done" and result.done == 6
    with pytest.raises(batchrun.BatchrunError, match="job prompt changed"):  # another callable: refused
        batchrun.run(job, prompt=lambda t: [{"role": "user", "content": t["subject"]}], progress=False)
    with pytest.raises(batchrun.BatchrunError, match="must return a non-empty list"):
        batchrun.run({**job, "run_dir": str(tmp_path / "run2")}, prompt=lambda t: "just text", progress=False)
