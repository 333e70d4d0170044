"""litellm, imported once and configured: the lazy import and what needs litellm before a run.

    import_litellm()   LITELLM_LOCAL_MODEL_COST_MAP=True and LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS=True
                       (litellm fetches neither table from GitHub), retries off, the aiohttp pool
                       sized, tuning.py's patches installed; seconds, done on first use so
                       `batchrun --help` never pays for it
    preload()          the same, now (a command overlapping it with other start-up work)
    loaded_litellm()   litellm if already imported, else None
    check_model(s)     a model string litellm cannot route, or that it cannot price (unless the
                       job sets [prices] or allow_unpriced), refused before anything is sent
    misspelled_params()  [params] keys close to a parameter name but none: no litellm needed
    check_service_tier()  a service_tier the model does not take, or flex without a flex price
    unknown_params()   [params] keys litellm does not list for the model ("did you mean")
    estimate_tokens(), price_for()   token counts and prices for plan and bench
    bare_acompletion() litellm.acompletion as a user calls it: bench's baseline
    openai_transport() which HTTP path an openai/ call takes
    size_connection_pool()  litellm's aiohttp limits in an environment (a worker's)
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Any, Mapping, MutableMapping, Sequence

from batchrun.errors import JobSpecError, redact_url
from batchrun.providers import tuning
from batchrun.providers.tuning import (
    OPENAI_HTTP_HANDLER_ENV,
)

if TYPE_CHECKING:
    from batchrun.job.sections import ToolPayload
    from batchrun.job.spec import JobSpec

_litellm: ModuleType | None = None


def size_connection_pool(env: MutableMapping[str, str], max_connections: int | None) -> None:
    """Raise litellm's aiohttp limits in `env` (500 per host, 1,000 in all by default) to at least
    `max_connections`; litellm reads them when it is imported."""
    if max_connections:
        for name, default in tuning.POOL_LIMITS:
            env[name] = str(max(int(env.get(name) or default), max_connections))


def import_litellm(max_connections: int | None = None) -> ModuleType:
    """Import and configure litellm once (slow: seconds; docs/internals.md).

    `max_connections`: litellm's aiohttp pool allows 500 connections per host
    (1,000 in all), read from the environment when litellm is imported; a run
    with more requests in flight raises both so the pool never caps it, also
    when litellm was imported before (tuning.size_pool): in every mode,
    one process, worker processes, Ray actors, bench.
    """
    global _litellm
    if _litellm is not None:
        if max_connections:
            tuning.size_pool(max_connections)
        return _litellm
    if _litellm is None:
        os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        # read when litellm prepares its first Anthropic request: without it, litellm fetches its
        # beta-headers table from GitHub (a request that leaves the machine, up to 5 s)
        os.environ["LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS"] = "True"
        tuning.remember_user_transport()  # a user's own setting wins (tuning.py)
        size_connection_pool(os.environ, max_connections)
        import litellm

        litellm.suppress_debug_info = True
        litellm.num_retries = 0
        litellm.telemetry = False
        tuning.install(litellm)
        _litellm = litellm
    return _litellm


def loaded_litellm() -> ModuleType | None:
    """litellm if `import_litellm` has run in this process, else None (without importing it)."""
    return _litellm


def check_model(model: str, api_base: str | None = None, where: str = "model", *, priced_by_job: bool = False,
                allow_unpriced: bool = False) -> str | None:
    """Refuse a model string litellm cannot route or price (JobSpecError, exit 2), before anything
    is sent, in every run (simulated or live); returns a note for the user, or None.

    Routing: the same `litellm.get_llm_provider` call every request makes, asked once at load (no
    network): `gpt4o-mini` or `opnai/gpt-4o-mini` is one clear error naming the field, with a close
    match when there is one, instead of an error line per ticket. Pricing: a model litellm's price
    list does not know (`openai/gpt-4o-mnii`) is refused unless the job prices it ([prices]) or sets
    `allow_unpriced = true`; one served by the job's `api_base` (a self-hosted model) runs with a
    note that its cost stays null."""
    lm = import_litellm()
    try:
        _, provider, _, _ = lm.get_llm_provider(model=model, api_base=api_base)
    except Exception as exc:  # litellm.BadRequestError("LLM Provider NOT provided ...") and the like
        reason = str(exc).split("\n", 1)[0].removeprefix("litellm.BadRequestError: ").strip()
        raise JobSpecError(
            f"{where} = {model!r}: litellm cannot tell which provider serves it ({reason}).{_routing_hint(lm, model)} "
            "Write it as provider/model, e.g. openai/gpt-4o-mini (a LiteLLM proxy or other OpenAI-compatible "
            "server: openai/<its model name> with api_base); nothing was sent") from None
    if priced_by_job or price_for(model, 1, 1) is not None:
        return None
    if api_base:
        return (f"{where} = {model!r} is not in litellm's price list; served by api_base {redact_url(api_base)} "
                "(self-hosted?), it runs with cost_usd null: set [prices] to count its cost")
    if allow_unpriced:
        return f"{where} = {model!r} is not in litellm's price list: its cost_usd stays null (allow_unpriced)"
    raise JobSpecError(
        f"{where} = {model!r}: litellm's price list does not know this model, so no cost could be "
        f"counted.{_pricing_hint(lm, model, provider)} If the name is right, set its prices "
        "([prices] input_per_million / output_per_million) or `allow_unpriced = true` at the top of the "
        "job; nothing was sent")


def _routing_hint(lm: ModuleType, model: str) -> str:
    import difflib

    providers = [getattr(p, "value", p) for p in lm.provider_list]
    prefix, _, name = model.partition("/")
    if name:
        close = difflib.get_close_matches(prefix, providers, n=1, cutoff=0.6)
        return f" Did you mean {close[0]}/{name}?" if close else ""
    close = difflib.get_close_matches(model, [m for m in lm.model_cost if "/" not in m], n=1, cutoff=0.8)
    if not close:
        return ""
    provider = lm.model_cost[close[0]].get("litellm_provider")
    return f" Did you mean {(provider + '/') if provider else ''}{close[0]}?"


def _pricing_hint(lm: ModuleType, model: str, provider: str) -> str:
    """" Did you mean openai/gpt-4o-mini?": the closest priced model of the same provider."""
    import difflib

    prefix, _, name = model.rpartition("/")
    names = [key.split("/", 1)[1] if key.startswith(provider + "/") else key
             for key, info in lm.model_cost.items() if isinstance(info, dict) and info.get("litellm_provider") == provider]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    return f" Did you mean {prefix + '/' if prefix else ''}{close[0]}?" if close else ""


def check_models(job: JobSpec, api_base: str | None = None, *, prices: bool = True) -> list[str]:
    """`check_model` for the job's model and every [[models]] entry (compare, route, fallbacks): every
    problem in one JobSpecError; returns the notes. `api_base`: the caller's --api-base, if any;
    `prices=False` (batchrun plan, which shows an unpriced model as such): routing only."""
    entries: list[tuple[str, str, str | None, bool]] = []
    if not job.models:
        entries.append(("model", job.model, api_base or job.api_base, job.prices is not None))
    for index, entry in enumerate(job.models):
        entries.append((f"models[{index}].model ({entry.name})", entry.model, api_base or entry.api_base or job.api_base,
                        (entry.prices or job.prices) is not None))
    notes: list[str] = []
    problems: list[str] = []
    for where, model, base, priced in entries:
        try:
            note = check_model(model, base, where, priced_by_job=priced or not prices,
                               allow_unpriced=job.allow_unpriced)
        except JobSpecError as exc:
            problems.append(str(exc).removesuffix("; nothing was sent"))
            continue
        if note:
            notes.append(note)
    if len(problems) == 1:
        raise JobSpecError(problems[0] + "; nothing was sent")
    if problems:
        raise JobSpecError("invalid job:\n" + "\n".join("  " + p for p in problems) + "\nnothing was sent")
    return notes


def check_service_tier(job: Any) -> None:
    """Refuse (JobSpecError, exit 2, before anything is sent) a job whose `service_tier` its model
    does not take (litellm lists no service_tier parameter for its provider), or whose tier is
    "flex" for a model litellm has no flex price for: it would be billed at a price nobody knows.
    The message names the provider's models that have one."""
    tier = getattr(job, "service_tier", None)
    if tier is None:
        return
    from batchrun.providers.pricing import flex_models, has_flex_price

    lm = import_litellm()
    for model in [job.model] + [entry.model for entry in job.models]:
        try:
            name, provider, _, _ = lm.get_llm_provider(model=model)
            supported = lm.get_supported_openai_params(model=name, custom_llm_provider=provider) or []
        except Exception:  # a model litellm cannot route is refused by check_model
            continue
        if "service_tier" not in supported:
            raise JobSpecError(f"service_tier = {tier!r}: litellm sends no service_tier for {model} ({provider}); "
                               "service tiers are OpenAI's (and Azure's): drop service_tier for this model; "
                               "nothing was sent")
        if tier != "flex":
            continue
        if not has_flex_price(model):
            having = flex_models(provider)
            raise JobSpecError(
                f"service_tier = \"flex\": litellm has no flex price for {model}, so its cost could not be known "
                f"(and the provider may not serve it at flex). {provider} models with a flex price: "
                + (", ".join(having) if having else "none") + "; nothing was sent")


