"""The retry policy over real HTTP: litellm to a simulator injecting faults.
The simulator counts requests per ticket, so hidden retries would show."""

from __future__ import annotations

import anyio
import pytest

from batchrun import execute_run, load_job, prepare_run
from batchrun.providers.online import LiteLLMProvider
from conftest import read_jsonl

SCHEDULE = {
    "T000002": ("503", [1, 2]),           # fails twice, then succeeds: 3 requests
    "T000003": ("429", [1]),              # Retry-After in seconds
    "T000004": ("429_date", [1]),         # Retry-After as an HTTP date
    "T000005": ("429_ms", [1]),           # retry-after-ms
    "T000006": ("429_bare", [1]),         # no header: jittered backoff
    "T000007": ("500", [1]), "T000008": ("502", [1]), "T000009": ("html_error", [1]),
    "T000010": ("malformed_json", [1]), "T000011": ("reset", [1]),
    "T000012": ("context_length", [1, 2, 3]),   # 400: never retried
    "T000013": ("content_policy", [1, 2, 3]),   # 400: never retried
    "T000014": ("404_model", [1, 2, 3]),        # 404: never retried
    "T000015": ("503", [1, 2, 3, 4]),           # more failures than max_attempts = 3
}
EXPECTED_ATTEMPTS = {"T000002": 3, "T000015": 3, "T000012": 1, "T000013": 1, "T000014": 1}


@pytest.fixture(scope="module")
def faulty_sim():
    from batchrun.sim.config import SimConfig
    from batchrun.sim.faults import FaultRule
    from batchrun.sim.process import start_simulator

    rules = []
    for ticket, (kind, attempts) in SCHEDULE.items():
        rule = {"kind": kind, "tickets": [ticket], "attempts": attempts}
        if kind in ("429", "429_ms"):
            rule["retry_after"] = 0.05
        rules.append(FaultRule.from_mapping(rule))
    with start_simulator(SimConfig(latency_ms=2, jitter=0, faults=tuple(rules))) as sim:
        yield sim


def test_each_fault_is_retried_or_not_and_the_server_sees_exactly_the_attempts(make_job, tmp_path, faulty_sim):
    faulty_sim.reset()
    job = load_job(make_job(16, concurrency=4))
    prep = prepare_run(job, endpoint="sim")
    provider = LiteLLMProvider(model=job.model, api_base=faulty_sim.base_url, api_key="sim-key",
                               params=job.params)
    try:
        result = anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()
    results = {r["id"]: r for r in read_jsonl(tmp_path / "run" / "results.jsonl")}
    errors = {e["id"]: e for e in read_jsonl(tmp_path / "run" / "errors.jsonl")}
    assert set(errors) == {"T000012", "T000013", "T000014", "T000015"}
    assert errors["T000012"]["error_kind"] == "context_window"
    assert errors["T000013"]["error_kind"] == "content_policy"
    assert errors["T000014"]["error_kind"] == "not_found"
    assert errors["T000015"]["error_kind"] == "server_error" and errors["T000015"]["status_code"] == 503
    for ticket in ("T000003", "T000004", "T000005", "T000006", "T000007", "T000008", "T000009", "T000010",
                   "T000011"):
        assert results[ticket]["attempts"] == 2, ticket
    counts = faulty_sim.stats()["requests_by_ticket"]
    for ticket, line in {**results, **errors}.items():
        assert counts[ticket] == line["attempts"], ticket  # no hidden retries in litellm or the SDK
        assert line["attempts"] == EXPECTED_ATTEMPTS.get(ticket, line["attempts"])
    assert result.summary["rate_limited"] == 4
    assert result.summary["requests"] == sum(counts.values())
