"""What the simulated provider bills: service tiers, prompt caching, reasoning tokens, the invoice.

    served_tier(requested, model)   the tier a response says it was served at
    flex_unavailable(...)           a flex request refused for lack of capacity (a 429
                                    `resource_unavailable`, never billed), at a configured rate
    is_reasoning_model(model)       o1/o3/o4-style and gpt-5 names, "reason", "thinking": they
                                    spend reasoning tokens, counted within max_tokens
    reasoning_tokens(...)           how many, deterministic for a seed and the messages
    PromptCache                     prompt caching as each provider reports it:
                                      OpenAI (every model not named claude): automatic, on a
                                      repeated prefix of at least 1,024 tokens, in 128-token steps
                                      (per model and prompt_cache_key);
                                      Anthropic (models named claude): only what the request
                                      marked with cache_control, up to the last marked block, at
                                      least 1,024 tokens; a first sight is a cache write
                                      (cache_creation_input_tokens), later ones reads
    Invoice                         billed tokens per model, tier and kind (uncached input,
                                    cached input, cache writes, output, reasoning), in all and
                                    per ticket: `/sim/stats` serves it as "invoice"

What is billed: an answer the simulator delivered whole (a normal answer, a
trickled one, one whose usage it left out on purpose). A 429, an error fault, a
request whose client went away before the answer, and a delivery cut on purpose
(reset, stream_cut, malformed_json) are not. Token counts follow OpenAI's
usage: prompt_tokens includes cached and written tokens, completion_tokens
includes reasoning tokens. The cache never expires and survives /sim/reset
(which clears the invoice).

Standard library only, like the rest of the simulator's request path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from batchrun.sim.jsontypes import Messages
from batchrun.sim.tokens import TOKENS_PER_MESSAGE, TOKENS_PER_REQUEST, count_tokens, message_content_text, split_tokens

#: The tiers a response names ("auto", unset or unknown: "default").
TIERS = ("default", "flex", "priority")
#: OpenAI caches a prompt prefix of at least this many tokens ...
OPENAI_CACHE_MIN_TOKENS = 1024
#: ... in steps of this many.
OPENAI_CACHE_STEP = 128
#: The shortest prefix an Anthropic cache_control breakpoint caches (shorter ones are sent uncached).
ANTHROPIC_CACHE_MIN_TOKENS = 1024
#: Reasoning tokens a reasoning model spends on an answer: from REASONING_MIN to REASONING_MIN + REASONING_SPREAD - 1.
REASONING_MIN = 8
REASONING_SPREAD = 56

_REASONING_NAME = re.compile(r"^(o\d+(?:-|$)|gpt-5)|reason|thinking")
#: Kinds of billed tokens in the invoice, in this order.
KINDS = ("requests", "input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")


def _bare(model: str) -> str:
    return model.rsplit("/", 1)[-1].lower()


def is_anthropic_model(model: str) -> bool:
    """A model answered the way Anthropic reports usage (cache reads and writes): named claude."""
    return "claude" in _bare(model)


def served_tier(requested: Any, model: str) -> str | None:
    """The tier the response names: "flex" or "priority" when asked for, else "default"; None for
    an Anthropic model (its OpenAI-shaped answers name none)."""
    if is_anthropic_model(model):
        return None
    return requested if requested in ("flex", "priority") else "default"


def draw(*parts: bytes) -> float:
    """A stable draw in [0, 1) from `parts` (BLAKE2b, the same in every process)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return int.from_bytes(digest.digest(), "little") / 2**64


def flex_unavailable(rate: float, seed: int, ticket_id: str | None, attempt: int, body: bytes) -> bool:
    """Whether a flex request is refused for lack of capacity (deterministic for seed, ticket, attempt)."""
    if rate <= 0:
        return False
    key = ticket_id.encode() if ticket_id is not None else hashlib.blake2b(body, digest_size=16).digest()
    return draw(b"flex", str(seed).encode(), key, str(attempt).encode()) < rate


def is_reasoning_model(model: str) -> bool:
    return bool(_REASONING_NAME.search(_bare(model)))


def reasoning_tokens(model: str, messages: Messages, seed: int) -> int:
    """Reasoning tokens the simulated model spends on these messages (0 for other models)."""
    if not is_reasoning_model(model):
        return 0
    text = "\x00".join(message_content_text(m.get("content")) for m in messages if isinstance(m, dict))
    return REASONING_MIN + int(draw(b"reasoning", str(seed).encode(), text.encode()) * REASONING_SPREAD)


