"""Peak memory of a run as the ticket count grows (it should stay flat, not grow per ticket).

    python benchmarks/memory.py [--tickets 2000,100000] [--concurrency 64] [--workers 1]

For each count, writes that many tickets (cycled from sample_data, new ids),
runs `batchrun run` on them in a subprocess against the embedded simulator at
0 ms latency, and prints the subprocess's peak RSS (getrusage of the child,
which is the coordinator; with --workers > 1 the worker processes are its
children and are reported separately by /usr/bin/time -v if you need them).
A 100,000-ticket run takes about 20 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent

JOB = """\
name = "memory"
input = "tickets.jsonl"
run_dir = "run"
model = "openai/gpt-4o-mini"
concurrency = {concurrency}
timeout_s = 30
[prompt]
system = "Classify the ticket as exactly one of: bug, feature, billing, other."
user = "Subject: {{subject}}\\n\\n{{body}}"
[params]
max_tokens = 5
[simulator]
latency_ms = 0
jitter = 0
"""


def measure(count: int, concurrency: int, workers: int) -> tuple[float, float]:
    sample = [orjson.loads(line) for line in (ROOT / "sample_data" / "tickets.jsonl").read_bytes().splitlines()]
    with tempfile.TemporaryDirectory(prefix="batchrun-memory-") as tmp:
        directory = Path(tmp)
        with open(directory / "tickets.jsonl", "wb") as out:
            for i in range(count):
                out.write(orjson.dumps({**sample[i % len(sample)], "id": f"M{i:08d}"}) + b"\n")
        (directory / "job.toml").write_text(JOB.format(concurrency=concurrency))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "batchrun.cli", "run", str(directory / "job.toml"), "--no-progress",
                        "--workers", str(workers)], env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", default="2000,100000")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    for count in (int(n) for n in args.tickets.split(",")):
        # RUSAGE_CHILDREN's maximum only grows: run the counts in increasing order
        peak, wall = measure(count, args.concurrency, args.workers)
        print(f"{count:>9,} tickets: peak RSS {peak:,.0f} MB (largest child so far), {wall:,.0f} s")


if __name__ == "__main__":
    main()
