"""How fast `batchrun run` answers a mistake (issue 26): a bad job, a missing key variable, a held lock.

Each case runs the installed `batchrun` command in a fresh process, ROUNDS times, and prints the wall
time of each run (min / median / max): what `time batchrun run JOB` shows, and the CPU time the
process used (user + system, median), which a busy machine changes much less than the wall time.
Nothing is sent; the three jobs are written to a temporary folder.

    .venv/bin/python benchmarks/answer_time.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).with_name("batchrun")
ROOT = Path(__file__).resolve().parent.parent

BAD_JOB = """\
name = "bad"
input = "tickets.csv"
model = "openai/gpt-4o-mini"
[prompt]
user = "Subject: {subjct}\\n{body}"
[params]
temperatur = 0
[simulator]
latency_ms = 5
"""
LIVE_JOB = """\
name = "live"
input = "tickets.csv"
model = "openai/gpt-4o-mini"
api_key_env = "BATCHRUN_BENCH_NO_SUCH_KEY"
[prompt]
user = "Subject: {subject}\\n{body}"
"""
GOOD_JOB = """\
name = "locked"
input = "tickets.csv"
run_dir = "run"
model = "openai/gpt-4o-mini"
[prompt]
user = "Subject: {subject}\\n{body}"
[simulator]
latency_ms = 5
"""


def timed(job: Path, cwd: Path) -> tuple[float, int, str, float]:
    """(wall seconds, exit code, first stderr line, CPU seconds of the child)."""
    env = {k: v for k, v in os.environ.items() if k != "BATCHRUN_BENCH_NO_SUCH_KEY"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([str(BIN), "run", str(job)], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, done.returncode, done.stderr.strip().splitlines()[0] if done.stderr else "", cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batchrun-answer-") as scratch:
        folder = Path(scratch)
        (folder / "tickets.csv").write_text("id,subject,body\n" + "".join(f"{i},s{i},b{i}\n" for i in range(100)))
        for name, text in (("bad.toml", BAD_JOB), ("live.toml", LIVE_JOB), ("locked.toml", GOOD_JOB)):
            (folder / name).write_text(text)
        (folder / "run").mkdir()
        with open(folder / "run" / "run.lock", "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a run "in progress"
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            print(f"batchrun at {BIN}, {args.rounds} rounds each, load average {os.getloadavg()[0]:.1f}")
            for case, job in (("bad job", "bad.toml"), ("missing key", "live.toml"), ("held lock", "locked.toml")):
                runs = [timed(folder / job, folder) for _ in range(args.rounds)]
                seconds = sorted(r[0] for r in runs)
                cpu = statistics.median(r[3] for r in runs)
                print(f"{case:<12} exit {runs[0][1]}  min {seconds[0]:.2f} s  median "
                      f"{statistics.median(seconds):.2f} s  max {seconds[-1]:.2f} s  cpu {cpu:.2f} s   "
                      f"({runs[0][2][:90]})")


if __name__ == "__main__":
    main()
