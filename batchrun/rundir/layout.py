"""A run directory's file names, and the two ways batchrun writes into it safely.

    MANIFEST, RESULTS, ERRORS, ...   every file name a run directory holds (one place)
    open_no_follow(path, flags)      os.open that never follows a link, nor writes a
                                     file with other names (a hard link) or a device
    append_lines(path, lines)        whole lines appended, fsynced (batch_anomalies.jsonl)
    reserve_space / release_space    DISK_RESERVE_BYTES held from a run's start for its last
                                     manifest (a disk that fills mid-run still takes it)
    disk_full(path, exc)             the DiskFullError (free space, path) of an ENOSPC/EDQUOT
    require_free_space(run_dir)      DiskFullError before a run when not even the reserve fits
    write_atomic(path, data)         a file written whole: temp file (O_EXCL |
                                     O_NOFOLLOW), fsync, rename, fsync of the folder;
                                     the manifest, the input index, the batch ledger and
                                     the batch part files are written this way
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Iterable

from batchrun.errors import CheckpointError

MANIFEST = "manifest.json"
RESULTS = "results.jsonl"
ERRORS = "errors.jsonl"
REJECTS = "rejects.jsonl"
INPUT_INDEX = "input-index.json"
LOCK = "run.lock"
INFLIGHT = "inflight.jsonl"
LEDGER = "batches.json"  # batch mode's ledger of parts (batch/ledger.py)
BATCH_ANOMALIES = "batch_anomalies.jsonl"  # batch mode: provider output lines not believed (batch/outputs.py)
PART_DIR = "batch"  # batch mode's part files
#: the states of a batch part still to finish (the ledger's format; batch/ledger.py)
LIVE_PART_STATES = frozenset({"built", "uploaded", "submitted", "collecting", "failures_ready"})


DISK_RESERVE = ".disk-reserve"  # space held from the start of a run for its last manifest
DISK_RESERVE_BYTES = 256 * 1024  # a manifest with its history and summary is tens of KB
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _size(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1024 or unit == "TB":
            return f"{count:,} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count} bytes"  # pragma: no cover


def disk_full(path: Path, exc: OSError | None = None) -> CheckpointError:
    """A DiskFullError naming `path`, the free space on its filesystem and what was refused."""
    from batchrun.errors import DiskFullError

    try:
        info = os.statvfs(path if path.exists() else path.parent)
        free = f"{_size(info.f_bavail * info.f_frsize)} free of {_size(info.f_blocks * info.f_frsize)}"
    except OSError:
        free = "free space unknown"
    reason = exc.strerror if exc is not None and exc.strerror else "No space left on device"
    return DiskFullError(f"{path}: the disk is full ({reason}; {free}): free some space or use another "
                         "--run-dir, then run the same command again")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def require_free_space(run_dir: Path) -> None:
    """DiskFullError when the filesystem that will hold `run_dir` has less free than a run holds in
    reserve: before anything else is done (litellm loaded, a simulator started)."""
    where = Path(run_dir)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        info = os.statvfs(where)
    except OSError:
        return
    if info.f_bavail * info.f_frsize < DISK_RESERVE_BYTES:
        raise disk_full(Path(run_dir))


def reserve_space(run_dir: Path) -> None:
    """Hold DISK_RESERVE_BYTES in the run directory (allocated, not sparse) for the manifest a run
    writes last: a disk that fills during the run still takes it (`release_space`, then the write).
    DiskFullError when the disk has not even that much."""
    path = Path(run_dir) / DISK_RESERVE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size < DISK_RESERVE_BYTES:
                try:
                    os.posix_fallocate(fd, 0, DISK_RESERVE_BYTES)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.pwrite(fd, b"\0" * DISK_RESERVE_BYTES, 0)  # a filesystem without fallocate
                    os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        if is_disk_full(exc):
            raise disk_full(Path(run_dir), exc) from None
        raise CheckpointError(f"{path}: cannot write: {exc.strerror or exc}") from None


def release_space(run_dir: Path) -> bool:
    """Give the reserved space back (True when there was some)."""
    try:
        os.unlink(Path(run_dir) / DISK_RESERVE)
    except OSError:
        return False
    return True


def open_no_follow(path: Path | str, flags: int, mode: int = 0o644) -> int:
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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_lines(path: Path, lines: Iterable[bytes], *, what: str = "it") -> None:
    """Append whole lines to `path` (created if missing, never through a link), then fsync.
    CheckpointError names the file."""
    try:
        with open(open_no_follow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as handle:
            handle.write(b"".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot append {what}: {exc.strerror or exc}") from None


def write_atomic(path: Path, data: bytes | Iterable[bytes], *, what: str = "it") -> None:
    """Write `path` whole or not at all (module docstring): readers see the old file or the new one.
    A link at `path` is replaced, never written through. CheckpointError names the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644),
                  "wb") as handle:
            for blob in ([data] if isinstance(data, (bytes, bytearray)) else data):
                handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # replaces a link at `path` itself, not the file it points to
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(path, exc) from None
        raise CheckpointError(f"{path}: cannot write {what}: {exc.strerror or exc}") from None
