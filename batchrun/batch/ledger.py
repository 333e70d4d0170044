"""batches.json, the ledger of a batch-mode run: what parts exist and where each stands.

    Ledger.load(run_dir)        the ledger (a new one, with a random run key, if none)
    ledger.save()               rewritten whole (rundir/layout.write_atomic) at every
                                state change, so it always says what exists
    ledger.new_part(key, run)   a part in state "building"
    ledger.path(part, suffix)   batch/part-0001<suffix>: the part's files
    read_part_lines(path)       a part file's lines (rundir/lines.iter_lines)
    ids_of(ledger, part)        the ticket ids of a part
    ledger_summary(run_dir)     the parts as `status` shows them (rundir/status.py)

A part's life (its `state`): docs/batch.md and batch/run.py.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterable, Iterator, NotRequired, TypedDict

import orjson

from batchrun.errors import CheckpointError
from batchrun.rundir.layout import LEDGER, PART_DIR, write_atomic
from batchrun.records import Line
from batchrun.rundir.lines import iter_lines
from batchrun.rundir.status import BatchParts

__all__ = ["LEDGER", "PART_DIR", "Failure", "Ledger", "LedgerData", "Part", "TicketMeta", "ids_of", "ledger_summary",
           "read_part_lines", "write_part_file"]


class Part(TypedDict):
    """One part of a batch-mode run as batches.json keeps it (its life: docs/batch.md, batch/run.py)."""

    number: int
    model_key: str  # "" for a single-model job
    run: int  # the run that built it
    state: str  # building, built, uploaded, submitted, collecting, failures_ready, collected, discarded
    tickets: int
    bytes: int
    file_id: str | None  # the uploaded input file (None: the provider takes the requests inline)
    batch_id: str | None
    status: str | None  # the provider's batch status, as last polled
    counts: dict[str, int] | None  # the provider's request_counts
    output_file_id: str | None
    error_file_id: str | None
    submitted_at: float | None  # time.time()
    errors_offset: int | None  # errors.jsonl's size before this part's failures were written
    retry: int  # its failures to send again
    carried: bool  # those are in a later part already
    cancel_requested: bool
    note: str | None
    create_attempts: NotRequired[int]  # creates tried (a lost answer is looked for before another)
    completion_window: NotRequired[str]  # the window the batch was created with ("24h")
    expires_at: NotRequired[float]  # when that window ends (the provider's expires_at, else submitted + window)
    create_sent_at: NotRequired[float]  # time.time() when the first create was sent ...
    create_last_sent_at: NotRequired[float]  # ... and the last: a listing is matched against them
    errors_detail: NotRequired[object]  # the batch's "errors" when it failed validation
    estimate_usd: NotRequired[float]
    anomalies_offset: NotRequired[int]  # batch_anomalies.jsonl's size before this part's lines were added
    anomalies: NotRequired[dict[str, int] | None]  # its output lines not believed, by kind (batch/outputs.py)


class LedgerData(TypedDict):
    """batches.json."""

    version: int  # 1
    run_key: str  # names this run's batches at the provider (their metadata)
    fingerprint: str | None  # JobSpec.fingerprint_hash() of the job that started it
    parts: list[Part]


class TicketMeta(TypedDict):
    """One ticket of a part (part-N.tickets.jsonl): its id and what its earlier attempts came to."""

    id: str
    a: int  # batch requests for it, this one included
    i: int  # invalid answers so far (the re-ask budget)
    r: int  # rejected answers so far
    c: float  # what those cost
    u: NotRequired[int]  # of those, answers whose cost is unknown (billed; not in c)
    k: NotRequired[str]  # the custom_id its request carries, where the provider refused the id


class Failure(TicketMeta):
    """A ticket a part did not answer well (part-N.failed.jsonl): why, and whether it is sent again."""

    kind: str
    type: str | None
    message: str
    status: int | None  # the HTTP status of its line, when it had one
    retry: bool


class Ledger:
    """batches.json: what parts exist and where each stands (module docstring)."""

    def __init__(self, run_dir: Path, data: LedgerData) -> None:
        self.run_dir = Path(run_dir)
        self.data = data

    @classmethod
    def load(cls, run_dir: Path, fingerprint: str | None = None) -> Ledger:
        path = Path(run_dir) / LEDGER
        data: LedgerData
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            data = {"version": 1, "run_key": secrets.token_hex(8), "fingerprint": fingerprint, "parts": []}
        except (OSError, orjson.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: cannot read the batch ledger: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("parts"), list):
            raise CheckpointError(f"{path}: not a batch ledger this batchrun understands")
        return cls(run_dir, data)

    @property
    def parts(self) -> list[Part]:
        return self.data["parts"]

    @property
    def run_key(self) -> str:
        return str(self.data["run_key"])

    def save(self) -> None:
        write_atomic(self.run_dir / LEDGER, orjson.dumps(self.data, option=orjson.OPT_INDENT_2) + b"\n",
                     what="the batch ledger")

    def new_part(self, model_key: str, run: int) -> Part:
        number = max((p["number"] for p in self.parts), default=0) + 1
        part: Part = {"number": number, "model_key": model_key, "run": run, "state": "building", "tickets": 0,
                "bytes": 0, "file_id": None, "batch_id": None, "status": None, "counts": None,
                "output_file_id": None, "error_file_id": None, "submitted_at": None, "errors_offset": None,
                "retry": 0, "carried": False, "cancel_requested": False, "note": None}
        self.parts.append(part)
        return part

    def path(self, part: Part, suffix: str) -> Path:
        return self.run_dir / PART_DIR / f"part-{part['number']:04d}{suffix}"


def ledger_summary(run_dir: Path) -> BatchParts | None:
    """The parts of a run directory (None: not a batch run); read through rundir/status.py."""
    from batchrun.rundir.status import batch_parts

    return batch_parts(run_dir)


def read_part_lines(path: Path) -> Iterator[Line]:
    """Every line of a part file written whole (by batchrun, or downloaded from the provider)."""
    return iter_lines(path, with_id=False, whole_file=True)


def ids_of(ledger: Ledger, part: Part) -> set[str]:
    return {str(m["id"]) for m in read_part_lines(ledger.path(part, ".tickets.jsonl"))}


def write_part_file(path: Path, lines: Iterable[bytes]) -> None:
    """A part file (its failures) written whole."""
    write_atomic(path, lines, what="a batch part file")
