"""How long a resume takes before its first request, from a large checkpoint.

    python benchmarks/resume_speed.py [--tickets 1000000] [--pending 1000] [--dir DIR]

Writes DIR/tickets.jsonl (N tickets cycled from sample_data, with new ids)
and a run directory whose results.jsonl already holds the first N - pending
tickets (plausible result lines) next to the input index the run saved when
it started, as if it had been killed near its end.
Then it times `batchrun.execution.preparation.prepare_run` (lock, torn-line check, input
scan and hash, resume counts) plus the producer's skip to the first pending
ticket, against a provider that records when the first request arrives and
answers instantly. Prints the seconds to the first request.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batchrun import Completion, ScriptedProvider, Usage, execute_run, load_job, prepare_run  # noqa: E402

JOB = """\
name = "resume_speed"
input = "tickets.jsonl"
run_dir = "run"
model = "openai/gpt-4o-mini"
concurrency = 64
[prompt]
system = "Classify the ticket as exactly one of: bug, feature, billing, other."
user = "Subject: {subject}\\nCustomer tier: {customer.tier}\\n\\n{body}"
[params]
max_tokens = 5
"""


def build(directory: Path, tickets: int, pending: int) -> None:
    sample = [orjson.loads(line) for line in (ROOT / "sample_data" / "tickets.jsonl").read_bytes().splitlines()]
    with open(directory / "tickets.jsonl", "wb") as out:
        for i in range(tickets):
            ticket = dict(sample[i % len(sample)])
            ticket["id"] = f"R{i:08d}"
            out.write(orjson.dumps(ticket) + b"\n")
    with open(directory / "results.base.jsonl", "wb") as out:
        for i in range(tickets - pending):
            out.write(orjson.dumps({
                "id": f"R{i:08d}", "output": "bug", "finish_reason": "stop", "model": "gpt-4o-mini",
                "usage": {"prompt_tokens": 180, "completion_tokens": 1, "total_tokens": 181},
                "cost_usd": 0.0000276, "cost_status": "litellm", "latency_ms": 151.2, "elapsed_ms": 151.6,
                "attempts": 1, "started_at": "2026-11-22T01:31:48.011Z", "finished_at": "2026-11-22T01:31:48.163Z",
                "run": 1}) + b"\n")
    (directory / "job.toml").write_text(JOB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=1_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="batchrun-resume-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        if not (directory / "tickets.jsonl").exists():
            t = time.perf_counter()
            build(directory, args.tickets, args.pending)
            print(f"built {args.tickets:,} tickets and {args.tickets - args.pending:,} result lines "
                  f"in {time.perf_counter() - t:.1f} s ({directory})")
        run_dir = directory / "run"  # the run as it was when it was killed
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        shutil.copyfile(directory / "results.base.jsonl", run_dir / "results.jsonl")
        index_base = directory / "input-index.base.json"
        if not index_base.exists():  # the killed run's first start scanned the input and saved its index
            prepare_run(load_job(directory / "job.toml"), endpoint="bench", force=True).release()
            shutil.copyfile(run_dir / "input-index.json", index_base)
        shutil.copyfile(index_base, run_dir / "input-index.json")
        first_request: list[float] = []

        def answer(request):
            if not first_request:
                first_request.append(time.perf_counter())
            return Completion(text="bug", finish_reason="stop", model="m", usage=Usage(1, 1, 2),
                              cost_usd=0.0, cost_status="litellm")

        job = load_job(directory / "job.toml")
        start = time.perf_counter()
        prep = prepare_run(job, endpoint="bench", force=True)
        prepared = time.perf_counter()
        try:
            result = anyio.run(lambda: execute_run(prep, ScriptedProvider(answer)))
        finally:
            prep.release()
        print(f"prepare_run: {prepared - start:.2f} s; first request after {first_request[0] - start:.2f} s "
              f"(target < 5 s); resumed {prep.already_done:,} done, ran {result.summary['done']:,}")
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    main()
