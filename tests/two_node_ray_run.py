"""A run on a Ray cluster of two worker nodes, one of which is lost mid-run (tests/test_ray.py).

    python tests/two_node_ray_run.py JOB.toml SIMULATOR_BASE_URL

Starts a head node with no CPUs (the driver's node) and two worker nodes of
one CPU each on this machine (ray.cluster_utils.Cluster: separate raylets),
runs the job with two actors (one per node), kills every process of an
actor's node (not the driver's) once a third of the tickets are done, and prints one
JSON line: the run's summary, where the actors and the limiter were, which
node was lost. Its own process, because the test session already has a Ray.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import anyio
import orjson
import ray
from ray.cluster_utils import Cluster

from batchrun import execute_run, load_job, prepare_run
from batchrun.execution.executors.ray_actors import actor_name
from batchrun.execution.executors.ray_limiter import NAMESPACE


def main() -> None:
    job_path, base_url = Path(sys.argv[1]), sys.argv[2]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
    report: dict = {"head": cluster.head_node.node_id, "driver_node": ray.get_runtime_context().get_node_id()}
    try:
        job = load_job(job_path)
        prep = prepare_run(job, endpoint="simulator")
        results = prep.run_dir / "results.jsonl"

        def lose_a_node() -> None:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                done = results.read_bytes().count(b"\n") if results.exists() else 0
                if done >= prep.to_do // 3:
                    break
                time.sleep(0.02)
            names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
            run_id = next(name for name in names if name.startswith("batchrun-limiter-")).rsplit("-", 1)[1]
            limiter = next(name for name in names if name.startswith("batchrun-limiter-"))
            report["actor_nodes"] = [ray.get(ray.get_actor(actor_name(run_id, i)).node.remote()) for i in range(2)]
            report["limiter_node"] = ray.get(ray.get_actor(limiter).node.remote())
            # the driver is attached to one of the three raylets (all on this machine): lose an
            # actor's node that is not the driver's (a lost driver node ends the run, as it should)
            lost = next(node for node in workers if node.node_id in report["actor_nodes"]
                        and node.node_id != report["driver_node"])
            report["lost_node"] = lost.node_id
            cluster.remove_node(lost, allow_graceful=False)

        killer = threading.Thread(target=lose_a_node, daemon=True)
        killer.start()
        kwargs = {"model": "openai/gpt-4o-mini", "api_base": base_url, "api_key": "sim-key",
                  "params": {"max_tokens": 5, "temperature": 0}, "prices": None,
                  "max_connections": job.max_in_flight}
        try:
            result = anyio.run(lambda: execute_run(prep, None, workers=2, engine="ray", provider_kwargs=kwargs))
            report.update(state=result.state, error=result.error and str(result.error), summary=result.summary)
        except Exception as exc:  # reported, with where everything was, for the test's message
            report.update(state="raised", error=f"{type(exc).__name__}: {exc}", summary=None)
        finally:
            prep.release()
        killer.join(10)
    finally:
        ray.shutdown()
        cluster.shutdown()
    sys.stdout.write(orjson.dumps(report, default=str).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
    os._exit(0)  # the Cluster's exit hooks can hang once a node was killed; everything is stopped
