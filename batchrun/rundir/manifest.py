"""manifest.json: what a run directory holds and how its last run ended.

    read_manifest(run_dir)            the manifest, or None (no link followed)
    write_manifest(run_dir, content)  written atomically; execution/finish.py builds the content
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import CheckpointError
from batchrun.rundir.layout import MANIFEST, open_no_follow, write_atomic

#: manifest.json's content (execution/finish.build_manifest writes it). Read back from disk it may
#: come from another batchrun version or a hand edit, so readers check each value they use.
Manifest = dict[str, Any]


def read_manifest(run_dir: Path) -> Manifest | None:
    path = Path(run_dir) / MANIFEST
    try:
        with open(open_no_follow(path, os.O_RDONLY), "rb") as handle:
            return orjson.loads(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read manifest: {exc}") from None


def write_manifest(run_dir: Path, manifest: Manifest) -> None:
    """Write manifest.json atomically (layout.write_atomic)."""
    blob = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    write_atomic(Path(run_dir) / MANIFEST, blob, what="manifest")
