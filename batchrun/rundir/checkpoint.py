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
    .disk-reserve    256 KB held while a run is active, given back for its last
                     manifest if the disk fills (layout.reserve_space)
    inflight.jsonl   the in-flight journal: {"id", "attempt", "run"} appended
                     before a request is sent (InflightJournal); an entry is
                     cleared by its ticket's outcome line of that run or a
                     later one. Entries still open when a run starts are
                     tickets that may already have been paid for (the last
                     run died, or was halted, with their request in flight):
                     reported, marked `maybe_billed_before` on their next
                     outcome line, and kept (the journal is rewritten with
                     only them) until such a line clears them

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
    open_inflight(run_dir, done)     journal entries with no outcome line (read only)
    InflightJournal                  appends the journal's entries
    lock_state(run_dir)              "held", "free" or "absent": is a run alive?
    last_good_line(path)             (line number, id) of a file's last complete record
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
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol, TextIO, cast

import aiofiles
import anyio
import orjson

from batchrun.errors import CheckpointError, RunLockedError, RunMismatchError
from batchrun.records import Outcome
from batchrun.rundir.journal import OpenEntry, compact_inflight, open_inflight
from batchrun.rundir.layout import (
    ERRORS,
    INPUT_INDEX,
    LOCK,
    MANIFEST,
    REJECTS,
    RESULTS,
    disk_full,
    is_disk_full,
    open_no_follow,
    release_space,
    reserve_space,
    write_atomic,
)
from batchrun.rundir.lines import parse_line, scan_jsonl

if TYPE_CHECKING:
    from batchrun.job.tickets import InputIndex, LineProblem


class _AppendFile(Protocol):
    """What CheckpointWriter uses of an unbuffered binary file aiofiles opened (aiofiles ships no
    type information)."""

    async def write(self, data: bytes | memoryview) -> int: ...

    def fileno(self) -> int: ...

    async def close(self) -> None: ...


def read_input_index(run_dir: Path) -> InputIndex | None:
    """The saved input index (tickets.InputScan.to_index), or None if absent or unreadable."""
    try:
        with open(open_no_follow(Path(run_dir) / INPUT_INDEX, os.O_RDONLY), "rb") as handle:
            index = orjson.loads(handle.read())
    except (OSError, CheckpointError, orjson.JSONDecodeError):
        return None
    if not isinstance(index, dict) or index.get("version") != 1:
        return None
    return cast("InputIndex", index)  # version 1: the shape InputScan.to_index writes


def write_input_index(run_dir: Path, index: InputIndex) -> None:
    """Save the input index atomically; a failure only costs the next resume a full scan."""
    with contextlib.suppress(CheckpointError):
        write_atomic(Path(run_dir) / INPUT_INDEX, orjson.dumps(index), what="the input index")


@dataclass(slots=True)
class Checkpoint:
    """An opened, locked run directory, ready for a run."""

    run_dir: Path
    done_ids: set[str]  # in results.jsonl: never requested again
    failed_ids: set[str]  # latest outcome a failure (not in results.jsonl)
    repaired: list[str]  # human notes about torn lines that were cut off
    # failed id -> its latest failure's (error_kind, run): which a re-run keeps (lines.permanent_failures)
    failed_kinds: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    spent_usd: float = 0.0  # cost of the results already on disk
    # journal entries left open by earlier runs: id -> {"attempt", "run"} (may be billed twice)
    maybe_billed: dict[str, OpenEntry] = field(default_factory=dict)
    _lock_handle: TextIO | None = None

    def release(self) -> None:
        if self._lock_handle is not None:
            release_space(self.run_dir)  # the reserve for the last manifest (layout.reserve_space)
            try:
                fcntl.flock(self._lock_handle.fileno(), fcntl.LOCK_UN)
            finally:
                self._lock_handle.close()
                self._lock_handle = None


def _acquire_lock(run_dir: Path) -> TextIO:
    path = run_dir / LOCK
    handle = open(open_no_follow(path, os.O_RDWR | os.O_CREAT | os.O_APPEND), "a+")
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
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    except OSError as exc:
        with contextlib.suppress(OSError):  # its buffer cannot be flushed either: the file closes all the same
            handle.close()
        if is_disk_full(exc):
            raise disk_full(run_dir, exc) from None
        raise CheckpointError(f"{path}: cannot write the lock: {exc.strerror or exc}") from None
    return handle


