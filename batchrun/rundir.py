"""The read side of a run directory: everything that looks at one without writing.

    iter_jsonl(path)            every complete object line with an id of a checkpoint
                                file (results.jsonl, errors.jsonl); a torn last line
                                is skipped, a missing file is empty
    read_manifest(run_dir)      the manifest (checkpoint.py's reader), or None
    find_units(path)            ("run", [unit]) or ("compare", one unit per models/<key>/):
                                what `batchrun report` and `batchrun diff` read
    run_status(run_dir) -> dict counts recomputed from the checkpoint files (the
                                truth), the manifest's state and last summary:
                                what `batchrun status` prints; with a --limit,
                                what the last run was asked to do (asked,
                                pending_asked) apart from the input not asked yet
    compare_status(path)        one run_status per model of a compare directory

Reading takes no lock, so it works while a run is writing: a torn last line is
simply not counted yet. checkpoint.py is the write side (and owns the file
names and the manifest format); grading.py, diffing.py and plan.py read
through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from batchrun.errors import BatchrunError, CheckpointError, ExitCode

# checkpoint.py (and through it aiofiles and asyncio) is imported inside the functions,
# so that `batchrun --help`, which imports the command modules, stays fast.

__all__ = ["MODELS_DIR", "ReportError", "RunUnit", "compare_status", "find_units", "iter_jsonl", "read_manifest",
           "run_status"]

MODELS_DIR = "models"  # a compare directory: models/<key>/ run directories


class ReportError(BatchrunError):
    """The path given is not something a report can be made of."""

    exit_code = ExitCode.BAD_INPUT


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


@dataclass
class RunUnit:
    """One model's run directory (a plain run, or one model of a compare directory)."""

    key: str  # the model key (compare directory) or the job name
    model: str  # the job's model string, from the manifest
    run_dir: Path
    manifest: dict[str, Any]

    @property
    def fingerprint(self) -> dict[str, Any]:
        return ((self.manifest.get("job") or {}).get("fingerprint")) or {}

    @property
    def id_field(self) -> str:
        return str(self.fingerprint.get("id_field") or "id")

    @property
    def job_labels(self) -> list[str]:
        labels = (self.fingerprint.get("output") or {}).get("labels") or []
        return [str(label) for label in labels]


def _manifest_model(manifest: Mapping[str, Any]) -> str:
    fingerprint = (manifest.get("job") or {}).get("fingerprint") or {}
    model = fingerprint.get("model")
    if isinstance(model, str):
        return model
    models = fingerprint.get("models")
    if isinstance(models, list):  # a routed / multi-model job in one directory
        names = [m if isinstance(m, str) else str((m or {}).get("model") or (m or {}).get("name") or "?")
                 for m in models]
        return ", ".join(names)
    return "?"


def _job_order(units: list[RunUnit]) -> list[RunUnit]:
    """A compare directory's models in the order the job file lists them (when it can be read),
    else by directory name."""
    job_path = (units[0].manifest.get("job") or {}).get("path")
    names: list[str] = []
    if isinstance(job_path, str) and Path(job_path).is_file():
        try:
            from batchrun.spec import load_job

            names = [str(getattr(entry, "name", "")) for entry in getattr(load_job(job_path), "models", None) or []]
        except Exception:  # an edited or moved job file: directory order
            names = []
    return sorted(units, key=lambda u: (names.index(u.key) if u.key in names else len(names), u.key))


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The run directory's manifest.json (checkpoint.py's reader), or None when there is none."""
    from batchrun.checkpoint import read_manifest as read

    return read(run_dir)


def find_units(path: Path) -> tuple[str, list[RunUnit]]:
    """("compare", one unit per models/<key>/) or ("run", [the run directory])."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: no such directory")
    units: list[RunUnit] = []
    models = path / MODELS_DIR
    try:
        if models.is_dir():
            for sub in sorted(p for p in models.iterdir() if p.is_dir()):
                manifest = read_manifest(sub)
                if manifest is not None:
                    units.append(RunUnit(sub.name, _manifest_model(manifest), sub, manifest))
        if units:
            return "compare", _job_order(units)
        manifest = read_manifest(path)
    except CheckpointError as exc:
        raise ReportError(str(exc)) from None
    if manifest is None:
        raise ReportError(f"{path}: no manifest.json here nor in {MODELS_DIR}/*/: "
                          "not a batchrun run or compare directory")
    name = str((manifest.get("job") or {}).get("name") or path.name)
    return "run", [RunUnit(name, _manifest_model(manifest), path, manifest)]


def compare_status(path: Path) -> list[dict[str, Any]] | None:
    """One run_status per model of a compare directory (models/<key>/), in the job's order,
    each with its "model" key; None when `path` is not a compare directory."""
    if not (Path(path) / MODELS_DIR).is_dir():
        return None
    mode, units = find_units(path)
    if mode != "compare":
        return None
    return [{**run_status(unit.run_dir), "model": unit.key, "model_name": unit.model} for unit in units]


def run_status(run_dir: Path) -> dict[str, Any]:
    """Counts recomputed from the checkpoint files, plus the manifest's state and last summary."""
    from batchrun.checkpoint import ERRORS, REJECTS, RESULTS, scan_jsonl

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise CheckpointError(f"{run_dir}: no manifest.json here: not a batchrun run directory")
    results = scan_jsonl(run_dir / RESULTS)
    errors = scan_jsonl(run_dir / ERRORS)  # its cost_usd: answers rejected by the output check
    done, unpriced, tokens = len(results.ids), results.unpriced, results.total_tokens
    cost = results.cost_usd + errors.cost_usd
    failed_ids = errors.ids - results.ids
    rejects = run_dir / REJECTS
    rejected = rejects.read_bytes().count(b"\n") if rejects.exists() else 0
    total = int((manifest.get("input") or {}).get("tickets") or 0)
    limit = manifest.get("limit")
    asked = min(int(limit), total) if isinstance(limit, int) else total  # what the last run was asked to do
    finished = done + len(failed_ids)
    return {
        "run_dir": str(run_dir),
        "job": (manifest.get("job") or {}).get("name"),
        "state": manifest.get("state"),
        "run": manifest.get("run"),
        "endpoint": manifest.get("endpoint"),
        "input": (manifest.get("input") or {}).get("path"),
        "tickets": total,
        "done": done,
        "failed": len(failed_ids),
        "pending": max(total - done - len(failed_ids), 0),  # of the whole input
        "limit": limit if isinstance(limit, int) else None,  # the last run's --limit
        "asked": asked,
        "pending_asked": max(asked - finished, 0),  # of what the last run was asked to do
        "not_asked": max(total - max(asked, finished), 0),  # beyond the limit: no run was asked yet
        "rejected_lines": rejected,
        "cost_usd": round(cost, 6),
        "unpriced_results": unpriced,
        "total_tokens": tokens,
        "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"),
        "error": manifest.get("error"),
        "last_summary": manifest.get("summary"),
    }
