"""`batchrun plan`'s cached tokens and the same job at every tier: standard, flex, batch.

    forecast_cache(...)   prompt tokens the provider's cache will serve (and, for Claude,
                          write): from a pilot (the run directory's finished results that
                          say what was cached: their cached share of input tokens), else
                          from the job's static prefix (the system prompt when it names no
                          ticket field, and [prompt] shared_prefix) and how the provider
                          caches it: OpenAI caches a repeated prefix of at least 1,024
                          tokens in 128-token steps by itself; a Claude model caches what
                          `prompt_cache = true` marks (one write per request of the first
                          wave, reads after it); the first `concurrency` requests find
                          nothing cached yet
    tier_table(...)       the cost of the tickets to do at the standard, flex (where
                          litellm has a flex price) and batch tiers, with the cached
                          tokens at each tier's cached price, and the expected time of each

Prices per ticket (the mean request), times the tickets: litellm's prices depend on the size of
one request (tiers above 200k tokens), so totals are never priced as one request; the mean is
priced as SCALE requests' worth (when that stays far below such tiers) so that fractions of a
token are not rounded away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, TypedDict

from batchrun.analysis.documents import TierForecast
from batchrun.records import Usage

if TYPE_CHECKING:
    from batchrun.records import KindTotals


class CacheForecast(TypedDict):
    """forecast_cache's answer: tokens per ticket read from and written to the provider's cache."""

    cached_per_ticket: float
    writes_per_ticket: float
    source: str  # "finished" (a pilot) or "prefix" (the job's static prefix)
    prefix_tokens: int | None
    note: str

__all__ = ["FLEX_SLOWDOWN", "forecast_cache", "tier_table"]

#: flex answers are slower than standard ones (OpenAI gives no figure): the plan assumes this factor
#: on the latency when no finished flex result measured it
FLEX_SLOWDOWN = 2.0
OPENAI_CACHE_MIN, OPENAI_CACHE_STEP = 1024, 128  # as OpenAI documents (and the simulator does)


def _bare(model: str) -> str:
    return model.rsplit("/", 1)[-1].lower()


def static_prefix_tokens(job: Any, model: str, simulated: bool) -> int:
    """Tokens of what every request of the job starts with: the system prompt when it names no ticket
    field, then [prompt] shared_prefix (0 when neither)."""
    messages: list[dict[str, str]] = []
    system = job.system_template
    if system is not None and not system.fields:
        messages.append({"role": "system", "content": job.prompt.system})
    if job.prompt.shared_prefix and (system is None or not system.fields):
        messages.append({"role": "user", "content": job.prompt.shared_prefix})
    if not messages:
        return 0
    if simulated:
        from batchrun.sim.tokens import TOKENS_PER_REQUEST, count_prompt_tokens

        return count_prompt_tokens(messages) - TOKENS_PER_REQUEST
    from batchrun.providers.litellm_setup import estimate_tokens

    return estimate_tokens(model, messages)


def forecast_cache(job: Any, model: str, *, to_do: int, concurrency: int, mean_in: float,
                   pilot: KindTotals | None, simulated: bool) -> CacheForecast:
    """Tokens per ticket the provider's cache will serve and take (module docstring); `pilot`: what
    the run directory's finished results say the cache served."""
    if pilot is not None and pilot.cached_share is not None and (pilot.cached_tokens or pilot.cache_write_tokens):
        reported = max(pilot.cache_reported_prompt_tokens, 1)
        return {"cached_per_ticket": mean_in * pilot.cached_tokens / reported,
                "writes_per_ticket": mean_in * pilot.cache_write_tokens / reported, "source": "finished",
                "prefix_tokens": None,
                "note": f"as the run directory's finished results: {pilot.cached_share * 100:.1f}% of their input "
                        "tokens were read from the provider's cache"}
    prefix = static_prefix_tokens(job, model, simulated)
    warm = max(to_do - concurrency, 0) / to_do if to_do else 0.0  # the first wave finds nothing cached
    if "claude" in _bare(model):
        if not job.prompt_cache or prefix < OPENAI_CACHE_MIN:
            why = ("prompt_cache is off: a Claude model caches only what is marked" if not job.prompt_cache
                   else f"the static prefix ({prefix:,} tokens) is under 1,024 tokens")
            return {"cached_per_ticket": 0.0, "writes_per_ticket": 0.0, "source": "prefix", "prefix_tokens": prefix,
                    "note": f"none: {why}"}
        first = min(concurrency, to_do) / to_do if to_do else 0.0
        return {"cached_per_ticket": prefix * warm, "writes_per_ticket": prefix * first, "source": "prefix",
                "prefix_tokens": prefix,
                "note": f"the marked prefix ({prefix:,} tokens: system prompt and shared_prefix) written by the first "
                        f"{min(concurrency, to_do):,} requests, read by the others"}
    if prefix < OPENAI_CACHE_MIN:
        return {"cached_per_ticket": 0.0, "writes_per_ticket": 0.0, "source": "prefix", "prefix_tokens": prefix,
                "note": f"none: the static prefix ({prefix:,} tokens) is under the 1,024 tokens OpenAI caches"}
    cacheable = OPENAI_CACHE_MIN + (prefix - OPENAI_CACHE_MIN) // OPENAI_CACHE_STEP * OPENAI_CACHE_STEP
    return {"cached_per_ticket": cacheable * warm, "writes_per_ticket": 0.0, "source": "prefix",
            "prefix_tokens": prefix,
            "note": f"{cacheable:,} of the {prefix:,}-token static prefix, from the request after the first "
                    f"{min(concurrency, to_do):,} on (OpenAI: a repeated prefix of 1,024+ tokens, in 128-token steps)"}