@contextlib.contextmanager
def lock_if_free(run_dir: Path) -> Iterator[bool]:
    """The run directory's lock for the block if no live run holds it (True), else False: a
    command that may change the run directory only when no run is writing it (batchrun cancel)."""
    try:
        handle = _acquire_lock(Path(run_dir))
    except RunLockedError:
        yield False
        return
    try:
        yield True
    finally:
        handle.close()


def open_checkpoint(run_dir: Path, *, totals: bool = True, force: bool = False) -> Checkpoint:
    """Create or reopen a run directory: lock it, cut torn tails, load ids.

    Refused (CheckpointError, nothing changed): a checkpoint file that is a
    link; a complete line that is not a record (file and line named); a
    directory holding results or errors but no manifest.json, unless `force`
    (it may be another tool's files, or a run whose manifest was lost)."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(run_dir, exc) from None
        raise CheckpointError(f"{run_dir}: run directory is not writable: {exc.strerror}") from None
    lock = _acquire_lock(run_dir)
    try:
        reserve_space(run_dir)  # room for the last manifest, whatever fills the disk during the run
        repaired: list[str] = []
        scans = {}
        if not force and not (run_dir / MANIFEST).exists() and not (run_dir / MANIFEST).is_symlink():
            held = [name for name in (RESULTS, ERRORS) if _has_data(run_dir / name)]
            if held:
                raise RunMismatchError(
                    f"{run_dir} holds {' and '.join(held)} but no {MANIFEST}: it is not a run directory "
                    "batchrun can vouch for (another tool's files, or a lost manifest). Use another "
                    "--run-dir, or --force to resume from those files")
        for name in (RESULTS, ERRORS):
            path = run_dir / name
            scan = scan_jsonl(path, totals=totals, kinds=name == ERRORS)
            if scan.damaged_line is not None:
                raise CheckpointError(
                    f"{path}: line {scan.damaged_line} is complete (it ends with a newline) but is not a "
                    "JSON record with an id, so it is not a torn write; nothing was cut. Fix or delete that "
                    "line by hand, then re-run"
                )
            if scan.torn_lines > 1:
                raise CheckpointError(
                    f"{path}: line {scan.lines + 1} is damaged and {scan.torn_lines - 1} more line(s) "
                    "follow it, so this is not a torn last write; nothing was cut. Fix or delete that "
                    "line by hand (or cut the file there to run the tickets after it again)"
                )
            if scan.torn_bytes:
                with open(open_no_follow(path, os.O_RDWR), "r+b") as handle:
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
        kinds = scans[ERRORS].kind_by_id or {}
        maybe_billed = open_inflight(run_dir, done)
        compact_inflight(run_dir, maybe_billed)
        return Checkpoint(run_dir=run_dir, done_ids=done, failed_ids=failed,
                          failed_kinds={i: kinds[i] for i in failed if i in kinds}, repaired=repaired,
                          spent_usd=scans[RESULTS].cost_usd + scans[ERRORS].cost_usd,
                          maybe_billed=maybe_billed, _lock_handle=lock)
    except BaseException:
        release_space(run_dir)
        lock.close()
        raise


def lock_state(run_dir: Path) -> str:
    """"held" (a run is alive), "free" (no process holds it) or "absent" (no run.lock)."""
    try:
        fd = open_no_follow(Path(run_dir) / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return "absent"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return "held"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "free"
    finally:
        os.close(fd)


def last_good_line(path: Path) -> tuple[int, str | None]:
    """(number, id) of the last complete record of a checkpoint file; (0, None) if none."""
    number, last = 0, None
    try:
        with open(open_no_follow(path, os.O_RDONLY), "rb") as handle:
            for raw in handle:
                parsed = parse_line(raw) if raw.endswith(b"\n") else None
                if parsed is None:
                    break
                number, last = number + 1, parsed[0]
    except (OSError, CheckpointError):
        pass
    return number, last


def _has_data(path: Path) -> bool:
    try:
        return path.is_symlink() or path.stat().st_size > 0
    except OSError:
        return False


async def _write_all(handle: _AppendFile, blob: bytes, sent: list[int]) -> None:
    """An unbuffered write may be partial: write until every byte is out; `sent[0]` counts the
    bytes written so far (what made it to the file when a write fails)."""
    view = memoryview(blob)
    while view:
        written = await handle.write(view)
        sent[0] += written
        view = view[written:]


class CheckpointWriteError(CheckpointError):
    """A checkpoint file could not take every line: `written` holds the outcomes whose line did
    make it whole (to be counted like any written outcome), the others are not on disk."""

    def __init__(self, message: str, written: list[Outcome]) -> None:
        super().__init__(message)
        self.written = written


def _append_opener(path: str, flags: int) -> int:
    """open()'s opener for the checkpoint files: never through a link (see open_no_follow)."""
    return open_no_follow(Path(path), flags)


