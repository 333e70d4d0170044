"""What worker processes cost at start-up, and that a pool pays it once.

    python benchmarks/worker_startup.py [--tickets 40]

Two figures that used to be thresholds in tests (tests/test_bench.py,
tests/test_workers.py) and now live here, because on a loaded 2-core machine
a wall-time or CPU threshold can fail with nothing wrong:

  1. `batchrun bench --workers 2` (simulator, 5 ms, settings 1 and 4, 8
     tickets each): each row's `startup_s` (seconds before the first ticket)
     and `worker_startup_cpu_s` (CPU the worker processes spent before it).
     The sweep's workers import litellm once, during the warm-up, so both
     stay small (the tests used to demand < 2.0 s and < 0.5 CPU-s).
  2. A worker pool serving three runs of 40 tickets, one child killed
     before the third: `worker_startup_cpu_s` per run. The first two reuse
     the warmed children (the tests used to demand < 0.5 CPU-s); the third
     pays one litellm import in its replacement (> 0.5 CPU-s).

Results: benchmarks/README.md ("Worker start-up").
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batchrun.bench.sweep import run_bench  # noqa: E402
from batchrun.execution.engine import execute_run
from batchrun.execution.preparation import prepare_run  # noqa: E402
from batchrun.sim.config import SimConfig  # noqa: E402
from batchrun.sim.process import start_simulator  # noqa: E402
from batchrun.job.spec import load_job  # noqa: E402
from batchrun.execution.executors.process import open_worker_pool  # noqa: E402

JOB = ROOT / "jobs" / "classify_tickets.toml"


def bench_rows() -> None:
    outcome = run_bench(JOB, settings=[1, 4], tickets=8, workers=2, warmup=2,
                        sim_options={"latency_ms": 5.0, "jitter": 0.0})
    print("1. batchrun bench --workers 2 (simulator 5 ms, 8 tickets per setting)")
    for row in outcome.rows:
        print(f"   C={row['concurrency']}: startup_s {row.get('startup_s')}, "
              f"worker_startup_cpu_s {row.get('worker_startup_cpu_s')}")


def pool_runs(tickets: int) -> None:
    job = load_job(JOB)
    with start_simulator(SimConfig(latency_ms=5.0, jitter=0.0)) as sim, \
            tempfile.TemporaryDirectory(prefix="batchrun-startup-") as tmp:
        kwargs = {"model": "openai/gpt-4o-mini", "api_base": sim.base_url, "api_key": "sim-key",
                  "params": {"max_tokens": 5, "temperature": 0}, "prices": None}

        async def main() -> list[float]:
            figures = []
            async with open_worker_pool(max_connections=64) as pool:
                await pool.warm(2)
                for index in range(3):
                    if index == 2:  # kill one child: the next run spawns a replacement
                        victim = pool.idle[0]
                        os.kill(victim.process.pid, signal.SIGKILL)
                        with anyio.fail_after(30):
                            while not victim.gone:
                                await anyio.sleep(0.01)
                    prep = prepare_run(job.with_overrides(run_dir=Path(tmp) / f"run{index}", concurrency=6),
                                       endpoint="sim", limit=tickets)
                    try:
                        result = await execute_run(prep, None, workers=2, provider_kwargs=kwargs, worker_pool=pool)
                    finally:
                        prep.release()
                    figures.append(result.summary["worker_startup_cpu_s"])
            return figures

        figures = anyio.run(main)
    print(f"2. a worker pool, three runs of {tickets} tickets (a child killed before the third)")
    for index, cpu in enumerate(figures, 1):
        print(f"   run {index}: worker_startup_cpu_s {cpu}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=40)
    args = parser.parse_args()
    bench_rows()
    pool_runs(args.tickets)
