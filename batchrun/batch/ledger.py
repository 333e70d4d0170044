"""TODO: from batchrun.batch_mode."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Iterator, Mapping

import orjson

from batchrun.errors import CheckpointError

LEDGER = "batches.json"
PART_DIR = "batch"


# -- the ledger ---------------------------------------------------------------------------


class Ledger:
    """batches.json: what parts exist and where each stands (module docstring)."""

    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.data = data

    @classmethod
    def load(cls, run_dir: Path, fingerprint: str | None = None) -> "Ledger":
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
        return self.data["parts"]

    @property
    def run_key(self) -> str:
        return self.data["run_key"]

    def save(self) -> None:
        final = self.run_dir / LEDGER
        tmp = self.run_dir / f".{LEDGER}.{os.getpid()}.tmp"
        blob = orjson.dumps(self.data, option=orjson.OPT_INDENT_2) + b"\n"
        try:
            with open(tmp, "wb") as handle:
                handle.write(blob)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
            fd = os.open(self.run_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise CheckpointError(f"{final}: cannot write the batch ledger: {exc.strerror}") from None

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
    """The parts of a run directory (None: not a batch run); read through rundir.py."""
    from batchrun.rundir.status import batch_parts

    return batch_parts(run_dir)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    with handle:
        for raw in handle:
            if raw.strip():
                try:
                    yield orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue  # a torn line of a file being rebuilt


def ids_of(ledger: Ledger, part: Mapping[str, Any]) -> set[str]:
    return {str(m["id"]) for m in read_jsonl(ledger.path(part, ".tickets.jsonl"))}


def fsync_write(path: Path, lines: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        for blob in lines:
            handle.write(blob)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
