"""Data in and out at 1,000,000 tickets: `batchrun export` and a Parquet input.

    python benchmarks/data_io.py export  [--tickets 1000000] [--format jsonl,csv,parquet] [--with-input]
    python benchmarks/data_io.py parquet [--tickets 1000000] [--row-group 65536]

export: writes a synthetic run directory (the input as JSON Lines, a
results.jsonl line per ticket in a shuffled order, as concurrency leaves
them, 1% of the tickets failed in errors.jsonl, 1% pending, a manifest),
then times `batchrun export` in a subprocess for each format and prints its
wall time and peak RSS (os.wait4 of that child alone).

parquet: writes a Parquet file of that many rows (id, subject, body and a
`customer` struct, in row groups of --row-group rows), then in a subprocess
(1) prepares a run of it (the one-pass check of every row, the resume
index) and takes the first ticket to send: "time to first request" without
the network, and (2) runs `batchrun run --limit 1000` against the embedded
simulator (0 ms) and reads the run's own `startup_s` (start to the first
ticket handed to a worker). Each prints wall time and peak RSS.

The figures go to benchmarks/README.md ("Data in and out").
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("bug", "feature", "billing", "other")


def reaped(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, stdout) of one child, reaped with os.wait4 so the RSS is its own."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {err.read().decode()[-2000:]}")
        return wall, usage.ru_maxrss / 1024, out.read().decode()


def ticket(i: int) -> dict:
    return {"id": f"T{i:08d}", "subject": f"Subject of ticket {i}",
            "body": f"Body of ticket {i}: the export joins this text back to the answer. " * 2,
            "customer": {"name": f"Customer {i % 977}", "tier": ("free", "pro", "enterprise")[i % 3]},
            "channel": "email"}


def make_run(directory: Path, n: int) -> Path:
    from batchrun.job.tickets import file_digest

    rng = random.Random(7)
    tickets = directory / "tickets.jsonl"
    with tickets.open("wb") as out:
        for i in range(n):
            out.write(orjson.dumps(ticket(i)) + b"\n")
    order = list(range(n))
    rng.shuffle(order)  # results land in completion order, not input order
    run = directory / "run"
    run.mkdir()
    with (run / "results.jsonl").open("wb") as results, (run / "errors.jsonl").open("wb") as errors:
        for i in order:
            tid = f"T{i:08d}"
            if i % 100 == 1:  # pending
                continue
            if i % 100 == 2:
                errors.write(orjson.dumps({"id": tid, "error_kind": "server_error", "error_type": "InternalServerError",
                                           "message": "500 from the provider", "status_code": 500, "attempts": 5,
                                           "started_at": "2026-12-02T10:00:00.000Z",
                                           "time": "2026-12-02T10:00:01.000Z", "run": 1}) + b"\n")
                continue
            results.write(orjson.dumps({
                "id": tid, "output": LABELS[i % 4], "label": LABELS[i % 4], "finish_reason": "stop",
                "truncated": False, "content_filtered": False, "model": "gpt-4o-mini",
                "usage": {"prompt_tokens": 61, "completion_tokens": 2, "total_tokens": 63},
                "usage_source": "provider", "cost_usd": 1.035e-05, "cost_status": "litellm", "latency_ms": 201.2,
                "ttft_ms": None, "output_tokens_per_s": 9.9, "elapsed_ms": 201.9, "attempts": 1,
                "started_at": "2026-12-02T10:00:00.000Z", "finished_at": "2026-12-02T10:00:00.201Z", "run": 1,
            }) + b"\n")
    sha256, size = file_digest(tickets)
    (run / "manifest.json").write_bytes(orjson.dumps({
        "input": {"path": str(tickets), "sha256": sha256, "size": size, "tickets": n, "format": "jsonl"},
        "job": {"name": "bench", "fingerprint": {"id_field": "id", "output": {"labels": list(LABELS)}}},
        "state": "done"}))
    return run


def bench_export(n: int, formats: list[str], with_input: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="batchrun-export-bench-") as tmp:
        t0 = time.monotonic()
        run = make_run(Path(tmp), n)
        print(f"run directory of {n:,} tickets written in {time.monotonic() - t0:.1f} s "
              f"(results.jsonl {(run / 'results.jsonl').stat().st_size / 1e6:.0f} MB)")
        for fmt in formats:
            out = Path(tmp) / f"export.{fmt}"
            args = [sys.executable, "-m", "batchrun.cli", "export", str(run), "--format", fmt, "--out", str(out)]
            if with_input:
                args.append("--with-input")
            wall, rss, stdout = reaped(args)
            print(f"export {fmt}{' --with-input' if with_input else ''}: {wall:.1f} s, peak RSS {rss:.0f} MB, "
                  f"{out.stat().st_size / 1e6:.0f} MB written; {stdout.strip()}")
            out.unlink()


PREPARE = """
import sys, time
t0 = time.monotonic()
from batchrun.execution.preparation import prepare_run
from batchrun.job.spec import load_job
from batchrun.job.tickets import read_tickets
job = load_job(sys.argv[1])
prep = prepare_run(job)
t1 = time.monotonic()
first = next(read_tickets(job.input, job.id_field, only_lines=prep.scan.dispatch, input_format=job.input_format))
t2 = time.monotonic()
print(f"{prep.scan.tickets} {t1 - t0:.3f} {t2 - t0:.3f} {first.id}")
prep.release()
"""

JOB = """\
name = "parquet_bench"
input = "tickets.parquet"
run_dir = "{run_dir}"
model = "openai/gpt-4o-mini"
concurrency = 64
workers = 1
[prompt]
user = "Subject: {{subject}} ({{customer.tier}})"
[params]
max_tokens = 5
[simulator]
latency_ms = 0
jitter = 0
"""


def bench_parquet(n: int, row_group: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="batchrun-parquet-bench-") as tmp:
        directory = Path(tmp)
        t0 = time.monotonic()
        writer = None
        for start in range(0, n, row_group):
            table = pa.Table.from_pylist([ticket(i) for i in range(start, min(n, start + row_group))])
            if writer is None:
                writer = pq.ParquetWriter(directory / "tickets.parquet", table.schema)
            writer.write_table(table, row_group_size=row_group)
        assert writer is not None
        writer.close()
        size = (directory / "tickets.parquet").stat().st_size
        print(f"{n:,} rows of Parquet ({size / 1e6:.0f} MB, row groups of {row_group:,}) written in "
              f"{time.monotonic() - t0:.1f} s")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        (directory / "prepare.toml").write_text(JOB.format(run_dir="run_prepare"))
        wall, rss, out = reaped([sys.executable, "-c", PREPARE, str(directory / "prepare.toml")], env)
        tickets, prepared, first = out.split()[:3]
        print(f"prepare (one-pass check of {int(tickets):,} rows + index): {float(prepared):.1f} s; first ticket "
              f"to send read at {float(first):.1f} s after start; peak RSS {rss:.0f} MB")
        (directory / "run.toml").write_text(JOB.format(run_dir="run"))
        wall, rss, _ = reaped([sys.executable, "-m", "batchrun.cli", "run", str(directory / "run.toml"),
                               "--limit", "1000", "--no-progress"], env)
        summary = orjson.loads((directory / "run" / "manifest.json").read_bytes())["summary"]
        print(f"batchrun run --limit 1000 on it: {wall:.1f} s in all; first ticket handed to a worker "
              f"{summary['startup_s']:.1f} s after the run started; peak RSS {rss:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["export", "parquet"])
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--format", default="jsonl,csv,parquet")
    parser.add_argument("--with-input", action="store_true")
    parser.add_argument("--row-group", type=int, default=65536)
    args = parser.parse_args()
    if args.what == "export":
        bench_export(args.tickets, args.format.split(","), args.with_input)
    else:
        bench_parquet(args.tickets, args.row_group)


if __name__ == "__main__":
    main()
