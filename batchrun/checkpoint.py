"""The run directory: manifest, results and errors files, resume scan, lock.

Layout of a run directory:

    manifest.json    what this run is (job name and fingerprint hash, input
                     path/size/sha256, versions, endpoint), its state
                     (running, done, interrupted, failed), counts and the last
                     summary; rewritten atomically (temp file + os.replace)
    results.jsonl    one line per ticket that succeeded: never the same id twice
    errors.jsonl     one line per terminal failure, per run (an id failed in run 1
                     and retried in run 2 may appear twice; its latest line wins
                     unless results.jsonl has it)
    rejects.jsonl    with on_bad_input = "skip": one line per bad input line
                     (line, reason), rewritten by each run's input check
    input-index.json each input line's id, keyed by the input's sha256: a resume
                     of unchanged input plans from it without parsing
                     the input again
    run.lock         held with flock while a run is active; holds the pid

Resume is a pure function over the checkpoint files: `scan_jsonl` reads a
file, keeps every complete line's id and reports the byte offset where valid
data ends, reading line by line (memory holds the ids, not the file). A torn
last line (no newline, or not JSON: a crash mid-write) is cut off by
`open_checkpoint`, and its ticket is simply run again; a bad line with more
lines after it is not a torn write, and `open_checkpoint` refuses to cut it.

    scan_jsonl(path)                 -> JsonlScan(ids, valid_bytes, torn_bytes, lines, torn_lines)
    load_done_ids(run_dir)           ids already in results.jsonl
    load_failed_ids(run_dir)         ids whose latest outcome is a failure
    open_checkpoint(run_dir)         lock + repair + scan, for a run about to start
    CheckpointWriter                 the single writer of results/errors lines
    write_manifest / read_manifest   atomic JSON manifest
    write_rejects                    rejects.jsonl for on_bad_input = "skip"
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiofiles
import anyio
import orjson

from batchrun.errors import CheckpointError, RunLockedError
from batchrun.records import Outcome

__all__ = [
    "Checkpoint",
    "CheckpointWriter",
    "JsonlScan",
    "load_done_ids",
    "load_failed_ids",
    "open_checkpoint",
    "read_input_index",
    "read_manifest",
    "scan_jsonl",
    "write_manifest",
    "write_input_index",
    "write_rejects",
]

MANIFEST = "manifest.json"
RESULTS = "results.jsonl"
ERRORS = "errors.jsonl"
REJECTS = "rejects.jsonl"
INPUT_INDEX = "input-index.json"
LOCK = "run.lock"


@dataclass(slots=True)
class JsonlScan:
    ids: set[str] = field(default_factory=set)  # ids of complete, parseable lines
    valid_bytes: int = 0  # the file is good up to here
    torn_bytes: int = 0  # bytes after valid_bytes (a torn write)
    lines: int = 0  # complete lines
    torn_lines: int = 0  # lines from valid_bytes on: 1 for a torn last line
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
    torn. (Lines are appended whole by one writer, so damage can only be at
    the end: `torn_lines` > 1 means something else went wrong.)
    """
    scan = JsonlScan(last_by_id={} if keep_last else None)
    fast = not keep_last and not totals  # ids only: read them without parsing the line
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return scan
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror}") from None
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
                    parsed = _parse_line(raw)
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
                scan.torn_lines += 1
                scan.torn_bytes += len(raw)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror}") from None
    return scan


def _parse_line(raw: bytes) -> tuple[str, dict[str, Any]] | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    ticket_id = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(ticket_id, bool) or not isinstance(ticket_id, (str, int)):
        return None
    return str(ticket_id), obj


def load_done_ids(run_dir: Path) -> set[str]:
    return scan_jsonl(Path(run_dir) / RESULTS, totals=False).ids


def load_failed_ids(run_dir: Path, done: set[str] | None = None) -> set[str]:
    run_dir = Path(run_dir)
    done = load_done_ids(run_dir) if done is None else done
    return scan_jsonl(run_dir / ERRORS, totals=False).ids - done


