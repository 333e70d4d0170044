"""Prices of every kind of token, at every service tier: what an answer cost, what prompt caching
saved, and the most a request may cost (the budget's bound).

    Pricing(model, prices, price_model)   one model's prices: the job's [prices] when set, else
                                          litellm's price map for `price_model` (the named model
                                          of a simulated run), always at the tier asked for
      .cost(usage, tier)                  USD and cost_status of an answer's usage
      .cache_saving(usage, tier)          its cached and written tokens at the plain input price
                                          minus what they cost (negative when writes cost more)
      .bound(prompt, output, tiers, ...)  the most a request of `prompt` + `output` tokens may cost
      .max_output_tokens()                the model's largest answer (litellm's max_output_tokens)
    billable_tier(tier)                   the tier litellm prices: None for "default" and "auto"
    flex_models(provider)                 models litellm has a flex price for (load-time check)
    has_flex_price(model)                 whether litellm has a flex price for `model`

litellm's own response_cost (read by online.py) is the cost wherever litellm priced the
response; it includes the cached tokens and the tier the response says it was served at
(checked in litellm 1.106's cost_calculator: the served tier wins over the requested one).
This module prices what litellm did not: estimated usage, a simulated model whose
OpenAI-compatible name litellm does not map (openai/claude-...), the job's [prices].

[prices]: cached tokens at `cached_input_per_million`, cache writes at
`cache_write_per_million`, reasoning tokens as output (they are within completion_tokens);
an absent cached or write price is the input price, and the cost_status says so
("job_prices_cached_price_assumed").
"""

from __future__ import annotations

from typing import Any

from batchrun.job.sections import PricesSpec
from batchrun.providers.litellm_setup import import_litellm
from batchrun.records import Usage

__all__ = ["CACHED_PRICE_ASSUMED", "Pricing", "billable_tier", "flex_models", "has_flex_price"]

#: cost_status of a [prices] cost whose cached or written tokens were priced at the input price
CACHED_PRICE_ASSUMED = "job_prices_cached_price_assumed"


def billable_tier(tier: str | None) -> str | None:
    """The tier to ask litellm's prices for: None (the standard price) for "default", "auto",
    "standard" or nothing; else the tier ("flex", "priority")."""
    return None if tier in (None, "default", "auto", "standard") else tier


def flex_models(provider: str) -> list[str]:
    """Model names of `provider` that litellm's price map has a flex price for."""
    lm = import_litellm()
    return sorted(name for name, info in lm.model_cost.items()
                  if isinstance(info, dict) and info.get("input_cost_per_token_flex") is not None
                  and info.get("litellm_provider") == provider and "/" not in name)


def has_flex_price(model: str) -> bool:
    """Whether litellm's price map has a flex price for `model`."""
    try:
        info = import_litellm().get_model_info(model=model)
    except Exception:
        return False
    return info.get("input_cost_per_token_flex") is not None