def openai_transport(stream: bool = False) -> str:
    """The path a LiteLLMProvider's `openai/...` chat call takes: "litellm-http" or "openai-sdk".

    batchrun's choice (module docstring): litellm's HTTP handler for plain
    calls, the OpenAI SDK for streamed ones, unless the environment set
    litellm's switch before litellm was imported (then as litellm reads it).
    """
    user = tuning.user_transport() if _litellm is not None else os.environ.get(OPENAI_HTTP_HANDLER_ENV)
    if user is not None:
        return "litellm-http" if user.strip().lower() == "true" else "openai-sdk"  # litellm's str_to_bool
    return "openai-sdk" if stream else "litellm-http"


# [params] keys litellm takes besides the model's OpenAI parameters (get_supported_openai_params):
# its own options, and provider-specific keys it forwards as they are.
LITELLM_OPTIONS = frozenset({"drop_params", "additional_drop_params", "extra_body", "metadata", "user",
                             "reasoning_effort", "thinking"})
PROVIDER_PARAMS: dict[str, frozenset[str]] = {
    "anthropic": frozenset({"top_k", "thinking", "metadata", "cache_control"}),
    "gemini": frozenset({"top_k", "safety_settings", "thinking", "candidate_count"}),
    "vertex_ai": frozenset({"top_k", "safety_settings", "thinking", "candidate_count"}),
    "bedrock": frozenset({"top_k", "thinking", "guardrailConfig", "performanceConfig"}),
    "ollama": frozenset({"top_k", "num_ctx", "num_predict", "repeat_penalty", "mirostat", "keep_alive"}),
    "ollama_chat": frozenset({"top_k", "num_ctx", "num_predict", "repeat_penalty", "mirostat", "keep_alive"}),
    "hosted_vllm": frozenset({"top_k", "min_p", "repetition_penalty", "best_of", "use_beam_search",
                              "guided_json", "guided_choice", "chat_template_kwargs"}),
    "openai": frozenset({"top_k", "min_p", "repetition_penalty"}),  # often vLLM or a proxy behind openai/
    "together_ai": frozenset({"top_k", "repetition_penalty", "min_p"}),
    "groq": frozenset({"top_k"}),
    "mistral": frozenset({"safe_prompt", "random_seed"}),
}