def read_input_index(run_dir: Path) -> dict[str, Any] | None:
    """The saved input index (tickets.InputScan.to_index), or None if absent or unreadable."""
    try:
        index = orjson.loads((Path(run_dir) / INPUT_INDEX).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return index if isinstance(index, dict) and index.get("version") == 1 else None


def write_input_index(run_dir: Path, index: dict[str, Any]) -> None:
    """Save the input index atomically; a failure only costs the next resume a full scan."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{INPUT_INDEX}.{os.getpid()}.tmp"
    try:
        tmp.write_bytes(orjson.dumps(index))
        os.replace(tmp, run_dir / INPUT_INDEX)
    except OSError:
        tmp.unlink(missing_ok=True)


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / MANIFEST
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read manifest: {exc}") from None


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json atomically: temp file, fsync, os.replace, fsync dir."""
    run_dir = Path(run_dir)
    final = run_dir / MANIFEST
    tmp = run_dir / f".{MANIFEST}.{os.getpid()}.tmp"
    blob = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    try:
        with open(tmp, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{final}: cannot write manifest: {exc.strerror}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class Checkpoint:
    """An opened, locked run directory, ready for a run."""

    run_dir: Path
    done_ids: set[str]  # in results.jsonl: never requested again
    failed_ids: set[str]  # latest outcome a failure (not in results.jsonl)
    repaired: list[str]  # human notes about torn lines that were cut off
    spent_usd: float = 0.0  # cost of the results already on disk
    _lock_handle: Any = None

    def release(self) -> None:
        if self._lock_handle is not None:
            try:
                fcntl.flock(self._lock_handle.fileno(), fcntl.LOCK_UN)
            finally:
                self._lock_handle.close()
                self._lock_handle = None


def _acquire_lock(run_dir: Path) -> Any:
    path = run_dir / LOCK
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunLockedError(
            f"{run_dir} is in use by another batchrun process (pid {holder}); "
            "wait for it to finish, or use another --run-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def open_checkpoint(run_dir: Path, *, totals: bool = True) -> Checkpoint:
    """Create or reopen a run directory: lock it, cut torn tails, load ids."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(f"{run_dir}: run directory is not writable: {exc.strerror}") from None
    lock = _acquire_lock(run_dir)
    try:
        repaired: list[str] = []
        scans = {}
        for name in (RESULTS, ERRORS):
            path = run_dir / name
            scan = scan_jsonl(path, totals=totals)
            if scan.torn_lines > 1:
                raise CheckpointError(
                    f"{path}: line {scan.lines + 1} is damaged and {scan.torn_lines - 1} more line(s) "
                    "follow it, so this is not a torn last write; nothing was cut. Fix or delete that "
                    "line by hand (or cut the file there to run the tickets after it again)"
                )
            if scan.torn_bytes:
                with open(path, "r+b") as handle:
                    handle.truncate(scan.valid_bytes)
                    handle.flush()
                    os.fsync(handle.fileno())
                repaired.append(
                    f"{path}: cut {scan.torn_bytes} bytes of a torn last line after line {scan.lines}; "
                    "that ticket will run again"
                )
            scans[name] = scan
        done = scans[RESULTS].ids
        failed = scans[ERRORS].ids - done
        return Checkpoint(run_dir=run_dir, done_ids=done, failed_ids=failed, repaired=repaired,
                          spent_usd=scans[RESULTS].cost_usd + scans[ERRORS].cost_usd, _lock_handle=lock)
    except BaseException:
        lock.close()
        raise


async def _write_all(handle: Any, blob: bytes) -> None:
    """An unbuffered write may be partial: write until every byte is out."""
    view = memoryview(blob)
    while view:
        written = await handle.write(view)
        view = view[written:]


class CheckpointWriter:
    """Appends outcome lines; the only code that writes results/errors files.

    `write_batch` takes every outcome that is ready and appends them to their
    file with one unbuffered write, so a line is in the OS before its ticket
    is counted. `sync` fsyncs (called periodically and at the end).
    A ticket already in results.jsonl is never written there again.
    """

    def __init__(self, run_dir: Path, done_ids: set[str]) -> None:
        self.run_dir = Path(run_dir)
        self._done = done_ids
        self._results: Any = None
        self._errors: Any = None

    async def open(self) -> None:
        try:
            # unbuffered: each write goes straight to the OS, one thread hop, no flush needed
            self._results = await aiofiles.open(self.run_dir / RESULTS, "ab", buffering=0)
            self._errors = await aiofiles.open(self.run_dir / ERRORS, "ab", buffering=0)
        except OSError as exc:
            raise CheckpointError(f"{self.run_dir}: cannot open checkpoint files: {exc.strerror}") from None

    async def write_batch(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Write the outcomes; return those actually written (duplicates dropped)."""
        ok_lines: list[bytes] = []
        err_lines: list[bytes] = []
        written: list[Outcome] = []
        for outcome in outcomes:
            if outcome.ok:
                if outcome.ticket_id in self._done:
                    continue
                self._done.add(outcome.ticket_id)
                ok_lines.append(orjson.dumps(outcome.to_line()) + b"\n")
            else:
                err_lines.append(orjson.dumps(outcome.to_line()) + b"\n")
            written.append(outcome)
        try:
            if ok_lines:
                await _write_all(self._results, b"".join(ok_lines))
            if err_lines:
                await _write_all(self._errors, b"".join(err_lines))
        except OSError as exc:
            raise CheckpointError(f"{self.run_dir}: cannot append to checkpoint: {exc.strerror}") from None
        return written

    async def sync(self) -> None:
        for handle in (self._results, self._errors):
            if handle is not None:
                await anyio.to_thread.run_sync(os.fsync, handle.fileno())

    async def close(self) -> None:
        try:
            await self.sync()
        finally:
            for handle in (self._results, self._errors):
                if handle is not None:
                    await handle.close()
            self._results = self._errors = None


def write_rejects(run_dir: Path, input_path: Path, problems: list[Any]) -> Path:
    """Write rejects.jsonl (one line per bad input line) atomically."""
    run_dir = Path(run_dir)
    final = run_dir / REJECTS
    tmp = run_dir / f".{REJECTS}.{os.getpid()}.tmp"
    blob = b"".join(
        orjson.dumps({"file": str(input_path), "line": p.line, "reason": p.reason}) + b"\n" for p in problems
    )
    try:
        tmp.write_bytes(blob)
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{final}: cannot write rejects: {exc.strerror}") from None
    return final