class Pricing:
    """One model's prices (module docstring)."""

    def __init__(self, model: str, prices: PricesSpec | None = None, price_model: str | None = None) -> None:
        self.model = model
        self.price_model = price_model or model
        self.prices = prices
        self._litellm = import_litellm()

    # -- litellm's map ------------------------------------------------------------------------

    def _litellm_usage(self, usage: Usage, with_cache: bool = True) -> Any:
        details: dict[str, int] = {}
        if with_cache and usage.cached_tokens:
            details["cached_tokens"] = usage.cached_tokens
        if with_cache and usage.cache_write_tokens:
            details["cache_write_tokens"] = usage.cache_write_tokens
        return self._litellm.Usage(
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens, prompt_tokens_details=details or None,
            completion_tokens_details=({"reasoning_tokens": usage.reasoning_tokens}
                                       if usage.reasoning_tokens else None))

    def _litellm_cost(self, usage: Usage, tier: str | None, with_cache: bool = True) -> tuple[float, float] | None:
        """(prompt USD, completion USD) of `usage` by litellm's map at `tier`, or None: unpriced."""
        try:
            prompt, completion = self._litellm.cost_per_token(
                model=self.price_model, usage_object=self._litellm_usage(usage, with_cache),
                service_tier=billable_tier(tier))
        except Exception:  # litellm does not price the model
            return None
        return float(prompt), float(completion)

    # -- what an answer cost ------------------------------------------------------------------

    def cost(self, usage: Usage, tier: str | None) -> tuple[float | None, str]:
        """(USD, cost_status) of `usage` served at `tier`: the job's [prices] ("job_prices", or
        CACHED_PRICE_ASSUMED) or litellm's map ("litellm"); (None, "unpriced_model") otherwise."""
        if self.prices is not None:
            return self._job_cost(usage)
        priced = self._litellm_cost(usage, tier)
        if priced is None:
            return None, "unpriced_model"
        return priced[0] + priced[1], "litellm"

    def _job_cost(self, usage: Usage) -> tuple[float, str]:
        p = self.prices
        assert p is not None
        cached, written = usage.cached_tokens or 0, usage.cache_write_tokens or 0
        cached_price = p.cached_input_per_million if p.cached_input_per_million is not None else p.input_per_million
        write_price = p.cache_write_per_million if p.cache_write_per_million is not None else p.input_per_million
        cost = (usage.uncached_prompt_tokens * p.input_per_million + cached * cached_price + written * write_price
                + usage.completion_tokens * p.output_per_million) / 1e6
        assumed = (cached and p.cached_input_per_million is None) or (written and p.cache_write_per_million is None)
        return cost, CACHED_PRICE_ASSUMED if assumed else "job_prices"

    def cache_saving(self, usage: Usage, tier: str | None) -> float | None:
        """What prompt caching saved on `usage`: its prompt at the plain input price minus what it
        cost with the cache (reads cheaper, writes dearer). None: nothing cached or written, or
        no price to tell."""
        if not (usage.cached_tokens or usage.cache_write_tokens):
            return None
        if self.prices is not None:
            plain = usage.prompt_tokens * self.prices.input_per_million / 1e6
            return plain - (self._job_cost(usage)[0] - usage.completion_tokens * self.prices.output_per_million / 1e6)
        with_cache = self._litellm_cost(usage, tier)
        without = self._litellm_cost(usage, tier, with_cache=False)
        if with_cache is None or without is None:
            return None
        return without[0] - with_cache[0]

    # -- the most a request may cost ----------------------------------------------------------

    def bound(self, prompt_tokens: int, output_tokens: int, tiers: tuple[str | None, ...] = (None,),
              cache_writes: bool = False) -> float | None:
        """The most `prompt_tokens` + `output_tokens` may cost at any of `tiers` (a flex request may
        be answered at the standard tier), every prompt token at the plain input price, or at the
        cache-write price when the request marks its prompt for caching (`cache_writes`) and writes
        cost more. None: unpriced."""
        if self.prices is not None:
            p = self.prices
            input_price = p.input_per_million
            if cache_writes and p.cache_write_per_million is not None:
                input_price = max(input_price, p.cache_write_per_million)
            return (prompt_tokens * input_price + output_tokens * p.output_per_million) / 1e6
        usages = [Usage(prompt_tokens, output_tokens, prompt_tokens + output_tokens)]
        if cache_writes:
            usages.append(Usage(prompt_tokens, output_tokens, prompt_tokens + output_tokens,
                                cache_write_tokens=prompt_tokens))
        most = 0.0
        for usage in usages:
            for tier in tiers:
                priced = self._litellm_cost(usage, tier)
                if priced is None:
                    return None
                most = max(most, priced[0] + priced[1])
        return most

    def max_output_tokens(self) -> int | None:
        """The model's largest answer in litellm's map (max_output_tokens), or None when unknown."""
        try:
            info = self._litellm.get_model_info(model=self.price_model)
        except Exception:
            return None
        value = info.get("max_output_tokens") or info.get("max_tokens")
        return int(value) if isinstance(value, (int, float)) and value > 0 else None
