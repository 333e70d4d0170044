"""batchrun's own CPU per ticket, without litellm: the engine with an instant provider.

    python benchmarks/engine_overhead.py [--tickets 20000] [--concurrency 64]

Runs the real engine (producer, workers, tenacity retry controller, the
checkpoint writer through aiofiles, stats) over generated tickets against a
provider that answers at once, and prints the CPU time per ticket. Together
with `batchrun bench --baseline` (litellm's share), it says where the CPU of a
request goes.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import anyio
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batchrun import Completion, Usage, execute_run, load_job, prepare_run  # noqa: E402

JOB = """\
name = "overhead"
input = "tickets.jsonl"
run_dir = "run"
model = "openai/gpt-4o-mini"
concurrency = {concurrency}
workers = 1
[prompt]
system = "Classify the ticket as exactly one of: bug, feature, billing, other."
user = "Subject: {{subject}}\\n\\n{{body}}"
"""


class InstantProvider:
    answer = Completion(text="bug", finish_reason="stop", model="m", usage=Usage(100, 1, 101),
                        cost_usd=1e-5, cost_status="litellm")

    async def complete(self, request):
        await anyio.sleep(0)
        return self.answer

    def estimate_cost(self, request):
        return None

    def estimate_tokens(self, request):
        return 0, 0

    async def cached(self, request):
        return None

    async def remember(self, request, completion):
        return None

    async def aclose(self):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    sample = [orjson.loads(line) for line in (ROOT / "sample_data" / "tickets.jsonl").read_bytes().splitlines()]
    with tempfile.TemporaryDirectory(prefix="batchrun-overhead-") as tmp:
        directory = Path(tmp)
        with open(directory / "tickets.jsonl", "wb") as out:
            for i in range(args.tickets):
                out.write(orjson.dumps({**sample[i % len(sample)], "id": f"O{i:08d}"}) + b"\n")
        (directory / "job.toml").write_text(JOB.format(concurrency=args.concurrency))
        prep = prepare_run(load_job(directory / "job.toml"), endpoint="bench")
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        try:
            result = anyio.run(lambda: execute_run(prep, InstantProvider()))
        finally:
            prep.release()
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    done = result.summary["done"]
    print(f"{done:,} tickets in {wall:.2f} s: batchrun's own CPU {cpu / done * 1e3:.3f} ms per ticket")


if __name__ == "__main__":
    main()