#: Every request parameter name of OpenAI's chat completions API (litellm's
#: OPENAI_CHAT_COMPLETION_PARAMS holds them all: tests/test_preflight.py checks it on the installed
#: litellm), for `misspelled_params`, the check that needs no litellm.
CHAT_PARAM_NAMES = frozenset({
    "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens", "presence_penalty",
    "frequency_penalty", "logit_bias", "user", "response_format", "seed", "parallel_tool_calls", "logprobs",
    "top_logprobs", "reasoning_effort", "thinking", "modalities", "prediction", "audio", "web_search_options",
    "service_tier", "prompt_cache_key", "prompt_cache_retention", "safety_identifier", "verbosity", "store",
    "metadata", "include_server_side_tool_invocations",
})


def misspelled_params(params: Mapping[str, object]) -> dict[str, str]:
    """The keys of `params` that are no parameter name litellm takes for any provider (CHAT_PARAM_NAMES,
    LITELLM_OPTIONS, PROVIDER_PARAMS) but close to one: {typo: the name meant}. Needs no litellm, so
    a typo is reported with the job's other problems at once; a key close to nothing is left to
    `unknown_params`, which asks litellm about the model."""
    import difflib

    known = CHAT_PARAM_NAMES | LITELLM_OPTIONS | frozenset().union(*PROVIDER_PARAMS.values())
    found: dict[str, str] = {}
    for key in params:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
            if close:
                found[key] = close[0]
    return found


