"""A cheap, deterministic stand-in for a real tokenizer.

The simulator needs token counts for the ``usage`` block, for ``max_tokens``
truncation and for cutting a streamed answer into chunks. It does not need a
real BPE vocabulary, only something fast, stable across runs and roughly the
right size (about one token per four to five characters of English).

The rule: a token is a run of at most ``MAX_WORD_PIECE`` word characters
(letters, digits, underscore) or a single other non-space character, together
with the whitespace that precedes it. Trailing whitespace at the end of the
text forms a token of its own. Because every character belongs to exactly one
token, ``"".join(split_tokens(text)) == text`` always holds, so truncating to
the first N tokens and streaming token groups both reproduce the answer text
exactly.

Public functions:

* `split_tokens(text)`: the list of token strings.
* `count_tokens(text)`: how many there are.
* `message_content_text(content)`: the text of an OpenAI message ``content``
  (a string, a list of content parts, or None).
* `count_prompt_tokens(messages)`: prompt tokens of a chat request, counted
  like OpenAI does for chat models (content tokens plus a small per-message
  and per-request overhead).
"""

from __future__ import annotations

import functools
import re

from batchrun.sim.jsontypes import Messages

#: Longest run of word characters kept as one token; longer words are split.
MAX_WORD_PIECE = 6

#: Overhead tokens per message (role and separators), as for OpenAI chat models.
TOKENS_PER_MESSAGE = 3

#: Overhead tokens per request (the primed assistant reply).
TOKENS_PER_REQUEST = 3

_TOKEN_PATTERN = re.compile(r"\s*(?:\w{1,%d}|[^\w\s])|\s+" % MAX_WORD_PIECE)


def split_tokens(text: str) -> list[str]:
    """Split ``text`` into tokens whose concatenation is ``text``."""
    return _TOKEN_PATTERN.findall(text)


def count_tokens(text: str) -> int:
    """Number of tokens in ``text`` (0 for the empty string).

    Texts up to 4 KB are counted once (every request of a job repeats its
    system prompt); the cache holds at most 1,024 of them."""
    if len(text) <= 4096:
        return _count_tokens_cached(text)
    return len(_TOKEN_PATTERN.findall(text))


@functools.lru_cache(maxsize=1024)
def _count_tokens_cached(text: str) -> int:
    return len(_TOKEN_PATTERN.findall(text))


def message_content_text(content: object) -> str:
    """The text of one message's ``content`` field.

    Accepts a plain string, a list of content parts (only ``text`` parts
    contribute; images and other parts are ignored), or None (as in assistant
    messages that only carry tool calls).
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    pieces.append(text)
            elif isinstance(part, str):
                pieces.append(part)
        return "\n".join(pieces)
    return str(content)


def count_prompt_tokens(messages: Messages) -> int:
    """Prompt token count of a chat request's ``messages``."""
    total = TOKENS_PER_REQUEST
    for message in messages:
        total += TOKENS_PER_MESSAGE + count_tokens(message_content_text(message.get("content")))
        name = message.get("name")
        if isinstance(name, str):
            total += count_tokens(name)
    return total
