"""How LiteLLMProvider drives litellm: preparation on the loop thread, the HTTP path per call.

Over real HTTP to the simulator on 127.0.0.1 (provider.py's docstring has the why):
  * litellm's request preparation runs inline on the event loop (no thread
    hop) for listed providers, and only that: other work submitted to the
    loop's default executor still runs on a thread;
  * plain openai/ calls go through litellm's own HTTP handler, streamed ones
    through the OpenAI SDK, unless the user's environment said otherwise;
    the switch is never left behind in the environment;
  * a stream chunk that is not JSON never becomes a success;
  * litellm's success logging is skipped for batchrun's plain calls only
    while nothing would receive it: a registered callback still gets every
    event, and litellm called directly keeps its logging;
  * litellm's model lookup in its Responses-API bridge check is made once
    per model during batchrun's calls, and every caller gets its own copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading

import pytest
from aiohttp.test_utils import TestServer

from batchrun.providers import tuning as litellm_tuning
from batchrun.providers import litellm_setup as provider_module
from batchrun.errors import RetryableError
from batchrun.providers.tuning import OPENAI_HTTP_HANDLER_ENV, InlinePrepExecutor
from batchrun.providers.online import LiteLLMProvider
from batchrun.providers.seam import ChatRequest, RequestOptions
from batchrun.providers.litellm_setup import openai_transport
from batchrun.sim.config import SimConfig
from batchrun.sim.faults import FaultRule
from batchrun.sim.server import SIMULATOR_KEY, build_app

MESSAGES = [{"role": "user", "content": "Subject: refund\n\nI was charged twice."}]


@contextlib.asynccontextmanager
async def simulator(**kwargs):
    server = TestServer(build_app(SimConfig(latency_ms=0, jitter=0, **kwargs)))
    await server.start_server()
    try:
        yield str(server.make_url("/v1")), server.app[SIMULATOR_KEY]
    finally:
        await server.close()


def make_provider(base_url: str, model: str = "openai/gpt-4o-mini") -> LiteLLMProvider:
    return LiteLLMProvider(model=model, api_base=base_url, api_key="sim-key", params={"max_tokens": 5})


def request(ticket_id: str, stream: bool = False) -> ChatRequest:
    return ChatRequest(ticket_id, MESSAGES, 10.0, RequestOptions(stream=True) if stream else None)


async def test_preparation_runs_inline_and_nothing_else_does():
    async with simulator() as (base_url, sim):
        provider = make_provider(base_url)
        assert provider.inline_prep
        for i in range(3):
            completion = await provider.complete(request(f"T{i}"))
            assert completion.text and completion.usage is not None
        executor = asyncio.get_running_loop()._default_executor
        assert isinstance(executor, InlinePrepExecutor)
        assert executor.inline_calls == 3
        assert sim.stats.snapshot()["total_requests"] == 3
        # Anything else handed to the default executor still runs on one of its threads.
        loop_thread = threading.get_ident()
        assert await asyncio.get_running_loop().run_in_executor(None, threading.get_ident) != loop_thread
        assert executor.inline_calls == 3


async def test_the_executor_is_installed_once_per_loop():
    async with simulator() as (base_url, _):
        provider = make_provider(base_url)
        await provider.complete(request("A"))
        first = asyncio.get_running_loop()._default_executor
        await make_provider(base_url).complete(request("B"))
        assert asyncio.get_running_loop()._default_executor is first
        assert first.inline_calls == 2


def test_unlisted_providers_keep_litellm_threads():
    assert "vertex_ai" not in litellm_tuning.INLINE_PREP_PROVIDERS
    assert not LiteLLMProvider(model="vertex_ai/gemini-1.5-flash").inline_prep
    assert not LiteLLMProvider(model="azure/my-deployment", api_base="https://example.invalid").inline_prep
    assert LiteLLMProvider(model="gpt-4o-mini").inline_prep  # no prefix: litellm says openai
    assert LiteLLMProvider(model="hosted_vllm/llama", api_base="http://127.0.0.1:1/v1").inline_prep


def test_transport_choice_by_default(monkeypatch):
    monkeypatch.setattr(litellm_tuning, "_USER_TRANSPORT", None)
    assert openai_transport(stream=False) == "litellm-http"
    assert openai_transport(stream=True) == "openai-sdk"


async def test_plain_calls_use_litellms_handler_and_the_switch_is_not_left_behind(monkeypatch):
    # A broken 200 body tells the paths apart: litellm's handler says APIError/200, the SDK 500.
    monkeypatch.setattr(litellm_tuning, "_USER_TRANSPORT", None)
    monkeypatch.delenv(OPENAI_HTTP_HANDLER_ENV, raising=False)
    async with simulator(faults=(FaultRule("malformed_json", tickets=("bad",)),)) as (base_url, _):
        provider = make_provider(base_url)
        with pytest.raises(RetryableError) as caught:
            await provider.complete(request("bad"))
        assert (caught.value.error_type, caught.value.status_code) == ("APIError", 200)
        assert caught.value.kind == "server_error"
        assert OPENAI_HTTP_HANDLER_ENV not in os.environ


async def test_the_users_setting_wins(monkeypatch):
    monkeypatch.setattr(litellm_tuning, "_USER_TRANSPORT", "false")
    monkeypatch.setenv(OPENAI_HTTP_HANDLER_ENV, "false")
    assert openai_transport() == "openai-sdk"
    async with simulator(faults=(FaultRule("malformed_json", tickets=("bad",)),)) as (base_url, _):
        with pytest.raises(RetryableError) as caught:
            await make_provider(base_url).complete(request("bad"))
        assert (caught.value.error_type, caught.value.status_code) == ("InternalServerError", 500)
        assert os.environ[OPENAI_HTTP_HANDLER_ENV] == "false"  # left as the user set it


async def test_a_malformed_stream_chunk_is_never_a_success(monkeypatch):
    # litellm's own handler would drop the chunk and report a complete answer; batchrun streams
    # through the SDK, which raises, and the attempt is retried.
    monkeypatch.setattr(litellm_tuning, "_USER_TRANSPORT", None)
    async with simulator(faults=(FaultRule("malformed_json", tickets=("bad",)),)) as (base_url, sim):
        provider = make_provider(base_url)
        with pytest.raises(RetryableError):
            await provider.complete(request("bad", stream=True))
        good = await provider.complete(request("good", stream=True))
        assert good.text and good.finish_reason in ("stop", "length")
        assert sim.stats.snapshot()["requests_by_ticket"] == {"bad": 1, "good": 1}


@contextlib.contextmanager
def counting_success_logs(monkeypatch):
    """The litellm call ids whose asynchronous success logging was queued (counted as queued)."""
    import litellm
    from litellm.litellm_core_utils.litellm_logging import Logging

    for name in ("callbacks", "success_callback", "_async_success_callback"):
        monkeypatch.setattr(litellm, name, [])  # fresh lists: whatever a test registers goes with it
    queued: list[str] = []
    original = Logging.async_success_handler

    def counting(self, *args, **kwargs):
        queued.append(self.litellm_call_id)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Logging, "async_success_handler", counting)
    yield queued


async def flush_litellm_logging() -> None:
    """Let litellm's logging tasks start (they are created after the call returns), then drain its queue."""
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    for _ in range(5):
        await asyncio.sleep(0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), 5)


