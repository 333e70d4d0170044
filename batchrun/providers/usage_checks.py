"""Usage a provider reports, checked before it is believed (and priced).

    usage_problem(counts, limit) -> (cost_status, description) | None
        `counts` is the provider's usage as it came (a mapping, or litellm's Usage
        object); None when its prompt, completion and total tokens are
        believable: whole numbers, not negative, and none above `limit` (the
        model's context window plus its maximum output). Otherwise the
        cost_status naming the problem ("usage_negative", "usage_not_integer",
        "usage_absurd") and a short description for the result line.
    reported_counts(counts) -> dict     the three counts as the provider sent them
    token_limit(litellm, model) -> int  the most tokens one request of `model` can count:
        max_input_tokens + max_output_tokens from litellm's model map, else
        FALLBACK_TOKEN_LIMIT (no model takes that many)

Where a problem is found (online.py, batch_api.py), the answer's usage is not
the provider's: online it is counted with litellm.token_counter and priced as
an estimate (so the budget still sees it), in batch mode it is null and so is
the cost; either way the line keeps the provider's counts in `usage_reported`
and says what was wrong in `usage_problem`, and `cost_status` names it. A
negative count priced as given would lower the run's total and its budget
(-$0.15 for -1,000,000 prompt tokens); 10^12 tokens would be $150,000.
"""

from __future__ import annotations

from types import ModuleType
from typing import Mapping

__all__ = ["FALLBACK_TOKEN_LIMIT", "USAGE_FIELDS", "reported_counts", "token_limit", "usage_problem"]

USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")
FALLBACK_TOKEN_LIMIT = 100_000_000  # a model litellm does not know: above any context window there is

_LIMITS: dict[str, int] = {}


def _count(counts: object, name: str) -> object:
    return counts.get(name) if isinstance(counts, Mapping) else getattr(counts, name, None)


def reported_counts(counts: object) -> dict[str, object]:
    """The provider's three token counts as they came (JSON values), for `usage_reported`."""
    out: dict[str, object] = {}
    for name in USAGE_FIELDS:
        value = _count(counts, name)
        out[name] = value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
    return out


def usage_problem(counts: object, limit: int | None) -> tuple[str, str] | None:
    """(cost_status, description) when the counts cannot be believed, else None (module docstring).
    A missing count is not a problem here (the caller decides what no usage means)."""
    numbers: dict[str, float] = {}
    for name in USAGE_FIELDS:
        value = _count(counts, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not value.is_integer()):
            return "usage_not_integer", f"{name} = {value!r} is not a whole number of tokens"
        numbers[name] = value
    for name, number in numbers.items():
        if number < 0:
            return "usage_negative", f"{name} = {number:,.0f} is negative"
    both = numbers.get("prompt_tokens", 0) + numbers.get("completion_tokens", 0)
    if limit is not None:
        for name, number in [*numbers.items(), ("prompt_tokens + completion_tokens", both)]:
            if number > limit:
                return "usage_absurd", (f"{name} = {number:,.0f} is more than the model can count in one "
                                        f"request ({limit:,} tokens: its context window plus its output)")
    return None


def token_limit(litellm: ModuleType, model: str) -> int:
    """The most tokens one request of `model` can count (module docstring); asked once per model."""
    limit = _LIMITS.get(model)
    if limit is None:
        limit = FALLBACK_TOKEN_LIMIT
        try:
            info = litellm.get_model_info(model=model)
        except Exception:  # a model litellm does not know
            info = None
        if info:
            window = info.get("max_input_tokens") or info.get("max_tokens")
            output = info.get("max_output_tokens") or 0
            if isinstance(window, int) and window > 0:
                limit = window + (output if isinstance(output, int) else 0)
        _LIMITS[model] = limit
    return limit
