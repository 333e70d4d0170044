"""How transport failures are classed, over real sockets through litellm.

A refused connection, a reset before the response headers and a reset in
the middle of the body are kind ``connection`` (no HTTP status: none was
received), retried by tenacity with each try counted; a real HTTP 500 from a
server stays ``server_error`` with its status.
"""

from __future__ import annotations

import socket

import anyio
import pytest

from batchrun import execute_run, load_job, prepare_run
from batchrun.providers.seam import ChatRequest, RequestOptions
from batchrun.providers.online import LiteLLMProvider
from conftest import read_jsonl

MESSAGES = [{"role": "user", "content": "Subject: refund\n\nI was charged twice."}]


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_connection_refused_is_its_own_kind_and_every_try_is_counted(make_job, tmp_path, stream):
    job = load_job(make_job(4, concurrency=2, top="stream = true\n" if stream else ""))
    prep = prepare_run(job, endpoint="dead port")
    provider = LiteLLMProvider(model=job.model, api_base=closed_port_url(), api_key="sim-key", params=job.params)
    try:
        result = anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()
    errors = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert len(errors) == 4
    for line in errors:
        assert line["error_kind"] == "connection", line
        assert line["status_code"] is None, line
        assert line["attempts"] == job.retry.max_attempts  # retried, each try counted
        assert "refused" in line["message"].lower() or "connect" in line["message"].lower()
    assert result.summary["errors_by_kind"] == {"connection": 4 * job.retry.max_attempts}
    assert result.summary["failed_by_kind"] == {"connection": 4}


@pytest.mark.parametrize("kind", ["reset_before_headers", "reset"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_reset_is_a_connection_error_and_a_500_a_server_error(kind, stream):
    from aiohttp.test_utils import TestServer

    from batchrun.errors import RetryableError
    from batchrun.sim.config import SimConfig
    from batchrun.sim.faults import FaultRule
    from batchrun.sim.server import build_app

    faults = (FaultRule(kind, tickets=("cut",)), FaultRule("500", tickets=("500",)))
    server = TestServer(build_app(SimConfig(latency_ms=0, jitter=0, faults=faults)))
    await server.start_server()
    try:
        provider = LiteLLMProvider(model="openai/gpt-4o-mini", api_base=str(server.make_url("/v1")),
                                   api_key="sim-key", params={"max_tokens": 5})
        options = RequestOptions(stream=True) if stream else None
        with pytest.raises(RetryableError) as cut:
            await provider.complete(ChatRequest("cut", MESSAGES, 10.0, options))
        with pytest.raises(RetryableError) as failed:
            await provider.complete(ChatRequest("500", MESSAGES, 10.0, options))
    finally:
        await server.close()
    assert (cut.value.kind, cut.value.status_code) == ("connection", None), cut.value
    assert (failed.value.kind, failed.value.status_code) == ("server_error", 500), failed.value
