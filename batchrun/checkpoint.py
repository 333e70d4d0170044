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
import errno
import fcntl
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiofiles
import anyio
import orjson

from batchrun.errors import CheckpointError, RunLockedError, RunMismatchError
from batchrun.records import Outcome

__all__ = [
    "Checkpoint",
    "CheckpointWriter",
    "InflightJournal",
    "JsonlScan",
    "last_good_line",
    "load_done_ids",
    "load_failed_ids",
    "lock_state",
    "open_checkpoint",
    "open_inflight",
    "open_no_follow",
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
INFLIGHT = "inflight.jsonl"


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
                if scan.damaged_line is None and raw.endswith(b"\n"):
                    scan.damaged_line = scan.lines + scan.torn_lines + 1
                scan.torn_lines += 1
                scan.torn_bytes += len(raw)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror}") from None
    return scan


def open_no_follow(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open without following a symbolic link at `path` (O_NOFOLLOW); the
    file must be a regular file with one name. A link, a hard-linked file or a
    device is refused with a CheckpointError naming it: batchrun never writes
    (or cuts, or reads as its own) a file outside the run directory.
    FileNotFoundError passes through."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckpointError(
                f"{path} is a symbolic link: batchrun never reads or writes checkpoint files through a link "
                "(it could damage the file it points to). Replace it with a regular file, or use another "
                "--run-dir") from None
        raise CheckpointError(f"{path}: cannot open checkpoint file: {exc.strerror}") from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_nlink > 1 and flags & (os.O_WRONLY | os.O_RDWR):
        problem = f"has {info.st_nlink} hard links: writing it would change another file too"
    if problem:
        os.close(fd)
        raise CheckpointError(f"{path} {problem}; batchrun refuses to use it as a checkpoint file. "
                              "Replace it with a regular file, or use another --run-dir")
    return fd


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
        with open(open_no_follow(Path(run_dir) / INPUT_INDEX, os.O_RDONLY), "rb") as handle:
            index = orjson.loads(handle.read())
    except (OSError, CheckpointError, orjson.JSONDecodeError):
        return None
    return index if isinstance(index, dict) and index.get("version") == 1 else None


def write_input_index(run_dir: Path, index: dict[str, Any]) -> None:
    """Save the input index atomically; a failure only costs the next resume a full scan."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{INPUT_INDEX}.{os.getpid()}.tmp"
    try:
        _write_new(tmp, orjson.dumps(index))
        os.replace(tmp, run_dir / INPUT_INDEX)
    except OSError:
        tmp.unlink(missing_ok=True)


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / MANIFEST
    try:
        with open(open_no_follow(path, os.O_RDONLY), "rb") as handle:
            return orjson.loads(handle.read())
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
        _write_new(tmp, blob, sync=True)
        os.replace(tmp, final)  # replaces a link at `final` itself, not the file it points to
        _fsync_dir(run_dir)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{final}: cannot write manifest: {exc.strerror}") from None


def _write_new(tmp: Path, blob: bytes, *, sync: bool = False) -> None:
    """Write a temporary file created afresh: a leftover (or a link planted at
    its name) is removed first, and O_EXCL | O_NOFOLLOW never writes through one."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644),
              "wb") as handle:
        handle.write(blob)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())


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
    # journal entries left open by earlier runs: id -> {"attempt", "run"} (may be billed twice)
    maybe_billed: dict[str, dict[str, Any]] = field(default_factory=dict)
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
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


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
        raise CheckpointError(f"{run_dir}: run directory is not writable: {exc.strerror}") from None
    lock = _acquire_lock(run_dir)
    try:
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
            scan = scan_jsonl(path, totals=totals)
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
        maybe_billed = open_inflight(run_dir, done)
        _compact_inflight(run_dir, maybe_billed)
        return Checkpoint(run_dir=run_dir, done_ids=done, failed_ids=failed, repaired=repaired,
                          spent_usd=scans[RESULTS].cost_usd + scans[ERRORS].cost_usd,
                          maybe_billed=maybe_billed, _lock_handle=lock)
    except BaseException:
        lock.close()
        raise


