"""batchrun behind a real LiteLLM Proxy (`litellm --config`, the version batchrun pins, no database,
a master key) in front of the embedded simulator, all on 127.0.0.1 (tests/real_proxy.py).

With the proxy's default retries (num_retries 2), and faults it absorbs:
  * the upstream requests recorded in the lines (upstream_attempts) equal the simulator's count,
    per ticket; the summary shows both; one warning names `num_retries: 0`; costs say
    cost_source "endpoint" (the proxy's x-litellm-response-cost);
  * a 429 whose Retry-After the proxy passes on as `llm_provider-retry-after` is waited;
  * kill -9 mid-run, run again: every ticket once, and every upstream request the lines do not
    account for belongs to a ticket named as possibly billed twice;
  * batch mode through the proxy (files_settings set) completes, every ticket once.
A deployment budget of the proxy that runs out stops the run (exit 5) after at most the requests
in flight; batch mode against a proxy without files_settings ends in one line and exit 2.

The proxy takes about 10 s to start (more on busy cores): each proxy serves a whole module's tests.
Figures are printed (`pytest -s tests/test_real_proxy.py`); nothing is timed for pass/fail.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from conftest import batchrun_cmd, read_jsonl
from real_proxy import deployment, proxy_available, start_proxy

# one xdist worker runs the whole module (make test: --dist loadgroup), so its two proxies start once
pytestmark = [pytest.mark.proxy, pytest.mark.slow, pytest.mark.xdist_group("real_proxy"),
              pytest.mark.skipif(not proxy_available(), reason="no LiteLLM Proxy: make test installs it into "
                                                               ".venv-proxy (tests/real_proxy.py)")]

RETRY_AFTER_S = 2
ALIAS = "team-classifier"  # a proxy alias with its own prices
RETRY_TICKET = "RETRY-1"
BATCH_FAST = 'batch_poll_s = 0.05\nbatch_poll_max_s = 0.2\n'


@pytest.fixture(scope="module")
def retrying_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """The simulator with faults the proxy's own retries absorb (20% of first tries answer 503, 10%
    of second tries 500), RETRY_TICKET answered 429 with Retry-After three times, then the proxy
    with its default retries, files_settings (and the provider credentials its batch routes read
    from the environment), forwarding batchrun's ticket header so the simulator counts per ticket."""
    from batchrun.sim.config import SimConfig
    from batchrun.sim.faults import FaultRule
    from batchrun.sim.process import start_simulator

    retry_steps = ";".join([f"429:retry_after={RETRY_AFTER_S}"] * 3 + ["ok"])
    config = SimConfig(latency_ms=20.0, jitter=0.2, batch_time_scale=86400.0,
                       faults=(FaultRule("503", rate=0.2, attempts=(1,)), FaultRule("500", rate=0.1, attempts=(2,))),
                       scripts=(f"{RETRY_TICKET}={retry_steps}",))
    with start_simulator(config) as sim:
        proxy_config = {
            "model_list": [deployment(sim.base_url),  # an alias litellm cannot price; the proxy can
                           deployment(sim.base_url, name=ALIAS, model="openai/batchrun-private-model",
                                      input_cost_per_token=2e-6, output_cost_per_token=8e-6)],
            "general_settings": {"forward_client_headers_to_llm_api": True},
            "files_settings": [{"custom_llm_provider": "openai", "api_base": sim.base_url, "api_key": "sim-key"}],
        }
        with start_proxy(proxy_config, tmp_path_factory.mktemp("retrying_proxy"),
                         env={"OPENAI_API_KEY": "sim-key", "OPENAI_API_BASE": sim.base_url}) as proxy:
            yield sim, proxy


@pytest.fixture(scope="module")
def budget_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """A plain simulator behind a proxy whose deployment may spend $0.0001 a day (no files_settings)."""
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    with start_simulator(SimConfig(latency_ms=20.0, jitter=0.0)) as sim:
        proxy_config = {"model_list": [deployment(sim.base_url, max_budget=0.0001, budget_duration="1d")],
                        "general_settings": {"forward_client_headers_to_llm_api": True}}
        with start_proxy(proxy_config, tmp_path_factory.mktemp("budget_proxy")) as proxy:
            yield sim, proxy


@pytest.fixture
def proxy_env(cli_env: dict[str, str]) -> dict[str, str]:
    from real_proxy import MASTER_KEY

    return {**cli_env, "BATCHRUN_TEST_KEY": MASTER_KEY}


def proxy_job(make_job: Any, n: int, **kwargs: Any) -> Path:
    """make_job's job with generous timeouts: on busy cores a request through the proxy (its own
    retries and their waits included) may take longer than the 10 s the other tests allow, and an
    attempt batchrun gave up on would still reach the upstream, unaccounted for."""
    job = make_job(n, **kwargs)
    text = job.read_text().replace("timeout_s = 10\n", "timeout_s = 300\n").replace("max_elapsed_s = 30\n",
                                                                                   "max_elapsed_s = 1200\n")
    assert "timeout_s = 300" in text and "max_elapsed_s = 1200" in text
    job.write_text(text)
    return job


