"""What 20 open pages of `batchrun serve` cost a running 100,000-ticket run, and
whether the server's memory grows with the checkpoint files.

    python benchmarks/serve_load.py [--tickets 100000] [--pages 20] [--window 15] [--pairs 3]
                                    [--concurrency 64] [--latency-ms 20] [--grow-mb 400]

Part 1, throughput. Writes N tickets (cycled from sample_data, new ids), starts
`batchrun serve` on the runs directory (its own process, as a user would) and
`batchrun run` on the job against the embedded simulator. After a warm-up it
alternates windows of `--window` seconds without pages and with `--pages` open
event streams (aiohttp clients in this process reading /api/runs/NAME/events,
as the page's EventSource does), `--pairs` times, and counts the result lines
written in each window (reading only what the file gained). It prints the
run's results/s per window, the mean of each kind and their ratio, and the
serve process's CPU and RSS. The run is then interrupted (it is not meant to
finish). The pages' clients run on the same machine here, so their own CPU
counts against the run too: a conservative figure.

Part 2, memory. One page follows a run directory whose results.jsonl this
script grows to `--grow-mb` MB (copies of real result lines, new ids), and the
serve process's RSS is printed at each tenth of the way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent

JOB = """\
name = "serve_load"
input = "tickets.jsonl"
run_dir = "runs/load"
model = "openai/gpt-4o-mini"
concurrency = {concurrency}
timeout_s = 30
[prompt]
system = "Classify the ticket as exactly one of: bug, feature, billing, other."
user = "Subject: {{subject}}\\n\\n{{body}}"
[params]
max_tokens = 5
[simulator]
latency_ms = {latency}
jitter = 0.1
"""


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return cpu, rss / 1024


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants (worker processes), the simulator excluded."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            if b"batchrun.sim" in Path(f"/proc/{current}/cmdline").read_bytes():
                continue
            total += proc_stats(current)[0]
        except (OSError, StopIteration):
            continue
        todo.extend(parents.get(current, []))
    return total


class LineCounter:
    """Counts the lines a growing file gains, reading each byte once."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.lines = path, 0, 0

    def count(self) -> int:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                while chunk := handle.read(1 << 20):
                    self.lines += chunk.count(b"\n")
                    self.offset += len(chunk)
        except FileNotFoundError:
            pass
        return self.lines


def start_serve(runs: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "batchrun.cli", "serve", str(runs), "--port", "0"], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"(http://127\.0\.0\.1:\d+)/", proc.stderr.readline())
        if match:
            return proc, match.group(1)
    raise SystemExit("batchrun serve did not start")


async def page(session, url: str, received: list[int]) -> None:
    """An open page: reads the event stream; received[0] counts snapshots, received[1] is the last done."""
    async with session.get(url, timeout=None) as response:
        async for line in response.content:
            if line.startswith(b"data: "):
                received[0] += 1
                if len(received) > 1:
                    received[1] = orjson.loads(line[6:])["done"]


async def throughput(args: argparse.Namespace, base: str, serve: subprocess.Popen, results: Path,
                     run: subprocess.Popen) -> None:
    import aiohttp

    counter = LineCounter(results)
    print(f"warm-up: waiting for 2,000 results and {args.window:g} s more", flush=True)
    while counter.count() < 2000:
        if run.poll() is not None:
            raise SystemExit("the run ended during warm-up")
        await asyncio.sleep(0.5)
    await asyncio.sleep(args.window)
    rates: dict[str, list[float]] = {"no pages": [], f"{args.pages} pages": []}
    received = [0]
    cpu: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in rates}
    async with aiohttp.ClientSession() as session:
        kinds = list(rates)
        for pair in range(args.pairs):
            for kind in (kinds if pair % 2 == 0 else kinds[::-1]):  # ABBA: drifts in the machine's load cancel
                tasks = []
                if kind != "no pages":
                    tasks = [asyncio.create_task(page(session, f"{base}/api/runs/load/events", received))
                             for _ in range(args.pages)]
                    await asyncio.sleep(1.0)  # the pages open and get their first snapshot
                lines0, t0 = counter.count(), time.monotonic()
                cpu0, _ = proc_stats(serve.pid)
                run0 = tree_cpu(run.pid)
                own0 = time.process_time()
                await asyncio.sleep(args.window)
                lines1, t1 = counter.count(), time.monotonic()
                cpu1, rss = proc_stats(serve.pid)
                run1 = tree_cpu(run.pid)
                own = time.process_time() - own0
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                rate = (lines1 - lines0) / (t1 - t0)
                rates[kind].append(rate)
                span = t1 - t0
                cpu[kind].append(((cpu1 - cpu0) / span, own / span, (run1 - run0) / span))
                print(f"  {kind:>9}: {rate:8.1f} results/s   "
                      f"run CPU (workers too) {100 * (run1 - run0) / span:5.1f}%   "
                      f"serve CPU {100 * (cpu1 - cpu0) / span:5.1f}%   pages' CPU {100 * own / span:5.1f}%   "
                      f"serve RSS {rss:6.1f} MB   results.jsonl {results.stat().st_size / 1e6:6.1f} MB", flush=True)
                if run.poll() is not None:
                    raise SystemExit("the run finished before the windows did: use more --tickets")
    without, with_pages = (statistics.mean(v) for v in rates.values())
    print(f"mean results/s: no pages {without:.1f}, {args.pages} pages {with_pages:.1f}: "
          f"{100 * (with_pages / without - 1):+.1f}% ({received[0]:,} snapshots received by the pages)")
    on = cpu[f"{args.pages} pages"]
    serve_cpu = statistics.mean(c[0] for c in on)
    pages_cpu = statistics.mean(c[1] for c in on)
    run_cpu = statistics.mean(c[2] for c in on)
    print(f"CPU with {args.pages} pages open: serve {100 * serve_cpu:.2f}% of a core, the pages' clients "
          f"{100 * pages_cpu:.2f}%, the run {100 * run_cpu:.1f}%: serving costs "
          f"{100 * serve_cpu / run_cpu:.2f}% of the run's CPU ({100 * (serve_cpu + pages_cpu) / run_cpu:.2f}% "
          "with the clients)")


