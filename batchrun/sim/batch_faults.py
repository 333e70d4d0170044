"""Fault rules of the simulator's Batch API (`/v1/files`, `/v1/batches`).

A `BatchFault` says what goes wrong with which batch, or with which call to
an endpoint. Like the chat faults (`faults.py`) it is deterministic for a
seed, and it uses only the standard library so that `config.py` (and the
`batchrun sim` command line) stay fast to load.

Kinds that act on a batch (``batches``: 1-based creation numbers it hits;
empty: every batch):

``invalid``
    the batch fails validation: status ``failed``, ``errors`` names line 1,
    no output or error file.
``expire``
    ``rate`` of the lines (default 0.5) are answered, then the batch waits
    for its window to end and turns ``expired``; the unanswered lines are in
    the error file with code ``batch_expired``.
``fail_lines``
    ``rate`` of the lines (chosen by a stable hash of seed, custom_id and
    batch number) are answered with a 500 ``server_error`` in the error file;
    the batch completes.
``all_failed``
    every line is answered with a 500 in the error file: status
    ``completed``, no output file, only an error file.
``slow``
    ``rate`` of the lines (default 0) are answered, then the batch stays
    ``in_progress`` for ever, past its window, until it is cancelled.
``anomalies``
    the batch completes, but its output file is not to be trusted: it begins
    with a second line for the first custom_id whose answer is ``banana``
    (not a label; billed like any answer), and ends with a second line for
    the second custom_id with another label (billed again), a line for a
    custom_id that was never submitted (``ghost-<batch number>``, billed), a
    line whose custom_id is null, and a line that is not JSON.

Kinds that act on HTTP calls (``endpoint``: ``files`` (upload), ``file``
(retrieve), ``content``, ``create``, ``retrieve``, ``list``, ``cancel``;
``calls``: 1-based numbers of calls to that endpoint it hits; empty: every
call):

``401`` / ``429`` / ``500`` / ``503``
    that status in OpenAI's error shape, before the call does anything
    (``retry_after`` seconds in ``retry-after`` for a 429, default 1; a 401
    is ``invalid_api_key``).
``create_lost``
    (``endpoint`` create) the batch IS created, then the answer is a 500:
    the case of a create whose response was lost, which a client that
    simply retries turns into a duplicate, paid batch.

Spec strings (``batchrun sim --batch-fault``): ``KIND:key=value,...`` with
lists joined by ``+``: ``expire:batches=1,rate=0.3``,
``500:endpoint=create,calls=1+2``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from batchrun.sim.jsontypes import RuleOptions

BATCH_KINDS = frozenset({"invalid", "expire", "fail_lines", "all_failed", "slow", "anomalies"})
CALL_KINDS = frozenset({"401", "429", "500", "503", "create_lost"})
ENDPOINTS = frozenset({"files", "file", "content", "create", "retrieve", "list", "cancel"})
_KEYS = ("kind", "batches", "rate", "endpoint", "calls", "retry_after")


@dataclass(frozen=True)
class BatchFault:
    kind: str
    batches: tuple[int, ...] = ()  # batch kinds: creation numbers hit (empty: all)
    rate: float | None = None  # expire / fail_lines / slow: share of lines (see module docstring)
    endpoint: str | None = None  # call kinds: which endpoint
    calls: tuple[int, ...] = ()  # call kinds: call numbers hit (empty: all)
    retry_after: float = 1.0  # 429: seconds in retry-after

    def __post_init__(self) -> None:
        if self.kind not in BATCH_KINDS | CALL_KINDS:
            known = ", ".join(sorted(BATCH_KINDS | CALL_KINDS))
            raise ValueError(f"unknown batch fault kind {self.kind!r} (known: {known})")
        if self.kind in CALL_KINDS:
            endpoint = self.endpoint or ("create" if self.kind == "create_lost" else None)
            if endpoint not in ENDPOINTS:
                raise ValueError(f"batch fault {self.kind!r} needs endpoint = one of {', '.join(sorted(ENDPOINTS))}")
            if self.kind == "create_lost" and endpoint != "create":
                raise ValueError("create_lost applies to endpoint create only")
            object.__setattr__(self, "endpoint", endpoint)
        if self.rate is not None and not 0 <= self.rate <= 1:
            raise ValueError(f"rate must be between 0 and 1, got {self.rate!r}")
        for name in ("batches", "calls"):
            values = tuple(int(v) for v in getattr(self, name))
            if any(v < 1 for v in values):
                raise ValueError(f"{name} are 1-based numbers, got {values!r}")
            object.__setattr__(self, name, values)
        if self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")

    @classmethod
    def from_mapping(cls, mapping: RuleOptions) -> "BatchFault":
        unknown = sorted(set(mapping) - set(_KEYS))
        if unknown:
            raise ValueError(f"unknown batch fault key(s) {', '.join(unknown)} (known: {', '.join(_KEYS)})")
        if "kind" not in mapping:
            raise ValueError("a batch fault needs a kind")
        data = dict(mapping)
        data["kind"] = str(data["kind"])
        for name in ("batches", "calls"):
            if name in data:
                value = data[name]
                data[name] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        return cls(**data)

    @classmethod
    def parse(cls, spec: str) -> "BatchFault":
        kind, _, rest = spec.partition(":")
        data: dict[str, object] = {"kind": kind.strip()}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"expected key=value, got {item!r}")
            if key in ("batches", "calls"):
                data[key] = tuple(int(v) for v in value.split("+") if v)
            elif key in ("rate", "retry_after"):
                data[key] = float(value)
            else:
                data[key] = value
        return cls.from_mapping(data)

    def to_spec(self) -> str:
        parts = []
        if self.batches:
            parts.append("batches=" + "+".join(map(str, self.batches)))
        if self.rate is not None:
            parts.append(f"rate={self.rate!r}")
        if self.endpoint is not None:
            parts.append(f"endpoint={self.endpoint}")
        if self.calls:
            parts.append("calls=" + "+".join(map(str, self.calls)))
        if self.retry_after != 1.0:
            parts.append(f"retry_after={self.retry_after!r}")
        return self.kind + (":" + ",".join(parts) if parts else "")

    def hits_batch(self, number: int) -> bool:
        return self.kind in BATCH_KINDS and (not self.batches or number in self.batches)

    def hits_call(self, endpoint: str, number: int) -> bool:
        return self.kind in CALL_KINDS and self.endpoint == endpoint and (not self.calls or number in self.calls)


#: What `coerce_batch_faults` turns into a BatchFault.
BatchFaultLike: TypeAlias = "BatchFault | str | RuleOptions"


def coerce_batch_faults(rules: Iterable[BatchFaultLike] | None) -> tuple[BatchFault, ...]:
    out = []
    for rule in rules or ():
        if isinstance(rule, BatchFault):
            out.append(rule)
        elif isinstance(rule, str):
            out.append(BatchFault.parse(rule))
        elif isinstance(rule, Mapping):
            out.append(BatchFault.from_mapping(rule))
        else:
            raise ValueError(f"not a batch fault: {rule!r}")
    return tuple(out)
