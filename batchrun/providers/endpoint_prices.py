"""What an endpoint says its model costs: a LiteLLM proxy's /model/info, for `batchrun plan --api-base`.

    endpoint_prices(api_base, model, api_key) -> EndpointPrices | str

A LiteLLM proxy prices the aliases it serves itself (its own `input_cost_per_token` /
`output_cost_per_token`, or litellm's price of the upstream model), and reports that cost on
every answer (x-litellm-response-cost: a line's cost_source "endpoint"). `GET {api_base}/model/info`
lists its deployments with those prices; the alias is the job's model without litellm's provider
prefix (`openai/my-classifier` -> `my-classifier`). Several deployments of one alias: the highest
price (a plan must not promise less than a run may cost). Anything else (not a proxy, no price, a
refused key, no answer within `timeout_s`) is a one-line reason, with the key never in it. Nothing
is sent to a model: a GET of the proxy's own model list.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson

from batchrun.errors import redact_secrets, redact_url

__all__ = ["EndpointPrices", "endpoint_prices", "proxy_alias"]

#: litellm's provider prefixes a proxy alias may be named with in a job file
ALIAS_PREFIXES = ("openai/", "litellm_proxy/", "hosted_vllm/", "openai_like/")


@dataclass(frozen=True, slots=True)
class EndpointPrices:
    input_per_token: float
    output_per_token: float
    url: str  # where they came from (no credentials, no query string)


def proxy_alias(model: str) -> str:
    """The model name a proxy knows: the job's model without litellm's provider prefix."""
    for prefix in ALIAS_PREFIXES:
        if model.startswith(prefix):
            return model[len(prefix):]
    return model


def _price(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if 0.0 <= number < float("inf") else None


def endpoint_prices(api_base: str, model: str, api_key: str | None, timeout_s: float = 10.0) -> EndpointPrices | str:
    """The prices a LiteLLM proxy at `api_base` reports for `model`, or why there are none (module docstring)."""
    url = api_base.rstrip("/") + "/model/info"
    shown = redact_url(url)
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    secrets = [api_key] if api_key else []
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as response:
            body = response.read(20_000_000)
    except urllib.error.HTTPError as exc:
        return f"GET {shown} answered HTTP {exc.code} (not a LiteLLM proxy, or the key may not list models)"
    except (OSError, ValueError) as exc:
        return redact_secrets(f"GET {shown} failed: {exc}", secrets)
    try:
        data = orjson.loads(body).get("data")
    except (orjson.JSONDecodeError, AttributeError):
        data = None
    if not isinstance(data, list):
        return f"GET {shown} is not a LiteLLM proxy's model list"
    alias = proxy_alias(model)
    found: list[tuple[float, float]] = []
    for entry in data:
        if not isinstance(entry, dict) or entry.get("model_name") != alias:
            continue
        info = entry.get("model_info")
        info = info if isinstance(info, dict) else {}
        params = entry.get("litellm_params")
        params = params if isinstance(params, dict) else {}
        p_in = _price(info.get("input_cost_per_token"))
        p_out = _price(info.get("output_cost_per_token"))
        if p_in is None or p_out is None:  # a price set on the deployment itself
            p_in, p_out = _price(params.get("input_cost_per_token")), _price(params.get("output_cost_per_token"))
        if p_in is not None and p_out is not None:
            found.append((p_in, p_out))
    if not found:
        return f"{shown} lists no price for {alias!r}"
    return EndpointPrices(max(p for p, _ in found), max(p for _, p in found), shown)
