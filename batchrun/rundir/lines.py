"""TODO: from batchrun.checkpoint, batchrun.rundir."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson

from batchrun.errors import CheckpointError
from batchrun.rundir.layout import open_no_follow
from batchrun.errors import ReportError
from batchrun.rundir.layout import ERRORS
from batchrun.rundir.layout import RESULTS


@dataclass(slots=True)
class JsonlScan:
    ids: set[str] = field(default_factory=set)  # ids of complete, parseable lines
    valid_bytes: int = 0  # the file is good up to here
    torn_bytes: int = 0  # bytes after valid_bytes (a torn write)
    lines: int = 0  # complete lines
    torn_lines: int = 0  # lines from valid_bytes on: 1 for a torn last line
    damaged_line: int | None = None  # the first complete (newline-ended) line that is not a record
    cost_usd: float = 0.0  # with totals: the lines' cost_usd + rejected_cost_usd (money spent)
    unpriced: int = 0  # valid lines with "cost_usd": null
    total_tokens: int = 0  # sum of the valid lines' usage.total_tokens
    cache_hits: int = 0  # lines with "cache_hit": true (reused answers)
    cost_saved_usd: float = 0.0  # their cost_saved_usd
    last_by_id: dict[str, dict[str, Any]] | None = None  # only when asked (errors file)


def scan_jsonl(path: Path, *, keep_last: bool = False, totals: bool = True) -> JsonlScan:
    """Scan a checkpoint file; a missing file is an empty scan.

    Valid data ends at the first line that has no newline or does not parse
    as a JSON object with a string (or integer) "id": anything after it is
    torn. Only a last line without a newline is a torn write (lines are
    appended whole by one writer); `damaged_line` names the first complete
    line that is not a record, which no crash can leave behind. A symbolic
    link is refused (CheckpointError), never followed.
    """
    scan = JsonlScan(last_by_id={} if keep_last else None)
    fast = not keep_last and not totals  # ids only: read them without parsing the line
    try:
        handle = open(open_no_follow(path, os.O_RDONLY), "rb")
    except FileNotFoundError:
        return scan
    try:
        with handle:
            for raw in handle:
                if fast and not scan.torn_lines and raw.startswith(b'{"id":"') and raw.endswith(b"}\n"):
                    end = raw.find(b'"', 7)
                    if end > 7 and raw.find(b"\\", 7, end) < 0:  # no escapes: the id is the raw bytes
                        scan.ids.add(raw[7:end].decode())
                        scan.lines += 1
                        scan.valid_bytes += len(raw)
                        continue
                if not scan.torn_lines and raw.endswith(b"\n"):
                    parsed = parse_line(raw)
                    if parsed is not None:
                        ticket_id, obj = parsed
                        if scan.last_by_id is not None:
                            scan.last_by_id[ticket_id] = obj
                        scan.ids.add(ticket_id)
                        if totals:  # every line is money spent (errors.jsonl: rejected answers)
                            cost = obj.get("cost_usd")
                            if isinstance(cost, (int, float)):
                                scan.cost_usd += cost
                            elif "cost_usd" in obj:
                                scan.unpriced += 1
                            rejected = obj.get("rejected_cost_usd")
                            if isinstance(rejected, (int, float)):
                                scan.cost_usd += rejected
                            hit = obj.get("cache_hit") is True  # a reused answer used no tokens
                            if hit:
                                scan.cache_hits += 1
                                saved = obj.get("cost_saved_usd")
                                if isinstance(saved, (int, float)):
                                    scan.cost_saved_usd += saved
                            usage = obj.get("usage")
                            if not hit and isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
                                scan.total_tokens += usage["total_tokens"]
                        scan.lines += 1
                        scan.valid_bytes += len(raw)
                        continue
                if scan.damaged_line is None and raw.endswith(b"\n"):
                    scan.damaged_line = scan.lines + scan.torn_lines + 1
                scan.torn_lines += 1
                scan.torn_bytes += len(raw)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror}") from None
    return scan


def parse_line(raw: bytes) -> tuple[str, dict[str, Any]] | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    ticket_id = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(ticket_id, bool) or not isinstance(ticket_id, (str, int)):
        return None
    return str(ticket_id), obj


# --------------------------------------------------------------------------------------------
# Reading run directories
# --------------------------------------------------------------------------------------------


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete line of a checkpoint file that parses as an object with an id.

    A missing file is empty; a torn last line (no newline) is skipped."""
    import orjson

    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)) and not isinstance(obj["id"], bool):
                yield obj


def load_done_ids(run_dir: Path) -> set[str]:
    return scan_jsonl(Path(run_dir) / RESULTS, totals=False).ids


def load_failed_ids(run_dir: Path, done: set[str] | None = None) -> set[str]:
    run_dir = Path(run_dir)
    done = load_done_ids(run_dir) if done is None else done
    return scan_jsonl(run_dir / ERRORS, totals=False).ids - done