async def memory(args: argparse.Namespace, base: str, serve: subprocess.Popen, runs: Path) -> None:
    import aiohttp

    source = runs / "load"
    target = runs / "grow"
    target.mkdir()
    manifest = orjson.loads((source / "manifest.json").read_bytes())
    (target / "manifest.json").write_bytes(orjson.dumps({**manifest, "state": "running", "finished_at": None}))
    lock = open(target / "run.lock", "a+")  # held while "running", as a real run holds it
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    sample = [orjson.loads(line) for line in (source / "results.jsonl").read_bytes().splitlines()[:1000]]
    received = [0, -1]
    goal = args.grow_mb * 1_000_000
    written = 0
    serial = 0
    print(f"memory: one page follows runs/grow while its results.jsonl grows to {args.grow_mb} MB", flush=True)
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(page(session, f"{base}/api/runs/grow/events", received))
        await asyncio.sleep(2)
        _, rss0 = proc_stats(serve.pid)
        print(f"  {0:8.0f} MB: serve RSS {rss0:6.1f} MB", flush=True)
        step = goal // 10
        with (target / "results.jsonl").open("ab") as out:
            for tenth in range(1, 11):
                block = []
                size = 0
                while written + size < tenth * step:
                    line = orjson.dumps({**sample[serial % len(sample)], "id": f"G{serial:09d}"}) + b"\n"
                    block.append(line)
                    size += len(line)
                    serial += 1
                out.write(b"".join(block))
                out.flush()
                written += size
                deadline = time.monotonic() + 300
                while received[1] < serial and time.monotonic() < deadline:  # the page has seen every line
                    await asyncio.sleep(0.2)
                _, rss = proc_stats(serve.pid)
                print(f"  {written / 1e6:8.0f} MB ({serial:,} lines): serve RSS {rss:6.1f} MB", flush=True)
        # the run ends: lock released, state done; the server grades it (in a child process)
        (target / "manifest.json").write_bytes(orjson.dumps({**manifest, "state": "done"}))
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        lock.close()
        async with session.get(f"{base}/api/runs/grow") as response:
            await response.read()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            async with session.get(f"{base}/api/runs/grow") as response:
                if (await response.json())["grading"] is not None:
                    break
            await asyncio.sleep(1)
        _, rss = proc_stats(serve.pid)
        print(f"  after grading the {serial:,}-line run (in a child process): serve RSS {rss:6.1f} MB", flush=True)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--grow-mb", type=int, default=400)
    args = parser.parse_args()
    sample = [orjson.loads(line) for line in (ROOT / "sample_data" / "tickets.jsonl").read_bytes().splitlines()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="batchrun-serve-load-") as tmp:
        directory = Path(tmp)
        with open(directory / "tickets.jsonl", "wb") as out:
            for i in range(args.tickets):
                out.write(orjson.dumps({**sample[i % len(sample)], "id": f"L{i:08d}"}) + b"\n")
        (directory / "job.toml").write_text(JOB.format(concurrency=args.concurrency, latency=args.latency_ms))
        runs = directory / "runs"
        runs.mkdir()
        serve, base = start_serve(runs, env)
        run = subprocess.Popen([sys.executable, "-m", "batchrun.cli", "run", str(directory / "job.toml"),
                                "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            print(f"{args.tickets:,} tickets, concurrency {args.concurrency}, simulator {args.latency_ms:g} ms; "
                  f"{os.cpu_count()} cores", flush=True)
            asyncio.run(throughput(args, base, serve, runs / "load" / "results.jsonl", run))
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGINT)
                run.wait(timeout=120)
        try:
            asyncio.run(memory(args, base, serve, runs))
        finally:
            serve.terminate()
            serve.wait(timeout=30)


if __name__ == "__main__":
    main()
