"""TODO: from batchrun.checkpoint."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import CheckpointError
from batchrun.rundir.layout import MANIFEST, fsync_dir, open_no_follow, write_new


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
        write_new(tmp, blob, sync=True)
        os.replace(tmp, final)  # replaces a link at `final` itself, not the file it points to
        fsync_dir(run_dir)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{final}: cannot write manifest: {exc.strerror}") from None