def run(job: Path, proxy: Any, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(batchrun_cmd("run", str(job), "--api-base", proxy.base_url, "--no-progress", *extra),
                          env=env, capture_output=True, text=True, timeout=900)


def lines_of(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / "results.jsonl") + read_jsonl(run_dir / "errors.jsonl")


def upstream_by_ticket(run_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in lines_of(run_dir):
        counts[line["id"]] = counts.get(line["id"], 0) + int(line.get("upstream_attempts") or 0)
    return counts


def test_upstream_requests_equal_the_recorded_upstream_attempts(make_job, tmp_path, retrying_proxy, proxy_env):
    sim, proxy = retrying_proxy
    job = proxy_job(make_job, 80, concurrency=6)
    sim.reset()
    proc = run(job, proxy, proxy_env, "--json")
    assert proc.returncode == 0, proc.stderr + proxy.log()
    stats = sim.stats()
    results = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(results) == 80 == len({r["id"] for r in results})
    recorded = sum(r["upstream_attempts"] for r in results)
    assert recorded == stats["total_requests"]  # every request the proxy sent upstream is on a line
    assert upstream_by_ticket(tmp_path / "run") == stats["requests_by_ticket"]
    summary = orjson.loads(proc.stdout)["summary"]
    assert summary["upstream_requests"] == recorded > summary["requests"] == 80  # the proxy retried, batchrun not
    assert proc.stderr.count("retries on its own") == 1 and "num_retries: 0" in proc.stderr
    assert {r["cost_source"] for r in results} == {"endpoint"}  # x-litellm-response-cost
    print(f"\n[figures] proxy default retries: upstream requests {stats['total_requests']} (simulator) = "
          f"recorded upstream_attempts {recorded}; batchrun requests {summary['requests']}")


def test_a_retry_after_is_waited_through_the_proxy(make_job, tmp_path, retrying_proxy, proxy_env):
    sim, proxy = retrying_proxy
    job = proxy_job(make_job, 1, concurrency=1)
    ticket = {"id": RETRY_TICKET, "subject": "Refund", "body": "I was charged twice.", "customer": {"tier": "pro"}}
    (tmp_path / "tickets.jsonl").write_bytes(orjson.dumps(ticket) + b"\n")
    sim.reset()
    proc = run(job, proxy, proxy_env, "-v")
    assert proc.returncode == 0, proc.stderr + proxy.log()
    # the proxy tried 3 times (waiting the Retry-After itself), answered 429 with llm_provider-retry-after;
    # batchrun waited that long, then its second attempt went through
    assert f"{RETRY_TICKET}: attempt 1 failed: rate_limited (HTTP 429)" in proc.stderr
    assert f"retrying in {RETRY_AFTER_S:.2f} s" in proc.stderr
    (line,) = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert (line["attempts"], line["upstream_attempts"], line["upstream_unreported"]) == (2, 1, 1)
    assert sim.stats()["requests_by_ticket"][RETRY_TICKET] == 4
    print(f"\n[figures] Retry-After {RETRY_AFTER_S} s through the proxy: batchrun waited "
          f"{RETRY_AFTER_S:.2f} s (its log); the ticket took {line['elapsed_ms'] / 1000:.2f} s in all")


def test_kill_9_through_the_proxy_leaves_every_ticket_once(make_job, tmp_path, retrying_proxy, proxy_env):
    sim, proxy = retrying_proxy
    n = 150
    job = proxy_job(make_job, n, concurrency=8)
    results = tmp_path / "run" / "results.jsonl"
    sim.reset()
    proc = subprocess.Popen(batchrun_cmd("run", str(job), "--api-base", proxy.base_url, "--no-progress"),
                            env=proxy_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (results.exists() and results.read_bytes().count(b"\n") >= 20 and sim.stats()["in_flight"] > 0):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no progress with requests in flight"
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=60)
    from batchrun.rundir.status import run_status

    dead = run_status(tmp_path / "run")
    assert dead["state"] == "stopped unexpectedly" and dead["current_run"]["done"] >= 20
    maybe_billed = set(dead["maybe_billed_before_ids"])
    again = run(job, proxy, proxy_env)
    assert again.returncode == 0, again.stderr + proxy.log()
    rows = read_jsonl(results)
    assert len(rows) == n == len({r["id"] for r in rows})  # exactly once
    sent = sim.stats()["requests_by_ticket"]
    recorded = upstream_by_ticket(tmp_path / "run")
    unaccounted = {t for t, count in sent.items() if count > recorded.get(t, 0)}
    assert unaccounted <= maybe_billed  # upstream requests no line accounts for: in flight at the kill
    marked = {r["id"] for r in rows if r.get("maybe_billed_before")}
    assert unaccounted <= marked
    print(f"\n[figures] kill -9 through the proxy: {n} tickets once; {len(maybe_billed)} in flight at the kill, "
          f"{len(unaccounted)} of them reached the upstream")


def test_batch_mode_through_the_proxy_with_files_settings(make_job, tmp_path, retrying_proxy, proxy_env):
    sim, proxy = retrying_proxy
    job = proxy_job(make_job, 30, concurrency=4, top='mode = "batch"\n' + BATCH_FAST)
    proc = run(job, proxy, proxy_env)
    assert proc.returncode == 0, proc.stderr + proxy.log()
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(rows) == 30 == len({r["id"] for r in rows})
    ledger = orjson.loads((tmp_path / "run" / "batches.json").read_bytes())
    assert [p["state"] for p in ledger["parts"]] == ["collected"]
    assert all(r["cost_usd"] is not None for r in rows)  # the upstream model name is priced
    print(f"\n[figures] batch mode through the proxy: {len(rows)} tickets, {len(ledger['parts'])} batch, exit 0")


def test_a_spent_proxy_budget_stops_the_run_after_the_requests_in_flight(make_job, tmp_path, budget_proxy,
                                                                          proxy_env):
    sim, proxy = budget_proxy
    concurrency = 4
    job = proxy_job(make_job, 200, concurrency=concurrency)
    proc = run(job, proxy, proxy_env, "--json")
    assert proc.returncode == 5, proc.stderr + proxy.log()
    out = orjson.loads(proc.stdout)
    assert out["state"] == "budget_exhausted" and "crossed budget" in out["error"]
    refused = [e for e in read_jsonl(tmp_path / "run" / "errors.jsonl") if e["error_kind"] == "budget_exceeded"]
    done = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert 1 <= len(refused) <= concurrency  # the first refusal, and those already in flight
    assert all(e["attempts"] == 1 for e in refused)  # never retried
    assert out["summary"]["requests"] == len(done) + len(refused)  # nothing sent after them
    assert sim.stats()["total_requests"] == len(done)  # the proxy refused them itself
    print(f"\n[figures] proxy budget: {len(done)} answered, then {len(refused)} refused "
          f"(in flight: at most {concurrency}); {out['summary']['requests']} requests sent in all, "
          f"{200 - len(done) - len(refused)} tickets not sent")


def test_batch_mode_without_files_settings_ends_in_one_line_and_exit_2(make_job, tmp_path, budget_proxy,
                                                                        proxy_env):
    sim, proxy = budget_proxy
    job = proxy_job(make_job, 10, concurrency=2, top='mode = "batch"\n' + BATCH_FAST)
    proc = run(job, proxy, proxy_env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "ExceptionGroup" not in proc.stderr
    (error,) = [line for line in (re.sub(r"^\S+ ", "", each) for each in proc.stderr.splitlines())
                if line.startswith("batchrun: error:")]  # after each line's date-time
    assert f"POST {proxy.base_url}/files answered HTTP 500" in error and "files_settings is not set" in error
    ledger = orjson.loads((tmp_path / "run" / "batches.json").read_bytes())
    assert [p["state"] for p in ledger["parts"]] == ["built"]  # kept: a later run uploads it
    print(f"\n[figures] batch mode without files_settings: exit {proc.returncode}, one line:\n  {error}")


def test_plan_prices_a_proxy_alias_from_the_endpoint_and_runs_record_its_cost(make_job, tmp_path, retrying_proxy,
                                                                               proxy_env):
    sim, proxy = retrying_proxy
    job = proxy_job(make_job, 6, concurrency=2)
    plan = subprocess.run(batchrun_cmd("plan", str(job), "--api-base", proxy.base_url, "--model", f"openai/{ALIAS}",
                                       "--json"), env=proxy_env, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr
    price = orjson.loads(plan.stdout)["models"][0]["price"]
    assert (price["source"], price["input_per_million_usd"], price["output_per_million_usd"]) == ("endpoint", 2.0, 8.0)
    proc = run(job, proxy, proxy_env, "--model", f"openai/{ALIAS}")
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert all(r["cost_source"] == "endpoint" and r["cost_usd"] for r in rows)  # litellm alone has no price
    expected = sum(r["usage"]["prompt_tokens"] * 2e-6 + r["usage"]["completion_tokens"] * 8e-6 for r in rows)
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(expected)
    print(f"\n[figures] plan --api-base: {ALIAS} priced by the proxy at $2 / $8 per million; "
          f"{len(rows)} answers cost ${sum(r['cost_usd'] for r in rows):.6f} (cost_source endpoint)")