def open_inflight(run_dir: Path, done_ids: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """Journal entries no outcome line has cleared: id -> {"attempt", "run"} (read only).

    An entry of run r is cleared by a results line (a done ticket is never
    sent again) or an errors line of run r or later. Memory: beyond the done
    ids the caller holds anyway, the journal's ids that are not done (failed
    or open), then only the open ones."""
    run_dir = Path(run_dir)
    path = run_dir / INFLIGHT
    if not path.exists() and not path.is_symlink():
        return {}
    done = load_done_ids(run_dir) if done_ids is None else done_ids
    latest: dict[str, dict[str, Any]] = {}
    try:
        with open(open_no_follow(path, os.O_RDONLY), "rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # torn by a crash mid-write: that request was never sent
                try:
                    entry = orjson.loads(raw)
                    ticket_id = str(entry["id"])
                    if ticket_id in done:  # a done ticket is never sent again: cleared
                        continue
                    noted = {"attempt": int(entry.get("attempt") or 1), "run": int(entry["run"])}
                    if entry.get("unsent"):  # that very request was never sent: cleared
                        if latest.get(ticket_id) == noted:
                            del latest[ticket_id]
                    else:
                        latest[ticket_id] = noted
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # the journal only ever over-reports; a bad line names no ticket
    except FileNotFoundError:
        return {}
    if latest:
        try:
            with open(open_no_follow(run_dir / ERRORS, os.O_RDONLY), "rb") as handle:
                for raw in handle:
                    parsed = _parse_line(raw) if raw.endswith(b"\n") else None
                    if parsed is not None and parsed[0] in latest:
                        run = parsed[1].get("run")
                        if isinstance(run, int) and run >= latest[parsed[0]]["run"]:
                            del latest[parsed[0]]
        except FileNotFoundError:
            pass
    return latest


def _compact_inflight(run_dir: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Rewrite the journal with only its open entries (atomically), or remove it."""
    path = run_dir / INFLIGHT
    if not entries:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    tmp = run_dir / f".{INFLIGHT}.{os.getpid()}.tmp"
    blob = b"".join(orjson.dumps({"id": ticket_id, **entry}) + b"\n" for ticket_id, entry in entries.items())
    try:
        _write_new(tmp, blob, sync=True)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot rewrite the in-flight journal: {exc.strerror}") from None


class InflightJournal:
    """Appends an entry before each request is sent (one unbuffered write, no
    thread hop: a few microseconds, in the OS before the request leaves, so it
    survives kill -9; not fsynced, so a power cut may lose the last ones)."""

    def __init__(self, run_dir: Path, run_number: int) -> None:
        self.path = Path(run_dir) / INFLIGHT
        self.run_number = run_number
        self._fd: int | None = None

    def open(self) -> None:
        self._fd = open_no_follow(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def note(self, ticket_id: str, attempt: int) -> None:
        """Record that a request for `ticket_id` is about to be sent; OSError if it cannot be."""
        assert self._fd is not None, "open() first"
        os.write(self._fd, orjson.dumps({"id": ticket_id, "attempt": attempt, "run": self.run_number}) + b"\n")

    def note_unsent(self, ticket_id: str, attempt: int) -> None:
        """Record that the request noted for (`ticket_id`, `attempt`) was never sent after all (an
        attempt counted ahead of its sender: a Ray actor's first); it clears that entry."""
        assert self._fd is not None, "open() first"
        os.write(self._fd, orjson.dumps({"id": ticket_id, "attempt": attempt, "run": self.run_number,
                                         "unsent": True}) + b"\n")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
                parsed = _parse_line(raw) if raw.endswith(b"\n") else None
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


async def _write_all(handle: Any, blob: bytes) -> None:
    """An unbuffered write may be partial: write until every byte is out."""
    view = memoryview(blob)
    while view:
        written = await handle.write(view)
        view = view[written:]


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

    def __init__(self, run_dir: Path, done_ids: set[str], maybe_billed: Any = ()) -> None:
        self.run_dir = Path(run_dir)
        self._done = done_ids
        self._maybe_billed = set(maybe_billed)  # ids whose line says maybe_billed_before: true
        self._results: Any = None
        self._errors: Any = None

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
        ok_lines: list[bytes] = []
        err_lines: list[bytes] = []
        written: list[Outcome] = []
        for outcome in outcomes:
            line = outcome.to_line()
            if self._maybe_billed and outcome.ticket_id in self._maybe_billed:
                line["maybe_billed_before"] = True
            if outcome.ok:
                if outcome.ticket_id in self._done:
                    continue
                self._done.add(outcome.ticket_id)
                ok_lines.append(orjson.dumps(line) + b"\n")
            else:
                err_lines.append(orjson.dumps(line) + b"\n")
            written.append(outcome)
        for name, handle, lines in ((RESULTS, self._results, ok_lines), (ERRORS, self._errors, err_lines)):
            if not lines:
                continue
            try:
                await _write_all(handle, b"".join(lines))
            except OSError as exc:
                number, ticket_id = last_good_line(self.run_dir / name)
                good = (f"its last good line is line {number:,} (ticket {ticket_id})" if number
                        else "it holds no complete line")
                raise CheckpointError(
                    f"{self.run_dir / name}: cannot append: {exc.strerror}; {good}. The tickets not written "
                    "run again on resume (see inflight.jsonl: they may be billed twice)") from None
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
        _write_new(tmp, blob)
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{final}: cannot write rejects: {exc.strerror}") from None
    return final