def test_the_quiet_success_logging_is_installed_on_the_pinned_litellm():
    import litellm

    provider_module.import_litellm()
    assert getattr(litellm.utils._schedule_async_success_logging, "batchrun_quiet", False)
    assert litellm_tuning._install_quiet_success_logging(litellm) == "installed"  # idempotent: the one wrapper
    assert not getattr(litellm.utils._schedule_async_success_logging.__wrapped__, "batchrun_quiet", False)


async def test_plain_calls_skip_success_logging_that_nothing_receives(monkeypatch):
    import litellm

    with counting_success_logs(monkeypatch) as queued:
        async with simulator() as (base_url, sim):
            completion = await make_provider(base_url).complete(request("quiet"))
            assert completion.cost_usd is not None and completion.cost_status == "litellm"
            await flush_litellm_logging()
            assert queued == []
            # litellm called directly (the bench's bare pattern) keeps its logging
            await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, api_base=base_url,
                                      api_key="sim-key", max_tokens=5, timeout=10)
            await flush_litellm_logging()
            assert len(queued) == 1
            # so does a streamed call of batchrun's (its logging runs when the stream ends)
            streamed = await make_provider(base_url).complete(request("streamed", stream=True))
            assert streamed.text
            assert sim.stats.snapshot()["total_requests"] == 3