SCALE = 100  # requests' worth of tokens priced at once (module docstring)


def ticket_usage(mean_in: float, out: float, cache: CacheForecast) -> tuple[Usage, int]:
    """(the usage of `scale` mean requests, scale): price it, then divide by scale."""
    scale = SCALE if mean_in * SCALE <= 100_000 else 1
    prompt = max(1, round(mean_in * scale))
    completion = max(0, round(out * scale))
    cached = min(round(cache["cached_per_ticket"] * scale), prompt)
    writes = min(round(cache["writes_per_ticket"] * scale), prompt - cached)
    usage = Usage(prompt, completion, prompt + completion, cached_tokens=cached or None,
                  cache_write_tokens=writes or None)
    return usage, scale


def tier_table(entry: Any, *, to_do: int, mean_in: float, out: float, cache: CacheForecast,
               standard_seconds: float, latency_ms: float, latency_source: str, flex_latency_ms: float | None,
               batch_window_s: float | None) -> dict[str, TierForecast]:
    """The tickets to do at each tier: {"standard", "flex", "batch"}, each {"cost_usd", "seconds",
    "time", "price_source"} or with "unavailable" saying why (module docstring)."""
    from batchrun.providers.batch_api import LiteLLMBatchAPI
    from batchrun.providers.pricing import Pricing, has_flex_price

    usage, scale = ticket_usage(mean_in, out, cache)
    per = to_do / scale
    pricing = Pricing(entry.model, entry.prices)
    table: dict[str, TierForecast] = {}
    cost, status = pricing.cost(usage, None)
    table["standard"] = {"cost_usd": None if cost is None else round(cost * per, 6), "price_source": status,
                         "seconds": round(standard_seconds, 3), "time": "as the duration above"}
    if entry.prices is not None or not has_flex_price(entry.model):
        table["flex"] = {"unavailable": ("[prices] are the job's at every tier" if entry.prices is not None
                                         else f"litellm has no flex price for {entry.model}")}
    else:
        cost, status = pricing.cost(usage, "flex")
        slow = flex_latency_ms if flex_latency_ms is not None else latency_ms * FLEX_SLOWDOWN
        slowdown = slow / latency_ms if latency_ms else FLEX_SLOWDOWN
        table["flex"] = {"cost_usd": None if cost is None else round(cost * per, 6), "price_source": status,
                         "seconds": round(standard_seconds * slowdown, 3),
                         "time": ("the finished flex results' median latency" if flex_latency_ms is not None
                                  else f"ASSUMED {FLEX_SLOWDOWN:g}x the latency: flex is slower, OpenAI gives no "
                                       "figure; and 429 resource_unavailable when capacity is short")}
    prices = LiteLLMBatchAPI(model=entry.model, prices=entry.prices).batch_prices()
    if prices is None:
        table["batch"] = {"unavailable": f"no batch price for {entry.model}"}
    else:
        window = batch_window_s if batch_window_s is not None else 24 * 3600.0
        table["batch"] = {"cost_usd": round(prices.cost(usage) * per, 6), "price_source": prices.status_for(usage),
                          "seconds": round(window, 3),
                          "time": ("the simulator's batch duration" if batch_window_s is not None
                                   else "within the 24 h completion window (often much less)")}
    return table