def unknown_params(model: str, params: Mapping[str, object]) -> dict[str, str | None] | None:
    """The keys of `params` litellm does not list for `model` (get_supported_openai_params)
    and that are neither litellm options nor PROVIDER_PARAMS of the model's provider, each
    mapped to the nearest known key (or None). None when litellm does not know the model's
    provider (nothing to check against). Imports litellm."""
    import difflib

    litellm = import_litellm()
    try:
        name, provider, _, _ = litellm.get_llm_provider(model=model)
        supported = litellm.get_supported_openai_params(model=name, custom_llm_provider=provider)
    except Exception:  # an unknown provider: litellm cannot say what it takes
        return None
    if not supported:
        return None
    known = set(supported) | LITELLM_OPTIONS | PROVIDER_PARAMS.get(provider, frozenset())
    unknown: dict[str, str | None] = {}
    for key in params:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            unknown[key] = close[0] if close else None
    return unknown


def litellm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("litellm")
    except PackageNotFoundError:
        return "unknown"


def preload(max_connections: int | None = None) -> None:
    """Import and configure litellm now (see import_litellm), returning nothing: for a command
    that overlaps the slow import with other start-up work (bench: the simulator's)."""
    import_litellm(max_connections)


def estimate_tokens(model: str, messages: Sequence[Mapping[str, str]], tools: Sequence[ToolPayload] | None = None) -> int:
    """Prompt tokens of `messages` (and `tools`) for `model` by litellm's token counter; about
    four characters a token when litellm cannot load the model's tokenizer."""
    try:
        return int(import_litellm().token_counter(model=model, messages=list(messages), tools=tools))
    except Exception:
        return sum(len(m.get("content") or "") for m in messages) // 4


def price_for(model: str, prompt_tokens: int, completion_tokens: int) -> tuple[float, float] | None:
    """(USD for the prompt tokens, USD for the completion tokens) of `model` from litellm's
    local price list, or None when litellm does not price the model."""
    try:
        prompt_cost, completion_cost = import_litellm().cost_per_token(
            model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    except Exception:
        return None
    return float(prompt_cost), float(completion_cost)


async def bare_acompletion(**kwargs: Any) -> Any:
    """litellm.acompletion(**kwargs) exactly as a user calls it, under none of batchrun's rules
    (no ticket header, litellm's own transport and thread for the preparation): the bare
    pattern `batchrun bench --baseline` measures batchrun against."""
    return await import_litellm().acompletion(**kwargs)


def is_rate_limit_error(exc: BaseException) -> bool:
    """Is `exc` litellm's RateLimitError (a 429), as raised by bare_acompletion?"""
    return isinstance(exc, import_litellm().RateLimitError)
