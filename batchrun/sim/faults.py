"""Fault injection for the simulator: which requests fail, and how.

A `FaultRule` names a fault ``kind`` and says which requests it hits; a
`FaultPlan` holds the rules of one simulator instance and picks, for each
request, the rule to apply (or none). Everything is deterministic for a seed:
rerunning the same batch against a simulator with the same seed and rules
fails the same tickets on the same attempts.

Which requests a rule hits
--------------------------
* ``tickets``: the rule hits requests whose ``X-Batchrun-Ticket-Id`` header
  is one of these ids, on the listed ``attempts`` (1-based, counted per
  ticket id by the simulator; default ``(1,)`` when ``tickets`` is given).
  ``tickets=("T000003",), attempts=(1, 2)`` is a per-ticket schedule: the
  first two attempts at T000003 fail, the third succeeds. Requests without
  the header never match a ``tickets`` rule.
* ``rate``: the rule hits that fraction of requests (0 to 1). Whether a given
  request is hit is decided by a BLAKE2b hash of (seed, ticket id, attempt,
  rule index), or, for a request without a ticket header, of (seed, the
  request body's digest, rule index), never by Python's randomised
  ``hash()``. Each attempt is an independent draw, so a retried ticket
  usually gets through. With ``attempts`` also given, only those attempt
  numbers can be hit (for requests with a ticket id; without one the
  attempt is unknown and ``attempts`` is not checked).
* Both ``tickets`` and ``rate``: that fraction of those tickets' listed
  attempts. A rule must give at least one of the two (``rate=1`` hits every
  request).

Rules are tried in order and the first that hits wins; a rule's index is part
of its hash, so two rate rules draw independently.

Kinds (`FAULT_KINDS`)
---------------------
Error responses, sent before any answer is computed (the request never
reaches the rate limiter):

``429`` / ``429_date`` / ``429_ms`` / ``429_bare``
    429 in OpenAI's error shape (type and code ``rate_limit_exceeded``) with,
    respectively, ``retry-after: N`` (seconds, ``retry_after``), ``retry-after``
    as an HTTP date (rounded up to a whole second), ``retry-after-ms: N``, or
    no retry header at all.
``500`` / ``502`` / ``503``
    OpenAI-shaped ``server_error`` JSON with that status.
``html_error``
    A 502 whose body is an HTML page (``text/html``), as a proxy would send.
``context_length``
    400, ``code: "context_length_exceeded"``, "This model's maximum context
    length is ... tokens. However, your messages resulted in ... tokens."
``content_policy``
    400, ``code: "content_policy_violation"``, a message about the safety system.
``401``
    ``invalid_api_key``; the message never echoes the key or the
    Authorization header.
``401_no_key``
    401 with type ``invalid_request_error`` and no code: OpenAI's answer to a
    missing or malformed key ("You didn't provide an API key ..."), which
    litellm raises as a BadRequestError.
``404_model``
    404, ``code: "model_not_found"``, naming the requested model.
``400_invalid_model``
    400, "Invalid model name passed in model=...", as a LiteLLM proxy answers
    a model it does not serve (the same message for every request).

``reset_before_headers``
    Read the request, then abort the TCP connection (``SO_LINGER`` 0,
    ``transport.abort()``) without sending a status line: the client cannot
    tell whether the server processed it. Applied here, before the answer
    and the rate limiter.

Delivery faults, applied to a request that was admitted and answered (it
counts against the rate limits like any other):

``stall``
    Send nothing (not even headers) for ``stall_s`` seconds (default 3600),
    then answer normally if the client is still there.
``trickle``
    Send the 200 headers, then the body a few bytes (`TRICKLE_PIECE_BYTES`)
    at a time with ``trickle_ms`` (default 100) between pieces.
``reset``
    Send the headers and part of the body, then abort the TCP connection.
``stream_cut``
    Streaming: send the role chunk and about half of the content chunks,
    then end the response cleanly but without the ``finish_reason`` chunk,
    the usage chunk and ``data: [DONE]``. Non-streaming: like ``reset``.
``malformed_json``
    Non-streaming: a 200 ``application/json`` response whose body is the
    first half of the real JSON (invalid JSON). Streaming: one content chunk
    carries truncated JSON; the rest of the stream is normal.
``no_usage`` / ``drop_usage``
    The answer without usage: non-streaming responses lack the ``usage``
    field; streams omit the usage chunk even when
    ``stream_options.include_usage`` asked for it.
``usage_null``
    Non-streaming: the answer with ``"usage": null``; streaming: like
    ``no_usage``.
``no_choices`` / ``bad_usage`` / ``huge_usage`` / ``fraction_usage`` / ``string_usage`` /
``array_body`` / ``hostile_text`` / ``huge_answer``
    Hostile answers (hostile.py): a 200 with usage and ``"choices": []``,
    negative or 10^12 token counts, fractional counts, ``"usage": "lots"``,
    a JSON array body, an answer text made of a spreadsheet formula and
    terminal escapes, an answer of ``size_bytes`` bytes.

And one kind that is no fault at all:

``ok``
    Answer normally. A rule (or a script step) of this kind shields the
    requests it hits from the rules after it.

Scripts: a per-ticket sequence of answers
-----------------------------------------
A `TicketScript` gives the tickets it applies to a sequence of steps, one
per attempt: ``steps=("reset_before_headers", "429:retry_after=6",
"no_usage", "ok")`` answers the first request of such a ticket with a reset
before the headers, the second with a 429 asking for 6 s, the third with an
answer without usage, the fourth normally. A step is ``KIND`` or
``KIND:option=value[,option=value]`` with the options of that kind
(``retry_after``, ``stall_s``, ``trickle_ms``). Attempts past the last step
are treated like any other request (the fault rules apply); end a script
with ``ok`` to shield them.

A script applies to its ``tickets`` (a list of ids) or to a ``rate`` of all
tickets: a fraction drawn once per ticket (a BLAKE2b hash of seed, ticket id
and script index), so ``rate=0.1, steps=("reset_before_headers",)`` resets
the first request of about 10% of the tickets, and only their first.
Scripts are tried in order before the fault rules; the first script that
covers a ticket is its script. Requests without a ticket id never follow a
script.

Forms: ``TicketScript(steps=(...), tickets=("T000003",))``; a mapping (the
job file's ``[[simulator.scripts]]`` tables: ``tickets`` or ``rate``, and
``steps``); the command line ``--script WHO=STEP;STEP;...`` where WHO is
ticket ids joined by ``+`` (optionally written ``tickets:T1+T2``) or
``rate:0.1``, e.g. ``--script 'T000003=reset_before_headers;429:retry_after=6;ok'``
or ``--script 'rate:0.05=reset'`` (`TicketScript.parse` / `TicketScript.to_spec`).

Rule options
------------
``retry_after`` (seconds, default 1.0) only for ``429``, ``429_date`` and
``429_ms``; ``stall_s`` only for ``stall``; ``trickle_ms`` only for
``trickle``; ``size_bytes`` only for ``huge_answer``. Giving an option to a kind that does not use it is an error.

Configuration formats
---------------------
* Python: ``FaultRule(kind="503", tickets=("T000003",), attempts=(1, 2))``.
* A mapping (the job file's ``[[simulator.faults]]`` tables):
  `FaultRule.from_mapping` accepts exactly the keys ``kind``, ``rate``,
  ``tickets``, ``attempts``, ``retry_after``, ``stall_s``, ``trickle_ms``,
  ``size_bytes``.
* The command line: ``--fault KIND[:key=value[,key=value...]]`` with list
  values joined by ``+``, e.g. ``--fault 429:rate=0.2,retry_after=0.05`` or
  ``--fault 503:tickets=T000003+T000004,attempts=1+2``; `FaultRule.parse`
  reads it and `FaultRule.to_spec` writes it (ticket ids containing ``,``,
  ``+`` or ``=`` cannot be written this way).

Standard library only (the CLI imports this through `batchrun.sim.config`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias, TypeGuard

from batchrun.sim.jsontypes import RuleOptions

#: Every fault kind, in documentation order.
FAULT_KINDS: tuple[str, ...] = (
    "429",
    "429_date",
    "429_ms",
    "429_bare",
    "500",
    "502",
    "503",
    "html_error",
    "context_length",
    "content_policy",
    "401",
    "401_no_key",
    "404_model",
    "400_invalid_model",
    "stall",
    "trickle",
    "reset",
    "stream_cut",
    "malformed_json",
    "no_usage",
    "drop_usage",
    "usage_null",
    "no_choices",
    "bad_usage",
    "huge_usage",
    "fraction_usage",
    "string_usage",
    "array_body",
    "hostile_text",
    "huge_answer",
    "reset_before_headers",
    "ok",
)

#: Kinds answered with an error status before the request is answered or rate limited.
ERROR_KINDS: frozenset[str] = frozenset(
    {"429", "429_date", "429_ms", "429_bare", "500", "502", "503", "html_error", "context_length", "content_policy", "401", "401_no_key", "404_model", "400_invalid_model"}
)

#: Kinds that drop the connection before anything is answered (no status line).
CONNECTION_KINDS: frozenset[str] = frozenset({"reset_before_headers"})

#: Kinds that change how an admitted, answered request is delivered.
DELIVERY_KINDS: frozenset[str] = frozenset(FAULT_KINDS) - ERROR_KINDS - CONNECTION_KINDS - {"ok"}

#: Kinds that answer without usage (non-streaming: no ``usage`` field, or ``"usage": null``).
NO_USAGE_KINDS: frozenset[str] = frozenset({"no_usage", "drop_usage", "usage_null"})

#: Kinds that take a ``retry_after`` option.
RETRY_AFTER_KINDS: frozenset[str] = frozenset({"429", "429_date", "429_ms"})

#: Bytes per piece sent by a ``trickle`` fault.
TRICKLE_PIECE_BYTES = 8

DEFAULT_RETRY_AFTER_S = 1.0
DEFAULT_STALL_S = 3600.0
DEFAULT_TRICKLE_MS = 100.0

#: The keys `FaultRule.from_mapping` and `FaultRule.parse` accept.
RULE_KEYS: tuple[str, ...] = ("kind", "rate", "tickets", "attempts", "retry_after", "stall_s", "trickle_ms",
                              "size_bytes")

_OPTION_KINDS: dict[str, frozenset[str]] = {
    "retry_after": RETRY_AFTER_KINDS,
    "stall_s": frozenset({"stall"}),
    "trickle_ms": frozenset({"trickle"}),
    "size_bytes": frozenset({"huge_answer"}),
}


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format_number(value: float) -> str:
    """A float as short text that parses back to the same float."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