def _prompt_pieces(messages: Messages, extra_text: str) -> list[str]:
    """The prompt as token pieces, in order: the tools and schema, then each message (its overhead,
    its content, its name), then the request's own overhead. Exactly count_prompt_tokens + extra."""
    pieces = split_tokens(extra_text) if extra_text else []
    for message in messages:
        role = str(message.get("role"))
        pieces += [f"<|{role}|>", "<|sep|>", "<|sep|>"][:TOKENS_PER_MESSAGE]
        pieces += split_tokens(message_content_text(message.get("content")))
        name = message.get("name")
        if isinstance(name, str):
            pieces += split_tokens(name)
    return pieces + ["<|assistant|>", "<|sep|>", "<|sep|>"][:TOKENS_PER_REQUEST]


def _marked_prefix(messages: Messages, extra_text: str) -> tuple[int, bytes] | None:
    """(tokens, key) of the prompt up to the last content block marked with cache_control, or None."""
    last = None
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("cache_control"):
                    last = (i, j)
    if last is None:
        return None
    i, j = last
    kept = [dict(m) for m in messages[:i + 1]]
    content = messages[i]["content"]
    assert isinstance(content, list)
    kept[i]["content"] = content[:j + 1]
    tokens = count_tokens(extra_text) if extra_text else 0
    for message in kept:
        tokens += TOKENS_PER_MESSAGE + count_tokens(message_content_text(message.get("content")))
    key = hashlib.blake2b(repr((extra_text, [(m.get("role"), message_content_text(m.get("content")))
                                              for m in kept])).encode(), digest_size=16).digest()
    return tokens, key


class PromptCache:
    """The prompt caches of one simulator (module docstring); `lookup` answers and fills them."""

    def __init__(self) -> None:
        self._openai: set[bytes] = set()  # hashes of cached prefixes (model, key, tokens)
        self._anthropic: set[bytes] = set()

    def lookup(self, model: str, messages: Messages, extra_text: str, prompt_tokens: int,
               cache_key: str | None) -> tuple[int, int]:
        """(cached tokens read, tokens written) for a prompt of `prompt_tokens` tokens; the prompt is
        cached from now on. An Anthropic model caches only what was marked."""
        if is_anthropic_model(model):
            marked = _marked_prefix(messages, extra_text)
            if marked is None or marked[0] < ANTHROPIC_CACHE_MIN_TOKENS:
                return 0, 0
            tokens, key = marked
            key = hashlib.blake2b(model.encode() + b"\0" + key, digest_size=16).digest()
            if key in self._anthropic:
                return tokens, 0
            self._anthropic.add(key)
            return 0, tokens
        if prompt_tokens < OPENAI_CACHE_MIN_TOKENS:
            return 0, 0
        pieces = _prompt_pieces(messages, extra_text)
        running = hashlib.blake2b(f"{model}\0{cache_key or ''}\0".encode(), digest_size=16)
        cached = 0
        boundary = OPENAI_CACHE_MIN_TOKENS
        for index, piece in enumerate(pieces, 1):
            running.update(piece.encode() + b"\0")
            if index == boundary:
                digest = running.copy().digest()
                if digest in self._openai:
                    cached = index
                else:
                    self._openai.add(digest)
                boundary += OPENAI_CACHE_STEP
        return cached, 0


class Invoice:
    """Billed tokens per model, tier and kind (KINDS), in all and per ticket."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, dict[str, int]]] = {}  # model -> tier -> kind -> tokens
        self.tickets: dict[str, dict[str, dict[str, int]]] = {}  # ticket -> tier -> kind -> tokens

    def bill(self, model: str, tier: str | None, ticket_id: str | None, usage: Mapping[str, Any]) -> None:
        """Bill one delivered answer with its usage (OpenAI's shape, the simulator's extra keys)."""
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        written = int(usage.get("cache_creation_input_tokens") or 0)
        reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
        amounts = {"requests": 1, "input_tokens": int(usage["prompt_tokens"]) - cached - written,
                   "cached_tokens": cached, "cache_write_tokens": written,
                   "output_tokens": int(usage["completion_tokens"]), "reasoning_tokens": reasoning}
        tier = tier or "default"
        targets = [self.models.setdefault(model, {}).setdefault(tier, dict.fromkeys(KINDS, 0))]
        if ticket_id is not None:
            targets.append(self.tickets.setdefault(ticket_id, {}).setdefault(tier, dict.fromkeys(KINDS, 0)))
        for target in targets:
            for kind, amount in amounts.items():
                target[kind] += amount

    def snapshot(self) -> dict[str, Any]:
        return {"models": {m: {t: dict(k) for t, k in tiers.items()} for m, tiers in self.models.items()},
                "tickets": {i: {t: dict(k) for t, k in tiers.items()} for i, tiers in self.tickets.items()}}
