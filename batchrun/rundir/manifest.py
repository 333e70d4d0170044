"""manifest.json: what a run directory holds and how its last run ended.

    read_manifest(run_dir)            the manifest, or None (no link followed)
    write_manifest(run_dir, content)  written atomically; execution/finish.py builds the content
    input_record(path, run_dir)       the manifest's `input.path` (absolute) and `input.path_from_run_dir`
    find_input(run_dir, manifest)     the run's input file from any working directory, or why not
    fail_fast_runs(manifest)          the runs fail-fast stopped (their key or model was wrong)

A run directory is portable: the manifest names its input absolutely and relative to the run
directory, so `export`, `report`, `show` and `status` find it from any working directory, and
after the run directory and its input moved together.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

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


def input_record(path: Path, run_dir: Path) -> dict[str, str]:
    """How a manifest names a run's input: absolute, and relative to the run directory."""
    absolute = Path(os.path.abspath(path))
    return {"path": str(absolute), "path_from_run_dir": os.path.relpath(absolute, os.path.abspath(run_dir))}


def find_input(run_dir: Path, manifest: Mapping[str, Any], override: Path | None = None) -> tuple[Path | None, str]:
    """(the run's input file, "") or (None, why not): `override` (export/report --input) when given,
    else the manifest's absolute path, else its path relative to the run directory (the two moved
    together), else, for a manifest written before both were kept, the path as recorded, from the
    working directory or a parent of the run directory."""
    if override is not None:
        return (Path(override), "") if Path(override).is_file() else (None, f"{override}: no such input file (--input)")
    record = manifest.get("input") or {}
    recorded = record.get("path") if isinstance(record, Mapping) else None
    if not isinstance(recorded, str) or not recorded:
        return None, "the manifest names no input file (pass --input PATH)"
    tries: list[Path] = [Path(recorded)]
    relative = record.get("path_from_run_dir")
    if isinstance(relative, str) and relative:
        tries.append(Path(run_dir) / relative)
    if not Path(recorded).is_absolute():
        tries += [parent / recorded for parent in Path(os.path.abspath(run_dir)).parents]
    for candidate in tries:
        if candidate.is_file():
            return Path(os.path.normpath(candidate)), ""
    return None, f"the run's input {recorded} is not there (pass --input PATH)"


def fail_fast_runs(manifest: Mapping[str, Any] | None) -> frozenset[int]:
    """The run numbers the manifest's history says fail-fast stopped (`stop_reason`)."""
    history = (manifest or {}).get("history") or []
    return frozenset(entry["run"] for entry in history
                     if isinstance(entry, Mapping) and entry.get("stop_reason") == "fail_fast"
                     and isinstance(entry.get("run"), int))
