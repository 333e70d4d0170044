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
