"""A run directory's file names, and the two ways batchrun writes into it safely.

    MANIFEST, RESULTS, ERRORS, ...   every file name a run directory holds (one place)
    open_no_follow(path, flags)      os.open that never follows a link, nor writes a
                                     file with other names (a hard link) or a device
    append_lines(path, lines)        whole lines appended, fsynced (batch_anomalies.jsonl)
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
        raise CheckpointError(f"{path}: cannot write {what}: {exc.strerror or exc}") from None
