"""Anthropic Message Batches, the parts that need no simulator: litellm's configuration, the
Anthropic SDK's errors onto batchrun's error tree, request params as litellm renders them for
an online call, results lines onto Completions, batch prices with cache tokens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_litellm_never_fetches_anthropic_beta_headers_from_the_network():
    """litellm fetches its Anthropic beta-headers table from GitHub on the first Anthropic request
    it prepares unless LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS is set; batchrun sets it with the cost map."""
    code = (
        "import httpx\n"
        "calls = []\n"
        "def get(*a, **k):\n"
        "    calls.append(a)\n"
        "    raise OSError('no network in this test')\n"
        "httpx.get = get\n"
        "from batchrun.providers.litellm_setup import import_litellm\n"
        "import_litellm()\n"
        "from litellm import anthropic_beta_headers_manager as m\n"
        "m.reload_beta_headers_config()\n"
        "print(len(calls))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "0"


# -- the Anthropic SDK's errors, onto batchrun's error tree ----------------------------------------


def _anthropic_status_error(status: int, error_type: str, headers: dict[str, str] | None = None) -> Exception:
    import anthropic
    import httpx2

    request = httpx2.Request("POST", "https://api.anthropic.com/v1/messages/batches")
    body = {"type": "error", "error": {"type": error_type, "message": f"{error_type} (key sk-ant-secret123456)"}}
    response = httpx2.Response(status, headers=headers or {}, json=body, request=request)
    return anthropic.APIStatusError(f"Error code: {status} - {body}", response=response, body=body)


def test_anthropic_sdk_errors_map_onto_the_error_tree():
    import anthropic
    import httpx2

    from batchrun.errors import RateLimitedError, RetryableError, TerminalError
    from batchrun.providers.error_mapping import translate_error

    request = httpx2.Request("GET", "https://api.anthropic.com/v1/messages/batches/msgbatch_1")
    timeout = translate_error(anthropic.APITimeoutError(request=request))
    assert isinstance(timeout, RetryableError) and timeout.kind == "timeout"
    cut = translate_error(anthropic.APIConnectionError(request=request))
    assert isinstance(cut, RetryableError) and cut.kind == "connection" and cut.status_code is None
    limited = translate_error(_anthropic_status_error(429, "rate_limit_error", {"retry-after": "7"}))
    assert isinstance(limited, RateLimitedError) and limited.retry_after == 7.0
    overloaded = translate_error(_anthropic_status_error(529, "overloaded_error"))
    assert isinstance(overloaded, RetryableError) and overloaded.kind == "server_error"
    bad = translate_error(_anthropic_status_error(400, "invalid_request_error"), ["sk-ant-secret123456"])
    assert isinstance(bad, TerminalError) and bad.kind == "bad_request" and bad.status_code == 400
    assert "sk-ant-secret123456" not in bad.message
    denied = translate_error(_anthropic_status_error(401, "authentication_error"))
    assert isinstance(denied, TerminalError) and denied.kind == "auth"


# -- batch prices, cache tokens included ----------------------------------------------------------


def test_batch_prices_from_litellms_map_price_cache_reads_and_writes():
    from batchrun.providers.batch_api import batch_prices_of
    from batchrun.providers.litellm_setup import import_litellm
    from batchrun.records import Usage

    info = import_litellm().get_model_info(model="claude-haiku-4-5", custom_llm_provider="anthropic")
    prices = batch_prices_of("anthropic/claude-haiku-4-5", None)
    assert prices is not None and prices.status == "litellm_batch"
    assert prices.input_per_token == info["input_cost_per_token_batches"]
    assert prices.output_per_token == info["output_cost_per_token_batches"]
    assert prices.cache_read_per_token == info["cache_read_input_token_cost_batches"]
    assert prices.cache_write_per_token == info["cache_creation_input_token_cost_batches"]
    # prompt_tokens counts the cache reads and writes (litellm's usage, as online)
    usage = Usage(prompt_tokens=130, completion_tokens=10, total_tokens=140, cache_read_input_tokens=20,
                  cache_creation_input_tokens=10)
    expected = (100 * info["input_cost_per_token_batches"] + 20 * info["cache_read_input_token_cost_batches"]
                + 10 * info["cache_creation_input_token_cost_batches"] + 10 * info["output_cost_per_token_batches"])
    assert abs(prices.cost(usage) - expected) < 1e-15
    assert usage.as_dict() == {"prompt_tokens": 130, "completion_tokens": 10, "total_tokens": 140,
                               "cache_read_input_tokens": 20, "cache_creation_input_tokens": 10}
    assert "cache_read_input_tokens" not in Usage(1, 2, 3).as_dict()  # other lines keep their shape


def test_a_model_without_batch_prices_gets_half_its_online_prices_cache_ones_too():
    from batchrun.providers.batch_api import batch_prices_of
    from batchrun.providers.litellm_setup import import_litellm

    info = import_litellm().get_model_info(model="claude-mythos-preview", custom_llm_provider="anthropic")
    assert info.get("input_cost_per_token_batches") is None  # the premise: no batch price in the map
    prices = batch_prices_of("anthropic/claude-mythos-preview", None)
    assert prices is not None and prices.status == "half_online"
    assert prices.input_per_token == info["input_cost_per_token"] / 2
    assert prices.cache_read_per_token == info["cache_read_input_token_cost"] / 2
    assert batch_prices_of("anthropic/claude-no-such-model", None) is None