async def test_a_registered_callback_still_gets_every_success(monkeypatch):
    import litellm
    from litellm.integrations.custom_logger import CustomLogger

    class Recorder(CustomLogger):
        def __init__(self) -> None:
            super().__init__()
            self.costs: list[float] = []

        async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
            self.costs.append(kwargs.get("response_cost"))

    with counting_success_logs(monkeypatch) as queued:
        recorder = Recorder()
        monkeypatch.setattr(litellm, "callbacks", [recorder])
        async with simulator() as (base_url, _):
            completion = await make_provider(base_url).complete(request("heard"))
            await flush_litellm_logging()
        assert len(queued) == 1
        assert recorder.costs == [pytest.approx(completion.cost_usd)]


async def test_litellms_own_budget_keeps_its_success_logging(monkeypatch):
    import litellm

    with counting_success_logs(monkeypatch) as queued:
        monkeypatch.setattr(litellm, "max_budget", 1000.0)
        async with simulator() as (base_url, _):
            await make_provider(base_url).complete(request("budgeted"))
            await flush_litellm_logging()
        assert len(queued) == 1


async def test_the_model_lookup_is_made_once_per_model_during_batchrun_calls(monkeypatch):
    import litellm
    import litellm.main

    provider_module.import_litellm()
    if not hasattr(litellm.main, "get_model_info_helper"):  # litellm 1.110: no such lookup left to cache
        assert litellm_tuning.STATUS["model_mode_cache"].endswith("not needed")
        pytest.skip("this litellm no longer looks the model up per call: the patch is not applied")
    assert getattr(litellm.main.get_model_info_helper, "batchrun_cached", False)  # installed on litellm 1.106
    original = litellm.main.get_model_info_helper.__wrapped__
    looked_up: list[str] = []

    def counting(model, custom_llm_provider=None, **kwargs):
        looked_up.append(model)
        return original(model=model, custom_llm_provider=custom_llm_provider, **kwargs)

    monkeypatch.setattr(litellm.main, "get_model_info_helper", counting)
    assert litellm_tuning._install_model_mode_cache(litellm) == "installed"
    cached = litellm.main.get_model_info_helper
    async with simulator() as (base_url, sim):
        provider = make_provider(base_url)
        for i in range(3):
            assert (await provider.complete(request(f"T{i}"))).text
        assert looked_up == ["gpt-4o-mini"]
        # litellm called directly looks up as usual (twice per chat call)
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, api_base=base_url,
                                  api_key="sim-key", max_tokens=5, timeout=10)
        assert looked_up == ["gpt-4o-mini"] * 3
        assert sim.stats.snapshot()["total_requests"] == 4
    # every caller gets a copy: what the bridge check sets on it stays out of the cache
    token = litellm_tuning.CALL_KIND.set("plain")
    try:
        first = cached(model="gpt-4o-mini", custom_llm_provider="openai")
        first["mode"] = "responses"
        assert cached(model="gpt-4o-mini", custom_llm_provider="openai")["mode"] == "chat"
        # a model registered since is looked up afresh
        monkeypatch.setitem(litellm.model_cost, "batchrun-test-model", {"mode": "chat"})
        cached(model="gpt-4o-mini", custom_llm_provider="openai")
        assert looked_up == ["gpt-4o-mini"] * 4
        # a failed lookup is not kept
        for _ in range(2):
            with pytest.raises(Exception):
                cached(model="no-such-model-anywhere", custom_llm_provider="openai")
        assert looked_up[-2:] == ["no-such-model-anywhere"] * 2
    finally:
        litellm_tuning.CALL_KIND.reset(token)
