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
