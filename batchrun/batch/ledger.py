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
from typing import Any, Iterator, Mapping

import orjson

from batchrun.errors import CheckpointError
from batchrun.rundir.layout import LEDGER, PART_DIR, write_atomic
from batchrun.rundir.lines import iter_lines

__all__ = ["LEDGER", "PART_DIR", "Ledger", "ids_of", "ledger_summary", "read_part_lines", "write_part_file"]


class Ledger:
    """batches.json: what parts exist and where each stands (module docstring)."""

    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.data = data

    @classmethod
    def load(cls, run_dir: Path, fingerprint: str | None = None) -> Ledger:
        path = Path(run_dir) / LEDGER
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
    def parts(self) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = self.data["parts"]
        return parts

    @property
    def run_key(self) -> str:
        return str(self.data["run_key"])

    def save(self) -> None:
        write_atomic(self.run_dir / LEDGER, orjson.dumps(self.data, option=orjson.OPT_INDENT_2) + b"\n",
                     what="the batch ledger")

    def new_part(self, model_key: str, run: int) -> dict[str, Any]:
        number = max((p["number"] for p in self.parts), default=0) + 1
        part = {"number": number, "model_key": model_key, "run": run, "state": "building", "tickets": 0,
                "bytes": 0, "file_id": None, "batch_id": None, "status": None, "counts": None,
                "output_file_id": None, "error_file_id": None, "submitted_at": None, "errors_offset": None,
                "retry": 0, "carried": False, "cancel_requested": False, "note": None}
        self.parts.append(part)
        return part

    def path(self, part: Mapping[str, Any], suffix: str) -> Path:
        return self.run_dir / PART_DIR / f"part-{part['number']:04d}{suffix}"


def ledger_summary(run_dir: Path) -> dict[str, Any] | None:
    """The parts of a run directory (None: not a batch run); read through rundir/status.py."""
    from batchrun.rundir.status import batch_parts

    return batch_parts(run_dir)


def read_part_lines(path: Path) -> Iterator[dict[str, Any]]:
    """Every line of a part file written whole (by batchrun, or downloaded from the provider)."""
    return iter_lines(path, with_id=False, whole_file=True)


def ids_of(ledger: Ledger, part: Mapping[str, Any]) -> set[str]:
    return {str(m["id"]) for m in read_part_lines(ledger.path(part, ".tickets.jsonl"))}


def write_part_file(path: Path, lines: Any) -> None:
    """A part file (its failures) written whole."""
    write_atomic(path, lines, what="a batch part file")
