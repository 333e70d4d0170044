"""Every request that leaves the machine is one counted attempt, over real HTTP.

A simulator child process resets connections (before the response headers,
and in the middle of the body) and answers without usage; batchrun's real
provider (litellm) runs a job against it, streamed and not. The simulator
counts the requests it received per ticket (``/sim/stats``); they must equal
the ``attempts`` batchrun recorded for every ticket. A retry hidden in
litellm's HTTP handler, the OpenAI SDK or aiohttp would show as a ticket with
more requests than attempts.
"""

from __future__ import annotations

import inspect

import anyio
import pytest

from batchrun import execute_run, load_job, prepare_run
from batchrun.providers import tuning as litellm_tuning
from batchrun.providers import litellm_setup as provider_module
from batchrun.providers.tuning import OPENAI_HTTP_HANDLER_ENV
from batchrun.providers.online import LiteLLMProvider
from batchrun.providers.litellm_setup import openai_transport
from conftest import read_jsonl

TICKETS = 200


@pytest.fixture(scope="module")
def resetting_sim():
    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator

    faults = ({"kind": "reset_before_headers", "rate": 0.10}, {"kind": "reset", "rate": 0.05})
    with start_simulator(SimConfig(latency_ms=2, jitter=0, seed=12, faults=faults)) as sim:
        yield sim


def run_job(job_path, sim):
    job = load_job(job_path)
    prep = prepare_run(job, endpoint="sim")
    provider = LiteLLMProvider(model=job.model, api_base=sim.base_url, api_key="sim-key", params=job.params)
    try:
        return anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()


def test_the_no_resend_patch_is_installed_on_the_litellm_in_range():
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

    litellm = provider_module.import_litellm()
    # the code it relies on: post() resends through one of these functions in this except clause
    source = inspect.getsource(AsyncHTTPHandler.post)
    [(name, clause)] = [(n, c) for n, c in litellm_tuning.RESEND_TARGETS if f"self.{n}(" in source]
    assert clause in source
    assert getattr(getattr(AsyncHTTPHandler, name), "batchrun_no_resend", False)
    assert litellm_tuning._install_no_hidden_resend(litellm) == "installed"  # idempotent: still the one wrapper
    assert not getattr(getattr(AsyncHTTPHandler, name).__wrapped__, "batchrun_no_resend", False)


# (stream, the transport switch as a user may set it: None keeps batchrun's choice)
PATHS = {
    "plain-litellm-http": (False, None),
    "streamed-openai-sdk": (True, None),
    "plain-openai-sdk": (False, "false"),
    "streamed-litellm-http": (True, "true"),
}


@pytest.mark.slow  # 200 tickets through resets on each HTTP path
@pytest.mark.parametrize("path", list(PATHS))
def test_server_requests_equal_recorded_attempts_under_resets(make_job, tmp_path, resetting_sim, monkeypatch, path):
    stream, user_switch = PATHS[path]
    monkeypatch.setattr(litellm_tuning, "_USER_TRANSPORT", user_switch)
    if user_switch is None:
        monkeypatch.delenv(OPENAI_HTTP_HANDLER_ENV, raising=False)
    else:
        monkeypatch.setenv(OPENAI_HTTP_HANDLER_ENV, user_switch)
    assert openai_transport(stream) == path.split("-", 1)[1]
    resetting_sim.reset()
    job = make_job(TICKETS, concurrency=16, top="stream = true\n" if stream else "")
    job.write_text(job.read_text().replace("max_attempts = 3", "max_attempts = 6"))
    result = run_job(job, resetting_sim)
    lines = read_jsonl(tmp_path / "run" / "results.jsonl") + read_jsonl(tmp_path / "run" / "errors.jsonl")
    recorded = {line["id"]: line["attempts"] for line in lines}
    stats = resetting_sim.stats()
    received = stats["requests_by_ticket"]
    faults = stats["faults_by_kind"]
    print(f"\n{path}: {len(recorded)} tickets, server received {sum(received.values())} requests, "
          f"batchrun recorded {sum(recorded.values())} attempts; faults {faults}")
    assert len(recorded) == TICKETS
    assert faults.get("reset_before_headers", 0) >= 10 and faults.get("reset", 0) >= 4, faults
    mismatched = {t: (received.get(t), n) for t, n in recorded.items() if received.get(t) != n}
    assert not mismatched, (
        f"server received {sum(received.values())} requests, batchrun recorded {sum(recorded.values())} "
        f"attempts; (received, recorded) per ticket: {dict(list(mismatched.items())[:10])}")
    assert result.summary["requests"] == sum(received.values())
    # every reset is a failed attempt of kind connection (point 6c), retried
    assert result.summary["errors_by_kind"] == {"connection": sum(faults.values())}, (result.summary, faults)


@pytest.mark.slow  # resets and retries through the command line and worker processes
def test_a_jobs_simulator_scripts_reach_the_wire_through_the_cli(make_job, tmp_path, cli_env):
    """`batchrun run` with a [simulator] section: the scripts reach the embedded simulator, and the
    recorded attempts and usage follow them (worker processes, litellm, real HTTP)."""
    from conftest import batchrun_cmd, cli_run

    job = make_job(12, concurrency=4, extra="""
        [simulator]
        latency_ms = 1
        [[simulator.scripts]]
        tickets = ["T000003"]
        steps = ["reset_before_headers", "reset", "reset_before_headers", "ok"]
        [[simulator.scripts]]
        tickets = ["T000004", "T000005"]
        steps = ["usage_null"]
    """)
    job.write_text(job.read_text().replace("max_attempts = 3", "max_attempts = 5"))
    proc = cli_run(batchrun_cmd("run", str(job)), env=cli_env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "run" / "results.jsonl")}
    assert rows["T000003"]["attempts"] == 4  # three resets, each one counted attempt, then the answer
    assert all(row["attempts"] == 1 for ticket, row in rows.items() if ticket != "T000003")
    assert {t for t, row in rows.items() if row["usage_source"] == "estimated"} == {"T000004", "T000005"}
    assert "2 result(s) without usage from the provider" in proc.stdout + proc.stderr