@dataclass(frozen=True)
class FaultRule:
    """One fault: its ``kind`` and which requests it hits (see the module docstring)."""

    kind: str
    # Fraction of matching requests hit, 0..1; None: every matching request.
    rate: float | None = None
    # Ticket ids (X-Batchrun-Ticket-Id) hit; None: any request.
    tickets: tuple[str, ...] | None = None
    # 1-based attempt numbers hit; defaults to (1,) when tickets are given,
    # else None (every attempt).
    attempts: tuple[int, ...] | None = None
    # Seconds announced by the 429 kinds' retry headers (default 1.0).
    retry_after: float | None = None
    # Seconds a "stall" keeps the request waiting (default 3600).
    stall_s: float | None = None
    # Milliseconds between the pieces of a "trickle" (default 100).
    trickle_ms: float | None = None
    # Bytes of a "huge_answer" (default 8 MB).
    size_bytes: float | None = None

    def __post_init__(self) -> None:
        kind = self.kind
        if not isinstance(kind, str) or kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of: {', '.join(FAULT_KINDS)}")
        if self.rate is not None:
            if not _is_number(self.rate) or not 0.0 <= self.rate <= 1.0:
                raise ValueError(f"fault {kind}: rate must be a number between 0 and 1, got {self.rate!r}")
            object.__setattr__(self, "rate", float(self.rate))
        if self.tickets is not None:
            tickets = self.tickets
            if isinstance(tickets, str) or not isinstance(tickets, (list, tuple)):
                raise ValueError(f"fault {kind}: tickets must be a list of ticket ids, got {tickets!r}")
            if not tickets or not all(isinstance(t, str) and t for t in tickets):
                raise ValueError(f"fault {kind}: tickets must be a non-empty list of non-empty strings, got {tickets!r}")
            object.__setattr__(self, "tickets", tuple(tickets))
        if self.rate is None and self.tickets is None:
            raise ValueError(f"fault {kind}: give rate (a fraction of requests; 1 for all) or tickets (a list of ticket ids)")
        attempts = self.attempts
        if attempts is not None:
            if isinstance(attempts, int) and not isinstance(attempts, bool):
                attempts = (attempts,)
            if not isinstance(attempts, (list, tuple)) or not attempts:
                raise ValueError(f"fault {kind}: attempts must be a non-empty list of attempt numbers, got {self.attempts!r}")
            for number in attempts:
                if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                    raise ValueError(f"fault {kind}: attempts are 1-based integers, got {number!r}")
            object.__setattr__(self, "attempts", tuple(attempts))
        elif self.tickets is not None:
            object.__setattr__(self, "attempts", (1,))
        for option, kinds in _OPTION_KINDS.items():
            value = getattr(self, option)
            if value is None:
                continue
            if kind not in kinds:
                raise ValueError(f"fault {kind}: option {option} only applies to kind(s) {', '.join(sorted(kinds))}")
            if not _is_number(value) or value < 0 or value != value or value == float("inf"):
                raise ValueError(f"fault {kind}: {option} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, option, float(value))

    # -- effective options ---------------------------------------------------

    @property
    def retry_after_s(self) -> float:
        """Seconds announced by a 429 kind's retry header."""
        return DEFAULT_RETRY_AFTER_S if self.retry_after is None else self.retry_after

    @property
    def stall_seconds(self) -> float:
        """Seconds a ``stall`` waits before answering."""
        return DEFAULT_STALL_S if self.stall_s is None else self.stall_s

    @property
    def trickle_seconds(self) -> float:
        """Seconds between the pieces of a ``trickle``."""
        return (DEFAULT_TRICKLE_MS if self.trickle_ms is None else self.trickle_ms) / 1000.0

    # -- conversions ---------------------------------------------------------

    @classmethod
    def from_mapping(cls, mapping: RuleOptions) -> FaultRule:
        """A rule from a mapping with the keys of `RULE_KEYS` (e.g. a TOML table).

        Raises ValueError naming unknown keys, a missing ``kind`` or a bad value.
        """
        if not isinstance(mapping, Mapping):
            raise ValueError(f"a fault rule must be a table/mapping, got {type(mapping).__name__}")
        unknown = sorted(str(key) for key in mapping if key not in RULE_KEYS)
        if unknown:
            raise ValueError(f"unknown fault rule key(s): {', '.join(unknown)}; allowed keys: {', '.join(RULE_KEYS)}")
        if "kind" not in mapping:
            raise ValueError(f"a fault rule needs a kind (one of: {', '.join(FAULT_KINDS)})")
        kind = mapping["kind"]
        if _is_number(kind) and not isinstance(kind, float):
            kind = str(kind)  # kind = 429 written without quotes
        values = {key: mapping[key] for key in RULE_KEYS if key in mapping}
        values["kind"] = kind
        return cls(**values)

    @classmethod
    def parse(cls, spec: str) -> FaultRule:
        """A rule from the CLI form ``KIND[:key=value[,key=value...]]`` (lists joined by ``+``)."""
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError("empty fault spec; expected KIND[:key=value,...]")
        kind, _, rest = spec.strip().partition(":")
        values: dict[str, object] = {"kind": kind.strip()}
        if rest.strip():
            for item in rest.split(","):
                key, sep, raw = item.partition("=")
                key, raw = key.strip(), raw.strip()
                if not sep or not key:
                    raise ValueError(f"bad fault option {item!r} in {spec!r}; expected key=value")
                if key == "kind" or key not in RULE_KEYS:
                    raise ValueError(f"unknown fault option {key!r} in {spec!r}; allowed: {', '.join(RULE_KEYS[1:])}")
                if key in values:
                    raise ValueError(f"fault option {key!r} given twice in {spec!r}")
                try:
                    if key == "tickets":
                        values[key] = tuple(part.strip() for part in raw.split("+"))
                    elif key == "attempts":
                        values[key] = tuple(int(part) for part in raw.split("+"))
                    else:
                        values[key] = float(raw)
                except ValueError:
                    raise ValueError(f"bad value for fault option {key!r} in {spec!r}: {raw!r}") from None
        return cls.from_mapping(values)

    def to_spec(self) -> str:
        """The CLI form of this rule; `parse` reads it back to an equal rule.

        Raises ValueError for ticket ids that this form cannot carry (with
        ``,``, ``+`` or ``=``, or surrounding whitespace).
        """
        for ticket in self.tickets or ():
            if any(char in ticket for char in ",+=") or ticket != ticket.strip():
                raise ValueError(f"fault {self.kind}: ticket id {ticket!r} cannot be written as a --fault spec")
        options = []
        if self.rate is not None:
            options.append(f"rate={_format_number(self.rate)}")
        if self.tickets is not None:
            options.append("tickets=" + "+".join(self.tickets))
        if self.attempts is not None:
            options.append("attempts=" + "+".join(str(n) for n in self.attempts))
        for option in ("retry_after", "stall_s", "trickle_ms", "size_bytes"):
            value = getattr(self, option)
            if value is not None:
                options.append(f"{option}={_format_number(value)}")
        return self.kind + (":" + ",".join(options) if options else "")

    def to_mapping(self) -> dict[str, object]:
        """The rule as a mapping `from_mapping` accepts (unset options left out)."""
        out: dict[str, object] = {"kind": self.kind}
        for key in RULE_KEYS[1:]:
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out


#: The options a script step may carry (which requests it hits is the script's business).
STEP_OPTION_KEYS: tuple[str, ...] = ("retry_after", "stall_s", "trickle_ms", "size_bytes")


def parse_step(step: FaultRule | str) -> FaultRule:
    """One script step, ``KIND`` or ``KIND:option=value[,...]`` (or a FaultRule), as a FaultRule hitting every request it is asked about."""
    if isinstance(step, FaultRule):
        return step if step.rate == 1.0 and step.tickets is None and step.attempts is None else FaultRule(
            kind=step.kind, rate=1.0, retry_after=step.retry_after, stall_s=step.stall_s, trickle_ms=step.trickle_ms,
            size_bytes=step.size_bytes)
    if not isinstance(step, str) or not step.strip():
        raise ValueError(f"a script step must be text like \"429:retry_after=6\", got {step!r}")
    kind, _, rest = step.strip().partition(":")
    values: dict[str, object] = {"kind": kind.strip(), "rate": 1.0}
    if rest.strip():
        for item in rest.split(","):
            key, sep, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if not sep or key not in STEP_OPTION_KEYS:
                raise ValueError(f"bad option {item.strip()!r} in script step {step!r}; a step takes: {', '.join(STEP_OPTION_KEYS)}")
            if key in values:
                raise ValueError(f"option {key!r} given twice in script step {step!r}")
            try:
                values[key] = float(raw)
            except ValueError:
                raise ValueError(f"bad value for option {key!r} in script step {step!r}: {raw!r}") from None
    return FaultRule.from_mapping(values)


def step_spec(rule: FaultRule) -> str:
    """The text of a script step (`parse_step` reads it back)."""
    options = [f"{key}={_format_number(getattr(rule, key))}" for key in STEP_OPTION_KEYS if getattr(rule, key) is not None]
    return rule.kind + (":" + ",".join(options) if options else "")


#: The keys `TicketScript.from_mapping` accepts.
SCRIPT_KEYS: tuple[str, ...] = ("tickets", "rate", "steps")


@dataclass(frozen=True)
class TicketScript:
    """A sequence of answers, one per attempt, for some tickets (see the module docstring)."""

    # One step per attempt: "KIND" or "KIND:option=value,..." (kept as FaultRules).
    steps: tuple[FaultRule, ...]
    # The ticket ids that follow the script ...
    tickets: tuple[str, ...] | None = None
    # ... or the fraction of all tickets that do (drawn once per ticket).
    rate: float | None = None

    def __post_init__(self) -> None:
        steps = self.steps
        if isinstance(steps, str) or not isinstance(steps, (list, tuple)) or not steps:
            raise ValueError(f"a script needs a non-empty list of steps, got {steps!r}")
        object.__setattr__(self, "steps", tuple(parse_step(step) for step in steps))
        if (self.tickets is None) == (self.rate is None):
            raise ValueError("a script applies to tickets (a list of ids) or to a rate (a fraction of tickets): give exactly one")
        if self.tickets is not None:
            tickets = self.tickets
            if isinstance(tickets, str) or not isinstance(tickets, (list, tuple)) or not tickets or not all(
                isinstance(t, str) and t for t in tickets
            ):
                raise ValueError(f"script tickets must be a non-empty list of non-empty ids, got {tickets!r}")
            object.__setattr__(self, "tickets", tuple(tickets))
        if self.rate is not None:
            if not _is_number(self.rate) or not 0.0 <= self.rate <= 1.0:
                raise ValueError(f"script rate must be a number between 0 and 1, got {self.rate!r}")
            object.__setattr__(self, "rate", float(self.rate))

    @classmethod
    def from_mapping(cls, mapping: RuleOptions) -> TicketScript:
        """A script from a mapping with ``steps`` and ``tickets`` or ``rate`` (a TOML table)."""
        if not isinstance(mapping, Mapping):
            raise ValueError(f"a script must be a table/mapping, got {type(mapping).__name__}")
        unknown = sorted(str(key) for key in mapping if key not in SCRIPT_KEYS)
        if unknown:
            raise ValueError(f"unknown script key(s): {', '.join(unknown)}; allowed keys: {', '.join(SCRIPT_KEYS)}")
        if "steps" not in mapping:
            raise ValueError('a script needs steps, e.g. steps = ["reset_before_headers", "429:retry_after=6", "ok"]')
        return cls(**{key: mapping[key] for key in SCRIPT_KEYS if key in mapping})

    @classmethod
    def parse(cls, spec: str) -> TicketScript:
        """A script from the CLI form ``WHO=STEP;STEP;...`` (WHO: ``T1+T2``, ``tickets:T1+T2`` or ``rate:0.1``)."""
        if not isinstance(spec, str) or "=" not in spec:
            raise ValueError(f"bad script {spec!r}; expected WHO=STEP;STEP;... e.g. T000003=reset_before_headers;429:retry_after=6;ok")
        who, _, steps = spec.partition("=")
        who = who.strip()
        step_list = [step.strip() for step in steps.split(";") if step.strip()]
        if who.startswith("rate:"):
            try:
                rate = float(who[len("rate:"):])
            except ValueError:
                raise ValueError(f"bad rate in script {spec!r}: {who!r}") from None
            return cls(steps=tuple(parse_step(step) for step in step_list), rate=rate)
        if who.startswith("tickets:"):
            who = who[len("tickets:"):]
        return cls(steps=tuple(parse_step(step) for step in step_list), tickets=tuple(t.strip() for t in who.split("+")))

    def to_spec(self) -> str:
        """The CLI form of this script; `parse` reads it back to an equal script."""
        if self.rate is not None:
            who = f"rate:{_format_number(self.rate)}"
        else:
            for ticket in self.tickets or ():
                if any(char in ticket for char in "+=;") or ticket != ticket.strip():
                    raise ValueError(f"script ticket id {ticket!r} cannot be written as a --script spec")
            who = "tickets:" + "+".join(self.tickets or ())
        return who + "=" + ";".join(step_spec(step) for step in self.steps)

    def to_mapping(self) -> dict[str, object]:
        """The script as a mapping `from_mapping` accepts."""
        out: dict[str, object] = {"steps": [step_spec(step) for step in self.steps]}
        if self.tickets is not None:
            out["tickets"] = list(self.tickets)
        else:
            out["rate"] = self.rate
        return out


#: What `coerce_scripts` turns into a TicketScript.
ScriptLike: TypeAlias = "TicketScript | RuleOptions | str"

#: What `coerce_rules` turns into a FaultRule.
RuleLike: TypeAlias = "FaultRule | RuleOptions | str"


def coerce_scripts(scripts: ScriptLike | Iterable[ScriptLike] | None) -> tuple[TicketScript, ...]:
    """A tuple of `TicketScript` from scripts, mappings or CLI spec strings."""
    if scripts is None:
        return ()
    if isinstance(scripts, (TicketScript, Mapping, str)):
        scripts = (scripts,)
    out = []
    for script in scripts:
        if isinstance(script, TicketScript):
            out.append(script)
        elif isinstance(script, Mapping):
            out.append(TicketScript.from_mapping(script))
        elif isinstance(script, str):
            out.append(TicketScript.parse(script))
        else:
            raise ValueError(f"a script must be a TicketScript, a mapping or a spec string, got {script!r}")
    return tuple(out)


def coerce_rules(rules: RuleLike | Iterable[RuleLike] | None) -> tuple[FaultRule, ...]:
    """A tuple of `FaultRule` from rules, mappings or CLI spec strings."""
    if rules is None:
        return ()
    if isinstance(rules, (FaultRule, Mapping, str)):
        rules = (rules,)
    out = []
    for rule in rules:
        if isinstance(rule, FaultRule):
            out.append(rule)
        elif isinstance(rule, Mapping):
            out.append(FaultRule.from_mapping(rule))
        elif isinstance(rule, str):
            out.append(FaultRule.parse(rule))
        else:
            raise ValueError(f"a fault must be a FaultRule, a mapping or a spec string, got {rule!r}")
    return tuple(out)


def body_digest(body: bytes) -> bytes:
    """The digest of a request body used to key rate rules for requests without a ticket id."""
    return hashlib.blake2b(body, digest_size=16).digest()


def draw(seed: int, key: bytes, attempt: int, rule_index: int) -> int:
    """A stable 64-bit draw for one (seed, request key, attempt, rule) combination."""
    h = hashlib.blake2b(digest_size=8, person=b"batchrun-fault")
    h.update(b"%d\0%d\0%d\0" % (seed, attempt, rule_index))
    h.update(key)
    return int.from_bytes(h.digest(), "little")


class FaultPlan:
    """The scripts and fault rules of one simulator instance, with the seed that makes rates deterministic."""

    __slots__ = ("rules", "scripts", "seed", "uses_body", "_compiled", "_scripts")

    def __init__(
        self,
        rules: tuple[FaultRule, ...] | list[FaultRule],
        seed: int = 0,
        scripts: tuple[TicketScript, ...] | list[TicketScript] = (),
    ) -> None:
        self.rules = coerce_rules(rules)
        self.scripts = coerce_scripts(scripts)
        self.seed = int(seed)
        compiled = []
        for index, rule in enumerate(self.rules):
            tickets = frozenset(rule.tickets) if rule.tickets is not None else None
            attempts = frozenset(rule.attempts) if rule.attempts is not None else None
            threshold = None if rule.rate is None else int(rule.rate * 2.0**64)
            compiled.append((index, rule, tickets, attempts, threshold))
        self._compiled = tuple(compiled)
        self._scripts = tuple(
            (index, script, frozenset(script.tickets) if script.tickets is not None else None,
             None if script.rate is None else int(script.rate * 2.0**64))
            for index, script in enumerate(self.scripts)
        )
        #: True if some rule can hit requests without a ticket id (they are keyed by the body digest).
        self.uses_body = any(rule.tickets is None for rule in self.rules)

    def __bool__(self) -> bool:
        return bool(self.rules or self.scripts)

    def script_for(self, ticket_id: str) -> TicketScript | None:
        """The script a ticket follows, or None."""
        key = b"s:" + ticket_id.encode("utf-8", "surrogatepass")
        for index, script, tickets, threshold in self._scripts:
            if tickets is not None:
                if ticket_id in tickets:
                    return script
            elif threshold is not None and draw(self.seed, key, 0, index) < threshold:  # a script has tickets or a rate
                return script
        return None

    def rule_for(self, ticket_id: str | None, attempt: int, body_hash: bytes = b"") -> FaultRule | None:
        """The rule to apply to a request, or None.

        ``attempt`` is the 1-based attempt number of ``ticket_id`` (ignored
        without a ticket id); ``body_hash`` (see `body_digest`) keys the rate
        draw of requests without a ticket id. A ticket's script step wins
        over the rules; an ``ok`` rule or step means: answer normally.
        """
        if ticket_id is not None:
            if self._scripts:
                script = self.script_for(ticket_id)
                if script is not None and 1 <= attempt <= len(script.steps):
                    return script.steps[attempt - 1]
            key = b"t:" + ticket_id.encode("utf-8", "surrogatepass")
        else:
            key = b"b:" + body_hash
            attempt = 0
        for index, rule, tickets, attempts, threshold in self._compiled:
            if tickets is not None and (ticket_id is None or ticket_id not in tickets):
                continue
            if attempts is not None and ticket_id is not None and attempt not in attempts:
                continue
            if threshold is not None and draw(self.seed, key, attempt, index) >= threshold:
                continue
            return rule
        return None
