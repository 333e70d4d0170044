"""The simulator's deterministic "model": what text to answer to a chat request.

The embedded OpenAI-compatible simulator calls :func:`compose_answer` for
every chat completion it serves.  There is no model here: the answer is a
pure function of the request messages and a seed, cheap enough to serve
hundreds of requests per second on one core, and stdlib only.

How a request is answered
-------------------------
``compose_answer(messages, seed)`` takes OpenAI-style chat messages.  Each
message's ``content`` may be a string, ``None``, or a list of content parts
(``[{"type": "text", "text": "..."}, {"type": "image_url", ...}]``; only the
text parts are read, bare strings in the list are accepted too).

1. **Is it a classification request?**  The known labels are ``bug``,
   ``feature``, ``billing`` and ``other``.  If the system messages (roles
   ``system`` and ``developer``) mention at least two of them as whole words
   (case-insensitive), the request is a classification and its labels are
   the ones mentioned there, in order of first appearance.  Failing that, the
   same test is applied to the whole prompt (all messages).  Labels outside
   the known four are never invented.

2. **Classification.**  The text to classify is the content of the user
   messages of the current turn (those after the last assistant message, so
   few-shot examples are not re-classified), minus any line that looks like
   a list of labels (three or more labels on one line, or two joined by a
   comma, slash or pipe) so the instructions do not vote.  The answer is
   exactly one label, lower case, without punctuation: see
   :func:`classify_ticket_text`.

3. **Anything else** gets a few sentences of plausible English prose
   (40-120 words, beginning ``Summary:``) built from the most frequent
   content words of the user messages.  The same messages and seed always
   give the same text; a different seed may change the wording.

The classifier
--------------
:func:`classify_ticket_text` scores the text with weighted keyword and
phrase patterns per label (``crash``, ``error``, ``exception``, ``500``,
``doesn't work`` ... for bug; ``would be great``, ``please add``,
``support for``, ``roadmap`` ... for feature; ``invoice``, ``charged``,
``refund``, ``VAT`` ... for billing; GDPR, how-to, praise, sales, spam ...
for other).  The best-scoring label among the allowed ones wins; with no
evidence at all the answer is ``other`` (if allowed).  Like a real model it
is wrong some of the time: the keywords mislead on ambiguous tickets, and for
a small, stable fraction of inputs (about 5%, decided by a BLAKE2b hash of
seed and text, never Python's randomised ``hash()``) it answers the
runner-up label instead.  On ``sample_data/tickets.jsonl`` it agrees with the
gold labels roughly 85-92% of the time.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from batchrun.sim.jsontypes import Messages

__all__ = [
    "KNOWN_LABELS",
    "compose_answer",
    "classify_ticket_text",
    "classify_messages",
    "current_turn_text",
    "detect_labels",
    "message_text",
    "summary_sentence",
    "top_keywords",
]

KNOWN_LABELS: tuple[str, ...] = ("bug", "feature", "billing", "other")

#: Fraction of inputs for which the classifier deliberately answers the
#: runner-up label (deterministic per seed + text).
NOISE_RATE = 0.05

_SYSTEM_ROLES = frozenset({"system", "developer"})

_LABEL_RE = re.compile(r"\b(bug|feature|billing|other)\b", re.IGNORECASE)
_LABEL_LIST_RE = re.compile(
    r"\b(?:bug|feature|billing|other)\b\s*[,/|]\s*\b(?:bug|feature|billing|other)\b", re.IGNORECASE
)

# (label, weight, pattern).  Patterns run against lower-cased text.
_RULES: tuple[tuple[str, float, str], ...] = (
    # ---- bug -------------------------------------------------------------
    ("bug", 3.0, r"crash\w*"),
    ("bug", 2.0, r"errors?|erroring"),
    ("bug", 3.0, r"exceptions?|traceback|stack ?trace|typeerror|keyerror|nullpointer\w*"),
    ("bug", 3.0, r"bugs?|buggy|regression"),
    ("bug", 2.0, r"broken|breaks?"),
    ("bug", 3.0, r"(?:doesn't|does not|don't|do not|isn't|is not|stopped|not) work(?:ing)?"),
    ("bug", 2.0, r"[45]0[0-9]|[45]2[29]"),
    ("bug", 2.0, r"fail(?:s|ed|ing|ure)?"),
    ("bug", 2.0, r"(?:blank|white) (?:page|screen)|not loading|won't load|doesn't load"),
    ("bug", 1.5, r"stuck|freez\w*|hangs?|glitch\w*"),
    ("bug", 1.5, r"redirect loop|loop"),
    ("bug", 1.0, r"null|undefined|nan"),
    ("bug", 3.0, r"steps to reproduce|expected:|actual:"),
    ("bug", 1.5, r"(?:since|after) (?:the |yesterday's |today's )?(?:latest |last |new )?(?:update|release|upgrade)"),
    ("bug", 1.0, r"timeouts?|timed out|slow"),
    ("bug", 1.0, r"duplicates?|twice"),
    ("bug", 1.0, r"locked out|logged out|disconnect\w*|never arrives?"),
    ("bug", 1.0, r"console|reinstall\w*|cleared? the cache"),
    ("bug", 1.5, r"unreadable|wrong|incorrect|off by one"),
    ("bug", 2.0, r"fix (?:it|this)|security issue|encoding"),
    ("bug", 1.0, r"disappeared|missing|down"),
    ("bug", 1.5, r"still get\w*|keeps? \w+ing|every (?:single )?time|rejected|invalid|reset|unusable"),
    ("bug", 1.5, r"(?:doesn't|don't|do not) add up|instead of the|shows? up twice|never"),
    ("bug", 1.0, r"can't|cannot|should(?:n't)?"),
    ("bug", 1.5, r"problem|performance|degradation|used to|(?:nobody|nothing|no one) changed|(?:haven't|hasn't) changed"),
    ("bug", 2.0, r"(?:been|is|are|went) down|outage|contrast"),
    # ---- feature -----------------------------------------------------------
    ("feature", 3.0, r"would be (?:great|nice|amazing|awesome|useful|helpful|good)"),
    ("feature", 2.5, r"it'd be|it would be|would it be possible|is it possible"),
    ("feature", 4.0, r"feature requests?|enhancement"),
    ("feature", 3.0, r"please add|could you add|can you add|can we get|add support|pls add"),
    ("feature", 2.0, r"support for|ability to|option to|be able to|let us"),
    ("feature", 3.0, r"roadmap|any plans|plans to|planned|on your radar|coming\?"),
    ("feature", 3.0, r"would love|we'd love|i'd like to|we'd like to|nice to have"),
    ("feature", 2.5, r"suggestion|suggest\w*|wish|proposal|consider"),
    ("feature", 2.5, r"any chance|would (?:make|help|save)|too small|raise it|increase"),
    ("feature", 1.5, r"integration|export to|instead of|we need"),
    ("feature", 1.0, r"improve\w*|request"),
    # ---- billing -----------------------------------------------------------
    ("billing", 3.0, r"invoices?|invoiced|receipts?"),
    ("billing", 3.0, r"charged?|charges|overcharged"),
    ("billing", 4.0, r"refund\w*|money back|chargeback"),
    ("billing", 3.0, r"payments?|paid|pay"),
    ("billing", 2.0, r"credit card|card"),
    ("billing", 3.0, r"vat|sales tax|tax-exempt|tax"),
    ("billing", 2.5, r"billing|billed|bill us"),
    ("billing", 2.0, r"subscription|renewal|renews?"),
    ("billing", 2.0, r"price|pricing|prorat\w*|discount|promo code|quote"),
    ("billing", 1.5, r"upgrade|downgrade|cancel\w*|seats|annual|monthly"),
    ("billing", 2.0, r"[€£$]\s?\d|\d\s?€|usd|eur|chf|gbp"),
    ("billing", 1.5, r"purchase order|wire transfer|bank transfer|non-payment"),
    # ---- other -------------------------------------------------------------
    ("other", 4.0, r"gdpr|personal data|subject access|right to erasure"),
    ("other", 3.0, r"delete my account|close my account|unsubscribe"),
    ("other", 2.0, r"how (?:do|can|should) (?:i|we)|how to|can you explain|where is|is there an?"),
    ("other", 2.0, r"thank you|thanks, that|great work|fantastic|great results|love the"),
    ("other", 3.0, r"partnership|partner|reseller|sponsor\w*|case study"),
    ("other", 2.5, r"demo|evaluating|sales team"),
    ("other", 4.0, r"seo|crypto|guaranteed|whatsapp|dear friend"),
    ("other", 3.0, r"soc 2|questionnaire|iso 27001|dpa|vpat|wcag|w-9|retention policy|data residency"),
    ("other", 2.0, r"hosted|journalist|interview|hiring|apply|education|students?"),
    ("other", 2.0, r"do you (?:have|offer)|is there"),
    ("other", 1.5, r"status page|openapi|swagger|ownership|documentation|docs|best[- ]practice"),
    ("other", 1.5, r"question|wondering|spanish|español|human|by mistake"),
)

_GROUP_INFO: dict[str, tuple[str, float]] = {}


def _split_top(pattern: str) -> list[str]:
    """Split a pattern at its top-level ``|`` (outside groups and classes)."""
    out, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            out.append(pattern[start:i])
            start = i + 1
        i += 1
    out.append(pattern[start:])
    return out


def _first_chars(alt: str) -> frozenset[str] | None:
    """Characters a match of ``alt`` can start with; ``None`` if unsure."""
    if not alt:
        return None
    c = alt[0]
    if c == "(":
        depth, i = 0, 0
        while i < len(alt):
            if alt[i] == "\\":
                i += 2
                continue
            depth += {"(": 1, ")": -1}.get(alt[i], 0)
            if depth == 0:
                break
            i += 1
        if i + 1 < len(alt) and alt[i + 1] in "?*{":
            return None
        inner = alt[1:i]
        if inner.startswith("?:"):
            inner = inner[2:]
        elif inner.startswith("?"):
            return None
        firsts: set[str] = set()
        for sub in _split_top(inner):
            f = _first_chars(sub)
            if f is None:
                return None
            firsts |= f
        return frozenset(firsts)
    if c == "[":
        end = alt.find("]", 1)
        body = alt[1:end]
        if end < 0 or body.startswith("^") or "\\" in body or (end + 1 < len(alt) and alt[end + 1] in "?*{"):
            return None
        chars: set[str] = set()
        j = 0
        while j < len(body):
            if j + 2 < len(body) and body[j + 1] == "-":
                chars.update(chr(k) for k in range(ord(body[j]), ord(body[j + 2]) + 1))
                j += 3
            else:
                chars.add(body[j])
                j += 1
        return frozenset(chars)
    if c == "\\":
        return frozenset("0123456789") if alt[1:2] == "d" and alt[2:3] not in ("?", "*", "{") else None
    if c in ".^$)|?*+{" or alt[1:2] in ("?", "*", "{"):
        return None
    return frozenset(c)


def _build_scanner() -> tuple[dict[str, re.Pattern[str]], re.Pattern[str] | None]:
    """Compile the rules into one small regex per possible first character.

    Trying ~80 alternatives at every word start is the expensive part of a
    single big alternation; dispatching on the first character first makes
    scoring several times faster with identical results (rule order, and so
    which rule wins at a position, is preserved).
    """
    per_char: dict[str, list[tuple[int, list[str]]]] = {}
    anywhere: list[tuple[int, list[str]]] = []
    for i, (label, weight, pattern) in enumerate(_RULES):
        _GROUP_INFO[f"r{i}"] = (label, weight)
        buckets: dict[str, list[str]] = {}
        for alt in _split_top(pattern):
            firsts = _first_chars(alt)
            if firsts is None:
                anywhere.append((i, [alt]))
                continue
            for ch in firsts:
                buckets.setdefault(ch, []).append(alt)
        for ch, alts in buckets.items():
            per_char.setdefault(ch, []).append((i, alts))

    def compile_(entries: list[tuple[int, list[str]]]) -> re.Pattern[str]:
        merged: dict[int, list[str]] = {}
        for i, alts in sorted(entries, key=lambda e: e[0]):
            merged.setdefault(i, []).extend(alts)
        body = "|".join(f"(?P<r{i}>{'|'.join(alts)})" for i, alts in merged.items())
        return re.compile(f"(?:{body})(?![\\w])")

    table = {ch: compile_(entries + anywhere) for ch, entries in per_char.items()}
    return table, (compile_(anywhere) if anywhere else None)


_DISPATCH, _ANYWHERE = _build_scanner()
# Where a match may start: the first character of a word, or a symbol.
_STARTS = re.compile(r"(?<!\w)\S")

# Each rule contributes at most this many times, so one word repeated in a
# long paste (a stack trace full of "error") does not drown everything else.
_MAX_HITS_PER_RULE = 2
_MIN_EVIDENCE = 2.0
_TIE_ORDER = {"bug": 0, "billing": 1, "feature": 2, "other": 3}


def _scores(text: str) -> dict[str, float]:
    scores = {label: 0.0 for label in KNOWN_LABELS}
    hits: Counter[str] = Counter()
    text = text.lower()
    get, default = _DISPATCH.get, _ANYWHERE
    pos = 0
    for start in _STARTS.finditer(text):
        i = start.start()
        if i < pos:
            continue
        scanner = get(text[i], default)
        if scanner is None:
            continue
        m = scanner.match(text, i)
        if m is None:
            continue
        pos = m.end()
        group = m.lastgroup
        assert group is not None  # every alternative of a scanner is a named group
        hits[group] += 1
        if hits[group] <= _MAX_HITS_PER_RULE:
            label, weight = _GROUP_INFO[group]
            scores[label] += weight
    return scores


def _digest(seed: int, text: str, salt: bytes) -> int:
    """A stable 64-bit number from seed and text (BLAKE2b, never ``hash()``)."""
    h = hashlib.blake2b(salt + b"\0" + str(seed).encode() + b"\0", digest_size=8)
    h.update(text.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "big")


def _unit(seed: int, text: str, salt: bytes) -> float:
    """A stable number in [0, 1) from seed and text."""
    return _digest(seed, text, salt) / 2.0**64


def classify_ticket_text(text: str, labels: Sequence[str], seed: int, noise: float | None = None) -> str:
    """The simulated classifier: one of `labels`.

    Keyword scoring picks the best label among ``labels`` (lower-cased);
    with no evidence it answers ``other`` when allowed, else the first label.
    For about ``NOISE_RATE`` of inputs (stable per seed + text) the
    runner-up is answered instead (``noise`` overrides the rate: a model
    profile's quality).  Raises ``ValueError`` if ``labels`` is empty.
    """
    allowed = list(dict.fromkeys(str(label).strip().lower() for label in labels if str(label).strip()))
    if not allowed:
        raise ValueError("labels must not be empty")
    if len(allowed) == 1:
        return allowed[0]
    scores = _scores(text or "")
    fallback = "other" if "other" in allowed else allowed[0]

    def key(label: str) -> tuple[float, int, int]:
        return (-scores.get(label, 0.0), _TIE_ORDER.get(label, 9), allowed.index(label))

    ranked = sorted(allowed, key=key)
    best = ranked[0] if scores.get(ranked[0], 0.0) >= _MIN_EVIDENCE else fallback
    if _unit(seed, text or "", b"noise") < (NOISE_RATE if noise is None else noise):
        others = [label for label in ranked if label != best]
        if scores.get(others[0], 0.0) > 0:
            return others[0]
        return others[int(_unit(seed, text or "", b"pick") * len(others))]
    return best


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


def message_text(message: object) -> str:
    """The text of one chat message: string, ``None`` or a list of parts."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str) and part.get("type", "text") in ("text", "input_text"):
                    out.append(text)
        return "\n".join(out)
    return str(content)


def _labels_in(text: str) -> list[str]:
    if len(text) <= 4096:  # every request of a job repeats its system prompt: scan each one once
        return list(_labels_in_cached(text))
    return list(dict.fromkeys(m.group(1).lower() for m in _LABEL_RE.finditer(text)))


@functools.lru_cache(maxsize=256)
def _labels_in_cached(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(m.group(1).lower() for m in _LABEL_RE.finditer(text)))


def detect_labels(messages: Iterable[object]) -> list[str] | None:
    """The labels of a classification request, or ``None`` if it is not one."""
    messages = list(messages)
    system = "\n".join(message_text(m) for m in messages if isinstance(m, dict) and m.get("role") in _SYSTEM_ROLES)
    labels = _labels_in(system)
    if len(labels) >= 2:
        return labels
    labels = _labels_in("\n".join(message_text(m) for m in messages))
    return labels if len(labels) >= 2 else None


def _current_user_text(messages: Sequence[object]) -> str:
    last_assistant = -1
    for i, m in enumerate(messages):
        if isinstance(m, dict) and m.get("role") == "assistant":
            last_assistant = i
    turn = [m for m in messages[last_assistant + 1:] if isinstance(m, dict) and m.get("role") == "user"]
    if not turn:  # e.g. a conversation that ends on an assistant message
        turn = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return "\n".join(message_text(m) for m in turn)


def _strip_label_lists(text: str) -> str:
    if len(_labels_in(text)) < 2:  # no line can hold two labels
        return text
    kept = []
    for line in text.split("\n"):
        if len(_labels_in(line)) >= 3 or _LABEL_LIST_RE.search(line):
            continue
        kept.append(line)
    return "\n".join(kept)


# --------------------------------------------------------------------------
# Prose for non-classification requests
# --------------------------------------------------------------------------

_WORD_RE = re.compile(r"[^\W\d_][^\W_]*(?:['’-][^\W\d_]+)*")
_STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are aren't as at be because been before being below
    between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each
    few for from further had hadn't has hasn't have haven't having he her here hers herself him himself his how i
    i'd i'll i'm i've if in into is isn't it it's its itself just let's me more most mustn't my myself no nor not
    now of off on once only or other ought our ours ourselves out over own please same shan't she should shouldn't
    so some such than that that's the their theirs them themselves then there there's these they they'd they'll
    they're they've this those through to too under until up us very was wasn't we we'd we'll we're we've were
    weren't what what's when where which while who whom why will with won't would wouldn't you you'd you'll
    you're you've your yours yourself yourselves hi hello hey dear thanks thank regards best cheers get got
    one two also still really like since even well much many every anything something nothing yes okay ok
    summarize summarise summary following below above text write explain describe tell give make need want
    """.split()
)

_OPENERS = (
    "Summary: the message is mainly about {k0}, with related points on {k1} and {k2}.",
    "Summary: the request centres on {k0} and also touches on {k1} and {k2}.",
    "Summary: the sender raises a question about {k0}, mentioning {k1} and {k2} along the way.",
    "Summary: this is a note concerning {k0}; it also refers to {k1} and {k2}.",
)
_MIDDLES = (
    "The most prominent topic is {k0}, which comes up {n0} in the text.",
    "The key terms are {k0}, {k1}, {k2} and {k3}.",
    "Important context is provided about {k3} and how it relates to {k1}.",
    "The details around {k2} appear to matter most to the author.",
    "There is a clear link between {k1} and {k4} in what is described.",
    "The author expects a response that addresses {k0} directly.",
    "Additional detail is given on {k4} and {k5}.",
)
_CLOSERS = (
    "Suggested next step: review the points on {k0} and reply with a short, concrete answer.",
    "Recommended action: confirm the facts about {k1}, then follow up on {k0}.",
    "Next step: acknowledge the message and clarify anything unclear about {k2}.",
    "Overall, a brief reply covering {k0} and {k1} should resolve it.",
)
_FILLERS = (
    "No urgent deadline is stated, but a timely reply would be appreciated.",
    "The tone of the message is neutral and the request is reasonably clear.",
    "Nothing in the message suggests that further escalation is needed at this point.",
    "A short acknowledgement would help set expectations for the author.",
)
_DEFAULT_KEYWORDS = ("the request", "the context", "the details", "the next steps", "the timeline", "the outcome")


def _keywords(text: str, limit: int = 6) -> list[str]:
    counts: Counter[str] = Counter()
    for m in _WORD_RE.finditer(text.lower()):
        w = m.group(0)
        if len(w) >= 3 and w not in _STOPWORDS:
            counts[w] += 1
    # most_common keeps first-seen order among equal counts (Counter is ordered).
    return [w for w, _ in counts.most_common(limit)]


def _times(n: int) -> str:
    return "once" if n == 1 else "twice" if n == 2 else f"{n} times"


def _prose(text: str, seed: int) -> str:
    kws = _keywords(text)
    counts = Counter(m.group(0) for m in _WORD_RE.finditer(text.lower()))
    filled = kws + [d for d in _DEFAULT_KEYWORDS if d not in kws]
    slots = {f"k{i}": filled[i] for i in range(6)}
    slots["n0"] = _times(counts.get(filled[0], 1) or 1)

    rng = random.Random(_digest(seed, text, b"prose"))
    sentences = [rng.choice(_OPENERS)]
    sentences += rng.sample(_MIDDLES, rng.randint(2, 3))
    sentences.append(rng.choice(_CLOSERS))
    out = " ".join(s.format(**slots) for s in sentences)
    fillers = list(_FILLERS)
    rng.shuffle(fillers)
    while len(out.split()) < 40 and fillers:
        out += " " + fillers.pop()
    words = out.split()
    if len(words) > 120:  # only possible with very long "words"; keep it bounded
        out = " ".join(words[:120]).rstrip(".,;:") + "."
    return out


def compose_answer(messages: Messages, seed: int, noise: float | None = None) -> str:
    """Deterministic answer text for an OpenAI-style chat request (`noise`: see classify_ticket_text)."""
    messages = list(messages or [])
    labels = detect_labels(messages)
    user_text = _current_user_text(messages)
    if labels is not None:
        return classify_ticket_text(_strip_label_lists(user_text), labels, seed, noise)
    if not user_text.strip():
        user_text = "\n".join(message_text(m) for m in messages)
    return _prose(user_text, seed)


# --------------------------------------------------------------------------
# Helpers for structured answers (batchrun.sim.structured)
# --------------------------------------------------------------------------


def current_turn_text(messages: Messages) -> str:
    """The user text of the current turn (all messages' text if there is none)."""
    messages = list(messages or [])
    text = _current_user_text(messages)
    if not text.strip():
        text = "\n".join(message_text(m) for m in messages)
    return text


def classify_messages(messages: Messages, labels: Sequence[str], seed: int) -> str:
    """The label among ``labels`` that a classification request over ``messages`` gets.

    Same text selection as `compose_answer` (current user turn, label lists
    removed), so a JSON ``enum`` of the prompt's labels gets the same label as
    the plain-text answer.
    """
    return classify_ticket_text(_strip_label_lists(_current_user_text(list(messages or []))), labels, seed)


def summary_sentence(messages: Messages, seed: int) -> str:
    """The first sentence of the prose answer to ``messages``, without the ``Summary:`` prefix."""
    prose = _prose(current_turn_text(messages), seed)
    first = prose.split(". ", 1)[0].rstrip(".") + "."
    if first.startswith("Summary: "):
        first = first[len("Summary: "):]
    return first[:1].upper() + first[1:]


def top_keywords(messages: Messages, limit: int = 6) -> list[str]:
    """The most frequent content words of the current user turn (possibly fewer than ``limit``)."""
    return _keywords(current_turn_text(messages), limit)
