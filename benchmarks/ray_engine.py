"""engine = "ray" against worker processes, ray.data.llm, and the limits of the design.

    python benchmarks/ray_engine.py [--tickets 2000] [--concurrency 128] [--latency-ms 200]
                                    [--rounds 2] [--ray-data] [--limiter] [--scaling] [--json OUT]

One local Ray (2 CPUs) and one simulator (200 ms, no jitter) serve every
measurement, so the figures compare on the same machine in the same run:

  throughput  `workers = 2` (two worker processes) and `engine = "ray"` with
              two actors, alternating, `--rounds` pairs, each a fresh run
              directory over the same tickets. The figure is
              requests_per_s_after_startup (from the first ticket handed out:
              the processes' or actors' litellm import is not in it). The
              driver's CPU per ticket (this process: the engine, the writer,
              Ray's own threads) is the ceiling of the driver's write rate:
              one core / CPU per ticket.
  --ray-data  the same tickets through ray.data.llm's HTTP processor
              (HttpRequestProcessorConfig, 2 actors, its defaults otherwise)
              against the same simulator; needs `pip install 'ray[data]==2.60.0'`
              (not a batchrun dependency: only this benchmark uses it)
  --scaling   --engine ray with 1, 2 and 4 actors (4 share the 2 CPUs)
  --limiter   the ClusterLimiter's grant rate: 2 client actors x 32 loops
              leasing blocks of 1 and of 16 permits from a limiter whose
              rpm never binds

Figures are written up in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batchrun import execute_run, load_job, prepare_run  # noqa: E402
from batchrun.sim.config import SimConfig  # noqa: E402
from batchrun.sim.process import start_simulator  # noqa: E402

JOB = """\
name = "ray_bench"
input = "tickets.jsonl"
run_dir = "{run_dir}"
model = "openai/gpt-4o-mini"
concurrency = {concurrency}
timeout_s = 30
[prompt]
system = "Classify the ticket as exactly one of: bug, feature, billing, other."
user = "Subject: {{subject}}\\n\\n{{body}}"
[params]
temperature = 0
max_tokens = 5
"""
SYSTEM = "Classify the ticket as exactly one of: bug, feature, billing, other."


def make_tickets(folder: Path, n: int) -> list[dict[str, Any]]:
    sample = [orjson.loads(line) for line in (ROOT / "sample_data" / "tickets.jsonl").read_bytes().splitlines()]
    rows = [{**row, "id": f"B{i:06d}"} for i, row in zip(range(n), itertools.cycle(sample))]
    (folder / "tickets.jsonl").write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return rows


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_run(folder: Path, sim: Any, concurrency: int, name: str, engine: str, workers: int = 2) -> dict[str, Any]:
    job_path = folder / f"{name}.toml"
    job_path.write_text(JOB.format(run_dir=f"runs/{name}", concurrency=concurrency))
    job = load_job(job_path)
    prep = prepare_run(job, endpoint="simulator")
    kwargs = {"model": "openai/gpt-4o-mini", "api_base": sim.base_url, "api_key": "sim-key",
              "params": {"max_tokens": 5, "temperature": 0}, "prices": None, "max_connections": concurrency}
    cpu0 = cpu_self()
    try:
        result = anyio.run(lambda: execute_run(prep, None, workers=workers, provider_kwargs=kwargs,
                                                          engine=engine))
    finally:
        prep.release()
    driver_cpu = cpu_self() - cpu0
    s = result.summary
    assert result.state == "done" and s["done"] == prep.to_do, (result.state, result.error)
    return {"engine": engine, "workers": workers, "state": result.state, "tickets": s["done"],
            "requests_per_s_after_startup": s["requests_per_s_after_startup"], "wall_s": s["wall_s"],
            "startup_s": s["startup_s"], "driver_cpu_ms_per_ticket": round(driver_cpu / s["done"] * 1000, 3),
            "worker_cpu_ms_per_ticket": round(s["worker_cpu_s"] / s["done"] * 1000, 3),
            "cluster": s.get("cluster")}


def ray_data_run(rows: list[dict[str, Any]], sim: Any) -> dict[str, Any]:
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    config = HttpRequestProcessorConfig(url=f"{sim.base_url}/chat/completions",
                                        headers={"Authorization": "Bearer sim-key"}, concurrency=2)

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        return {"payload": {"model": "gpt-4o-mini", "max_tokens": 5, "temperature": 0, "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Subject: {row['subject']}\n\n{row['body']}"}]}}

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        return {"answer": row["http_response"]["choices"][0]["message"]["content"]}

    processor = build_processor(config, preprocess=preprocess, postprocess=postprocess)
    dataset = ray.data.from_items([{"subject": r["subject"], "body": r["body"]} for r in rows])
    before = sim.stats()["total_requests"]
    t0 = time.monotonic()
    out = processor(dataset).take_all()
    wall = time.monotonic() - t0
    sent = sim.stats()["total_requests"] - before
    return {"engine": "ray.data.llm HttpRequestProcessor", "tickets": len(out), "requests": sent,
            "wall_s": round(wall, 3), "requests_per_s": round(sent / wall, 2),
            "batch_size": config.batch_size}


class LeaseClient:
    async def hammer(self, limiter: Any, block: int, loops: int, seconds: float) -> int:
        import asyncio

        granted = 0
        deadline = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal granted
            while time.monotonic() < deadline:
                got, _, _ = await limiter.lease.remote("", [0.0] * block, 0)
                granted += got

        await asyncio.gather(*(loop() for _ in range(loops)))
        return granted


def limiter_rate(seconds: float = 5.0) -> list[dict[str, Any]]:
    import ray

    from batchrun.execution.executors.ray_limiter import ClusterLimiter

    rows = []
    for block in (1, 16):
        limiter = ray.remote(ClusterLimiter).options(num_cpus=0, max_concurrency=10_000).remote(
            {"": [10**12, None]}, 2)
        clients = [ray.remote(LeaseClient).options(num_cpus=0, max_concurrency=1000).remote() for _ in range(2)]
        ray.get(limiter.counters.remote())
        t0 = time.monotonic()
        granted = sum(ray.get([c.hammer.remote(limiter, block, 32, seconds) for c in clients]))
        wall = time.monotonic() - t0
        counters = ray.get(limiter.counters.remote())
        rows.append({"block": block, "lease_calls_per_s": round(counters["lease_calls"] / wall),
                     "permits_per_s": round(granted / wall)})
        for actor in (limiter, *clients):
            ray.kill(actor)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ray-data", action="store_true", help="also ray.data.llm's HTTP processor")
    parser.add_argument("--limiter", action="store_true", help="also the limiter's grant rate")
    parser.add_argument("--scaling", action="store_true", help="also --engine ray with 1, 2 and 4 actors")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, namespace="batchrun", log_to_driver=False)
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                start_simulator(SimConfig(latency_ms=args.latency_ms, jitter=0.0)) as sim:
            folder = Path(tmp)
            rows = make_tickets(folder, args.tickets)
            print(f"{'run':<28} {'req/s after start-up':>20} {'wall s':>8} {'start-up s':>10} "
                  f"{'driver ms/ticket':>16} {'worker ms/ticket':>16}")
            for round_no in range(args.rounds):
                for engine in ("local", "ray"):
                    row = one_run(folder, sim, args.concurrency, f"{engine}{round_no}", engine)
                    report["runs"].append(row)
                    label = "--workers 2" if engine == "local" else "--engine ray, 2 actors"
                    print(f"{label:<28} {row['requests_per_s_after_startup']:>20} {row['wall_s']:>8} "
                          f"{row['startup_s']:>10} {row['driver_cpu_ms_per_ticket']:>16} "
                          f"{row['worker_cpu_ms_per_ticket']:>16}", flush=True)
            local = [r["requests_per_s_after_startup"] for r in report["runs"] if r["engine"] == "local"]
            on_ray = [r["requests_per_s_after_startup"] for r in report["runs"] if r["engine"] == "ray"]
            ratios = [b / a for a, b in zip(local, on_ray)]
            report["ray_over_workers"] = [round(r, 3) for r in ratios]
            print(f"ray / workers, per round: {', '.join(f'{r:.2f}' for r in ratios)}")
            if args.scaling:
                report["scaling"] = []
                for actors in (1, 2, 4):
                    row = one_run(folder, sim, args.concurrency, f"scale{actors}", "ray", actors)
                    report["scaling"].append(row)
                    print(f"--engine ray, {actors} actor(s): {row['requests_per_s_after_startup']} req/s after "
                          f"start-up, driver {row['driver_cpu_ms_per_ticket']} ms/ticket", flush=True)
            if args.ray_data:
                try:
                    row = ray_data_run(rows, sim)
                except ImportError as exc:
                    row = {"engine": "ray.data.llm", "error": f"not installed ({exc}): "
                           "pip install 'ray[data]==2.60.0'"}
                report["ray_data"] = row
                print(f"ray.data.llm: {row}")
            if args.limiter:
                report["limiter"] = limiter_rate()
                for row in report["limiter"]:
                    print(f"limiter, blocks of {row['block']}: {row['lease_calls_per_s']} lease calls/s, "
                          f"{row['permits_per_s']} permits/s")
    finally:
        ray.shutdown()
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
