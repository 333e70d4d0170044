"""How close to max_cost_usd a run gets, and whether it passes it (issue 25, point 5).

    python benchmarks/hard_budget.py [--cap 0.003] [--scale 1.3] [--concurrency 16 64 128] [--workers 1]

Runs the sample job (jobs/classify_tickets.toml on sample_data/tickets.jsonl) against a simulator
started here whose tokenizer counts `--scale` times the prompt tokens of its own count (so the
client's estimate falls short, as against a real provider), once per concurrency, each in a fresh
run directory with `max_cost_usd = --cap`. Prints, per run: the state, what the simulator billed
(its invoice in /sim/stats, priced by litellm's map), what the lines recorded, the share of the cap
used and the tickets answered. The cap holds when billed <= cap on every row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def job_file(folder: Path, scale: float) -> Path:
    text = (ROOT / "jobs" / "classify_tickets.toml").read_text()
    text = text.replace('input = "../sample_data/tickets.jsonl"', f'input = "{ROOT / "sample_data" / "tickets.jsonl"}"')
    text = text.replace('run_dir = "../runs/classify_tickets"', 'run_dir = "run"')
    path = folder / "job.toml"
    path.write_text(text + f"prompt_token_scale = {scale}\n")  # the last table is [simulator]
    return path


def billed_usd(model: str, kinds: dict[str, int]) -> float:
    from batchrun.providers.litellm_setup import import_litellm

    lm = import_litellm()
    cached, written = kinds["cached_tokens"], kinds["cache_write_tokens"]
    prompt = kinds["input_tokens"] + cached + written
    usage = lm.Usage(prompt_tokens=prompt, completion_tokens=kinds["output_tokens"],
                     total_tokens=prompt + kinds["output_tokens"],
                     prompt_tokens_details={"cached_tokens": cached, "cache_write_tokens": written})
    prompt_cost, completion_cost = lm.cost_per_token(model=model, usage_object=usage)
    return float(prompt_cost + completion_cost)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap", type=float, default=0.003)
    parser.add_argument("--scale", type=float, default=1.3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sim-key")  # sent to the simulator on 127.0.0.1 only

    import batchrun
    import batchrun.launcher as launcher
    from batchrun.sim.process import start_simulator

    for concurrency in args.concurrency:
        folder = Path(tempfile.mkdtemp(prefix="hard_budget_"))
        path = job_file(folder, args.scale)
        job = batchrun.load_job(path)
        with start_simulator(launcher.sim_config(job)) as sim:
            result = batchrun.run(path, api_base=sim.base_url, concurrency=concurrency, max_cost_usd=args.cap,
                                  workers=args.workers)
            kinds = sim.stats()["invoice"]["models"]["gpt-4o-mini"]["default"]
        rows = [orjson.loads(line) for line in (folder / "run" / "results.jsonl").read_bytes().splitlines()]
        recorded = sum(row["cost_usd"] or 0.0 for row in rows)
        billed = billed_usd(job.model, kinds)
        print(f"concurrency {concurrency:>4} workers {args.workers}: {result.state}, billed ${billed:.6f}, "
              f"recorded ${recorded:.6f}, {recorded / args.cap:.1%} of max_cost_usd = ${args.cap:g}, "
              f"{len(rows)} tickets{'' if billed <= args.cap else '  PASSED THE CAP'}", flush=True)


if __name__ == "__main__":
    main()
