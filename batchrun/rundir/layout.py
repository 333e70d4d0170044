"""TODO: from batchrun.checkpoint, batchrun.rundir."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from batchrun.errors import CheckpointError

MANIFEST = "manifest.json"
RESULTS = "results.jsonl"
ERRORS = "errors.jsonl"
REJECTS = "rejects.jsonl"
INPUT_INDEX = "input-index.json"
LOCK = "run.lock"
INFLIGHT = "inflight.jsonl"


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


def write_new(tmp: Path, blob: bytes, *, sync: bool = False) -> None:
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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

BATCH_LEDGER = "batches.json"  # batch_mode.py's ledger (written there, atomically)
