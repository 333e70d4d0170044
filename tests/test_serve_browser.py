"""The pages of `batchrun serve` in a real headless Chromium (Debian's `chromium`).

A run in progress against the simulator: its page shows the done count rising
(pushed over Server-Sent Events into the same open page), then the run's
accuracy once it has finished, and the list shows both nights of the job.
Screenshots of each page go to tmp_path, or to $BATCHRUN_SCREENSHOTS (the
docs' images: BATCHRUN_SCREENSHOTS=docs/img).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from batchrun.serve.app import build_app
from chromium import Chromium, chromium_path
from conftest import batchrun_cmd
from test_serve import run_job, slow_serve_sim, start_job, until  # noqa: F401 (slow_serve_sim: a fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (.ci/run installs it)"),
]

DONE = "(document.getElementById('done-count') || {}).textContent"
STATE = "(document.getElementById('state') || {}).textContent"


def _count(text: str | None) -> int:
    return int(re.sub(r"[^0-9]", "", text or "") or -1)


async def test_run_page_follows_a_run_then_shows_its_accuracy(make_job, tmp_path, sim, slow_serve_sim, cli_env):
    shots = Path(os.environ.get("BATCHRUN_SCREENSHOTS") or tmp_path / "shots")
    job = make_job(400, concurrency=2)
    runs = tmp_path / "runs"
    first = run_job(job, sim, runs / "2026-12-01", cli_env, "--limit", "150")
    assert first.returncode == 0, first.stderr
    proc = start_job(job, slow_serve_sim, runs / "2026-12-02", cli_env)
    await until(lambda: (runs / "2026-12-02" / "results.jsonl").exists(), 120, "the run to start")
    server = TestServer(build_app(runs, interval=0.2), host="127.0.0.1")
    await server.start_server()
    try:
        async with Chromium.launch() as browser:
            page = await browser.new_page(1280, 1100)
            await page.goto(str(server.make_url("/runs/2026-12-02")))
            await page.wait_for(f"{STATE} === 'running' && Number(({DONE} || '').replace(/,/g, '')) > 0", 60)
            first_seen = _count(await page.evaluate(DONE))
            # the same page, not reloaded: the count rises as the run writes
            await page.wait_for(f"Number(({DONE} || '').replace(/,/g, '')) > {first_seen} && {STATE} === 'running'", 60)
            assert await page.evaluate("document.querySelectorAll('svg.chart polyline').length") >= 2
            await page.screenshot(shots / "serve_run_live.png")

            await until(lambda: proc.poll() is not None, 180, "the run to finish")
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
            await page.wait_for(f"{STATE} === 'finished' && {DONE} === '400'", 60)
            accuracy = await page.wait_for("(document.getElementById('accuracy') || {}).textContent", 60)
            assert re.fullmatch(r"\d{1,3}\.\d%", accuracy), accuracy
            assert float(accuracy[:-1]) > 50
            await page.wait_for("document.querySelector('table.confusion') !== null"
                                " && document.getElementById('diff') !== null", 60)
            diff_text = await page.evaluate("document.getElementById('diff').textContent")
            assert "pts" in diff_text
            await page.screenshot(shots / "serve_run.png")

            await page.goto(str(server.make_url("/")))
            cells = "[...document.querySelectorAll('tr[data-run] td.accuracy')]"
            await page.wait_for(f"{cells}.length === 2 && {cells}.every(c => c.textContent.includes('%'))", 60)
            names = await page.evaluate("[...document.querySelectorAll('tr[data-run]')].map(r => r.dataset.run)")
            assert names == ["2026-12-02", "2026-12-01"]  # newest first, under one job heading
            assert await page.evaluate("document.querySelectorAll('.job h2').length") == 1
            await page.screenshot(shots / "serve_index.png")
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)
        await server.close()
    for name in ("serve_run_live.png", "serve_run.png", "serve_index.png"):
        assert (shots / name).stat().st_size > 10_000


async def test_a_failed_ticket_is_listed_and_a_click_shows_its_attempts(make_job, tmp_path, sim, cli_env):
    """Issue 26, point 5: the run page lists failed tickets; a click shows the ticket's detail."""
    shots = Path(os.environ.get("BATCHRUN_SCREENSHOTS") or tmp_path / "shots")
    job = make_job(12, concurrency=2, extra="""
        [simulator]
        latency_ms = 2
        jitter = 0
        [[simulator.faults]]
        kind = "context_length"
        tickets = ["T000004"]
        attempts = [1, 2, 3]
        """)
    runs = tmp_path / "runs"
    done = subprocess.run(batchrun_cmd("run", str(job), "--run-dir", str(runs / "night"), "--no-progress"),
                          env=cli_env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 3, done.stderr
    server = TestServer(build_app(runs, interval=0.2), host="127.0.0.1")
    await server.start_server()
    try:
        async with Chromium.launch() as browser:
            page = await browser.new_page(1280, 1300)
            await page.goto(str(server.make_url("/runs/night")))
            await page.wait_for("document.querySelector('#failed-table button.ticket-link') !== null", 60)
            listed = await page.evaluate("[...document.querySelectorAll('#failed-table tbody tr')]"
                                         ".map(r => r.textContent)")
            assert len(listed) == 1 and "T000004" in listed[0] and "context_window" in listed[0]
            assert "permanent" in listed[0]
            await page.evaluate("document.querySelector('#failed-table button.ticket-link').click()")
            verdict = await page.wait_for("(document.querySelector('#ticket-detail .verdict') || {}).textContent", 30)
            assert verdict.startswith("failed: context_window")
            attempts = await page.evaluate("document.querySelectorAll('#ticket-detail table.attempts tbody tr').length")
            assert attempts == 1  # a context window error is not retried: one attempt
            await page.screenshot(shots / "serve_failed_ticket.png")
    finally:
        await server.close()


async def test_the_page_shows_model_text_with_what_a_terminal_acts_on_escaped(tmp_path, cli_env):
    """A run whose answers and failure messages hold escape sequences and a right-to-left override:
    the page shows them as escapes (the command line's terminal_safe), never as the characters."""
    from conftest import batchrun_cmd, write_tickets
    from test_hostile_inputs import HOSTILE_JOB

    runs = tmp_path / "runs"
    runs.mkdir()
    write_tickets(runs / "tickets.jsonl", 6)
    job = runs / "job.toml"
    three = 'tickets = ["T000002"]\nsteps = ["hostile_text", "hostile_text", "hostile_text"]'
    job.write_text('labels = ["bug", "feature", "billing", "other"]\n' + HOSTILE_JOB.format(extra="").replace(
        'run_dir = "run"', 'run_dir = "hostile"').replace('rate = 1\nsteps = ["hostile_text"]', three))
    (runs / "plain.toml").write_text(job.read_text().replace("labels = [", "# labels = [").replace(
        'run_dir = "hostile"', 'run_dir = "plain"').replace('tickets = ["T000002"]', "rate = 1"))
    import subprocess

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(batchrun_cmd("run", str(path), "--no-progress"), env=cli_env, capture_output=True,
                              text=True, timeout=300)

    hostile = run(job)
    assert hostile.returncode == 3, hostile.stderr  # T000002's answers are not labels
    plain = run(runs / "plain.toml")
    assert plain.returncode == 0, plain.stderr
    server = TestServer(build_app(runs, interval=0.2, show_text=True), host="127.0.0.1")
    await server.start_server()
    try:
        async with Chromium.launch() as browser:
            page = await browser.new_page(1280, 1100)
            texts = []
            for name, ready in (("hostile", "document.querySelector('#failures .message') !== null"),
                                ("plain", "document.querySelector('#answers .message') !== null")):
                await page.goto(str(server.make_url(f"/runs/{name}")))
                await page.wait_for(ready, 60)
                texts.append(await page.evaluate("document.body.textContent + document.title"))
            await page.screenshot(tmp_path / "hostile_page.png")
    finally:
        await server.close()
    for text in texts:
        assert "pwned" in text, text[:2000]
        assert not [c for c in ("\x1b", "\x07", "\x9b", "\u202e") if c in text], repr(text[:2000])
        assert "\\u202eevil" in text
