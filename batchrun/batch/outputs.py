"""A batch part's output and error files, checked line by line before anything in them is believed.

    PartOutputs(job, run_number, part, api, prices, meta, started_at, elapsed_ms)
    outputs.collect(paths)  -> one item per ticket of the part that has a line: its Outcome
                               (an accepted answer) or its failure (a part-N.failed.jsonl entry)
    outputs.anomalies       the lines that were not believed, for batch_anomalies.jsonl
    outputs.seen            the custom_ids that had a line

What a provider's file may hold, and what batch mode does with it (docs/batch.md):

    a line that is not a JSON object   anomaly "non_json" (its first 200 bytes kept)
    custom_id null or not a string     anomaly "null_id"
    a custom_id this part never sent   anomaly "unknown_id"
    several lines for one custom_id    one is kept, the others are anomaly "duplicate"

The kept line of a ticket is the first line, in file order (the output file,
then the error file, each from the top), whose answer passes the job's checks
(a 200 whose answer the labels, schema or tools accept); when none passes,
the first line. So a bad duplicate never hides a good answer, and which of two
lines counts does not depend on how a provider ordered a file that "may come
in any order", except between two good answers (the first is kept).

A line that is an answer (a 200 with a body) was billed: a duplicate's cost,
at the batch price of its usage, goes into its ticket's rejected_outputs /
rejected_cost_usd (where answers the output check turned down go), so totals
and budgets count it; an answer for an unknown or null custom_id has no ticket
to carry it, so its cost is on its anomaly line (`counted: "anomaly"`), in the
run's summary and in `batchrun status`. Usage that cannot be believed is
never priced (providers/usage_checks.py).

Reading takes two passes over the files (the candidates per custom_id first,
then the outcomes), so memory holds a few numbers per ticket of the part,
never the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, NotRequired, Sequence, TypedDict

from batchrun.batch.ledger import Failure, Part, TicketMeta
from batchrun.errors import RequestError, RetryableError, redact_secrets
from batchrun.execution.ticket_runner import judge_answer, utc_now
from batchrun.job.spec import JobSpec
from batchrun.providers.error_mapping import describe_body, error_for_status, unusable_answer
from batchrun.providers.seam import BatchAPI, BatchLine, BatchPrices
from batchrun.providers.usage_checks import usage_problem
from batchrun.records import Line, Outcome, Usage
from batchrun.rundir.lines import iter_numbered

__all__ = ["ANOMALY_KINDS", "PART_FILES", "Anomaly", "PartOutputs"]

#: a part's files from the provider, in the order their lines are considered: (suffix, name)
PART_FILES = ((".output.jsonl", "output"), (".errors.jsonl", "errors"))
ANOMALY_KINDS = ("duplicate", "unknown_id", "null_id", "non_json")
EXCERPT_BYTES = 200


class Anomaly(TypedDict):
    """One line of batch_anomalies.jsonl: a provider output line that was not believed."""

    part: int
    file: str  # "output" or "errors"
    line: int  # from 1
    kind: str  # ANOMALY_KINDS
    custom_id: NotRequired[object]  # as the line gave it (a repr when it is not JSON-simple)
    status: NotRequired[object]  # its response's status_code
    billed: NotRequired[bool]  # an answer (a 200 with a body): the provider charged for it
    billed_usd: NotRequired[float | None]  # its usage at the batch price (None: no usage, or not believed)
    counted: NotRequired[str]  # "ticket" (in its ticket's rejected spend) or "anomaly" (here only)
    kept: NotRequired[str]  # a duplicate: the line kept for its ticket
    excerpt: NotRequired[str]  # a line that is not JSON: its first 200 bytes, keys redacted


@dataclass(slots=True)
class _Candidate:
    where: tuple[int, int]  # (index in PART_FILES, line number)
    good: bool  # an answer the job accepts
    answer: bool  # a 200 with a body: billed
    billed: float | None  # its cost at the batch price (None: no usage, or usage not believed)


class PartOutputs:
    """One collected part's provider files (module docstring)."""

    def __init__(self, job: JobSpec, run_number: int, part: Part, api: BatchAPI, prices: BatchPrices | None,
                 meta: Mapping[str, Line], started_at: str, elapsed_ms: float) -> None:
        self.job = job
        self.run_number = run_number
        self.part = part
        self.api = api
        self.prices = prices
        self.meta = meta
        self.started_at = started_at
        self.elapsed_ms = elapsed_ms
        self.anomalies: list[Anomaly] = []
        self.seen: set[str] = set()

    # -- one line -----------------------------------------------------------------------------

    def _billed(self, parsed: BatchLine) -> tuple[bool, float | None]:
        """(whether the line is a billed answer, its cost at the batch price when its usage says)."""
        body = parsed.body
        if not isinstance(body, Mapping):
            return False, None
        usage = body.get("usage")
        if self.prices is None or not isinstance(usage, Mapping):
            return True, None
        if "prompt_tokens" not in usage:  # not a chat.completion's usage (Anthropic's message): as its API reads it
            try:
                return True, self.api.completion_of(body, self.prices).cost_usd
            except (AttributeError, TypeError, ValueError, KeyError):
                return True, None
        if usage_problem(usage, None) is not None:
            return True, None
        counts = Usage(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                       completion_tokens=int(usage.get("completion_tokens") or 0),
                       total_tokens=int(usage.get("total_tokens") or 0))
        return True, self.prices.cost(counts)

    def judge(self, line: Line, meta: Line, rejected: int = 0, rejected_usd: float = 0.0,
              rejected_unpriced: int = 0) -> tuple[Outcome | None, Failure | None]:
        """The kept line of a ticket: its Outcome, or its failure; `rejected` answers (duplicates)
        costing `rejected_usd` (`rejected_unpriced` of them at a cost unknown) added to what the
        ticket's line says was turned down."""
        parsed = self.api.parse_line(line)  # the provider's line shape, read by its BatchAPI
        base: TicketMeta = {"id": meta["id"], "a": meta["a"], "i": meta.get("i", 0),
                            "r": meta.get("r", 0) + rejected, "c": meta.get("c", 0.0) + rejected_usd}
        if meta.get("u", 0) + rejected_unpriced:
            base["u"] = meta.get("u", 0) + rejected_unpriced
        if "k" in meta:
            base["k"] = str(meta["k"])
        if parsed.body is None and parsed.kind is not None:  # no answer: expired, cancelled, ...
            return None, {**base, "kind": parsed.kind, "type": parsed.code or "BatchError",
                          "message": parsed.message or parsed.kind, "status": None, "retry": True}
        if parsed.body is None:
            return None, _http_failure(base, parsed)
        body = parsed.body
        try:
            completion = self.api.completion_of(body, self.prices)
        except (AttributeError, TypeError, ValueError, KeyError):  # billed, nothing to use: invalid_response
            unusable = unusable_answer(describe_body(body), body)
            return None, self._invalid(base, unusable, self._billed(parsed)[1])
        try:
            structured = judge_answer(completion, self.job)
        except RequestError as exc:
            return None, self._invalid(base, exc, completion.cost_usd)
        return Outcome(
            ticket_id=meta["id"], attempts=meta["a"], started_at=self.started_at, finished_at=utc_now(),
            elapsed_ms=self.elapsed_ms, run=self.run_number, completion=completion, latency_ms=self.elapsed_ms,
            structured=structured, rejected_outputs=base["r"], rejected_cost_usd=base["c"],
            rejected_unpriced=base.get("u", 0), model_key=self.part["model_key"] or None,
        ), None

    def _invalid(self, base: TicketMeta, exc: RequestError, cost: float | None) -> Failure:
        """A rejected answer (invalid_output, invalid_response, truncated, ...): paid for, counted,
        asked again within the re-ask budget when the rule allows (as online)."""
        failure: Failure = {**base, "r": base["r"] + 1, "c": base["c"] + (cost or 0.0), "kind": exc.kind,
                            "type": exc.error_type, "message": exc.message, "status": None, "retry": False}
        if cost is None:  # billed at a price nobody saw: counted, never as $0 alone
            failure["u"] = base.get("u", 0) + 1
        if isinstance(exc, RetryableError):
            failure["i"] = base["i"] + 1
            failure["retry"] = failure["i"] <= self.job.max_invalid_output_retries
            if not failure["retry"]:
                failure["message"] = (f"{exc.message} ({failure['i']} invalid answer(s); "
                                      f"max_invalid_output_retries = {self.job.max_invalid_output_retries})")
        return failure

    def _good(self, line: Line) -> bool:
        outcome, _ = self.judge(line, self.meta[str(line["custom_id"])])
        return outcome is not None

    # -- the files ----------------------------------------------------------------------------

    def _anomaly(self, kind: str, where: tuple[int, int], line: Line | None, raw: bytes, *,
                 counted: str | None = None, kept: str | None = None) -> None:
        record: Anomaly = {"part": self.part["number"], "file": PART_FILES[where[0]][1], "line": where[1],
                           "kind": kind}
        if isinstance(line, Mapping):
            cid = line.get("custom_id")
            parsed = self.api.parse_line(line)
            record["custom_id"] = cid if cid is None or isinstance(cid, (str, int, float, bool)) else repr(cid)
            record["status"] = 200 if parsed.body is not None else parsed.status
            answer, billed = self._billed(parsed)
            record["billed"] = answer
            record["billed_usd"] = billed
        else:
            excerpt = raw[:EXCERPT_BYTES].decode("utf-8", errors="replace").rstrip("\r\n")
            record["excerpt"] = redact_secrets(excerpt)
        if counted is not None:
            record["counted"] = counted
        if kept is not None:
            record["kept"] = kept
        self.anomalies.append(record)

    def collect(self, paths: Sequence[Path]) -> Iterator[Outcome | Failure]:
        """Each ticket of the part that has a line: its Outcome or its failure (module docstring);
        the lines not believed land in `anomalies`. `paths`: the part's files as in PART_FILES."""
        candidates: dict[str, list[_Candidate]] = {}
        for index, path in enumerate(paths):
            for number, line, raw in iter_numbered(path):
                where = (index, number)
                if not isinstance(line, dict):
                    self._anomaly("non_json", where, None, raw)
                    continue
                cid = line.get("custom_id")
                if not isinstance(cid, str):
                    self._anomaly("null_id", where, line, raw, counted="anomaly")
                elif cid not in self.meta:
                    self._anomaly("unknown_id", where, line, raw, counted="anomaly")
                else:
                    answer, billed = self._billed(self.api.parse_line(line))
                    candidates.setdefault(cid, []).append(_Candidate(where, self._good(line), answer, billed))
        kept: dict[str, tuple[int, int]] = {}
        duplicates: dict[str, tuple[int, float, int]] = {}  # cid -> (billed answers not kept, their cost, unpriced)
        for cid, found in candidates.items():
            choice = next((c for c in found if c.good), found[0])
            kept[cid] = choice.where
            others = [c for c in found if c is not choice and c.answer]
            if others:
                duplicates[cid] = (len(others), sum(c.billed or 0.0 for c in others),
                                   sum(c.billed is None for c in others))
        self.seen = set(kept)
        for index, path in enumerate(paths):
            for number, line, raw in iter_numbered(path):
                if not isinstance(line, dict):
                    continue
                cid = line.get("custom_id")
                if not isinstance(cid, str) or cid not in kept:
                    continue
                if kept[cid] != (index, number):
                    kept_file, kept_line = kept[cid]
                    self._anomaly("duplicate", (index, number), line, raw, counted="ticket",
                                  kept=f"{PART_FILES[kept_file][1]} line {kept_line}")
                    continue
                rejected, rejected_usd, unpriced = duplicates.get(cid, (0, 0.0, 0))
                outcome, failure = self.judge(line, self.meta[cid], rejected, rejected_usd, unpriced)
                if outcome is not None:
                    yield outcome
                elif failure is not None:
                    yield failure


def _http_failure(base: TicketMeta, line: BatchLine) -> Failure:
    """A batch line answered with an HTTP error (its status, code and message as the BatchAPI read
    them), classified as an online answer would be (providers/error_mapping.error_for_status):
    retried (429, 408, 409, 5xx) or terminal."""
    message = str(line.message or f"HTTP {line.status}")[:1000]
    verdict = error_for_status(line.status, message, code=line.code, error_type="BatchLineError")
    return {**base, "kind": verdict.kind, "type": verdict.error_type, "message": message, "status": line.status,
            "retry": verdict.retryable}