class CheckpointWriter:
    """Appends outcome lines; the only code that writes results/errors files.

    `write_batch` takes every outcome that is ready and appends them to their
    file with one unbuffered write, so a line is in the OS before its ticket
    is counted. `sync` fsyncs (called periodically and at the end).
    A ticket already in results.jsonl is never written there again.
    """

    def __init__(self, run_dir: Path, done_ids: set[str], maybe_billed: Iterable[str] = (), *,
                 max_output_bytes: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.max_output_bytes = max_output_bytes  # the job's cap on a stored answer (Outcome.to_line)
        self._done = done_ids
        self._maybe_billed = set(maybe_billed)  # ids whose line says maybe_billed_before: true
        self._results: _AppendFile | None = None
        self._errors: _AppendFile | None = None

    def mark_maybe_billed(self, ticket_id: str) -> None:
        """The ticket's next line says maybe_billed_before: true (a request for it may have been paid for)."""
        self._maybe_billed.add(ticket_id)

    async def open(self) -> None:
        try:
            # unbuffered: each write goes straight to the OS, one thread hop, no flush needed
            self._results = await aiofiles.open(self.run_dir / RESULTS, "ab", buffering=0, opener=_append_opener)
            self._errors = await aiofiles.open(self.run_dir / ERRORS, "ab", buffering=0, opener=_append_opener)
        except OSError as exc:
            raise CheckpointError(f"{self.run_dir}: cannot open checkpoint files: {exc.strerror}") from None

    async def write_batch(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Write the outcomes; return those actually written (duplicates dropped)."""
        ok_lines: list[tuple[Outcome, bytes]] = []
        err_lines: list[tuple[Outcome, bytes]] = []
        order: list[Outcome] = []
        for outcome in outcomes:
            line = outcome.to_line(self.max_output_bytes)
            if self._maybe_billed and outcome.ticket_id in self._maybe_billed:
                line["maybe_billed_before"] = True
            if outcome.ok:
                if outcome.ticket_id in self._done:
                    continue
                self._done.add(outcome.ticket_id)
                ok_lines.append((outcome, orjson.dumps(line) + b"\n"))
            else:
                err_lines.append((outcome, orjson.dumps(line) + b"\n"))
            order.append(outcome)
        written: list[Outcome] = []
        for name, handle, lines in ((RESULTS, self._results, ok_lines), (ERRORS, self._errors, err_lines)):
            if not lines:
                continue
            assert handle is not None, "open() first"
            sent = [0]
            try:
                await _write_all(handle, b"".join(blob for _, blob in lines), sent)
            except OSError as exc:
                end = 0
                for outcome, blob in lines:  # the lines that made it whole count; the others are not done
                    end += len(blob)
                    if end <= sent[0]:
                        written.append(outcome)
                    elif outcome.ok:
                        self._done.discard(outcome.ticket_id)
                number, ticket_id = last_good_line(self.run_dir / name)
                good = (f"its last good line is line {number:,} (ticket {ticket_id})" if number
                        else "it holds no complete line")
                whole = {id(outcome) for outcome in written}
                raise CheckpointWriteError(
                    f"{self.run_dir / name}: cannot append: {exc.strerror}; {good}. The tickets not written "
                    "run again on resume (see inflight.jsonl: they may be billed twice)",
                    [outcome for outcome in order if id(outcome) in whole]) from None
            written += [outcome for outcome, _ in lines]
        return order

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


def write_rejects(run_dir: Path, input_path: Path, problems: Iterable[LineProblem]) -> Path:
    """Write rejects.jsonl (one line per bad input line) atomically."""
    final = Path(run_dir) / REJECTS
    write_atomic(final, (orjson.dumps({"file": str(input_path), "line": p.line, "reason": p.reason}) + b"\n"
                         for p in problems), what="rejects")
    return final
