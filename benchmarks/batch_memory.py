"""Peak memory of a batch-mode run as the ticket count grows (it should stay within 1.2x from 2,000 to 100,000 tickets).

    python benchmarks/batch_memory.py [--tickets 2000,100000] [--max-requests 50000]

Starts one simulator (Batch API clock 86,400 times faster, so a batch's
simulated half hour passes in 0.02 s), then for each count writes that many
tickets (cycled from sample_data, new ids), runs `batchrun run JOB --api-base
URL` in batch mode in a subprocess, and reports that subprocess's own peak
RSS (os.wait4 of the child: the simulator, started here, is not counted),
its wall time and how many parts it made. Each run must end with every
ticket in results.jsonl. The memory of a batch run is bounded by a part
(the ids of one part, the files are streamed), not by the run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

JOB = """\
name = "batch_memory"
input = "tickets.jsonl"
run_dir = "run"
model = "openai/gpt-4o-mini"
api_key_env = "BATCHRUN_BENCH_KEY"
timeout_s = 30
mode = "batch"
batch_max_requests = {max_requests}
batch_poll_s = 0.2
batch_poll_max_s = 1
[prompt]
system = "Classify the ticket as exactly one of: bug, feature, billing, other."
user = "Subject: {{subject}}\\n\\n{{body}}"
[params]
max_tokens = 5
"""


def measure(count: int, base_url: str, max_requests: int) -> tuple[float, float, int]:
    sample = [orjson.loads(line) for line in (ROOT / "sample_data" / "tickets.jsonl").read_bytes().splitlines()]
    with tempfile.TemporaryDirectory(prefix="batchrun-batch-memory-") as tmp:
        directory = Path(tmp)
        with open(directory / "tickets.jsonl", "wb") as out:
            for i in range(count):
                out.write(orjson.dumps({**sample[i % len(sample)], "id": f"M{i:08d}"}) + b"\n")
        (directory / "job.toml").write_text(JOB.format(max_requests=max_requests))
        env = dict(os.environ, BATCHRUN_BENCH_KEY="sim-key",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "batchrun.cli", "run", str(directory / "job.toml"),
                                  "--api-base", base_url, "--no-progress"], env=env, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if child.returncode != 0:
            raise SystemExit(f"batchrun exited {child.returncode} for {count} tickets")
        done = sum(1 for _ in open(directory / "run" / "results.jsonl", "rb"))
        if done != count:
            raise SystemExit(f"{done} results for {count} tickets")
        parts = len(orjson.loads((directory / "run" / "batches.json").read_bytes())["parts"])
    return usage.ru_maxrss / 1024, wall, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickets", default="2000,100000")
    parser.add_argument("--max-requests", type=int, default=50000)
    args = parser.parse_args()
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    counts = [int(c) for c in args.tickets.split(",")]
    rows = []
    with start_simulator(SimConfig(latency_ms=0, jitter=0, batch_time_scale=86400.0, batch_duration_s=1800.0)) as sim:
        for count in counts:
            rss, wall, parts = measure(count, sim.base_url, args.max_requests)
            rows.append((count, rss, wall, parts))
            print(f"{count:>9,} tickets  peak RSS {rss:7.1f} MiB  wall {wall:7.1f} s  parts {parts}", flush=True)
    base = rows[0][1]
    for count, rss, _, _ in rows[1:]:
        print(f"{count:,} vs {rows[0][0]:,} tickets: peak RSS ratio {rss / base:.3f}")


if __name__ == "__main__":
    main()
